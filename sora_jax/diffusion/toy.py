"""Analytic optimal denoisers: `model_fn`s whose exact answer is known, with no network.

They let solvers, guidance and sampling tasks be checked against closed forms (tests,
and a quick end-to-end run of the sampling code path before any model is trained).
Each returns `model_fn(x_t_BTHWC, t_BT, cond) -> out_BTHWC` predicting E[x0 | x_t]
(or the matching velocity), the minimiser of the training loss for its data.
"""
import jax.numpy as jnp

from sora_jax.diffusion import rectified_flow as rf


def _as_prediction(x0_hat, x_t, t_BT, prediction):
  return x0_hat if prediction == "x0" else rf.to_velocity(x0_hat, x_t, t_BT, "x0")


def gaussian_denoiser(mean=0.0, std=1.0, prediction: str = "x0"):
  """Data x0 ~ N(mean, std^2), every element independent.

  E[x0 | x_t] = mean + (1-t) std^2 / ((1-t)^2 std^2 + t^2) (x_t - (1-t) mean). The
  probability-flow ODE is then the monotone map between Gaussians, so sampling from
  noise eps returns exactly mean + std * eps (`gaussian_flow_target`). If `cond` is
  given it is a (B,) array of per-sample means replacing `mean`: a conditional model
  whose unconditional branch is `cond = zeros`.
  """
  rf._check_prediction(prediction)

  def model_fn(x_t, t_BT, cond):
    mu = mean if cond is None else cond[:, None, None, None, None]
    t = rf.expand_t(t_BT, x_t)
    gain = (1 - t) * std**2 / ((1 - t) ** 2 * std**2 + t**2)
    return _as_prediction(mu + gain * (x_t - (1 - t) * mu), x_t, t_BT, prediction)

  return model_fn


def gaussian_flow_target(noise, mean=0.0, std=1.0, start=1.0, given=None):
  """Exact ODE solution for `gaussian_denoiser` from x_s = (1-s) given + s noise to t = 0."""
  x_s = start * noise if given is None else (1 - start) * given + start * noise
  scale = ((1 - start) ** 2 * std**2 + start**2) ** 0.5
  return mean + std * (x_s - (1 - start) * mean) / scale


def static_video_denoiser(std=1.0, prediction: str = "x0"):
  """Data: still videos, every frame equal to one c ~ N(0, std^2) (per latent element).

  Frame f at level t_f observes y_f = x_f / (1 - t_f) = c + noise of variance
  (t_f / (1 - t_f))^2, so E[x0_f | x_t] is the precision-weighted mean of the prior and
  all frames' observations; a clean frame (t = 0) pins it to that frame. Conditioning on
  any frame must therefore reproduce that frame everywhere.
  """
  rf._check_prediction(prediction)

  def model_fn(x_t, t_BT, cond):
    del cond  # unconditional data
    t = jnp.maximum(rf.expand_t(t_BT, x_t), rf.T_MIN)
    w = ((1 - t) / t) ** 2  # observation precision, 0 at t = 1
    wy = (1 - t) * x_t / t**2  # w * y without dividing by (1 - t)
    c = jnp.sum(wy, axis=1, keepdims=True) / (1 / std**2 + jnp.sum(w, axis=1, keepdims=True))
    return _as_prediction(jnp.broadcast_to(c, x_t.shape), x_t, t_BT, prediction)

  return model_fn
