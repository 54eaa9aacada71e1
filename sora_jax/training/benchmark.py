"""`--mode=benchmark`: how fast the DiT trains and samples on this hardware and mesh.

Synthetic data at `config.benchmark` sizes (batch, frames, height, width in pixels; the
latent grid follows the config's VAE), the real train step of `training/train.py` (loss,
AdamW, EMA; sharded by the config's mesh and rules) and one solver step of sampling (the
configured solver with classifier-free guidance, `diffusion/solvers.py`). For each:

  compile time and XLA's compiled memory (`lower().compile().memory_analysis()`),
  median wall time over `benchmark.steps` steps after `benchmark.warmup`, tokens/s,
  model FLOPs (analytic `models.dit.count_flops`; a train step is 3 x forward, the
  remat recompute not counted; a CFG sampling step is 2 x forward), achieved TFLOP/s per
  device and MFU = achieved / peak.

The peak (this file is the one place it is defined): the best rate of chained square
matmuls worth `benchmark.matmul_size`^3 in each dtype on one device (`peak_flops`),
measured once, first thing, while this process runs nothing else; reported beside the
MFU. Nothing is timed beside the steps: a probe run between steps shares the machine's
state with them (on CPU it ran at 57 % of its idle rate in the same run) and inflated
the MFU from ~50 % to 88 %. On a machine shared with other jobs the wall-time MFU is only
as good as the load was steady between the peak and the steps: quote the load with it.
The report also gives `mfu_cpu_time`, the same ratio in FLOP per process CPU second (peak
and steps alike), which leaves out the time the OS gave to other jobs.

Writes WORKDIR/benchmark.json and prints a table. The `data` section of the config is
not used (no data set is needed); `data.batch_size` is replaced by `benchmark.batch_size`.
"""
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import config_check, paths
from sora_jax.data import encode, shapes_world
from sora_jax.diffusion import schedules, solvers
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import train as train_lib


# ------------------------------------------------------------------ sizes
def latent_grid(cfg, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  """Pixel clip size -> latent (T, H, W, C) under cfg's VAE; clear error if it cannot be."""
  err = config_check.latent_grid_error(cfg, frames, height, width)
  if err:
    raise config_check.ConfigError(f"benchmark: {err}")
  return (*config_check.latent_size(cfg, frames, height, width), cfg.vae.z_dim)


def synthetic_batch(cfg, batch: int, latent_thwc, text_len: int, seed: int = 0) -> dict:
  """A host batch shaped like --mode=encode's records (random latents, random text)."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((batch, text_len), bool)
  mask[:, :max(1, text_len // 2)] = True
  emb = rng.standard_normal((batch, text_len, cfg.text.dim), np.float32)
  out = {"latent_mean": rng.standard_normal((batch, *latent_thwc), np.float32),
         "latent_std": np.full((batch, *latent_thwc), 0.1, np.float32),
         "caption_emb": emb, "caption_mask": mask, "prompt_emb": emb, "prompt_mask": mask}
  if cfg.diffusion.binding_weight > 0:  # data.binding_negatives' texts, every clip having one
    neg = rng.standard_normal((batch, text_len, cfg.text.dim), np.float32)
    for e, m, v in encode.NEGATIVE_KEYS.values():
      out |= {e: neg, m: mask, v: np.ones(batch, bool)}
  if cfg.diffusion.motion_weight > 0:  # data.motion_labels: per latent cell, pixel shares
    k = len(shapes_world.MOTION_CLASSES)
    shares = rng.dirichlet(np.ones(k), size=(batch, *latent_thwc[:3]))
    out["motion_labels"] = shares.astype(np.float16)
  return out


# ------------------------------------------------------------------ timing
def benchmark_trainer(cfg, latent_thwc, **trainer_kw) -> train_lib.Trainer:
  """The Trainer that --mode=benchmark, scripts/bench_peer.py and scripts/profile_step.py
  time: batch `cfg.benchmark.batch_size` x `latent_thwc` latents, `text_lib.context_length(cfg)`
  text slots, identity latent statistics and an all-zero null caption (one valid token).
  `trainer_kw` goes to the Trainer (e.g. base_params)."""
  stats = (np.zeros(latent_thwc[-1], np.float32), np.ones(latent_thwc[-1], np.float32))
  return train_lib.Trainer(cfg, stats, text_lib.placeholder_null_text(cfg),
                           (cfg.benchmark.batch_size, *latent_thwc), text_lib.context_length(cfg),
                           **trainer_kw)


def _times(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds over all threads) of fn()."""
  t0, c0 = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


def _matmul_chain(n: int, reps: int, dtype, device):
  """A jitted chain x <- x @ Q (Q orthogonal, so values stay bounded) of `reps` n^3 matmuls."""
  k1, k2 = jax.random.split(jax.random.key(0))
  q, _ = jnp.linalg.qr(jax.random.normal(k2, (n, n), jnp.float32))
  x = jax.device_put(jax.random.normal(k1, (n, n), dtype), device)
  q = jax.device_put(q.astype(dtype), device)
  chain = jax.jit(lambda x, q: jax.lax.fori_loop(0, reps, lambda _, x: x @ q, x))
  chain(x, q).block_until_ready()
  return lambda: chain(x, q).block_until_ready()


def _peak_probe(size: int, dtype, device=None, trials: int = 3):
  """(probe, flops): `probe()` runs `flops` of square matmuls on one device and waits.

  The matmul side is the fastest of size/4, size/2 and size (the same FLOPs each: 64, 8
  or 1 chained matmuls): on CPUs a cache-sized matmul runs faster than a large one, and
  the peak is the best rate the device reaches, not the rate of one arbitrary shape.
  """
  device = device or jax.devices()[0]
  best = None
  for n in sorted({max(128, size // 4), max(128, size // 2), size}):
    probe = _matmul_chain(n, max(1, round((size / n) ** 3)), dtype, device)
    sec = statistics.median(_times(probe)[0] for _ in range(trials))
    flops = 2 * n ** 3 * max(1, round((size / n) ** 3))
    if best is None or flops / sec > best[1] / best[2]:
      best = (probe, flops, sec)
  return best[0], best[1]


def peak_flops(size: int, dtype, steps: int = 5) -> tuple[float, float]:
  """Measured peak per device in `dtype` (see `_peak_probe`): (FLOP/s of wall time,
  FLOP per process CPU second). Run it on an idle process, before anything else."""
  probe, flops = _peak_probe(size, dtype)
  wall, cpu = zip(*(_times(probe) for _ in range(steps)))
  return flops / statistics.median(wall), flops / statistics.median(cpu)


def memory_stats(compiled) -> dict:
  """XLA's compiled memory of one program, bytes per device."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "temp", "alias", "generated_code")}
  out["peak_estimate"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


# ------------------------------------------------------------------ programs
def make_sample_step(cfg, trainer, tokens: int):
  """Jitted one-step sampler over the trainer's mesh: (params, noise, emb, mask) -> x.

  One step of `config.sample.solver` from sigma 1 with classifier-free guidance at
  `config.sample.cfg_scale` (conditional and unconditional branches batched), the null
  text being zeros with one visible token, the schedule shifted for `tokens` per sample as
  `--mode=sample` does. Parameters keep the training sharding; the batch is split over
  (data, fsdp).
  """
  dit = trainer.dit
  shift = schedules.sample_shift(cfg, tokens)
  sig = jnp.asarray(schedules.sigmas(cfg.sample.steps, shift)[:2], jnp.float32)

  def step(params, noise, emb, mask):
    b = noise.shape[0]
    uncond = (jnp.zeros_like(emb), jnp.zeros_like(mask).at[:, 0].set(True))
    model_fn = lambda x, t, c: dit.apply({"params": params}, x, t, c[0], c[1])
    return solvers.sample(model_fn, noise, jnp.zeros_like(noise), jnp.zeros((b, noise.shape[1]),
                                                                             bool),
                          sig, solver=cfg.sample.solver, cfg_scale=cfg.sample.cfg_scale,
                          cond=(emb, mask), uncond=uncond, prediction=cfg.diffusion.prediction)

  batched = lambda nd: mesh_lib.batch_sharding(trainer.mesh, nd)
  return jax.jit(step, in_shardings=(trainer.state_sharding["params"], batched(5), batched(3),
                                     batched(2)),
                 out_shardings=batched(5))


def _time_program(name, compile_fn, args, steps, warmup, donate_state=False):
  """Compiles (timed) and measures memory; then `warmup` + `steps` runs, the last timed."""
  t0 = time.perf_counter()
  compiled = compile_fn()
  compile_s = time.perf_counter() - t0
  holder = {"args": args}

  def once():
    out = compiled(*holder["args"])
    if donate_state:  # The train step donates its state: feed the new one back.
      holder["args"] = (out[0],) + holder["args"][1:]
    jax.block_until_ready(out)

  for _ in range(warmup):
    once()
  step_s, cpu_s = (list(t) for t in zip(*(_times(once) for _ in range(steps))))
  median = statistics.median(step_s)
  print(f"[benchmark] {name}: compiled in {compile_s:.1f}s, median {median * 1e3:.1f} ms",
        flush=True)
  return {"compile_s": compile_s, "median_s": median, "times_s": step_s,
          "cpu_times_s": cpu_s, "memory": memory_stats(compiled)}


def _figures(result: dict, flops: float, tokens: int, peak: tuple[float, float],
             devices: int) -> dict:
  """Throughput and MFU = achieved FLOP/s per device / the idle peak measured first.

  `mfu_cpu_time` is the same ratio in FLOP per process CPU second (step and peak alike):
  on a CPU shared with other jobs it leaves out the time the OS gave to them, so it stays
  put while the wall-time MFU follows the load (with several threads it also counts the
  threads' waiting; equal to `mfu` on an idle machine).
  """
  achieved = flops / result["median_s"] / devices
  per_cpu_s = flops / statistics.median(result["cpu_times_s"])
  return dict(result, model_flops=flops, tokens_per_s=tokens / result["median_s"],
              tflops_per_s_per_device=achieved / 1e12, peak_tflops_per_s=peak[0] / 1e12,
              mfu=achieved / peak[0], mfu_cpu_time=per_cpu_s / peak[1])


def _table(report: dict) -> str:
  rows = [("", "train step", "sample step")]
  tr, sa = report["train"], report["sample"]
  gb = lambda r: f"{r['memory'].get('peak_estimate', 0) / 1e9:.2f}"
  for label, fmt in (("median step (ms)", lambda r: f"{r['median_s'] * 1e3:.1f}"),
                     ("tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
                     ("model GFLOP/step", lambda r: f"{r['model_flops'] / 1e9:,.1f}"),
                     ("TFLOP/s per device", lambda r: f"{r['tflops_per_s_per_device']:.3f}"),
                     ("idle matmul peak TFLOP/s", lambda r: f"{r['peak_tflops_per_s']:.3f}"),
                     ("MFU (vs idle peak)", lambda r: f"{100 * r['mfu']:.1f}%"),
                     ("MFU in CPU time", lambda r: f"{100 * r['mfu_cpu_time']:.1f}%"),
                     ("compile (s)", lambda r: f"{r['compile_s']:.1f}"),
                     ("compiled memory (GB/device)", gb)):
    rows.append((label, fmt(tr), fmt(sa)))
  width = [max(len(r[i]) for r in rows) for i in range(3)]
  return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, width))) for r in rows)


def run(cfg, workdir: str) -> None:
  b = cfg.benchmark
  with cfg.unlocked():
    cfg.data.batch_size = b.batch_size
  latent = latent_grid(cfg, b.num_frames, b.height, b.width)
  text_len = text_lib.context_length(cfg)
  tokens = schedules.num_tokens(latent[:3], cfg.dit.patch_size)
  dtype = jnp.dtype(cfg.dit.dtype)
  # The peak first, while nothing else of this run exists (see the module docstring).
  peaks = {str(jnp.dtype(d)): peak_flops(b.matmul_size, d) for d in {jnp.dtype(jnp.float32),
                                                                       dtype}}
  print("[benchmark] idle matmul peak per device, measured first: " +
        ", ".join(f"{k} {v[0] / 1e12:.3f} TFLOP/s" for k, v in peaks.items()), flush=True)
  trainer = benchmark_trainer(cfg, latent)
  mesh = trainer.mesh
  devices = mesh.devices.size
  print(f"[benchmark] {devices} x {jax.devices()[0].device_kind}, mesh "
        f"{dict(mesh.shape)}, batch {b.batch_size} x {tokens} tokens "
        f"(latent {latent}), {dit_lib.count_params(cfg) / 1e6:.1f}M parameters", flush=True)

  host = synthetic_batch(cfg, b.batch_size, latent, text_len, seed=cfg.seed)
  batch = trainer.to_device(host)
  fwd = dit_lib.count_flops(cfg, *latent[:3], text_len)
  # Programs are traced and compiled under the trainer's mesh and rules (compile_*).
  state = trainer.init_state()
  train = _time_program("train step", lambda: trainer.compile_step(batch),
                        (state, batch, *trainer.extra_step_args()), b.steps, b.warmup,
                        donate_state=True)
  sample_step = make_sample_step(cfg, trainer, tokens)
  noise = jax.device_put(np.random.default_rng(1).standard_normal(
      (b.batch_size, *latent), np.float32), mesh_lib.batch_sharding(mesh, 5))
  sample_args = (trainer.init_state()["params"], noise, batch["caption_emb"],
                 batch["caption_mask"])

  def compile_sample():
    with trainer.context():
      return sample_step.lower(*sample_args).compile()

  sample = _time_program("sample step", compile_sample, sample_args, b.steps, b.warmup)
  guided = 1 if cfg.sample.cfg_scale == 1 else 2
  calls = guided * (2 if cfg.sample.solver == "heun" else 1)
  report = {
      "device_kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
      "host": platform.node(), "devices": devices, "processes": jax.process_count(),
      "mesh": dict(mesh.shape), "dtype": str(dtype), "attention": cfg.dit.attention,
      "remat_policy": cfg.dit.remat_policy, "params": dit_lib.count_params(cfg),
      "batch_size": b.batch_size, "latent_thwc": list(latent), "tokens_per_sample": tokens,
      "text_len": text_len, "forward_flops_per_sample": fwd,
      "peak_flops_per_device": {k: v[0] for k, v in peaks.items()},
      "peak_flops_per_cpu_second": {k: v[1] for k, v in peaks.items()},
      "matmul_size": b.matmul_size,
      "train": _figures(train, 3 * fwd * b.batch_size, tokens * b.batch_size,
                        peaks[str(dtype)], devices),
      "sample": _figures(sample, calls * fwd * b.batch_size, tokens * b.batch_size,
                         peaks[str(dtype)], devices),
  }
  path = paths.path(workdir) / "benchmark.json"
  if jax.process_index() == 0:
    path.write_text(json.dumps(report, indent=2))
  print(_table(report), flush=True)
  print(f"[benchmark] wrote {path}", flush=True)
