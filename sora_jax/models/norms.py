"""RMSNorm: the DiT's q/k norms and the T5 text encoder's layer norms."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis, statistics in float32.

  axis_name: the scale's logical axis for the sharding rules (the DiT's norms span all
  heads, Wan's 'rms_norm_across_heads'); None for a plain parameter (T5).
  """
  eps: float
  param_dtype: Any = jnp.float32
  axis_name: str | None = "heads"

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.ones
    if self.axis_name:
      init = nn.with_logical_partitioning(init, (self.axis_name,))
    w = self.param("scale", init, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)
