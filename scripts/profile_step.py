"""Where a DiT train step's time goes: a `jax.profiler` trace of the real train step,
its XLA ops summed by kind.

  taskset -c 0 python scripts/profile_step.py --config=configs/dit_50m.py --out=profile.json

Builds the `--mode=benchmark` train step (`training/train.Trainer`, synthetic batch at the
config's `benchmark.*` shapes, donated state), runs `--warmup` steps, then traces
`--steps` steps. Each op event of the trace names its HLO instruction; the compiled
module's text gives that instruction's opcode and the `op_name` JAX recorded (the model
function and autodiff pass it came from), from which each op is put in one row:

  matmul: projections and MLP, forward     dots outside the attention, forward pass
  matmul: projections and MLP, backward    the same in the backward pass (`transpose(jvp`)
  attention: contractions and softmax      QK^T, PV, and the softmax's max / exp / divide
  copies and transposes                    copy / transpose ops and fusions
  layer scan: stacking and slicing         the scan loop, stacking saved activations,
                                           slicing per-layer weights and activations
  norms, modulation, RoPE, GELU            the model's named elementwise work
  outside the model: loss, optimizer, ...  the step's code around the model's forward and
                                           backward (noise, loss, clipping, AdamW, EMA)
  other elementwise and reductions         everything else (residual adds, bias and
                                           gradient sums, broadcasts)

Prints the table (ms per step and share of the traced op time) and writes `--out`
(JSON: per row and per HLO op, milliseconds per step). `--trace_dir` keeps the trace
(TensorBoard's profile plugin or Perfetto open it). CPU only is assumed for the op rows:
on an accelerator the same op names are device events the table also sums.
"""
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sora_jax  # noqa: E402,F401  (first: its host settings precede JAX's threads)
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax.models import text_encoder as text_lib  # noqa: E402
from sora_jax.training.profiling import ROWS, classify, hlo_ops, op_times  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dit_50m.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 2, "Traced train steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
_OUT = flags.DEFINE_string("out", "profile.json", "Where to write the JSON summary.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Keep the trace here (default: discard).")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from sora_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top
  from sora_jax.training import benchmark  # pylint: disable=g-import-not-at-top

  cfg = _CONFIG.value
  b = cfg.benchmark
  with cfg.unlocked():
    cfg.data.batch_size = b.batch_size
  latent = benchmark.latent_grid(cfg, b.num_frames, b.height, b.width)
  trainer = benchmark.benchmark_trainer(cfg, latent)
  batch = trainer.to_device(benchmark.synthetic_batch(cfg, b.batch_size, latent,
                                                      text_lib.context_length(cfg), seed=cfg.seed))
  compiled = trainer.compile_step(batch)
  extra = trainer.extra_step_args()
  state = trainer.init_state()
  print(f"[profile] batch {b.batch_size} x "
        f"{schedules.num_tokens(latent[:3], cfg.dit.patch_size)} tokens; "
        f"{_WARMUP.value} warm-up, {_STEPS.value} traced steps", flush=True)
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch, *extra)
    jax.block_until_ready(metrics)
  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="sora_jax_profile_")
  t0 = time.perf_counter()
  jax.profiler.start_trace(trace_dir)
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, *extra)
    jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  wall_ms = (time.perf_counter() - t0) * 1e3 / _STEPS.value
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise SystemExit(f"no trace written under {trace_dir}")

  hlo_text = compiled.as_text()
  ops = hlo_ops(hlo_text)
  module = hlo_text.split("\n", 1)[0].split()[1].rstrip(",")  # "HloModule jit_step, ..."
  times = op_times(paths[-1], module)
  if not times:
    raise SystemExit(f"the trace holds no op events of module {module}")
  per_op = {name: ns / 1e6 / _STEPS.value for name, ns in times.items()}
  rows = collections.defaultdict(float)
  per_row_ops = collections.defaultdict(dict)
  for name, ms in per_op.items():
    opcode, op_name = ops.get(name, ("?", ""))
    row = classify(name, opcode, op_name)
    rows[row] += ms
    per_row_ops[row][name] = ms
  total = sum(rows.values())
  print(f"\n{'row':50s} {'ms/step':>9s} {'share':>7s}")
  for row in ROWS:
    print(f"{row:50s} {rows[row]:9.1f} {100 * rows[row] / total:6.1f}%")
  print(f"{'all traced ops (threads summed)':50s} {total:9.1f}\n"
        f"{'wall time of a traced step':50s} {wall_ms:9.1f}")
  report = {"config_dit": {k: cfg.dit[k] for k in ("dim", "num_layers", "num_heads", "ffn_dim",
                                                    "attention", "scan_layers", "scan_unroll",
                                                    "remat_policy", "dtype")},
            "batch_size": b.batch_size, "latent_thwc": list(latent), "steps": _STEPS.value,
            "wall_ms_per_step": wall_ms, "op_ms_per_step": total,
            "rows_ms_per_step": {row: rows[row] for row in ROWS},
            "ops_ms_per_step": {row: dict(sorted(per_row_ops[row].items(),
                                                 key=lambda kv: -kv[1]))
                                for row in ROWS},
            "trace": paths[-1] if _TRACE_DIR.value else None}
  from sora_jax import paths as paths_lib  # pylint: disable=g-import-not-at-top
  paths_lib.write_json(_OUT.value, report)
  print(f"[profile] wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
