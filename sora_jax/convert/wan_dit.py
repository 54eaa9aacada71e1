"""Wan 2.1 DiT weights -> `models.dit.WanDiT` params.

Reads diffusers' `WanTransformer3DModel` naming (Wan-AI/Wan2.1-T2V-*-Diffusers/transformer)
or the original Wan repo's (Wan-AI/Wan2.1-T2V-*: `blocks.{i}.self_attn.q`, `head.head`, ...;
renamed to diffusers' names first, the way diffusers' single-file loader does).

    params = load_wan_dit("/ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer", cfg)

Mapping (torch Linear weights are (out, in): kernels are transposed; per-block tensors are
stacked on a leading layer axis when cfg.dit.scan_layers):
  patch_embedding.weight (D, C, pt, ph, pw)       -> patch_embedding/kernel (pt*ph*pw*C, D)
  condition_embedder.{time_embedder.linear_{1,2}, time_proj, text_embedder.linear_{1,2}}
                                                  -> condition_embedder/... (same names)
  blocks.{i}.attn{1,2}.to_{q,k,v}, .to_out.0      -> blocks/attn{1,2}/to_{q,k,v,out}
  blocks.{i}.attn{1,2}.norm_{q,k}.weight          -> blocks/attn{1,2}/norm_{q,k}/scale
  blocks.{i}.norm2.{weight,bias}                  -> blocks/norm2/{scale,bias}
  blocks.{i}.ffn.net.0.proj, .ffn.net.2           -> blocks/ffn/fc1, fc2
  blocks.{i}.scale_shift_table (1, 6, D)          -> blocks/scale_shift_table (6, D)
  scale_shift_table (1, 2, D), proj_out           -> scale_shift_table (2, D), proj_out
Every expected tensor must be present with the expected shape and every checkpoint tensor
must be used; otherwise the error names the first offender (I2V image-conditioning tensors
are reported as unused: this DiT is T2V).

`lazy_wan_params` does the same checks without reading any tensor data: each parameter
becomes a `LazyTensor` whose `read(index)` converts only the requested slice, reading only
the rows/columns it needs from the memory-mapped safetensors. That is what lets every host
of a multi-host job build its own shards (`sora_jax.models.weights`) without ever holding
the whole model.
"""
import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.convert.safetensors_io import read_tensors
from sora_jax.models import dit as dit_lib

# Original Wan repo -> diffusers, applied in order to each name (as diffusers'
# convert_wan_transformer_to_diffusers does; the original orders its norms 1, 3, 2).
_ORIGINAL_RENAMES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"), ("self_attn", "attn1"),
    (".o.", ".to_out.0."), (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."),
    ("head.modulation", "scale_shift_table"), ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"), ("norm3", "norm2"), ("norm__placeholder", "norm3"),
)
# Present in some diffusers exports, unused by the T2V model (diffusers ignores them too).
_IGNORED = ("norm_added_q",)


def original_to_diffusers_names(sd: dict) -> dict:
  """Original Wan repo naming -> diffusers naming (other names pass through unchanged)."""
  out = {}
  for name, arr in sd.items():
    name = name.removeprefix("model.diffusion_model.")
    for old, new in _ORIGINAL_RENAMES:
      name = name.replace(old, new)
    out[name] = arr
  return out


def _is_original(sd) -> bool:
  return any(k.removeprefix("model.diffusion_model.").startswith(("head.head", "text_embedding."))
             for k in sd)


def _block_sources(i: int, layer) -> dict[tuple, tuple[str, str]]:
  """Our path inside one block -> (torch name, kind) for block i; kind says how to convert."""
  p = f"blocks.{i}."
  out = {("scale_shift_table",): (p + "scale_shift_table", "squeeze0")}
  for a in ("attn1", "attn2"):
    for ours, theirs in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"),
                         ("to_out", "to_out.0")):
      out[(a, ours, "kernel")] = (f"{p}{a}.{theirs}.weight", "linear")
      out[(a, ours, "bias")] = (f"{p}{a}.{theirs}.bias", "copy")
    if "norm_q" in layer[a]:
      out[(a, "norm_q", "scale")] = (f"{p}{a}.norm_q.weight", "copy")
      out[(a, "norm_k", "scale")] = (f"{p}{a}.norm_k.weight", "copy")
  if "norm2" in layer:
    out[("norm2", "scale")] = (p + "norm2.weight", "copy")
    out[("norm2", "bias")] = (p + "norm2.bias", "copy")
  for ours, theirs in (("fc1", "ffn.net.0.proj"), ("fc2", "ffn.net.2")):
    out[("ffn", ours, "kernel")] = (f"{p}{theirs}.weight", "linear")
    out[("ffn", ours, "bias")] = (f"{p}{theirs}.bias", "copy")
  return out


def _top_sources() -> dict[tuple, tuple[str, str]]:
  out = {("patch_embedding", "kernel"): ("patch_embedding.weight", "conv3d"),
         ("patch_embedding", "bias"): ("patch_embedding.bias", "copy"),
         ("scale_shift_table",): ("scale_shift_table", "squeeze0"),
         ("proj_out", "kernel"): ("proj_out.weight", "linear"),
         ("proj_out", "bias"): ("proj_out.bias", "copy")}
  for mod in ("time_embedder.linear_1", "time_embedder.linear_2", "time_proj",
              "text_embedder.linear_1", "text_embedder.linear_2"):
    path = ("condition_embedder",) + tuple(mod.split("."))
    out[path + ("kernel",)] = (f"condition_embedder.{mod}.weight", "linear")
    out[path + ("bias",)] = (f"condition_embedder.{mod}.bias", "copy")
  return out


def _converted_shape(shape: tuple, kind: str) -> tuple:
  """Shape of a torch tensor of `shape` after conversion `kind` (no data read)."""
  shape = tuple(shape)
  if kind == "linear":
    return shape[::-1]
  if kind == "conv3d":
    return (math.prod(shape[1:]), shape[0]) if len(shape) == 5 else shape
  if kind == "squeeze0" and len(shape) == 3:
    return shape[1:]
  return shape


def _read(arr: np.ndarray, kind: str, idx: tuple) -> np.ndarray:
  """converted(arr)[idx], touching only the part of (memory-mapped) `arr` that idx needs."""
  if kind == "linear":  # converted = arr.T, so converted[i, j] = arr[j, i].
    return np.asarray(arr[idx[::-1]]).T
  if kind == "conv3d":  # (D, C, pt, ph, pw) -> (pt*ph*pw*C, D); the patch embedding is small.
    return np.asarray(arr).transpose(2, 3, 4, 1, 0).reshape(-1, arr.shape[0])[idx]
  if kind == "squeeze0" and arr.ndim == 3:
    return np.asarray(arr[(0,) + idx])
  return np.asarray(arr[idx])


@dataclasses.dataclass(frozen=True, eq=False)
class LazyTensor:
  """A converted parameter, read on demand: `read(index)` -> numpy slice in `dtype`.

  `index` is a tuple of slices, one per dimension (what `jax.make_array_from_callback`
  passes); `numpy()` reads the whole parameter.
  """
  shape: tuple[int, ...]
  dtype: np.dtype
  read: Callable[[tuple], np.ndarray]

  def numpy(self) -> np.ndarray:
    return self.read(tuple(slice(None) for _ in self.shape))


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def lazy_wan_params(sd: dict[str, np.ndarray], cfg) -> dict:
  """diffusers-named Wan state dict -> params tree of `LazyTensor`s (cfg.dit.param_dtype).

  Reads no tensor data. Raises KeyError / ValueError naming the first missing, mis-shaped
  or unused tensor.
  """
  sd = {k: v for k, v in sd.items() if not any(s in k for s in _IGNORED)}
  expected = nn.unbox(dit_lib.param_shapes(cfg))
  dtype = jnp.dtype(cfg.dit.param_dtype)
  n = cfg.dit.num_layers
  used = set()

  def fetch(torch_name, kind, want_shape):
    """Checks one tensor; returns idx -> its converted slice."""
    if torch_name not in sd:
      raise KeyError(f"Wan checkpoint is missing tensor {torch_name!r} (config dit/text/vae "
                     "shapes must match the checkpoint)")
    arr = sd[torch_name]
    shape = _converted_shape(arr.shape, kind)
    if shape != tuple(want_shape):
      raise ValueError(f"Wan tensor {torch_name!r} converts to shape {shape}, but this config "
                       f"expects {tuple(want_shape)}; check dit.dim/ffn_dim/num_heads/patch_size, "
                       "vae.z_dim and text.dim")
    used.add(torch_name)
    return lambda idx: _read(arr, kind, idx).astype(dtype)

  def lazy(shape, read):
    return LazyTensor(tuple(shape), dtype, read)

  params = {}
  for path, (name, kind) in _top_sources().items():
    want = _get(expected, path).shape
    _set(params, path, lazy(want, fetch(name, kind, want)))
  if cfg.dit.scan_layers:
    layer = expected["blocks"]
    readers = {}
    for i in range(n):
      for path, (name, kind) in _block_sources(i, layer).items():
        readers.setdefault(path, []).append(fetch(name, kind, _get(layer, path).shape[1:]))
    for path, per_layer in readers.items():
      # Stacked on a leading layer axis: index 0 picks layers, the rest slices each layer.
      read = lambda idx, r=per_layer: np.stack([f(idx[1:]) for f in r[idx[0]]])
      _set(params, ("blocks",) + path, lazy(_get(layer, path).shape, read))
  else:
    for i in range(n):
      layer = expected[f"blocks_{i}"]
      for path, (name, kind) in _block_sources(i, layer).items():
        want = _get(layer, path).shape
        _set(params, (f"blocks_{i}",) + path, lazy(want, fetch(name, kind, want)))
  extra = sorted(set(sd) - used)
  if extra:
    raise ValueError(f"Wan checkpoint has {len(extra)} tensor(s) this DiT does not use, first "
                     f"{extra[0]!r} (more layers than dit.num_layers={n}? an I2V checkpoint?)")
  return params


def wan_params_from_diffusers(sd: dict[str, np.ndarray], cfg) -> dict:
  """diffusers-named Wan state dict (numpy) -> params (numpy, cfg.dit.param_dtype).

  Raises KeyError / ValueError naming the first missing, mis-shaped or unused tensor.
  """
  return jax.tree.map(lambda t: t.numpy(), lazy_wan_params(sd, cfg))


def kernel_names(cfg) -> dict[tuple, list[str]]:
  """Our path of every block Linear kernel -> its diffusers tensor name(s), one per layer.

  Paths are as in the params tree (('blocks', 'attn1', 'to_q', 'kernel') under scan, with
  one name per layer in layer order; ('blocks_3', ...) with one name otherwise). Used to
  write adapted kernels back under their checkpoint names.
  """
  expected = nn.unbox(dit_lib.param_shapes(cfg))
  out = {}
  for i in range(cfg.dit.num_layers):
    prefix = ("blocks",) if cfg.dit.scan_layers else (f"blocks_{i}",)
    layer = expected[prefix[0]]
    for path, (name, kind) in _block_sources(i, layer).items():
      if kind == "linear":
        out.setdefault(prefix + path, []).append(name)
  return out


def wan_params(sd: dict[str, np.ndarray], cfg) -> dict:
  """Either naming (diffusers or original Wan repo) -> params."""
  if _is_original(sd):
    sd = original_to_diffusers_names(sd)
  return wan_params_from_diffusers(sd, cfg)


def to_diffusers_names(sd: dict) -> dict:
  """Either naming -> diffusers naming (original Wan repo names are renamed)."""
  return original_to_diffusers_names(sd) if _is_original(sd) else sd


def lazy_wan(sd: dict[str, np.ndarray], cfg) -> dict:
  """Either naming -> params tree of `LazyTensor`s (nothing read yet)."""
  return lazy_wan_params(to_diffusers_names(sd), cfg)


def load_wan_dit(path: str, cfg) -> dict:
  """Params (numpy, host memory) from a .safetensors file or a folder of shards."""
  return wan_params(read_tensors(path), cfg)
