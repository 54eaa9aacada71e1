"""`--mode=compile`: the train and sample steps compiled ahead of time for a TPU topology.

No TPU is needed: libtpu (`pip install -e .[tpu]`) describes a topology such as
`v5:4x4x8` (a v5p-256 slice, 128 chips) as compile-only devices
(`jax.experimental.topologies`), the config's mesh is laid over them, and the very
functions `--mode=train` (`training.train.Trainer`'s jitted step: shardings, donation,
remat, scan, attention kernel, dtypes) and `--mode=sample` (`sampling.sample.make_denoise`,
the whole ODE solve with CFG) jit are lowered from abstract shapes (`jax.ShapeDtypeStruct`s
carrying shardings; nothing is allocated, no data or weights are read) and compiled by
the TPU compiler. What the compiler says is the answer:

  bytes_per_chip   `memory_analysis()`: arguments, outputs, temporaries; total =
                   arguments + outputs + temps - aliased (donated state counted once)
  fits             total <= the chip's HBM (sora_jax/parallel/chips.py)
  flops_per_chip   the matmuls (dots, convolutions) of the optimized HLO, each weighted by
                   its loops' trip counts (`cost_analysis()` counts a scanned layer once),
                   plus the attention FLOPs of the splash kernels (Pallas kernels are
                   opaque to the compiler: analytic, `kernel_flops`)
  collectives      kind -> count of collective ops in the optimized HLO (static count; a
                   reduce-scatter the TPU compiler fuses as `all-reduce-scatter` counts as
                   reduce-scatter)
  custom_calls     target -> count; Pallas kernels as `tpu_custom_call:KERNEL` (splash:
                   `splash_mha_fwd...`, `splash_mha_dq...`, `splash_mha_dkv...`)

The optimized TPU HLO of each program is written beside it (DIR/compile_PROGRAM.hlo.txt).

Shapes: the train step at `compile.bucket` (default: the data bucket with the most
tokens) x `data.batch_size`; the sample step at sample.{num_frames, height, width} x
`sample.batch_size` with `sample.steps` solver steps, its parameters sharded by the
config's rules and its batch over (data, fsdp). A program that does not fit, or whose
attention kernel would fall back (e.g. splash to XLA), is an error.
"""
import dataclasses
import importlib.util
import json
import math
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sora_jax import config_check, paths
from sora_jax.config_check import ConfigError
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.parallel import attention_kernels, chips
from sora_jax.parallel import mesh as mesh_lib

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


# ------------------------------------------------------------------ topology
def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only TPU devices of `topology` (e.g. 'v5:4x4x8') x num_slices."""
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError("--mode=compile needs libtpu, the TPU compiler: pip install -e .[tpu]")
  # Another process on this host may hold libtpu's lock (any JAX process with libtpu
  # installed takes it); compiling for a topology needs no exclusive TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                        num_slices=num_slices)
  except Exception as e:  # libtpu's refusals come as several exception types.
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"compile.topology={topology!r} x compile.num_slices={num_slices}: libtpu "
                      f"cannot describe it ({why}); use e.g. v5:4x4x8 (v5p), v5e:16x16, "
                      "v6e:16x16") from None
  return list(desc.devices)


def build_mesh(cfg, devices):
  """The config's mesh over the topology's devices (dcn_data across slices)."""
  return mesh_lib.make_mesh(cfg.mesh, devices)


# ------------------------------------------------------------------ shapes
def train_clip(cfg) -> tuple[int, int, int]:
  """(frames, height, width) the train step is compiled at: compile.bucket, else the data
  bucket with the most tokens (the one that needs the most memory)."""
  if cfg.compile.bucket:
    return config_check.parse_buckets(cfg.compile.bucket)[0]
  buckets = config_check.parse_buckets(cfg.data.buckets)
  return max(buckets, key=lambda b: math.prod(config_check.latent_size(cfg, *b)))


def _abstract(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def abstract_params(cfg, mesh):
  """The DiT's parameters as sharded ShapeDtypeStructs (logical rules over mesh)."""
  boxed = dit_lib.param_shapes(cfg)
  shardings = nn.unbox(mesh_lib.logical_sharding(boxed, mesh, mesh_lib.rules(cfg)))
  return jax.tree.map(lambda a, s: _abstract(a.shape, a.dtype, s), nn.unbox(boxed), shardings)


def batch_sharding(mesh, batch: int, ndim: int) -> NamedSharding:
  """Batch dim over as many of (data, fsdp) as divide it (as the attention kernels split
  it), the rest replicated."""
  axes = [a for a in ("data", "fsdp") if mesh.shape[a] > 1]
  while axes and batch % math.prod(mesh.shape[a] for a in axes):
    axes = axes[1:]
  return NamedSharding(mesh, P(tuple(axes) or None, *([None] * (ndim - 1))))


# ------------------------------------------------------------------ programs
def compile_train(cfg, mesh):
  """The train step of `--mode=train` (training.train.Trainer), compiled for the mesh."""
  from sora_jax.data import encode  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  frames, height, width = train_clip(cfg)
  b, text_len, z = cfg.data.batch_size, text_lib.context_length(cfg), cfg.vae.z_dim
  latent = (*config_check.latent_size(cfg, frames, height, width), z)
  stats = (np.zeros(z, np.float32), np.ones(z, np.float32))
  null_text = text_lib.placeholder_null_text(cfg)
  base = None
  if cfg.train.lora_rank > 0 and (cfg.weights or cfg.train.init_from):
    base = abstract_params(cfg, mesh)  # The frozen base LoRA steps take (never read here).
  trainer = train_lib.Trainer(cfg, stats, null_text, (b, *latent), text_len, mesh=mesh,
                              base_params=base)
  # The records --mode=encode writes (data/encode.py): latent mean/std, f16 text, masks.
  shard = lambda nd: mesh_lib.batch_sharding(mesh, nd)
  batch = {"latent_mean": _abstract((b, *latent), jnp.float32, shard(5)),
           "latent_std": _abstract((b, *latent), jnp.float32, shard(5))}
  for field in ("caption", "prompt"):
    batch[f"{field}_emb"] = _abstract((b, text_len, cfg.text.dim), jnp.float16, shard(3))
    batch[f"{field}_mask"] = _abstract((b, text_len), bool, shard(2))
    if cfg.diffusion.binding_weight > 0:  # data.binding_negatives' texts
      e, m, v = encode.NEGATIVE_KEYS[field]
      batch |= {e: _abstract((b, text_len, cfg.text.dim), jnp.float16, shard(3)),
                m: _abstract((b, text_len), bool, shard(2)), v: _abstract((b,), bool, shard(1))}
  return trainer.compile_step(batch)


def compile_sample(cfg, mesh):
  """The sampler of `--mode=sample` (sampling.sample.make_denoise), compiled for the mesh."""
  from sora_jax.sampling import sample as sample_lib  # pylint: disable=g-import-not-at-top
  s = cfg.sample
  frames = 1 if s.task == "t2i" else s.num_frames
  b, text_len, z = s.batch_size, text_lib.context_length(cfg), cfg.vae.z_dim
  latent = (*config_check.latent_size(cfg, frames, s.height, s.width), z)
  null = tuple(jnp.asarray(a)[None] for a in text_lib.placeholder_null_text(cfg))
  denoise = sample_lib.make_denoise(cfg, dit_lib.dit_from_config(cfg), null)
  rep = NamedSharding(mesh, P())
  args = (abstract_params(cfg, mesh),
          _abstract((b, *latent), jnp.float32, batch_sharding(mesh, b, 5)),
          _abstract((b, *latent), jnp.float32, batch_sharding(mesh, b, 5)),
          _abstract((b, latent[0]), bool, batch_sharding(mesh, b, 2)),
          _abstract((s.steps + 1,), jnp.float32, rep),
          _abstract((b, text_len, cfg.text.dim), jnp.float32, batch_sharding(mesh, b, 3)),
          _abstract((b, text_len), bool, batch_sharding(mesh, b, 2)),
          _abstract((), jnp.float32, rep))
  with _context(cfg, mesh):
    return denoise.lower(*args, solver=s.solver).compile()


def _context(cfg, mesh):
  import contextlib  # pylint: disable=g-import-not-at-top
  stack = contextlib.ExitStack()
  stack.enter_context(nn.logical_axis_rules(mesh_lib.rules(cfg)))
  stack.enter_context(jax.set_mesh(mesh))
  return stack


COMPILERS = {"train": compile_train, "sample": compile_sample}


# ------------------------------------------------------------------ what the compiler says
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _shape_bytes(text: str) -> int:
  return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
             for t, dims in _SHAPE.findall(text))


def _computations(hlo: str) -> dict:
  """name -> (header line, instruction lines) of every computation in an HLO module; the
  entry computation's name is also stored under '__entry__'."""
  comps, lines = {}, None
  for line in hlo.splitlines():
    # "%name (params) -> shape {" in optimized HLO; "name {" before optimization.
    head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*)?\{\s*$", line)
    if head:
      lines = []
      comps[head.group(2)] = (line, lines)
      if head.group(1):
        comps["__entry__"] = head.group(2)
    elif lines is not None and line.startswith(" "):
      lines.append(line)
  return comps


def _trip_count(cond_lines: list) -> int:
  """Iterations of a while loop from its condition `i < N` (XLA:TPU drops
  known_trip_count; scans and fori_loops count from 0). 1 if not of that form."""
  consts = [int(m.group(1)) for line in cond_lines
            for m in [re.search(r"=\s*s32\[\]\S*\s+constant\((\d+)\)", line)] if m]
  lt = any("direction=LT" in line for line in cond_lines)
  return consts[0] if lt and len(consts) == 1 else 1


# Ops that move no data through HBM (views, bookkeeping, control flow counted in callees).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while",
               "conditional", "call", "after-all", "partition-id", "replica-id", "copy-done",
               "all-gather-done", "all-reduce-done", "collective-permute-done", "send-done",
               "recv-done", "opt-barrier"}


def _dims(shape: str) -> list[int]:
  arrays = [a for a in _SHAPE.findall(shape)]
  return [int(d) for d in arrays[0][1].split(",") if d] if arrays else []


def _window_taps(window: str, lhs: list, out: list) -> list:
  """Per spatial dimension of a convolution: the window taps that land on real input
  summed over the output positions (padding and lhs-dilation holes skipped). The TPU
  compiler writes matmuls as convolutions whose padded windows only place operands (e.g.
  the q/k/v axis of a stacked-kernel projection: window 3, pad 2_2 over a size-1 input,
  one real tap per output); counting the whole window tripled those FLOPs."""
  fields = dict(f.split("=", 1) for f in window.split())
  n = len(out)
  vec = lambda key, default: ([int(v) for v in fields[key].split("x")] if key in fields
                              else [default] * n)
  size, stride = vec("size", 1), vec("stride", 1)
  lhs_dil, rhs_dil = vec("lhs_dilate", 1), vec("rhs_dilate", 1)
  pads = ([[int(v) for v in p.split("_")] for p in fields["pad"].split("x")]
          if "pad" in fields else [[0, 0]] * n)
  taps = []
  for d in range(n):
    real = (lhs[d] - 1) * lhs_dil[d] + 1  # the input's extent once dilated
    taps.append(sum(1 for p in range(out[d]) for j in range(size[d])
                    if 0 <= (pos := p * stride[d] + j * rhs_dil[d] - pads[d][0]) < real
                    and pos % lhs_dil[d] == 0))
  return taps


def _matmul_flops(op: str, shape: str, rest: str, shapes: dict) -> int:
  """2 x multiply-adds of a dot or a convolution (how the TPU compiler writes matmuls).
  A dot: output elements x its left operand's contracting dims. A convolution: output
  batch x output features x the kernel's input features (per group) x, per spatial
  dimension, the window taps on real input summed over output positions."""
  out_dims = _dims(shape)
  # Operand names (with or without the optimized HLO's '%'), each before a comma or the end.
  operands = re.findall(r"%?([A-Za-z_][\w.\-]*)(?=\s*(?:,|$))", rest.split(")")[0])
  if op == "convolution" and len(operands) >= 2:
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    lhs, kernel = _dims(shapes.get(operands[0], "")), _dims(shapes.get(operands[1], ""))
    if not labels or len(kernel) != len(labels.group(2)) or len(lhs) != len(labels.group(1)):
      return 0
    lhs_l, rhs_l, out_l = labels.groups()
    spatial = sorted(c for c in out_l if c.isdigit())
    window = re.search(r"window=\{([^}]*)\}", rest)
    taps = _window_taps(window.group(1) if window else "",
                        [lhs[lhs_l.index(c)] for c in spatial],
                        [out_dims[out_l.index(c)] for c in spatial])
    return (2 * out_dims[out_l.index("b")] * out_dims[out_l.index("f")]
            * kernel[rhs_l.index("i")] * math.prod(taps))
  if op == "dot" and operands:
    lhs = _dims(shapes.get(operands[0], ""))
    contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    if not lhs or not contract:
      return 0
    return 2 * math.prod(out_dims) * math.prod(lhs[int(i)] for i in contract.group(1).split(",")
                                               if i)
  return 0


def hlo_summary(hlo: str) -> dict:
  """Collectives and custom calls of an optimized HLO module.

  Returns {'collectives': {kind: count}, 'custom_calls': {target: count},
  'collective_bytes', 'matmul_flops', 'hbm_bytes': per execution}. FLOPs are the dots
  and convolutions; HBM bytes what every unfused instruction reads and writes (fusions'
  insides stay on chip). Counts are static: an op inside the scanned
  layer counts once. Bytes weight each op by how often it runs (while-loop trip counts)
  and approximate what one chip sends with ring algorithms: the result of an all-gather,
  all-to-all or collective-permute, twice the result of an all-reduce, the operands of a
  reduce-scatter. The TPU compiler fuses reduce-scatters into `all-reduce-scatter`
  fusions (an all-reduce and slices inside); each counts as one reduce-scatter.
  """
  comps = _computations(hlo)
  counts, customs, own, calls, flops, traffic = {}, {}, {}, {}, {}, {}
  fused = set()  # computations inlined into a fusion: their values never reach HBM
  for value in comps.values():
    for line in value[1] if isinstance(value, tuple) else ():
      if " fusion(" in line:
        fused.update(re.findall(r"calls=%?([\w.\-]+)", line))
  for name, value in comps.items():
    if name == "__entry__" or name.startswith("all-reduce-scatter"):
      continue  # the fusion's insides are counted at the fusion
    own[name], calls[name], flops[name], traffic[name] = 0, [], 0, 0
    shapes = {}  # instruction -> its shape, for matmul operands and HBM traffic
    for line in value[1]:
      m = _INSTR.match(line)
      if not m:
        continue
      instr, shape, op, rest = m.groups()
      shapes[instr] = shape
      if name not in fused and op not in _NO_TRAFFIC:
        # An unfused instruction reads its operands from HBM and writes its result there.
        operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        traffic[name] += _shape_bytes(shape) + sum(_shape_bytes(shapes.get(o, ""))
                                                   for o in operands)
      if op in ("convolution", "dot"):
        flops[name] += _matmul_flops(op, shape, rest, shapes)
      base = op[:-len("-start")] if op.endswith("-start") else op
      kind, nbytes = None, 0
      if base in COLLECTIVES:
        kind = base
        arrays = [a for a in _SHAPE.findall(shape) if a[1]]
        if op.endswith("-start") and base != "all-reduce" and len(arrays) > 1:
          arrays = arrays[len(arrays) // 2:]  # (operands..., results...) of an async start
        nbytes = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",")) for t, dims in arrays)
        nbytes *= 2 if base == "all-reduce" else 1
      elif op == "fusion" and "calls=%all-reduce-scatter" in rest:
        kind = "reduce-scatter"
        callee = re.search(r"calls=%?([\w.\-]+)", rest).group(1)
        nbytes = _shape_bytes(comps.get(callee, ("", []))[0].split("->")[0])
      elif op == "custom-call":
        t = re.search(r'custom_call_target="([^"]+)"', rest)
        if t:
          # Pallas kernels all have target tpu_custom_call; their instruction names the
          # kernel (splash_mha_fwd, splash_mha_dq, splash_mha_dkv...).
          key = t.group(1)
          if key == "tpu_custom_call":
            key += ":" + re.sub(r"\.\d+$", "", instr)
          customs[key] = customs.get(key, 0) + 1
      if kind:
        counts[kind] = counts.get(kind, 0) + 1
        own[name] += nbytes
      if op == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest)
        cond = re.search(r"condition=%?([\w.\-]+)", rest)
        trips = _trip_count(comps[cond.group(1)][1]) if cond and cond.group(1) in comps else 1
        if body:
          calls[name].append((body.group(1), trips))
        continue
      if kind is None:
        for callee in re.findall(r"\b(?:to_apply|calls)=%?([\w.\-]+)", rest):
          calls[name].append((callee, 1))
        for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
          calls[name] += [(c.strip().lstrip("%"), 1) for c in group.split(",")]

  def weighted(per_comp):
    memo = {}

    def total(name, depth=0):
      if name not in memo:
        memo[name] = 0 if depth > 100 else per_comp.get(name, 0) + sum(
            t * total(c, depth + 1) for c, t in calls.get(name, ()))
      return memo[name]
    entry = comps.get("__entry__")
    return total(entry) if entry else 0

  return {"collectives": dict(sorted(counts.items())),
          "custom_calls": dict(sorted(customs.items())),
          "collective_bytes": weighted(own), "matmul_flops": weighted(flops),
          "hbm_bytes": weighted(traffic)}


def cross_slice_transfers(hlo: str) -> dict:
  """kind -> bytes a chip sends over the data-center network (between slices) per step.

  In a multi-slice program the TPU compiler keeps ICI collectives as HLO collectives and
  turns the cross-slice part into host transfers for the MegaScale runtime: `send` ops
  tagged _xla_megascale_transfer_type (ALL_REDUCE, ALL_GATHER, ...), counted here by
  their operand sizes (static: each op once)."""
  out = {}
  for line in hlo.splitlines():
    m = _INSTR.match(line)
    if not m or m.group(3) != "send":
      continue
    kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', line)
    if kind:
      name = kind.group(1).lower().replace("_", "-")
      arrays = [a for a in _SHAPE.findall(m.group(2).split("token[]")[0]) if a[1]]
      out[name] = out.get(name, 0) + sum(
          _BYTES[t] * math.prod(int(d) for d in dims.split(",")) for t, dims in arrays[:1])
  return dict(sorted(out.items()))


def program_report(compiled, hlo: str, chip: chips.Chip | None, seconds: float):
  """compile.json's figures of one compiled program (module docstring)."""
  m = compiled.memory_analysis()
  args, outs, temps = (int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp"))
  alias = int(m.alias_size_in_bytes)
  total = args + outs + temps - alias
  summary = hlo_summary(hlo)
  hbm = chip.hbm_bytes if chip else None
  report = {
      "bytes_per_chip": {"arguments": args, "outputs": outs, "temps": temps, "total": total},
      "hbm_bytes_per_chip": hbm,
      "fits": bool(hbm is not None and total <= hbm),
      "flops_per_chip": float(summary["matmul_flops"]),
      "collectives": summary["collectives"],
      "custom_calls": summary["custom_calls"],
      "compile_seconds": round(seconds, 1),
  }
  return report, summary["collective_bytes"], float(summary["hbm_bytes"])


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def out_of_memory_report(message: str, chip: chips.Chip | None, seconds: float) -> dict:
  """compile.json's entry for a program the TPU compiler refused for lack of HBM; its
  figures come from the compiler's message ('temporaries (39.77G) exceeds available HBM
  (31.25G)', binary units), those it does not give are null."""
  found = re.search(r"temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)",
                    message)
  temps = hbm = None
  if found:
    temps = int(float(found.group(1)) * _UNITS[found.group(2)])
    hbm = int(float(found.group(3)) * _UNITS[found.group(4)])
  return {"bytes_per_chip": {"arguments": None, "outputs": None, "temps": temps, "total": None},
          "hbm_bytes_per_chip": hbm or (chip.hbm_bytes if chip else None), "fits": False,
          "flops_per_chip": None, "collectives": {}, "custom_calls": {},
          "compile_seconds": round(seconds, 1)}


def estimate_step_seconds(chip: chips.Chip, flops: float, hbm_bytes: float,
                          collective_bytes: float) -> float:
  """A floor on one step's time: the slowest of compute at peak, HBM traffic at full
  bandwidth and collectives at full ICI bandwidth (an estimate, not a measurement)."""
  return max(flops / chip.bf16_flops, hbm_bytes / chip.hbm_bytes_per_s,
             collective_bytes / chip.ici_bytes_per_s)


# ------------------------------------------------------------------ the mode
@dataclasses.dataclass
class Compiled:
  """One program's compile.json figures plus what the estimates need."""
  report: dict
  collective_bytes: int
  bytes_accessed: float  # HBM bytes read and written (hlo_summary).
  hlo: str  # The optimized TPU HLO.


def kernel_flops(cfg, program: str, chips_: int) -> float:
  """Per-chip FLOPs of the splash kernels of `program` (QK^T and PV of self- and
  cross-attention, analytic): Pallas kernels are opaque to the compiler's count."""
  if program == "train":
    frames, height, width = train_clip(cfg)
    clips = cfg.data.batch_size * (4 if cfg.dit.remat_policy != "none" else 3)
  else:
    s = cfg.sample
    frames, height, width = (1 if s.task == "t2i" else s.num_frames), s.height, s.width
    calls = (1 if s.cfg_scale == 1 else 2) * (2 if s.solver == "heun" else 1)
    clips = s.batch_size * calls * s.steps
  t, h, w = config_check.latent_size(cfg, frames, height, width)
  pt, ph, pw = cfg.dit.patch_size
  tokens = (t // pt) * (h // ph) * (w // pw)
  s_text = text_lib.context_length(cfg)
  if cfg.dit.joint_attention:  # One attention over video + text, queries of both streams.
    per_layer = 2 * 2 * (tokens + s_text) ** 2 * cfg.dit.dim
  else:  # Self-attention over the video, cross-attention to the text.
    per_layer = 2 * 2 * tokens * (tokens + s_text) * cfg.dit.dim
  return per_layer * cfg.dit.num_layers * clips / chips_


def compile_program(cfg, mesh, program: str, chip: chips.Chip | None) -> Compiled:
  """Compiles `program` ('train' or 'sample') for the mesh; attention fallbacks are errors."""
  t0 = time.perf_counter()
  with attention_kernels.fallbacks_are_errors():
    compiled = COMPILERS[program](cfg, mesh)
  seconds = time.perf_counter() - t0
  hlo = compiled.as_text()
  report, coll, accessed = program_report(compiled, hlo, chip, seconds)
  if any(k.startswith("tpu_custom_call:splash") for k in report["custom_calls"]):
    report["flops_per_chip"] += kernel_flops(cfg, program, mesh.devices.size)
  return Compiled(report, coll, accessed, hlo)


def _gb(x) -> str:
  return f"{x / 1e9:.2f}"


def table(results: dict, chip: chips.Chip | None) -> str:
  """The printed summary: one row per program."""
  rows = [("program", "GB/chip: args + outputs + temps = total", "HBM GB", "fits (headroom)",
           "TFLOP/chip", "collectives", "compile s", "est. step s (floor)")]
  for name, c in results.items():
    r, b = c.report, c.report["bytes_per_chip"]
    hbm = r["hbm_bytes_per_chip"]
    head = f"{'yes' if r['fits'] else 'NO'} ({_gb(hbm - b['total'])} GB)" if hbm else "?"
    est = (f"{estimate_step_seconds(chip, r['flops_per_chip'], c.bytes_accessed, c.collective_bytes):.2f}"
           if chip else "?")
    rows.append((name, f"{_gb(b['arguments'])} + {_gb(b['outputs'])} + {_gb(b['temps'])} = "
                       f"{_gb(b['total'])}", _gb(hbm) if hbm else "?", head,
                 f"{r['flops_per_chip'] / 1e12:.1f}",
                 ", ".join(f"{k} {v}" for k, v in r["collectives"].items()) or "none",
                 f"{r['compile_seconds']:.0f}", est))
  width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)) for row in rows)


def run(cfg, workdir: str) -> None:
  c = cfg.compile
  programs = config_check.compile_programs(c.programs)
  # This host's own devices are never used: keep JAX off any local TPU (a TPU VM can run
  # this too) so only the topology's compile-only devices are in play.
  jax.config.update("jax_platforms", "cpu")
  paths.path(workdir).mkdir(parents=True, exist_ok=True)  # as the CLI does (main.py)
  if c.search:
    from sora_jax.parallel import layout_search  # pylint: disable=g-import-not-at-top
    layout_search.run(cfg, workdir)
    return
  devices = topology_devices(c.topology, c.num_slices)
  chip = chips.chip_of_topology(c.topology)
  mesh = build_mesh(cfg, devices)
  print(f"[compile] {c.topology} x {c.num_slices} slice(s): {len(devices)} x "
        f"{devices[0].device_kind}, mesh {dict(mesh.shape)}, attention {cfg.dit.attention}, "
        f"remat {cfg.dit.remat_policy}", flush=True)
  if chip is None:
    print(f"[compile] no chip figures for {c.topology!r} in sora_jax/parallel/chips.py: "
          "memory is reported, fit and estimates are not", flush=True)
  results = {}
  refused = {}
  for name in programs:
    t0 = time.perf_counter()
    try:
      results[name] = compile_program(cfg, mesh, name, chip)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      refused[name] = out_of_memory_report(str(e), chip, time.perf_counter() - t0)
      print(f"[compile] {name}: the compiler ran out of HBM", flush=True)
      continue
    print(f"[compile] {name}: compiled in {results[name].report['compile_seconds']:.0f}s",
          flush=True)
    r = results[name]
    r.report["collective_bytes"] = r.collective_bytes
    r.report["hbm_bytes_accessed"] = r.bytes_accessed
    if chip:  # The table's floor on the step time, kept with the figures it comes from.
      r.report["est_step_seconds"] = estimate_step_seconds(
          chip, r.report["flops_per_chip"], r.bytes_accessed, r.collective_bytes)
    if c.num_slices > 1:
      dcn = cross_slice_transfers(results[name].hlo)
      print(f"[compile] {name}: bytes sent across slices (DCN) by kind: "
            f"{', '.join(f'{k} {v / 1e6:.3f} MB' for k, v in dcn.items()) or 'none'}",
            flush=True)
  for name, r in results.items():  # for reading the collectives and kernels yourself
    (paths.path(workdir) / f"compile_{name}.hlo.txt").write_text(r.hlo)
  report = {"topology": c.topology, "chips": len(devices), "mesh": dict(mesh.shape),
            **{k: (results[k].report if k in results else refused[k]) for k in programs}}
  path = paths.path(workdir) / "compile.json"
  path.write_text(json.dumps(report, indent=1))
  if results:
    print(table(results, chip), flush=True)
  print(f"[compile] wrote {path}; the step time is an estimate from chip peaks "
        "(sora_jax/parallel/chips.py), not a measurement", flush=True)
  for name, r in refused.items():
    temps, hbm = r["bytes_per_chip"]["temps"], r["hbm_bytes_per_chip"]
    need = (f"needs {_gb(temps)} GB of temporaries per chip besides the arguments, > "
            f"{_gb(hbm)} GB available HBM" if temps else "ran out of HBM")
    raise ConfigError(f"the {name} step does not fit {c.topology}: the TPU compiler {need}; "
                      "try --config.compile.search=True for a layout that fits")
  for name, r in results.items():
    b = r.report["bytes_per_chip"]
    hbm = r.report["hbm_bytes_per_chip"]
    if hbm and not r.report["fits"]:
      raise ConfigError(
          f"the {name} step does not fit {c.topology}: {_gb(b['total'])} GB per chip "
          f"(arguments {_gb(b['arguments'])}, outputs {_gb(b['outputs'])}, temps "
          f"{_gb(b['temps'])}) > {_gb(hbm)} GB HBM; try --config.compile.search=True for a "
          "layout that fits")
