"""Wan 2.1 VAE weights -> `sora_jax.models.vae.WanVAE` variables.

Reads diffusers' `AutoencoderKLWan` state dicts (`vae/diffusion_pytorch_model.safetensors`
or `model.state_dict()`) and the original Wan repo's `Wan2.1_VAE.pth` naming (mapped to
diffusers names first). Tensors are numpy arrays (or anything `np.asarray` takes).

Names map one to one: `encoder.down_blocks.0.conv1.weight` ->
`params/encoder/down_blocks_0/conv1/kernel`; torch's (O, I, kt, kh, kw) conv weights
become channels-last (kt, kh, kw, I, O) kernels, 1x1 attention convs become Dense
kernels, RMS-norm `gamma`s become `scale` vectors.
"""
import json
import re

import flax.linen as nn
import jax
import numpy as np

from sora_jax import paths
from sora_jax.models.vae import WanVAE

_LEAF_TO_FLAX = {"weight": "kernel", "bias": "bias", "gamma": "scale"}
_LEAF_TO_TORCH = {v: k for k, v in _LEAF_TO_FLAX.items()}


def vae_kwargs_from_diffusers_config(config: dict) -> dict:
  """WanVAE(**kwargs) for a diffusers `AutoencoderKLWan` config (its config.json dict)."""
  if config.get("is_residual") or config.get("patch_size"):
    raise ValueError("this is a Wan 2.2 VAE (is_residual / patch_size); only the Wan 2.1 "
                     "layout is supported")
  dec = config.get("decoder_base_dim")
  if dec is not None and dec != config.get("base_dim", 96):
    raise ValueError(f"decoder_base_dim={dec} differs from base_dim; only equal widths are supported")
  return dict(base_dim=config.get("base_dim", 96), z_dim=config.get("z_dim", 16),
              dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
              num_res_blocks=config.get("num_res_blocks", 2),
              attn_scales=tuple(config.get("attn_scales", ())),
              temporal_downsample=tuple(config.get("temperal_downsample", (False, True, True))),
              dropout=config.get("dropout", 0.0), in_channels=config.get("in_channels", 3),
              out_channels=config.get("out_channels", 3), resample_shortcuts=False)


def _flax_path(key: str) -> tuple[str, ...]:
  """'encoder.down_blocks.3.resample.1.weight' -> ('encoder', 'down_blocks_3', 'resample', 'kernel')."""
  *parts, leaf = key.split(".")
  out = []
  for p in parts:
    if p.isdigit() and out:
      if out[-1] != "resample":  # resample.1 is the conv inside torch's nn.Sequential.
        out[-1] = f"{out[-1]}_{p}"
    else:
      out.append(p)
  return tuple(out) + (_LEAF_TO_FLAX.get(leaf, leaf),)


def _torch_key(path: tuple[str, ...]) -> str:
  """Inverse of `_flax_path`, for error messages."""
  parts = []
  for p in path[:-1]:
    parts.append(re.sub(r"_(\d+)$", r".\1", p))
    if p == "resample":
      parts.append("1")
  return ".".join(parts + [_LEAF_TO_TORCH.get(path[-1], path[-1])])


def _to_flax(key: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  v = np.asarray(value, dtype=np.float32)
  if len(shape) == 1:  # Biases, and RMS-norm gammas stored as (C, 1, 1[, 1]).
    v = v.reshape(-1)
  elif v.ndim == 5:  # Conv3d (O, I, kt, kh, kw) -> (kt, kh, kw, I, O).
    v = v.transpose(2, 3, 4, 1, 0)
  elif v.ndim == 4 and len(shape) == 2:  # 1x1 Conv2d -> Dense (I, O).
    v = v[:, :, 0, 0].T
  elif v.ndim == 4:  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O).
    v = v.transpose(2, 3, 1, 0)
  if v.shape != tuple(shape):
    raise ValueError(f"tensor {key!r} has shape {np.shape(value)} -> {v.shape}, but WanVAE "
                     f"expects {tuple(shape)}: the checkpoint's config (base_dim, z_dim, "
                     f"dim_mult, ...) does not match the model's")
  return v


def is_wan_original(state_dict: dict) -> bool:
  """True for the original Wan repo naming (encoder.conv1, encoder.downsamples.N, ...)."""
  return any(k.startswith(("encoder.downsamples.", "decoder.upsamples.", "encoder.conv1."))
             for k in state_dict)


def wan_original_to_diffusers(state_dict: dict, vae: WanVAE) -> dict:
  """Renames a `Wan2.1_VAE.pth` state dict to diffusers' `AutoencoderKLWan` names.

  The original decoder keeps its stages in one flat `upsamples` list (per stage
  num_res_blocks + 1 residual blocks, then a Resample unless last); diffusers groups
  them as `up_blocks.i.resnets.j` / `up_blocks.i.upsamplers.0`. Encoder `downsamples.N`
  keep their index as `down_blocks.N`.
  """
  flat_to_block = {}
  j = 0
  for i in range(len(vae.dim_mult)):
    for r in range(vae.num_res_blocks + 1):
      flat_to_block[j] = f"up_blocks.{i}.resnets.{r}"
      j += 1
    if i != len(vae.dim_mult) - 1:
      flat_to_block[j] = f"up_blocks.{i}.upsamplers.0"
      j += 1
  residual = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
              "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
  top = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
  part = {"conv1.": "conv_in.", "head.0.": "norm_out.", "head.2.": "conv_out.",
          "middle.0.": "mid_block.resnets.0.", "middle.1.": "mid_block.attentions.0.",
          "middle.2.": "mid_block.resnets.1."}

  def rename_block(rest):
    for a, b in residual.items():
      if rest.startswith(a):
        return b + rest[len(a):]
    return rest

  out = {}
  for key, value in state_dict.items():
    new = key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
      new = next((b + key[len(a):] for a, b in top.items() if key.startswith(a)), key)
    elif rest.startswith(("downsamples.", "upsamples.")):
      _, n, tail = rest.split(".", 2)
      block = f"down_blocks.{n}" if side == "encoder" else flat_to_block.get(int(n), f"upsamples.{n}")
      new = f"{side}.{block}.{rename_block(tail)}"
    else:
      for a, b in part.items():
        if rest.startswith(a):
          rest = b + rename_block(rest[len(a):])
          break
      new = f"{side}.{rest}"
    out[new] = value
  return out


def convert_state_dict(state_dict: dict, vae: WanVAE) -> dict:
  """A Wan 2.1 VAE state dict (diffusers or original naming) -> {'params': ...} for `vae`.

  Raises ValueError naming the first missing or unexpected tensor, or a shape mismatch.
  """
  if vae.resample_shortcuts:
    raise ValueError("Wan 2.1 VAE weights were trained without resample shortcuts: set "
                     "vae.resample_shortcuts=False to load them")
  if is_wan_original(state_dict):
    state_dict = wan_original_to_diffusers(state_dict, vae)
  s = vae.spatial_factor
  x = jax.ShapeDtypeStruct((1, 1 + vae.temporal_factor, s, s, vae.in_channels), np.float32)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  shapes = nn.unbox(jax.eval_shape(lambda r, v: vae.init(r, v, r, train=False), rng, x))["params"]
  expected = {path: leaf.shape for path, leaf in _flatten(shapes)}
  given = {}
  for key in state_dict:
    path = _flax_path(key)
    if path not in expected:
      raise ValueError(f"unexpected tensor {key!r} in the checkpoint (no parameter "
                       f"{'/'.join(path)} in {_describe(vae)}); does the model config match "
                       f"the checkpoint?")
    given[path] = key
  missing = [p for p in expected if p not in given]
  if missing:
    raise ValueError(f"checkpoint lacks tensor {_torch_key(missing[0])!r} (parameter "
                     f"{'/'.join(missing[0])}) and {len(missing) - 1} more; does the model config "
                     f"match the checkpoint?")
  params = {}
  for path, key in given.items():
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = _to_flax(key, state_dict[key], expected[path])
  return {"params": params}


def _describe(vae: WanVAE) -> str:
  return (f"WanVAE(base_dim={vae.base_dim}, z_dim={vae.z_dim}, dim_mult={vae.dim_mult}, "
          f"num_res_blocks={vae.num_res_blocks}, attn_scales={vae.attn_scales}, "
          f"temporal_downsample={vae.temporal_downsample})")


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def load_state_dict(path: str) -> dict:
  """Tensors of a `.safetensors` or (original Wan) `.pth` file as numpy arrays (a bucket
  file is read through a temporary local copy)."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    with paths.local_file(path) as local:
      return load_file(local)
  if path.endswith((".pth", ".pt", ".bin")):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install torch), or convert it to "
                        f".safetensors first") from e
    with paths.local_file(path) as local:
      sd = torch.load(local, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise ValueError(f"{path!r}: expected a .safetensors or .pth file, or a diffusers vae/ folder")


def load_wan_vae(path: str, vae: WanVAE | None = None) -> tuple[WanVAE, dict]:
  """(WanVAE, {'params': ...}) from a diffusers VAE folder (config.json + safetensors), a
  `Wan2.1_VAE.pth` or a `.safetensors` file. Without a config.json, `vae` (default: the
  Wan 2.1 sizes, `WanVAE()`) says the architecture.
  """
  if paths.path(path).is_dir():
    for sub in ("", "vae"):
      folder = paths.path(path) / sub
      if (folder / "config.json").is_file():
        config = json.loads(paths.read_text(folder / "config.json"))
        vae = WanVAE(**vae_kwargs_from_diffusers_config(config))
        files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".safetensors"))
        if not files:
          raise ValueError(f"{folder} has a config.json but no .safetensors weights")
        state = {}
        for n in files:
          state.update(load_state_dict(str(folder / n)))
        return vae, convert_state_dict(state, vae)
    raise ValueError(f"{path!r} is a folder without config.json (or vae/config.json)")
  vae = vae or WanVAE()
  return vae, convert_state_dict(load_state_dict(path), vae)
