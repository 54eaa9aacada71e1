"""How big a DiT run is, and which mesh it needs: parameters, FLOPs and per-device memory.

Used by scripts/plan.py (the table in docs/scaling.md) and checked against XLA's own
compiled memory in tests/test_planning.py. Nothing here allocates: parameter shapes and
their logical axis names come from `jax.eval_shape` of the DiT's init, FLOPs from
`models.dit.count_flops`, so a 14B model at 1080p x 60 s is planned on a laptop.

Per-device memory of a training step, in bytes:
  state        params, grads, EMA and AdamW mu/nu: 5 copies in param_dtype (optax keeps the
               moments in the parameter dtype), each leaf divided by the mesh axes its
               logical names map to under config.mesh.rules (embed -> fsdp, heads/mlp ->
               tensor).
  gathered     one scanned layer's weights all-gathered over fsdp in the compute dtype,
               twice (XLA prefetches the next layer while computing this one).
  activations  the residual stream saved at every layer boundary (what `nn.scan` keeps
               for the backward pass), plus, by remat policy: 'full' one block's working
               set (recomputed during its backward), 'dots' every layer's matmul outputs
               too, 'none' every layer's working set. A block's working set per token is
               counted tensor by tensor in `block_bytes_per_token`, doubled for the
               gradients that coexist with it in the backward pass, and scaled by
               XLA_OVERHEAD, fitted to XLA's compiled memory (fusion temporaries and extra
               float32 copies the count misses; tests/test_planning.py keeps the whole
               estimate within 20% of `memory_analysis()` for 'full' and 'none'; 'dots' is
               not calibrated). Attention is assumed
               flash-style (O(tokens), negligible) except impl 'xla', whose float32
               logits (heads x tokens x tokens) are added.
Tokens per device are tokens / sequence (Ulysses and ring keep activations
token-sharded); batch per device is global batch / (data x fsdp).
"""
import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np

from sora_jax import config_check
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.parallel import mesh as mesh_lib

AXES = mesh_lib.AXES
# Compiled / counted bytes of a block's working set, measured on XLA:CPU compiles of the
# DiT train step (dim 256-512, 320-2,304 tokens a clip, remat 'full' and 'none').
XLA_OVERHEAD = 1.45
# The TPU compiler keeps more activation bytes than XLA:CPU: this factor on the activation
# term brings the estimate within 8% of libtpu's compiled memory for dit_1_3b (480p, data
# parallel, v5p-64: +5%) and dit_14b (720p, fsdp 16 x Ulysses 4, v5p-256: -8%), measured
# by --mode=compile (docs/scaling.md, "The planner against the TPU compiler").
TPU_ACTIVATION_FACTOR = 1.35


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  chips: int
  hbm_gb: float  # Memory per chip (GB = 1e9 bytes).
  bf16_tflops: float  # Dense bf16 peak per chip.
  chips_per_host: int
  kernel: str  # Its flash-attention kernel (config dit.attention).


HARDWARE = {
    "8xH100": Hardware("8xH100 (1 node)", 8, 80, 989, 8, "cudnn"),
    "64xH100": Hardware("64xH100 (8 nodes)", 64, 80, 989, 8, "cudnn"),
    "v5p-256": Hardware("TPU v5p-256", 128, 95, 459, 4, "splash"),
    "v5p-1024": Hardware("TPU v5p-1024", 512, 95, 459, 4, "splash"),
}


@dataclasses.dataclass(frozen=True)
class Clip:
  name: str
  frames: int  # Pixel frames, 1 + 4k.
  height: int
  width: int


# 16 fps (Wan 2.1). 1080 rows are padded to 1088 so the x8 VAE and 2x2 patches divide them.
CLIPS = {
    "480p-5s": Clip("480p x 5 s", 81, 480, 832),
    "720p-5s": Clip("720p x 5 s", 81, 720, 1280),
    "1080p-60s": Clip("1080p x 60 s", 961, 1088, 1920),
}


def latent_grid(cfg, clip: Clip) -> tuple[int, int, int]:
  """(latent frames, latent height, latent width) of a clip under cfg's VAE."""
  return config_check.latent_size(cfg, clip.frames, clip.height, clip.width)


def tokens_per_clip(cfg, clip: Clip) -> int:
  t, h, w = latent_grid(cfg, clip)
  pt, ph, pw = cfg.dit.patch_size
  return (t // pt) * (h // ph) * (w // pw)


def forward_flops(cfg, clip: Clip) -> int:
  """Analytic forward FLOPs of one clip (models.dit.count_flops)."""
  return dit_lib.count_flops(cfg, *latent_grid(cfg, clip), text_lib.context_length(cfg))


def _dtype_bytes(name: str) -> int:
  return np.dtype(name).itemsize if name != "bfloat16" else 2


def param_leaves(cfg) -> list[tuple[tuple[int, ...], tuple]]:
  """(shape, logical axis names) of every DiT parameter, from jax.eval_shape."""
  boxed = dit_lib.param_shapes(cfg)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  out = []
  for x in leaves:
    names = x.names if isinstance(x, nn.Partitioned) else (None,) * len(x.shape)
    out.append((tuple(nn.unbox(x).shape), tuple(names)))
  return out


def _mesh_axes(logical: tuple, axis_rules) -> tuple:
  """Logical names -> mesh axes per dim (a tuple of axis names, possibly empty)."""
  table = dict(axis_rules)
  out = []
  for name in logical:
    target = table.get(name) if name is not None else None
    out.append(() if target is None else ((target,) if isinstance(target, str) else tuple(target)))
  return tuple(out)


def shard_elements(shape, logical, axis_rules, mesh: dict) -> int:
  """Elements of one device's shard (dims split over the mesh axes their names map to)."""
  n = 1
  for size, axes in zip(shape, _mesh_axes(logical, axis_rules)):
    n *= math.ceil(size / math.prod(mesh.get(a, 1) for a in axes))
  return n


def block_bytes_per_token(cfg, tensor: int) -> float:
  """Bytes per token of one block's forward tensors kept for its backward pass.

  Counted from models/dit.py's Block: float32 LayerNorm/modulation outputs and residual
  adds (5 x dim), float32 RoPE'd q and k, compute-dtype h, q/k/v, attention output,
  projections, cross-attention q/output and the MLP's hidden before/after GELU; head- and
  MLP-sized tensors are split over the tensor axis.
  """
  a = _dtype_bytes(cfg.dit.dtype)
  d, f = cfg.dit.dim, cfg.dit.ffn_dim
  f32 = 4 * (5 * d + 2 * d / tensor)
  compute = a * (5 * d + 6 * d / tensor + 2 * f / tensor)
  return f32 + compute


def matmul_output_bytes_per_token(cfg, tensor: int) -> float:
  """What remat policy 'dots' keeps per token and layer: every matmul's output."""
  a = _dtype_bytes(cfg.dit.dtype)
  d, f = cfg.dit.dim, cfg.dit.ffn_dim
  return a * (4 * d / tensor + 2 * d + 2 * d / tensor + f / tensor)


def memory_per_device(cfg, clip: Clip, mesh: dict, batch_per_device: float = 1.0,
                      leaves=None, platform: str = "cpu") -> dict:
  """Estimated bytes per device of one training step: state, gathered, activations, total.

  platform 'tpu' scales the activations by TPU_ACTIVATION_FACTOR (fitted to libtpu).
  """
  axis_rules = mesh_lib.rules(cfg)
  leaves = param_leaves(cfg) if leaves is None else leaves
  pbytes = _dtype_bytes(cfg.dit.param_dtype)
  a = _dtype_bytes(cfg.dit.dtype)
  state = 5 * pbytes * sum(shard_elements(s, n, axis_rules, mesh) for s, n in leaves)
  # One layer's weights, gathered over fsdp (still split over tensor) in the compute dtype.
  no_fsdp = dict(mesh, fsdp=1, data=1)
  layer = sum(shard_elements(s[1:], n[1:], axis_rules, no_fsdp)
              for s, n in leaves if n and n[0] == "layers")
  gathered = 2 * a * layer
  seq, tensor = mesh.get("sequence", 1), mesh.get("tensor", 1)
  tokens = tokens_per_clip(cfg, clip) / seq * batch_per_device
  layers = cfg.dit.num_layers
  residual = layers * tokens * cfg.dit.dim * a
  block = 2 * XLA_OVERHEAD * tokens * block_bytes_per_token(cfg, tensor)
  policy = cfg.dit.remat_policy
  if policy == "none":
    acts = residual + layers * block
  elif policy in ("dots", "dots_no_batch"):
    acts = residual + layers * tokens * matmul_output_bytes_per_token(cfg, tensor) + block
  else:
    acts = residual + block
  if cfg.dit.attention == "xla":
    heads = cfg.dit.num_heads / tensor
    full = tokens_per_clip(cfg, clip)
    acts += 4 * heads * (tokens * full) * (1 if policy == "full" else layers)
  if platform == "tpu":
    acts *= TPU_ACTIVATION_FACTOR
  return {"state": state, "gathered": gathered, "activations": acts,
          "total": state + gathered + acts}


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def choose_mesh(cfg, clip: Clip, hw: Hardware, headroom: float = 0.85, leaves=None):
  """The cheapest mesh of hw.chips that fits a training step in headroom x HBM, or None.

  Candidates: sequence must divide the clip's tokens, tensor the heads and MLP width,
  fsdp the model width (so every shard is even); one clip per (data x fsdp) group.
  Preference, most to least: no tensor parallelism (two activation all-reduces per
  matmul pair), then the smallest sequence axis (all-to-alls per attention), then the
  smallest fsdp (parameter all-gathers per layer); data takes the remaining chips. Returns
  (mesh dict, memory dict, attention impl): the hardware's flash kernel when sequence is
  1, else 'ulysses' when the heads split over the sequence axis (its per-device attention
  is that flash kernel), else 'ring'.
  """
  leaves = param_leaves(cfg) if leaves is None else leaves
  tokens = tokens_per_clip(cfg, clip)
  d = cfg.dit
  best = None
  for tensor in _divisors(hw.chips):
    if d.num_heads % tensor or d.ffn_dim % tensor:
      continue
    for seq in _divisors(hw.chips // tensor):
      if tokens % seq:
        continue
      for fsdp in _divisors(hw.chips // (tensor * seq)):
        if d.dim % fsdp:
          continue
        data = hw.chips // (tensor * seq * fsdp)
        mesh = dict(data=data, fsdp=fsdp, sequence=seq, tensor=tensor)
        mem = memory_per_device(cfg, clip, mesh, leaves=leaves,
                                platform="tpu" if hw.kernel == "splash" else "cpu")
        if mem["total"] > headroom * hw.hbm_gb * 1e9:
          continue
        key = (tensor, seq, fsdp)
        if best is None or key < best[0]:
          best = (key, mesh, mem)
  if best is None:
    return None
  _, mesh, mem = best
  if mesh["sequence"] == 1:
    impl = hw.kernel
  else:
    impl = "ulysses" if (d.num_heads // mesh["tensor"]) % mesh["sequence"] == 0 else "ring"
  return mesh, mem, impl


def collective_bytes_per_device(cfg, clip: Clip, mesh: dict, batch_per_device: float = 1.0,
                                leaves=None) -> float:
  """Estimated bytes one device sends in collectives per training step (ring algorithms).

  fsdp: each layer's weights all-gathered in the compute dtype for the forward, the
  backward and (remat) the recompute, gradients reduce-scattered in f32; data: the
  gradient shard all-reduced; tensor: two activation all-reduces per block each way
  (plus the recompute); sequence: Ulysses' four all-to-alls per block each way, or ring's
  K/V (and dK/dV) passes. A ranking heuristic for `compile.search`; the compiler's HLO is
  what counts.
  """
  axis_rules = mesh_lib.rules(cfg)
  leaves = param_leaves(cfg) if leaves is None else leaves
  data, fsdp, seq, tensor = (mesh.get(a, 1) for a in AXES)
  a = _dtype_bytes(cfg.dit.dtype)
  per_tensor = sum(shard_elements(s, n, axis_rules, dict(tensor=tensor)) for s, n in leaves)
  passes = 3 if cfg.dit.remat_policy != "none" else 2  # forward, backward, recompute
  frac = lambda n: (n - 1) / n
  total = passes * a * per_tensor * frac(fsdp) + 4 * per_tensor * frac(fsdp)
  total += 2 * 4 * per_tensor / fsdp * frac(data)
  tokens = tokens_per_clip(cfg, clip) / seq * batch_per_device
  act = tokens * cfg.dit.dim * a  # one activation, this device's tokens
  layers = cfg.dit.num_layers
  total += layers * 2 * (2 * passes) * act * frac(tensor)
  impl = cfg.dit.attention
  if seq > 1:
    if impl == "ring":
      total += layers * act / tensor * (seq - 1) * (2 * (passes - 1) + 4)
    else:  # ulysses, or splash / cudnn run per device inside Ulysses
      total += layers * 4 * passes * act / tensor * frac(seq)
  return total


def candidate_layouts(cfg, clip: Clip, chips: int, hbm_bytes: float, batch: int,
                      remats=("full", "dots", "none"), margin: float = 1.0, leaves=None):
  """The layouts the planner proposes for `chips` devices, best first.

  Every (data, fsdp, sequence, tensor) over `chips` whose shards divide evenly (tensor the
  heads and MLP, sequence the tokens, data x fsdp the global `batch`) x remat policy, with
  attention 'splash' at sequence 1 and 'ulysses' (splash per device) or 'ring' beyond;
  kept if the planner's TPU memory estimate is within `margin` x HBM,
  ordered by estimated collective bytes per device. Returns dicts with mesh, remat,
  attention, est_bytes (memory) and est_collective_bytes.
  """
  leaves = param_leaves(cfg) if leaves is None else leaves
  tokens = tokens_per_clip(cfg, clip)
  d = cfg.dit
  out = []
  for tensor in _divisors(chips):
    if d.num_heads % tensor or d.ffn_dim % tensor:
      continue
    for seq in _divisors(chips // tensor):
      if tokens % seq:
        continue
      for fsdp in _divisors(chips // (tensor * seq)):
        data = chips // (tensor * seq * fsdp)
        if d.dim % fsdp or batch % (data * fsdp):
          continue
        mesh = dict(data=data, fsdp=fsdp, sequence=seq, tensor=tensor)
        impl = "splash" if seq == 1 else (
            "ulysses" if (d.num_heads // tensor) % seq == 0 else "ring")
        for remat in remats:
          c = cfg.copy_and_resolve_references()
          c.dit.remat_policy, c.dit.attention = remat, impl
          bpd = batch / (data * fsdp)
          mem = memory_per_device(c, clip, mesh, bpd, leaves=leaves, platform="tpu")["total"]
          if mem > margin * hbm_bytes:
            continue
          out.append({"mesh": mesh, "remat": remat, "attention": impl, "est_bytes": mem,
                      "est_collective_bytes": collective_bytes_per_device(c, clip, mesh, bpd,
                                                                          leaves=leaves)})
  return sorted(out, key=lambda r: (r["est_collective_bytes"], r["est_bytes"]))
