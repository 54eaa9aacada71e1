"""The entry point refuses bad input with one clear line, before building anything."""
import subprocess
import sys

import pytest

from sora_jax import config_check
from sora_jax.config_defaults import base_config


def _run(*args):
  return subprocess.run(
      [sys.executable, "-m", "sora_jax", "--config=configs/shapes_tiny.py", "--workdir=/tmp/sj_cli",
       *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expect", [
    (["--mode=dance"], "--mode=dance"),
    (["--config.train.nope=3"], "'nope'"),
    (["--config.train.num_steps=abc"], "num_steps"),
    (["--mode=sample", "--config.sample.num_frames=16"], "use 13 or 17"),
    (["--mode=sample", "--config.sample.task=dream"], "t2v"),
    (["--mode=sample", "--config.sample.height=30"], "height=30"),
    (["--mode=sample", "--config.sample.task=i2v"], "sample.image"),
    (["--config.data.buckets=17x32"], "FRAMESxHEIGHTxWIDTH"),
    (["--config.dit.attention=flashy"], "blockwise"),
    (["--mode=train", "--config.train.init_from=/no/such/run"], "train.init_from"),
    (["--mode=train_vae", "--config.vae_train.crop_size=10"], "crop_size=10"),
])
def test_bad_input_is_one_clear_line(args, expect):
  r = _run(*args)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("sora_jax: error:"), r.stderr
  assert expect in lines[0]


def test_demo_config_is_valid_for_every_mode():
  cfg = base_config()
  for mode in config_check.MODES:
    config_check.check(cfg, mode)


def test_latent_grid_error_names_the_fix():
  cfg = base_config()
  assert config_check.latent_grid_error(cfg, 17, 32, 48) is None
  assert "multiple of 8" in config_check.latent_grid_error(cfg, 17, 36, 32)
