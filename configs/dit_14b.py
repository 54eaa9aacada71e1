"""Wan 2.1 T2V-14B shapes: DiT dim 5120 x 40 layers (40 heads), umT5-XXL text, Wan 2.1 VAE.

Target: TPU v5p-256 (128 chips, 32 hosts); mesh data=2, fsdp=16, sequence=4, tensor=1.
FSDP over 16 chips holds the 14.3B f32 parameters + AdamW + EMA (~230 GB) at ~14 GB a chip
(the whole train step compiles to 57.3 GB a chip of 95 GiB: `--mode=compile
--config.compile.topology=v5:4x4x8`, docs/results.md);
720p, 81 frames is 21 x 45 x 80 = 75,600 tokens a clip, split 4 ways over 'sequence'
(Ulysses: 40 heads / 4). bf16 compute, full remat, splash attention. Run the same command
on every host (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`), with
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set per host:

  python -m sora_jax --config=configs/dit_14b.py --workdir=gs://BUCKET/wan14 --mode=train \
    --config.text.path=/ckpt/Wan2.1-T2V-14B-Diffusers/text_encoder \
    --config.data.video_dir=/data/videos

To sample or fine-tune the public Wan 2.1 weights use configs/wan2_1_t2v_14b.py
(docs/open_weights.md). The DiT has 14,288,491,584 parameters (tests/test_dit.py checks
this against the published checkpoint).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "dit_1_3b", os.path.join(os.path.dirname(os.path.abspath(__file__)), "dit_1_3b.py"))
_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_small)


def get_config(arg=None):
  del arg
  cfg = _small.get_config()
  cfg.data.buckets = "81x720x1280,81x1280x720,81x480x832,1x720x1280"
  cfg.data.batch_size = 32
  cfg.dit.dim = 5120
  cfg.dit.ffn_dim = 13824
  cfg.dit.num_heads = 40
  cfg.dit.num_layers = 40
  cfg.dit.attention = "splash"
  cfg.train.lr = 1e-5
  cfg.train.checkpoint_every = 250
  cfg.sample.height = 720
  cfg.sample.width = 1280
  cfg.mesh.data = 2
  cfg.mesh.fsdp = 16
  cfg.mesh.sequence = 4
  cfg.benchmark.batch_size = 32
  cfg.benchmark.height = 720
  cfg.benchmark.width = 1280
  return cfg
