"""LoRA adapters in a workdir: sampling merges them into the open weights, and the merged
export is a diffusers folder that both our loader and diffusers' Wan DiT read back.

The adapters are written straight into a checkpoint (nonzero, different raw and EMA
trees), so no train step needs compiling; tests/test_lora.py covers training.
"""
import glob
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import wan_tiny  # noqa: E402  (tests/ is on sys.path)
from sora_jax import paths  # noqa: E402
from sora_jax.config_check import ConfigError  # noqa: E402
from sora_jax.convert import wan_dit  # noqa: E402
from sora_jax.models import dit as dit_lib  # noqa: E402
from sora_jax.models import weights  # noqa: E402
from sora_jax.training import lora  # noqa: E402
from sora_jax.training.checkpoint import Checkpointer  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")
  wan_tiny.build(path)
  return path


def lora_config(root):
  cfg = wan_tiny.tiny_config(root, "lora")
  cfg.train.lora_rank, cfg.train.lora_alpha = 4, 8.0
  return cfg


def random_adapters(cfg, seed):
  """Adapters with B != 0, so merging changes every targeted kernel."""
  tree = nn.unbox(lora.init_adapters(jax.random.key(seed), dit_lib.param_shapes(cfg), cfg.train))
  r = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(r.standard_normal(x.shape) * 0.1, np.float32), tree)


def write_checkpoint(cfg, workdir, step=3):
  raw, ema = random_adapters(cfg, 1), random_adapters(cfg, 2)
  ckpt = Checkpointer(paths.dit_checkpoints(workdir), every=1)
  ckpt.maybe_save(step, {"params": raw, "ema": ema}, {}, force=True)
  ckpt.close()
  return raw, ema


@pytest.mark.parity
def test_sampling_and_merged_export_use_base_plus_adapters(root, tmp_path):
  from sora_jax.sampling.sample import VideoPipeline  # pylint: disable=g-import-not-at-top
  cfg = lora_config(root)
  wd = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="no LoRA checkpoint"):
    VideoPipeline(cfg, wd)
  raw, ema = write_checkpoint(cfg, wd)
  base = weights.load_dit(cfg)

  # Sampling: base from the weights folder + the workdir's EMA (or raw) adapters.
  pipe = VideoPipeline(cfg, wd)
  want = lora.merge(base, ema, cfg.train)
  assert pipe.step == 3
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  jax.tree.map(close, pipe.dit_params, want)
  assert not np.allclose(pipe.dit_params["blocks"]["attn2"]["to_v"]["kernel"],
                         base["blocks"]["attn2"]["to_v"]["kernel"])

  # Export: every component of the base folder is there; transformer/ holds W + s A @ B.
  out = lora.export_merged(cfg, wd, str(tmp_path / "merged"))
  assert sorted(os.listdir(out)) == sorted(os.listdir(root))
  exported = wan_dit.load_wan_dit(os.path.join(out, "transformer"), cfg)
  jax.tree.map(close, exported, want)
  raw_out = lora.export_merged(cfg, wd, str(tmp_path / "merged_raw"), use_ema=False)
  jax.tree.map(close, wan_dit.load_wan_dit(os.path.join(raw_out, "transformer"), cfg),
               lora.merge(base, raw, cfg.train))
  merged_cfg = lora_config(out)
  merged_cfg.train.lora_rank = 0  # The export is a plain open-weights folder.
  jax.tree.map(close, weights.load_dit(merged_cfg), want)

  # diffusers reads every exported tensor by name and shape, and computes what we compute.
  tdir = os.path.join(out, "transformer")
  ref = diffusers.WanTransformer3DModel.from_config(
      diffusers.WanTransformer3DModel.load_config(tdir)).eval()
  sd = {}  # read with the library's own reader, not ours
  for f in sorted(glob.glob(os.path.join(tdir, "*.safetensors"))):
    sd.update(safetensors.numpy.load_file(f))
  ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  r = np.random.default_rng(0)
  x = r.standard_normal((1, 2, 4, 4, 16)).astype(np.float32)
  t = np.array([0.6], np.float32)
  text = r.standard_normal((1, wan_tiny.TEXT_LEN, 32)).astype(np.float32)
  with torch.no_grad():
    ref_out = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)), torch.from_numpy(t * 1000),
                  torch.from_numpy(text)).sample.numpy().transpose(0, 2, 3, 4, 1)
  ours = dit_lib.dit_from_config(cfg).apply({"params": want}, x, t, text)
  err = np.abs(np.asarray(ours) - ref_out).max()
  print(f"merged export: diffusers vs our merged DiT max abs err {err:.2e} "
        f"(|ref| max {np.abs(ref_out).max():.2f})")
  assert err <= 1e-4, err
