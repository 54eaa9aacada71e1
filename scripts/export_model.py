"""Exports a trained workdir as a small self-contained sampling workdir (e.g. pretrained/shapes).

Keeps only what `--mode=sample` / `--mode=eval` read: the EMA weights of the VAE and
the DiT (or the DiT's raw weights with --nodit_ema; no optimizer state), the latent statistics, and a `config.py` that reproduces
the exact config the model was trained with (base config + every changed field).

  python scripts/export_model.py --config=configs/shapes_tiny.py --workdir=workdir/ship \
      --out=pretrained/shapes [--config.a.b=v ... the overrides used for training]
"""
from absl import app, flags
from ml_collections import config_flags
import jax
import orbax.checkpoint as ocp

from sora_jax import paths
from sora_jax.config_defaults import base_config
from sora_jax.training import checkpoint

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the model was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_OUT = flags.DEFINE_string("out", None, "Export directory.")
_DIT_EMA = flags.DEFINE_bool("dit_ema", True, "Export the DiT's EMA weights (else its raw weights, "
                             "better after short runs whose EMA still averages early models).")


# Sections that define the trained networks: written out in full, so a shipped model
# keeps loading when the project's defaults change later.
PINNED_SECTIONS = ("vae", "dit", "text", "diffusion")
# Paths of the training machine: written as comments (the record of how it was trained),
# not as settings, so the exported workdir never points at folders a fresh clone lacks.
MACHINE_PATHS = (("data", "data_dir"), ("train", "init_from"))


def config_source(cfg) -> str:
  """Python source of a config file equal to `cfg`: the base config, every field of the
  model-defining sections, and any other field that differs from the defaults."""
  base = base_config().to_dict()
  lines = []
  for section, values in cfg.to_dict().items():
    if isinstance(values, dict):
      for k, v in values.items():
        if (section, k) in MACHINE_PATHS:
          if v:
            lines.append(f"  # trained with cfg.{section}.{k} = {v!r} (a training-machine path)")
        elif section in PINNED_SECTIONS or base[section].get(k) != v:
          lines.append(f"  cfg.{section}.{k} = {v!r}")
    elif base.get(section) != values:
      lines.append(f"  cfg.{section} = {values!r}")
  body = "\n".join(lines) or "  pass"
  return f'''"""The config the shipped ShapesWorld model was trained with (written by scripts/export_model.py).

  python -m sora_jax --config=pretrained/shapes/config.py --workdir=pretrained/shapes \\
      --mode=sample --config.sample.output_dir=OUT --config.sample.prompt="a red circle moving left"
"""
from sora_jax.config_defaults import base_config


def get_config(arg=None):
  del arg
  cfg = base_config()
{body}
  return cfg
'''


def export_checkpoint(src: str, dst: str, use_ema: bool = True) -> int:
  params, step = checkpoint.load_params(src, use_ema=use_ema)
  if paths.path(dst).exists():
    paths.path(dst).rmtree()
  mngr = ocp.CheckpointManager(paths.path(dst))
  key = "ema" if use_ema else "params"
  mngr.save(step, args=ocp.args.StandardSave({key: jax.device_get(params)}))
  mngr.wait_until_finished()
  mngr.close()
  return step


def main(argv):
  del argv
  cfg, src, out = _CONFIG.value, _WORKDIR.value, _OUT.value
  out_dir = paths.path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  vae_step = export_checkpoint(paths.vae_checkpoints(src), paths.vae_checkpoints(out))
  dit_step = export_checkpoint(paths.dit_checkpoints(src), paths.dit_checkpoints(out),
                               _DIT_EMA.value)
  paths.copy_file(paths.latent_stats(src), paths.latent_stats(out))
  paths.write_bytes_atomic(paths.join(out, "config.py"), config_source(cfg).encode("utf-8"))
  size = sum(f.stat().length for f in paths.files(out_dir))
  print(f"exported VAE step {vae_step}, DiT step {dit_step} to {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir", "out"])
  app.run(main)
