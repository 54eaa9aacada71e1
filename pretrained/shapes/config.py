"""The config the shipped ShapesWorld model was trained with (written by scripts/export_model.py).

  python -m sora_jax --config=pretrained/shapes/config.py --workdir=pretrained/shapes \
      --mode=sample --config.sample.output_dir=OUT --config.sample.prompt="a red circle moving left"
"""
from sora_jax.config_defaults import base_config


def get_config(arg=None):
  del arg
  cfg = base_config()
  pass
  return cfg
