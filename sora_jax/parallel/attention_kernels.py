"""Attention kernels beyond plain XLA, chosen by `config.dit.attention`.

`sora_jax.models.attention.attend(..., impl=NAME)` hands every impl except 'xla' to
`attend` here. All compute softmax(q k^T / sqrt(D)) v with float32 statistics and give
the same numbers as 'xla' (tests/test_attention_kernels.py), including key masks:

  blockwise  online softmax over key blocks (and query blocks) with a flash-style custom
             VJP, so forward *and* backward memory is linear in tokens. Any platform.
  cudnn      `jax.nn.dot_product_attention(implementation='cudnn')`: GPU, bf16/f16 only.
  splash     TPU splash attention (Pallas), under `shard_map` over batch/heads.
             On a mesh whose 'sequence' axis is > 1 both run per device inside Ulysses
             (below), instead of gathering every token on every device.
  ulysses    sequence parallel: all-to-all from tokens-sharded to heads-sharded over mesh
             axis 'sequence', full attention on local heads, all-to-all back.
  ring       sequence parallel: each device keeps its query tokens; K/V blocks travel
             around the 'sequence' axis with `lax.ppermute` (online softmax; the backward
             pass sends dK/dV around the ring with them), memory O(tokens / devices).

Where an impl cannot run (cuDNN on CPU, splash off TPU, heads not divisible by the
sequence axis...) it falls back, logging once why: ulysses -> ring -> blockwise,
cudnn/splash -> xla. Cross-attention (key tokens != query tokens, e.g. text) under
ulysses/ring needs no sequence communication: queries stay token-sharded, the short K/V
are replicated, so it runs as plain local attention.

Mesh: ulysses, ring and splash need the device mesh. They take the mesh from context,
`jax.sharding.get_abstract_mesh()` (set by `jax.set_mesh(mesh)`, which the trainer and
the benchmark do), and otherwise from `set_mesh(mesh)` here, for callers that jit with
explicit shardings only. Inside they run under `jax.shard_map` manual over every mesh
axis: batch over ('data', 'fsdp'), tokens over 'sequence', heads over 'tensor', matching
the default logical rules, so no resharding happens around the kernel.

Platform: the kernels are chosen for the platform of the mesh they run on (its abstract
device), else JAX's default backend, so `--mode=compile` on a CPU host builds splash for
the TPU topology it compiles for. Under `fallbacks_are_errors()` (that mode) a fallback
raises instead of logging: figures of a program that silently lost its kernel would lie.

Rows whose keys are all masked attend uniformly to every key (as 'xla' does), except
under cudnn/splash where such rows are kernel-defined; callers never produce them (text
masks keep at least the first token).
"""
import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax
from jax.sharding import PartitionSpec as P

from sora_jax.config_check import ConfigError

IMPLS = ("xla", "cudnn", "splash", "blockwise", "ulysses", "ring")

# The same floor as the 'xla' path: a masked key's logit is replaced by it (not added),
# so a row with every key masked attends uniformly instead of producing NaN.
_MASKED = float(jnp.finfo(jnp.float32).min)
# Padding keys (added to reach a whole block) get -inf: they never receive weight, even in
# fully masked rows, so padding cannot change any result.
_PADDED = float("-inf")

_mesh = None
_warned = set()
_strict = False


def set_mesh(mesh) -> None:
  """Mesh for ulysses/ring/splash when none is set in context with `jax.set_mesh`."""
  global _mesh
  _mesh = mesh


def current_mesh():
  """The context mesh if it has axes, else the one from `set_mesh` (or None)."""
  ctx = jax.sharding.get_abstract_mesh()
  if ctx is not None and ctx.axis_names:
    return ctx
  return _mesh


def platform(mesh=None) -> str:
  """The platform programs are built for: the mesh's devices' (default: `current_mesh()`),
  else JAX's default backend ('cpu', 'gpu', 'tpu')."""
  mesh = mesh if mesh is not None else current_mesh()
  if mesh is not None and not isinstance(mesh, jax.sharding.AbstractMesh):
    mesh = mesh.abstract_mesh
  device = getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


@contextlib.contextmanager
def fallbacks_are_errors():
  """Within: an impl that cannot run raises ConfigError (with why) instead of falling back."""
  global _strict
  prev, _strict = _strict, True
  try:
    yield
  finally:
    _strict = prev


def _warn_once(impl: str, fallback: str, why: str) -> None:
  if _strict:
    raise ConfigError(f"dit.attention={impl!r} cannot run here ({why}); it would fall back to "
                      f"{fallback!r}")
  key = (impl, fallback, why)
  if key not in _warned:
    _warned.add(key)
    logging.warning("attention impl %r cannot run here (%s); using %r instead.", impl, why,
                    fallback)


def _info_once(impl: str, what: str) -> None:
  if (impl, what) not in _warned:
    _warned.add((impl, what))
    logging.info("attention impl %r: %s.", impl, what)


def _xla(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS):
  # Imported here: models.attention imports this module to dispatch to it.
  from sora_jax.models import attention  # pylint: disable=g-import-not-at-top
  return attention.attend(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS=kv_mask_BS, impl="xla")


# ------------------------------------------------------------------ blockwise (flash) core
# Layout inside: blocks stacked on a leading axis, e.g. q blocks [nq, B, bq, H, D];
# softmax statistics m (running max) and l (running sum) as [B, H, bq] float32. Keeping m
# and l apart (not only logsumexp) makes the backward exact for fully masked rows too.


def _blocks(x, block: int):
  """[B, N, ...] with N % block == 0 -> [N / block, B, block, ...]."""
  b, n = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, n // block, block, *x.shape[2:]), 1, 0)


def _unblocks(x):
  """[N / block, B, block, ...] -> [B, N, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _logits(q_i, k_j, bias_j, scale):
  """Scaled logits [B, H, bq, bk] in f32; masked / padded keys take their bias value."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q_i, k_j, preferred_element_type=jnp.float32) * scale
  bias = bias_j[:, None, None, :]
  return jnp.where(bias == 0, s, bias)


def _fwd_blocks(qb, kb, vb, biasb, carry, scale):
  """Online-softmax update of (acc, m, l) for every query block over all key blocks.

  qb [nq,B,bq,H,D]; kb, vb [nk,B,bk,H,D]; biasb [nk,B,bk]; carry: acc [nq,B,H,bq,D],
  m and l [nq,B,H,bq] (f32). Returns the updated carry.
  """
  def per_query_block(args):
    q_i, c = args

    def per_key_block(c, kvb):
      acc, m, l = c
      k_j, v_j, bias_j = kvb
      s = _logits(q_i, k_j, bias_j, scale)
      m_new = jnp.maximum(m, s.max(-1))
      alpha = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      l = alpha * l + p.sum(-1)
      acc = alpha[..., None] * acc + jnp.einsum(
          "bhqk,bkhd->bhqd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
      return (acc, m_new, l), None

    return lax.scan(per_key_block, c, (kb, vb, biasb))[0]

  return lax.map(per_query_block, (qb, carry))


def _init_carry(qb):
  nq, b, bq, h, d = qb.shape
  return (jnp.zeros((nq, b, h, bq, d), jnp.float32),
          jnp.full((nq, b, h, bq), -jnp.inf, jnp.float32),
          jnp.zeros((nq, b, h, bq), jnp.float32))


def _finish(carry, dtype):
  """(acc, m, l) -> normalised output blocks [nq, B, bq, H, D] in dtype."""
  acc, _, l = carry
  return jnp.swapaxes(acc / l[..., None], 2, 3).astype(dtype)


def _bwd_blocks(qb, kb, vb, biasb, dob, m, l, delta, scale):
  """Flash-attention backward over one set of key blocks.

  delta [nq,B,H,bq] = rowsum(dO * O). Returns dq [nq,B,bq,H,D] and dk, dv [nk,B,bk,H,D],
  all f32. Scores are recomputed per (query block, key block) tile, never stored.
  """
  def per_query_block(dkv, args):
    q_i, do_i, m_i, l_i, delta_i = args

    def per_key_block(dq_i, kvb):
      k_j, v_j, bias_j = kvb
      s = _logits(q_i, k_j, bias_j, scale)
      p = jnp.exp(s - m_i[..., None]) / l_i[..., None]
      dv_j = jnp.einsum("bhqk,bqhd->bkhd", p.astype(do_i.dtype), do_i,
                        preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqhd,bkhd->bhqk", do_i, v_j, preferred_element_type=jnp.float32)
      # Masked logits are constants (replaced, not shifted): no gradient flows through them.
      ds = jnp.where(bias_j[:, None, None, :] == 0, p * (dp - delta_i[..., None]), 0.0)
      dq_i = dq_i + jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k_j.dtype), k_j,
                               preferred_element_type=jnp.float32) * scale
      dk_j = jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q_i.dtype), q_i,
                        preferred_element_type=jnp.float32) * scale
      return dq_i, (dk_j, dv_j)

    dq_i, (dk, dv) = lax.scan(per_key_block, jnp.zeros(q_i.shape, jnp.float32),
                              (kb, vb, biasb))
    return (dkv[0] + dk, dkv[1] + dv), dq_i

  zeros = jnp.zeros(kb.shape, jnp.float32)
  (dk, dv), dq = lax.scan(per_query_block, (zeros, zeros), (qb, dob, m, l, delta))
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q_BLHD, k_BSHD, v_BSHD, bias_BS, bq, bk):
  """Attention with L % bq == 0 and S % bk == 0; bias_BS: 0 keep, else the logit value."""
  return _flash_fwd(q_BLHD, k_BSHD, v_BSHD, bias_BS, bq, bk)[0]


def _flash_fwd(q, k, v, bias, bq, bk):
  scale = q.shape[-1] ** -0.5
  qb = _blocks(q, bq)
  carry = _fwd_blocks(qb, _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk),
                      _init_carry(qb), scale)
  o = _unblocks(_finish(carry, v.dtype))
  return o, (q, k, v, bias, o, carry[1], carry[2])


def _flash_bwd(bq, bk, res, do):
  q, k, v, bias, o, m, l = res
  scale = q.shape[-1] ** -0.5
  dob = _blocks(do, bq)
  delta = jnp.einsum("nbqhd,nbqhd->nbhq", dob.astype(jnp.float32),
                     _blocks(o, bq).astype(jnp.float32))
  dq, dk, dv = _bwd_blocks(_blocks(q, bq), _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk),
                           dob, m, l, delta, scale)
  return (_unblocks(dq).astype(q.dtype), _unblocks(dk).astype(k.dtype),
          _unblocks(dv).astype(v.dtype), jnp.zeros_like(bias))


_flash.defvjp(_flash_fwd, _flash_bwd)


def _bias(kv_mask_BS, b: int, s: int):
  if kv_mask_BS is None:
    return jnp.zeros((b, s), jnp.float32)
  return jnp.where(kv_mask_BS, 0.0, _MASKED).astype(jnp.float32)


def _pad_axis1(x, multiple: int, value=0.0):
  pad = -x.shape[1] % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _block_sizes(n_q: int, n_k: int, block: int) -> tuple[int, int]:
  return min(block, n_q), min(block, n_k)


def blockwise_attention(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS=None, *, block: int = 512):
  """Memory-linear attention: [B,L,H,D] x [B,S,H,D] -> [B,L,H,D] in v's dtype.

  Tiles of `block` queries x `block` keys are the largest intermediates, in the forward
  and in the backward (custom VJP recomputing scores). Token counts need not divide
  `block`: queries and keys are padded, padded keys never receive weight.
  """
  b, n_q = q_BLHD.shape[:2]
  n_k = k_BSHD.shape[1]
  bq, bk = _block_sizes(n_q, n_k, block)
  bias = _pad_axis1(_bias(kv_mask_BS, b, n_k), bk, _PADDED)
  o = _flash(_pad_axis1(q_BLHD, bq), _pad_axis1(k_BSHD, bk), _pad_axis1(v_BSHD, bk),
             bias, bq, bk)
  return o[:, :n_q]


# ------------------------------------------------------------------ mesh helpers
def _axis_size(mesh, name: str) -> int:
  return dict(zip(mesh.axis_names, mesh.axis_sizes)).get(name, 1) if mesh is not None else 1


def _batch_axes(mesh, batch: int):
  """The ('data', 'fsdp') axes the batch dim is split over inside shard_map (or None)."""
  axes = tuple(a for a in ("data", "fsdp") if _axis_size(mesh, a) > 1)
  while axes and batch % math.prod(_axis_size(mesh, a) for a in axes):
    axes = axes[1:]
  return axes or None


def _head_axis(mesh, heads: int, also: int = 1):
  """'tensor' if heads split over it (and then still over `also`), else None."""
  t = _axis_size(mesh, "tensor")
  return "tensor" if t > 1 and heads % (t * also) == 0 else None


def _specs(mesh, b: int, h: int, tokens_axis, heads_also: int = 1):
  """PartitionSpecs (x_BLHD, mask_BS) for a shard_map manual over every mesh axis."""
  batch = _batch_axes(mesh, b)
  return P(batch, tokens_axis, _head_axis(mesh, h, heads_also), None), P(batch, tokens_axis)


def _shard_map(body, mesh, x_spec, mask_spec, has_mask: bool):
  in_specs = (x_spec,) * 3 + ((mask_spec,) if has_mask else ())
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=x_spec,
                       check_vma=False)


# ------------------------------------------------------------------ sequence parallel
def _ulysses(q, k, v, kv_mask, mesh, local):
  """All-to-all tokens->heads over 'sequence', `local` attention, all-to-all back."""
  n = _axis_size(mesh, "sequence")
  x_spec, m_spec = _specs(mesh, q.shape[0], q.shape[2], "sequence", heads_also=n)

  def body(q, k, v, *mask):
    to_heads = functools.partial(lax.all_to_all, axis_name="sequence", split_axis=2,
                                 concat_axis=1, tiled=True)
    full_mask = lax.all_gather(mask[0], "sequence", axis=1, tiled=True) if mask else None
    o = local(to_heads(q), to_heads(k), to_heads(v), full_mask)
    return lax.all_to_all(o, "sequence", split_axis=1, concat_axis=2, tiled=True)

  args = (q, k, v) + ((kv_mask,) if kv_mask is not None else ())
  return _shard_map(body, mesh, x_spec, m_spec, kv_mask is not None)(*args)


def _rotate(xs, n: int):
  perm = [(i, (i + 1) % n) for i in range(n)]
  return jax.tree.map(lambda x: lax.ppermute(x, "sequence", perm), xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring_core(q, k, v, bias, bq, bk, n):
  """Per-device ring attention: local q [B,Lc,H,D] against K/V chunks visiting in turn."""
  return _ring_fwd(q, k, v, bias, bq, bk, n)[0]


def _ring_fwd(q, k, v, bias, bq, bk, n):
  scale = q.shape[-1] ** -0.5
  qb = _blocks(q, bq)

  def attend_chunk(carry, k, v, bias):
    return _fwd_blocks(qb, _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk), carry, scale)

  def step(state, _):
    carry, kvb = state
    kvb = _rotate(kvb, n)
    return (attend_chunk(carry, *kvb), kvb), None

  carry = attend_chunk(_init_carry(qb), k, v, bias)
  carry, _ = lax.scan(step, (carry, (k, v, bias)), None, length=n - 1)[0]
  o = _unblocks(_finish(carry, v.dtype))
  return o, (q, k, v, bias, o, carry[1], carry[2])


def _ring_bwd(bq, bk, n, res, do):
  q, k, v, bias, o, m, l = res
  scale = q.shape[-1] ** -0.5
  qb, dob = _blocks(q, bq), _blocks(do, bq)
  delta = jnp.einsum("nbqhd,nbqhd->nbhq", dob.astype(jnp.float32),
                     _blocks(o, bq).astype(jnp.float32))

  def grads_chunk(k, v, bias):
    return _bwd_blocks(qb, _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk), dob, m, l,
                       delta, scale)

  def step(state, _):
    dq, kvb, dkv = state
    kvb, dkv = _rotate((kvb, dkv), n)
    dq_c, dk_c, dv_c = grads_chunk(*kvb)
    return (dq + dq_c, kvb, (dkv[0] + _unblocks(dk_c), dkv[1] + _unblocks(dv_c))), None

  dq, dk, dv = grads_chunk(k, v, bias)
  state = (dq, (k, v, bias), (_unblocks(dk), _unblocks(dv)))
  dq, _, dkv = lax.scan(step, state, None, length=n - 1)[0]
  # One more hop brings each chunk's accumulated dK/dV back to the device that owns it.
  dk, dv = _rotate(dkv, n)
  return (_unblocks(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          jnp.zeros_like(bias))


_ring_core.defvjp(_ring_fwd, _ring_bwd)


def _ring(q, k, v, kv_mask, mesh, block):
  n = _axis_size(mesh, "sequence")
  b, _, h, _ = q.shape
  x_spec, m_spec = _specs(mesh, b, h, "sequence")

  def body(q, k, v, bias):
    bq, bk = _block_sizes(q.shape[1], k.shape[1], block)
    # Padding per local chunk keeps every block holding at least one real key.
    bias = _pad_axis1(bias, bk, _PADDED)
    o = _ring_core(_pad_axis1(q, bq), _pad_axis1(k, bk), _pad_axis1(v, bk), bias, bq, bk, n)
    return o[:, :q.shape[1]]

  bias = _bias(kv_mask, b, k.shape[1])
  return _shard_map(body, mesh, x_spec, m_spec, True)(q, k, v, bias)


# ------------------------------------------------------------------ cuDNN and splash
def _cudnn_unsupported(q, k, kv_mask) -> str | None:
  if platform() not in ("gpu", "cuda"):
    return f"cuDNN flash attention needs a GPU, platform is {platform()!r}"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"cuDNN flash attention needs bfloat16/float16 inputs, got {q.dtype} (dit.dtype)"
  d = q.shape[-1]
  cc = getattr(jax.devices()[0], "compute_capability", "0")
  d_max = 256 if float(cc) >= 9.0 else 128
  if d % 8 or d > d_max:
    return f"cuDNN needs head dim a multiple of 8 and <= {d_max}, got {d}"
  if kv_mask is not None and (q.shape[1] % 2 or k.shape[1] % 2):
    return f"cuDNN with a key mask needs even token counts, got {q.shape[1]}, {k.shape[1]}"
  return None


def _cudnn(q, k, v, kv_mask):
  mask = None
  if kv_mask is not None:  # cuDNN takes a (B, 1, L, S) mask; keys only vary along S.
    mask = jnp.broadcast_to(kv_mask[:, None, None, :],
                            (q.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


_SPLASH_BLOCKS = (512, 256, 128)


def _splash_unsupported(q, k, interpret: bool) -> str | None:
  del q, k  # any token count: _splash_local pads to whole tiles
  if platform() != "tpu" and not interpret:
    return f"splash attention is a TPU kernel, platform is {platform()!r}"
  return None


def _splash_tile(n: int) -> int:
  """Token multiple splash pads n to: 512-token tiles from 512 tokens on (Wan's 32,760 and
  75,600-token clips gain 8 and 176 padding tokens), else 128."""
  return _SPLASH_BLOCKS[0] if n >= _SPLASH_BLOCKS[0] else _SPLASH_BLOCKS[-1]


def _splash_kernel(n_q: int, n_k: int, heads: int, interpret: bool):
  """Built per trace (not cached): its mask tables become constants of the traced program."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as sk, splash_attention_mask as sm)
  bq = next(b for b in _SPLASH_BLOCKS if n_q % b == 0)
  bk = next(b for b in _SPLASH_BLOCKS if n_k % b == 0)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                        block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq,
                        block_kv_dq=bk)
  mask = sm.MultiHeadMask([sm.FullMask((n_q, n_k))] * heads)
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret), sk.SegmentIds


def _splash_local(q, k, v, kv_mask, interpret: bool):
  """Splash on one device's shard: [B,L,H,D] -> [B,L,H,D]; the mask as segment ids.

  Token counts that are not whole tiles are padded: padded keys get segment id 0, which no
  real query (id 1) attends to; padded queries' outputs are dropped.
  """
  n_q, tile_q, tile_k = q.shape[1], _splash_tile(q.shape[1]), _splash_tile(k.shape[1])
  if k.shape[1] % tile_k and kv_mask is None:
    kv_mask = jnp.ones(k.shape[:2], bool)
  q, k, v = _pad_axis1(q, tile_q), _pad_axis1(k, tile_k), _pad_axis1(v, tile_k)
  if kv_mask is not None:
    kv_mask = _pad_axis1(kv_mask, tile_k, False)
  kernel, segment_ids = _splash_kernel(q.shape[1], k.shape[1], q.shape[2], interpret)
  to_bhld = lambda x: jnp.swapaxes(x, 1, 2)
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)  # splash does not scale.
  if kv_mask is None:
    o = jax.vmap(kernel)(to_bhld(q), to_bhld(k), to_bhld(v))
  else:
    seg = segment_ids(q=jnp.ones(q.shape[:2], jnp.int32), kv=kv_mask.astype(jnp.int32))
    o = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(
        to_bhld(q), to_bhld(k), to_bhld(v), seg)
  return to_bhld(o)[:, :n_q].astype(v.dtype)


def splash_attention(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS=None, *, mesh=None,
                     interpret: bool = False):
  """TPU splash attention; batch and heads split over the mesh by `shard_map`.

  `interpret=True` runs the Pallas kernel in the interpreter (any backend, slow): how the
  tests check it off TPU.
  """
  local = functools.partial(_splash_local, interpret=interpret)
  if mesh is None or math.prod(mesh.axis_sizes) == 1:
    return local(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS)
  x_spec, m_spec = _specs(mesh, q_BLHD.shape[0], q_BLHD.shape[2], None)
  args = (q_BLHD, k_BSHD, v_BSHD) + ((kv_mask_BS,) if kv_mask_BS is not None else ())
  body = lambda q, k, v, *m: local(q, k, v, m[0] if m else None)
  return _shard_map(body, mesh, x_spec, m_spec, kv_mask_BS is not None)(*args)


# ------------------------------------------------------------------ dispatch
def _local_full(q, k, v, kv_mask):
  """Best whole-sequence kernel on this platform (ulysses' per-device attention)."""
  if _cudnn_unsupported(q, k, kv_mask) is None:
    return _cudnn(q, k, v, kv_mask)
  if _splash_unsupported(q, k, interpret=False) is None:
    return _splash_local(q, k, v, kv_mask, interpret=False)
  return _xla(q, k, v, kv_mask)


def _sequence_parallel_unsupported(impl, q, k, mesh) -> str | None:
  """Why `impl` cannot split this self-attention over 'sequence' (None if it can)."""
  n = _axis_size(mesh, "sequence")
  if mesh is None:
    return "no mesh: call jax.set_mesh(mesh) or attention_kernels.set_mesh(mesh)"
  if n == 1:
    return "mesh axis 'sequence' has size 1"
  if q.shape[1] % n:
    return f"{q.shape[1]} tokens are not divisible by the sequence axis ({n})"
  if impl == "ulysses":
    t = _axis_size(mesh, "tensor") if _head_axis(mesh, q.shape[2], n) else 1
    if q.shape[2] % (n * t):
      return (f"{q.shape[2]} heads are not divisible by the sequence axis ({n})"
              + (f" x tensor axis ({t})" if t > 1 else ""))
  return None


def attend(q_BLHD, k_BSHD, v_BSHD, *, kv_mask_BS=None, impl: str = "blockwise",
           block: int = 512, mesh=None):
  """Attention by kernel `impl` (any of IMPLS but 'xla'); same contract as models.attend.

  Args:
    q_BLHD: queries [batch, query tokens, heads, head dim].
    k_BSHD, v_BSHD: keys / values [batch, key tokens, heads, head dim].
    kv_mask_BS: optional bool [batch, key tokens]; False keys get no weight.
    impl: 'blockwise', 'cudnn', 'splash', 'ulysses' or 'ring'.
    block: query/key block of blockwise and ring (`config.dit.attention_block`).
    mesh: overrides `current_mesh()` for ulysses/ring/splash.
  Returns:
    [batch, query tokens, heads, head dim] in v's dtype.
  """
  mesh = mesh if mesh is not None else current_mesh()
  q, k, v, mask = q_BLHD, k_BSHD, v_BSHD, kv_mask_BS
  if impl == "xla":
    return _xla(q, k, v, mask)
  if impl == "blockwise":
    return blockwise_attention(q, k, v, mask, block=block)
  if impl in ("cudnn", "splash"):
    why = (_cudnn_unsupported(q, k, mask) if impl == "cudnn"
           else _splash_unsupported(q, k, interpret=False))
    if why is not None:
      _warn_once(impl, "xla", why)
      return _xla(q, k, v, mask)
    local = _cudnn if impl == "cudnn" else functools.partial(_splash_local, interpret=False)
    if (q.shape[1] == k.shape[1] and _axis_size(mesh, "sequence") > 1
        and _sequence_parallel_unsupported("ulysses", q, k, mesh) is None):
      # Tokens are split over 'sequence': a whole-sequence kernel would gather them all on
      # every device, so run it per device on all tokens of its heads (Ulysses).
      _info_once(impl, "mesh axis 'sequence' > 1: Ulysses all-to-alls around the kernel")
      return _ulysses(q, k, v, mask, mesh, local)
    if impl == "cudnn":
      return local(q, k, v, mask)
    return splash_attention(q, k, v, mask, mesh=mesh)
  if impl in ("ulysses", "ring"):
    if q.shape[1] != k.shape[1]:
      # Cross-attention: token-sharded queries against short replicated K/V is local
      # work for every device already; there is nothing to exchange.
      return _xla(q, k, v, mask)
    why = _sequence_parallel_unsupported(impl, q, k, mesh)
    if impl == "ulysses":
      if why is None:
        return _ulysses(q, k, v, mask, mesh, _local_full)
      ring_why = _sequence_parallel_unsupported("ring", q, k, mesh)
      _warn_once(impl, "ring" if ring_why is None else "blockwise", why)
      impl, why = "ring", ring_why
    if why is None:
      return _ring(q, k, v, mask, mesh, block)
    _warn_once(impl, "blockwise", why)
    return blockwise_attention(q, k, v, mask, block=block)
  raise ValueError(f"attention impl {impl!r} is not available; choose one of: "
                   f"{', '.join(IMPLS)}")
