"""VAE benchmark: decode memory against clip length, and the training step's cost.

  python scripts/bench_vae_memory.py                       # chunked decode, 17/65/257 frames
  python scripts/bench_vae_memory.py --whole               # + whole-clip decode, for contrast
  python scripts/bench_vae_memory.py --large --large_run   # + Wan 2.1 sizes (slow on CPU)
  python scripts/bench_vae_memory.py --frames= --train_step  # only the fwd+bwd timing

Memory: each (config, decoder, frames) runs in a fresh subprocess that decodes random
latents of a FRAMESxSIZExSIZE clip, and reports XLA's scratch buffer size for the
compiled decode (`memory_analysis().temp_size_in_bytes`), the peak RSS sampled while the
decode runs, and the process's peak RSS (compile included). Chunked decode keeps the
first two flat in clip length; the whole-clip decode grows with it.

--train_step times a forward+backward (L1 + L2 + KL, grads of every parameter) on a batch
of --train_shape clips for the demo config and the --train_configs alternatives.
Writes --out (JSON) and prints it. CPU timings depend on the machine's load; the JSON
records the load average at the start.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Wan 2.1's released VAE sizes (AutoencoderKLWan defaults).
WAN21 = dict(base_dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
             temporal_downsample=(False, True, True))


def _demo_kwargs() -> dict:
  from sora_jax.config_defaults import base_config
  from sora_jax.models.vae import vae_from_config
  v = vae_from_config(base_config())
  return dict(base_dim=v.base_dim, z_dim=v.z_dim, dim_mult=v.dim_mult,
              num_res_blocks=v.num_res_blocks, attn_scales=v.attn_scales,
              temporal_downsample=v.temporal_downsample)


def _child_decode(job: dict) -> dict:
  """One decode measurement in this (fresh) process."""
  import threading

  import flax.linen as nn
  import jax
  import psutil
  from sora_jax.models import vae as vae_lib

  proc = psutil.Process()
  vae = vae_lib.WanVAE(**job["vae"], chunk_frames=job["chunk_frames"])
  variables = nn.unbox(vae_lib.init_variables(vae, jax.random.key(0)))
  t, h, w, c = vae.latent_shape(job["frames"], job["size"], job["size"])
  z = jax.random.normal(jax.random.key(1), (1, t, h, w, c))
  if job["mode"] == "chunked":
    fn = jax.jit(lambda v, z: vae_lib.decode_chunked(vae, v, z)[0])
  else:
    fn = jax.jit(lambda v, z: vae.apply(v, z, method=vae_lib.WanVAE.decode))
  t0 = time.time()
  compiled = fn.lower(variables, z).compile()
  out = {"compile_s": round(time.time() - t0, 1),
         "xla_temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
         "params": int(sum(x.size for x in jax.tree.leaves(variables)))}
  if job["run"]:
    rss_before = proc.memory_info().rss
    peak = [rss_before]
    done = threading.Event()

    def sample():
      while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.time()
    video = jax.block_until_ready(compiled(variables, z))
    out["run_s"] = round(time.time() - t0, 2)
    done.set()
    sampler.join()
    assert video.shape == (1, job["frames"], job["size"], job["size"], 3)
    out["run_peak_rss_mib"] = round(peak[0] / 2**20, 1)
    out["run_rss_growth_mib"] = round((peak[0] - rss_before) / 2**20, 1)
  import resource
  out["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)
  return out


def _child_train_step(job: dict) -> dict:
  """Median forward+backward time of one VAE config in this process."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from sora_jax.models import vae as vae_lib

  vae = vae_lib.WanVAE(**job["vae"])
  params = nn.unbox(vae_lib.init_variables(vae, jax.random.key(0)))["params"]
  x = jax.random.uniform(jax.random.key(1), tuple(job["shape"]), minval=-1.0, maxval=1.0)

  def loss_fn(p, x, rng):
    recon, mean, logvar = vae.apply({"params": p}, x, rng)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.mean(jnp.abs(recon - x)) + jnp.mean(jnp.square(recon - x)) + 1e-6 * kl

  step = jax.jit(jax.grad(loss_fn))
  t0 = time.time()
  compiled = step.lower(params, x, jax.random.key(2)).compile()
  compile_s = time.time() - t0
  times, cpu = [], []
  for i in range(job["warmup"] + job["steps"]):
    t0, c0 = time.time(), time.process_time()
    jax.block_until_ready(compiled(params, x, jax.random.key(i)))
    times.append(time.time() - t0)
    cpu.append(time.process_time() - c0)
  times, cpu = times[job["warmup"]:], cpu[job["warmup"]:]
  flops = compiled.cost_analysis().get("flops", 0.0)
  # CPU seconds (all threads) are less sensitive than wall time to other jobs' load.
  return {"params": int(sum(a.size for a in jax.tree.leaves(params))),
          "compile_s": round(compile_s, 1), "gflop": round(flops / 1e9, 1),
          "step_s_median": round(float(np.median(times)), 3), "step_s_min": round(min(times), 3),
          "step_cpu_s_median": round(float(np.median(cpu)), 3)}


def _run_child(job: dict) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env,
                       capture_output=True, text=True)
  if res.returncode:
    raise RuntimeError(f"job {job} failed:\n{res.stderr[-3000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def _parse_kwargs(spec: str) -> dict:
  """'base_dim=16,dim_mult=1:2:4,z_dim=8' -> overrides of the demo config."""
  out = {}
  for item in filter(None, spec.split(",")):
    k, v = item.split("=")
    out[k] = tuple(int(a) for a in v.split(":")) if ":" in v else int(v)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--frames", default="17,65,257", help="clip lengths (1+4k); '' skips memory")
  p.add_argument("--size", type=int, default=64, help="height = width of the decoded clip")
  p.add_argument("--whole", action="store_true", help="also measure the whole-clip decode")
  p.add_argument("--large", action="store_true", help="also the Wan 2.1-size VAE (compile only)")
  p.add_argument("--large_run", action="store_true", help="run the Wan 2.1-size decode too")
  p.add_argument("--chunk_frames", type=int, default=-1, help="latent frames per chunk; -1: config")
  p.add_argument("--train_step", action="store_true", help="time forward+backward")
  p.add_argument("--train_shape", default="8,17,32,32,3", help="B,T,H,W,C of the timed batch")
  p.add_argument("--train_configs", default="base_dim=32,dim_mult=1:2:2",
                 help="';'-separated demo-config overrides timed beside the demo config")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--out", default="vae_bench.json")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args()

  if args.child:
    job = json.loads(args.child)
    fn = _child_train_step if job["kind"] == "train_step" else _child_decode
    print(json.dumps(fn(job)))
    return

  from sora_jax.config_defaults import base_config
  chunk = base_config().vae.chunk_frames if args.chunk_frames < 0 else args.chunk_frames
  result = {"load_average_at_start": os.getloadavg(), "cpu_count": os.cpu_count(),
            "size": args.size, "chunk_frames": chunk, "decode": [], "train_step": []}
  configs = [("demo", _demo_kwargs(), True)]
  if args.large:
    configs.append(("wan2.1", WAN21, args.large_run))
  frames = [int(f) for f in args.frames.split(",") if f]
  for name, kwargs, run in configs:
    for mode in ["chunked"] + (["whole"] if args.whole else []):
      for t in frames:
        job = {"kind": "decode", "vae": kwargs, "mode": mode, "frames": t, "size": args.size,
               "chunk_frames": chunk, "run": run}
        row = {"config": name, "mode": mode, "frames": t, **_run_child(job)}
        print(json.dumps(row), flush=True)
        result["decode"].append(row)
  if args.train_step:
    shape = [int(a) for a in args.train_shape.split(",")]
    variants = [("demo", {})] + [(s, _parse_kwargs(s)) for s in args.train_configs.split(";") if s]
    for name, over in variants:
      job = {"kind": "train_step", "vae": {**_demo_kwargs(), **over}, "shape": shape,
             "warmup": 1, "steps": args.steps}
      row = {"config": name, "shape": shape, **_run_child(job)}
      print(json.dumps(row), flush=True)
      result["train_step"].append(row)
  from sora_jax import paths  # pylint: disable=g-import-not-at-top
  paths.write_json(args.out, result)  # local or gs://, written atomically
  print(json.dumps(result))


if __name__ == "__main__":
  main()
