"""The rectified-flow training loss: MSE on the velocity, over unconditioned frames."""
import jax.numpy as jnp

from sora_jax.diffusion import rectified_flow as rf

# x0-prediction's velocity error is (x0_pred - x0) / t: its 1/t^2 weight explodes as
# t -> 0. Below X0_T_CLIP the weight is held at 1 / X0_T_CLIP^2 (both prediction and
# target are divided by the same clipped t, so the optimum stays the true x0). With the
# default logit-normal t fewer than 0.2% of samples fall below 0.05.
X0_T_CLIP = 0.05


def noised(x0_BTHWC, t_B, eps_BTHWC, cond_mask_BT):
  """(x_t, t_BT): the network's input at per-sample timestep t_B, frames in cond_mask_BT
  given clean (t = 0, so x_t = x0 there)."""
  t_BT = jnp.where(cond_mask_BT, 0.0, t_B[:, None].astype(jnp.float32))
  return rf.interpolate(x0_BTHWC, eps_BTHWC, t_BT), t_BT


def rf_loss(model_fn, x0_BTHWC, t_B, eps_BTHWC, cond_mask_BT, prediction: str, cond=None,
            t_clip: float = X0_T_CLIP):
  """Returns (loss, per_sample_B): mean squared velocity error over unconditioned frames.

  Args:
    model_fn: `(x_t_BTHWC, t_BT, cond) -> out_BTHWC`, out being x0 or v (`prediction`).
    x0_BTHWC: clean latents.
    t_B: one training timestep per sample (see schedules.sample_timesteps).
    eps_BTHWC: standard Gaussian noise, like x0.
    cond_mask_BT: bool, frames given clean: they get t = 0 (so x_t = x0 exactly) and
      are left out of the loss. At least one frame per sample must be False.
    prediction: 'x0' or 'v'. The loss is on v either way; for 'x0' it is
      |x0_pred - x0|^2 / max(t, t_clip)^2, i.e. exactly |v_pred - v|^2 for t >= t_clip.
    cond: the network's conditioning (e.g. (text_emb_BLD, text_mask_BL)), passed through.

  per_sample_B is the mean over a sample's unconditioned frames and all their latent
  elements (float32); loss is its mean over the batch, so every sample weighs the same
  whatever its number of conditioned frames.
  """
  x_t, t_BT = noised(x0_BTHWC, t_B, eps_BTHWC, cond_mask_BT)
  out = model_fn(x_t, t_BT, cond).astype(jnp.float32)
  x0 = x0_BTHWC.astype(jnp.float32)
  if prediction == "v":
    err = out - rf.velocity_target(x0, eps_BTHWC.astype(jnp.float32))
  elif prediction == "x0":
    err = (out - x0) / jnp.maximum(rf.expand_t(t_BT, out), t_clip)
  else:
    raise ValueError(f"prediction={prediction!r} is not one of {rf.PREDICTIONS}")
  per_frame_BT = jnp.mean(jnp.square(err), axis=(2, 3, 4))
  free_BT = (~cond_mask_BT).astype(jnp.float32)
  num_free_B = jnp.maximum(jnp.sum(free_BT, axis=1), 1.0)
  per_sample_B = jnp.sum(per_frame_BT * free_BT, axis=1) / num_free_B
  return jnp.mean(per_sample_B), per_sample_B
