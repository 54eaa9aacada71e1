"""The config the shipped ShapesWorld model was trained with (written by scripts/export_model.py).

  python -m sora_jax --config=pretrained/shapes/config.py --workdir=pretrained/shapes \
      --mode=sample --config.sample.output_dir=OUT --config.sample.prompt="a red circle moving left"
"""
from sora_jax.config_defaults import base_config


def get_config(arg=None):
  del arg
  cfg = base_config()
  # trained with cfg.data.data_dir = 'workdir/exp80/data' (a training-machine path)
  cfg.data.num_train = 8000
  cfg.data.shuffle_seed = 3
  cfg.diffusion.caption_dropout = 0.1
  cfg.diffusion.cond_masks = 'none=0.5,first=0.15,first_k=0.1,last_k=0.05,first_last=0.1,random=0.1'
  cfg.diffusion.prediction = 'x0'
  cfg.diffusion.shift = 3.0
  cfg.diffusion.shift_base_tokens = 80
  cfg.diffusion.shift_resolution_dependent = True
  cfg.diffusion.t_mean = 0.0
  cfg.diffusion.t_std = 1.0
  cfg.diffusion.x0_loss_t_clip = 1.0
  cfg.dit.attention = 'xla'
  cfg.dit.attention_block = 512
  cfg.dit.cross_attn_norm = True
  cfg.dit.dim = 192
  cfg.dit.dropout = 0.0
  cfg.dit.dtype = 'float32'
  cfg.dit.eps = 1e-06
  cfg.dit.ffn_dim = 768
  cfg.dit.freq_dim = 256
  cfg.dit.num_heads = 4
  cfg.dit.num_layers = 6
  cfg.dit.param_dtype = 'float32'
  cfg.dit.patch_size = (1, 2, 2)
  cfg.dit.pooled_text = True
  cfg.dit.qk_norm = True
  cfg.dit.remat_policy = 'none'
  cfg.dit.rope_theta = 10000.0
  cfg.dit.scan_layers = True
  cfg.dit.text_mask = True
  cfg.seed = 3
  cfg.text.dim = 384
  cfg.text.dtype = 'float32'
  cfg.text.encoder = 'minilm'
  cfg.text.max_length = 80
  cfg.text.path = ''
  cfg.train.checkpoint_every = 2000
  # trained with cfg.train.init_from = 'workdir/init' (a training-machine path): a copy of
  # the model shipped before this one (git 0698434, DiT EMA step 14000 of stage 2); see README.
  cfg.train.keep_checkpoints = 20
  cfg.train.lr = 0.0005
  cfg.train.num_steps = 10000
  cfg.vae.attn_scales = ()
  cfg.vae.base_dim = 16
  cfg.vae.chunk_frames = 4
  cfg.vae.dim_mult = (1, 2, 4)
  cfg.vae.dropout = 0.0
  cfg.vae.latents_mean = ()
  cfg.vae.latents_std = ()
  # The shipped VAE predates vae.logvar_init (then always 0; the default is now -6).
  cfg.vae.logvar_init = 0.0
  cfg.vae.num_res_blocks = 1
  cfg.vae.resample_shortcuts = True
  cfg.vae.temporal_downsample = (True, True)
  cfg.vae.z_dim = 16
  return cfg
