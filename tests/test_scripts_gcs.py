"""The scripts under scripts/ read and write a bucket workdir's files like local ones:
adherence_curve's metrics.jsonl / --continues reading and its JSON + PNG writer, and a
workdir config.py that score_pretrained / sampler_sweep load (paths.load_config), and
tpu_plan's rows file. Against
conftest.py's GCS emulator; nothing may land under a local `./gs:` folder.
"""
import importlib.util
import json
import os

from absl import app, flags  # noqa: F401  (defines its flags before _script clears them)
from ml_collections import config_flags  # noqa: F401
import pytest

from sora_jax import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gs://test-bucket/scripts"


def _script(name: str):
  """scripts/NAME.py as a module. The scripts define the same absl flags (--config,
  --workdir, --out) and one process may define each only once (test_export.py imports
  export_model), so the script defines its flags into an emptied registry; the flags
  defined before come back after, over any of its own of the same name. The tests call
  its functions, not its flags."""
  spec = importlib.util.spec_from_file_location(f"script_{name}",
                                                os.path.join(ROOT, "scripts", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  registry = flags.FLAGS._flags()  # pylint: disable=protected-access
  saved = dict(registry)
  registry.clear()
  try:
    spec.loader.exec_module(module)
  finally:
    registry.update(saved)
  return module


def test_adherence_curve_reads_and_writes_a_bucket_workdir(gcs, tmp_path, no_local_gs):
  del gcs
  curve = _script("adherence_curve")
  run = f"{BUCKET}/run"
  # Two run segments (elapsed_s restarts at a resume) and rows of other modes.
  logged = [{"mode": "train_vae", "step": 10, "elapsed_s": 99.0},
            {"mode": "train", "step": 10, "elapsed_s": 60.0},
            {"mode": "train", "step": 20, "elapsed_s": 120.0, "loss": 0.5},
            {"mode": "train", "step": 30, "elapsed_s": 30.0}]
  paths.write_bytes_atomic(f"{run}/metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in logged).encode())
  assert curve._elapsed_by_step(run) == {10: 60.0, 20: 120.0, 30: 150.0}
  assert curve._elapsed_by_step(f"{BUCKET}/no_metrics") == {}

  earlier = {"rows": [{"step": 100, "minutes": 5.0, "model": {"match": 0.25}},
                      {"step": 200, "stage": 1, "minutes": 9.0, "model": {"match": 0.5}}]}
  paths.write_bytes_atomic(f"{BUCKET}/earlier.json", json.dumps(earlier).encode())
  assert curve._earlier_rows(f"{BUCKET}/earlier.json") == [
      {"step": 100, "stage": 0, "minutes": 5.0, "model": {"match": 0.25}},
      {"step": 200, "stage": 1, "minutes": 9.0, "model": {"match": 0.5}}]
  assert curve._earlier_rows("") == []

  # OUT.json holds the record, as a local OUT.json does; OUT.png is a PNG.
  scores = {"match": 0.5, "color": 0.75, "shape": 1.0, "motion": 0.25}
  record = {"workdir": run, "continues": "", "ema": True, "num_prompts": 2, "rows": [
      {"step": s, "stage": 0, "stage_step": s, "minutes": m, "model": scores,
       "vae_ceiling": {"match": 1.0}, "ground_truth": {"match": 1.0}, "ratio": 0.5}
      for s, m in ((10, 1.0), (20, 2.0))]}
  curve._write(f"{run}/out/curve", record)
  curve._write(str(tmp_path / "curve"), record)
  paths.forget_listings(f"{run}/out")
  assert sorted(p.name for p in paths.path(f"{run}/out").iterdir()) == ["curve.json",
                                                                        "curve.png"]
  assert json.loads(paths.read_text(f"{run}/out/curve.json")) == record
  assert (paths.path(f"{run}/out/curve.json").read_bytes()
          == (tmp_path / "curve.json").read_bytes())
  assert paths.path(f"{run}/out/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  no_local_gs()


def test_a_bucket_workdirs_config_loads_like_the_local_one(gcs, no_local_gs):
  """paths.load_config (score_pretrained, sampler_sweep) on a bucket copy of the shipped
  config.py gives what Python's own import of the local file gives."""
  del gcs
  local = os.path.join(ROOT, "pretrained", "shapes", "config.py")
  spec = importlib.util.spec_from_file_location("shipped_config_reference", local)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  want = module.get_config().to_dict()
  paths.copy_file(local, f"{BUCKET}/shipped/config.py")
  assert paths.load_config(f"{BUCKET}/shipped/config.py").to_dict() == want
  assert paths.load_config(local).to_dict() == want
  no_local_gs()


def test_tpu_plan_appends_rows_to_a_bucket_file(gcs, monkeypatch, no_local_gs):
  """scripts/tpu_plan.py --import_run adds a compile.json's train row to a rows file on a
  bucket, keeping the rows already there (append on gs:// would overwrite them), with the
  MFU estimate from its est_step_seconds."""
  del gcs
  import sys  # pylint: disable=g-import-not-at-top
  plan = _script("tpu_plan")
  train = {"bytes_per_chip": {"arguments": 1e10, "outputs": 1e10, "temps": 3e10, "total": 4e10},
           "hbm_bytes_per_chip": 102e9, "fits": True, "flops_per_chip": 6.5e15,
           "collectives": {"all-gather": 3}, "custom_calls": {}, "compile_seconds": 1.0,
           "collective_bytes": 1e11, "hbm_bytes_accessed": 1e12, "est_step_seconds": 20.0}
  report = {"topology": "v5:4x4x8", "chips": 128,
            "mesh": {"data": 2, "fsdp": 16, "sequence": 4, "tensor": 1}, "train": train}
  paths.write_json(f"{BUCKET}/c/compile.json", report)
  rows = f"{BUCKET}/rows.jsonl"
  arg = f"compile:{BUCKET}/c/compile.json:configs/dit_14b.py:720p-5s:v5p-256"
  for _ in range(2):
    monkeypatch.setattr(sys, "argv", ["tpu_plan.py", f"--rows={rows}", f"--import_run={arg}"])
    plan.main()
  got = [json.loads(line) for line in paths.read_text(rows).splitlines()]
  assert len(got) == 2 and got[0] == got[1]
  row = got[0]
  assert row["mesh"] == report["mesh"] and row["compiled"]["total"] == 4e10
  assert row["est_step_seconds"] == 20.0
  assert row["est_mfu"] == pytest.approx(row["model_flops"] / (128 * 459e12 * 20.0), rel=1e-3)
