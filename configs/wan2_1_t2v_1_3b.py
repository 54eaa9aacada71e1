"""Wan 2.1 T2V-1.3B open weights: sample with them, or fine-tune them (LoRA or full).

Architecture: DiT dim 1536 x 30 layers (12 heads, MLP 8960; 1,418,996,800 parameters),
Wan 2.1 VAE (x8 space, x4 time, 16 latent channels; 126,892,531), umT5-XXL text encoder
(4096-d, 512 tokens; 5,680,910,336). Weights: a local copy of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers (fetch: docs/open_weights.md), given as --config.weights.
480p (480 x 832), 81 frames at 16 fps, flow shift 3.0, CFG 5.0, 50 Euler steps; the DiT
predicts the flow velocity noise - x0 (diffusers' WanPipeline convention, checked by
tests/test_open_weights.py).

Sample (one GPU, ~30 GB at 480p; or a TPU VM: add --config.dit.attention=splash):

  python -m sora_jax --config=configs/wan2_1_t2v_1_3b.py --workdir=/runs/wan13 --mode=sample \
    --config.weights=/ckpt/Wan2.1-T2V-1.3B-Diffusers --config.sample.prompt="a corgi surfing"

LoRA fine-tune (`:lora` = rank 32 on q,k,v,o,ffn, lr 1e-4) on one host with 8 x H100 80GB,
mesh fsdp=8 (mesh.fsdp=-1 spans every device): build and encode the videos with the open
VAE and umT5, train, then sample with the adapters (same config and workdir):

  W=/ckpt/Wan2.1-T2V-1.3B-Diffusers
  for MODE in data encode train sample; do
    python -m sora_jax --config=configs/wan2_1_t2v_1_3b.py:lora --workdir=/runs/wan13_lora \
      --mode=$MODE --config.weights=$W --config.data.video_dir=/data/videos
  done
  python scripts/export_lora_merged.py --config=configs/wan2_1_t2v_1_3b.py:lora \
    --workdir=/runs/wan13_lora --out=/runs/wan13_merged --config.weights=$W

Full fine-tuning: leave out `:lora` (f32 params, grads, EMA, AdamW: ~28 GB, 3.6 GB a GPU).
"""
from sora_jax.config_defaults import base_config

# diffusers' AutoencoderKLWan defaults: per-channel statistics of Wan 2.1 VAE latents.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def wan21_common(cfg):
  """What every Wan 2.1 T2V size shares: VAE, umT5, DiT conventions, data, sampling."""
  cfg.data.name = "video_folder"
  cfg.data.buckets = "81x480x832,81x832x480,1x480x832"
  cfg.data.fps = 16
  cfg.data.batch_size = 8

  cfg.vae.base_dim = 96
  cfg.vae.z_dim = 16
  cfg.vae.dim_mult = (1, 2, 4, 4)
  cfg.vae.num_res_blocks = 2
  cfg.vae.attn_scales = ()
  cfg.vae.temporal_downsample = (False, True, True)
  cfg.vae.resample_shortcuts = False  # Wan 2.1 has none (Wan 2.2 does).
  cfg.vae.latents_mean = WAN21_LATENTS_MEAN
  cfg.vae.latents_std = WAN21_LATENTS_STD

  cfg.text.encoder = "umt5"
  cfg.text.path = ""  # '' = WEIGHTS/text_encoder (tokenizer from WEIGHTS/tokenizer).
  cfg.text.max_length = 512  # Wan always pads prompts to 512 tokens...
  cfg.text.dim = 4096
  cfg.text.dtype = "bfloat16"

  cfg.dit.patch_size = (1, 2, 2)
  cfg.dit.freq_dim = 256
  cfg.dit.eps = 1e-6
  cfg.dit.qk_norm = True
  cfg.dit.cross_attn_norm = True
  cfg.dit.text_mask = False  # ...and its DiT attends to all 512 slots, the zero padding too.
  cfg.dit.pooled_text = False  # Wan 2.1 conditions adaLN on time only.
  cfg.dit.scan_layers = True
  cfg.dit.remat_policy = "full"
  cfg.dit.dtype = "bfloat16"
  cfg.dit.attention = "cudnn"  # GPU; on TPU pass --config.dit.attention=splash.

  cfg.diffusion.prediction = "v"  # Wan outputs the flow velocity noise - x0.
  cfg.diffusion.shift = 5.0  # Training timesteps: logit-normal shifted by 5 (fixed).
  cfg.diffusion.shift_resolution_dependent = False
  # Wan 2.1 T2V never saw clean conditioning frames; add e.g. first=0.2 to teach i2v/extend.
  cfg.diffusion.cond_masks = "none=1.0"

  cfg.train.lr = 2e-5
  cfg.train.warmup_steps = 100
  cfg.train.weight_decay = 0.0
  cfg.train.num_steps = 2000
  cfg.train.checkpoint_every = 250
  cfg.train.ema_decay = 0.999

  cfg.sample.num_frames = 81
  cfg.sample.height = 480
  cfg.sample.width = 832
  cfg.sample.steps = 50
  cfg.sample.solver = "euler"
  cfg.sample.cfg_scale = 5.0
  cfg.sample.batch_size = 1
  cfg.sample.long_window = 81
  cfg.sample.long_overlap = 17
  cfg.sample.cond_frames = 17

  cfg.mesh.data = 1
  cfg.mesh.fsdp = -1  # Parameters (and the batch) over every device: 1 GPU or a whole host.
  cfg.mesh.sequence = 1
  cfg.mesh.tensor = 1

  cfg.benchmark.batch_size = 8
  cfg.benchmark.num_frames = 81
  cfg.benchmark.height = 480
  cfg.benchmark.width = 832
  return cfg


def lora_variant(cfg):
  """`:lora`: rank-32 adapters on every attention and MLP kernel of every block."""
  cfg.train.lora_rank = 32
  cfg.train.lora_alpha = 32.0
  cfg.train.lora_targets = "q,k,v,o,ffn"
  cfg.train.lr = 1e-4
  cfg.train.weight_decay = 0.0
  return cfg


def get_config(arg=None):
  if arg not in (None, "", "lora"):
    raise ValueError(f"configs/wan2_1_t2v_1_3b.py:{arg}: the only variant is ':lora'")
  cfg = wan21_common(base_config())
  cfg.dit.dim = 1536
  cfg.dit.ffn_dim = 8960
  cfg.dit.num_heads = 12
  cfg.dit.num_layers = 30
  cfg.dit.param_dtype = "float32"
  cfg.sample.shift = 3.0  # Wan's flow shift for 480p.
  return lora_variant(cfg) if arg == "lora" else cfg
