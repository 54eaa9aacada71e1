"""Planning table: parameters, FLOPs and per-device memory of the large DiT configs.

For each config x clip size x hardware, picks the cheapest mesh that fits a training step
(sora_jax/parallel/planning.py says how memory is counted and which mesh is "cheapest")
and rewrites the table in docs/scaling.md between its `plan:begin` / `plan:end` markers:

  .venv/bin/python scripts/plan.py                 # rewrite docs/scaling.md
  .venv/bin/python scripts/plan.py --print         # print the table only

Runs on CPU in seconds: everything comes from jax.eval_shape and analytic counts.
"""
import argparse
import importlib.util
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sora_jax.parallel import planning  # noqa: E402  pylint: disable=g-import-not-at-top

CONFIGS = ("configs/dit_1_3b.py", "configs/dit_14b.py")
DOC = os.path.join(ROOT, "docs", "scaling.md")
MFU = 0.4  # Assumed model-FLOPs utilisation for the step-time column.


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("plan_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _gb(x: float) -> str:
  return f"{x / 1e9:.1f}"


def table() -> str:
  """The markdown table (one row per config x clip x hardware)."""
  head = ("| model | clip | tokens/clip | hardware | mesh (data, fsdp, sequence, tensor) | "
          "attention | global batch | PFLOP/step | GB/device: state + gathered + activations "
          "= total (of HBM) | step s @40% MFU |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for path in CONFIGS:
    cfg = load_config(path)
    leaves = planning.param_leaves(cfg)
    params = sum(math.prod(s) for s, _ in leaves)
    model = f"{os.path.basename(path)} ({params / 1e9:.2f}B)"
    for clip in planning.CLIPS.values():
      tokens = planning.tokens_per_clip(cfg, clip)
      fwd = planning.forward_flops(cfg, clip)
      for hw in planning.HARDWARE.values():
        choice = planning.choose_mesh(cfg, clip, hw, leaves=leaves)
        if choice is None:
          lines.append(f"| {model} | {clip.name} | {tokens:,} | {hw.name} | does not fit "
                       "| | | | | |")
          continue
        mesh, mem, impl = choice
        batch = mesh["data"] * mesh["fsdp"]
        flops = 3 * fwd * batch  # Model FLOPs: forward + backward (remat not counted).
        step_s = flops / (hw.chips * hw.bf16_tflops * 1e12 * MFU)
        shape = ", ".join(str(mesh[a]) for a in planning.AXES)
        lines.append(
            f"| {model} | {clip.name} | {tokens:,} | {hw.name} | ({shape}) | {impl} | {batch} | "
            f"{flops / 1e15:,.0f} | {_gb(mem['state'])} + {_gb(mem['gathered'])} + "
            f"{_gb(mem['activations'])} = {_gb(mem['total'])} ({hw.hbm_gb:.0f}) | {step_s:,.1f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--print", action="store_true", help="print instead of rewriting the doc")
  args = parser.parse_args()
  text = table()
  if args.print:
    print(text)
    return
  with open(DOC) as f:
    doc = f.read()
  pattern = re.compile(r"(<!-- plan:begin -->\n).*?(<!-- plan:end -->)", re.S)
  if not pattern.search(doc):
    raise SystemExit(f"{DOC} has no <!-- plan:begin --> ... <!-- plan:end --> section")
  with open(DOC, "w") as f:
    f.write(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))
  print(f"wrote the planning table to {DOC}")


if __name__ == "__main__":
  main()
