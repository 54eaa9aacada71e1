"""Every attention kernel gives the plain-XLA result: outputs and gradients, f32, with masks.

Sequence-parallel kernels (ulysses, ring) run on the 8 virtual CPU devices with the
'sequence' axis 4 or 8 wide; splash runs in the Pallas interpreter; cuDNN, absent on
CPU, must fall back to XLA with a warning.
"""
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sora_jax.models.attention import attend
from sora_jax.parallel import attention_kernels as ak
from sora_jax.parallel import mesh as meshlib

TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(b, n_q, n_k, heads, d, masked=True, empty_row=True, seed=0):
  kq, kk, kv, km = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (b, n_q, heads, d))
  k = jax.random.normal(kk, (b, n_k, heads, d))
  v = jax.random.normal(kv, (b, n_k, heads, d))
  mask = None
  if masked:  # Random key mask; optionally one row fully masked (uniform weights, not NaN).
    mask = jax.random.bernoulli(km, 0.6, (b, n_k)).at[:, 0].set(True)
    if empty_row:
      mask = mask.at[-1].set(False)
  return q, k, v, mask


def _out_and_grads(fn, q, k, v, mask):
  """Output and d(weighted sum of output)/d(q, k, v): gradients of every kernel checked."""
  w = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))
  loss = lambda q, k, v: (fn(q, k, v, mask) * w).sum()
  return jax.jit(fn)(q, k, v, mask), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _assert_matches_xla(fn, q, k, v, mask):
  ref = lambda q, k, v, m: attend(q, k, v, kv_mask_BS=m, impl="xla")
  out, grads = _out_and_grads(fn, q, k, v, mask)
  ref_out, ref_grads = _out_and_grads(ref, q, k, v, mask)
  np.testing.assert_allclose(out, ref_out, **TOL)
  for g, r, name in zip(grads, ref_grads, "qkv"):
    np.testing.assert_allclose(g, r, err_msg=f"d{name}", **TOL)


def _mesh(data, fsdp, sequence, tensor):
  return meshlib.make_mesh(ml_collections.ConfigDict(
      dict(data=data, fsdp=fsdp, sequence=sequence, tensor=tensor)))


@pytest.fixture
def warnings_seen(monkeypatch, caplog):
  """Fresh once-only warning memory; yields the captured warning messages."""
  monkeypatch.setattr(ak, "_warned", set())
  caplog.set_level(logging.WARNING)
  yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("n_q,n_k", [(40, 40), (40, 7)], ids=["self", "cross"])
def test_blockwise_matches_xla_with_padding_and_masks(n_q, n_k):
  # block=16 does not divide 40 tokens: padded queries and keys must change nothing.
  q, k, v, mask = _inputs(2, n_q, n_k, 4, 16)
  _assert_matches_xla(lambda q, k, v, m: ak.blockwise_attention(q, k, v, m, block=16),
                      q, k, v, mask)


def test_blockwise_memory_is_linear_in_tokens():
  """Training memory (forward + backward) of blockwise attention grows ~linearly."""
  def temp_bytes(impl, tokens):
    q, k, v, _ = _inputs(1, tokens, tokens, 2, 16, masked=False)
    loss = lambda q, k, v: ak.attend(q, k, v, impl=impl, block=128).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
        q, k, v).compile().memory_analysis().temp_size_in_bytes

  small, large = temp_bytes("blockwise", 1024), temp_bytes("blockwise", 4096)
  assert large < 6 * small, (small, large)  # 4x tokens; quadratic would be ~16x.
  assert large < temp_bytes("xla", 4096) / 8


@pytest.mark.parametrize("impl", ["ulysses", "ring"])
@pytest.mark.parametrize("shape", [(2, 1, 4, 1), (1, 1, 8, 1), (1, 2, 2, 2)],
                         ids=["data2-seq4", "seq8", "fsdp2-seq2-tensor2"])
def test_sequence_parallel_matches_xla(impl, shape, warnings_seen):
  mesh = _mesh(*shape)
  q, k, v, mask = _inputs(2, 64, 64, 8, 16)
  fn = lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl=impl, block=8)
  with jax.set_mesh(mesh):
    _assert_matches_xla(fn, q, k, v, mask)
    hlo = jax.jit(fn).lower(q, k, v, mask).as_text()
  # Really sequence parallel (no silent fallback): the kernel's collective is there.
  assert ("all_to_all" if impl == "ulysses" else "collective_permute") in hlo
  assert not warnings_seen()


def test_mesh_from_set_mesh_without_context():
  ak.set_mesh(_mesh(1, 1, 8, 1))
  try:
    q, k, v, mask = _inputs(1, 32, 32, 8, 8)
    fn = lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl="ring", block=4)
    _assert_matches_xla(fn, q, k, v, mask)
    assert "collective_permute" in jax.jit(fn).lower(q, k, v, mask).as_text()
  finally:
    ak.set_mesh(None)


def test_ulysses_with_indivisible_heads_falls_back_to_ring(warnings_seen):
  q, k, v, mask = _inputs(2, 32, 32, 2, 8)  # 2 heads over a 4-wide sequence axis.
  with jax.set_mesh(_mesh(2, 1, 4, 1)):
    _assert_matches_xla(lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl="ulysses"),
                        q, k, v, mask)
  assert any("2 heads are not divisible by the sequence axis (4)" in w and "'ring'" in w
             for w in warnings_seen())


def test_sequence_parallel_cross_attention_and_no_mesh(warnings_seen):
  # Cross-attention to 10 text tokens: queries stay token-sharded, no fallback warning.
  q, k, v, mask = _inputs(2, 64, 10, 8, 16)
  with jax.set_mesh(_mesh(2, 1, 4, 1)):
    _assert_matches_xla(lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl="ring"),
                        q, k, v, mask)
  assert not warnings_seen()
  # Self-attention without any mesh: blockwise, saying why.
  q, k, v, mask = _inputs(1, 24, 24, 2, 8)
  _assert_matches_xla(lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl="ring"),
                      q, k, v, mask)
  assert any("no mesh" in w and "'blockwise'" in w for w in warnings_seen())


def test_splash_matches_xla_in_interpreter():
  # Fully masked rows are kernel-defined under splash (module docstring): none here.
  q, k, v, mask = _inputs(2, 256, 128, 2, 32, empty_row=False)
  fn = lambda q, k, v, m: ak.splash_attention(q, k, v, m, mesh=_mesh(2, 1, 1, 4),
                                              interpret=True)
  _assert_matches_xla(fn, q, k, v, mask)


def test_splash_pads_token_counts_that_are_not_whole_tiles():
  # Wan's clips (32,760 and 75,600 tokens) are not multiples of 128: padded keys must get
  # no weight (beside the masked ones) and padded queries must be dropped.
  q, k, v, mask = _inputs(1, 100, 72, 2, 32, empty_row=False)
  _assert_matches_xla(lambda q, k, v, m: ak.splash_attention(q, k, v, m, interpret=True),
                      q, k, v, mask)


@pytest.mark.parametrize("impl,why", [("cudnn", "needs a GPU"), ("splash", "TPU kernel")])
def test_platform_kernels_fall_back_on_cpu_with_a_warning(impl, why, warnings_seen):
  q, k, v, mask = _inputs(2, 16, 16, 2, 8)
  _assert_matches_xla(lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl=impl),
                      q, k, v, mask)
  msgs = [w for w in warnings_seen() if why in w]
  assert len(msgs) == 1, warnings_seen()  # Once, however many times it was traced.


def test_unknown_impl_is_a_clear_error():
  q, k, v, _ = _inputs(1, 4, 4, 1, 4, masked=False)
  with pytest.raises(ValueError, match="choose one of: xla, cudnn, splash"):
    ak.attend(q, k, v, impl="flash3")


@pytest.mark.parametrize("impl", ["cudnn", "splash", "blockwise", "ulysses", "ring"])
def test_models_attend_dispatches_every_impl(impl):
  """What the DiT calls: `attend(..., impl=config.dit.attention)` equals 'xla' everywhere."""
  q, k, v, mask = _inputs(2, 32, 32, 4, 8)
  with jax.set_mesh(_mesh(2, 1, 4, 1)):
    _assert_matches_xla(lambda q, k, v, m: attend(q, k, v, kv_mask_BS=m, impl=impl, block=8),
                        q, k, v, mask)


def test_flash_kernel_on_sequence_mesh_runs_inside_ulysses(monkeypatch):
  """cudnn/splash with tokens split over 'sequence': the kernel sees all tokens, H/n heads."""
  seen = []

  def fake_cudnn(q, k, v, mask):  # Stands in for cuDNN (absent on CPU); records its view.
    seen.append(q.shape)
    return attend(q, k, v, kv_mask_BS=mask, impl="xla")

  monkeypatch.setattr(ak, "_cudnn_unsupported", lambda *a: None)
  monkeypatch.setattr(ak, "_cudnn", fake_cudnn)
  q, k, v, mask = _inputs(2, 32, 32, 8, 8)
  with jax.set_mesh(_mesh(2, 1, 4, 1)):
    _assert_matches_xla(lambda q, k, v, m: ak.attend(q, k, v, kv_mask_BS=m, impl="cudnn"),
                        q, k, v, mask)
  assert seen and all(s == (1, 32, 2, 8) for s in seen), seen  # Batch 2/2, heads 8/4.
