"""Where a train step's time goes: an XLA op trace summed by kind (scripts/profile_step.py).

`hlo_ops` reads a compiled module's text (instruction name -> opcode and the `op_name`
JAX recorded), `op_times` sums a `jax.profiler` trace's op events by instruction, and
`classify` puts each instruction in one row of ROWS from its name, opcode and op_name.
"""
import collections
import re

ROWS = ("matmul: projections and MLP, forward", "matmul: projections and MLP, backward",
        "attention: contractions and softmax", "copies and transposes",
        "layer scan: stacking and slicing", "norms, modulation, RoPE, GELU",
        "outside the model: loss, optimizer, EMA, clipping", "other elementwise and reductions")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (opcode, op_name metadata)} of an HLO module's text."""
  ops = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      name_meta = _OP_NAME.search(line)
      ops[m.group(1)] = (m.group(2), name_meta.group(1) if name_meta else "")
  return ops


def classify(name: str, opcode: str, op_name: str) -> str:
  """The row of ROWS an HLO op belongs to (see the module docstring)."""
  last = op_name.rsplit("/", 1)[-1]
  backward = "transpose(jvp" in op_name
  if "bhld,bhsd" in op_name or "bhls,bhsd" in op_name or (
      "attn" in op_name and last in ("reduce_max", "exp", "div", "softmax")):
    return ROWS[2]
  if opcode == "dot" or last == "dot_general":
    return ROWS[1] if backward else ROWS[0]
  if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")) or (
      "copy" in name and "slice" not in name):
    return ROWS[3]
  if (opcode == "while" or "dynamic-update-slice" in name or "dynamic-slice" in name
      or last in ("stack", "concatenate", "dynamic_slice", "dynamic_update_slice")):
    return ROWS[4]
  if op_name and "jvp(" not in op_name:  # the step's own code around the model
    return ROWS[6]
  if any(k in op_name for k in ("norm", "rsqrt", "rope", "gelu", "tanh", "silu",
                                "scale_shift", "modulat")):
    return ROWS[5]
  return ROWS[7]


def op_times(xplane_path: str, module_prefix: str) -> dict[str, float]:
  """{HLO op name: total ns} of the op events of modules whose name starts with the prefix."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  totals = collections.defaultdict(float)
  for plane in ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith(module_prefix):
          totals[str(stats["hlo_op"])] += event.duration_ns
  return dict(totals)
