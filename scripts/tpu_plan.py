"""The planner against the TPU compiler: docs/scaling.md's table of real TPU compiles.

For each config x clip x TPU slice, the planner (sora_jax/parallel/planning.py) picks the
cheapest mesh that it thinks fits; that train step (bf16, remat 'full', splash or its
Ulysses/ring form, one clip per data x fsdp group) is then compiled by libtpu for the
slice (`--mode=compile`'s code, sora_jax/parallel/aot.py) and both memories are written
side by side, with the compiler's FLOPs and collectives and an estimated step time / MFU
from the chip figures in sora_jax/parallel/chips.py.

Compiles are CPU-heavy (minutes each for a 14B model on 128 chips): rows are appended to
a JSON-lines file as they finish, and a rerun skips rows already there, so the table can
be built over several sessions. Run one at a time on one core:

  taskset -c 0 python scripts/tpu_plan.py --rows=out/tpu_rows.jsonl            # compile
  python scripts/tpu_plan.py --rows=out/tpu_rows.jsonl --write                   # docs table
"""
import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from sora_jax import paths  # noqa: E402  pylint: disable=g-import-not-at-top
from sora_jax.parallel import aot, chips, planning  # noqa: E402  pylint: disable=g-import-not-at-top

CONFIGS = ("configs/dit_1_3b.py", "configs/dit_14b.py", "configs/wan2_1_t2v_14b.py")
CLIPS = ("480p-5s", "720p-5s")
# name -> (libtpu topology, chip key): v5p-N has N/2 chips, v6e-N has N.
SLICES = {"v5p-64": ("v5:4x4x2", "v5p"), "v5p-256": ("v5:4x4x8", "v5p"),
          "v6e-64": ("v6e:8x8", "v6e"), "v6e-256": ("v6e:16x16", "v6e")}
DOC = os.path.join(ROOT, "docs", "scaling.md")
LAYOUT_FROM = {"planner": "planner", "compile": "the config's mesh", "search": "compile.search"}


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("plan_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def row_key(config: str, clip: str, slice_name: str) -> str:
  return f"{os.path.basename(config)}|{clip}|{slice_name}"


def compile_row(path: str, clip_name: str, slice_name: str) -> dict:
  """The planner's mesh for one row, compiled; the row's figures."""
  cfg = load_config(path)
  clip = planning.CLIPS[clip_name]
  topology, chip_key = SLICES[slice_name]
  chip = chips.CHIPS[chip_key]
  devices = aot.topology_devices(topology)
  hw = planning.Hardware(slice_name, len(devices), chip.hbm_bytes / 1e9,
                         chip.bf16_flops / 1e12, 4, "splash")
  leaves = planning.param_leaves(cfg)
  row = {"key": row_key(path, clip_name, slice_name), "config": os.path.basename(path),
         "params": sum(math.prod(s) for s, _ in leaves), "clip": clip.name,
         "tokens": planning.tokens_per_clip(cfg, clip), "slice": slice_name,
         "topology": topology, "chips": len(devices), "hbm_bytes": chip.hbm_bytes}
  choice = planning.choose_mesh(cfg, clip, hw, headroom=1.0, leaves=leaves)
  if choice is None:
    row["planner"] = "no layout fits"
    return row
  mesh, mem, impl = choice
  cfg.dit.attention = impl
  for axis in planning.AXES:
    cfg.mesh[axis] = mesh[axis]
  cfg.data.batch_size = mesh["data"] * mesh["fsdp"]
  cfg.compile.bucket = f"{clip.frames}x{clip.height}x{clip.width}"
  fwd = planning.forward_flops(cfg, clip)
  row.update(mesh=mesh, attention=impl, batch=cfg.data.batch_size, planner_bytes=mem["total"],
             model_flops=3 * fwd * cfg.data.batch_size)
  t0 = time.time()
  try:
    c = aot.compile_program(cfg, aot.build_mesh(cfg, devices), "train", chip)
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return row
  r = c.report
  est = aot.estimate_step_seconds(chip, r["flops_per_chip"], c.bytes_accessed,
                                  c.collective_bytes)
  row.update(compiled=r["bytes_per_chip"], fits=r["fits"], flops_per_chip=r["flops_per_chip"],
             collectives=r["collectives"], collective_bytes=c.collective_bytes,
             bytes_accessed=c.bytes_accessed, compile_seconds=round(time.time() - t0, 1),
             est_step_seconds=est,
             est_mfu=row["model_flops"] / (len(devices) * chip.bf16_flops * est))
  return row


def _gb(x) -> str:
  return "?" if x is None else f"{x / 1e9:.1f}"


def imported_row(kind: str, path: str, config: str, clip_name: str, slice_name: str) -> list:
  """Rows from a `--mode=compile` run's compile.json (kind 'compile', the config's own mesh)
  or a `compile.search` run's search.json (kind 'search', every layout it compiled), with
  the planner's memory for the same layout beside the compiler's."""
  cfg = load_config(config)
  clip = planning.CLIPS[clip_name]
  topology, chip_key = SLICES[slice_name]
  chip = chips.CHIPS[chip_key]
  data = json.loads(paths.read_text(path))
  base = {"config": os.path.basename(config), "clip": clip.name,
          "params": sum(math.prod(s) for s, _ in planning.param_leaves(cfg)),
          "tokens": planning.tokens_per_clip(cfg, clip), "slice": slice_name,
          "topology": topology, "chips": data["chips"], "hbm_bytes": chip.hbm_bytes}
  if kind == "compile":
    r = data["train"]
    entries = [dict(mesh=data["mesh"], attention=cfg.dit.attention, remat=cfg.dit.remat_policy,
                    compiled=r["bytes_per_chip"], fits=r["fits"], collectives=r["collectives"],
                    flops_per_chip=r["flops_per_chip"],
                    collective_bytes=r.get("collective_bytes"),
                    est_step_seconds=r.get("est_step_seconds"))]
  else:
    entries = [dict(mesh=e["mesh"], attention=e["attention"], remat=e["remat"],
                    compiled=e.get("bytes") or ({"total": e["bytes_per_chip"]}
                                                  if "bytes_per_chip" in e else None),
                    fits=e.get("fits", False), collectives=e.get("collectives", {}),
                    flops_per_chip=e.get("flops_per_chip"), error=e.get("error"),
                    collective_bytes=e.get("collective_bytes"),
                    est_step_seconds=e.get("est_step_seconds"))
               for e in data["compiled"]]
  rows = []
  for e in entries:
    c = cfg.copy_and_resolve_references()
    c.dit.attention, c.dit.remat_policy = e["attention"], e["remat"]
    dp = e["mesh"]["data"] * e["mesh"]["fsdp"]
    batch = cfg.data.batch_size
    row = dict(base, layout=kind, batch=batch, **{k: v for k, v in e.items() if v is not None})
    row["key"] = f"{row_key(config, clip_name, slice_name)}|{kind}|{json.dumps(e['mesh'])}|{e['remat']}"
    row["planner_bytes"] = planning.memory_per_device(c, clip, e["mesh"], batch / dp,
                                                      platform="tpu")["total"]
    fwd = planning.forward_flops(cfg, clip)
    row["model_flops"] = 3 * fwd * batch
    if row.get("est_step_seconds"):
      row["est_mfu"] = row["model_flops"] / (row["chips"] * chip.bf16_flops * row["est_step_seconds"])
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  head = ("| model | clip (tokens) | slice (chips) | layout from | mesh (data, fsdp, sequence, "
          "tensor), attention, global batch | GB/chip: compiler (args + temps) / planner "
          "(error), HBM | fits | TFLOP/chip | collectives | est. step s / MFU |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    first = (f"| {r['config']} ({r['params'] / 1e9:.2f}B) | {r['clip']} ({r['tokens']:,}) | "
             f"{r['slice']} ({r['chips']}) | {LAYOUT_FROM[r.get('layout', 'planner')]}")
    if "mesh" not in r:
      lines.append(f"{first} | {r['planner']} | | | | | |")
      continue
    mesh = ", ".join(str(r["mesh"][a]) for a in planning.AXES)
    layout = f"({mesh}), {r['attention']}, {r['batch']}"
    b = r.get("compiled") or {}
    if "error" in r and not b.get("temps"):
      why = "out of HBM" if "RESOURCE_EXHAUSTED" in r["error"] else r["error"][:120]
      lines.append(f"{first} | {layout} | compile refused: {why}; planner "
                   f"{_gb(r['planner_bytes'])}, HBM {_gb(r['hbm_bytes'])} | **no** | | | |")
      continue
    total = b.get("total")
    parts = (f" ({_gb(b['arguments'])} + {_gb(b['temps'])})"
             if b.get("arguments") is not None else
             f" (temps {_gb(b['temps'])})" if b.get("temps") else "")
    err = f" ({r['planner_bytes'] / total - 1:+.0%})" if total else ""
    flops = r.get("flops_per_chip")
    est = (f"{r['est_step_seconds']:.1f} / {r['est_mfu']:.0%}" if r.get("est_mfu") else "")
    lines.append(
        f"{first} | {layout} | {_gb(total) if total else '>' + _gb(r['hbm_bytes'])}{parts} / "
        f"{_gb(r['planner_bytes'])}{err}, {_gb(r['hbm_bytes'])} | "
        f"{'yes' if r['fits'] else '**no**'} | "
        f"{'' if flops is None else f'{flops / 1e12:,.0f}'} | "
        + ", ".join(f"{k.replace('collective-', 'c-')} {v}" for k, v in r["collectives"].items())
        + f" | {est} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", required=True, help="JSON-lines file of finished rows")
  parser.add_argument("--write", action="store_true", help="rewrite the table in docs/scaling.md")
  parser.add_argument("--only", default="", help="compile only rows whose key contains this")
  parser.add_argument("--import_run", default="",
                      help="KIND:PATH:CONFIG:CLIP:SLICE, KIND compile (compile.json) or search "
                           "(search.json): add that run's train-step rows")
  args = parser.parse_args()
  done = []
  if paths.path(args.rows).exists():  # local or gs://
    done = [json.loads(line) for line in paths.read_text(args.rows).splitlines() if line.strip()]

  def add(row: dict) -> None:
    """Appends a row: rewrites the whole file (append on gs:// would overwrite it)."""
    done.append(row)
    paths.write_bytes_atomic(args.rows, "".join(json.dumps(r) + "\n" for r in done).encode())

  if args.import_run:
    kind, rest = args.import_run.split(":", 1)  # PATH may be gs://...: split from the right
    path, config, clip, slice_name = rest.rsplit(":", 3)
    for row in imported_row(kind, path, config, clip, slice_name):
      add(row)
    return
  if args.write:
    configs = {}
    for r in done:  # the planner as it is now (it is refitted to the compiler over time)
      if "mesh" in r:
        path = next(c for c in CONFIGS if os.path.basename(c) == r["config"])
        cfg = configs.setdefault(path, load_config(path)).copy_and_resolve_references()
        cfg.dit.attention, cfg.dit.remat_policy = r["attention"], r.get("remat", "full")
        clip = next(c for c in planning.CLIPS.values() if c.name == r["clip"])
        dp = r["mesh"]["data"] * r["mesh"]["fsdp"]
        r["planner_bytes"] = planning.memory_per_device(cfg, clip, r["mesh"], r["batch"] / dp,
                                                        platform="tpu")["total"]
    order = {row_key(c, k, s): i for i, (c, k, s) in enumerate(
        (c, k, s) for c in CONFIGS for k in CLIPS for s in SLICES)}
    text = table(sorted(done, key=lambda r: (order.get("|".join(r["key"].split("|")[:3]), 1e9),
                                             r.get("layout", "planner"))))
    with open(DOC) as f:
      doc = f.read()
    pattern = re.compile(r"(<!-- tpu:begin -->\n).*?(<!-- tpu:end -->)", re.S)
    if not pattern.search(doc):
      raise SystemExit(f"{DOC} has no <!-- tpu:begin --> ... <!-- tpu:end --> section")
    with open(DOC, "w") as f:
      f.write(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))
    print(f"wrote {len(done)} rows to {DOC}")
    return
  jax.config.update("jax_platforms", "cpu")
  have = {r["key"] for r in done}
  for config in CONFIGS:
    for clip in CLIPS:
      for slice_name in SLICES:
        key = row_key(config, clip, slice_name)
        if key in have or args.only not in key:
          continue
        print(f"[tpu_plan] {key} ...", flush=True)
        row = compile_row(config, clip, slice_name)
        print(f"[tpu_plan] {json.dumps(row)}", flush=True)
        add(row)


if __name__ == "__main__":
  main()
