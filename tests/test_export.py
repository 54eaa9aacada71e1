"""scripts/export_model.py: the exported config.py rebuilds the training config exactly."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import export_model  # noqa: E402  pylint: disable=g-import-not-at-top

from sora_jax.config_defaults import base_config  # noqa: E402


def test_config_source_round_trips_and_pins_the_model():
  cfg = base_config()
  cfg.data.num_train = 8000
  cfg.vae.z_dim = 12
  cfg.dit.num_layers = 3
  src = export_model.config_source(cfg)
  ns = {}
  exec(src, ns)  # pylint: disable=exec-used
  assert ns["get_config"]().to_dict() == cfg.to_dict()
  # Model sections are written in full (survive later default changes); others only if changed.
  assert "cfg.vae.base_dim = 16" in src and "cfg.dit.dim = 192" in src
  assert "cfg.data.num_train = 8000" in src and "cfg.data.batch_size" not in src


def test_training_machine_paths_become_comments():
  cfg = base_config()
  cfg.data.data_dir = "workdir/exp/data"
  cfg.train.init_from = "pretrained/shapes"
  src = export_model.config_source(cfg)
  assert "# trained with cfg.data.data_dir = 'workdir/exp/data'" in src
  assert "# trained with cfg.train.init_from = 'pretrained/shapes'" in src
  ns = {}
  exec(src, ns)  # pylint: disable=exec-used
  got = ns["get_config"]()
  assert got.data.data_dir == "" and got.train.init_from == ""
