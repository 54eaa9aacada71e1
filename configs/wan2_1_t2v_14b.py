"""Wan 2.1 T2V-14B open weights: sample with them, or fine-tune them with LoRA.

Architecture: DiT dim 5120 x 40 layers (40 heads, MLP 13824; 14,288,491,584 parameters),
the same Wan 2.1 VAE and umT5-XXL text encoder as configs/wan2_1_t2v_1_3b.py (whose
`wan21_common` this config reuses). Weights: a local copy of
Wan-AI/Wan2.1-T2V-14B-Diffusers (docs/open_weights.md), given as --config.weights.
480p (480 x 832), 81 frames, flow shift 5.0, CFG 5.0, 50 Euler steps; for 720p add
--config.sample.height=720 --config.sample.width=1280.

The DiT's parameters are bfloat16 here (28.6 GB instead of 57 GB): one 80 GB GPU samples
it whole; mesh.fsdp=-1 shards it over every device the job has (each host reading only
its own slices of the checkpoint).

Sample (one H100/H200; or a TPU v5p-8 VM: add --config.dit.attention=splash):

  python -m sora_jax --config=configs/wan2_1_t2v_14b.py --workdir=/runs/wan14 --mode=sample \
    --config.weights=/ckpt/Wan2.1-T2V-14B-Diffusers --config.sample.prompt="a corgi surfing"

LoRA fine-tune (`:lora` = rank 32 on q,k,v,o,ffn) on one host with 8 x H100 80GB (mesh
fsdp=8), or a TPU v5p-16 slice (8 chips; every host runs the same command with
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, plus
--config.dit.attention=splash):

  W=/ckpt/Wan2.1-T2V-14B-Diffusers
  for MODE in data encode train sample; do
    python -m sora_jax --config=configs/wan2_1_t2v_14b.py:lora --workdir=/runs/wan14_lora \
      --mode=$MODE --config.weights=$W --config.data.video_dir=/data/videos
  done

Full fine-tuning of 14B (f32 master weights + AdamW + EMA, ~230 GB) needs a pod slice:
see configs/dit_14b.py for that mesh (add --config.dit.param_dtype=float32).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "wan2_1_t2v_1_3b", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "wan2_1_t2v_1_3b.py"))
_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_small)


def get_config(arg=None):
  if arg not in (None, "", "lora"):
    raise ValueError(f"configs/wan2_1_t2v_14b.py:{arg}: the only variant is ':lora'")
  cfg = _small.wan21_common(_small.base_config())
  cfg.dit.dim = 5120
  cfg.dit.ffn_dim = 13824
  cfg.dit.num_heads = 40
  cfg.dit.num_layers = 40
  cfg.dit.param_dtype = "bfloat16"
  cfg.sample.shift = 5.0  # Wan's flow shift for the 14B model.
  cfg.train.lr = 1e-5
  cfg.data.batch_size = 8
  if arg == "lora":
    cfg = _small.lora_variant(cfg)
    cfg.train.lr = 5e-5
  return cfg
