"""Per-step cost of the training loop's guards (sora_jax/training/loop.py) on a tiny DiT
train step over 8 CPU devices, in one process with interleaved rounds: no guard / the
`finite` flag read one step late / flag read + the cross-process stop vote.

  python scripts/bench_loop_guards.py STEPS ROUNDS    (docs/scaling.md: 30 5)
"""
import sys
import time

import jax
import numpy as np
jax.config.update("jax_num_cpu_devices", 8)

from sora_jax.config_defaults import base_config  # noqa: E402
from sora_jax.training import loop, train  # noqa: E402

cfg = base_config()
cfg.data.batch_size = 8
cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.num_heads, cfg.dit.num_layers = 32, 64, 2, 2
cfg.text.max_length = 8
L, D = 8, cfg.text.dim
shape = (8, 3, 4, 4, 16)
tr = train.Trainer(cfg, (np.zeros(16, np.float32), np.ones(16, np.float32)),
                   (np.zeros((L, D), np.float32), np.ones(L, bool)), shape, L)
rng = np.random.default_rng(0)
batch = {"latent_mean": rng.normal(size=shape).astype(np.float32),
         "latent_std": np.full(shape, 0.1, np.float32),
         "caption_emb": rng.normal(size=(8, L, D)).astype(np.float32), "caption_mask": np.ones((8, L), bool),
         "prompt_emb": rng.normal(size=(8, L, D)).astype(np.float32), "prompt_mask": np.ones((8, L), bool)}
b = tr.to_device(batch)
state = tr.init_state()
vote = loop.StopVote()
N = int(sys.argv[1])



def run(mode):
  global state
  prev = None
  t = time.perf_counter()
  for _ in range(N):
    state, m = tr.step(state, b)
    if mode == "none":
      continue
    cur = (m["finite"], vote(False)) if mode == "vote" else (m["finite"],)
    if prev is not None:
      jax.device_get(prev)
    prev = cur
  jax.block_until_ready(state)
  return (time.perf_counter() - t) / N



modes = ("none", "flag", "vote")
for m in modes:  # warm-up (compiles)
  run(m)
res = {m: [] for m in modes}
for r in range(int(sys.argv[2])):
  for m in modes:
    res[m].append(run(m))
for m in modes:
  print(m, "median ms/step %.2f" % (1e3 * np.median(res[m])))
