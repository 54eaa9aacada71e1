"""Wan 2.1 T2V-1.3B shapes: DiT dim 1536 x 30 layers, umT5-XXL text, Wan 2.1 VAE (z=16).

Target: one host with 8 x H100 80GB; mesh data=1, fsdp=8 (parameters, optimizer state and
EMA sharded 8 ways, batch split over the same devices). 480p, 81 frames (21 x 30 x 52 =
32,760 tokens a clip), bf16 compute, f32 parameters, full remat per block, cuDNN flash
attention. Trains a DiT of Wan's shapes from scratch:

  python -m sora_jax --config=configs/dit_1_3b.py --workdir=/ckpt/wan13 --mode=train \
    --config.text.path=/ckpt/Wan2.1-T2V-1.3B-Diffusers/text_encoder \
    --config.data.video_dir=/data/videos

To sample or fine-tune the public Wan 2.1 weights use configs/wan2_1_t2v_1_3b.py
(docs/open_weights.md). The DiT has 1,418,996,800 parameters (tests/test_dit.py checks
this against the published checkpoint).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "wan2_1_t2v_1_3b", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "wan2_1_t2v_1_3b.py"))
_wan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wan)


def from_scratch(cfg):
  """Wan 2.1's shapes and conventions, trained from scratch with every conditioning mask."""
  cfg.text.path = ""  # Set to a local umT5-XXL folder (text_encoder/ of the Wan repo).
  cfg.dit.text_mask = True  # Our own model: skip padded text slots.
  cfg.diffusion.cond_masks = _wan.base_config().diffusion.cond_masks  # t2v, i2v, extend, ...
  cfg.train.warmup_steps = 200
  cfg.train.num_steps = 10000
  cfg.train.checkpoint_every = 500
  cfg.train.ema_decay = 0.9999
  cfg.sample.shift = 5.0
  cfg.mesh.fsdp = 8
  return cfg


def get_config(arg=None):
  del arg
  cfg = from_scratch(_wan.wan21_common(_wan.base_config()))
  cfg.dit.dim = 1536
  cfg.dit.ffn_dim = 8960
  cfg.dit.num_heads = 12
  cfg.dit.num_layers = 30
  return cfg
