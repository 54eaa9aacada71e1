"""The rectified-flow corruption process and conversions between network outputs.

Convention (the whole code base relies on it): latents `x0_BTHWC`, one timestep per
latent frame `t_BT` in [0, 1], t = 0 is clean data and t = 1 pure Gaussian noise:

  x_t = (1 - t) * x0 + t * eps,      v = dx_t/dt = eps - x0.

A network wrapped as `model_fn(x_t_BTHWC, t_BT, cond) -> out_BTHWC` predicts either the
clean latents (`prediction='x0'`) or the velocity (`prediction='v'`); the solvers and the
loss only ever see velocities and clean latents through `to_velocity` / `to_x0`.
"""
import jax.numpy as jnp

PREDICTIONS = ("x0", "v")

# Guard for the one division (x0 -> v divides by t). It only keeps t = 0 frames finite:
# those are conditioning frames whose velocity is discarded. Any real schedule step has
# t >> 1e-6, where the guard is inactive, so the Euler step to t = 0 lands exactly on x0.
T_MIN = 1e-6


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction={prediction!r} is not one of {PREDICTIONS} "
                     "(set config.diffusion.prediction)")


def expand_t(t_BT: jnp.ndarray, x_BTHWC: jnp.ndarray) -> jnp.ndarray:
  """(B, T) timesteps -> (B, T, 1, 1, 1), in x's dtype, to broadcast over a frame."""
  if t_BT.shape != x_BTHWC.shape[:2]:
    raise ValueError(f"timesteps of shape {t_BT.shape} do not match latents {x_BTHWC.shape}; "
                     "give one timestep per (batch, latent frame)")
  return t_BT.astype(x_BTHWC.dtype)[:, :, None, None, None]


def interpolate(x0_BTHWC: jnp.ndarray, eps_BTHWC: jnp.ndarray, t_BT: jnp.ndarray) -> jnp.ndarray:
  """x_t = (1 - t) x0 + t eps, per latent frame; t = 0 returns x0 bit for bit."""
  t = expand_t(t_BT, x0_BTHWC)
  return (1 - t) * x0_BTHWC + t * eps_BTHWC


def velocity_target(x0_BTHWC: jnp.ndarray, eps_BTHWC: jnp.ndarray) -> jnp.ndarray:
  """v = eps - x0: the constant velocity of the straight path from x0 to eps."""
  return eps_BTHWC - x0_BTHWC


def to_velocity(out_BTHWC, x_t_BTHWC, t_BT, prediction: str, t_min: float = T_MIN):
  """Network output -> velocity v = eps - x0.

  'v' is returned as is. 'x0' uses v = (x_t - x0) / t (from x_t = x0 + t v), with t
  clipped below at `t_min`; at t = 1 the formula is exact (v = eps - x0), so only t = 0
  needs the clip.
  """
  _check_prediction(prediction)
  if prediction == "v":
    return out_BTHWC
  t = jnp.maximum(expand_t(t_BT, x_t_BTHWC), t_min)
  return (x_t_BTHWC - out_BTHWC) / t


def to_x0(out_BTHWC, x_t_BTHWC, t_BT, prediction: str):
  """Network output -> clean latents x0 = x_t - t v (no division, so safe at t = 0 and 1)."""
  _check_prediction(prediction)
  if prediction == "x0":
    return out_BTHWC
  return x_t_BTHWC - expand_t(t_BT, x_t_BTHWC) * out_BTHWC
