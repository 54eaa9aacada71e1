"""`--mode=compile --config.compile.search=True`: which layout trains this config on a topology.

"How do I run this config on a v5p-128?" The planner (sora_jax/parallel/planning.py)
proposes every layout of the topology's chips, data x fsdp x sequence x tensor x remat
policy x attention kernel, that it thinks fits (its TPU memory estimate within HBM),
ranked by its estimate of the bytes each chip sends in collectives per step; the best
`compile.search_top` are compiled for the topology (the train step, as `--mode=compile`
does) and the ones the compiler says fit are printed ordered by the collective bytes in
their compiled HLO, with the flags that select them. Writes DIR/search.json.
"""
import json

from sora_jax import paths
from sora_jax.config_check import ConfigError
from sora_jax.parallel import aot, chips, planning
from sora_jax.parallel import mesh as mesh_lib

AXES = mesh_lib.AXES


def layout_config(cfg, layout: dict):
  """cfg with the layout's mesh, remat policy and attention kernel."""
  c = cfg.copy_and_resolve_references()
  for axis in AXES:
    c.mesh[axis] = layout["mesh"][axis]
  c.mesh.dcn_data = 1
  c.dit.remat_policy = layout["remat"]
  c.dit.attention = layout["attention"]
  return c


def flags(layout: dict) -> str:
  return " ".join([f"--config.mesh.{a}={layout['mesh'][a]}" for a in AXES] +
                  [f"--config.dit.remat_policy={layout['remat']}",
                   f"--config.dit.attention={layout['attention']}"])


def _mesh_str(mesh: dict) -> str:
  return "(" + ", ".join(str(mesh[a]) for a in AXES) + ")"


def search(cfg, devices, chip: chips.Chip, log=print, save=None) -> list[dict]:
  """Planner candidates, the best compiled; returns every compiled candidate's row.

  save(rows), if given, is called after each compile (a large search takes hours of CPU:
  what is done is kept).
  """
  clip = planning.Clip("train", *aot.train_clip(cfg))
  candidates = planning.candidate_layouts(cfg, clip, len(devices), chip.hbm_bytes,
                                          cfg.data.batch_size)
  if not candidates:
    raise ConfigError(f"no layout of {len(devices)} chips fits the train step by the planner's "
                      f"estimate ({chip.name}, {chip.hbm_bytes / 1e9:.0f} GB a chip, global batch "
                      f"{cfg.data.batch_size}): use a larger topology or a smaller data.batch_size")
  log(f"[search] the planner proposes {len(candidates)} layouts; compiling the best "
      f"{min(cfg.compile.search_top, len(candidates))}:")
  rows = []
  for layout in candidates[:cfg.compile.search_top]:
    c = layout_config(cfg, layout)
    row = dict(layout)
    try:
      compiled = aot.compile_program(c, mesh_lib.make_mesh(c.mesh, devices), "train", chip)
    except Exception as e:  # pylint: disable=broad-except
      # A layout the compiler or a kernel refuses is a search result, not the end of it.
      row.update(error=str(e).strip().splitlines()[0][:300] if str(e).strip()
                 else type(e).__name__, fits=False)
      if "RESOURCE_EXHAUSTED" in str(e):  # the compiler's own verdict: it does not fit
        row["bytes"] = aot.out_of_memory_report(str(e), chip, 0)["bytes_per_chip"]
      log(f"[search] {_mesh_str(layout['mesh'])} remat={layout['remat']} "
          f"{layout['attention']}: failed: {row['error']}")
      rows.append(row)
      if save:
        save(rows)
      continue
    r = compiled.report
    row.update(bytes_per_chip=r["bytes_per_chip"]["total"], bytes=r["bytes_per_chip"],
               fits=r["fits"],
               collective_bytes=compiled.collective_bytes, flops_per_chip=r["flops_per_chip"],
               collectives=r["collectives"], compile_seconds=r["compile_seconds"],
               est_step_seconds=aot.estimate_step_seconds(
                   chip, r["flops_per_chip"], compiled.bytes_accessed,
                   compiled.collective_bytes))
    log(f"[search] {_mesh_str(layout['mesh'])} remat={layout['remat']} {layout['attention']}: "
        f"{row['bytes_per_chip'] / 1e9:.1f} GB a chip (planner {layout['est_bytes'] / 1e9:.1f}), "
        f"{'fits' if row['fits'] else 'does NOT fit'}, "
        f"{row['collective_bytes'] / 1e9:.2f} GB collectives a step")
    rows.append(row)
    if save:
      save(rows)
  return rows


def table(rows: list[dict]) -> str:
  head = ("mesh (data, fsdp, sequence, tensor)", "remat", "attention", "GB/chip (compiled)",
          "GB/chip (planner)", "collective GB/step", "est. step s (floor)", "flags")
  lines = [head]
  for r in rows:
    lines.append((_mesh_str(r["mesh"]), r["remat"], r["attention"],
                  f"{r['bytes_per_chip'] / 1e9:.1f}", f"{r['est_bytes'] / 1e9:.1f}",
                  f"{r['collective_bytes'] / 1e9:.2f}", f"{r['est_step_seconds']:.2f}",
                  flags(r)))
  width = [max(len(line[i]) for line in lines) for i in range(len(head))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, width)) for line in lines)


def run(cfg, workdir: str) -> None:
  c = cfg.compile
  devices = aot.topology_devices(c.topology, c.num_slices)
  chip = chips.chip_of_topology(c.topology)
  if chip is None:
    raise ConfigError(f"compile.search needs the chip's HBM: {c.topology!r} has no entry in "
                      "sora_jax/parallel/chips.py (v5p, v5e, v6e)")
  if c.num_slices > 1:
    raise ConfigError("compile.search lays out one slice; set compile.num_slices=1 (multi-slice "
                      "adds data parallelism across slices, mesh.dcn_data)")
  print(f"[search] {c.topology}: {len(devices)} x {chip.name}, train step at "
        f"{'x'.join(map(str, aot.train_clip(cfg)))} x batch {cfg.data.batch_size}", flush=True)
  path = paths.path(workdir) / "search.json"

  def save(rows):
    path.write_text(json.dumps({"topology": c.topology, "chips": len(devices),
                                "compiled": rows}, indent=1))

  rows = search(cfg, devices, chip, log=lambda s: print(s, flush=True), save=save)
  fitting = sorted((r for r in rows if r.get("fits")), key=lambda r: r["collective_bytes"])
  if not fitting:
    raise ConfigError(f"none of the planner's best {len(rows)} layouts fits {c.topology} when "
                      f"compiled (see {path}); raise compile.search_top or use more chips")
  print("[search] layouts that fit, fewest collective bytes first (step time: an estimate "
        "from chip peaks):", flush=True)
  print(table(fitting), flush=True)
  print(f"[search] wrote {path}", flush=True)
