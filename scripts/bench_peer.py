"""Peer benchmark: sora_jax against the diffusers reference (torch), same shapes and weights.

  taskset -c 0 python scripts/bench_peer.py --config=configs/dit_50m.py --rounds=5

Needs the `parity` extra (torch, diffusers). At the config's `benchmark.*` shapes
(batch, frames x height x width pixels -> latents under `vae.*`, `text.max_length` text
tokens of `text.dim`) and `dit.*` sizes, both sides start from the same weights
(diffusers' init, converted with `sora_jax.convert.wan_dit` / `wan_vae`) and run:

  dit train    sora_jax: the real `--mode=train` step (`training/train.Trainer`: jit,
               donated state; noise, logit-normal t, conditioning masks, velocity MSE,
               global-norm clip 1.0, AdamW, EMA).
               torch: `WanTransformer3DModel` forward, the same velocity MSE, backward,
               `clip_grad_norm_(1.0)`, `torch.optim.AdamW(foreach=True)`, EMA
               (`torch._foreach_lerp_`); eager.
  dit forward  one forward of the batch at one timestep per sample (no grad).
  vae encode / vae decode   the whole clip (`WanVAE.encode` / `.decode` under jit;
               `AutoencoderKLWan.encode` / `.decode`, which run frame chunks with their cache).
  vae train    encode, reparameterised sample, decode; L1 + L2 + KL; backward; AdamW.

Rounds are interleaved (each round runs every program once, sora_jax then torch) so
machine load shifts both sides alike; `--warmup` untimed rounds come first (JIT compile,
torch's allocator warm-up). Prints, per program, both medians and the ratio
torch / sora_jax (> 1: sora_jax is faster), the median of the per-round ratios, and the
same of process CPU time (all threads; on a machine shared with other jobs the wall
time swings with their load, the CPU time of a single-threaded run much less), and one
JSON line with everything. Thread counts: torch gets `--threads` (default: the
CPUs this process may run on, e.g. 1 under `taskset -c 0`); XLA:CPU sizes its pool from
the same affinity mask.

The DiT is built with `dit.pooled_text=False` (Wan 2.1 has no pooled-text branch) and
the VAE with `vae.resample_shortcuts=False` (Wan 2.1 layout), so both sides compute the
same function; the max abs difference of the forward is printed as a check.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sora_jax  # noqa: E402,F401  (first: its host settings precede JAX's threads)
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dit_50m.py", "Config file.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed interleaved rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed rounds first (compile, warm-up).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: CPUs in the affinity mask).")
_PARTS = flags.DEFINE_list("parts", "dit,vae", "Which models to compare: dit, vae.")
_VAE_BATCH = flags.DEFINE_integer("vae_batch", 1, "Clips per VAE call.")


def _timed(fn) -> tuple[float, float]:
  """(wall seconds, this process's CPU seconds, all threads) of fn()."""
  t0, c0 = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------ DiT
def _dit_programs(cfg, torch, diffusers):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from sora_jax.convert import wan_dit  # pylint: disable=g-import-not-at-top
  from sora_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top
  from sora_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.models import text_encoder as text_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.training import benchmark  # pylint: disable=g-import-not-at-top

  d, b = cfg.dit, cfg.benchmark
  with cfg.unlocked():
    cfg.dit.pooled_text = False
    cfg.data.batch_size = b.batch_size
  latent = benchmark.latent_grid(cfg, b.num_frames, b.height, b.width)
  text_len = text_lib.context_length(cfg)
  tokens = schedules.num_tokens(latent[:3], d.patch_size)
  torch.manual_seed(cfg.seed)
  ref = diffusers.WanTransformer3DModel(
      patch_size=tuple(d.patch_size), num_attention_heads=d.num_heads,
      attention_head_dim=d.dim // d.num_heads, in_channels=cfg.vae.z_dim,
      out_channels=cfg.vae.z_dim, text_dim=cfg.text.dim, freq_dim=d.freq_dim,
      ffn_dim=d.ffn_dim, num_layers=d.num_layers, cross_attn_norm=d.cross_attn_norm,
      qk_norm="rms_norm_across_heads" if d.qk_norm else None, eps=d.eps)
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  params = jax.tree.map(jnp.asarray, wan_dit.wan_params(sd, cfg))
  print(f"[peer] DiT {sum(p.numel() for p in ref.parameters()) / 1e6:.1f}M parameters, batch "
        f"{b.batch_size} x {tokens} tokens (latent {latent}), {text_len} text tokens",
        flush=True)

  host = benchmark.synthetic_batch(cfg, b.batch_size, latent, text_len, seed=cfg.seed)
  trainer = benchmark.benchmark_trainer(cfg, latent, base_params=params)
  batch = trainer.to_device(host)
  holder = {"state": trainer.init_state()}

  def jax_train():
    holder["state"], m = trainer.step(holder["state"], batch)
    jax.block_until_ready(m)

  model = dit_lib.dit_from_config(cfg)
  fwd = jax.jit(lambda p, x, t, e, m: model.apply({"params": p}, x, t, e, m))
  x_np = host["latent_mean"]
  t_np = np.random.default_rng(0).uniform(size=b.batch_size).astype(np.float32)
  emb_np = host["caption_emb"]
  mask_all = np.ones(emb_np.shape[:2], bool)  # diffusers attends to every text slot.
  jx = [jnp.asarray(a) for a in (x_np, t_np, emb_np, mask_all)]
  jax_forward = lambda: fwd(params, *jx).block_until_ready()

  x_t = torch.from_numpy(x_np.transpose(0, 4, 1, 2, 3).copy())
  t_t, emb_t = torch.from_numpy(t_np * 1000), torch.from_numpy(emb_np)
  with torch.no_grad():
    ref.eval()
    out_ref = ref(x_t, t_t, emb_t).sample.numpy().transpose(0, 2, 3, 4, 1)
  err = float(np.abs(np.asarray(fwd(params, *jx)) - out_ref).max())
  print(f"[peer] DiT forward max abs difference {err:.2e} (|out| max "
        f"{np.abs(out_ref).max():.2f})", flush=True)

  def torch_forward():
    with torch.no_grad():
      ref(x_t, t_t, emb_t)

  tr = cfg.train
  ref.train()
  opt = torch.optim.AdamW(ref.parameters(), lr=tr.lr, betas=(tr.b1, tr.b2),
                          weight_decay=tr.weight_decay, foreach=True)
  plist = list(ref.parameters())
  ema = [p.detach().clone() for p in plist]
  mean_t = torch.from_numpy(host["latent_mean"].transpose(0, 4, 1, 2, 3).copy())
  std_t = torch.from_numpy(host["latent_std"].transpose(0, 4, 1, 2, 3).copy())
  step = {"n": 0}

  def torch_train():
    x0 = mean_t + std_t * torch.randn_like(mean_t)
    t = torch.sigmoid(cfg.diffusion.t_mean + cfg.diffusion.t_std * torch.randn(b.batch_size))
    eps = torch.randn_like(x0)
    tb = t.view(-1, 1, 1, 1, 1)
    pred = ref((1 - tb) * x0 + tb * eps, t * 1000, emb_t).sample
    loss = torch.mean(torch.square(pred - (eps - x0)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(plist, tr.grad_clip)
    opt.step()
    decay = min(tr.ema_decay, (1.0 + step["n"]) / (10.0 + step["n"]))
    with torch.no_grad():
      torch._foreach_lerp_(ema, plist, 1.0 - decay)  # pylint: disable=protected-access
    step["n"] += 1
    loss.item()

  return {"dit train": (jax_train, torch_train), "dit forward": (jax_forward, torch_forward)}


# ------------------------------------------------------------------ VAE
def _vae_programs(cfg, torch, diffusers):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from sora_jax.convert import wan_vae  # pylint: disable=g-import-not-at-top
  from sora_jax.models.vae import WanVAE  # pylint: disable=g-import-not-at-top

  v, b = cfg.vae, cfg.benchmark
  torch.manual_seed(cfg.seed)
  ref = diffusers.AutoencoderKLWan(
      base_dim=v.base_dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult),
      num_res_blocks=v.num_res_blocks, attn_scales=list(v.attn_scales),
      temperal_downsample=list(v.temporal_downsample))
  vae = WanVAE(**wan_vae.vae_kwargs_from_diffusers_config(dict(ref.config)))
  sd = {k: t.detach().numpy() for k, t in ref.state_dict().items()}
  params = jax.tree.map(jnp.asarray, wan_vae.convert_state_dict(sd, vae))["params"]
  n = _VAE_BATCH.value
  x_np = np.random.default_rng(0).uniform(
      -1, 1, (n, b.num_frames, b.height, b.width, 3)).astype(np.float32)
  x_t = torch.from_numpy(x_np.transpose(0, 4, 1, 2, 3).copy())
  print(f"[peer] VAE {sum(p.numel() for p in ref.parameters()) / 1e6:.2f}M parameters, "
        f"{n} clip(s) of {b.num_frames}x{b.height}x{b.width}", flush=True)

  enc = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=WanVAE.encode))
  dec = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=WanVAE.decode))
  x_j = jnp.asarray(x_np)
  z_j = enc(params, x_j)[0]
  z_t = torch.from_numpy(np.asarray(z_j).transpose(0, 4, 1, 2, 3).copy())
  ref.eval()
  with torch.no_grad():
    ref_mean = ref.encode(x_t).latent_dist.mean.numpy().transpose(0, 2, 3, 4, 1)
  print(f"[peer] VAE encode max abs difference {np.abs(np.asarray(z_j) - ref_mean).max():.2e}",
        flush=True)

  def torch_encode():
    with torch.no_grad():
      ref.encode(x_t)

  def torch_decode():
    with torch.no_grad():
      ref.decode(z_t)

  tr = cfg.vae_train
  tx = optax.adamw(tr.lr, b1=0.9, b2=0.99, weight_decay=0.0)

  def loss_fn(p, x, rng):
    recon, mean, logvar = vae.apply({"params": p}, x, rng)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.mean(jnp.abs(recon - x)) + jnp.mean(jnp.square(recon - x)) + 1e-6 * kl

  @jax.jit
  def jax_step(state, x):
    rng, k = jax.random.split(state["rng"])
    loss, g = jax.value_and_grad(loss_fn)(state["params"], x, k)
    u, opt = tx.update(g, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], u), "opt": opt, "rng": rng}, loss

  holder = {"state": {"params": params, "opt": tx.init(params), "rng": jax.random.key(0)}}

  def jax_train():
    holder["state"], loss = jax_step(holder["state"], x_j)
    loss.block_until_ready()

  ref.train()
  opt = torch.optim.AdamW(ref.parameters(), lr=tr.lr, betas=(0.9, 0.99), weight_decay=0.0,
                          foreach=True)

  def torch_train():
    post = ref.encode(x_t).latent_dist
    recon = ref.decode(post.sample()).sample
    kl = 0.5 * torch.mean(torch.square(post.mean) + torch.exp(post.logvar) - 1.0 - post.logvar)
    loss = (torch.mean(torch.abs(recon - x_t)) + torch.mean(torch.square(recon - x_t))
            + 1e-6 * kl)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()

  return {"vae encode": (lambda: enc(params, x_j)[0].block_until_ready(), torch_encode),
          "vae decode": (lambda: dec(params, z_j).block_until_ready(), torch_decode),
          "vae train": (jax_train, torch_train)}


def main(argv) -> None:
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import diffusers  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  threads = _THREADS.value or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  cfg = _CONFIG.value
  print(f"[peer] {jax.devices()[0].device_kind} / torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, jax "
        f"{jax.__version__}, CPUs in affinity mask: {len(os.sched_getaffinity(0))}", flush=True)
  programs = {}
  if "dit" in _PARTS.value:
    programs.update(_dit_programs(cfg, torch, diffusers))
  if "vae" in _PARTS.value:
    programs.update(_vae_programs(cfg, torch, diffusers))
  times = {name: ([], [], [], []) for name in programs}
  for r in range(_WARMUP.value + _ROUNDS.value):
    for name, (ours, theirs) in programs.items():
      (a, ca), (c, cc) = _timed(ours), _timed(theirs)
      if r >= _WARMUP.value:
        for lst, x in zip(times[name], (a, c, ca, cc)):
          lst.append(x)
      print(f"[peer] round {r}{' (warm-up)' if r < _WARMUP.value else ''} {name}: "
            f"sora_jax {a * 1e3:.0f} ms (CPU {ca * 1e3:.0f}), torch {c * 1e3:.0f} ms "
            f"(CPU {cc * 1e3:.0f})", flush=True)
  rows, report = [], {}
  med = statistics.median
  for name, (ours, theirs, ours_cpu, theirs_cpu) in times.items():
    mo, mt = med(ours), med(theirs)
    per_round = med(t / o for o, t in zip(ours, theirs))
    cpu = med(t / o for o, t in zip(ours_cpu, theirs_cpu))
    report[name] = {"sora_jax_ms": [o * 1e3 for o in ours], "torch_ms": [t * 1e3 for t in theirs],
                    "sora_jax_cpu_ms": [o * 1e3 for o in ours_cpu],
                    "torch_cpu_ms": [t * 1e3 for t in theirs_cpu],
                    "ratio_of_medians": mt / mo, "median_round_ratio": per_round,
                    "median_round_cpu_ratio": cpu}
    rows.append(f"{name:12s} {mo * 1e3:10.0f} {mt * 1e3:10.0f} {mt / mo:7.2f} {per_round:7.2f} "
                f"{cpu:7.2f}")
  print(f"\n{'program':12s} {'sora_jax':>10s} {'torch':>10s} {'ratio':>7s} {'rounds':>7s} "
        f"{'cpu':>7s}\n(medians in ms; ratio = torch / sora_jax, > 1: sora_jax faster; rounds = "
        "median of per-round ratios; cpu = the same of process CPU time, steadier on a loaded "
        "machine)\n" + "\n".join(rows), flush=True)
  print(json.dumps({"threads": threads, "rounds": _ROUNDS.value, "programs": report}))


if __name__ == "__main__":
  app.run(main)
