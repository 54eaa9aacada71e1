"""ShapesWorld as a TFDS data set that needs no TensorFlow (array_record files).

Every example is {video: uint8 (T, H, W, 3), prompt, caption, spec (JSON)}, see
docs/specs/shapes_world.md and `sora_jax.data.shapes_world.generate_clip`.

Why `ShardBasedBuilder` rather than `GeneratorBasedBuilder`: the generator-based writer
shuffles records through temporary files written with `tf.io.gfile` once a split passes
1 GB, so large builds would need TensorFlow; the shard-based writer streams each shard to
its array_record file in the order given, which also lets every bucket own contiguous
records (shards), so the bucket index is a handful of (bucket, count) runs (`BUCKET_RUNS`
in the data set's metadata.json), not a scan over the data.

Determinism: record i of a split is rendered from `clip_seed(seed, split, i)`, whatever
the worker count; the config name spells every setting that changes the content, so two
configs never share a directory.
"""
from collections.abc import Callable, Iterable, Iterator, Sequence
import contextlib
import dataclasses
import json
import multiprocessing
import os
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from sora_jax import config_check

# metadata.json keys shared with the pipeline (and any other bucketed data set).
BUCKETS = "buckets"  # [[T, H, W], ...]
BUCKET_RUNS = "bucket_runs"  # {split: [[bucket_id, count], ...] in record order}
SPLITS = ("train", "validation")
_SPLIT_CODE = {"train": 0, "validation": 1}
_SHARD_SIZE = 10_000  # Records per array_record file (random access does not care).


def video_features() -> tfds.features.FeaturesDict:
  """The features every video data set of sora_jax has (Tensor + Text: no TF needed)."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                    encoding="zlib"),
      "prompt": tfds.features.Text(),
      "caption": tfds.features.Text(),
      "spec": tfds.features.Text(),
  })


def as_str(x) -> str:
  """A Text feature of a decoded record (bytes, numpy bytes or str) as str."""
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def clip_seed(seed: int, split: str, index: int) -> int:
  """The generate_clip seed of record `index` of `split` (uint32 range)."""
  return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1)[0])


def split_counts(n: int, num_buckets: int) -> list[int]:
  """n clips spread evenly over buckets (the first buckets take the remainder)."""
  return [n // num_buckets + (k < n % num_buckets) for k in range(num_buckets)]


def bucket_string(buckets: Sequence[Sequence[int]]) -> str:
  return "-".join("x".join(str(s) for s in b) for b in buckets)


def log_progress(items: Iterable[Any], what: str, total: int | None,
                 every_s: float = 10.0) -> Iterator[Any]:
  """Passes items through, logging count and rate every `every_s` seconds."""
  t0 = last = time.time()
  n = 0
  for n, item in enumerate(items, 1):
    yield item
    now = time.time()
    if now - last >= every_s:
      last = now
      of = f"/{total}" if total else ""
      logging.info("%s: %d%s (%.1f/s)", what, n, of, n / (now - t0))
  logging.info("%s: %d done in %.1f s", what, n, time.time() - t0)


@contextlib.contextmanager
def worker_pool(workers: int, num_items: int):
  """A process pool for `workers` > 1 and enough work to pay its start-up, else None.

  'spawn' because the caller has usually imported JAX, whose threads do not survive fork.
  """
  workers = workers or os.cpu_count() or 1
  # Spawned workers each pay ~1 s of imports; below this many items serial is faster.
  if workers <= 1 or num_items < 128 * workers:
    yield None
    return
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    yield pool


def pool_map(pool, fn: Callable, items: Sequence[Any]) -> Iterator[Any]:
  """Ordered map over `items`, in `pool` when there is one."""
  if pool is None:
    return map(fn, items)
  return pool.imap(fn, items, chunksize=16)


class ArrayRecordBuilder(tfds.core.ShardBasedBuilder):
  """Base of sora_jax's builders: shard-based array_record writing, no TensorFlow."""

  # tfds resolves `code_path` with `importlib_resources`, which it installs only on
  # Python < 3.9, so for a builder inside a package it fails; its one use is locating
  # download checksums, which these builders (they download nothing) do not have.
  code_path = None

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _create_builder_config(self, builder_config, version):
    # Configs are made per run from config.data, never listed in BUILDER_CONFIGS, so
    # tfds would warn "Using custom data configuration" on every load.
    if isinstance(builder_config, tfds.core.BuilderConfig):
      return builder_config
    return super()._create_builder_config(builder_config, version)


@dataclasses.dataclass
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """What a ShapesWorld build contains; `name` must come from `config_from_cfg`."""
  buckets: tuple[tuple[int, int, int], ...] = ((17, 32, 32), (1, 32, 32))
  num_train: int = 2000
  num_val: int = 128
  two_object_fraction: float = 0.5
  seed: int = 0


def config_from_cfg(data_cfg) -> ShapesWorldConfig:
  """The builder config for `config.data`, named after everything that shapes the data."""
  buckets = tuple(config_check.parse_buckets(data_cfg.buckets))
  frac = float(data_cfg.two_object_fraction)
  name = (f"b{bucket_string(buckets)}_n{data_cfg.num_train}-{data_cfg.num_val}"
          f"_two{frac:g}_seed{data_cfg.seed}")
  return ShapesWorldConfig(name=name, buckets=buckets, num_train=int(data_cfg.num_train),
                           num_val=int(data_cfg.num_val), two_object_fraction=frac,
                           seed=int(data_cfg.seed),
                           description="ShapesWorld v1 clips, see docs/specs/shapes_world.md.")


def render_example(task: tuple[int, int, int, int, float]) -> dict[str, Any]:
  """(seed, frames, height, width, two_object_fraction) -> one TFDS example."""
  from sora_jax.data import shapes_world  # pylint: disable=g-import-not-at-top
  seed, t, h, w, frac = task
  clip = shapes_world.generate_clip(seed, t, h, w, two_object_fraction=frac)
  return {"video": clip["video"], "prompt": clip["prompt"], "caption": clip["caption"],
          "spec": json.dumps(clip["spec"])}


class ShapesWorld(ArrayRecordBuilder):
  """ShapesWorld v1 clips in (frames, height, width) buckets; train and validation splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "ShapesWorld v1 (docs/specs/shapes_world.md)."}
  BUILDER_CONFIGS = []  # Configs are made per run from config.data (see config_from_cfg).

  def __init__(self, *, workers: int = 1, **kwargs):
    """workers: processes rendering clips (0: all cores); it does not change the data."""
    self._workers = workers
    self._pool = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=video_features(),
        metadata=tfds.core.MetadataDict())

  def _split_records(self, split: str) -> list[tuple[int, int, int]]:
    """(bucket id, first record, count) per bucket, bucket-major record order."""
    cfg = self.builder_config
    n = cfg.num_train if split == "train" else cfg.num_val
    out, start = [], 0
    for k, count in enumerate(split_counts(n, len(cfg.buckets))):
      if count:
        out.append((k, start, count))
      start += count
    return out

  def _download_and_prepare(self, dl_manager, download_config=None):
    cfg = self.builder_config
    self.info.metadata[BUCKETS] = [list(b) for b in cfg.buckets]
    self.info.metadata[BUCKET_RUNS] = {
        s: [[k, c] for k, _, c in self._split_records(s)] for s in SPLITS}
    with worker_pool(self._workers, cfg.num_train + cfg.num_val) as pool:
      self._pool = pool
      try:
        super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._pool = None

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    out = {}
    for split in SPLITS:
      gens = []
      for k, start, count in self._split_records(split):
        for lo in range(start, start + count, _SHARD_SIZE):
          gens.append(self._shard_fn(split, k, lo, min(lo + _SHARD_SIZE, start + count)))
      if gens:
        out[split] = gens
    return out

  def _shard_fn(self, split: str, bucket: int, lo: int, hi: int):
    cfg = self.builder_config
    t, h, w = cfg.buckets[bucket]

    def generate():
      tasks = [(clip_seed(cfg.seed, split, i), t, h, w, cfg.two_object_fraction)
               for i in range(lo, hi)]
      examples = pool_map(self._pool, render_example, tasks)
      what = f"shapes_world {split} {t}x{h}x{w} records {lo}-{hi}"
      yield from enumerate(log_progress(examples, what, hi - lo), lo)

    return generate
