"""Sampling tasks as conditioning plans in latent space.

Every task becomes a `Plan`: how many latent frames to generate, which of them are given
clean (`cond_mask_BT`) and their latents (`cond_latents_BTHWC`), and the first noise
level `start` (1 = from pure noise; s < 1 = SDEdit). The plan feeds
`diffusion.solvers.sample` directly:

  plan = tasks.i2v(image_B1HWC, num_latent_frames=5)
  sig = schedules.sigmas(steps, shift, start=plan.start)
  noise = jax.random.normal(rng, plan.cond_latents_BTHWC.shape)
  x0 = solvers.sample(model_fn, noise, plan.cond_latents_BTHWC, plan.cond_mask_BT, sig, ...)

Pixel frames and latent frames (causal VAE, time compressed x`temporal`, 4 by default):
pixel frames 1 + 4k <-> latent frames 1 + k. Latent frame 0 encodes pixel frame 0 alone
(an "image latent"); latent frame j >= 1 encodes pixel frames 4j-3 .. 4j (a "group
latent"), looking only backwards. Hence:
  - an image encodes to exactly the first latent frame of a clip: i2v conditions latent
    frame 0 on `encode(image[None])` and the video's pixel frame 0 is the image;
  - the first k latent frames of a clip are the encoding of its first 1 + 4(k-1) pixel
    frames (causality), so a clip's head can be re-encoded alone;
  - frames that are to sit at latent positions >= 1 should be group latents. To get
    group latents of pixel frames F (a multiple of 4), encode `group_clip(F)` (F with its
    first frame repeated in front) and drop latent frame 0.
The recipes each task's docstring states follow from these rules.
"""
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Plan(NamedTuple):
  """What to sample: `num_latent_frames`, given frames and the first noise level."""
  num_latent_frames: int
  cond_latents_BTHWC: jnp.ndarray  # Clean latents on given frames (SDEdit input for edit).
  cond_mask_BT: jnp.ndarray  # bool: frames given (held clean while sampling).
  start: float  # First noise level: 1.0, or the SDEdit strength.


def latent_frames(pixel_frames: int, temporal: int = 4) -> int:
  """Pixel frames 1 + temporal*k -> latent frames 1 + k."""
  if pixel_frames < 1 or (pixel_frames - 1) % temporal:
    raise ValueError(f"{pixel_frames} pixel frames is not 1+{temporal}k (causal VAE); "
                     f"use {max(1, (pixel_frames - 1) // temporal * temporal + 1)}")
  return 1 + (pixel_frames - 1) // temporal


def pixel_frames(num_latent_frames: int, temporal: int = 4) -> int:
  """Latent frames 1 + k -> pixel frames 1 + temporal*k."""
  return 1 + temporal * (num_latent_frames - 1)


def group_clip(pixels_BFHWC, temporal: int = 4):
  """F pixel frames (F a multiple of `temporal`) -> the clip whose latents 1.. are F's groups.

  The first frame is repeated in front, so encoding the result gives 1 + F/temporal
  latent frames of which frames 1.. are group latents of F (usable at positions >= 1).
  """
  f = pixels_BFHWC.shape[1]
  if f % temporal:
    raise ValueError(f"{f} frames are not a multiple of {temporal}; group latents cover "
                     f"{temporal} frames each")
  return jnp.concatenate([pixels_BFHWC[:, :1], pixels_BFHWC], axis=1)


def _plan(batch, num_latent_frames, latent_hwc, dtype, given=(), start=1.0) -> Plan:
  """A plan with `given` = [(first latent frame index, latents_BKHWC), ...] held clean."""
  if num_latent_frames < 1:
    raise ValueError(f"num_latent_frames={num_latent_frames} must be >= 1")
  lat = jnp.zeros((batch, num_latent_frames, *latent_hwc), dtype)
  mask = jnp.zeros((batch, num_latent_frames), bool)
  for first, z in given:
    if z.ndim != 5 or z.shape[0] != batch or tuple(z.shape[2:]) != tuple(latent_hwc):
      raise ValueError(f"given latents of shape {z.shape} do not fit (B, K, H, W, C) = "
                       f"({batch}, K, {', '.join(map(str, latent_hwc))})")
    lat = lat.at[:, first:first + z.shape[1]].set(z.astype(dtype))
    mask = mask.at[:, first:first + z.shape[1]].set(True)
  if num_latent_frames > 1 and bool(mask.all()):
    raise ValueError(f"every one of the {num_latent_frames} latent frames is given; "
                     "ask for more frames than the conditioning covers")
  return Plan(num_latent_frames, lat, mask, float(start))


def _free_frames_needed(task, given_frames, num_latent_frames):
  if given_frames >= num_latent_frames:
    raise ValueError(f"{task}: {given_frames} given latent frames leave nothing to generate in "
                     f"num_latent_frames={num_latent_frames}; ask for more frames")


def t2v(batch: int, num_latent_frames: int, latent_hwc, dtype=jnp.float32) -> Plan:
  """Text to video: nothing given, from pure noise."""
  return _plan(batch, num_latent_frames, latent_hwc, dtype)


def t2i(batch: int, latent_hwc, dtype=jnp.float32) -> Plan:
  """Text to image: a one-latent-frame video (decodes to exactly one pixel frame)."""
  return _plan(batch, 1, latent_hwc, dtype)


def i2v(image_B1HWC, num_latent_frames: int) -> Plan:
  """Image to video: latent frame 0 = the encoded image (`encode(image[:, None])`).

  The output's latent frame 0 is the image's latent, so its pixel frame 0 is the image.
  """
  _free_frames_needed("i2v", 1, num_latent_frames)
  b, k, *hwc = image_B1HWC.shape
  if k != 1:
    raise ValueError(f"i2v takes one latent frame (an encoded image), got {k}; "
                     "use extend for a clip")
  return _plan(b, num_latent_frames, hwc, image_B1HWC.dtype, [(0, image_B1HWC)])


def extend(context_BKHWC, num_latent_frames: int) -> Plan:
  """Forward extension: the K context latents are frames 0..K-1, the rest continues them.

  Context: encode the clip's last 1 + 4(K-1) pixel frames as a clip of their own (its
  first latent is then a proper image latent). The window decodes to those pixel frames
  followed by 4 (T - K) new ones: append `decoded[:, 1 + 4(K-1):]` to the clip.
  """
  b, k, *hwc = context_BKHWC.shape
  _free_frames_needed("extend", k, num_latent_frames)
  return _plan(b, num_latent_frames, hwc, context_BKHWC.dtype, [(0, context_BKHWC)])


def extend_backward(context_BKHWC, num_latent_frames: int) -> Plan:
  """Backward extension: the K context latents are the last frames, new frames precede them.

  Context: group latents of the clip's first 4K pixel frames (`group_clip`, drop latent
  0). The window decodes to 1 + 4(T-K-1) new pixel frames then (approximately) the clip's
  first 4K: prepend `decoded[:, :1 + 4(T-K-1)]` to the clip.
  """
  b, k, *hwc = context_BKHWC.shape
  _free_frames_needed("extend_backward", k, num_latent_frames)
  return _plan(b, num_latent_frames, hwc, context_BKHWC.dtype,
               [(num_latent_frames - k, context_BKHWC)])


def interpolate(start_BKHWC, end_BJHWC, num_latent_frames: int) -> Plan:
  """Interpolation / connecting two clips: start latents first, end latents last.

  Start: an encoded image (K = 1) or a clip's tail encoded alone (as for `extend`).
  End: group latents (`group_clip`, drop latent 0) of the end clip's first 4J pixel
  frames; for an end image, of the image repeated 4 times (the video comes to rest on it).
  """
  b, k, *hwc = start_BKHWC.shape
  j = end_BJHWC.shape[1]
  _free_frames_needed("interpolate", k + j, num_latent_frames)
  return _plan(b, num_latent_frames, hwc, start_BKHWC.dtype,
               [(0, start_BKHWC), (num_latent_frames - j, end_BJHWC)])


def loop(first_B1HWC, num_latent_frames: int, closing_B1HWC=None) -> Plan:
  """Looping video: the last latent frame is tied to the first (first == last).

  Two passes, using the first+last conditioning the model was trained with:
    1. get the first latent frame: `t2i` (one cheap latent frame) or an encoded image;
    2. sample this plan: frame 0 = `first`, frame T-1 = `closing` (default `first`).
  Both are held clean, so the closure is exact in latent space, and the free frames are
  denoised knowing both ends. With a causal VAE the last position holds a group latent:
  for a pixel-exact closure pass `closing` = latent 1 of `encode(group_clip([image]*4))`,
  then the last 4 pixel frames rest on the first frame; play frames 0 .. F-5 in a loop.
  """
  _free_frames_needed("loop", 2, num_latent_frames)
  closing = first_B1HWC if closing_B1HWC is None else closing_B1HWC
  if first_B1HWC.shape[1] != 1 or closing.shape[1] != 1:
    raise ValueError("loop takes one latent frame for `first` and for `closing` (B, 1, H, W, C)")
  return interpolate(first_B1HWC, closing, num_latent_frames)


def edit(clip_BTHWC, strength: float) -> Plan:
  """SDEdit: noise the encoded clip to `strength` (0..1) and denoise it under a new prompt.

  Nothing is held clean; all latent frames start at (1 - s) clip + s noise. s -> 0 returns
  the clip, s = 1 ignores it.
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"edit strength={strength} must be in [0, 1] (set sample.strength)")
  b, t, *hwc = clip_BTHWC.shape
  return Plan(t, jnp.asarray(clip_BTHWC), jnp.zeros((b, t), bool), float(strength))


# A jitted window sampler: (noise_BTHWC, cond_latents_BTHWC, cond_mask_BT) -> latents_BTHWC.
WindowFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def iter_long(window_fn: WindowFn, keys_B, total_latent_frames: int, first: Plan, overlap: int,
              context_fn: Callable | None = None) -> Iterator[tuple[np.ndarray, slice]]:
  """Videos of any length by windowed extension; yields (window_BWHWC on host, new_frames).

  keys_B: one PRNG key per sample; sample b's noise in window i is drawn from keys_B[b]
  (window 0, the same noise as a t2v sample of that key) or `fold_in(keys_B[b], i)`, so a
  sample does not depend on its batch.

  Window 1 samples `first` (t2v, i2v, ... of W = first.num_latent_frames latent frames).
  Each next window is `extend(context, W)` with context = `context_fn(previous window)`
  (default: its last `overlap` latent frames; pass a VAE decode + re-encode of their pixel
  frames to follow `extend`'s recipe exactly). `new_frames` slices the window's frames
  that continue the video: concatenating `window[:, new_frames]` over the iterator gives
  exactly `total_latent_frames` latent frames. Every window has the same shape (one
  compile of `window_fn`); the last is trimmed rather than shortened. Only one window is
  on the device at a time and each is handed out as numpy, so device memory does not
  grow with the length.
  """
  w = first.num_latent_frames
  if not 1 <= overlap < w:
    raise ValueError(f"overlap={overlap} latent frames must be in [1, window-1] = [1, {w - 1}]")
  if total_latent_frames < 1:
    raise ValueError(f"total_latent_frames={total_latent_frames} must be >= 1")
  if first.start != 1.0:
    raise ValueError("long videos start from noise; the first window cannot be an edit plan")
  context_fn = context_fn or (lambda z: z[:, -overlap:])
  shape, dtype = first.cond_latents_BTHWC.shape, first.cond_latents_BTHWC.dtype
  if len(keys_B) != shape[0]:
    raise ValueError(f"{len(keys_B)} keys for a batch of {shape[0]}: give one key per sample")
  plan, done, index = first, 0, 0
  while done < total_latent_frames:
    noise = jnp.stack([jax.random.normal(k if index == 0 else jax.random.fold_in(k, index),
                                         shape[1:], dtype) for k in keys_B])
    window = window_fn(noise, plan.cond_latents_BTHWC, plan.cond_mask_BT)
    begin = 0 if index == 0 else int(plan.cond_mask_BT[0].sum())
    count = min(w - begin, total_latent_frames - done)
    yield np.asarray(window), slice(begin, begin + count)
    done += count
    index += 1
    if done < total_latent_frames:
      plan = extend(context_fn(window), w)
      del window  # the context is all that stays on the device


def sample_long(window_fn: WindowFn, keys_B, total_latent_frames: int, first: Plan, overlap: int,
                context_fn: Callable | None = None) -> np.ndarray:
  """All of `iter_long` stitched in latent space: (B, total_latent_frames, H, W, C) numpy."""
  chunks = [z[:, new] for z, new in iter_long(window_fn, keys_B, total_latent_frames, first,
                                              overlap, context_fn)]
  return np.concatenate(chunks, axis=1)
