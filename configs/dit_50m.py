"""~50M-parameter DiT for throughput measurements on one host (CPU or a single accelerator).

dim 512 x 12 layers (8 heads of 64), MLP 2048: 53M parameters. The benchmark batch is 8
clips of 17 x 64 x 64 pixels (5 x 16 x 16 latents of the demo VAE, 320 tokens a clip), so
every DiT matmul has 2,560 rows: large enough to run near the matmul peak on a CPU.
Float32 compute (CPUs run bf16 matmuls slower), no remat, XLA attention, the layer scan
unrolled (`dit.scan_unroll=0`: straight-line code, the same stacked parameter tree; on
one CPU core the train step ran 8 % faster, 9.9 s against 10.8 s, for a 35 s compile
instead of 2.4 s; docs/results.md "Speed"). Mesh: all local devices on 'data'.

  python -m sora_jax --config=configs/dit_50m.py --workdir=workdir/bench50m --mode=benchmark

Writes workdir/bench50m/benchmark.json (train/sample step time, tokens/s, MFU against the
idle matmul peak measured once before the timed steps, compiled memory, compile time).
"""
from sora_jax.config_defaults import base_config


def get_config(arg=None):
  del arg
  cfg = base_config()
  cfg.dit.dim = 512
  cfg.dit.ffn_dim = 2048
  cfg.dit.num_heads = 8
  cfg.dit.num_layers = 12
  cfg.dit.remat_policy = "none"
  cfg.dit.dtype = "float32"
  cfg.dit.attention = "xla"
  cfg.dit.scan_unroll = 0

  cfg.benchmark.batch_size = 8
  cfg.benchmark.num_frames = 17
  cfg.benchmark.height = 64
  cfg.benchmark.width = 64
  cfg.benchmark.steps = 10
  cfg.benchmark.warmup = 2
  cfg.benchmark.matmul_size = 2048
  return cfg
