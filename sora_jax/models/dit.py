"""Diffusion transformer over spacetime latent patches, Wan 2.1 layout (Flax Linen).

    model = dit_from_config(cfg)
    out_BTHWC = model.apply({"params": params}, x_BTHWC, t_BT, text_BLD, text_mask_BL)

Latents (B, T, H, W, C) are cut into (pt, ph, pw) patches -> tokens (B, L, dim), run
through `num_layers` blocks and folded back to (B, T, H, W, C). Each block: adaLN-modulated
self-attention over all spacetime tokens (QK RMS-norm over all heads, 3D RoPE), cross-
attention to the projected text tokens, adaLN-modulated GELU-tanh MLP. With
`joint_attention` the blocks are double-stream MMDiT blocks instead (`JointBlock`): the text
tokens are a second stream with their own weights, both in one attention.

Timesteps are per latent frame: `t_BT` in [0, 1] (or `t_B`, one per sample). Internally
t * 1000 enters the sinusoidal embedding (Wan's convention, so converted Wan weights work).
One shared time MLP maps each frame's t to a 6 x dim modulation; each block adds its own
learned `scale_shift_table`; every token uses its frame's modulation. That lets
conditioning frames be clean (t = 0) while the rest are noisy. With patch_t > 1 a patch
takes the timestep of its first frame.

The layout follows diffusers' `WanTransformer3DModel` so its weights (and the original Wan
repo's) convert one to one (`sora_jax.convert.wan_dit`). Param tree, with N = num_layers
(scan_layers=True stacks blocks on a leading 'layers' axis; otherwise `blocks_{i}` without
it), P = pt*ph*pw:
  patch_embedding/{kernel (P*C_in, D), bias (D,)}      conv3d(kernel=stride=patch) as a linear
  condition_embedder/time_embedder/linear_{1,2}        (freq_dim, D), (D, D)
  condition_embedder/time_proj                         (D, 6D)
  condition_embedder/text_embedder/linear_{1,2}        (text_dim, D), (D, D)
  blocks/scale_shift_table                             (N, 6, D)
  blocks/attn{1,2}/to_{q,k,v,out}/{kernel, bias}       (N, D, D), (N, D)
  blocks/attn{1,2}/norm_{q,k}/scale                    (N, D)      if qk_norm
  blocks/norm2/{scale, bias}                           (N, D)      if cross_attn_norm
  blocks/ffn/fc1 (N, D, F), blocks/ffn/fc2 (N, F, D)   + biases
  scale_shift_table (2, D);  proj_out/{kernel (D, P*C_out), bias}
With joint_attention the blocks hold instead (no attn1/attn2/norm2):
  blocks/{scale_shift_table, text_scale_shift_table}   (N, 6, D)
  blocks/attn/{to_q,to_k,to_v,to_out, add_q_proj,add_k_proj,add_v_proj,to_add_out}
  blocks/attn/norm_{q,k,added_q,added_k}/scale          if qk_norm
  blocks/ffn/..., blocks/ffn_text/...                   video and text MLPs
Parameters carry logical axis names ('embed', 'heads', 'mlp', 'channels', 'layers') and
activations ('batch', 'tokens', 'text_tokens', 'embed', 'heads', 'kv', 'mlp'); the mesh
rules in `config.mesh.rules` decide their sharding.

Speed: q, k and v (in cross-attention k and v of the text) come from one matmul on their
kernels stacked at apply time, the tree keeping separate to_q/to_k/to_v; `scan_unroll=0`
unrolls the layer scan (the same parameters, no per-layer stacking of saved activations).

Numerics: parameters in `param_dtype`; matmuls in `dtype`; LayerNorms, modulation, RoPE
angles, the time MLP and attention softmax in float32 (as Wan keeps them). Output float32.
"""
import math
from typing import Any, Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.data.shapes_world import MOTIONS
from sora_jax.models.attention import attend
from sora_jax.models.norms import RMSNorm, rms_normalize

_REMAT_POLICIES = {
    "full": None,  # Save nothing inside a block: recompute all of it in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_xavier = nn.initializers.xavier_uniform()


def _token_matmul(x, kernel):
  """x (..., D) @ kernel (D, ...) with x's leading axes flattened into one row axis.

  The product is the same as `jnp.tensordot(x, kernel, 1)`; the layout is not. Autodiff's
  kernel gradient of a (B, L, D) einsum contracts over two axes, which XLA:CPU runs as a
  transposing copy of the output gradient plus a slower dot (60 % slower in isolation at
  the dit_50m FFN shapes, 2560x512 by 2560x2048); over one flattened row axis it is a
  plain X^T dY dot with no copy (docs/results.md, "Speed"). Flattening batch-major axes
  keeps a batch or sequence sharding expressible (the merged axis is sharded over both).
  """
  lead = x.shape[:-1]
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), kernel, (((1,), (0,)), ((), ())))
  return y.reshape(lead + kernel.shape[1:])


class _Dense(nn.Module):
  """nn.Dense (same parameter names, shapes, init and dtype promotion) computed with
  `_token_matmul`."""
  features: int
  dtype: Any
  param_dtype: Any
  kernel_init: Callable
  bias_init: Callable

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return _token_matmul(x, kernel) + bias


def _dense(features, axes, dtype, param_dtype, name, kernel_init=_xavier):
  return _Dense(
      features, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def _layer_norm(x, eps):
  """Affine-free LayerNorm in float32 (Wan's FP32LayerNorm with elementwise_affine=False)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _by_frame(x_BLD, frames):
  """(B, L, D) -> (B, F, L/F, D): tokens are frame-major, so a frame is a contiguous run."""
  b, l, d = x_BLD.shape
  return x_BLD.reshape(b, frames, l // frames, d)


def _modulate(x_BLD, shift_BFD, scale_BFD, eps):
  """LayerNorm(x) * (1 + scale) + shift, each token with its own frame's shift/scale (f32)."""
  f = shift_BFD.shape[1]
  y = _by_frame(_layer_norm(x_BLD, eps), f) * (1 + scale_BFD[:, :, None]) + shift_BFD[:, :, None]
  return y.reshape(x_BLD.shape)


def _gated_add(x_BLD, h_BLD, gate_BFD):
  """x + h * gate (gate per frame), added in float32 and returned in x's dtype."""
  f = gate_BFD.shape[1]
  y = (_by_frame(x_BLD.astype(jnp.float32), f)
       + _by_frame(h_BLD.astype(jnp.float32), f) * gate_BFD[:, :, None])
  return y.reshape(x_BLD.shape).astype(x_BLD.dtype)


def timestep_embedding(t, dim, max_period=10000.0):
  """Sinusoidal embedding [cos, sin] of (already x1000) timesteps t (...,) -> (..., dim) f32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rope_dims(head_dim):
  """Head-dim split over (t, h, w) as Wan does: h = w = 2*(D//6), t gets the rest."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def rope_tables(frames, height, width, head_dim, theta=10000.0):
  """3D RoPE angles' (cos, sin), each (L, head_dim/2) float32 for an F x H x W token grid.

  Pair k of a head rotates by pos_axis * theta^(-2j/d_axis) for its axis' j-th frequency,
  the pairs laid out [t | h | w] (diffusers' WanRotaryPosEmbed). Per-axis tables are exact
  float64 numpy constants (small); the grid is broadcast in jnp so no L-sized constant is
  baked into the program. Any frames/height/width works.
  """
  tables = []
  for n, d in zip((frames, height, width), rope_dims(head_dim)):
    freqs = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    tables.append(np.outer(np.arange(n, dtype=np.float64), freqs))
  def grid(fn):
    t, h, w = (jnp.asarray(fn(a), jnp.float32) for a in tables)
    shape = (frames, height, width)
    full = jnp.concatenate([
        jnp.broadcast_to(t[:, None, None], shape + t.shape[-1:]),
        jnp.broadcast_to(h[None, :, None], shape + h.shape[-1:]),
        jnp.broadcast_to(w[None, None, :], shape + w.shape[-1:])], axis=-1)
    return full.reshape(frames * height * width, head_dim // 2)
  return grid(np.cos), grid(np.sin)


def apply_rope(x_BLHD, cos_LK, sin_LK):
  """Rotates interleaved pairs (x[2k], x[2k+1]) of every head by the token's angles."""
  b, l, h, d = x_BLHD.shape
  x = x_BLHD.astype(jnp.float32).reshape(b, l, h, d // 2, 2)
  c, s = cos_LK[None, :, None], sin_LK[None, :, None]
  x1, x2 = x[..., 0], x[..., 1]
  out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
  return out.reshape(b, l, h, d).astype(x_BLHD.dtype)


class _DenseParams(nn.Module):
  """nn.Dense's parameters (kernel (in, out), bias (out,)), same names, init and logical
  axes, returned instead of applied: several projections of one input then run as one
  matmul (`Attention`) while the parameter tree stays nn.Dense's."""
  features: int
  axes: tuple
  param_dtype: Any

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", nn.with_logical_partitioning(_xavier, self.axes),
                        (in_features, self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (self.axes[-1],)),
                      (self.features,), self.param_dtype)
    return kernel, bias


def _fused_projections(x_BLD, params, dtype):
  """[x @ k + b for (k, b) in params] as one matmul against the kernels stacked (D, n, F)
  (a new axis, so a kernel sharded over heads stays sharded), f32 accumulation as Dense."""
  kernel = jnp.stack([k for k, _ in params], axis=1).astype(dtype)
  bias = jnp.stack([b for _, b in params], axis=0).astype(dtype)
  y_BLnF = _token_matmul(x_BLD.astype(dtype), kernel) + bias
  return [y_BLnF[:, :, i] for i in range(len(params))]


class Attention(nn.Module):
  """Self-attention (ctx=None, with RoPE) or cross-attention to ctx_BSD (no RoPE)."""
  dim: int
  num_heads: int
  qk_norm: bool
  eps: float
  impl: str
  dtype: Any
  param_dtype: Any
  block: int = 512  # Tile size of the blockwise / ring kernels (dit.attention_block).

  @nn.compact
  def __call__(self, x_BLD, ctx_BSD=None, ctx_mask_BS=None, rope=None):
    kv_tokens = "tokens" if ctx_BSD is None else "text_tokens"
    src_dim = (x_BLD if ctx_BSD is None else ctx_BSD).shape[-1]
    proj = {n: _DenseParams(self.dim, ("embed", "heads"), self.param_dtype, name=n)(
        x_BLD.shape[-1] if n == "to_q" else src_dim) for n in ("to_q", "to_k", "to_v")}
    if ctx_BSD is None:  # Self-attention: q, k and v of x in one matmul.
      q, k, v = _fused_projections(x_BLD, [proj["to_q"], proj["to_k"], proj["to_v"]],
                                   self.dtype)
    else:  # Cross-attention: q of x; k and v of the text in one matmul.
      (q,) = _fused_projections(x_BLD, [proj["to_q"]], self.dtype)
      k, v = _fused_projections(ctx_BSD, [proj["to_k"], proj["to_v"]], self.dtype)
    if self.qk_norm:
      q = RMSNorm(self.eps, self.param_dtype, name="norm_q")(q)
      k = RMSNorm(self.eps, self.param_dtype, name="norm_k")(k)
    split = lambda a: a.reshape(a.shape[:2] + (self.num_heads, -1))
    q, k, v = split(q), split(k), split(v)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = nn.with_logical_constraint(q, ("batch", "tokens", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", kv_tokens, "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", kv_tokens, "heads", "kv"))
    o = attend(q, k, v, kv_mask_BS=ctx_mask_BS, impl=self.impl, block=self.block)
    o = o.reshape(o.shape[:2] + (self.dim,))
    return _dense(self.dim, ("heads", "embed"), self.dtype, self.param_dtype, "to_out")(o)


def _scale_shift_table(module: nn.Module, name: str, rows: int):
  """A learned (rows, dim) adaLN table that is added to the time modulation (Wan's
  `scale_shift_table`), returned in float32."""
  return module.param(
      name,
      nn.with_logical_partitioning(nn.initializers.normal(module.dim ** -0.5), (None, "embed")),
      (rows, module.dim), module.param_dtype).astype(jnp.float32)


class _BlockFields(nn.Module):
  """The fields Wan's block and the joint block share (WanDiT passes them by keyword)."""
  dim: int
  ffn_dim: int
  num_heads: int
  qk_norm: bool
  eps: float
  dropout: float
  deterministic: bool
  impl: str
  dtype: Any
  param_dtype: Any
  attention_block: int = 512
  # Also emit the block's output video states as the scan's per-layer output (the motion
  # head reads an inner layer's); False emits None.
  emit: bool = False


class Block(_BlockFields):
  """One Wan block. __call__(x, ...) -> (x, x if emit else None) so it can run under
  nn.scan."""
  cross_attn_norm: bool = True

  @nn.compact
  def __call__(self, x_BLD, text_BSD, text_mask_BS, mod_BF6D, rope_cos_LK, rope_sin_LK):
    e = _scale_shift_table(self, "scale_shift_table", 6)[None, None] + mod_BF6D
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (e[:, :, i] for i in range(6))
    attn = lambda name: Attention(self.dim, self.num_heads, self.qk_norm, self.eps, self.impl,
                                  self.dtype, self.param_dtype, self.attention_block, name=name)
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    act = ("batch", "tokens", "embed")

    h = _modulate(x_BLD, shift_sa, scale_sa, self.eps).astype(self.dtype)
    h = drop(attn("attn1")(h, rope=(rope_cos_LK, rope_sin_LK)))
    x_BLD = nn.with_logical_constraint(_gated_add(x_BLD, h, gate_sa), act)

    if self.cross_attn_norm:
      h = nn.LayerNorm(
          epsilon=self.eps, dtype=jnp.float32, param_dtype=self.param_dtype, name="norm2",
          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
              x_BLD.astype(jnp.float32))
    else:
      h = x_BLD
    h = drop(attn("attn2")(h.astype(self.dtype), text_BSD, text_mask_BS))
    x_BLD = nn.with_logical_constraint((x_BLD.astype(jnp.float32) + h).astype(x_BLD.dtype), act)

    h = _modulate(x_BLD, shift_ff, scale_ff, self.eps).astype(self.dtype)
    h = FeedForward(self.dim, self.ffn_dim, self.dtype, self.param_dtype, name="ffn")(h)
    x_BLD = nn.with_logical_constraint(_gated_add(x_BLD, drop(h), gate_ff), act)
    return x_BLD, (x_BLD if self.emit else None)


class JointAttention(nn.Module):
  """One softmax attention over the video tokens and the text tokens together (MMDiT, as in
  SD3, Flux's double-stream and HunyuanVideo's dual-stream blocks): each stream has its own
  q/k/v and output projections and q/k norms; video q/k take RoPE, text q/k none; padded
  text slots are masked out as keys. Names follow diffusers' SD3 `JointAttnProcessor`
  (`to_*` video, `add_*_proj` / `to_add_out` text). Returns (video out, text out)."""
  dim: int
  num_heads: int
  qk_norm: bool
  eps: float
  impl: str
  dtype: Any
  param_dtype: Any
  block: int = 512

  @nn.compact
  def __call__(self, x_BLD, txt_BSD, txt_mask_BS, rope):
    dense = lambda n, src: _DenseParams(self.dim, ("embed", "heads"), self.param_dtype,
                                        name=n)(src.shape[-1])
    q, k, v = _fused_projections(
        x_BLD, [dense(n, x_BLD) for n in ("to_q", "to_k", "to_v")], self.dtype)
    qt, kt, vt = _fused_projections(
        txt_BSD, [dense(n, txt_BSD) for n in ("add_q_proj", "add_k_proj", "add_v_proj")],
        self.dtype)
    if self.qk_norm:
      q = RMSNorm(self.eps, self.param_dtype, name="norm_q")(q)
      k = RMSNorm(self.eps, self.param_dtype, name="norm_k")(k)
      qt = RMSNorm(self.eps, self.param_dtype, name="norm_added_q")(qt)
      kt = RMSNorm(self.eps, self.param_dtype, name="norm_added_k")(kt)
    split = lambda a: a.reshape(a.shape[:2] + (self.num_heads, -1))
    q, k, v, qt, kt, vt = map(split, (q, k, v, qt, kt, vt))
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    l = x_BLD.shape[1]
    joint = lambda a, b: jnp.concatenate([a, b], axis=1)
    mask = joint(jnp.ones(x_BLD.shape[:2], bool), txt_mask_BS)
    o = attend(joint(q, qt), joint(k, kt), joint(v, vt), kv_mask_BS=mask, impl=self.impl,
               block=self.block)
    o = o.reshape(o.shape[:2] + (self.dim,))
    out = _dense(self.dim, ("heads", "embed"), self.dtype, self.param_dtype, "to_out")(o[:, :l])
    out_t = _dense(self.dim, ("heads", "embed"), self.dtype, self.param_dtype,
                   "to_add_out")(o[:, l:])
    return out, out_t


class JointBlock(_BlockFields):
  """A double-stream (MMDiT) block, `dit.joint_attention`: the text tokens are a second
  residual stream with their own adaLN modulation table, attention projections and MLP;
  both streams meet in one joint attention (no cross-attention). So an object's words can
  read each other and the frames at every layer, and the frames read the updated words.
  The text stream is modulated by the time conditioning averaged over frames (t2v: every
  frame's). __call__((x, text), ...) -> ((x, text), None) so it can run under nn.scan."""

  @nn.compact
  def __call__(self, carry, text_mask_BS, mod_BF6D, rope_cos_LK, rope_sin_LK):
    x_BLD, txt_BSD = carry
    e = _scale_shift_table(self, "scale_shift_table", 6)[None, None] + mod_BF6D
    et = (_scale_shift_table(self, "text_scale_shift_table", 6)[None, None]
          + jnp.mean(mod_BF6D, 1, keepdims=True))
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    act, act_t = ("batch", "tokens", "embed"), ("batch", "text_tokens", "embed")

    h = _modulate(x_BLD, e[:, :, 0], e[:, :, 1], self.eps).astype(self.dtype)
    ht = _modulate(txt_BSD, et[:, :, 0], et[:, :, 1], self.eps).astype(self.dtype)
    h, ht = JointAttention(self.dim, self.num_heads, self.qk_norm, self.eps, self.impl,
                           self.dtype, self.param_dtype, self.attention_block, name="attn")(
                               h, ht, text_mask_BS, (rope_cos_LK, rope_sin_LK))
    x_BLD = nn.with_logical_constraint(_gated_add(x_BLD, drop(h), e[:, :, 2]), act)
    txt_BSD = nn.with_logical_constraint(_gated_add(txt_BSD, drop(ht), et[:, :, 2]), act_t)

    ffn = lambda name, x, m: FeedForward(self.dim, self.ffn_dim, self.dtype, self.param_dtype,
                                         name=name)(
                                             _modulate(x, m[:, :, 3], m[:, :, 4],
                                                       self.eps).astype(self.dtype))
    x_BLD = nn.with_logical_constraint(
        _gated_add(x_BLD, drop(ffn("ffn", x_BLD, e)), e[:, :, 5]), act)
    txt_BSD = nn.with_logical_constraint(
        _gated_add(txt_BSD, drop(ffn("ffn_text", txt_BSD, et)), et[:, :, 5]), act_t)
    return (x_BLD, txt_BSD), (x_BLD if self.emit else None)


class FeedForward(nn.Module):
  dim: int
  ffn_dim: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BLD):
    h = _dense(self.ffn_dim, ("embed", "mlp"), self.dtype, self.param_dtype, "fc1")(x_BLD)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "tokens", "mlp"))
    return _dense(self.dim, ("mlp", "embed"), self.dtype, self.param_dtype, "fc2")(h)


class _TwoLayerMLP(nn.Module):
  """linear_1 -> act -> linear_2 (diffusers' TimestepEmbedding / PixArtAlphaTextProjection)."""
  dim: int
  act: Any
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    normal = nn.initializers.normal(0.02)  # Wan's init for the time and text MLPs.
    x = _dense(self.dim, (None, "embed"), self.dtype, self.param_dtype, "linear_1", normal)(x)
    return _dense(self.dim, ("mlp", "embed"), self.dtype, self.param_dtype, "linear_2",
                  normal)(self.act(x))


class ConditionEmbedder(nn.Module):
  """Shared time MLP (per frame, float32) and the text projection (Wan's condition_embedder).

  pooled_text: also add an MLP of the pooled caption (masked mean of the text states,
  RMS-normalised: a sentence embedding) to the time embedding, so every adaLN modulation
  sees the caption as a whole (as PixArt / SD3 do with pooled text). Not in Wan 2.1.
  """
  dim: int
  freq_dim: int
  dtype: Any
  param_dtype: Any
  pooled_text: bool = False

  @nn.compact
  def __call__(self, t_BF, text_BSD, text_mask_BS=None):
    f32 = jnp.float32
    emb = timestep_embedding(t_BF * 1000.0, self.freq_dim)
    temb_BFD = _TwoLayerMLP(self.dim, nn.silu, f32, self.param_dtype, name="time_embedder")(emb)
    if self.pooled_text:
      m = (jnp.ones(text_BSD.shape[:2], f32) if text_mask_BS is None
           else text_mask_BS.astype(f32))[..., None]
      pooled_BD = jnp.sum(text_BSD.astype(f32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
      pooled_BD = rms_normalize(pooled_BD, 1e-6)
      temb_BFD = temb_BFD + _TwoLayerMLP(self.dim, nn.silu, f32, self.param_dtype,
                                         name="pooled_text_embedder")(pooled_BD)[:, None]
    mod = _dense(6 * self.dim, ("embed", "mlp"), f32, self.param_dtype, "time_proj",
                 nn.initializers.normal(0.02))(nn.silu(temb_BFD))
    mod_BF6D = mod.reshape(mod.shape[:2] + (6, self.dim))
    text = _TwoLayerMLP(self.dim, lambda h: jax.nn.gelu(h, approximate=True), self.dtype,
                        self.param_dtype, name="text_embedder")(text_BSD)
    return temb_BFD, mod_BF6D, text


class TextRefiner(nn.Module):
  """Trainable pre-norm transformer blocks over the projected text tokens (masked self-
  attention + MLP), as HunyuanVideo refines its text states before the DiT: the frozen
  encoder's tokens are refined for this model's cross-attention, e.g. to tie each object's
  words together. Residual gates start at `gate_init`: at 0 (the default) a new refiner
  starts as the identity and can be added to a trained DiT (train.init_from) without
  changing its outputs; at 1 its blocks act, and learn, from the first step."""
  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  eps: float
  dtype: Any
  param_dtype: Any
  gate_init: float = 0.0

  @nn.compact
  def __call__(self, text_BSD, text_mask_BS):
    act = ("batch", "text_tokens", "embed")
    norm = lambda name: nn.LayerNorm(
        epsilon=self.eps, dtype=jnp.float32, param_dtype=self.param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
    gate = lambda name: self.param(
        name, nn.with_logical_partitioning(nn.initializers.constant(self.gate_init), ("embed",)),
        (self.dim,),
        self.param_dtype).astype(jnp.float32)
    x = text_BSD.astype(jnp.float32)
    for i in range(self.num_layers):
      h = norm(f"norm1_{i}")(x).astype(self.dtype)
      h = Attention(self.dim, self.num_heads, True, self.eps, "xla", self.dtype,
                    self.param_dtype, name=f"attn_{i}")(h, h, text_mask_BS)
      x = nn.with_logical_constraint(x + gate(f"gate_attn_{i}") * h.astype(jnp.float32), act)
      h = norm(f"norm2_{i}")(x).astype(self.dtype)
      h = FeedForward(self.dim, self.ffn_dim, self.dtype, self.param_dtype, name=f"ffn_{i}")(h)
      x = nn.with_logical_constraint(x + gate(f"gate_ffn_{i}") * h.astype(jnp.float32), act)
    return x.astype(text_BSD.dtype)


def _token_mlp(x_BLD, dim: int, out: int, eps: float, dtype, param_dtype):
  """Per token: affine-free LayerNorm, dim -> dim, SiLU, dim -> out (float32), as the
  calling module's 'fc1' / 'fc2' (the training-only heads below share it)."""
  h = _layer_norm(x_BLD, eps).astype(dtype)
  h = _dense(dim, ("embed", "mlp"), dtype, param_dtype, "fc1")(h)
  return _dense(out, ("mlp", None), dtype, param_dtype, "fc2")(nn.silu(h)).astype(jnp.float32)


class MatchHead(nn.Module):
  """Whether the text matches the video (BLIP's image-text matching head, for the binding
  contrast's diffusion.binding_loss='match'): a logit per sample, the mean over the video
  tokens of an MLP of each final hidden state (affine-free LayerNorm, dim -> dim, SiLU,
  dim -> 1), so a token can flag a mismatch where it sees one. Not in Wan 2.1; sampling
  never reads it."""
  dim: int
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BLD):
    h = _token_mlp(x_BLD, self.dim, 1, self.eps, self.dtype, self.param_dtype)
    return jnp.mean(h[..., 0], axis=1)


class MotionHead(nn.Module):
  """Per video token, logits over the classes of `num_classes` (ShapesWorld: its motions,
  shapes_world.MOTIONS) of the object the token shows: an MLP of each hidden state of the
  final layer or of dit.motion_head_layer's (affine-free LayerNorm, dim -> dim, SiLU,
  dim -> num_classes), trained by
  diffusion.motion_weight against data.motion_labels. With most of the clip still noise,
  only the text (and a given first frame) can say which object makes which motion, so the
  head asks the blocks for that binding token by token. Not in Wan 2.1; sampling never
  reads it."""
  dim: int
  num_classes: int
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BLD):
    return _token_mlp(x_BLD, self.dim, self.num_classes, self.eps, self.dtype, self.param_dtype)


class WanDiT(nn.Module):
  """Wan 2.1-style DiT with per-frame timesteps (see the module docstring)."""
  in_channels: int
  text_dim: int
  out_channels: int | None = None
  patch_size: tuple[int, int, int] = (1, 2, 2)
  dim: int = 192
  ffn_dim: int = 768
  num_heads: int = 4
  num_layers: int = 6
  freq_dim: int = 256
  qk_norm: bool = True
  cross_attn_norm: bool = True
  eps: float = 1e-6
  dropout: float = 0.0
  rope_theta: float = 10000.0
  scan_layers: bool = True
  scan_unroll: int = 1  # Layers per scan iteration; 0 = all (straight-line code, no loop).
  remat_policy: str = "none"
  attention: str = "xla"
  attention_block: int = 512
  pooled_text: bool = False  # Pooled caption into the adaLN conditioning (not in Wan 2.1).
  text_refiner_layers: int = 0  # TextRefiner blocks over the text tokens (not in Wan 2.1).
  text_refiner_gate_init: float = 0.0  # Their residual gates' initial value (0: identity).
  joint_attention: bool = False  # Double-stream MMDiT blocks (JointBlock) instead of Wan's.
  match_head: bool = False  # A MatchHead on the final hidden states (not in Wan 2.1).
  motion_classes: int = 0  # Classes of a MotionHead on the final hidden states (0: none).
  motion_layer: int = 0  # Blocks whose output the MotionHead reads (0: all, the final states).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTHWC, t, text_BLD, text_mask_BL=None, deterministic=True,
               return_match=False, return_motion=False):
    """Predicts (B, T, H, W, C_out) float32 from latents x_BTHWC.

    Args:
      x_BTHWC: latents; T, H, W divisible by patch_size.
      t: timesteps in [0, 1], (B, T) one per latent frame or (B,) one per sample.
      text_BLD: text-encoder states (B, L_text, text_dim).
      text_mask_BL: bool (B, L_text), True = real token; None = all real.
      deterministic: False enables dropout (needs a 'dropout' rng) when dit.dropout > 0.
      return_match: also return the MatchHead's (B,) logits (needs match_head), as
        (prediction, logits).
      return_motion: also return the MotionHead's (B, T/pt, H/ph, W/pw, motion_classes)
        logits per token (needs motion_classes), after the prediction and any match logits.
    """
    if return_match and not self.match_head:
      raise ValueError("return_match=True needs a DiT with match_head=True (dit.match_head)")
    if return_motion and not self.motion_classes:
      raise ValueError("return_motion=True needs a DiT with a motion head (dit.motion_head)")
    b, tt, hh, ww, c = x_BTHWC.shape
    pt, ph, pw = self.patch_size
    if tt % pt or hh % ph or ww % pw or c != self.in_channels:
      raise ValueError(f"latents {x_BTHWC.shape} do not fit: T, H, W must be multiples of "
                       f"patch_size {self.patch_size} and C must be {self.in_channels}")
    if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
      raise ValueError(f"dim={self.dim} must split into {self.num_heads} heads of even size")
    f, gh, gw = tt // pt, hh // ph, ww // pw
    t = jnp.asarray(t, jnp.float32)
    if t.shape == (b,):
      t = jnp.broadcast_to(t[:, None], (b, tt))
    if t.shape != (b, tt):
      raise ValueError(f"timesteps of shape {t.shape}: give (B,)=({b},) or (B, T)=({b}, {tt})")
    t_BF = t[:, ::pt]
    if text_mask_BL is None:
      text_mask_BL = jnp.ones(text_BLD.shape[:2], bool)
    c_out = self.out_channels or self.in_channels

    # Patchify: tokens frame-major, each the (pt, ph, pw, C) block of its patch.
    p = einops.rearrange(x_BTHWC, "b (f pt) (gh ph) (gw pw) c -> b (f gh gw) (pt ph pw c)",
                         pt=pt, ph=ph, pw=pw).astype(self.dtype)
    x = _dense(self.dim, ("channels", "embed"), self.dtype, self.param_dtype,
               "patch_embedding")(p)
    x = nn.with_logical_constraint(x, ("batch", "tokens", "embed"))

    temb_BFD, mod_BF6D, text = ConditionEmbedder(
        self.dim, self.freq_dim, self.dtype, self.param_dtype, self.pooled_text,
        name="condition_embedder")(t_BF, text_BLD.astype(self.dtype), text_mask_BL)
    if self.text_refiner_layers:
      text = TextRefiner(self.dim, self.ffn_dim, self.num_heads, self.text_refiner_layers,
                         self.eps, self.dtype, self.param_dtype, self.text_refiner_gate_init,
                         name="text_refiner")(
                             text, text_mask_BL)
    text = nn.with_logical_constraint(text, ("batch", "text_tokens", "embed"))
    cos, sin = rope_tables(f, gh, gw, self.dim // self.num_heads, self.rope_theta)

    if self.scan_unroll < 0:
      raise ValueError(f"dit.scan_unroll={self.scan_unroll}: give a number of layers per scan "
                       "iteration, or 0 for all of them")
    if not 0 <= self.motion_layer <= self.num_layers:
      raise ValueError(f"dit.motion_head_layer={self.motion_layer}: give a number of blocks in "
                       f"1..{self.num_layers} (dit.num_layers), or 0 for all of them")
    inner = bool(self.motion_classes) and 0 < self.motion_layer < self.num_layers
    kw = dict(dim=self.dim, ffn_dim=self.ffn_dim, num_heads=self.num_heads, qk_norm=self.qk_norm,
              eps=self.eps, dropout=self.dropout, deterministic=deterministic,
              impl=self.attention, dtype=self.dtype, param_dtype=self.param_dtype,
              attention_block=self.attention_block, emit=inner)
    if self.joint_attention:
      if self.attention in ("ulysses", "ring"):
        raise ValueError(f"dit.joint_attention runs one attention over video and text tokens; "
                         f"dit.attention={self.attention!r} shards the video tokens only: use "
                         "xla, cudnn, splash or blockwise")
      block, carry, args = JointBlock, (x, text), (text_mask_BL, mod_BF6D, cos, sin)
    else:
      block, carry = Block, x
      kw["cross_attn_norm"] = self.cross_attn_norm
      args = (text, text_mask_BL, mod_BF6D, cos, sin)
    if self.remat_policy != "none":
      if self.remat_policy not in _REMAT_POLICIES:
        raise ValueError(f"dit.remat_policy={self.remat_policy!r}; choose none, "
                         f"{', '.join(_REMAT_POLICIES)}")
      block = nn.remat(block, prevent_cse=not self.scan_layers,
                       policy=_REMAT_POLICIES[self.remat_policy])
    if self.scan_layers:
      carry, emitted = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * len(args), length=self.num_layers,
          unroll=self.scan_unroll or self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(**kw, name="blocks")(carry, *args)
      hidden = emitted[self.motion_layer - 1] if inner else None
    else:
      hidden = None
      for i in range(self.num_layers):
        carry, y = block(**kw, name=f"blocks_{i}")(carry, *args)
        hidden = y if inner and i == self.motion_layer - 1 else hidden
    x = carry[0] if self.joint_attention else carry
    # Built whenever configured (so init creates its parameters); unused, XLA drops it.
    match_B = (MatchHead(self.dim, self.eps, self.dtype, self.param_dtype, name="match_head")(x)
               if self.match_head else None)
    motion = (MotionHead(self.dim, self.motion_classes, self.eps, self.dtype, self.param_dtype,
                         name="motion_head")(x if hidden is None else hidden)
              if self.motion_classes else None)

    e = _scale_shift_table(self, "scale_shift_table", 2)[None, None] + temb_BFD[:, :, None]
    h = _modulate(x, e[:, :, 0], e[:, :, 1], self.eps).astype(self.dtype)
    # Zero-initialised head (Wan): the untrained network predicts 0.
    out = _dense(pt * ph * pw * c_out, ("embed", "channels"), self.dtype, self.param_dtype,
                 "proj_out", nn.initializers.zeros)(h)
    out = einops.rearrange(out.astype(jnp.float32),
                           "b (f gh gw) (pt ph pw c) -> b (f pt) (gh ph) (gw pw) c",
                           f=f, gh=gh, gw=gw, pt=pt, ph=ph, pw=pw)
    extras = ((match_B,) if return_match else ()) + (
        (motion.reshape(b, f, gh, gw, self.motion_classes),) if return_motion else ())
    return (out, *extras) if extras else out


def dit_from_config(cfg) -> WanDiT:
  """The DiT of `cfg.dit` for latents of `cfg.vae.z_dim` channels and `cfg.text.dim` text."""
  d = cfg.dit
  return WanDiT(
      in_channels=cfg.vae.z_dim, text_dim=cfg.text.dim, patch_size=tuple(d.patch_size),
      dim=d.dim, ffn_dim=d.ffn_dim, num_heads=d.num_heads, num_layers=d.num_layers,
      freq_dim=d.freq_dim, qk_norm=d.qk_norm, cross_attn_norm=d.cross_attn_norm, eps=d.eps,
      dropout=d.dropout, rope_theta=d.rope_theta, scan_layers=d.scan_layers,
      scan_unroll=d.scan_unroll, remat_policy=d.remat_policy, attention=d.attention,
      attention_block=d.attention_block, pooled_text=bool(d.pooled_text),
      text_refiner_layers=d.text_refiner_layers,
      text_refiner_gate_init=float(d.text_refiner_gate_init),
      joint_attention=bool(d.joint_attention), match_head=bool(d.match_head),
      motion_classes=len(MOTIONS) if d.motion_head else 0, motion_layer=int(d.motion_head_layer),
      dtype=jnp.dtype(d.dtype),
      param_dtype=jnp.dtype(d.param_dtype))


def example_inputs(cfg, batch=1, frames=None, height=None, width=None, text_len=1):
  """Zero inputs of the right shapes/dtypes (for init and eval_shape); one patch by default."""
  pt, ph, pw = cfg.dit.patch_size
  x = jnp.zeros((batch, frames or pt, height or ph, width or pw, cfg.vae.z_dim), jnp.float32)
  return (x, jnp.zeros((batch,), jnp.float32),
          jnp.zeros((batch, text_len, cfg.text.dim), jnp.float32),
          jnp.ones((batch, text_len), bool))


def param_shapes(cfg):
  """Boxed (logically partitioned) ShapeDtypeStructs of the params, via jax.eval_shape."""
  # Shapes do not depend on the attention kernel; 'xla' traces on any backend.
  model = dit_from_config(cfg).clone(attention="xla")
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(cfg)))["params"]


def init_text_refiner(cfg, seed: int = 0) -> dict:
  """Fresh (unboxed) parameters of `cfg`'s TextRefiner alone, as `params['text_refiner']`
  (train.init_from adds a refiner to a DiT trained without one): with the default
  dit.text_refiner_gate_init = 0 the DiT given them computes what it computed without."""
  model = dit_from_config(cfg)
  if not model.text_refiner_layers:
    raise ValueError("init_text_refiner: dit.text_refiner_layers is 0")
  refiner = TextRefiner(model.dim, model.ffn_dim, model.num_heads, model.text_refiner_layers,
                        model.eps, model.dtype, model.param_dtype, model.text_refiner_gate_init)
  text = jnp.zeros((1, 1, model.dim), model.dtype)
  return nn.unbox(refiner.init(jax.random.key(seed), text, jnp.ones((1, 1), bool))["params"])


def init_match_head(cfg, seed: int = 0) -> dict:
  """Fresh (unboxed) parameters of `cfg`'s MatchHead alone, as `params['match_head']`
  (train.init_from adds the head to a DiT trained without one; the prediction is
  unchanged, as the head only reads the hidden states)."""
  model = dit_from_config(cfg)
  if not model.match_head:
    raise ValueError("init_match_head: dit.match_head is False")
  return _init_head(MatchHead(model.dim, model.eps, model.dtype, model.param_dtype), model, seed)


def init_motion_head(cfg, seed: int = 0) -> dict:
  """Fresh (unboxed) parameters of `cfg`'s MotionHead alone, as `params['motion_head']`
  (train.init_from adds the head to a DiT trained without one; the prediction is
  unchanged, as the head only reads the hidden states)."""
  model = dit_from_config(cfg)
  if not model.motion_classes:
    raise ValueError("init_motion_head: dit.motion_head is False")
  return _init_head(MotionHead(model.dim, model.motion_classes, model.eps, model.dtype,
                               model.param_dtype), model, seed)


def _init_head(head: nn.Module, model: WanDiT, seed: int) -> dict:
  """Unboxed parameters of a head that reads `model`'s (B, L, dim) hidden states."""
  return nn.unbox(head.init(jax.random.key(seed), jnp.zeros((1, 1, model.dim), model.dtype))
                  ["params"])


# Modules that act on the text tokens only, wherever they sit in the tree (a joint block's
# text stream included); with attn2's text side, what diffusion.binding_grad='text' trains.
_TEXT_ONLY_MODULES = frozenset({
    "text_embedder", "pooled_text_embedder", "text_refiner", "add_q_proj", "add_k_proj",
    "add_v_proj", "norm_added_q", "norm_added_k", "to_add_out", "ffn_text",
    "text_scale_shift_table"})
_CROSS_ATTN_TEXT_SIDE = frozenset({"to_k", "to_v", "norm_k"})  # attn2's keys and values


def acts_on_text_only(names: tuple[str, ...]) -> bool:
  """Whether the DiT parameter at `names` (its path in the params tree, e.g. ('blocks',
  'attn2', 'to_k', 'kernel')) acts on the text tokens only: the text embedders, the text
  refiner, the cross-attention's key/value projections and key norm, and a joint block's
  text stream. Every other parameter acts on the video tokens."""
  if any(n in _TEXT_ONLY_MODULES for n in names):
    return True
  return "attn2" in names and names[names.index("attn2") + 1] in _CROSS_ATTN_TEXT_SIDE


def acts_on_text_tokens(names: tuple[str, ...]) -> bool:
  """acts_on_text_only, less the pooled-text MLP (dit.pooled_text), whose output joins the
  time embedding and so modulates every video token."""
  return acts_on_text_only(names) and "pooled_text_embedder" not in names


def in_cross_attention(names: tuple[str, ...]) -> bool:
  """acts_on_text_only, or part of a Wan block's cross-attention (attn2: its query and
  output too) or of the norm in front of it (norm2)."""
  return acts_on_text_only(names) or "attn2" in names or "norm2" in names


def count_params(cfg) -> int:
  """Number of DiT parameters for `cfg` (jax.eval_shape: nothing is allocated)."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(param_shapes(cfg)))))


def count_flops(cfg, frames, height, width, text_len) -> int:
  """Analytic forward FLOPs (2 per multiply-add) of one sample of latent size T x H x W.

  Counts the matmuls and the two attention contractions; norms, RoPE, softmax and other
  elementwise work are left out (<1% at scale). A training step costs about 3x this (plus
  one more forward per block under remat).
  """
  d = cfg.dit
  pt, ph, pw = d.patch_size
  f = frames // pt
  l = f * (height // ph) * (width // pw)
  dim, ffn, s = d.dim, d.ffn_dim, text_len
  patch = pt * ph * pw * cfg.vae.z_dim
  macs = l * patch * dim  # Patch embedding.
  macs += s * (cfg.text.dim * dim + dim * dim)  # Text projection.
  macs += f * (d.freq_dim * dim + dim * dim + dim * 6 * dim)  # Time MLP, once per frame.
  if d.joint_attention:  # Both streams: q,k,v,o and MLP per token; one attention over l + s.
    per_layer = 4 * (l + s) * dim * dim + 2 * (l + s) ** 2 * dim + 2 * (l + s) * dim * ffn
  else:
    per_layer = (4 * l * dim * dim + 2 * l * l * dim  # Self-attn: q,k,v,o and QK^T, PV.
                 + 2 * l * dim * dim + 2 * s * dim * dim + 2 * l * s * dim  # Cross-attn.
                 + 2 * l * dim * ffn)  # MLP.
  macs += d.num_layers * per_layer
  # Text refiner: q,k,v,o, QK^T and PV over the text tokens, and its MLP.
  macs += d.text_refiner_layers * (4 * s * dim * dim + 2 * s * s * dim + 2 * s * dim * ffn)
  macs += l * dim * patch  # Head.
  return 2 * macs
