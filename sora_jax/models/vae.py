"""Causal 3D-conv video VAE in Flax Linen, laid out like Wan 2.1's `AutoencoderKLWan`.

Videos are `x_BTHWC` floats in [-1, 1], channels last. The encoder keeps the first frame
alone and compresses the rest x4 in time (x2 per `temporal_downsample` stage), so a clip
has T = 1 + 4k frames and an image is a 1-frame video; space shrinks x2 per stage after
the first (`2 ** (len(dim_mult) - 1)`). Latents are `z_BthwC` with t = 1 + k.

Every temporal operation is causal, which is what makes chunking exact:
- a causal conv sees its 2 preceding input frames (zeros before the clip starts);
- a 3D downsample passes the first frame through and convolves the rest with stride 2
  over (previous frame, 2 new frames);
- a 3D upsample passes the first frame through and turns each later frame into two,
  from a causal conv over the frames after the first.
Each of these is written once, as a streaming step `(x, cache) -> (y, cache)`: `cache`
holds the few frames a layer must remember (a nested dict of arrays mirroring the module
tree) and `cache=None` means "the clip starts here". The whole-clip `encode`/`decode` are
that step run on the whole clip from the start; `encode_chunked`/`decode_chunked` run it
on the first frame and then on fixed chunks under `jax.lax.scan`, so they give the same
numbers with activation memory set by the chunk, not by the clip length. This is Wan's
`feat_cache` made explicit and functional.

Parameter names follow diffusers (`encoder.down_blocks.0.conv1` ->
`encoder/down_blocks_0/conv1/kernel`), so `sora_jax.convert.wan_vae` maps released
weights one to one. As in diffusers, `attn_scales` adds attention to the encoder's stages
only; the decoder's only attention is its middle block.
"""
import functools
from typing import Callable, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import norms

Cache = dict  # Nested dict of arrays (the frames each causal layer remembers).

_CH = "channels"  # Logical axis of parameter channel dimensions (see config mesh.rules).


def _dense_init(init, ndim):
  """Init with logical axes: only the output channels are named, the rest replicated."""
  return nn.with_logical_partitioning(init, (None,) * (ndim - 1) + (_CH,))


_BIAS_INIT = nn.with_logical_partitioning(nn.initializers.zeros_init(), (_CH,))


def _posterior_bias_init(z_dim: int, logvar: float) -> Callable:
  """Bias of `quant_conv` (mean channels, then log-variance channels): 0 and `logvar`."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.concatenate([jnp.zeros((z_dim,), dtype), jnp.full((shape[0] - z_dim,), logvar, dtype)])
  return init


def _upsample_time_init(key, shape, dtype=jnp.float32):
  """(3, 1, 1, C, 2C) kernel that copies the current frame into both output frames.

  A freshly initialised 3D upsample then repeats frames in time (Wan's `init_weight2`),
  which gives a short training run a sensible start instead of noise.
  """
  del key
  kt, _, _, c_in, c_out = shape
  eye = jnp.eye(c_in, c_out // 2, dtype=dtype)
  kernel = jnp.zeros(shape, dtype)
  return kernel.at[kt - 1, 0, 0].set(jnp.concatenate([eye, eye], axis=1))


def _downsample_time_init(key, shape, dtype=jnp.float32):
  """(3, 1, 1, C, C) kernel that picks the middle frame (Wan's `init_weight`)."""
  del key
  kernel = jnp.zeros(shape, dtype)
  return kernel.at[1, 0, 0].set(jnp.eye(shape[3], shape[4], dtype=dtype))


def RMSNorm(name: str) -> norms.RMSNorm:  # pylint: disable=invalid-name
  """Wan's RMS_norm: L2-normalise over channels, times sqrt(C) and a learned scale, i.e.
  RMS normalisation with the norm floored at 1e-12 like torch's F.normalize (an all-zero
  position stays zero)."""
  return norms.RMSNorm(0.0, axis_name=_CH, min_norm=1e-12, name=name)


class CausalConv3d(nn.Module):
  """3D conv, zero 'same' padding in space, causal in time (past frames only).

  `past_BPHWC` are the P = kt - stride_t input frames just before `x` (None: zeros, i.e.
  the clip starts here); returns the output and the last P frames of the extended input,
  the `past` of the next chunk. With stride 2 (3D downsample) P is 1.
  """
  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  stride_t: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array, past_BPHWC: jax.Array | None = None):
    kt, kh, kw = self.kernel_size
    kernel = self.param("kernel", _dense_init(self.kernel_init, 5),
                        (kt, kh, kw, x_BTHWC.shape[-1], self.features))
    bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (_CH,)),
                      (self.features,))
    n_past = kt - self.stride_t
    new_past = None
    if n_past > 0:
      if past_BPHWC is None:
        past_BPHWC = jnp.zeros((x_BTHWC.shape[0], n_past) + x_BTHWC.shape[2:], x_BTHWC.dtype)
      x_BTHWC = jnp.concatenate([past_BPHWC, x_BTHWC], axis=1)
      new_past = x_BTHWC[:, x_BTHWC.shape[1] - n_past:]
    # A sum of kt 2D convs over time-shifted frames rather than one 3D conv: the same
    # conv, but XLA:CPU runs it ~4x faster forward and ~2x forward+backward (measured on
    # a 32-channel 3x3x3 layer at 8x17x32x32).
    b, t, h, w, c = x_BTHWC.shape
    t_out = (t - kt) // self.stride_t + 1
    y = 0.0
    for dt in range(kt):
      frames = x_BTHWC[:, dt:dt + self.stride_t * (t_out - 1) + 1:self.stride_t]
      y = y + jax.lax.conv_general_dilated(
          frames.reshape(b * t_out, h, w, c), kernel[dt], window_strides=(1, 1),
          padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, t_out, h, w, self.features) + bias, new_past


class ResidualBlock(nn.Module):
  """norm -> silu -> conv -> norm -> silu -> dropout -> conv, plus a (1x1x1) shortcut."""
  out_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BTHWC, cache: Cache | None, train: bool = False):
    h = x_BTHWC
    if x_BTHWC.shape[-1] != self.out_dim:
      h, _ = CausalConv3d(self.out_dim, (1, 1, 1), name="conv_shortcut")(x_BTHWC)
    y = nn.silu(RMSNorm(name="norm1")(x_BTHWC))
    y, c1 = CausalConv3d(self.out_dim, name="conv1")(y, cache and cache["conv1"])
    y = nn.silu(RMSNorm(name="norm2")(y))
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y, c2 = CausalConv3d(self.out_dim, name="conv2")(y, cache and cache["conv2"])
    return y + h, {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
  """Single-head self-attention over the pixels of each frame (frames never mix)."""

  @nn.compact
  def __call__(self, x_BTHWC):
    b, t, hh, ww, c = x_BTHWC.shape
    x = RMSNorm(name="norm")(x_BTHWC.reshape(b * t, hh * ww, c))
    qkv = nn.Dense(3 * c, kernel_init=_dense_init(nn.initializers.lecun_normal(), 2),
                   bias_init=_BIAS_INIT, name="to_qkv")(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    w = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) * c**-0.5, axis=-1)
    o = jnp.einsum("nqk,nkc->nqc", w, v)
    # Zero output projection (as Wan initialises it): a new block starts as the identity.
    o = nn.Dense(c, kernel_init=_dense_init(nn.initializers.zeros_init(), 2),
                 bias_init=_BIAS_INIT, name="proj")(o)
    return x_BTHWC + o.reshape(b, t, hh, ww, c)


class Resample(nn.Module):
  """x2 spatial down/upsampling, optionally with Wan's causal x2 in time ('...3d').

  mode: 'downsample2d', 'downsample3d', 'upsample2d' or 'upsample3d'. Downsampling keeps
  the channels; upsampling halves them (`dim // 2`, Wan 2.1).

  shortcut: add a parameter-free path around the resample, in the manner of Wan 2.2's
  AvgDown3D / DupUp3D (DC-AE's residual autoencoding): downsampling adds the input's
  average over each 2x2 (x2 frames) block, upsampling adds the input repeated to 2x2 (x2
  frames) with channel pairs averaged. The conv path then learns a residual, which
  trains much faster at high compression. Causal like the conv path (a first frame stays
  alone, later frames pair up), so chunking stays exact. Off for Wan 2.1 weights.
  """
  dim: int
  mode: str
  shortcut: bool = False

  @nn.compact
  def __call__(self, x_BTHWC, cache: Cache | None):
    y_BTHWC, new_cache = self._resample(x_BTHWC, cache)
    if self.shortcut:
      y_BTHWC = y_BTHWC + _resample_shortcut(x_BTHWC, self.mode, clip_start=cache is None)
    return y_BTHWC, new_cache

  def _resample(self, x_BTHWC, cache: Cache | None):
    new_cache = {}
    if self.mode == "upsample3d":
      time_conv = CausalConv3d(2 * self.dim, (3, 1, 1), kernel_init=_upsample_time_init,
                               name="time_conv")
      if cache is None:  # Clip start: the first frame stays one frame.
        first, rest = x_BTHWC[:, :1], x_BTHWC[:, 1:]
        y, new_cache["time_conv"] = time_conv(rest)
        x_BTHWC = jnp.concatenate([first, _frames_from_channels(y)], axis=1)
      else:
        y, new_cache["time_conv"] = time_conv(x_BTHWC, cache["time_conv"])
        x_BTHWC = _frames_from_channels(y)

    b, t, h, w, c = x_BTHWC.shape
    x = x_BTHWC.reshape(b * t, h, w, c)
    if self.mode.startswith("upsample"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # 'nearest-exact' at scale 2.
      conv = nn.Conv(self.dim // 2, (3, 3), padding=((1, 1), (1, 1)), name="resample",
                     kernel_init=_dense_init(nn.initializers.lecun_normal(), 4),
                     bias_init=_BIAS_INIT)
    else:  # torch ZeroPad2d((0, 1, 0, 1)): pad right and bottom only.
      conv = nn.Conv(self.dim, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), name="resample",
                     kernel_init=_dense_init(nn.initializers.lecun_normal(), 4),
                     bias_init=_BIAS_INIT)
    x = conv(x)
    x_BTHWC = x.reshape((b, t) + x.shape[1:])

    if self.mode == "downsample3d":
      time_conv = CausalConv3d(self.dim, (3, 1, 1), stride_t=2, kernel_init=_downsample_time_init,
                               name="time_conv")
      if cache is None:  # Clip start: frame 0 passes; (0,1,2), (2,3,4), ... are convolved.
        first = x_BTHWC[:, :1]
        y, new_cache["time_conv"] = time_conv(x_BTHWC[:, 1:], first)
        x_BTHWC = jnp.concatenate([first, y], axis=1)
      else:
        x_BTHWC, new_cache["time_conv"] = time_conv(x_BTHWC, cache["time_conv"])
    return x_BTHWC, new_cache


def _resample_shortcut(x_BTHWC, mode: str, clip_start: bool):
  """The parameter-free shortcut of `Resample(shortcut=True)` (same output shape)."""
  b, t, h, w, c = x_BTHWC.shape
  if mode.startswith("down"):
    x = x_BTHWC.reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))
    if mode == "downsample3d":
      first, rest = (x[:, :1], x[:, 1:]) if clip_start else (x[:, :0], x)
      rest = rest.reshape(b, rest.shape[1] // 2, 2, h // 2, w // 2, c).mean(axis=2)
      x = jnp.concatenate([first, rest], axis=1)
    return x
  x = x_BTHWC.reshape(b, t, h, w, c // 2, 2).mean(axis=-1)
  x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
  if mode == "upsample3d":
    first, rest = (x[:, :1], x[:, 1:]) if clip_start else (x[:, :0], x)
    x = jnp.concatenate([first, jnp.repeat(rest, 2, axis=1)], axis=1)
  return x


def _frames_from_channels(y_BTHW2C):
  """(B, T, H, W, 2C) -> (B, 2T, H, W, C): the first C channels are the earlier frame."""
  return einops.rearrange(y_BTHW2C, "b t h w (two c) -> b (t two) h w c", two=2)


class MidBlock(nn.Module):
  """Residual block, per-frame attention, residual block."""
  dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, cache: Cache | None, train: bool = False):
    new = {}
    x, new["resnets_0"] = ResidualBlock(self.dim, self.dropout, name="resnets_0")(
        x, cache and cache["resnets_0"], train)
    x = AttentionBlock(name="attentions_0")(x)
    x, new["resnets_1"] = ResidualBlock(self.dim, self.dropout, name="resnets_1")(
        x, cache and cache["resnets_1"], train)
    return x, new


class Encoder3d(nn.Module):
  """Video -> 2*z_dim channels (mean and log-variance), diffusers' `WanEncoder3d`."""
  dim: int
  z_dim: int
  dim_mult: Sequence[int]
  num_res_blocks: int
  attn_scales: Sequence[float]
  temporal_downsample: Sequence[bool]
  dropout: float = 0.0
  resample_shortcuts: bool = False

  @nn.compact
  def __call__(self, x_BTHWC, cache: Cache | None, train: bool = False):
    new = {}
    dims = [self.dim * u for u in (1,) + tuple(self.dim_mult)]
    x, new["conv_in"] = CausalConv3d(dims[0], name="conv_in")(x_BTHWC, cache and cache["conv_in"])
    idx, scale = 0, 1.0
    for i, out_dim in enumerate(dims[1:]):
      for _ in range(self.num_res_blocks):
        name = f"down_blocks_{idx}"
        x, new[name] = ResidualBlock(out_dim, self.dropout, name=name)(x, cache and cache[name], train)
        idx += 1
        if scale in self.attn_scales:
          x = AttentionBlock(name=f"down_blocks_{idx}")(x)
          idx += 1
      if i != len(self.dim_mult) - 1:
        name = f"down_blocks_{idx}"
        mode = "downsample3d" if self.temporal_downsample[i] else "downsample2d"
        x, new[name] = Resample(out_dim, mode, self.resample_shortcuts, name=name)(
            x, cache and cache[name])
        idx += 1
        scale /= 2.0
    x, new["mid_block"] = MidBlock(dims[-1], self.dropout, name="mid_block")(
        x, cache and cache["mid_block"], train)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    x, new["conv_out"] = CausalConv3d(self.z_dim, name="conv_out")(x, cache and cache["conv_out"])
    return x, new


class UpBlock(nn.Module):
  """num_res_blocks + 1 residual blocks, then an optional Resample ('upsamplers_0')."""
  out_dim: int
  num_res_blocks: int
  upsample_mode: str | None
  dropout: float = 0.0
  resample_shortcuts: bool = False

  @nn.compact
  def __call__(self, x, cache: Cache | None, train: bool = False):
    new = {}
    for j in range(self.num_res_blocks + 1):
      name = f"resnets_{j}"
      x, new[name] = ResidualBlock(self.out_dim, self.dropout, name=name)(x, cache and cache[name], train)
    if self.upsample_mode:
      x, new["upsamplers_0"] = Resample(self.out_dim, self.upsample_mode, self.resample_shortcuts,
                                        name="upsamplers_0")(x, cache and cache["upsamplers_0"])
    return x, new


class Decoder3d(nn.Module):
  """z_dim channels -> video, diffusers' `WanDecoder3d` (Wan 2.1, non-residual)."""
  dim: int
  dim_mult: Sequence[int]
  num_res_blocks: int
  temporal_upsample: Sequence[bool]
  out_channels: int = 3
  dropout: float = 0.0
  resample_shortcuts: bool = False

  @nn.compact
  def __call__(self, z_BthwC, cache: Cache | None, train: bool = False):
    new = {}
    dims = [self.dim * u for u in (self.dim_mult[-1],) + tuple(self.dim_mult[::-1])]
    x, new["conv_in"] = CausalConv3d(dims[0], name="conv_in")(z_BthwC, cache and cache["conv_in"])
    x, new["mid_block"] = MidBlock(dims[0], self.dropout, name="mid_block")(
        x, cache and cache["mid_block"], train)
    for i, out_dim in enumerate(dims[1:]):
      mode = None
      if i != len(self.dim_mult) - 1:
        mode = "upsample3d" if self.temporal_upsample[i] else "upsample2d"
      name = f"up_blocks_{i}"
      x, new[name] = UpBlock(out_dim, self.num_res_blocks, mode, self.dropout,
                             self.resample_shortcuts, name=name)(
          x, cache and cache[name], train)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    x, new["conv_out"] = CausalConv3d(self.out_channels, name="conv_out")(
        x, cache and cache["conv_out"])
    return x, new


class WanVAE(nn.Module):
  """Causal video VAE (Wan 2.1 layout). Fields mirror `config.vae` (see config_defaults).

  Methods (use through `apply(variables, ..., method=WanVAE.<name>)`):
    encode(x_BTHWC) -> (mean_BthwC, logvar_BthwC)      whole clip, T = 1 + 4k
    decode(z_BthwC, clamp=True) -> x_BTHWC             whole clip, clamped to [-1, 1]
    __call__(x_BTHWC, rng, train=True) -> (recon_BTHWC, mean, logvar)   for training:
        z = mean + exp(logvar / 2) * N(0, 1) from `rng`; recon is unclamped.
    encode_step(x, cache=None) -> (mean, logvar, cache)  streaming: cache=None starts a
        clip (T = 1 + 4k frames), later chunks carry 4k frames and the returned cache.
    decode_step(z, cache=None, clamp=True) -> (x, cache)   streaming, any t >= 1 per call.
  Dropout (if `dropout` > 0 and train=True) draws from the 'dropout' rng collection.
  """
  base_dim: int = 96
  z_dim: int = 16
  dim_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: Sequence[float] = ()
  temporal_downsample: Sequence[bool] = (False, True, True)
  dropout: float = 0.0
  in_channels: int = 3
  out_channels: int = 3
  chunk_frames: int = 4  # Latent frames per chunk in encode_chunked / decode_chunked.
  resample_shortcuts: bool = False  # Wan-2.2-style parameter-free shortcuts (see Resample).
  logvar_init: float = 0.0  # Initial posterior log-variance (quant_conv bias); see config.

  def __post_init__(self):
    # Tuples, so a module built from lists (JSON, configs) is hashable: the chunked
    # functions pass it to jit as a static argument.
    for name in ("dim_mult", "attn_scales", "temporal_downsample"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    super().__post_init__()

  def setup(self):
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
          f"temporal_downsample={tuple(self.temporal_downsample)} needs one entry per "
          f"downsampling, len(dim_mult) - 1 = {len(self.dim_mult) - 1}")
    self.encoder = Encoder3d(self.base_dim, 2 * self.z_dim, self.dim_mult, self.num_res_blocks,
                             self.attn_scales, self.temporal_downsample, self.dropout,
                             self.resample_shortcuts)
    self.quant_conv = CausalConv3d(2 * self.z_dim, (1, 1, 1),
                                   bias_init=_posterior_bias_init(self.z_dim, self.logvar_init))
    self.post_quant_conv = CausalConv3d(self.z_dim, (1, 1, 1))
    self.decoder = Decoder3d(self.base_dim, self.dim_mult, self.num_res_blocks,
                             tuple(self.temporal_downsample)[::-1], self.out_channels, self.dropout,
                             self.resample_shortcuts)

  # ------------------------------------------------------------------ shapes
  @property
  def temporal_factor(self) -> int:
    """Pixel frames per latent frame after the first (4 for Wan 2.1)."""
    return 2 ** sum(bool(t) for t in self.temporal_downsample)

  @property
  def spatial_factor(self) -> int:
    """Pixels per latent pixel along height and width."""
    return 2 ** (len(self.dim_mult) - 1)

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(T, H, W) of a video -> (t, h, w, z_dim) of its latents; ValueError if not encodable."""
    self.check_video_shape(frames, height, width)
    tf, sf = self.temporal_factor, self.spatial_factor
    return (1 + (frames - 1) // tf, height // sf, width // sf, self.z_dim)

  def video_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(t, h, w) of latents -> (T, H, W, out_channels) of the decoded video."""
    if t < 1:
      raise ValueError(f"latents need at least 1 frame, got {t}")
    return (1 + (t - 1) * self.temporal_factor, h * self.spatial_factor,
            w * self.spatial_factor, self.out_channels)

  def check_video_shape(self, frames: int, height: int, width: int, *, chunk: bool = False):
    """Raises ValueError naming the fix if the clip (or a later chunk) cannot be encoded."""
    tf, sf = self.temporal_factor, self.spatial_factor
    if chunk:
      if frames < tf or frames % tf:
        raise ValueError(f"a chunk after the first needs a positive multiple of {tf} frames, "
                         f"got {frames}")
    elif frames < 1 or (frames - 1) % tf:
      lo = max(1, (frames - 1) // tf * tf + 1)
      raise ValueError(f"video has {frames} frames; the causal VAE needs 1+{tf}k "
                       f"(first frame alone, then x{tf}): use {lo} or {lo + tf}")
    for name, size in (("height", height), ("width", width)):
      if size < sf or size % sf:
        lo = max(sf, size // sf * sf)
        raise ValueError(f"video {name}={size} is not a multiple of {sf} (the VAE's spatial "
                         f"factor): crop or resize to {lo} or {lo + sf}")

  def _check_input(self, x, channels, what):
    if x.ndim != 5 or x.shape[-1] != channels:
      raise ValueError(f"{what} must be (B, T, H, W, {channels}) channels-last, got {x.shape}")

  # ------------------------------------------------------------------ streaming steps
  def encode_step(self, x_BTHWC: jax.Array, cache: Cache | None = None, train: bool = False):
    """Encodes a clip start (cache None, 1+4k frames) or its next 4k frames.

    Returns (mean_BthwC, logvar_BthwC, cache); logvar is clamped to [-30, 20] as in
    diffusers' DiagonalGaussianDistribution.
    """
    self._check_input(x_BTHWC, self.in_channels, "encoder input x_BTHWC")
    self.check_video_shape(*x_BTHWC.shape[1:4], chunk=cache is not None)
    h, enc_cache = self.encoder(x_BTHWC, cache and cache["encoder"], train)
    h, _ = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0), {"encoder": enc_cache}

  def decode_step(self, z_BthwC: jax.Array, cache: Cache | None = None, clamp: bool = True,
                  train: bool = False):
    """Decodes latent frames from a clip start (cache None) or after `cache`'s frames.

    Returns (x_BTHWC, cache): 1 + 4(t-1) frames at the start, 4t frames afterwards.
    """
    self._check_input(z_BthwC, self.z_dim, "latents z_BthwC")
    x, _ = self.post_quant_conv(z_BthwC)
    x, dec_cache = self.decoder(x, cache and cache["decoder"], train)
    if clamp:
      x = jnp.clip(x, -1.0, 1.0)
    return x, {"decoder": dec_cache}

  # ------------------------------------------------------------------ whole clip
  def encode(self, x_BTHWC: jax.Array, train: bool = False):
    """(B, 1+4k, H, W, 3) in [-1, 1] -> (mean, logvar), each (B, 1+k, H/s, W/s, z_dim)."""
    mean, logvar, _ = self.encode_step(x_BTHWC, None, train)
    return mean, logvar

  def decode(self, z_BthwC: jax.Array, clamp: bool = True, train: bool = False):
    """(B, t, h, w, z_dim) -> (B, 1+4(t-1), h*s, w*s, 3), clamped to [-1, 1] by default."""
    return self.decode_step(z_BthwC, None, clamp, train)[0]

  def __call__(self, x_BTHWC: jax.Array, rng: jax.Array, train: bool = True):
    """Training forward: (recon_BTHWC unclamped, mean_BthwC, logvar_BthwC)."""
    mean, logvar = self.encode(x_BTHWC, train)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(z, clamp=False, train=train), mean, logvar


def vae_from_config(cfg) -> WanVAE:
  """WanVAE from a full config (`cfg.vae`)."""
  v = cfg.vae
  return WanVAE(base_dim=int(v.base_dim), z_dim=int(v.z_dim), dim_mult=tuple(v.dim_mult),
                num_res_blocks=int(v.num_res_blocks), attn_scales=tuple(v.attn_scales),
                temporal_downsample=tuple(bool(t) for t in v.temporal_downsample),
                dropout=float(v.dropout), chunk_frames=int(v.chunk_frames),
                resample_shortcuts=bool(v.resample_shortcuts),
                logvar_init=float(v.logvar_init))


def latent_shape(cfg, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  """(T, H, W) -> (t, h, w, C) of the latents under `cfg.vae`; ValueError if not encodable."""
  return vae_from_config(cfg).latent_shape(frames, height, width)


def init_variables(vae: WanVAE, rng: jax.Array) -> dict:
  """Fresh {'params': ...} (logically partitioned boxes; `nn.unbox` gives plain arrays).

  Runs only the initialisers (`lazy_init`, no forward pass), drawing from an 'rbg' key
  derived from `rng`: XLA:CPU compiles threefry's unrolled rounds once per parameter
  tensor, which made this init take ~50 s to compile on 2 cores against ~10 s with rbg.
  Same rng and backend -> same parameters.
  """
  key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
  s = vae.spatial_factor
  x = jax.ShapeDtypeStruct((1, 1 + vae.temporal_factor, s, s, vae.in_channels), jnp.float32)
  key_spec = jax.ShapeDtypeStruct((), key.dtype)
  return jax.jit(lambda k: vae.lazy_init(k, x, key_spec, train=False))(key)


# ---------------------------------------------------------------------- chunked
def _scan_chunks(step, cache, x_BT, chunk_len):
  """Runs `step(x_chunk, cache) -> (outs, cache)` over x in chunks of `chunk_len` frames.

  Full chunks go through `jax.lax.scan` (one compiled body; the activations of one chunk
  are alive at a time); a shorter tail, if any, is one more step. Returns the list of
  output pytrees (time-major within each, ready to concatenate along axis 1) and the cache.
  """
  b, t = x_BT.shape[:2]
  full, tail = divmod(t, chunk_len)
  outs = []
  if full:
    xs = x_BT[:, :full * chunk_len].reshape((b, full, chunk_len) + x_BT.shape[2:])

    def body(c, x_chunk):
      o, c = step(x_chunk, c)
      return c, o

    cache, ys = jax.lax.scan(body, cache, jnp.swapaxes(xs, 0, 1))
    # (chunks, B, t_chunk, ...) -> (B, chunks * t_chunk, ...)
    outs.append(jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape((b, -1) + y.shape[3:]), ys))
  if tail:
    o, cache = step(x_BT[:, full * chunk_len:], cache)
    outs.append(o)
  return outs, cache


@functools.partial(jax.jit, static_argnames=("vae", "chunk_frames"))
def _encode_chunked(vae, variables, x_BTHWC, cache, chunk_frames):
  def step(x, c):
    m, lv, c = vae.apply(variables, x, c, method=WanVAE.encode_step)
    return (m, lv), c

  outs = []
  if cache is None:
    first, cache = step(x_BTHWC[:, :1], None)
    outs.append(first)
    x_BTHWC = x_BTHWC[:, 1:]
  more, cache = _scan_chunks(step, cache, x_BTHWC, chunk_frames * vae.temporal_factor)
  outs += more
  mean = jnp.concatenate([o[0] for o in outs], axis=1)
  logvar = jnp.concatenate([o[1] for o in outs], axis=1)
  return mean, logvar, cache


@functools.partial(jax.jit, static_argnames=("vae", "chunk_frames", "clamp"))
def _decode_chunked(vae, variables, z_BthwC, cache, chunk_frames, clamp):
  def step(z, c):
    return vae.apply(variables, z, c, clamp, method=WanVAE.decode_step)

  outs = []
  if cache is None:
    first, cache = step(z_BthwC[:, :1], None)
    outs.append(first)
    z_BthwC = z_BthwC[:, 1:]
  more, cache = _scan_chunks(step, cache, z_BthwC, chunk_frames)
  return jnp.concatenate(outs + more, axis=1), cache


def _chunk(vae: WanVAE, chunk_frames: int | None) -> int:
  chunk = vae.chunk_frames if chunk_frames is None else int(chunk_frames)
  if chunk < 1:
    raise ValueError(f"chunk_frames={chunk} must be >= 1 latent frame (vae.chunk_frames)")
  return chunk


def encode_chunked(vae: WanVAE, variables: dict, x_BTHWC: jax.Array, cache: Cache | None = None,
                   chunk_frames: int | None = None):
  """Chunked causal encode: same result as `encode`, memory flat in clip length.

  variables: {'params': ...}. x_BTHWC: a clip start (cache None; T = 1 + 4k) or the next
  4k frames of a clip whose returned `cache` is passed back in. The first frame is
  encoded alone, then `chunk_frames` latent frames (x4 pixel frames) per scan step
  (default `vae.chunk_frames`). Returns (mean_BthwC, logvar_BthwC, cache).
  """
  vae._check_input(x_BTHWC, vae.in_channels, "encoder input x_BTHWC")
  vae.check_video_shape(*x_BTHWC.shape[1:4], chunk=cache is not None)
  return _encode_chunked(vae, variables, x_BTHWC, cache, _chunk(vae, chunk_frames))


def decode_chunked(vae: WanVAE, variables: dict, z_BthwC: jax.Array, cache: Cache | None = None,
                   chunk_frames: int | None = None, clamp: bool = True):
  """Chunked causal decode: same result as `decode`, memory flat in clip length.

  z_BthwC: latents from a clip start (cache None) or the next latent frames after a
  returned `cache`. Decodes the first latent frame alone, then `chunk_frames` latent
  frames per scan step (default `vae.chunk_frames`). Returns (x_BTHWC, cache).
  """
  vae._check_input(z_BthwC, vae.z_dim, "latents z_BthwC")
  return _decode_chunked(vae, variables, z_BthwC, cache, _chunk(vae, chunk_frames), clamp)
