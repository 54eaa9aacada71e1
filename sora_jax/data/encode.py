"""`--mode=encode`: a video data set -> VAE latents + text embeddings, as a TFDS data set.

Each record keeps the VAE posterior (`latent_mean`, `latent_std`, float32 t×h×w×C), so the
DiT trainer draws a fresh latent sample every epoch, and the text encoder's token states
of both the detailed `caption` and the short `prompt` (float16 L×D + bool mask), so
neither encoder runs while training. Texts longer than `text.max_length` tokens lose their
end; encode counts them per split and field (`info.json` "truncated") and warns with the
length that would keep them whole.

Resumable: records are encoded in chunks (never straddling two buckets) staged as .npz
files written atomically; a rerun skips the chunks already there, and the final
array_record data set is assembled from the staged chunks in the source's record order
(bucket-major, as the source). Process p encodes chunks i ≡ p (mod process_count).
"""
import io
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from sora_jax import paths
from sora_jax.config_check import ConfigError, missing_step
from sora_jax.data import build as build_lib
from sora_jax.data import shapes_world
from sora_jax.data import tfds_shapes
from sora_jax.models import text_encoder as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import weights
from sora_jax.training import checkpoint

CHUNK = 64  # Records per staged chunk (the unit of resumption).
# With data.binding_negatives, per text field: the states of that text with the two objects'
# names exchanged (shapes_world.swap_subjects), their mask, and whether the clip has one
# (else the states are the text's own).
NEGATIVE_KEYS = {field: (f"{field}_neg_emb", f"{field}_neg_mask", f"{field}_neg_valid")
                 for field in ("caption", "prompt")}
INFO = "info.json"
NULL_TEXT = "null_text.npz"


def latent_features(z_dim: int, text_len: int, text_dim: int, negatives: bool = False,
                    motion_labels: bool = False) -> tfds.features.FeaturesDict:
  lat = tfds.features.Tensor(shape=(None, None, None, z_dim), dtype=np.float32, encoding="zlib")
  emb = tfds.features.Tensor(shape=(text_len, text_dim), dtype=np.float16)
  mask = tfds.features.Tensor(shape=(text_len,), dtype=np.bool_)
  features = {
      "latent_mean": lat, "latent_std": lat,
      "caption_emb": emb, "caption_mask": mask, "prompt_emb": emb, "prompt_mask": mask,
      "prompt": tfds.features.Text(), "caption": tfds.features.Text(),
      "spec": tfds.features.Text()}
  if negatives:
    for e, m, v in NEGATIVE_KEYS.values():
      features |= {e: emb, m: mask, v: tfds.features.Scalar(dtype=np.bool_)}
  if motion_labels:
    features["motion_labels"] = tfds.features.Tensor(
        shape=(None, None, None, len(shapes_world.MOTION_CLASSES)), dtype=np.float16,
        encoding="zlib")
  return tfds.features.FeaturesDict(features)


class EncodedLatents(tfds_shapes.ArrayRecordBuilder):
  """Latents + text embeddings assembled from the staged chunks of `--mode=encode`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "VAE posterior + caption/prompt token states."}

  def __init__(self, *, stage_dir: str, info: dict, **kwargs):
    self._stage_dir = stage_dir
    self._meta = info
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    i = self._meta
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=latent_features(i["z_dim"], i["text_len"], i["text_dim"],
                                 i.get("binding_negatives", False),
                                 i.get("motion_labels", False)),
        metadata=tfds.core.MetadataDict())

  def _download_and_prepare(self, dl_manager, download_config=None):
    self.info.metadata[tfds_shapes.BUCKETS] = self._meta["latent_shapes"]
    self.info.metadata[tfds_shapes.BUCKET_RUNS] = self._meta["bucket_runs"]
    super()._download_and_prepare(dl_manager, download_config)

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager
    out = {}
    for split, n in self._meta["num_records"].items():
      if n:
        out[split] = [self._shard_fn(split, n)]
    return out

  def _shard_fn(self, split: str, n: int):
    runs = self._meta["bucket_runs"][split]
    def generate():
      for c, (lo, _) in enumerate(chunks(runs)):
        rows = _load_npz(_chunk_path(self._stage_dir, split, c))
        for j in range(len(rows["prompt"])):
          yield lo + j, {k: (str(v[j]) if v.dtype.kind == "U" else v[j])
                         for k, v in rows.items()}
    del n
    return generate


def chunks(bucket_runs: list) -> list[tuple[int, int]]:
  """[(first record, end record)] of CHUNK records at most, within one bucket run each."""
  out, start = [], 0
  for _, count in bucket_runs:
    out += [(lo, min(lo + CHUNK, start + count)) for lo in range(start, start + count, CHUNK)]
    start += count
  return out


def _chunk_path(stage_dir: str, split: str, c: int) -> epath.Path:
  return paths.path(stage_dir) / split / f"{c:06d}.npz"


def _load_npz(path) -> dict[str, np.ndarray]:
  """Every array of an .npz (local or in a bucket)."""
  with np.load(io.BytesIO(paths.path(path).read_bytes())) as z:
    return {k: z[k] for k in z.files}


def _builder(cfg, workdir: str, info: dict | None = None) -> EncodedLatents:
  info = info or read_info(cfg, workdir)
  root = paths.latents_dir(cfg, workdir)
  return EncodedLatents(stage_dir=paths.join(root, "staging"), info=info,
                        data_dir=paths.join(root, "tfds"))


def read_info(cfg, workdir: str) -> dict:
  path = paths.path(paths.latents_dir(cfg, workdir)) / INFO
  if not path.exists():
    raise missing_step(f"no encoded data set ({path} is missing)", "encode")
  return json.loads(path.read_text())


def null_text(cfg, workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(emb_LD float32, mask_L bool): the text encoder's encoding of the empty prompt."""
  z = _load_npz(paths.join(paths.latents_dir(cfg, workdir), NULL_TEXT))
  return z["emb"].astype(np.float32), z["mask"].astype(bool)


def data_source(cfg, workdir: str, split: str):
  """Random-access source over the encoded split + its bucket metadata."""
  builder = _builder(cfg, workdir)
  return builder.as_data_source(split=split), builder.info.metadata


def make_latent_iterator(cfg, workdir: str, split: str = "train", **kw):
  """Bucketed, shuffled, process-sharded, checkpointable batches of encoded records."""
  from sora_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source, metadata = data_source(cfg, workdir, split)
  return pipeline.make_source_iterator(cfg, source, metadata, split=split, **kw)


EVAL_SEED = 20261206  # Order of the fixed evaluation batches: the same for every run.


def fixed_batches(cfg, workdir: str, split: str, num_clips: int) -> list[dict]:
  """Batches (of data.batch_size; this process's rows) holding the first `num_clips`
  records of `split` in one fixed order, rows past them masked out (batch['mask']).

  The clips depend on neither `seed` nor `data.shuffle_seed` nor `data.bucket_weights`
  nor `data.batch_size`, so runs with different recipes evaluate on the same records.
  Training batches come from the records the run trains on (data.train_records). Fewer
  clips when the split has fewer records.
  """
  from sora_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source, metadata = data_source(cfg, workdir, split)
  _, ids_R = pipeline.bucket_index(metadata, split)
  if split == "train":
    ids_R = pipeline.first_records(ids_R, cfg.data.train_records)
  return batches_in_fixed_order(cfg, source, ids_R, num_clips)


def batches_in_fixed_order(cfg, source, ids_R, num_clips: int) -> list[dict]:
  """Batches (of data.batch_size; this process's rows) holding the first `num_clips`
  records of `source` with a bucket id >= 0 in ids_R, bucket by bucket in storage order;
  batch['mask'] is False on padding rows and on rows past `num_clips` (fewer clips when
  there are fewer records)."""
  from sora_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  b = cfg.data.batch_size
  it = pipeline.make_loader(source, ids_R, batch_size=b, seed=EVAL_SEED,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), repeat=False, prefetch=0)
  out, seen = [], 0
  for step in range(len(it.plan)):
    if seen >= num_clips:
      break
    _, _, valid = it.plan[step]  # Global rows of the batch that are real records.
    keep = valid & (seen + np.cumsum(valid) <= num_clips)
    seen += int(keep.sum())
    batch = next(it)
    batch["mask"] = keep[it.rows]
    out.append(batch)
  return out


def _encode_chunk(vae_apply, text, records: list[dict], negatives: str = "",
                  label_cell: tuple[int, int] | None = None) -> dict:
  """uint8 clips + texts of one bucket -> arrays of one staged chunk (with `negatives`, a
  shapes_world.swap_subjects swap, also the NEGATIVE_KEYS of each text field; with
  `label_cell`, the VAE's (temporal, spatial) factors, also each clip's 'motion_labels':
  shapes_world.motion_label_map on the latent grid)."""
  videos = np.stack([r["video"] for r in records]).astype(np.float32) / 127.5 - 1.0
  means, stds = [], []
  for i in range(0, len(videos), 16):  # bounded memory per encoder call
    m, logvar = vae_apply(jnp.asarray(videos[i:i + 16]))
    means.append(np.asarray(m))
    stds.append(np.asarray(jnp.exp(0.5 * logvar)))
  cap_emb, cap_mask = text([tfds_shapes.as_str(r["caption"]) for r in records])
  pr_emb, pr_mask = text([tfds_shapes.as_str(r["prompt"]) for r in records])
  out = {"latent_mean": np.concatenate(means), "latent_std": np.concatenate(stds),
         "caption_emb": np.asarray(cap_emb, np.float16), "caption_mask": np.asarray(cap_mask),
         "prompt_emb": np.asarray(pr_emb, np.float16), "prompt_mask": np.asarray(pr_mask),
         "prompt": np.array([tfds_shapes.as_str(r["prompt"]) for r in records]),
         "caption": np.array([tfds_shapes.as_str(r["caption"]) for r in records]),
         "spec": np.array([tfds_shapes.as_str(r["spec"]) for r in records])}
  if negatives:
    specs = [json.loads(s) for s in out["spec"]]
    for field, (e, m, v) in NEGATIVE_KEYS.items():
      swapped = [shapes_world.swap_subjects(str(t), sp, negatives)
                 for t, sp in zip(out[field], specs)]
      neg_emb, neg_mask = text([str(t) if n is None else n for t, n in zip(out[field], swapped)])
      out |= {e: np.asarray(neg_emb, np.float16), m: np.asarray(neg_mask),
              v: np.array([n is not None for n in swapped])}
  if label_cell:
    out["motion_labels"] = np.stack([
        shapes_world.motion_label_map(np.asarray(r["video"]), json.loads(s), *label_cell)
        for r, s in zip(records, out["spec"])]).astype(np.float16)
  return out


def _atomic_savez(path: epath.Path, arrays: dict) -> None:
  """Writes `arrays` so that a chunk that exists is complete (paths.write_bytes_atomic)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  paths.write_bytes_atomic(path, buf.getvalue())


def latent_statistics(stage_dir: str, num_chunks: int) -> dict:
  """Per-channel mean/std of sampled latents z ~ N(mean, std²) over the train split."""
  s1 = s2 = None
  count = 0
  for c in range(num_chunks):
    z = _load_npz(_chunk_path(stage_dir, "train", c))
    m, s = z["latent_mean"].astype(np.float64), z["latent_std"].astype(np.float64)
    axes = tuple(range(m.ndim - 1))
    e1, e2 = m.sum(axes), (m ** 2 + s ** 2).sum(axes)
    s1 = e1 if s1 is None else s1 + e1
    s2 = e2 if s2 is None else s2 + e2
    count += int(np.prod(m.shape[:-1]))
  mean = s1 / count
  std = np.sqrt(np.maximum(s2 / count - mean ** 2, 1e-12))
  return {"mean": mean.tolist(), "std": std.tolist(), "count": count}


def truncation(stage_dir: str, runs: dict, text) -> dict:
  """Per split and field ('caption', 'prompt'): texts the encoder cut at text.max_length."""
  out = {}
  for split, split_runs in runs.items():
    texts = {"caption": [], "prompt": []}
    for c in range(len(chunks(split_runs))):
      z = _load_npz(_chunk_path(stage_dir, split, c))
      for field, got in texts.items():
        got.extend(str(t) for t in z[field])
    out[split] = {field: text.truncation_report(got, f"{split} {field}s")
                  for field, got in texts.items()}
  return out


def run(cfg, workdir: str) -> None:
  t0 = time.time()
  root = paths.path(paths.latents_dir(cfg, workdir))
  stage = root / "staging"
  builder_dir = root / "tfds"
  if (root / INFO).exists() and builder_dir.is_dir():
    info = read_info(cfg, workdir)
    if info.get("complete"):
      print(f"[encode] {root} is complete; delete it to re-encode", flush=True)
      return
  source_builder = build_lib.source_builder(cfg, paths.data_dir(cfg, workdir))
  meta = source_builder.info.metadata
  vae = vae_lib.vae_from_config(cfg)
  if cfg.weights:
    # Open weights (Wan 2.1): their VAE and text encoder. Clips go through the chunked
    # encoder one at a time: a whole 81-frame 480p clip would not fit in device memory.
    params, vae_step = weights.load_vae(cfg), 0
    text = weights.load_text_encoder(cfg)

    def vae_apply(x):
      enc = [vae_lib.encode_chunked(vae, {"params": params}, x[i:i + 1])[:2]
             for i in range(x.shape[0])]
      return tuple(jnp.concatenate(parts) for parts in zip(*enc))
  else:
    params, vae_step = checkpoint.load_params(paths.vae_checkpoints(workdir), use_ema=True,
                                              written_by="train_vae")
    vae_apply = jax.jit(lambda x: vae.apply({"params": params}, x, method=vae.encode))
    text = text_lib.load_text_encoder(cfg)
  null_emb, null_mask = text([""])
  root.mkdir(parents=True, exist_ok=True)
  _atomic_savez(root / NULL_TEXT, {"emb": np.asarray(null_emb[0]),
                                   "mask": np.asarray(null_mask[0])})

  settings = stage / "settings.json"  # What the staged chunks hold (checked on resume).
  negatives = cfg.data.binding_swap if cfg.data.binding_negatives else ""
  want = {"binding_negatives": bool(negatives), "binding_swap": negatives}
  label_cell = None
  if cfg.data.motion_labels:
    want["motion_labels"] = True
    label_cell = (vae.temporal_factor, vae.spatial_factor)
  if settings.exists() and json.loads(settings.read_text()) != want:
    raise ConfigError(f"{stage} holds chunks encoded with {settings.read_text()}, not {want}; "
                      "set data.binding_negatives / binding_swap / motion_labels as then, or "
                      "delete the staging folder")
  if jax.process_index() == 0:
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(want))
  pid, nproc = jax.process_index(), jax.process_count()
  runs = meta[tfds_shapes.BUCKET_RUNS]
  num_records = {}
  for split in tfds_shapes.SPLITS:
    if split not in runs:
      continue
    src = source_builder.as_data_source(split=split)
    num_records[split] = len(src)
    split_chunks = chunks(runs[split])
    for c, (lo, hi) in enumerate(split_chunks):
      path = _chunk_path(stage, split, c)
      if c % nproc != pid or path.exists():
        continue
      _atomic_savez(path, _encode_chunk(vae_apply, text, [src[i] for i in range(lo, hi)],
                                        negatives, label_cell))
      print(f"[encode] {split} chunk {c + 1}/{len(split_chunks)} ({time.time() - t0:.0f}s)",
            flush=True)
  if nproc > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("encode_staged")
  if pid != 0:
    return
  latent_shapes = [list(vae.latent_shape(*b)[:3]) for b in meta[tfds_shapes.BUCKETS]]
  truncated = truncation(stage, {s: runs[s] for s in num_records}, text)
  for split in truncated.values():
    for report in split.values():
      warning = report.pop("warning")
      if warning:
        print(f"[encode] warning: {warning}", flush=True)
  info = {"source": source_builder.info.full_name, "vae_step": int(vae_step),
          "z_dim": int(cfg.vae.z_dim), "text_len": int(null_emb.shape[1]),
          "text_dim": int(null_emb.shape[2]), "latent_shapes": latent_shapes,
          "bucket_runs": runs, "num_records": num_records,
          "text_encoder": cfg.text.encoder, "truncated": truncated, **want}
  (root / INFO).write_text(json.dumps(info))
  stats = latent_statistics(stage, len(chunks(runs["train"])))
  paths.path(paths.latent_stats(workdir)).write_text(json.dumps(stats))
  if builder_dir.is_dir():
    builder_dir.rmtree()
  with paths.local_dir(builder_dir) as local:  # array_record writes local files only
    EncodedLatents(stage_dir=str(stage), info=info, data_dir=local).download_and_prepare()
  info["complete"] = True
  (root / INFO).write_text(json.dumps(info))
  stage.rmtree()
  logging.info("encode done")
  print(f"[encode] wrote {sum(num_records.values())} records to {builder_dir} in "
        f"{time.time() - t0:.0f}s; latent std per channel "
        f"{np.round(stats['std'], 3).tolist()}", flush=True)
