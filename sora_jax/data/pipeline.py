"""Grain input pipeline: bucketed, shuffled, per-process sharded, checkpointable batches.

Works on any random-access source whose records are bucketed (ShapesWorld, a video
folder, encoded latents): the source (`tfds.data_source` / `builder.as_data_source`)
plus the bucket of each record, which builders store in metadata.json as runs
(`tfds_shapes.BUCKETS`, `tfds_shapes.BUCKET_RUNS`), so finding buckets costs nothing.

Batch order is a pure function of (shuffle seed, global batch size, bucket sizes, step):
  - training (repeat=True): each epoch shuffles every bucket's records and the order of
    the buckets' batches, so every record is seen once per epoch (a bucket's last batch
    is completed with records from its start) and every batch holds one bucket
    (same T, H, W). With `data.bucket_weights`, each step instead draws its bucket with
    those probabilities, and each bucket runs through its own shuffled epochs.
  - evaluation (repeat=False): one pass, bucket by bucket in record order; the last batch
    of a bucket is padded with `mask` False rows.
Process p of P takes rows [p*B/P, (p+1)*B/P) of every global batch of B: the processes'
parts are disjoint and together are the whole batch, and each process reads only its own
records. The iterator's state is the step (JSON), valid across process counts; Grain
reads and prefetches batches in threads (`data.prefetch`) or worker processes
(`data.worker_count`).

A batch (this process's rows, b = batch_size // process_count):
  {'video': uint8 (b, T, H, W, 3), 'prompt', 'caption', 'spec': object arrays (b,) of str,
   'index': int32 (b,) record numbers in the split, 'mask': bool (b,) real rows}
(other sources: their own features, stacked the same way, plus 'index' and 'mask').
"""
from collections.abc import Sequence
import hashlib
import sys
import threading
from typing import Any

from absl import flags
from absl import logging
import grain
import numpy as np

from sora_jax import config_check
from sora_jax.data import tfds_shapes

_WEIGHTED_BLOCK = 4096  # Steps whose bucket draws come from one RNG call.


def bucket_ids_from_runs(runs: Sequence[Sequence[int]]) -> np.ndarray:
  """[[bucket, count], ...] (record order) -> int32 (num_records,) bucket of each record."""
  if not runs:
    return np.zeros((0,), np.int32)
  ids, counts = zip(*runs)
  return np.repeat(np.asarray(ids, np.int32), np.asarray(counts, np.int64))


def bucket_index(metadata, split: str) -> tuple[list[tuple[int, ...]], np.ndarray]:
  """(bucket shapes, bucket id of every record) of `split` from a data set's metadata."""
  if tfds_shapes.BUCKETS not in metadata or tfds_shapes.BUCKET_RUNS not in metadata:
    raise ValueError("this data set has no bucket index in its metadata.json; rebuild it "
                     "with --mode=data (or --mode=encode for latents)")
  runs = metadata[tfds_shapes.BUCKET_RUNS]
  if split not in runs:
    raise ValueError(f"the data set has no {split!r} split (it has {sorted(runs)})")
  return [tuple(b) for b in metadata[tfds_shapes.BUCKETS]], bucket_ids_from_runs(runs[split])


def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in key])


class BatchPlan:
  """Which records make global batch `step`; a pure function of the constructor arguments.

  bucket_ids_R: int (R,) bucket of every record; buckets with no records (or weight 0)
  are never drawn. weights: per bucket id (None: by size, epoch by epoch).
  """

  def __init__(self, bucket_ids_R: np.ndarray, batch_size: int, seed: int, repeat: bool,
               weights: Sequence[float] | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.batch_size = batch_size
    self.seed = seed
    self.repeat = repeat
    ids = np.asarray(bucket_ids_R)
    num = int(ids.max()) + 1 if ids.size else 0
    self.members = [np.flatnonzero(ids == k) for k in range(num)]
    self.num_batches = np.array([-(-len(m) // batch_size) for m in self.members], np.int64)
    self.weights = None
    if weights is not None and repeat:
      w = np.zeros(num)
      w[:min(num, len(weights))] = np.asarray(weights[:num], float)
      w[self.num_batches == 0] = 0.0
      if w.sum() <= 0:
        raise ValueError("every bucket with a positive data.bucket_weights entry is empty "
                         "in this split")
      self.weights = w / w.sum()
    if not self.num_batches.sum():
      raise ValueError("no records to batch (the split is empty or every bucket is excluded)")
    self._init_caches()

  def __getstate__(self):
    """Pickled for Grain worker processes: caches and the lock stay behind."""
    return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()

  def _init_caches(self):
    # Grain's prefetch threads share the caches; the lock keeps them consistent.
    self._lock = threading.Lock()
    self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
    self._block_counts: list[np.ndarray] = []

  def fingerprint(self) -> str:
    """Changes whenever the same step would give a different batch."""
    h = hashlib.sha1(f"{self.seed}:{self.batch_size}:{self.repeat}:".encode())
    h.update(np.asarray([len(m) for m in self.members], np.int64).tobytes())
    if self.weights is not None:
      h.update(self.weights.tobytes())
    return h.hexdigest()[:16]

  @property
  def steps_per_epoch(self) -> int:
    return int(self.num_batches.sum())

  def __len__(self) -> int:
    return sys.maxsize if self.repeat else self.steps_per_epoch

  def _perm(self, bucket: int, epoch: int) -> np.ndarray:
    """Bucket's records for one of its epochs, shuffled and wrapped to whole batches."""
    with self._lock:
      perm = self._perm_cache.get((bucket, epoch))
      if perm is None:
        if len(self._perm_cache) > 4 * len(self.members):
          self._perm_cache.clear()
        perm = self.members[bucket]
        if self.repeat:
          perm = _rng(self.seed, 1, epoch, bucket).permutation(perm)
        perm = np.resize(perm, self.num_batches[bucket] * self.batch_size)
        self._perm_cache[(bucket, epoch)] = perm
      return perm

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of each step of the epoch, that batch's number within its bucket)."""
    with self._lock:
      cached = self._epoch_cache.get(epoch)
      if cached is None:
        if len(self._epoch_cache) > 2:
          self._epoch_cache.clear()
        labels = np.repeat(np.arange(len(self.members)), self.num_batches)
        order = _rng(self.seed, 0, epoch).permutation(labels) if self.repeat else labels
        rank = np.zeros_like(order)
        for k in range(len(self.members)):
          at = order == k
          rank[at] = np.arange(at.sum())
        cached = self._epoch_cache[epoch] = (order, rank)
      return cached

  def _weighted(self, step: int) -> tuple[int, int]:
    """(bucket, how many batches that bucket gave before `step`) under bucket weights."""
    block, j = divmod(step, _WEIGHTED_BLOCK)
    draws = lambda b: _rng(self.seed, 2, b).choice(len(self.weights), _WEIGHTED_BLOCK,
                                                   p=self.weights)
    with self._lock:
      while len(self._block_counts) <= block:
        b = len(self._block_counts)
        prev = self._block_counts[-1] if b else np.zeros(len(self.weights), np.int64)
        before = np.bincount(draws(b - 1), minlength=len(self.weights)) if b else 0
        self._block_counts.append(prev + before)
      counts = self._block_counts[block]
    choices = draws(block)
    k = int(choices[j])
    return k, int(counts[k] + np.count_nonzero(choices[:j] == k))

  def __getitem__(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(bucket id, records int64 (B,), mask bool (B,)) of global batch `step`."""
    if not 0 <= step < len(self):
      raise IndexError(f"step {step} is past the end ({len(self)} batches)")
    b = self.batch_size
    if self.weights is not None:
      k, c = self._weighted(step)
      epoch, c = divmod(c, int(self.num_batches[k]))
    else:
      epoch, j = divmod(step, self.steps_per_epoch)
      order, rank = self._epoch(epoch)
      k, c = int(order[j]), int(rank[j])
    records = self._perm(k, epoch)[c * b:(c + 1) * b]
    if self.repeat:
      mask = np.ones(b, bool)
    else:
      mask = np.arange(c * b, (c + 1) * b) < len(self.members[k])
    return k, records.astype(np.int64), mask


def collate(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks records: arrays -> (b, ...) arrays, text -> object arrays (b,) of str."""
  out = {}
  for key in records[0]:
    values = [r[key] for r in records]
    if isinstance(values[0], (bytes, str)):
      arr = np.empty(len(values), object)
      arr[:] = [tfds_shapes.as_str(v) for v in values]
      out[key] = arr
    else:
      out[key] = np.stack([np.asarray(v) for v in values])
  return out


class _LoadBatch:
  """step -> this process's rows of global batch `step` (picklable for Grain workers)."""

  def __init__(self, source, plan: BatchPlan, process_index: int, process_count: int):
    self.source, self.plan = source, plan
    b = plan.batch_size // process_count
    self.rows = slice(process_index * b, (process_index + 1) * b)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    _, records, mask = self.plan[step]
    records, mask = records[self.rows], mask[self.rows]
    idx = [int(i) for i in records]
    fetched = (self.source.__getitems__(idx) if hasattr(self.source, "__getitems__")
               else [self.source[i] for i in idx])
    batch = collate(fetched)
    batch["index"] = records.astype(np.int32)
    batch["mask"] = mask
    return batch


class BatchIterator:
  """Iterator of batch dicts with `get_state()` / `set_state()` (JSON-able dicts).

  After `set_state(s)`, the next batch is the one that followed when `s` was taken.
  """

  def __init__(self, source, plan: BatchPlan, process_index: int, process_count: int,
               prefetch: int = 2, worker_count: int = 0):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    if plan.batch_size % process_count:
      raise ValueError(f"batch size {plan.batch_size} must be a multiple of the process count "
                       f"{process_count} (each process loads batch_size // process_count)")
    self.plan = plan
    self._load = _LoadBatch(source, plan, process_index, process_count)
    self._prefetch = prefetch
    self._worker_count = worker_count
    self._step = 0
    self._it = None

  def _start(self):
    ds = grain.MapDataset.range(self._step, len(self.plan)).map(self._load)
    if self._prefetch > 0:
      opts = grain.ReadOptions(num_threads=self._prefetch, prefetch_buffer_size=self._prefetch)
    else:
      opts = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    it_ds = ds.to_iter_dataset(opts)
    if self._worker_count > 0:
      # Grain's workers read absl flags; outside an absl app (notebooks, tests) none were
      # parsed, so take their defaults.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._worker_count, per_worker_buffer_size=max(1, self._prefetch)))
    return iter(it_ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._start()
    batch = next(self._it)
    self._step += 1
    return batch

  @property
  def rows(self) -> slice:
    """This process's rows of every global batch."""
    return self._load.rows

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, "plan": self.plan.fingerprint()}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("plan") != self.plan.fingerprint():
      logging.warning("data iterator state was saved with different data or batch settings "
                      "(seed, batch size, bucket sizes or weights); continuing at step %d of "
                      "the new order", state["step"])
    self._step = int(state["step"])
    self._it = None


def make_loader(source, bucket_ids_R: np.ndarray, *, batch_size: int, seed: int,
                process_index: int = 0, process_count: int = 1, repeat: bool = True,
                weights: Sequence[float] | None = None, prefetch: int = 2,
                worker_count: int = 0) -> BatchIterator:
  """Batches of one bucket each from any random-access `source` (len, [i], __getitems__).

  batch_size is global; this process gets batch_size // process_count rows of each batch.
  weights: sampling probability per bucket id (training only); None samples by size.
  """
  plan = BatchPlan(bucket_ids_R, batch_size, seed, repeat, weights)
  return BatchIterator(source, plan, process_index, process_count, prefetch, worker_count)


def _select_buckets(all_buckets, ids_R, buckets) -> np.ndarray:
  """Bucket ids with records outside `buckets` ('17x32x32,...' or (T, H, W) list) set to -1."""
  if buckets is None:
    return ids_R
  wanted = config_check.parse_buckets(buckets) if isinstance(buckets, str) else buckets
  keep = []
  for b in wanted:
    if tuple(b) not in all_buckets:
      raise ValueError(f"bucket {tuple(b)} is not in this data set; it has "
                       f"{tfds_shapes.bucket_string(all_buckets)}")
    keep.append(all_buckets.index(tuple(b)))
  return np.where(np.isin(ids_R, keep), ids_R, -1)


def first_records(ids_R: np.ndarray, n: int) -> np.ndarray:
  """ids_R with only the first records of each bucket kept (the rest set to -1): `n` in
  all, shared over the buckets in proportion to their sizes. n = 0 keeps every record."""
  total = int((ids_R >= 0).sum())
  if n <= 0 or n >= total:
    return ids_R
  buckets = [int(k) for k in np.unique(ids_R) if k >= 0]
  quota = {k: int(n * (ids_R == k).sum() // total) for k in buckets}
  quota[max(buckets, key=lambda k: (ids_R == k).sum())] += n - sum(quota.values())
  out = np.full_like(ids_R, -1)
  for k in buckets:
    idx = np.flatnonzero(ids_R == k)[:quota[k]]
    out[idx] = k
  return out


def make_source_iterator(cfg, source, metadata, split: str = "train",
                         batch_size: int | None = None, process_index: int | None = None,
                         process_count: int | None = None, repeat: bool = True,
                         buckets=None) -> BatchIterator:
  """`make_iterator` for any bucketed source + its metadata (e.g. encoded latents).

  Records of buckets outside `buckets` are left out (they get id -1, which BatchPlan
  never draws: it only counts ids >= 0).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  all_buckets, ids_R = bucket_index(metadata, split)
  if len(ids_R) != len(source):
    raise ValueError(f"the bucket index lists {len(ids_R)} records but the {split!r} split "
                     f"has {len(source)}; rebuild the data set")
  ids_R = _select_buckets(all_buckets, ids_R, buckets)
  if split == "train":
    ids_R = first_records(ids_R, cfg.data.train_records)
  weights = config_check.parse_bucket_weights(cfg.data.bucket_weights, len(all_buckets))
  return make_loader(source, ids_R, batch_size=batch_size or cfg.data.batch_size,
                     seed=cfg.data.shuffle_seed, process_index=process_index,
                     process_count=process_count, repeat=repeat, weights=weights,
                     prefetch=cfg.data.prefetch, worker_count=cfg.data.worker_count)


def make_iterator(cfg, data_dir: str, split: str = "train", batch_size: int | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  repeat: bool = True, buckets=None) -> BatchIterator:
  """Batches of the config's built data set (ShapesWorld or video folder) under data_dir.

  batch_size: global (default config.data.batch_size); process_index/count default to
  jax.process_index()/process_count(); buckets: only these (T, H, W) buckets.
  """
  from sora_jax.data import build  # pylint: disable=g-import-not-at-top
  builder = build.source_builder(cfg, data_dir)
  return make_source_iterator(cfg, builder.as_data_source(split=split), builder.info.metadata,
                              split=split, batch_size=batch_size, process_index=process_index,
                              process_count=process_count, repeat=repeat, buckets=buckets)
