"""Train / held-out gap of a trained DiT: does it memorise the clips it trained on?

Scores a workdir's DiT (EMA weights, newest checkpoint) with the trainer's held-out
evaluation (velocity MSE at train.eval_timesteps with fixed noise, no conditioning frames;
sora_jax.training.train.make_eval_loss) on three sets of records of one bucket of an
encoded data set: the first --seen records (the clips it trained on), the records after
them (clips it never saw, from the same distribution) and the validation split. A
'seen' figure far below the other two means the model memorises its clips and more
distinct clips would help; equal figures mean the data is not what limits it.

  python scripts/heldout_gap.py --config=pretrained/shapes/config.py \
      --workdir=pretrained/shapes --config.data.data_dir=DATA --config.data.num_train=40000 \
      --seen=4000 --bucket=5x8x8 --out=gap.json

DATA holds the encoded set (--mode=encode); the model's own latent statistics
(WORKDIR/latent_stats.json) normalise it. Writes OUT (JSON) and prints a table.
"""
import json

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sora_jax import paths
from sora_jax.config_check import eval_timesteps
from sora_jax.data import encode, pipeline
from sora_jax.training import checkpoint, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the workdir was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with DiT checkpoints and latent stats.")
_SEEN = flags.DEFINE_integer("seen", None, "How many leading records of --bucket the model "
                             "trained on.")
_BUCKET = flags.DEFINE_string("bucket", "5x8x8", "The bucket scored, as the encoded set names it: latent "
                              "frames x height x width (5x8x8 holds the 17x32x32 clips of the demo VAE).")
_CLIPS = flags.DEFINE_integer("clips", 128, "Clips per set (the same clips at any data.batch_size).")
_OBJECTS = flags.DEFINE_integer("objects", 0, "Score only clips of this many objects (their "
                                "ShapesWorld spec's); 0 = every clip. --seen still counts "
                                "every record of the bucket.")
_OUT = flags.DEFINE_string("out", "", "Output JSON ('' = print only).")


def _num_objects(source, ids_R):
  """(R,) the object count of each record with ids_R >= 0 (its spec), -1 elsewhere."""
  out = np.full(len(ids_R), -1)
  for i in np.flatnonzero(ids_R >= 0):
    spec = source[int(i)]["spec"]
    out[i] = len(json.loads(spec.decode() if isinstance(spec, bytes) else str(spec))["objects"])
  return out


def main(argv):
  del argv
  cfg = _CONFIG.value
  bucket = tuple(int(n) for n in _BUCKET.value.split("x"))
  trainer = train.make_trainer(cfg, _WORKDIR.value)
  ema, step = checkpoint.load_params(paths.dit_checkpoints(_WORKDIR.value), use_ema=True)
  sets = {}
  for split in ("train", "validation"):
    source, metadata = encode.data_source(cfg, _WORKDIR.value, split)
    buckets, ids_R = pipeline.bucket_index(metadata, split)
    if bucket not in buckets:
      raise app.UsageError(f"--bucket={_BUCKET.value} is not in the data set ({buckets})")
    ids_R = np.where(ids_R == buckets.index(bucket), ids_R, -1)
    rank_R = np.cumsum(ids_R >= 0) - 1  # before any --objects filter: what --seen counts
    if _OBJECTS.value:
      ids_R = np.where(_num_objects(source, ids_R) == _OBJECTS.value, ids_R, -1)
    parts = ((("validation", np.ones(len(ids_R), bool)),) if split == "validation" else
             (("seen", rank_R < _SEEN.value), ("unseen", rank_R >= _SEEN.value)))
    for name, keep_R in parts:
      if not np.any(keep_R & (ids_R >= 0)):  # e.g. --seen=0, or no clip of --objects
        print(f"{name:>10}: no clips", flush=True)
        continue
      sets[name] = encode.batches_in_fixed_order(cfg, source, np.where(keep_R, ids_R, -1),
                                                 _CLIPS.value)
  ts = eval_timesteps(cfg)
  result = {"workdir": _WORKDIR.value, "step": int(step), "bucket": _BUCKET.value,
            "seen_records": _SEEN.value, "objects": _OBJECTS.value or "all",
            "timesteps": list(ts)}
  for name, batches in sets.items():
    losses = trainer.eval_losses({"ema": ema}, trainer.eval_to_device(batches))
    result[name] = {"clips": int(sum(b["mask"].sum() for b in batches)),
                    "eval_loss": float(np.mean(losses)),
                    "by_t": {f"{t:g}": float(v) for t, v in zip(ts, losses)}}
    print(f"{name:>10} ({result[name]['clips']} clips): eval_loss {np.mean(losses):.4f}  " +
          "  ".join(f"t={t:g}: {v:.4f}" for t, v in zip(ts, losses)), flush=True)
  if _OUT.value:
    paths.write_json(_OUT.value, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir", "seen"])
  app.run(main)
