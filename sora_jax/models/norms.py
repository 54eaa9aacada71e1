"""RMS normalisation, the one implementation: the DiT's q/k norms, its pooled caption, the
T5 text encoder's layer norms and the VAE's channel norms (Wan's RMS_norm)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def rms_normalize(x, eps: float = 0.0, min_norm: float = 0.0):
  """x / sqrt(mean(x^2) + eps) over the last axis, in float32.

  min_norm > 0 floors the vector's L2 norm at min_norm instead (torch's F.normalize,
  which Wan's RMS_norm uses: L2-normalise, times sqrt(C)), so an all-zero vector stays 0.
  """
  x32 = x.astype(jnp.float32)
  ms = jnp.mean(jnp.square(x32), -1, keepdims=True) + eps
  if min_norm:
    ms = jnp.maximum(ms, min_norm ** 2 / x.shape[-1])
  return x32 * jax.lax.rsqrt(ms)


class RMSNorm(nn.Module):
  """rms_normalize(x) * scale over the last axis, statistics in float32, output in x's dtype.

  axis_name: the scale's logical axis for the sharding rules (the DiT's norms span all
  heads, Wan's 'rms_norm_across_heads'; the VAE's its channels); None for a plain
  parameter (T5). min_norm: see rms_normalize (the VAE: 1e-12, eps 0).
  """
  eps: float
  param_dtype: Any = jnp.float32
  axis_name: str | None = "heads"
  min_norm: float = 0.0

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.ones
    if self.axis_name:
      init = nn.with_logical_partitioning(init, (self.axis_name,))
    w = self.param("scale", init, (x.shape[-1],), self.param_dtype)
    y = rms_normalize(x, self.eps, self.min_norm)
    return (y * w.astype(jnp.float32)).astype(x.dtype)
