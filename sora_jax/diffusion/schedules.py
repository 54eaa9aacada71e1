"""Timestep distributions for training and sigma schedules for sampling.

Both use the same monotone time shift (SD3, Esser et al. 2024, eq. 23):

  shift(t; s) = s t / (1 + (s - 1) t),

which keeps 0 and 1 fixed and, for s > 1, moves mass toward noise. The shift depends on
how many tokens the DiT sees (`resolution_shift`): more tokens carry more redundant
signal, so the same t destroys relatively less of it, and matching the signal-to-noise
ratio of a base size needs s = sqrt(num_tokens / base_tokens) (SD3 derives the square
root by requiring equal uncertainty of the mean over n vs m tokens). The rule is applied
to the base shift `config.diffusion.shift`:

  s = diffusion.shift * sqrt(num_tokens / diffusion.shift_base_tokens)

when `diffusion.shift_resolution_dependent`, else s = diffusion.shift. Video length
counts like resolution: tokens = latent frames x latent height x latent width / patch.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


def shift_time(t, shift: float):
  """shift(t; s) = s t / (1 + (s - 1) t); works on numpy or jax arrays, keeps 0 and 1."""
  return shift * t / (1 + (shift - 1) * t)


def unshift_time(t, shift: float):
  """Inverse of `shift_time`: u with shift_time(u, s) = t."""
  return t / (shift - (shift - 1) * t)


def num_tokens(latent_thw: tuple[int, int, int], patch_size: tuple[int, int, int]) -> int:
  """Tokens the DiT sees for a (latent frames, latent height, latent width) grid."""
  return math.prod(n // p for n, p in zip(latent_thw, patch_size))


def resolution_shift(cfg_diffusion, tokens: int) -> float:
  """The training shift for a sequence of `tokens` tokens (rule in the module docstring)."""
  if cfg_diffusion.shift <= 0:
    raise ValueError(f"diffusion.shift={cfg_diffusion.shift} must be > 0")
  if not cfg_diffusion.shift_resolution_dependent:
    return float(cfg_diffusion.shift)
  return float(cfg_diffusion.shift * math.sqrt(tokens / cfg_diffusion.shift_base_tokens))


def sample_shift(cfg, tokens: int, shift: float | None = None) -> float:
  """The sampling shift: `shift` (default `config.sample.shift`) if > 0, else the training
  rule for `tokens`."""
  shift = cfg.sample.shift if shift is None else shift
  if shift > 0:
    return float(shift)
  return resolution_shift(cfg.diffusion, tokens)


def sample_timesteps(rng, batch: int, tokens: int, cfg_diffusion) -> jnp.ndarray:
  """Training timesteps t_B (float32): shift(sigmoid(N(t_mean, t_std)); resolution_shift).

  Logit-normal (SD3) puts most samples at intermediate t where the velocity is hardest
  to predict; the shift then adapts the distribution to the sequence length. With
  diffusion.t_top_frac > 0, that share of the samples (each by a coin flip) is drawn
  uniform in [t_top, 1) instead, from keys folded off `rng` (the other draws unchanged).
  """
  u = cfg_diffusion.t_mean + cfg_diffusion.t_std * jax.random.normal(rng, (batch,), jnp.float32)
  t = shift_time(jax.nn.sigmoid(u), resolution_shift(cfg_diffusion, tokens))
  if cfg_diffusion.t_top_frac > 0:
    k_pick, k_top = jax.random.split(jax.random.fold_in(rng, 1))
    top = jax.random.uniform(k_top, (batch,), jnp.float32, cfg_diffusion.t_top, 1.0)
    t = jnp.where(jax.random.bernoulli(k_pick, cfg_diffusion.t_top_frac, (batch,)), top, t)
  return t


def sigmas(steps: int, shift: float, start: float = 1.0,
           num_train_timesteps: int = 1000) -> np.ndarray:
  """Sampling schedule: `steps + 1` float32 noise levels from `start` down to exactly 0.

  With start = 1 this is diffusers' FlowMatchEulerDiscreteScheduler(shift=shift,
  num_train_timesteps=1000).set_timesteps(steps).sigmas (its timesteps are these times
  1000, without the final 0). That includes diffusers' smallest nonzero level
  shift(shift(1/1000)) (the shift is applied twice to it), so the last step goes from a
  small positive level to 0.

  `start` < 1 (SDEdit strength) keeps the same number of steps and the same spacing in
  the unshifted variable, scaled to [0, unshift(start)]: the first level is exactly
  `start`, and start = 0 gives all zeros (sampling then returns its input unchanged).
  """
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1")
  if shift <= 0:
    raise ValueError(f"shift={shift} must be > 0 (sample.shift < 0 selects the training rule)")
  if not 0.0 <= start <= 1.0:
    raise ValueError(f"start={start} must be in [0, 1] (SDEdit strength)")
  # diffusers computes its smallest level in float32 before the float64 linspace.
  u_min = float(np.float32(shift_time(np.float32(1.0 / num_train_timesteps), np.float32(shift))))
  u = np.linspace(1.0, u_min, steps, dtype=np.float64) * unshift_time(start, shift)
  out = np.append(shift_time(u, shift), 0.0).astype(np.float32)
  if start < 1.0:
    out[0] = start  # exact first level, whatever the rounding of unshift/shift.
  return out
