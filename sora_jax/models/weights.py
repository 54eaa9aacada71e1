"""Open weights (Wan 2.1, diffusers folder layout) -> this code base's DiT, VAE and text encoder.

    dit_params, vae_params, text_encoder, (mu, sigma) = load_open_weights(cfg)

`cfg.weights` is a copy (a local folder or a bucket URL, sora_jax.paths) of e.g.
Wan-AI/Wan2.1-T2V-1.3B-Diffusers (docs/open_weights.md):
  transformer/   config.json + diffusion_pytorch_model*.safetensors  (WanTransformer3DModel)
  vae/           config.json + diffusion_pytorch_model.safetensors   (AutoencoderKLWan)
  text_encoder/  config.json + model*.safetensors                    (UMT5EncoderModel)
  tokenizer/     tokenizer.json                                      (google/umt5-xxl's)
The config says the architecture (configs/wan2_1_t2v_*.py); each component's config.json
is checked against it and every tensor must convert (the converters name the first missing,
mis-shaped or unused one). All such problems surface as one-line `ConfigError`s.

Sharded loading: safetensors are memory-mapped and each DiT parameter is built with
`jax.make_array_from_callback` under the sharding its logical axis names get from
`config.mesh.rules`, so a host reads (and converts) only the slices its own devices hold;
a 14B checkpoint never has to fit in one host's memory (from a bucket, each host first
copies the files to its local disk: sora_jax.convert.safetensors_io). The VAE (127M
parameters) and the text encoder are loaded whole onto the default device.

Latent normalisation: z_norm = (z - mu) / sigma with the config's `vae.latents_mean/std`
(Wan's published per-channel statistics) or, when the config has none, the VAE folder's
config.json values; without open weights, the statistics `--mode=encode` measured.
"""
import contextlib
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.config_check import ConfigError, missing_step
from sora_jax.convert import wan_dit, wan_vae
from sora_jax.convert.safetensors_io import read_tensors
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.parallel import mesh as mesh_lib

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
_DOWNLOAD = ("huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir FOLDER "
             "(see docs/open_weights.md)")


class OpenWeights(NamedTuple):
  dit_params: Any  # DiT params tree of jax.Array (sharded when a mesh is given).
  vae_params: Any  # WanVAE params tree of jax.Array.
  text_encoder: text_lib.TextEncoder
  latent_stats: tuple[np.ndarray, np.ndarray]  # Per-channel (mu, sigma), float32.


def folder(cfg, part: str) -> str:
  """cfg.weights/part, or a ConfigError naming what is missing and how to get it."""
  root = cfg.weights
  if not root or not paths.path(root).is_dir():
    raise ConfigError(f"weights={root!r} is not a folder; download the weights first: {_DOWNLOAD}")
  path = os.path.join(root, part)
  if not paths.path(path).is_dir():
    have = sorted(d.name for d in paths.path(root).iterdir() if d.is_dir())
    raise ConfigError(f"weights={root!r} has no {part}/ folder (it has {have}); point "
                      "--config.weights at the diffusers-layout root with "
                      f"{', '.join(SUBFOLDERS)}/")
  return path


def _read_json(path: str) -> dict:
  if not paths.path(path).is_file():
    raise ConfigError(f"{path} is missing; is the weights folder a complete diffusers download?")
  return json.loads(paths.read_text(path))


def _mismatch(where: str, theirs: str, ours: str) -> ConfigError:
  return ConfigError(f"{where} has {theirs} but the config has {ours}; use a config matching "
                     "the checkpoint (configs/wan2_1_t2v_1_3b.py or _14b.py) or override the field")


def check_transformer_config(cfg, hf: dict, where: str = "transformer/config.json") -> None:
  """Raises ConfigError for the first WanTransformer3DModel config field that cfg contradicts."""
  if hf.get("image_dim") is not None or hf.get("added_kv_proj_dim") is not None:
    raise ConfigError(f"{where} is an image-to-video model (image_dim set); only Wan 2.1 T2V "
                      "checkpoints are supported")
  d = cfg.dit
  heads, head_dim = hf.get("num_attention_heads"), hf.get("attention_head_dim")
  checks = [("num_layers", hf.get("num_layers"), "dit.num_layers", d.num_layers),
            ("num_attention_heads", heads, "dit.num_heads", d.num_heads),
            ("ffn_dim", hf.get("ffn_dim"), "dit.ffn_dim", d.ffn_dim),
            ("freq_dim", hf.get("freq_dim"), "dit.freq_dim", d.freq_dim),
            ("in_channels", hf.get("in_channels"), "vae.z_dim", cfg.vae.z_dim),
            ("out_channels", hf.get("out_channels"), "vae.z_dim", cfg.vae.z_dim),
            ("text_dim", hf.get("text_dim"), "text.dim", cfg.text.dim),
            ("cross_attn_norm", hf.get("cross_attn_norm"), "dit.cross_attn_norm",
             d.cross_attn_norm),
            ("eps", hf.get("eps"), "dit.eps", d.eps)]
  if heads is not None and head_dim is not None:
    checks.append(("num_attention_heads * attention_head_dim", heads * head_dim, "dit.dim", d.dim))
  if hf.get("patch_size") is not None:
    checks.append(("patch_size", tuple(hf["patch_size"]), "dit.patch_size", tuple(d.patch_size)))
  if "qk_norm" in hf:
    checks.append(("qk_norm", bool(hf["qk_norm"]), "dit.qk_norm", d.qk_norm))
  for theirs, value, ours, mine in checks:
    if value is not None and value != mine:
      raise _mismatch(where, f"{theirs}={value}", f"{ours}={mine}")
  if d.pooled_text:
    raise ConfigError(f"{where}: Wan 2.1 has no pooled-text conditioning; set "
                      "dit.pooled_text=False")


@contextlib.contextmanager
def _one_line_errors(where: str):
  """Converter / loader KeyError, ValueError, FileNotFoundError -> one-line ConfigError."""
  try:
    yield
  except ConfigError:
    raise
  except (KeyError, ValueError, FileNotFoundError) as e:
    # str(KeyError) would quote the message; everything else reads best as str(e).
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
    raise ConfigError(f"{where}: {' '.join(str(msg).split())}") from e


def _cached(read):
  """make_array_from_callback asks per device; devices holding the same slice read it once."""
  cache = {}

  def callback(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      cache[key] = read(index)
    return cache[key]
  return callback


def load_dit(cfg, mesh=None, axis_rules=None) -> dict:
  """DiT params from weights/transformer: sharded over `mesh` by the logical rules, or (no
  mesh) whole on the default device. Dtype is dit.param_dtype."""
  path = folder(cfg, "transformer")
  check_transformer_config(cfg, _read_json(os.path.join(path, "config.json")))
  with _one_line_errors(f"weights {path}"):
    lazy = wan_dit.lazy_wan(read_tensors(path), cfg)
  if mesh is None:
    return jax.tree.map(lambda t: jnp.asarray(t.numpy()), lazy)
  axis_rules = mesh_lib.rules(cfg) if axis_rules is None else axis_rules
  shardings = nn.unbox(mesh_lib.logical_sharding(dit_lib.param_shapes(cfg), mesh, axis_rules))
  return jax.tree.map(
      lambda t, s: jax.make_array_from_callback(t.shape, s, _cached(t.read)), lazy, shardings)


def _vae_fields(cfg) -> dict:
  v = cfg.vae
  return dict(base_dim=v.base_dim, z_dim=v.z_dim, dim_mult=tuple(v.dim_mult),
              num_res_blocks=v.num_res_blocks, attn_scales=tuple(v.attn_scales),
              temporal_downsample=tuple(bool(t) for t in v.temporal_downsample),
              resample_shortcuts=bool(v.resample_shortcuts))


def load_vae(cfg) -> dict:
  """WanVAE params from weights/vae (its config.json must describe cfg.vae)."""
  path = folder(cfg, "vae")
  hf = _read_json(os.path.join(path, "config.json"))
  with _one_line_errors(f"{path}/config.json"):
    theirs = wan_vae.vae_kwargs_from_diffusers_config(hf)
  for k, mine in _vae_fields(cfg).items():
    if theirs[k] != mine:
      raise _mismatch(f"{path}/config.json", f"{k}={theirs[k]}", f"vae.{k}={mine}")
  with _one_line_errors(f"weights {path}"):
    params = wan_vae.convert_state_dict(read_tensors(path), vae_lib.vae_from_config(cfg))["params"]
  return jax.tree.map(jnp.asarray, params)


def text_config(cfg):
  """cfg with text.path defaulting to weights/text_encoder (a copy; cfg is unchanged)."""
  if cfg.text.path or not cfg.weights:
    return cfg
  out = cfg.copy_and_resolve_references()
  out.text.path = folder(cfg, "text_encoder")
  folder(cfg, "tokenizer")  # load_t5 finds ../tokenizer/tokenizer.json; say so if absent.
  return out


def load_text_encoder(cfg) -> text_lib.TextEncoder:
  """The config's text encoder, from weights/text_encoder unless text.path says otherwise."""
  tcfg = text_config(cfg)
  with _one_line_errors(f"text encoder {tcfg.text.path}"):
    return text_lib.load_text_encoder(tcfg)


def config_latent_stats(cfg) -> tuple[np.ndarray, np.ndarray] | None:
  """(mu, sigma) from vae.latents_mean/std, else weights/vae/config.json; None without both."""
  v = cfg.vae
  if len(v.latents_mean) or len(v.latents_std):
    mu, sigma = np.asarray(v.latents_mean, np.float32), np.asarray(v.latents_std, np.float32)
    where = "vae.latents_mean/std"
  elif cfg.weights:
    path = os.path.join(folder(cfg, "vae"), "config.json")
    hf = _read_json(path)
    if "latents_mean" not in hf or "latents_std" not in hf:
      raise ConfigError(f"{path} has no latents_mean/latents_std; set --config.vae.latents_mean "
                        "and --config.vae.latents_std")
    mu = np.asarray(hf["latents_mean"], np.float32)
    sigma = np.asarray(hf["latents_std"], np.float32)
    where = path
  else:
    return None
  if mu.shape != (v.z_dim,) or sigma.shape != (v.z_dim,) or not (sigma > 0).all():
    raise ConfigError(f"{where}: need {v.z_dim} means and {v.z_dim} positive stds (vae.z_dim), "
                      f"got {mu.shape[0]} and {sigma.shape[0]}")
  return mu, sigma


def latent_stats(cfg, workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """Latent normalisation: the config's / weights' published stats, else workdir's measured."""
  stats = config_latent_stats(cfg)
  if stats is not None:
    return stats
  return load_latent_stats(workdir)


def load_latent_stats(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of VAE latents, measured by --mode=encode (float32)."""
  path = paths.path(paths.latent_stats(workdir))
  if not path.exists():
    raise missing_step(f"no latent statistics ({path} is missing)", "encode")
  s = json.loads(path.read_text())
  return np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)


def sampling_mesh(cfg):
  """The config's mesh when it splits parameters (mesh.fsdp x mesh.tensor > 1), else None.

  Sampling keeps activations unsharded; a mesh only spreads a DiT too large for one device.
  """
  sizes = dict(zip(mesh_lib.AXES, mesh_lib.mesh_shape(cfg.mesh, jax.device_count())))
  return mesh_lib.make_mesh(cfg.mesh) if sizes["fsdp"] * sizes["tensor"] > 1 else None


def load_open_weights(cfg, mesh=None) -> OpenWeights:
  """(dit_params, vae_params, text_encoder, (mu, sigma)) from cfg.weights (module docstring)."""
  if not cfg.weights:
    raise ConfigError("load_open_weights needs --config.weights=FOLDER (a Wan 2.1 diffusers "
                      "folder)")
  return OpenWeights(load_dit(cfg, mesh), load_vae(cfg), load_text_encoder(cfg),
                     config_latent_stats(cfg))
