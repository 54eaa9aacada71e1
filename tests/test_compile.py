"""--mode=compile: the real train and sample steps compiled for TPU topologies on a CPU host.

A tiny DiT (bf16, splash attention, 256 tokens a clip, 128 text tokens so splash tiles
both attentions) is compiled by libtpu for v5e:2x2 (4 chips) and v5:2x2x2 (8 chips, v5p)
in the layouts a user reaches for; each layout must show its own collectives and kernels
in the TPU HLO. Compiles are CPU-heavy (~10 s each), so each layout compiles once per
module and the assertions share it.
"""
import importlib.util
import json
import re

import pytest

from sora_jax import config_check
from sora_jax.config_defaults import base_config
from sora_jax.models import dit as dit_lib

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="needs libtpu: pip install -e .[tpu]")

SPLASH = ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv")


def tiny(**mesh):
  cfg = base_config()
  cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.num_heads, cfg.dit.num_layers = 64, 128, 4, 2
  cfg.dit.dtype = "bfloat16"
  cfg.dit.attention = "splash"
  cfg.dit.remat_policy = "full"
  cfg.text.max_length = 128
  cfg.data.buckets = "13x64x64"  # 4 x 8 x 8 = 256 latent tokens: whole splash tiles
  cfg.data.batch_size = 4
  cfg.sample.num_frames, cfg.sample.height, cfg.sample.width = 13, 64, 64
  cfg.sample.batch_size, cfg.sample.steps = 2, 2
  cfg.mesh.data = 1
  for k, v in mesh.items():
    cfg.mesh[k] = v
  return cfg


def _kernels(custom_calls: dict) -> set:
  return {k.split(":", 1)[1] for k in custom_calls if k.startswith("tpu_custom_call:")}


def _ops(hlo: str, kind: str, op_name: str) -> int:
  """Collectives of `kind` that JAX emitted from `op_name` (e.g. the ring's ppermute)."""
  return sum(1 for line in hlo.splitlines()
             if re.search(rf"\s{kind}(-start)?\(", line) and op_name in line)


@pytest.fixture(scope="module")
def fsdp_tensor(tmp_path_factory):
  """v5e:2x2, fsdp 2 x tensor 2, through the mode itself; the chip's HBM is set between
  the two programs' totals, so the train step must be refused and the sample step kept."""
  from sora_jax.parallel import aot, chips
  workdir = tmp_path_factory.mktemp("compile") / "not" / "made"  # aot.run makes it
  cfg = tiny(fsdp=2, tensor=2)
  cfg.compile.topology = "v5e:2x2"
  real = chips.CHIPS["v5e"]
  chips.CHIPS["v5e"] = chips.Chip(real.name, 12 * 2 ** 20, real.bf16_flops, real.hbm_bytes_per_s,
                                  real.ici_bytes_per_s, real.source)
  try:
    with pytest.raises(config_check.ConfigError) as err:
      aot.run(cfg, str(workdir))
  finally:
    chips.CHIPS["v5e"] = real
  with open(workdir / "compile.json") as f:
    return json.load(f), str(err.value), real


@pytest.fixture(scope="module")
def layouts():
  """(mesh, Compiled) per sequence-parallel / multi-slice layout, compiled once."""
  from sora_jax.parallel import aot
  out = {}
  for name, topology, slices, mesh, attention, programs in (
      ("ulysses", "v5:2x2x2", 1, dict(data=2, fsdp=2, sequence=2), "ulysses", ("train", "sample")),
      ("ring", "v5:2x2x2", 1, dict(data=2, fsdp=2, sequence=2), "ring", ("train",)),
      ("multislice", "v5e:2x2", 2, dict(data=-1, fsdp=2, dcn_data=2), "splash", ("train",))):
    cfg = tiny(**mesh)
    cfg.dit.attention = attention
    cfg.data.batch_size = 8
    m = aot.build_mesh(cfg, aot.topology_devices(topology, slices))
    out[name] = (m, {p: aot.compile_program(cfg, m, p, None) for p in programs})
  return out


def test_compile_json_has_the_contract_fields_and_refuses_what_does_not_fit(fsdp_tensor):
  report, error, chip = fsdp_tensor
  assert set(report) == {"topology", "chips", "mesh", "train", "sample"}
  assert report["topology"] == "v5e:2x2" and report["chips"] == 4
  assert report["mesh"] == {"data": 1, "fsdp": 2, "sequence": 1, "tensor": 2}
  for name in ("train", "sample"):
    r = report[name]
    assert set(r) == {"bytes_per_chip", "hbm_bytes_per_chip", "fits", "flops_per_chip",
                      "collectives", "custom_calls", "compile_seconds", "collective_bytes",
                      "hbm_bytes_accessed", "est_step_seconds"}
    # The estimate is the floor of its three terms at the chip's published rates.
    assert r["est_step_seconds"] == pytest.approx(max(
        r["flops_per_chip"] / chip.bf16_flops, r["hbm_bytes_accessed"] / chip.hbm_bytes_per_s,
        r["collective_bytes"] / chip.ici_bytes_per_s))
    assert r["collective_bytes"] > 0 and r["hbm_bytes_accessed"] > 0
    b = r["bytes_per_chip"]
    assert set(b) == {"arguments", "outputs", "temps", "total"}
    assert 0 < b["total"] <= b["arguments"] + b["outputs"] + b["temps"]
    assert b["total"] < chip.hbm_bytes  # both fit a real v5e chip by far
    assert r["flops_per_chip"] > 0 and r["compile_seconds"] > 0
  # The train step holds the optimizer state and activations: more than sampling.
  assert report["train"]["bytes_per_chip"]["total"] > report["sample"]["bytes_per_chip"]["total"]
  assert report["train"]["fits"] is False and report["sample"]["fits"] is True
  assert error.startswith("the train step does not fit v5e:2x2:") and "\n" not in error


def test_flops_count_every_layer(fsdp_tensor):
  """The HLO's matmul FLOPs weighted by loop trips agree with the analytic count (XLA's own
  cost_analysis sees the scanned layers once)."""
  cfg = tiny()
  # Splash (a Pallas kernel, opaque to the compiler) is added analytically; the other
  # matmuls are the HLO's.
  fwd = dit_lib.count_flops(cfg, 4, 16, 16, cfg.text.max_length)
  per_chip = 4 * fwd * cfg.data.batch_size / 4  # forward, backward (2x), remat's recompute
  ratio = fsdp_tensor[0]["train"]["flops_per_chip"] / per_chip
  assert 0.9 < ratio < 1.1, ratio


def test_fsdp_gathers_parameters_and_scatters_gradients(fsdp_tensor):
  train = fsdp_tensor[0]["train"]["collectives"]
  assert train.get("all-gather", 0) > 0 and train.get("reduce-scatter", 0) > 0


def test_splash_runs_with_heads_over_tensor(fsdp_tensor):
  report = fsdp_tensor[0]
  train, sample = _kernels(report["train"]["custom_calls"]), _kernels(report["sample"]["custom_calls"])
  for kernel in SPLASH:  # forward, dq and dkv, for self- and cross-attention
    assert any(k.startswith(kernel) for k in train), (kernel, train)
  assert any(k.startswith("splash_mha_fwd") for k in sample) and not any(
      "dq" in k or "dkv" in k for k in sample)


def test_ulysses_exchanges_tokens_for_heads_all_to_all(layouts):
  _, programs = layouts["ulysses"]
  for name, compiled in programs.items():
    assert _ops(compiled.hlo, "all-to-all", "all_to_all") >= 2, name
    assert any(k.startswith("splash_mha_fwd") for k in _kernels(compiled.report["custom_calls"]))


def test_ring_passes_kv_around_the_sequence_axis(layouts):
  _, programs = layouts["ring"]
  hlo = programs["train"].hlo
  assert _ops(hlo, "collective-permute", "ppermute") >= 2
  assert _ops(hlo, "all-to-all", "all_to_all") == 0


def test_multislice_the_gradient_reduction_is_what_crosses_slices(layouts):
  from sora_jax.parallel import aot
  mesh, programs = layouts["multislice"]
  rows = [{d.slice_index for d in row.flat} for row in mesh.devices]  # along 'data'
  assert all(len(r) == 1 for r in rows) and set().union(*rows) == {0, 1}
  dcn = aot.cross_slice_transfers(programs["train"].hlo)
  # The gradient all-reduce; besides it only the per-sample time conditioning is gathered
  # across data (a few KB), never parameters or the token activations.
  assert dcn.get("all-reduce", 0) > 0 and set(dcn) <= {"all-reduce", "all-gather"}, dcn
  # Each chip reduces its fsdp shard of the gradients with the other slice (the compiler
  # reduces some in bf16, before their cast back to the f32 parameters).
  shard = dit_lib.count_params(tiny()) / mesh.shape["fsdp"]
  assert 2 * 0.9 * shard <= dcn["all-reduce"] <= 4 * 1.1 * shard, (dcn, shard)
  assert dcn.get("all-gather", 0) < dcn["all-reduce"] / 10, dcn


def test_a_missing_libtpu_is_one_line_naming_the_extra(monkeypatch):
  from sora_jax.parallel import aot
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(config_check.ConfigError, match=r"pip install -e \.\[tpu\]"):
    aot.topology_devices("v5e:2x2")


def test_search_candidates_divide_evenly_and_come_cheapest_first():
  from sora_jax.parallel import planning
  cfg = tiny()
  clip = planning.Clip("train", 13, 64, 64)
  full = planning.candidate_layouts(cfg, clip, 8, hbm_bytes=1e12, batch=8)
  tokens = planning.tokens_per_clip(cfg, clip)
  for r in full:
    m = r["mesh"]
    assert m["data"] * m["fsdp"] * m["sequence"] * m["tensor"] == 8
    assert 8 % (m["data"] * m["fsdp"]) == 0 and tokens % m["sequence"] == 0
    assert cfg.dit.num_heads % m["tensor"] == 0
    ulysses = (cfg.dit.num_heads // m["tensor"]) % m["sequence"] == 0  # heads split again
    assert r["attention"] == ("splash" if m["sequence"] == 1 else
                              "ulysses" if ulysses else "ring")
  costs = [r["est_collective_bytes"] for r in full]
  assert costs == sorted(costs) and len(full) > 10
  # A memory budget keeps only layouts the planner thinks fit.
  budget = sorted(r["est_bytes"] for r in full)[len(full) // 2]
  tight = planning.candidate_layouts(cfg, clip, 8, hbm_bytes=budget, batch=8)
  assert 0 < len(tight) < len(full) and all(r["est_bytes"] <= budget for r in tight)


def test_a_program_the_compiler_refuses_for_memory_is_reported_with_its_figures():
  from sora_jax.parallel import aot, chips
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (39.77G) exceeds available HBM (31.25G).")
  r = aot.out_of_memory_report(msg, chips.CHIPS["v6e"], 12.0)
  assert r["fits"] is False and r["bytes_per_chip"]["temps"] == int(39.77 * 2 ** 30)
  assert r["hbm_bytes_per_chip"] == int(31.25 * 2 ** 30) == chips.CHIPS["v6e"].hbm_bytes


def test_search_keeps_what_the_compiler_confirms(monkeypatch):
  """The search's bookkeeping, with the compiler stubbed: the planner's first layout is
  refused for HBM, the second fits; both are saved as they finish, only the second fits."""
  import jax
  from sora_jax.parallel import aot, chips, layout_search
  calls, saved = [], []

  def fake_compile(cfg, mesh, program, chip):
    calls.append(dict(mesh.shape))
    if len(calls) == 1:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total "
                                       "memory required for HLO temporaries (20.00G) exceeds "
                                       "available HBM (15.75G).")
    report = {"bytes_per_chip": {"arguments": 1, "outputs": 1, "temps": 2, "total": 3},
              "fits": True, "flops_per_chip": 1e9, "collectives": {"all-reduce": 1},
              "compile_seconds": 1.0}
    return aot.Compiled(report, 1000, 1e6, "")

  monkeypatch.setattr(aot, "compile_program", fake_compile)
  cfg = tiny()
  cfg.compile.search_top = 2
  rows = layout_search.search(cfg, jax.devices()[:8], chips.CHIPS["v5e"], log=lambda s: None,
                              save=lambda r: saved.append(len(r)))
  assert saved == [1, 2] and len(calls) == 2
  assert rows[0]["fits"] is False and rows[0]["bytes"]["temps"] == 20 * 2 ** 30
  assert rows[1]["fits"] is True and rows[1]["collective_bytes"] == 1000
  assert [dict(r["mesh"]) for r in rows] == calls  # the planner's order, compiled as proposed
