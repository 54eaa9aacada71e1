"""Adherence vs training time: scores every DiT checkpoint of a training workdir.

For each checkpoint in WORKDIR/checkpoints (EMA weights by default) it samples the same
fresh ShapesWorld prompts as t2v and scores them with the detector, beside the VAE
round-trip and ground-truth ceilings. Wall time per step comes from WORKDIR/metrics.jsonl.
Writes OUT.json and OUT.png (match and per-attribute rates against training minutes).

  python scripts/adherence_curve.py --config=configs/shapes_tiny.py --workdir=workdir/ship \
      --num_prompts=32 --out=workdir/ship/adherence_curve
"""
import io
import json

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from sora_jax import paths
from sora_jax.eval import adherence
from sora_jax.sampling.sample import VideoPipeline
from sora_jax.training import checkpoint, metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the workdir was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM = flags.DEFINE_integer("num_prompts", 32, "Prompts scored per checkpoint.")
_STEPS = flags.DEFINE_integer("steps", 30, "Sampling steps.")
_CFG = flags.DEFINE_float("cfg_scale", 4.0, "Guidance scale.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Frames of each sample (1+4k).")
_HEIGHT = flags.DEFINE_integer("height", 32, "Sample height.")
_WIDTH = flags.DEFINE_integer("width", 32, "Sample width.")
_EMA = flags.DEFINE_bool("ema", True, "Score the EMA weights (else the raw ones).")
_EVERY = flags.DEFINE_integer("every", 0, "Score only checkpoints whose step is a multiple of "
                              "this (and the newest); 0 scores all.")
_CONTINUES = flags.DEFINE_string(
    "continues", "", "The curve JSON of the run this one was warm-started from "
    "(train.init_from): its rows come first and this run's steps and minutes count on from "
    "its last row, so the curve covers the whole training history.")
_OUT = flags.DEFINE_string("out", "", "Output path without extension (default WORKDIR/adherence_curve).")


def _elapsed_by_step(workdir: str) -> dict:
  """{step: training seconds} of the DiT run (mode 'train') from metrics.jsonl."""
  path = paths.join(workdir, "metrics.jsonl")
  rows = metrics.read_jsonl(path) if paths.path(path).exists() else []
  return metrics.training_seconds(rows, "train")


def _earlier_rows(continues: str) -> list[dict]:
  """The rows of the curve JSON `continues` (each with its stage; [] for '')."""
  if not continues:
    return []
  earlier = json.loads(paths.read_text(continues))
  return [{**r, "stage": r.get("stage", 0)} for r in earlier["rows"]]


def _write(out: str, record: dict) -> None:
  """OUT.json (`record`) and OUT.png (its curve); `out` may be on a bucket."""
  paths.write_json(out + ".json", record)
  paths.write_bytes_atomic(out + ".png", _plot(record["rows"]))


def _minutes(step: int, elapsed: dict):
  """Training minutes at `step`, interpolated between logged steps (None if unknown)."""
  if not elapsed:
    return None
  s = np.array(sorted(elapsed))
  return float(np.interp(step, s, [elapsed[k] for k in s])) / 60.0


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  ckpt_dir = paths.dit_checkpoints(workdir)
  steps = checkpoint.all_steps(ckpt_dir)
  if not steps:
    raise SystemExit(f"no DiT checkpoints in {ckpt_dir}")
  if _EVERY.value > 0:
    steps = [s for s in steps if s % _EVERY.value == 0 or s == steps[-1]]
  elapsed = _elapsed_by_step(workdir)
  pipe = None
  rows, step0, minutes0 = _earlier_rows(_CONTINUES.value), 0, 0.0
  if rows:
    step0, minutes0 = rows[-1]["step"], rows[-1]["minutes"] or 0.0
  stage = rows[-1]["stage"] + 1 if rows else 0
  for step in steps:
    params, _ = checkpoint.load_params(ckpt_dir, _EMA.value, step=step)
    if pipe is None:
      pipe = VideoPipeline(cfg, workdir, use_ema=True, dit_params=params)
    pipe.dit_params, pipe.step = params, step
    r = adherence.score_model(pipe, _NUM.value, _FRAMES.value, _HEIGHT.value, _WIDTH.value,
                              steps=_STEPS.value,
                              cfg_scale=_CFG.value, seed=0)
    minutes = _minutes(step, elapsed)
    row = {"step": step0 + step, "stage": stage, "stage_step": step,
           "minutes": None if minutes is None else minutes0 + minutes, "model": r["model"],
           "vae_ceiling": r["vae_ceiling"], "ground_truth": r["ground_truth"],
           "ratio": r["ratio"]}
    rows.append(row)
    print(f"step {row['step']:6d}  {row['minutes'] or 0:6.1f} min  match {r['model']['match']:.3f} "
          f"(VAE round trip {r['vae_ceiling']['match']:.3f}, ground truth "
          f"{r['ground_truth']['match']:.3f})  colour {r['model']['color']:.2f} shape "
          f"{r['model']['shape']:.2f} motion {r['model']['motion']:.2f}", flush=True)
  out = _OUT.value or paths.join(workdir, "adherence_curve")
  _write(out, {"workdir": workdir, "continues": _CONTINUES.value, "ema": _EMA.value,
               "num_prompts": _NUM.value, "sample_steps": _STEPS.value, "cfg_scale": _CFG.value,
               "rows": rows})
  print(f"wrote {out}.json and {out}.png")


def _plot(rows) -> bytes:
  """The curve of `rows` as PNG bytes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x = [r["minutes"] if r["minutes"] is not None else r["step"] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, style in (("match", "-o"), ("color", "--"), ("shape", "--"), ("motion", "--")):
    ax.plot(x, [r["model"][key] for r in rows], style, label=f"model {key}")
  ax.plot(x, [r["vae_ceiling"]["match"] for r in rows], ":", label="VAE round-trip match")
  for prev, r, xr in zip(rows, rows[1:], x[:-1]):  # a warm start (--continues) begins a stage
    if r.get("stage", 0) != prev.get("stage", 0):
      ax.axvline(xr, color="grey", lw=0.8, alpha=0.6)
  ax.set_xlabel("DiT training minutes" if rows[0]["minutes"] is not None else "step")
  ax.set_ylabel("rate")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  return buf.getvalue()


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
