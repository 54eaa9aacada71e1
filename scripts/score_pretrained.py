"""Scores a sampling workdir's t2v prompt adherence on fresh ShapesWorld prompts.

Writes WORKDIR/adherence.json (the shipped model's recorded figure, re-checked by
tests/test_pretrained.py) and prints the model / ground-truth match rates.

  python scripts/score_pretrained.py --workdir=pretrained/shapes [--num_prompts=64]
"""
import time

from absl import app, flags

from sora_jax import paths
from sora_jax.eval import adherence
from sora_jax.sampling.sample import VideoPipeline

_WORKDIR = flags.DEFINE_string("workdir", "pretrained/shapes", "Workdir with config.py.")
_NUM = flags.DEFINE_integer("num_prompts", 64, "Prompts scored.")
_STEPS = flags.DEFINE_integer("steps", 30, "Sampling steps.")
_CFG = flags.DEFINE_float("cfg_scale", 4.0, "Guidance scale.")
_OUT = flags.DEFINE_string("out", "", "Output JSON (default WORKDIR/adherence.json).")



def main(argv):
  del argv
  cfg = paths.load_config(paths.join(_WORKDIR.value, "config.py"))
  t0 = time.time()
  pipe = VideoPipeline(cfg, _WORKDIR.value)
  result = adherence.score_model(pipe, _NUM.value, 17, 32, 32, steps=_STEPS.value,
                                 cfg_scale=_CFG.value, seed=0)
  result["dit_step"] = int(pipe.step)
  result["seconds"] = time.time() - t0
  out = _OUT.value or paths.join(_WORKDIR.value, "adherence.json")
  paths.write_json(out, result)
  print(f"model match {result['model']['match']:.3f}  VAE round trip "
        f"{result['vae_ceiling']['match']:.3f}  ground truth "
        f"{result['ground_truth']['match']:.3f}  ratio {result['ratio']}  -> {out}")


if __name__ == "__main__":
  app.run(main)
