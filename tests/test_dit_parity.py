"""Converted diffusers WanTransformer3DModel weights give the same predictions in our DiT."""
import numpy as np
import pytest

import jax

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sora_jax.config_defaults import base_config  # noqa: E402
from sora_jax.convert import wan_dit  # noqa: E402
from sora_jax.models import dit  # noqa: E402

pytestmark = pytest.mark.parity

_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
             out_channels=4, text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2,
             rope_max_seq_len=64)


def _cfg(scan=True):
  cfg = base_config()
  cfg.dit.dim, cfg.dit.num_heads, cfg.dit.ffn_dim, cfg.dit.num_layers = 24, 2, 48, 2
  cfg.dit.freq_dim, cfg.dit.scan_layers = 32, scan
  cfg.dit.pooled_text = False  # Wan 2.1 has no pooled-text path.
  cfg.vae.z_dim, cfg.text.dim = 4, 16
  return cfg


@pytest.fixture(scope="module")
def reference():
  """Tiny random Wan DiT, every parameter (norm scales, head, tables) randomised."""
  torch.manual_seed(0)
  model = diffusers.WanTransformer3DModel(**_TINY).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 else 0.0) * 0.5)
  return model, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _run_ref(model, x_BTHWC, timestep, text):
  with torch.no_grad():
    out = model(torch.from_numpy(x_BTHWC.transpose(0, 4, 1, 2, 3)), torch.from_numpy(timestep),
                torch.from_numpy(text)).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("scan", [True, False])
def test_matches_diffusers(reference, scan):
  model, sd = reference
  cfg = _cfg(scan)
  params = wan_dit.wan_params(sd, cfg)
  apply = jax.jit(dit.dit_from_config(cfg).apply)
  r = np.random.default_rng(0)
  b, t, h, w = 2, 3, 4, 6  # Non-square, several frames.
  x = r.standard_normal((b, t, h, w, 4)).astype(np.float32)
  text = r.standard_normal((b, 7, 16)).astype(np.float32)

  t_B = np.array([0.3, 0.9], np.float32)  # One timestep a sample (Wan 2.1's usage).
  ref = _run_ref(model, x, t_B * 1000, text)
  err = np.abs(np.asarray(apply({"params": params}, x, t_B, text)) - ref).max()
  print(f"scan={scan} scalar-t max abs err {err:.2e} (|ref| max {np.abs(ref).max():.2f})")
  assert err <= 1e-4, err

  # Per-frame timesteps == diffusers' per-token timesteps with each token at its frame's t.
  t_BT = r.uniform(size=(b, t)).astype(np.float32)
  t_BT[:, 0] = 0.0
  per_token = np.repeat(t_BT, (h // 2) * (w // 2), axis=1) * 1000
  ref = _run_ref(model, x, per_token, text)
  err = np.abs(np.asarray(apply({"params": params}, x, t_BT, text)) - ref).max()
  print(f"scan={scan} per-frame-t max abs err {err:.2e}")
  assert err <= 1e-4, err


def _to_original_names(sd):
  """diffusers -> original Wan repo names (the inverse of diffusers' single-file renames)."""
  out = {}
  for k, v in sd.items():
    for new, old in (("norm2", "norm__x"), ("norm3", "norm2"), ("norm__x", "norm3"),
                     ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
                     ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
                     ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
                     ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
                     ("condition_embedder.time_proj", "time_projection.1"),
                     ("attn1", "self_attn"), ("attn2", "cross_attn"), (".to_out.0.", ".o."),
                     (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
                     ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head")):
      k = k.replace(new, old)
    k = k.replace("scale_shift_table", "modulation")
    k = "head.modulation" if k == "modulation" else k
    out[k] = v
  return out


def test_original_wan_naming_converts_identically(reference):
  _, sd = reference
  cfg = _cfg()
  original = _to_original_names(sd)
  assert "blocks.0.norm3.weight" in original and "head.head.weight" in original
  a, b = wan_dit.wan_params(sd, cfg), wan_dit.wan_params(original, cfg)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_converter_names_missing_and_extra_tensors(reference):
  _, sd = reference
  cfg = _cfg()
  broken = {k: v for k, v in sd.items() if k != "blocks.1.attn2.to_k.weight"}
  with pytest.raises(KeyError, match="blocks.1.attn2.to_k.weight"):
    wan_dit.wan_params(broken, cfg)
  cfg.dit.num_layers = 1
  with pytest.raises(ValueError, match="'blocks.1."):
    wan_dit.wan_params(sd, cfg)
  cfg = _cfg()
  cfg.dit.ffn_dim = 40
  with pytest.raises(ValueError, match="ffn.net.0.proj.weight"):
    wan_dit.wan_params(sd, cfg)


@pytest.mark.parametrize("kw, cfg_shape", [
    (dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), (1536, 12, 8960, 30)),
    (dict(num_attention_heads=40, ffn_dim=13824, num_layers=40), (5120, 40, 13824, 40))])
def test_scale_param_counts_equal_diffusers(kw, cfg_shape):
  """1.3B / 14B shapes: our eval_shape count == diffusers' (built on the meta device)."""
  with torch.device("meta"):
    ref = diffusers.WanTransformer3DModel(attention_head_dim=128, **kw)
  cfg = base_config()
  cfg.dit.dim, cfg.dit.num_heads, cfg.dit.ffn_dim, cfg.dit.num_layers = cfg_shape
  cfg.vae.z_dim, cfg.text.dim = 16, 4096
  cfg.dit.pooled_text = False
  assert dit.count_params(cfg) == sum(p.numel() for p in ref.parameters())
