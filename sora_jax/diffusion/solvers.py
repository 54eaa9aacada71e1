"""ODE solvers for the rectified flow: Euler and Heun, with classifier-free guidance.

The probability-flow ODE dx/dt = v(x, t) is integrated from the first sigma (1 for pure
noise, s < 1 for SDEdit) to 0 over a schedule (schedules.sigmas). Frames marked in
`cond_mask_BT` are held clean: the network sees them at t = 0, and after every step
their latents are put back to the given ones, so they come out exactly as given.

The whole run is one `lax.fori_loop`, so `jax.jit` of a function calling `sample`
compiles a single program whatever the number of steps.
"""
import jax
import jax.numpy as jnp

from sora_jax.diffusion import rectified_flow as rf

SOLVERS = ("euler", "heun")


def guided_velocity(model_fn, x_BTHWC, t_BT, cond, uncond, cfg_scale, prediction: str):
  """v = v_u + cfg_scale (v_c - v_u); conditional and unconditional in one batched call.

  `cond` and `uncond` are pytrees of arrays with leading batch dim B, concatenated to 2B
  for one network call. With `uncond=None`, or a Python `cfg_scale == 1`, only the
  conditional branch runs (same result, half the work).
  """
  no_guidance = uncond is None or (isinstance(cfg_scale, (int, float)) and cfg_scale == 1)
  if no_guidance:
    return rf.to_velocity(model_fn(x_BTHWC, t_BT, cond), x_BTHWC, t_BT, prediction)
  if cond is None:
    raise ValueError("classifier-free guidance needs `cond` as well as `uncond`")
  both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
  x2 = jnp.concatenate([x_BTHWC, x_BTHWC], axis=0)
  t2 = jnp.concatenate([t_BT, t_BT], axis=0)
  v_c, v_u = jnp.split(rf.to_velocity(model_fn(x2, t2, both), x2, t2, prediction), 2, axis=0)
  return v_c + (cfg_scale - 1) * (v_c - v_u)  # = v_u + s (v_c - v_u), exact at s = 1


def initial_state(noise_BTHWC, cond_latents_BTHWC, cond_mask_BT, start):
  """x at the first level `start`: (1 - s) * given + s * noise, conditioned frames as given.

  With s = 1 the free frames are pure noise (the given latents there are ignored); with
  s < 1 this is SDEdit's noised input.
  """
  m = cond_mask_BT[:, :, None, None, None]
  noised = (1 - start) * cond_latents_BTHWC + start * noise_BTHWC
  return jnp.where(m, cond_latents_BTHWC, noised).astype(noise_BTHWC.dtype)


def sample(model_fn, noise_BTHWC, cond_latents_BTHWC, cond_mask_BT, sigmas_S, *,
           solver: str = "euler", cfg_scale=1.0, cond=None, uncond=None,
           prediction: str = "x0"):
  """Integrates from sigmas_S[0] to sigmas_S[-1] (= 0) and returns the clean latents.

  Args:
    model_fn: `(x_t_BTHWC, t_BT, cond) -> out_BTHWC` (x0 or v, per `prediction`).
    noise_BTHWC: standard Gaussian noise; its shape and dtype are the output's.
    cond_latents_BTHWC: clean latents: kept exactly on frames where `cond_mask_BT`, and
      the SDEdit input on the others when sigmas_S[0] < 1 (ignored there when it is 1).
    cond_mask_BT: bool, frames held clean.
    sigmas_S: decreasing noise levels (S = steps + 1), e.g. schedules.sigmas(...).
    solver: 'euler' (one call per step) or 'heun' (two, Euler on the last step to 0).
    cfg_scale: guidance scale (float or scalar array); see guided_velocity.
    cond / uncond: conditioning pytrees with leading dim B (uncond=None: no guidance).
    prediction: what model_fn returns, 'x0' or 'v'.
  Returns:
    x0_BTHWC, equal to cond_latents_BTHWC on conditioned frames.
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver={solver!r} is not one of {SOLVERS} (set config.sample.solver)")
  if cond_latents_BTHWC.shape != noise_BTHWC.shape or cond_mask_BT.shape != noise_BTHWC.shape[:2]:
    raise ValueError(f"noise {noise_BTHWC.shape}, cond_latents {cond_latents_BTHWC.shape} and "
                     f"cond_mask {cond_mask_BT.shape} must agree on (B, T, H, W, C) / (B, T)")
  sigmas_S = jnp.asarray(sigmas_S, jnp.float32)
  given = cond_latents_BTHWC.astype(noise_BTHWC.dtype)
  m = cond_mask_BT[:, :, None, None, None]

  def velocity(x, sigma):
    t_BT = jnp.where(cond_mask_BT, 0.0, sigma)
    v = guided_velocity(model_fn, x, t_BT, cond, uncond, cfg_scale, prediction)
    return jnp.where(m, 0.0, v).astype(x.dtype)

  def step(i, x):
    s, s_next = sigmas_S[i], sigmas_S[i + 1]
    dt = (s_next - s).astype(x.dtype)
    v = velocity(x, s)
    x_euler = jnp.where(m, given, x + dt * v)
    if solver == "euler":
      return x_euler
    # Heun's trapezoid needs v at s_next; at s_next = 0 x0-prediction's v is undefined,
    # so the last step stays Euler (as in Karras et al. 2022).
    heun = lambda: jnp.where(m, given, x + dt * 0.5 * (v + velocity(x_euler, s_next)))
    return jax.lax.cond(s_next > 0, heun, lambda: x_euler)

  x = initial_state(noise_BTHWC, given, cond_mask_BT, sigmas_S[0].astype(noise_BTHWC.dtype))
  return jax.lax.fori_loop(0, sigmas_S.shape[0] - 1, step, x)
