"""Wan 2.1 T2V-14B shapes: DiT dim 5120 x 40 layers (40 heads), umT5-XXL text, Wan 2.1 VAE.

Target: TPU v5p-256 (128 chips, 32 hosts); mesh data=2, fsdp=16, sequence=4, tensor=1.
FSDP over 16 chips holds the 14.3B f32 parameters + AdamW + EMA (~230 GB) at ~14 GB a chip;
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
from sora_jax.config_defaults import base_config

WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def get_config(arg=None):
  del arg
  cfg = base_config()
  cfg.data.name = "video_folder"
  cfg.data.buckets = "81x720x1280,81x1280x720,81x480x832,1x720x1280"
  cfg.data.fps = 16
  cfg.data.batch_size = 32

  # Wan 2.1 VAE: x8 space, x4 time, 16 latent channels.
  cfg.vae.base_dim = 96
  cfg.vae.z_dim = 16
  cfg.vae.dim_mult = (1, 2, 4, 4)
  cfg.vae.num_res_blocks = 2
  cfg.vae.attn_scales = ()
  cfg.vae.temporal_downsample = (False, True, True)
  cfg.vae.latents_mean = WAN21_LATENTS_MEAN
  cfg.vae.latents_std = WAN21_LATENTS_STD

  cfg.text.encoder = "umt5"
  cfg.text.max_length = 512
  cfg.text.dim = 4096
  cfg.text.dtype = "bfloat16"

  cfg.dit.patch_size = (1, 2, 2)
  cfg.dit.dim = 5120
  cfg.dit.ffn_dim = 13824
  cfg.dit.num_heads = 40
  cfg.dit.num_layers = 40
  cfg.dit.freq_dim = 256
  cfg.dit.eps = 1e-6
  cfg.dit.scan_layers = True
  cfg.dit.remat_policy = "full"
  cfg.dit.dtype = "bfloat16"
  cfg.dit.param_dtype = "float32"
  cfg.dit.attention = "splash"

  cfg.diffusion.prediction = "v"  # Wan predicts the flow velocity.
  cfg.diffusion.shift = 5.0
  cfg.diffusion.shift_resolution_dependent = False

  cfg.train.lr = 1e-5
  cfg.train.warmup_steps = 200
  cfg.train.weight_decay = 0.0
  cfg.train.num_steps = 10000
  cfg.train.checkpoint_every = 250
  cfg.train.ema_decay = 0.9999

  cfg.sample.num_frames = 81
  cfg.sample.height = 720
  cfg.sample.width = 1280
  cfg.sample.steps = 50
  cfg.sample.shift = 5.0
  cfg.sample.cfg_scale = 5.0
  cfg.sample.batch_size = 1

  cfg.mesh.data = 2
  cfg.mesh.fsdp = 16
  cfg.mesh.sequence = 4
  cfg.mesh.tensor = 1

  cfg.benchmark.batch_size = 32
  cfg.benchmark.num_frames = 81
  cfg.benchmark.height = 720
  cfg.benchmark.width = 1280
  return cfg
