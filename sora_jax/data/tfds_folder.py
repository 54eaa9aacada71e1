"""A folder of user videos + captions as a TFDS data set (array_record, no TensorFlow).

Input: `config.data.video_dir` (a local folder or a bucket URL, sora_jax.paths), searched
recursively for videos (mp4, webm, mov, avi, mkv, m4v, gif) and stills (png, jpg:
one-frame videos), each with a caption from
  - `NAME.txt` beside `NAME.mp4`, or
  - one `captions.jsonl` at the top ({"file": "relative/path.mp4", "caption": "..."}), or
  - one `captions.csv` at the top (`file,caption` rows; a header row is optional).
A `.txt` beside a file wins over the table. Every file without a caption is listed in one
error before anything is decoded.

Per file: decode with PyAV, resample to `config.data.fps`, pick the bucket size whose
aspect ratio is nearest (then the largest that needs no upscaling, else the smallest),
centre-crop to that aspect and resize, then cut non-overlapping clips of the longest
bucket length T (1 + 4k) that fits (at most `config.data.clips_per_video`, spread evenly).
A file shorter than every length of its size (a still, a short GIF) goes to the nearest
size that has a length it fills, such as a T = 1 image bucket.
A file that cannot be decoded, or is shorter than every bucket length of its size, is
skipped, counted and named in the summary (logged, in the data set's metadata.json and in
`build_summary.json` beside it). Examples have the ShapesWorld features with prompt =
caption and spec = "{}".
"""
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
from typing import Any

from absl import logging
import av
import numpy as np
import tensorflow_datasets as tfds

from sora_jax import config_check
from sora_jax import paths
from sora_jax.data import tfds_shapes
from sora_jax.data import video_io

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".gif")
STILL_EXTS = (".png", ".jpg", ".jpeg")
SUMMARY_FILE = "build_summary.json"
_VIDEOS_PER_SHARD = 500


class MissingCaptionsError(config_check.ConfigError):
  """Videos without a caption; the message lists every one and how to add captions."""


def _read_caption_tables(root: str) -> dict[str, str]:
  """relative path -> caption from captions.jsonl / captions.csv at the folder's top."""
  table = {}
  jsonl = os.path.join(root, "captions.jsonl")
  if paths.path(jsonl).is_file():
    with io.StringIO(paths.read_text(jsonl)) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          table[os.path.normpath(row["file"])] = str(row["caption"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise config_check.ConfigError(
              f"{jsonl} line {n} is not a JSON object with 'file' and 'caption': {e}") from e
  csv_path = os.path.join(root, "captions.csv")
  if paths.path(csv_path).is_file():
    # newline="" as the csv module asks: quoted fields may hold line breaks.
    with io.StringIO(paths.read_text(csv_path, newline=""), newline="") as f:
      for n, row in enumerate(csv.reader(f), 1):
        if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["file", "caption"]):
          continue
        if len(row) < 2:
          raise config_check.ConfigError(f"{csv_path} row {n} is not 'file,caption': {row}")
        table[os.path.normpath(row[0].strip())] = ",".join(row[1:]).strip()
  return table


def find_captioned_files(root: str) -> list[tuple[str, str]]:
  """Sorted (relative path, caption) of every media file under `root`.

  Raises MissingCaptionsError naming every media file without a (non-empty) caption.
  """
  media = []
  for d, dirs, files in paths.walk(root):
    dirs.sort()
    for name in sorted(files):
      if name.lower().endswith(VIDEO_EXTS + STILL_EXTS) and not name.startswith("."):
        media.append(os.path.join(d, name))
  if not media:
    raise config_check.ConfigError(
        f"data.video_dir={root!r} holds no videos ({', '.join(VIDEO_EXTS + STILL_EXTS)})")
  table = _read_caption_tables(root)
  out, missing = [], []
  for rel in media:
    txt = os.path.join(root, os.path.splitext(rel)[0] + ".txt")
    caption = table.get(os.path.normpath(rel), "")
    if paths.path(txt).is_file():
      caption = paths.read_text(txt).strip()
    (out if caption else missing).append((rel, caption))
  if missing:
    names = ", ".join(rel for rel, _ in missing)
    raise MissingCaptionsError(
        f"{len(missing)} of {len(media)} videos in {root} have no caption: {names}. Add "
        "NAME.txt beside each, or rows to captions.jsonl ({\"file\", \"caption\"}) or "
        "captions.csv (file,caption) in that folder")
  return out


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """What a folder build contains; `name` must come from `config_from_cfg`."""
  video_dir: str = ""
  files: tuple[tuple[str, str], ...] = ()  # (relative path, caption), sorted.
  buckets: tuple[tuple[int, int, int], ...] = ((17, 32, 32), (1, 32, 32))
  fps: float = 8.0
  val_fraction: float = 0.05
  clips_per_video: int = 0
  seed: int = 0


def config_from_cfg(data_cfg) -> VideoFolderConfig:
  """The builder config for `config.data`; its name fingerprints the folder and settings.

  Lists the folder and checks captions (MissingCaptionsError) but decodes nothing.
  """
  root = str(paths.path(data_cfg.video_dir))
  files = tuple(find_captioned_files(root))
  buckets = tuple(config_check.parse_buckets(data_cfg.buckets))
  h = hashlib.sha1()
  for rel, caption in files:
    h.update(f"{rel}\0{paths.path(os.path.join(root, rel)).stat().length}\0{caption}\0".encode())
  h.update(f"{data_cfg.val_fraction}\0{data_cfg.clips_per_video}\0{data_cfg.seed}".encode())
  slug = re.sub(r"[^A-Za-z0-9]+", "-", os.path.basename(root)).strip("-") or "videos"
  name = (f"{slug}_b{tfds_shapes.bucket_string(buckets)}_fps{float(data_cfg.fps):g}"
          f"_{h.hexdigest()[:10]}")
  return VideoFolderConfig(name=name, video_dir=root, files=files, buckets=buckets,
                           fps=float(data_cfg.fps), val_fraction=float(data_cfg.val_fraction),
                           clips_per_video=int(data_cfg.clips_per_video),
                           seed=int(data_cfg.seed),
                           description=f"Captioned videos from {root}.")


def split_files(files, val_fraction: float, seed: int) -> dict[str, list[tuple[str, str]]]:
  """Deterministic hold-out: the videos whose salted path hash ranks first go to validation.

  Hash ranking (not every k-th file) moves few videos across when others are added.
  """
  n_val = 0
  if val_fraction > 0 and len(files) >= 2:
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
  rank = sorted(files, key=lambda fc: hashlib.sha1(f"{seed}:{fc[0]}".encode()).hexdigest())
  val = {rel for rel, _ in rank[:n_val]}
  return {"train": [fc for fc in files if fc[0] not in val],
          "validation": [fc for fc in files if fc[0] in val]}


def choose_size(buckets, height: int, width: int) -> tuple[int, int]:
  """Bucket (H, W) for a source of height x width: nearest aspect ratio (log scale), then
  the largest that needs no upscaling, else the smallest."""
  sizes = sorted({(h, w) for _, h, w in buckets})
  dist = {s: abs(math.log(s[1] / s[0]) - math.log(width / height)) for s in sizes}
  best = min(dist.values())
  near = [s for s in sizes if dist[s] <= best + 1e-9]
  fits = [s for s in near if s[0] <= height and s[1] <= width]
  return max(fits, key=lambda s: s[0] * s[1]) if fits else min(near, key=lambda s: s[0] * s[1])


def crop_resize(frame_HWC: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre crop to the target aspect ratio, then area-resample to (height, width, 3)."""
  h0, w0 = frame_HWC.shape[:2]
  if w0 * height > h0 * width:  # Too wide: keep the full height.
    cw = max(1, round(h0 * width / height))
    x = (w0 - cw) // 2
    frame_HWC = frame_HWC[:, x:x + cw]
  else:
    ch = max(1, round(w0 * height / width))
    y = (h0 - ch) // 2
    frame_HWC = frame_HWC[y:y + ch]
  if frame_HWC.shape[:2] == (height, width):
    return np.ascontiguousarray(frame_HWC)
  frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HWC), format="rgb24")
  return frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray(
      format="rgb24")


def cut_clips(path: str, buckets, fps: float, clips_per_video: int = 0
              ) -> tuple[int, list[np.ndarray]]:
  """One media file -> (bucket id, uint8 clips (T, H, W, 3) of that bucket).

  Raises VideoReadError when the file cannot be decoded or is shorter than every bucket.
  """
  if path.lower().endswith(STILL_EXTS):
    frames_iter = iter([video_io.read_image(path)])
  else:
    it, _, _ = video_io.iter_frames(path, fps)
    frames_iter = (f.to_ndarray(format="rgb24") for f in it)
  first = next(frames_iter)  # iter_frames raises rather than yield nothing.
  src_hw = first.shape[:2]
  h, w = choose_size(buckets, *src_hw)
  # Source-size frames are kept only while the clip may turn out shorter than every
  # length of the chosen size (at most the longest bucket's T frames).
  longest = max(t for t, _, _ in buckets)
  raw, frames = [], []
  for f in itertools.chain([first], frames_iter):
    if len(raw) < longest:
      raw.append(f)
    frames.append(crop_resize(f, h, w))
  fitting = [b for b in buckets if b[0] <= len(frames)]
  if not fitting:
    raise video_io.VideoReadError(
        path, f"too short: {len(frames)} frames at {fps:g} fps; the shortest bucket needs "
              f"{min(t for t, _, _ in buckets)}")
  if not any((bh, bw) == (h, w) for _, bh, bw in fitting):
    # Too short for every length of its nearest size: the nearest size that fits.
    h, w = choose_size(fitting, *src_hw)
    frames = [crop_resize(f, h, w) for f in raw]
  t = max(bt for bt, bh, bw in fitting if (bh, bw) == (h, w))
  count = len(frames) // t
  starts = [i * t for i in range(count)]
  if clips_per_video and count > clips_per_video:
    # Spread the kept clips over the whole video rather than taking its opening.
    starts = [starts[round(i * (count - 1) / max(1, clips_per_video - 1))]
              for i in range(clips_per_video)]
  return buckets.index((t, h, w)), [np.stack(frames[s:s + t]) for s in starts]


def _process(task: tuple[str, str, tuple, float, int]) -> tuple[int, list[np.ndarray] | str]:
  """Pool worker: (bucket id, clips) or (-1, why it was skipped)."""
  path, _, buckets, fps, clips_per_video = task
  try:
    return cut_clips(path, buckets, fps, clips_per_video)
  except video_io.VideoReadError as e:
    return -1, e.reason
  except av.FFmpegError as e:  # e.g. a pixel format that cannot convert to RGB
    return -1, str(e)


class VideoFolder(tfds_shapes.ArrayRecordBuilder):
  """User videos with captions, cut into bucket-shaped clips; train and validation splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Folder of captioned videos, bucketed clips."}
  BUILDER_CONFIGS = []  # Configs are made per run from config.data (see config_from_cfg).

  def __init__(self, *, workers: int = 1, **kwargs):
    """workers: processes decoding videos (0: all cores); it does not change the data."""
    self._workers = workers
    self._pool = None
    self._skipped: dict[str, str] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds_shapes.video_features(),
        metadata=tfds.core.MetadataDict())

  def _download_and_prepare(self, dl_manager, download_config=None):
    cfg = self.builder_config
    self.info.metadata[tfds_shapes.BUCKETS] = [list(b) for b in cfg.buckets]
    self.info.metadata[tfds_shapes.BUCKET_RUNS] = {}
    self._skipped = {}
    # Decoding a video is seconds of work, so a pool pays off with a few files per worker.
    with tfds_shapes.worker_pool(self._workers, len(cfg.files) // 32) as pool:
      self._pool = pool
      try:
        super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._pool = None
    summary = self.summary()
    for rel, why in sorted(self._skipped.items()):
      logging.warning("video_folder: skipped %s: %s", rel, why)
    if not sum(summary["clips"].get("train", {}).values()):
      reasons = "; ".join(f"{rel}: {why}" for rel, why in sorted(self._skipped.items())[:5])
      raise config_check.ConfigError(
          f"no training clips from {cfg.video_dir}: every training file was skipped "
          f"({reasons}); check the files decode (e.g. with ffprobe) and are long enough")
    self.info.metadata["summary"] = summary
    # self.data_path is still the temporary directory here: the file lands atomically.
    (self.data_path / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))

  def summary(self) -> dict[str, Any]:
    """Files used and skipped (with reasons) and clips per split and bucket."""
    cfg = self.builder_config
    clips = {}
    for split, runs in self.info.metadata[tfds_shapes.BUCKET_RUNS].items():
      per = {}
      for k, c in runs:
        key = tfds_shapes.bucket_string([cfg.buckets[k]])
        per[key] = per.get(key, 0) + c
      clips[split] = per
    return {"video_dir": cfg.video_dir, "files": len(cfg.files),
            "used": len(cfg.files) - len(self._skipped), "skipped": len(self._skipped),
            "skipped_files": dict(sorted(self._skipped.items())), "clips": clips}

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    out = {}
    for split, files in split_files(cfg.files, cfg.val_fraction, cfg.seed).items():
      if files:
        self.info.metadata[tfds_shapes.BUCKET_RUNS][split] = []
        out[split] = [self._shard_fn(split, files[i:i + _VIDEOS_PER_SHARD])
                      for i in range(0, len(files), _VIDEOS_PER_SHARD)]
    return out

  def _shard_fn(self, split: str, files: list[tuple[str, str]]):
    cfg = self.builder_config
    runs = self.info.metadata[tfds_shapes.BUCKET_RUNS][split]

    def generate():
      # Keys continue across shards so records are numbered in split order.
      key = sum(c for _, c in runs)
      tasks = [(os.path.join(cfg.video_dir, rel), caption, cfg.buckets, cfg.fps,
                cfg.clips_per_video) for rel, caption in files]
      results = tfds_shapes.pool_map(self._pool, _process, tasks)
      for (rel, caption), (bucket, clips) in tfds_shapes.log_progress(
          zip(files, results), f"video_folder {split}", len(files)):
        if bucket < 0:
          self._skipped[rel] = clips
          continue
        for clip in clips:
          yield key, {"video": clip, "prompt": caption, "caption": caption, "spec": "{}"}
          key += 1
        if runs and runs[-1][0] == bucket:
          runs[-1][1] += len(clips)
        else:
          runs.append([bucket, len(clips)])

    return generate
