"""scripts/profile_step.py and training/profiling.py: a traced train step, its XLA ops
summed by kind."""
import json
import os
import subprocess
import sys

from sora_jax.training import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = profiling.ROWS
STEP = "jit(train_step)/"
BLOCK = "jvp(WanDiT)/while/body/closed_call/blocks/"


def test_ops_are_put_in_the_row_their_op_name_says():
  cases = [
      ("ynn_fusion.1", "fusion", STEP + BLOCK + "ffn/fc1/dot_general", ROWS[0]),
      ("dot.76", "dot", STEP + "transpose(" + BLOCK + "ffn/fc2/transpose", ROWS[1]),
      ("dot_general.140", "dot", STEP + "transpose(" + BLOCK + "attn1/bhld,bhsd->bhls/dot_general",
       ROWS[2]),
      ("ynn_fusion.18", "fusion", STEP + BLOCK + "attn1/reduce_max", ROWS[2]),
      ("copy.807", "copy", "", ROWS[3]),
      ("transpose_copy_fusion", "fusion", STEP + BLOCK + "attn1/transpose", ROWS[3]),
      ("bitcast_dynamic-update-slice_fusion.2", "fusion",
       STEP + "jvp(WanDiT)/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice",
       ROWS[4]),
      ("multiply_tanh_fusion", "fusion", STEP + BLOCK + "ffn/gelu/tanh", ROWS[5]),
      ("add_fusion.9", "fusion", STEP + "add", ROWS[6]),  # outside jvp(): AdamW, EMA, loss
      ("pad_add_fusion.2", "fusion", STEP + "transpose(" + BLOCK + "attn1/add_any", ROWS[7]),
  ]
  for name, opcode, op_name, row in cases:
    assert profiling.classify(name, opcode, op_name) == row, (name, op_name)


def test_hlo_ops_reads_names_opcodes_and_op_names():
  text = """HloModule jit_step, entry_computation_layout={()->f32[]}
%body {
  %dot.1 = f32[4,4]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/dot_general"}
  ROOT %t = (f32[4,4]{1,0}) tuple(%dot.1)
}
ENTRY %main {
  %copy.3 = f32[4,4]{0,1} copy(%p), metadata={op_name="jit(step)/copy"}
  ROOT %fusion.2 = f32[] fusion(%copy.3), kind=kLoop, calls=%fused
}"""
  ops = profiling.hlo_ops(text)
  assert ops["dot.1"] == ("dot", "jit(step)/dot_general")
  assert ops["copy.3"] == ("copy", "jit(step)/copy")
  assert ops["fusion.2"] == ("fusion", "")


def test_profile_of_a_tiny_step_adds_up(tmp_path):
  out = tmp_path / "profile.json"
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "profile_step.py"),
         f"--config={ROOT}/configs/shapes_tiny.py", f"--out={out}", "--steps=1", "--warmup=1",
         "--config.dit.dim=32", "--config.dit.ffn_dim=64", "--config.dit.num_heads=2",
         "--config.dit.num_layers=2", "--config.text.max_length=8",
         "--config.benchmark.batch_size=4", "--config.benchmark.num_frames=9",
         "--config.benchmark.height=16", "--config.benchmark.width=16"]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["rows_ms_per_step"]
  assert list(rows) == list(ROWS)
  assert abs(sum(rows.values()) - report["op_ms_per_step"]) < 1e-6 * report["op_ms_per_step"]
  for row, ops in report["ops_ms_per_step"].items():  # every op in one row, summing to it
    assert abs(sum(ops.values()) - rows[row]) <= 1e-9 + 1e-6 * rows[row], row
  names = [n for ops in report["ops_ms_per_step"].values() for n in ops]
  assert len(names) == len(set(names)) > 10
  assert rows[ROWS[0]] > 0 and rows[ROWS[1]] > 0 and rows[ROWS[2]] > 0
  assert 0 < report["op_ms_per_step"] and 0 < report["wall_ms_per_step"]
