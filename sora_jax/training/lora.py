"""LoRA fine-tuning of the DiT as a parameter-tree transform (WanDiT itself is unchanged).

Each targeted block kernel W (in, out) — (layers, in, out) under scan — gets adapters

  lora_a (in, r) ~ N(0, 1/in),   lora_b (r, out) = 0,

and the network runs with the effective kernel W + (alpha / r) A @ B (`merge`), built inside
the train step right before `dit.apply`. B = 0 makes a fresh adapter an exact no-op. Only
the adapters train: the train state's 'params', optimizer moments and 'ema' hold adapters
alone, so checkpoints are adapter-sized; the frozen base (open weights,
`sora_jax.models.weights`) is an argument of the step and never written.

Targets (`train.lora_targets`, comma separated): q, k, v, o -> to_q / to_k / to_v / to_out
of both the self- and the cross-attention; ffn -> the MLP's fc1 and fc2.

Adapter tree: the base tree's path to each targeted module, with {lora_a, lora_b} in place
of {kernel, bias}, e.g. adapters['blocks']['attn1']['to_q'] = {'lora_a': (N, D, r),
'lora_b': (N, r, D)}. Logical axes follow the kernel (lora_a keeps its input axis, lora_b
its output axis, the rank axis is unsharded), so adapters shard like their kernels.

Cost: the merged kernels are a transient full-size copy (sharded like the base) and the
backward pass forms their full-size gradient once per step; optimizer moments and EMA are
adapter-sized (rank 32 on q,k,v,o,ffn is 3.1% of the 1.3B DiT's parameters).

Export: `export_merged` writes W + (alpha/r) A @ B back into a diffusers-layout folder
(scripts/export_lora_merged.py), loadable by `--config.weights` and by diffusers.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.config_check import LORA_TARGETS, ConfigError
from sora_jax.convert import safetensors_io, wan_dit
from sora_jax.models import dit as dit_lib
from sora_jax.models import weights
from sora_jax.training import checkpoint

TARGETS = {"q": ("to_q",), "k": ("to_k",), "v": ("to_v",), "o": ("to_out",),
           "ffn": ("fc1", "fc2")}
assert tuple(TARGETS) == LORA_TARGETS
A, B = "lora_a", "lora_b"


def target_modules(spec: str) -> frozenset[str]:
  """'q,k,v,o,ffn' -> the module names adapted ({'to_q', ..., 'fc1', 'fc2'})."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [n for n in names if n not in TARGETS]
  if bad or not names:
    raise ConfigError(f"train.lora_targets={spec!r}: choose a comma-separated subset of "
                      f"{', '.join(TARGETS)}")
  return frozenset(m for n in names for m in TARGETS[n])


def scale(train_cfg) -> float:
  """alpha / r: the factor on A @ B."""
  if train_cfg.lora_rank < 1:
    raise ConfigError(f"train.lora_rank={train_cfg.lora_rank}: LoRA needs a rank >= 1")
  return float(train_cfg.lora_alpha) / float(train_cfg.lora_rank)


def _walk(tree, prefix=()):
  """(path, leaf) of a nested dict; flax boxes (LogicallyPartitioned) count as leaves."""
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _walk(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def targeted_kernels(param_tree, train_cfg) -> list[tuple]:
  """Paths of the targeted modules' kernels (('blocks', 'attn1', 'to_q', 'kernel'), ...)."""
  modules = target_modules(train_cfg.lora_targets)
  return [p for p, _ in _walk(param_tree)
          if len(p) >= 2 and p[-1] == "kernel" and p[-2] in modules]


def init_adapters(rng, param_shapes, train_cfg) -> dict:
  """Fresh adapters (logically partitioned boxes) for params shaped as `param_shapes`.

  param_shapes: the DiT's boxed abstract params (`models.dit.param_shapes(cfg)`); only
  shapes and logical axis names are used.
  """
  r = int(train_cfg.lora_rank)
  scale(train_cfg)  # Validates the rank.
  adapters = {}
  for i, path in enumerate(targeted_kernels(param_shapes, train_cfg)):
    box = _get(param_shapes, path)
    kernel = nn.unbox(box)
    names = getattr(box, "names", None) or (None,) * kernel.ndim
    *lead, n_in, n_out = kernel.shape
    a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, n_in, r), jnp.float32) * n_in ** -0.5
    b = jnp.zeros((*lead, r, n_out), jnp.float32)
    _set(adapters, path[:-1] + (A,), nn.LogicallyPartitioned(a, (*names[:-1], None)))
    _set(adapters, path[:-1] + (B,), nn.LogicallyPartitioned(b, (*names[:-2], None, names[-1])))
  return adapters


def check_adapters(adapters, param_shapes, train_cfg, where: str = "LoRA adapters") -> None:
  """ConfigError unless `adapters` fit the config's rank, targets and DiT shapes."""
  want = jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(
      lambda: init_adapters(jax.random.key(0), param_shapes, train_cfg))))
  have = jax.tree.map(np.shape, adapters)
  flat_want, flat_have = dict(_walk(want)), dict(_walk(have))
  for path in sorted(set(flat_want) | set(flat_have)):
    if flat_want.get(path) != flat_have.get(path):
      raise ConfigError(
          f"{where}: {'/'.join(path)} is {flat_have.get(path, 'missing')}, but train.lora_rank="
          f"{train_cfg.lora_rank}, lora_targets={train_cfg.lora_targets!r} and the DiT config "
          f"need {flat_want.get(path, 'no such adapter')}; use the config the adapters were "
          "trained with")


def delta(a, b, s: float):
  """(alpha/r) A @ B in float32, batched over leading (layer) axes: (..., in, out)."""
  return s * jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))


def merge(base, adapters, train_cfg):
  """Params with every adapted kernel replaced by W + (alpha/r) A @ B (in W's dtype).

  Untouched subtrees are shared with `base`; with B = 0 the result equals `base` exactly.
  """
  s = scale(train_cfg)
  out = jax.tree.map(lambda x: x, base)  # Fresh containers; leaves shared.
  for path, a in _walk(adapters):
    if path[-1] != A:
      continue
    module = path[:-1]
    w = _get(base, module + ("kernel",))
    new = w.astype(jnp.float32) + delta(a, _get(adapters, module + (B,)), s)
    _set(out, module + ("kernel",), new.astype(w.dtype))
  return out


# ---------------------------------------------------------------------- export
def export_merged(cfg, workdir: str, out_dir: str, use_ema: bool = True) -> str:
  """Writes base + the workdir's adapters as a diffusers-layout folder; returns out_dir.

  transformer/ gets the merged safetensors (each tensor in the base file's dtype, merged in
  float32) and the base's config.json; the other components are symlinked to the base
  folder's (copied where either folder is on a bucket, which has no links) and
  model_index.json is copied, so `--config.weights=out_dir` (and diffusers'
  `WanPipeline.from_pretrained(out_dir)`) load the fine-tuned model. Streams tensor by
  tensor: host memory stays at one tensor, whatever the model size.
  """
  adapters, step = checkpoint.load_params(paths.dit_checkpoints(workdir), use_ema)
  check_adapters(adapters, dit_lib.param_shapes(cfg), cfg.train,
                 f"LoRA checkpoint in {paths.dit_checkpoints(workdir)}")
  src = weights.folder(cfg, "transformer")
  sd = wan_dit.to_diffusers_names(safetensors_io.read_tensors(src))
  names = wan_dit.kernel_names(cfg)
  s = scale(cfg.train)
  stacked = cfg.dit.scan_layers
  # torch name -> (A, B) of that layer; torch Linear weights are (out, in) = our kernel.T.
  pairs = {}
  for path, a in _walk(adapters):
    if path[-1] != A:
      continue
    b = _get(adapters, path[:-1] + (B,))
    for i, name in enumerate(names[path[:-1] + ("kernel",)]):
      pairs[name] = (np.asarray(a[i] if stacked else a), np.asarray(b[i] if stacked else b))

  def produce(name):
    w = sd[name]
    if name not in pairs:
      return np.asarray(w)
    merged = np.asarray(w, np.float32) + np.asarray(delta(*pairs[name], s)).T
    return merged.astype(w.dtype)

  out = paths.path(out_dir)
  (out / "transformer").mkdir(parents=True, exist_ok=True)
  safetensors_io.write_file(
      str(out / "transformer" / "diffusion_pytorch_model.safetensors"),
      {name: (sd[name].shape, sd[name].dtype, lambda n=name: produce(n)) for name in sorted(sd)},
      metadata={"format": "pt", "lora_step": str(step)})
  paths.copy_file(os.path.join(src, "config.json"), out / "transformer" / "config.json")
  root = paths.path(cfg.weights)
  for entry in sorted(p.name for p in root.iterdir()):
    if entry == "transformer":
      continue
    if entry == "model_index.json":
      if not (out / entry).exists():
        paths.copy_file(root / entry, out / entry)
    else:
      paths.link_or_copy(str(root / entry), str(out / entry))
  (out / "transformer" / "lora_merged.json").write_text(json.dumps(
      {"base": str(root), "workdir": str(paths.path(workdir)), "step": int(step),
       "use_ema": use_ema, "lora_rank": cfg.train.lora_rank,
       "lora_alpha": cfg.train.lora_alpha, "lora_targets": cfg.train.lora_targets}))
  return out_dir
