"""Video and image files <-> uint8 arrays, through PyAV (FFmpeg).

Arrays are uint8 RGB, `video_THWC` (frames, height, width, 3); an image is `HWC`.

- `write_mp4`: H.264 (libx264) in yuv420p, the format every browser, notebook and player
  shows. yuv420p needs even sides, so odd heights/widths are padded by repeating the last
  row/column (a black line would bleed into the chroma of the edge pixels) and the true
  size is stored in the container's `comment` tag, which `read_video` uses to crop the
  padding away again: `read_video(write_mp4(x))` has x's shape for any size.
- `write_gif`: exact colours when a clip has at most 256 of them (ShapesWorld always has),
  otherwise one median-cut palette for the whole clip (no per-frame flicker).
- `read_video`: mp4 / webm / mov / avi / gif (anything FFmpeg demuxes), optionally
  resampled to a frame rate by nearest-in-time frame selection. Corrupt, truncated or
  empty files raise `VideoReadError` naming the file and the reason. A bucket file
  (gs://...) is decoded from a temporary local copy (FFmpeg reads local files; a Python
  file object streaming from the bucket decoded slower and broke the emulator's pipes).
"""
from collections.abc import Iterator
import fractions
import re

import av
import numpy as np

from sora_jax import paths

# Where `write_mp4` records the unpadded size: `sora_jax size=HxW`.
_SIZE_TAG = re.compile(r"sora_jax size=(\d+)x(\d+)")
# Timestamps closer than this (seconds) count as the same instant.
_EPS = 1e-6


class VideoReadError(ValueError):
  """A video or image file that cannot be decoded (corrupt, truncated, empty, not a video)."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"cannot read {path!r}: {reason}")
    self.path = path
    self.reason = reason


def _check_video(video_THWC: np.ndarray) -> np.ndarray:
  v = np.asarray(video_THWC)
  if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
    raise ValueError(f"expected a uint8 video of shape (T>=1, H, W, 3), got {v.dtype} {v.shape}; "
                     "convert with np.clip(x, 0, 255).astype(np.uint8)")
  return v


def _rate(fps: float) -> fractions.Fraction:
  if not fps > 0:
    raise ValueError(f"fps={fps} must be > 0")
  return fractions.Fraction(fps).limit_denominator(1001)


def write_mp4(path: str, video_THWC: np.ndarray, fps: float, crf: int = 18) -> str:
  """Writes uint8 (T, H, W, 3) as H.264/yuv420p at `fps`; returns `path`.

  `crf` is x264's constant-quality setting (0 lossless luma .. 51 worst; 18 is visually
  near-lossless). Chroma is subsampled 2x2, so colours of 1-2 pixel details smear.
  """
  v = _check_video(video_THWC)
  _, h, w, _ = v.shape
  ph, pw = h % 2, w % 2
  if ph or pw:
    v = np.pad(v, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
  with av.open(path, "w", format="mp4") as out:
    out.metadata["comment"] = f"sora_jax size={h}x{w}"
    stream = out.add_stream("libx264", rate=_rate(fps))
    stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
    stream.options = {"crf": str(crf), "preset": "medium"}
    for frame_HWC in v:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")))
    out.mux(stream.encode(None))
  return path


def _palette(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (T,H,W,3) -> (indices uint8 (T,H,W), palette uint8 (n<=256, 3))."""
  flat = v.reshape(-1, 3)
  colors, inverse = np.unique(flat, axis=0, return_inverse=True)
  if len(colors) <= 256:
    return inverse.reshape(v.shape[:3]).astype(np.uint8), colors
  # More than 256 colours: one median-cut palette over (a sample of) all frames.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  step = max(1, len(v) // 16)
  mosaic = Image.fromarray(np.concatenate(list(v[::step]), axis=0))
  pal_img = mosaic.quantize(256, method=Image.Quantize.MEDIANCUT)
  idx = np.stack([np.asarray(Image.fromarray(f).quantize(palette=pal_img,
                                                         dither=Image.Dither.NONE)) for f in v])
  colors = np.asarray(pal_img.getpalette()[:768], np.uint8).reshape(256, 3)
  return idx.astype(np.uint8), colors


def write_gif(path: str, video_THWC: np.ndarray, fps: float) -> str:
  """Writes uint8 (T, H, W, 3) as a looping GIF at `fps` (GIF delays are 1/100 s)."""
  v = _check_video(video_THWC)
  _, h, w, _ = v.shape
  idx_THW, colors = _palette(v)
  palette_argb = np.zeros((256, 4), np.uint8)
  palette_argb[:, 0] = 255
  palette_argb[:len(colors), 1:] = colors
  with av.open(path, "w", format="gif") as out:
    stream = out.add_stream("gif", rate=_rate(fps))
    stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
    for frame_HW in idx_THW:
      out.mux(stream.encode(av.VideoFrame.from_ndarray((frame_HW, palette_argb), format="pal8")))
    out.mux(stream.encode(None))
  return path


def _nominal_fps(stream) -> float:
  """The stream's stated frame rate, 0.0 if it states none. Read before closing the file:
  a stream outlives its container only as a dangling pointer."""
  return float(stream.guessed_rate or stream.average_rate or 0)


def _resample(frames: Iterator[tuple[float, float | None, av.VideoFrame]], fps: float,
              fallback_duration: float) -> Iterator[av.VideoFrame]:
  """(time, duration, frame) in time order -> the frames nearest to t0 + k / fps.

  Streams (holds one frame back), so a long video is never held whole. Output frame k is
  the input frame nearest in time to t0 + k / fps, so the clip keeps its duration.
  """
  prev = None
  k, t0 = 0, 0.0
  for t, dur, frame in frames:
    if prev is None:
      t0 = t
    else:
      prev_t, _, prev_frame = prev
      while t0 + k / fps < t - _EPS:
        target = t0 + k / fps
        yield prev_frame if target - prev_t <= t - target else frame
        k += 1
    prev = (t, dur, frame)
  if prev is None:
    return
  last_t, last_dur, last_frame = prev
  # Round the length to whole output frames: GIF's 1/100 s delays make an 8 fps clip
  # last 2.13 s instead of 2.125 s, which must not add an 18th frame.
  total = max(1, int(np.floor((last_t + (last_dur or fallback_duration) - t0) * fps + 0.5 + _EPS)))
  while k < total:
    yield last_frame
    k += 1


def _open(path: str):
  """(container, its first video stream), or VideoReadError."""
  if not paths.path(path).is_file():
    raise VideoReadError(path, "no such file")
  # The container keeps its own descriptor: the local copy may be deleted once it is open.
  with paths.local_file(path) as local:
    try:
      container = av.open(local)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
      raise VideoReadError(path, str(e).replace(local, str(path))) from e
  if not container.streams.video:
    container.close()
    raise VideoReadError(path, "no video stream (not a video, or cut off before its index)")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  return container, stream


def _decoded(path: str, container, stream) -> Iterator[tuple[float, float | None, av.VideoFrame]]:
  """(time s, duration s or None, frame) for every frame; closes the container at the end."""
  nominal = _nominal_fps(stream) or 1.0
  stated = stream.frames  # 0 when the container does not say.
  count = 0
  try:
    for frame in container.decode(stream):
      t = frame.time if frame.time is not None else count / nominal
      dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
      count += 1
      yield t, dur, frame
  except av.FFmpegError as e:
    raise VideoReadError(path, f"decoding failed after {count} frames: {e}") from e
  finally:
    container.close()
  if count == 0:
    raise VideoReadError(path, "no decodable frames")
  # A file that ends well short of the frame count its header states was cut off (a
  # truncated copy whose index comes first); a frame or two may go to edit lists.
  if stated and count < stated - max(2, stated // 50):
    raise VideoReadError(path, f"truncated: decoded {count} of {stated} frames")


def iter_frames(path: str, fps: float | None = None
                ) -> tuple[Iterator[av.VideoFrame], float, tuple[int, int]]:
  """Opens a video lazily: (frame iterator, fps, (height, width) as stored).

  The iterator yields decoded `av.VideoFrame`s, resampled to `fps` when given (nearest in
  time, duration kept), and raises `VideoReadError` on a decode error or a truncated file.
  With fps=None the returned fps is the stream's nominal rate.
  """
  if fps is not None and not fps > 0:
    raise ValueError(f"fps={fps} must be > 0 (or None to keep the file's frames)")
  container, stream = _open(path)
  size = (stream.codec_context.height, stream.codec_context.width)
  nominal = _nominal_fps(stream)
  frames = _decoded(path, container, stream)
  if fps is None:
    return (f for _, _, f in frames), nominal, size
  fallback = 1.0 / (nominal or fps)
  return _resample(frames, fps, fallback), float(fps), size


def read_video(path: str, fps: float | None = None) -> tuple[np.ndarray, float]:
  """Decodes a video file -> (uint8 (T, H, W, 3), fps).

  fps=None keeps every frame and returns the mean rate measured from the timestamps;
  otherwise frames are resampled to `fps` (nearest in time; the duration is kept).
  Raises VideoReadError for a missing, corrupt, truncated or empty file.
  """
  if fps is not None and not fps > 0:
    raise ValueError(f"fps={fps} must be > 0 (or None to keep the file's frames)")
  container, stream = _open(path)
  tag = _SIZE_TAG.search(container.metadata.get("comment", ""))
  nominal = _nominal_fps(stream)
  decoded = _decoded(path, container, stream)
  if fps is None:
    items = list(decoded)
    frames = [f.to_ndarray(format="rgb24") for _, _, f in items]
    times = [t for t, _, _ in items]
    # The mean rate from the timestamps is exact where GIF's 1/100 s delays skew metadata.
    out_fps = (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else nominal
  else:
    fallback = 1.0 / (nominal or fps)
    frames = [f.to_ndarray(format="rgb24") for f in _resample(decoded, fps, fallback)]
    out_fps = float(fps)
  video = np.stack(frames)
  if tag:  # Crop the padding write_mp4 added to odd sides.
    h, w = int(tag.group(1)), int(tag.group(2))
    video = video[:, :min(h, video.shape[1]), :min(w, video.shape[2])]
  return np.ascontiguousarray(video), out_fps


def read_image(path: str) -> np.ndarray:
  """Decodes an image (png, jpg, ...; or a video's first frame) -> uint8 (H, W, 3)."""
  container, stream = _open(path)
  decoded = _decoded(path, container, stream)
  for _, _, frame in decoded:
    image = frame.to_ndarray(format="rgb24")
    decoded.close()
    return image
  raise VideoReadError(path, "no decodable frames")
