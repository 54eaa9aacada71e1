"""`--mode=data`: builds the config's data set under config.data.data_dir (or WORKDIR/data).

ShapesWorld (`data.name='shapes_world'`) or a folder of captioned videos
(`data.name='video_folder'`), as array_record TFDS data sets read without TensorFlow.
A data set that is already built is reused (its directory name spells the settings that
shape its content, so a changed config builds a new one). Prints clips per split and
bucket, the build time and where it lives.
"""
import json
import time

import numpy as np

from absl import logging
import tensorflow_datasets as tfds

from sora_jax import paths
from sora_jax.config_check import missing_step
from sora_jax.data import tfds_folder
from sora_jax.data import tfds_shapes


def make_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  """The (possibly not yet built) TFDS builder of config.data under data_dir."""
  d = cfg.data
  if d.name == "shapes_world":
    return tfds_shapes.ShapesWorld(config=tfds_shapes.config_from_cfg(d), data_dir=data_dir,
                                   workers=d.build_workers)
  if d.name == "video_folder":
    return tfds_folder.VideoFolder(config=tfds_folder.config_from_cfg(d), data_dir=data_dir,
                                   workers=d.build_workers)
  raise ValueError(f"data.name={d.name!r} has no builder; use 'shapes_world' or 'video_folder'")


def _older_folder_build(builder) -> tfds.core.DatasetBuilder | None:
  """The newest built video_folder data set of the same folder, buckets and fps, if any.

  A folder build's name fingerprints the files and captions, so adding a video after
  --mode=data names a data set that does not exist yet; training on the last build (with
  a warning) beats refusing to start.
  """
  name = builder.builder_config.name
  prefix = name[:name.rindex("_") + 1]
  candidates = [p for p in builder.data_path.parent.parent.glob(prefix + "*/" +
                                                                 str(builder.version))
                if (p / "dataset_info.json").exists()]
  if not candidates:
    return None
  newest = max(candidates, key=lambda p: (p / "dataset_info.json").stat().mtime)
  logging.warning("%s changed since its data set was built (files or captions differ); "
                  "using the build at %s; run --mode=data to rebuild",
                  builder.builder_config.video_dir, newest)
  return tfds.builder_from_directory(newest)


def source_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  """The built data set of config.data (for `as_data_source` and `info.metadata`)."""
  builder = make_builder(cfg, data_dir)
  if not builder.is_prepared() and cfg.data.name == "video_folder":
    builder = _older_folder_build(builder) or builder
  if not builder.is_prepared():
    raise missing_step(f"no built {cfg.data.name} data set at {builder.data_dir}", "data")
  return builder


def validation_examples(cfg, workdir: str, n: int, frames: int | None = None) -> list[dict]:
  """Up to n validation records (video uint8 THWC, prompt, spec dict), optionally of T=frames."""
  builder = source_builder(cfg, paths.data_dir(cfg, workdir))
  src = builder.as_data_source(split="validation")
  out = []
  for i in range(len(src)):
    r = src[i]
    if frames is not None and r["video"].shape[0] != frames:
      continue
    text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
    out.append({"video": np.asarray(r["video"]), "prompt": text(r["prompt"]),
                "spec": json.loads(text(r["spec"]) or "{}")})
    if len(out) >= n:
      break
  return out


def summary(builder) -> dict:
  """{split: {bucket 'TxHxW': clips}} of a built data set, from its bucket index."""
  meta = builder.info.metadata
  buckets = meta[tfds_shapes.BUCKETS]
  out = {}
  for split, runs in meta[tfds_shapes.BUCKET_RUNS].items():
    per = {}
    for k, count in runs:
      name = tfds_shapes.bucket_string([buckets[k]])
      per[name] = per.get(name, 0) + count
    out[split] = per
  return out


def run(cfg, workdir: str) -> None:
  data_dir = paths.data_dir(cfg, workdir)
  builder = make_builder(cfg, data_dir)
  t0 = time.time()
  if builder.is_prepared():
    print(f"[data] {builder.data_dir} is already built; reusing it", flush=True)
  else:
    logging.info("building %s at %s", cfg.data.name, builder.data_dir)
    # array_record writes local files only: a bucket's data set is built locally, then copied.
    with paths.local_dir(data_dir) as local:
      make_builder(cfg, local).download_and_prepare()
    builder = make_builder(cfg, data_dir)
  seconds = time.time() - t0
  counts = summary(builder)
  for split, per in counts.items():
    total = sum(per.values())
    buckets = ", ".join(f"{b}: {n}" for b, n in per.items())
    print(f"[data] {split}: {total} clips ({buckets})", flush=True)
  if cfg.data.name == "video_folder":
    extra = builder.info.metadata["summary"]
    print(f"[data] videos: {extra['used']} used, {extra['skipped']} skipped of "
          f"{extra['files']}", flush=True)
    for rel, why in extra["skipped_files"].items():
      print(f"[data]   skipped {rel}: {why}", flush=True)
  print(f"[data] {cfg.data.name} at {builder.data_dir} ({seconds:.1f} s)", flush=True)
  logging.info("data summary: %s", json.dumps(counts))
