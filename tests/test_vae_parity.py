"""Our WanVAE with converted weights reproduces diffusers' AutoencoderKLWan (torch, CPU f32)."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402

from sora_jax.convert import wan_vae as conv  # noqa: E402
from sora_jax.models.vae import WanVAE, decode_chunked, encode_chunked  # noqa: E402

pytestmark = pytest.mark.parity

# Wan 2.1's layout at tiny width: 4 stages, 2D then two 3D resamples, mid attention.
WAN_TINY = dict(base_dim=16, z_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True])
# The CPU demo's layout: 3 stages, both resamples 3D, one res block. (Encoder attn_scales
# cannot be compared: diffusers and the original Wan code both fail to run them.)
DEMO_LIKE = dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                 temperal_downsample=[True, True])


def _torch_vae(kwargs, seed=0):
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLWan(**kwargs).eval()
  with torch.no_grad():
    # Random gammas/biases so no parameter is checked only at its trivial init.
    for name, p in model.named_parameters():
      if name.endswith(("gamma", "bias")):
        p.add_(0.1 * torch.randn_like(p))
    # Keep the random decoder's output mostly inside [-1, 1], where the clamp is inactive.
    model.decoder.conv_out.weight.mul_(0.7)
  return model


def _ours(model):
  vae = WanVAE(**conv.vae_kwargs_from_diffusers_config(dict(model.config)))
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  return vae, conv.convert_state_dict(sd, vae), sd


@pytest.mark.parametrize("kwargs", [WAN_TINY, DEMO_LIKE], ids=["wan_tiny", "demo_like"])
def test_encode_decode_match_diffusers(kwargs):
  model = _torch_vae(kwargs)
  vae, variables, _ = _ours(model)
  x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
  with torch.no_grad():
    dist = model.encode(x).latent_dist
    ref_mean, ref_logvar = dist.mean.numpy(), dist.logvar.numpy()
    ref_video = model.decode(dist.mean).sample.numpy()

  x_BTHWC = x.numpy().transpose(0, 2, 3, 4, 1)
  mean, logvar = jax.jit(lambda v, x: vae.apply(v, x, method=WanVAE.encode))(variables, x_BTHWC)
  to_ncthw = lambda a: np.asarray(a).transpose(0, 4, 1, 2, 3)
  err_mean = np.abs(to_ncthw(mean) - ref_mean).max()
  err_logvar = np.abs(to_ncthw(logvar) - ref_logvar).max()
  z = ref_mean.transpose(0, 2, 3, 4, 1)
  video = jax.jit(lambda v, z: vae.apply(v, z, method=WanVAE.decode))(variables, z)
  err_video = np.abs(to_ncthw(video) - ref_video).max()
  # diffusers itself decodes one latent frame at a time, so also check our chunked path.
  video_c, _ = decode_chunked(vae, variables, z, chunk_frames=1)
  err_video_c = np.abs(to_ncthw(video_c) - ref_video).max()
  mean_c, _, _ = encode_chunked(vae, variables, x_BTHWC, chunk_frames=1)
  err_mean_c = np.abs(to_ncthw(mean_c) - ref_mean).max()
  print(f"max abs err: mean {err_mean:.2e} logvar {err_logvar:.2e} video {err_video:.2e} "
        f"chunked mean {err_mean_c:.2e} chunked video {err_video_c:.2e} "
        f"(|mean| max {np.abs(ref_mean).max():.2f}, |video| max {np.abs(ref_video).max():.2f}, "
        f"unclamped share "
        f"{(np.abs(ref_video) < 1).mean():.2f})")
  assert video.shape == (1, 9, 32, 32, 3) and mean.shape[1] == 3
  assert (np.abs(ref_video) < 1).mean() > 0.5  # The comparison is not just of clamp limits.
  for err in (err_mean, err_logvar, err_video, err_mean_c, err_video_c):
    assert err <= 1e-4


def _wan_original_names(sd, num_stages, num_res_blocks):
  """diffusers names -> the original Wan repo's names, written from its module layout."""
  prefix = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.",
            "encoder.conv_in.": "encoder.conv1.", "decoder.conv_in.": "decoder.conv1."}
  parts = {"norm_out.": "head.0.", "conv_out.": "head.2.", "mid_block.resnets.0.": "middle.0.",
           "mid_block.attentions.0.": "middle.1.", "mid_block.resnets.1.": "middle.2.",
           "down_blocks.": "downsamples."}
  j = 0
  for i in range(num_stages):  # The decoder's stages are one flat list in the original.
    for r in range(num_res_blocks + 1):
      parts[f"up_blocks.{i}.resnets.{r}."] = f"upsamples.{j}."
      j += 1
    parts[f"up_blocks.{i}.upsamplers.0."] = f"upsamples.{j}."
    j += 1
  residual = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.",
              "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}
  out = {}
  for key, value in sd.items():
    new = next((b + key[len(a):] for a, b in prefix.items() if key.startswith(a)), key)
    for a, b in parts.items():
      new = new.replace("." + a, "." + b, 1)
    for a, b in residual.items():
      new = re.sub(r"(\.(?:downsamples|upsamples|middle)\.\d+\.)" + re.escape(a), r"\1" + b, new)
    out[new] = value
  return out


def test_wan_original_checkpoint_names():
  """A Wan2.1_VAE.pth-named state dict converts to the same parameters as diffusers'."""
  from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
  model = _torch_vae(WAN_TINY)
  vae, variables, sd = _ours(model)
  original = _wan_original_names(sd, len(WAN_TINY["dim_mult"]), WAN_TINY["num_res_blocks"])
  # diffusers' own (fixed-table) converter agrees that these are the original names.
  assert set(convert_wan_vae_to_diffusers(original)) == set(sd)
  assert not any("mid_block" in k or "up_blocks" in k or "conv_in" in k for k in original)
  got = conv.convert_state_dict(original, vae)
  jax.tree.map(np.testing.assert_array_equal, got, variables)


def test_mismatched_checkpoint_names_the_tensor():
  model = _torch_vae(DEMO_LIKE)
  vae, _, sd = _ours(model)
  del sd["decoder.conv_out.bias"]
  with pytest.raises(ValueError, match=r"decoder\.conv_out\.bias"):
    conv.convert_state_dict(sd, vae)
  wider = WanVAE(**{**conv.vae_kwargs_from_diffusers_config(dict(model.config)), "base_dim": 32})
  with pytest.raises(ValueError, match="expects"):
    conv.convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, wider)
  shortcuts = WanVAE(**{**conv.vae_kwargs_from_diffusers_config(dict(model.config)),
                        "resample_shortcuts": True})
  with pytest.raises(ValueError, match="resample_shortcuts=False"):
    conv.convert_state_dict(sd, shortcuts)
