"""Caption reliance of a DiT per noise level: x0 error with the right / another / no prompt.

A ratio (shuffled / right) of 1.0 means the DiT ignores its caption at that t; see
sora_jax/eval/caption_reliance.py. Writes OUT (default WORKDIR/caption_reliance.json).

  python scripts/caption_reliance.py --config=configs/shapes_tiny.py --workdir=W \
      [--data_workdir=W_WITH_ENCODED_DATA] [--step=N] [--config.data.data_dir=...]
"""
import json

from absl import app, flags
from ml_collections import config_flags

from sora_jax import paths
from sora_jax.eval import caption_reliance

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the workdir was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with DiT checkpoints.")
_DATA = flags.DEFINE_string("data_workdir", "", "Workdir whose encoded data / latent stats to "
                            "use (default: --workdir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_NUM = flags.DEFINE_integer("num_clips", 48, "Validation clips.")
_EMA = flags.DEFINE_bool("ema", True, "Measure the EMA weights (else the raw ones).")
_OUT = flags.DEFINE_string("out", "", "Output JSON (default WORKDIR/caption_reliance.json).")


def main(argv):
  del argv
  r = caption_reliance.for_workdir(_CONFIG.value, _WORKDIR.value, _DATA.value or None,
                                   _NUM.value, use_ema=_EMA.value, step=_STEP.value)
  for t, e in r["by_t"].items():
    print(f"t={t:>5}: x0 MSE right {e['right']:.4f}  shuffled {e['shuffled']:.4f}  "
          f"null {e['null']:.4f}  ratio {e['ratio']:.3f}")
  out = _OUT.value or paths.join(_WORKDIR.value, "caption_reliance.json")
  paths.write_bytes_atomic(out, json.dumps(r, indent=1).encode())
  print(f"step {r['step']}, {r['num_clips']} clips -> {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
