"""Sweeps sampler settings (guidance scale, solver, steps, schedule shift) for one model.

Each setting scores t2v ShapesWorld adherence on the same fresh prompts and seeds
(adherence.score_model), so the rows differ only in the sampler. Writes OUT.json and
prints one row per setting.

  python scripts/sampler_sweep.py --workdir=pretrained/shapes --num_prompts=32 \
      --cfg_scales=2,4,6 --solvers=euler --steps=30 --shifts=-1 --out=/tmp/sweep
"""
import itertools
import time

from absl import app, flags

from sora_jax import paths
from sora_jax.eval import adherence
from sora_jax.sampling.sample import VideoPipeline

_WORKDIR = flags.DEFINE_string("workdir", "pretrained/shapes", "Workdir with config.py.")
_CONFIG = flags.DEFINE_string("config", "", "Config file (default WORKDIR/config.py).")
_NUM = flags.DEFINE_integer("num_prompts", 32, "Prompts scored per setting.")
_CFGS = flags.DEFINE_list("cfg_scales", ["4"], "Guidance scales.")
_SOLVERS = flags.DEFINE_list("solvers", ["euler"], "Solvers (euler, heun).")
_STEPS = flags.DEFINE_list("steps", ["30"], "Sampling steps.")
_SHIFTS = flags.DEFINE_list("shifts", ["-1"], "Schedule shifts (<0: the training rule).")
_OUT = flags.DEFINE_string("out", "sampler_sweep", "Output path without extension.")



def main(argv):
  del argv
  cfg = paths.load_config(_CONFIG.value or paths.join(_WORKDIR.value, "config.py"))
  pipe = VideoPipeline(cfg, _WORKDIR.value)
  rows = []
  for scale, solver, steps, shift in itertools.product(_CFGS.value, _SOLVERS.value,
                                                       _STEPS.value, _SHIFTS.value):
    pipe.cfg.sample.shift = float(shift)
    t0 = time.time()
    r = adherence.score_model(pipe, _NUM.value, 17, 32, 32, steps=int(steps),
                              cfg_scale=float(scale), solver=solver, seed=0)
    row = {"cfg_scale": float(scale), "solver": solver, "steps": int(steps),
           "shift": float(shift), "seconds": time.time() - t0, "model": r["model"],
           "ground_truth_match": r["ground_truth"]["match"], "ratio": r["ratio"]}
    rows.append(row)
    m = r["model"]
    print(f"cfg {scale:>4} {solver:5} steps {steps:>3} shift {shift:>4}: match "
          f"{m['match']:.3f}  " + "  ".join(f"{k} {m[k]:.2f}" for k in
                                              ("color", "count", "shape", "size", "motion",
                                               "permanence", "background") if k in m),
          flush=True)
  paths.write_json(_OUT.value + ".json", {
      "workdir": _WORKDIR.value, "dit_step": int(pipe.step), "num_prompts": _NUM.value,
      "rows": rows})
  print(f"-> {_OUT.value}.json")


if __name__ == "__main__":
  app.run(main)
