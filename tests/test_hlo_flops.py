"""FLOPs read from HLO (sora_jax/parallel/aot.py) against XLA's own arithmetic.

The reference: a convolution of all-ones operands, run by XLA, holds in each output element
the number of multiply-adds that produced it, so their sum is the convolution's MACs
whatever its window, padding, strides, dilations or groups.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.parallel import aot

# (lhs shape, kernel shape, dimension numbers, conv kwargs): the padded windows the TPU
# compiler writes for matmuls, and convolutions proper.
CASES = [
    # A stacked-kernel projection as libtpu writes it: window 3 over a size-1 input, pad 2_2.
    ((2, 64, 1, 256), (3, 1, 64, 32), ("NCWH", "WHIO", "NCWH"),
     dict(window_strides=(1, 1), padding=((2, 2), (0, 0)))),
    # A weight gradient over two fsdp chunks: window 2, pad 1_1 (one real tap at each end).
    ((64, 2, 256), (2, 64, 32), ("CWN", "WIO", "CWN"),
     dict(window_strides=(1,), padding=((1, 1),))),
    # Convolutions proper: strides, dilations, feature groups.
    ((1, 8, 9, 9), (16, 8, 3, 3), ("NCHW", "OIHW", "NCHW"),
     dict(window_strides=(2, 1), padding=((1, 1), (2, 0)), rhs_dilation=(1, 2))),
    ((2, 4, 7), (6, 2, 3), ("NCW", "OIW", "NCW"),
     dict(window_strides=(1,), padding=((1, 1),), lhs_dilation=(2,), feature_group_count=2)),
    # A plain matmul (no spatial dimension).
    ((8, 16), (16, 4), ("NC", "IO", "NC"), dict(window_strides=(), padding=())),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims,kw", CASES)
def test_convolution_flops_count_real_multiply_adds(lhs_shape, rhs_shape, dims, kw):
  def conv(lhs, rhs):
    return jax.lax.conv_general_dilated(lhs, rhs, dimension_numbers=dims, **kw)

  lhs, rhs = jnp.ones(lhs_shape), jnp.ones(rhs_shape)
  macs = int(np.asarray(conv(lhs, rhs)).sum())
  hlo = jax.jit(conv).lower(lhs, rhs).as_text(dialect="hlo")
  assert " convolution(" in hlo
  assert aot.hlo_summary(hlo)["matmul_flops"] == 2 * macs


def test_dot_flops():
  hlo = jax.jit(lambda a, b: jnp.einsum("bld,dnf->blnf", a, b)).lower(
      jnp.ones((2, 5, 8)), jnp.ones((8, 3, 4))).as_text(dialect="hlo")
  assert aot.hlo_summary(hlo)["matmul_flops"] == 2 * 2 * 5 * 8 * 3 * 4
