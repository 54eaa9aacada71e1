"""Export a LoRA fine-tune as full weights: base (--config.weights) + the workdir's adapters.

  python scripts/export_lora_merged.py --config=configs/wan2_1_t2v_1_3b.py:lora \
    --workdir=/runs/wan13_lora --out=/runs/wan13_merged \
    --config.weights=/ckpt/Wan2.1-T2V-1.3B-Diffusers [--use_ema=false]

Writes OUT/transformer/ (merged safetensors in the base checkpoint's dtype + config.json),
symlinks the base's vae/, text_encoder/, tokenizer/, scheduler/ and copies
model_index.json: sample it with `--config.weights=OUT --config.train.lora_rank=0`, or
load it with diffusers' `WanPipeline.from_pretrained(OUT)`. Streams one tensor at a time,
so host memory stays at one tensor even for the 14B model.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sora_jax.config_check import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                           "The config the adapters were trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding the LoRA checkpoints.")
_OUT = flags.DEFINE_string("out", None, "Output folder (diffusers layout).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Merge the EMA adapters (else the raw ones).")


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Keep orbax's INFO lines out of the output.
  cfg = _CONFIG.value
  try:
    if cfg is None or not _WORKDIR.value or not _OUT.value:
      raise ConfigError("--config, --workdir and --out are required")
    if cfg.train.lora_rank < 1 or not cfg.weights:
      raise ConfigError("export needs the LoRA config (train.lora_rank > 0) and "
                        "--config.weights=BASE_FOLDER the adapters were trained on")
    from sora_jax.training import lora  # pylint: disable=g-import-not-at-top
    out = lora.export_merged(cfg, _WORKDIR.value, _OUT.value, use_ema=_USE_EMA.value)
  except (ConfigError, FileNotFoundError) as e:
    print(f"export_lora_merged: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {out} (sample with --config.weights={out} --config.train.lora_rank=0)")


if __name__ == "__main__":
  app.run(main)
