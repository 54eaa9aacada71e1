"""`--mode=benchmark` reports consistent figures, and its FLOP count is XLA's."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.models import dit as dit_lib
from sora_jax.training import benchmark


def _tiny():
  cfg = base_config()
  cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.num_heads, cfg.dit.num_layers = 32, 64, 2, 2
  cfg.text.dim, cfg.text.max_length = 16, 8
  b = cfg.benchmark
  b.batch_size, b.num_frames, b.height, b.width = 8, 9, 16, 16
  b.steps, b.warmup, b.matmul_size = 2, 1, 256
  return cfg


def test_benchmark_writes_consistent_report(tmp_path):
  cfg = _tiny()
  benchmark.run(cfg, str(tmp_path))
  with open(os.path.join(tmp_path, "benchmark.json")) as f:
    report = json.load(f)
  t, h, w, _ = report["latent_thwc"]
  fwd = dit_lib.count_flops(cfg, t, h, w, cfg.text.max_length)
  tokens = report["tokens_per_sample"] * report["batch_size"]
  assert report["forward_flops_per_sample"] == fwd
  assert report["train"]["model_flops"] == 3 * fwd * 8
  assert report["sample"]["model_flops"] == 2 * fwd * 8  # CFG: conditional + unconditional.
  for name in ("train", "sample"):
    r = report[name]
    assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["compile_s"] > 0
    assert r["tokens_per_s"] == pytest.approx(tokens / r["median_s"])
    assert r["memory"]["peak_estimate"] > 0 and r["mfu"] > 0
    # MFU's denominator is the idle peak measured once before the steps, nothing per step.
    achieved = r["model_flops"] / r["median_s"] / report["devices"]
    assert r["mfu"] == pytest.approx(achieved / report["peak_flops_per_device"]["float32"])
    assert "probe_times_s" not in r and r["mfu_cpu_time"] > 0
  assert report["train"]["memory"]["temp"] > report["sample"]["memory"]["temp"]
  assert report["peak_flops_per_device"]["float32"] > 0


def test_bad_benchmark_size_is_a_clear_error(tmp_path):
  cfg = _tiny()
  cfg.benchmark.height = 20  # Not a multiple of VAE x patch.
  with pytest.raises(ValueError, match="height=20 is not a multiple"):
    benchmark.run(cfg, str(tmp_path))


def test_analytic_flops_match_xla_cost_analysis():
  """MFU's numerator: count_flops is within 5% of what XLA counts for the forward pass."""
  cfg = _tiny()
  cfg.dit.dim, cfg.dit.ffn_dim = 128, 512
  cfg.dit.scan_layers = False  # XLA's cost analysis counts a scanned body only once.
  model = dit_lib.dit_from_config(cfg)
  x = jnp.zeros((2, 3, 8, 8, cfg.vae.z_dim))
  args = (x, jnp.zeros((2,)), jnp.zeros((2, 8, cfg.text.dim)), jnp.ones((2, 8), bool))
  params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  fwd = jax.jit(lambda p: model.apply({"params": p}, *args))
  xla = fwd.lower(params).compile().cost_analysis()["flops"]
  assert xla == pytest.approx(2 * dit_lib.count_flops(cfg, 3, 8, 8, 8), rel=0.05)
