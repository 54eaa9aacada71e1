"""`--mode=sample`: prompts (and images / clips) -> videos, for every task (docs/sampling.md).

`VideoPipeline` holds the frozen text encoder, the VAE and the DiT (EMA weights by
default) of a workdir and turns a task into pixels:

  prompt ─► text encoder ─► (emb, mask) ┐
  image / clip ─► VAE encode ─► plan ───┼─► ODE solver over the DiT (CFG) ─► VAE decode
  seed ─► noise ────────────────────────┘

Latents are normalised with the per-channel statistics measured by `--mode=encode`.
Each sample's noise comes from its own seed (sample.seed + index), so a sample does not
depend on which batch it was drawn in.

With `config.weights` (open weights, e.g. Wan 2.1) the DiT, VAE, text encoder and latent
statistics come from that folder (`sora_jax.models.weights`) instead of the workdir; with
`train.lora_rank > 0` the workdir's newest LoRA adapters are merged into the loaded DiT.
"""
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sora_jax import paths
from sora_jax.config_check import ConfigError, sample_jobs
from sora_jax.data import video_io
from sora_jax.data.tfds_folder import crop_resize
from sora_jax.diffusion import schedules, solvers
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import weights
from sora_jax.sampling import tasks
from sora_jax.training import checkpoint, lora


class VideoPipeline:
  """Text encoder + VAE + DiT of a workdir, with jitted encode / denoise / decode."""

  def __init__(self, cfg, workdir: str, use_ema: bool = True, dit_params=None, vae_params=None):
    self.cfg = cfg
    self.vae = vae_lib.vae_from_config(cfg)
    self.dit = dit_lib.dit_from_config(cfg)
    if cfg.weights:
      base, vae_w, self.text, (mu, sigma) = weights.load_open_weights(
          cfg, weights.sampling_mesh(cfg))
      vae_params = vae_w if vae_params is None else vae_params
      if dit_params is None:
        dit_params, self.step = base, 0
        if cfg.train.lora_rank > 0:
          dit_params, self.step = self._with_adapters(base, workdir, use_ema)
    else:
      if vae_params is None:
        vae_params, _ = checkpoint.load_params(paths.vae_checkpoints(workdir), use_ema,
                                               written_by="train_vae")
      if dit_params is None:
        dit_params, self.step = checkpoint.load_params(paths.dit_checkpoints(workdir), use_ema,
                                                       written_by="train")
      mu, sigma = weights.load_latent_stats(workdir)
      self.text = text_lib.load_text_encoder(cfg)
    self.vae_params, self.dit_params = vae_params, dit_params
    self.mu, self.sigma = jnp.asarray(mu), jnp.asarray(sigma)
    self.null_emb, self.null_mask = self.text([""])
    self._checked = set()  # prompts already checked for truncation
    self.temporal = self.vae.temporal_factor
    self._encode = jax.jit(self._encode_impl)
    self._decode = jax.jit(self._decode_impl)
    self._denoise = make_denoise(cfg, self.dit, (self.null_emb, self.null_mask))

  def _with_adapters(self, base, workdir: str, use_ema: bool):
    """(base + the workdir's newest LoRA adapters merged, their step)."""
    where = paths.dit_checkpoints(workdir)
    try:
      adapters, step = checkpoint.load_params(where, use_ema)
    except FileNotFoundError as e:
      raise ConfigError(f"train.lora_rank={self.cfg.train.lora_rank} but {where} has no LoRA "
                        "checkpoint; fine-tune first (--mode=train) or set train.lora_rank=0 to "
                        "sample the base weights") from e
    lora.check_adapters(adapters, dit_lib.param_shapes(self.cfg), self.cfg.train,
                        f"LoRA checkpoint in {where}")
    return jax.jit(lambda b, a: lora.merge(b, a, self.cfg.train))(base, adapters), step

  # ------------------------------------------------------------------ latent <-> pixels
  def _encode_impl(self, vae_params, x_uint8):
    x = x_uint8.astype(jnp.float32) / 127.5 - 1.0
    mean, _ = self.vae.apply({"params": vae_params}, x, method=self.vae.encode)
    return (mean - self.mu) / self.sigma

  def _decode_impl(self, vae_params, z):
    x, _ = vae_lib.decode_chunked(self.vae, {"params": vae_params}, z * self.sigma + self.mu)
    return jnp.round((x + 1.0) * 127.5).astype(jnp.uint8)

  def encode(self, video_BTHWC: np.ndarray) -> jax.Array:
    """uint8 (B, 1+4k, H, W, 3) -> normalised latents (B, 1+k, h, w, C)."""
    return self._encode(self.vae_params, jnp.asarray(video_BTHWC))

  def decode(self, z_BthwC) -> np.ndarray:
    """Normalised latents -> uint8 (B, 1+4(t-1), H, W, 3), chunked (memory flat in t)."""
    return np.asarray(self._decode(self.vae_params, z_BthwC))

  def encode_text(self, prompts: list[str]):
    """(emb, mask) of the prompts; warns once for each prompt the encoder truncates."""
    new = [p for p in dict.fromkeys(prompts) if p not in self._checked]
    for p, n in zip(new, self.text.token_lengths(new)):
      self._checked.add(p)
      if n > self.text.max_length:
        print(f"[sample] warning: prompt {p!r} is {n} tokens; text.max_length="
              f"{self.text.max_length} keeps the first {self.text.max_length}", flush=True)
    return self.text(prompts)

  # ------------------------------------------------------------------ denoising
  def denoise(self, plan: tasks.Plan, seeds: list[int], prompts: list[str], steps: int,
              cfg_scale: float, solver: str = "euler", shift: float | None = None) -> jax.Array:
    """Samples `plan` (batch = len(prompts)) -> normalised latents (B, t, h, w, C)."""
    shape = plan.cond_latents_BTHWC.shape
    tokens = schedules.num_tokens(shape[1:4], self.cfg.dit.patch_size)
    shift = schedules.sample_shift(self.cfg, tokens, shift)
    sig = schedules.sigmas(steps, shift, start=plan.start)
    noise = jnp.stack([jax.random.normal(jax.random.PRNGKey(s), shape[1:]) for s in seeds])
    emb, mask = self.encode_text(prompts)
    return self._denoise(self.dit_params, noise, plan.cond_latents_BTHWC, plan.cond_mask_BT,
                         jnp.asarray(sig), emb, mask, jnp.float32(cfg_scale), solver=solver)

  # ------------------------------------------------------------------ tasks
  def latent_hwc(self, height: int, width: int):
    s = self.vae.spatial_factor
    return (height // s, width // s, self.vae.z_dim)

  def run_task(self, task: str, prompts: list[str], seeds: list[int], frames: int, height: int,
               width: int, *, steps: int, cfg_scale: float, solver: str = "euler",
               image=None, end_image=None, video=None, strength: float = 0.7,
               cond_frames: int = 5, long_window: int = 17, long_overlap: int = 5,
               shift: float | None = None) -> np.ndarray:
    """One task for a batch of prompts -> uint8 videos (B, T, H, W, 3).

    image / end_image: uint8 (H, W, 3); video: uint8 (T, H, W, 3) — already at
    (height, width). shift: as `sample.shift` (> 0 fixed, < 0 the training rule; None:
    the pipeline config's). See `sora_jax.sampling.tasks` for what each task conditions on.
    """
    b = len(prompts)
    hwc = self.latent_hwc(height, width)
    lt = tasks.latent_frames(frames, self.temporal)
    den = lambda plan: self.denoise(plan, seeds, prompts, steps, cfg_scale, solver, shift)
    rep = lambda a: np.repeat(a[None], b, axis=0)
    if task == "t2v":
      return self.decode(den(tasks.t2v(b, lt, hwc)))
    if task == "t2i":
      return self.decode(den(tasks.t2i(b, hwc)))
    if task == "i2v":
      return self.decode(den(tasks.i2v(self.encode(rep(image)[:, None]), lt)))
    if task == "interpolate":
      start = self.encode(rep(image)[:, None])
      end = self._group_latents(rep(np.stack([end_image] * self.temporal)))
      return self.decode(den(tasks.interpolate(start, end, lt)))
    if task == "loop":
      first = (self.encode(rep(image)[:, None]) if image is not None
               else den(tasks.t2i(b, hwc)))
      return self.decode(den(tasks.loop(first, lt)))
    if task == "edit":
      clip = rep(video[:frames])
      return self.decode(den(tasks.edit(self.encode(clip), strength)))
    if task in ("extend", "extend_backward"):
      k_pix = min(cond_frames, len(video))
      k = tasks.latent_frames(k_pix, self.temporal) if task == "extend" else (k_pix - 1) // self.temporal
      if task == "extend":
        ctx = self.encode(rep(video[len(video) - k_pix:]))
        out = self.decode(den(tasks.extend(ctx, lt)))
        return np.concatenate([rep(video), out[:, k_pix:]], axis=1)
      if k < 1:
        raise ConfigError(f"extend_backward needs sample.cond_frames >= {1 + self.temporal}")
      ctx = self._group_latents(rep(video[:k * self.temporal]))
      out = self.decode(den(tasks.extend_backward(ctx, lt)))
      new = 1 + self.temporal * (lt - k - 1)
      return np.concatenate([out[:, :new], rep(video)], axis=1)
    if task == "long":
      return self._long(prompts, seeds, frames, hwc, steps, cfg_scale, solver, long_window,
                        long_overlap, shift)
    raise ConfigError(f"unknown task {task!r}")

  def _group_latents(self, pixels_BFHWC) -> jax.Array:
    """Group latents of F pixel frames (F a multiple of 4), for positions >= 1."""
    return self.encode(np.asarray(tasks.group_clip(jnp.asarray(pixels_BFHWC), self.temporal)))[:, 1:]

  def _long(self, prompts, seeds, frames, hwc, steps, cfg_scale, solver, window, overlap, shift):
    b = len(prompts)
    wl = tasks.latent_frames(window, self.temporal)
    ol = tasks.latent_frames(overlap, self.temporal)
    total = tasks.latent_frames(frames, self.temporal)
    emb, mask = self.encode_text(prompts)
    tokens = schedules.num_tokens((wl, *hwc[:2]), self.cfg.dit.patch_size)
    sig = jnp.asarray(schedules.sigmas(steps, schedules.sample_shift(self.cfg, tokens, shift)))

    def window_fn(noise, cond_latents, cond_mask):
      return self._denoise(self.dit_params, noise, cond_latents, cond_mask, sig, emb, mask,
                           jnp.float32(cfg_scale), solver=solver)

    keys = [jax.random.PRNGKey(s) for s in seeds]  # window 0: the t2v noise of each seed
    latents = tasks.sample_long(window_fn, keys, total, tasks.t2v(b, wl, hwc), ol)
    return self.decode(jnp.asarray(latents))


def make_denoise(cfg, dit, null_text):
  """The jitted sampler: (dit_params, noise, cond_latents, cond_mask, sigmas, emb, mask,
  cfg_scale, solver) -> clean latents, one `solvers.sample` ODE solve with CFG.

  noise / cond_latents (B, t, h, w, C) float32, cond_mask (B, t) bool, sigmas (S,) float32,
  emb (B, L, D) float32, mask (B, L) bool, cfg_scale a float32 scalar, `solver` static.
  null_text: (emb (1, L, D), mask (1, L)) of the empty prompt, the unconditional branch.
  `--mode=sample` runs it and `--mode=compile` compiles it (sora_jax/parallel/aot.py).
  """
  null_emb, null_mask = null_text

  def denoise(dit_params, noise, cond_latents, cond_mask, sigmas, emb, mask, cfg_scale, solver):
    def model_fn(x, t, c):
      # dit.text_mask=False: attend to padded (zero) text slots too, as Wan was trained.
      mask = c[1] if cfg.dit.text_mask else None
      return dit.apply({"params": dit_params}, x, t, c[0], mask)
    b = noise.shape[0]
    uncond = (jnp.broadcast_to(null_emb, (b, *null_emb.shape[1:])),
              jnp.broadcast_to(null_mask, (b, *null_mask.shape[1:])))
    return solvers.sample(model_fn, noise, cond_latents, cond_mask, sigmas, solver=solver,
                          cfg_scale=cfg_scale, cond=(emb, mask), uncond=uncond,
                          prediction=cfg.diffusion.prediction)

  return jax.jit(denoise, static_argnames=("solver",))


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "sample"



def load_inputs(s) -> dict:
  """Reads sample.image / end_image / video, resized/cropped to the sample's size."""
  out = {}
  for key in ("image", "end_image"):
    if s[key]:
      out[key] = crop_resize(video_io.read_image(s[key]), s.height, s.width)
  if s.video:
    clip, _ = video_io.read_video(s.video)
    n = 1 + (len(clip) - 1) // 4 * 4
    out["video"] = np.stack([crop_resize(f, s.height, s.width) for f in clip[:n]])
  return out


def read_prompts(s) -> list[str]:
  if s.prompts_file:
    text = paths.read_text(s.prompts_file)
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
      raise ConfigError(f"sample.prompts_file={s.prompts_file!r} has no prompts")
    return prompts
  return [s.prompt]


def _write_video(writer, out_dir: str, filename: str, video_THWC: np.ndarray, fps) -> str:
  """PyAV encodes to a local file: in a bucket, encode to a temporary one, then copy it."""
  target = paths.path(out_dir) / filename
  if not paths.is_remote(target):
    return writer(str(target), video_THWC, fps)
  with tempfile.TemporaryDirectory() as tmp:
    local = writer(str(epath.Path(tmp) / filename), video_THWC, fps)
    target.write_bytes(epath.Path(local).read_bytes())
  return str(target)


def write_samples(videos: np.ndarray, prompts, seeds, task, out_dir, fps, gif, start_index=0):
  """Writes mp4 (+gif) per sample; returns the samples.json rows."""
  rows = []
  for i, (v, p, seed) in enumerate(zip(videos, prompts, seeds)):
    name = f"{start_index + i:03d}_{task}_{_slug(p)}"
    path = _write_video(video_io.write_mp4, out_dir, name + ".mp4", v, fps)
    row = {"prompt": p, "task": task, "seed": int(seed), "frames": int(v.shape[0]),
           "height": int(v.shape[1]), "width": int(v.shape[2]), "path": path}
    if gif:
      row["gif"] = _write_video(video_io.write_gif, out_dir, name + ".gif", v, fps)
    rows.append(row)
  return rows


def run(cfg, workdir: str) -> None:
  """Every job of the run (the command's sample config, or each line of sample.jobs_file)
  with one pipeline; all of their samples go into one samples.json."""
  t0 = time.time()
  jobs = []
  for _, job in sample_jobs(cfg):  # inputs are read (and a bad file refused) before any model
    jobs.append((job.sample, read_prompts(job.sample), load_inputs(job.sample)))
  pipe = VideoPipeline(cfg, workdir, use_ema=cfg.sample.use_ema)
  out_dir = paths.samples_dir(cfg, workdir)
  paths.path(out_dir).mkdir(parents=True, exist_ok=True)
  rows = []
  for n, (s, prompts, inputs) in enumerate(jobs, 1):
    job = f"job {n}/{len(jobs)} " if len(jobs) > 1 else ""
    for i in range(0, len(prompts), s.batch_size):
      batch = prompts[i:i + s.batch_size]
      seeds = [s.seed + i + j for j in range(len(batch))]
      videos = pipe.run_task(s.task, batch, seeds, s.num_frames, s.height, s.width,
                             steps=s.steps, cfg_scale=s.cfg_scale, solver=s.solver,
                             strength=s.strength, cond_frames=s.cond_frames,
                             long_window=s.long_window, long_overlap=s.long_overlap,
                             shift=s.shift, **inputs)
      rows += write_samples(videos, batch, seeds, s.task, out_dir, cfg.data.fps, s.gif, len(rows))
      print(f"[sample] {job}{i + len(batch)}/{len(prompts)} {s.task} samples ({time.time() - t0:.0f}s)",
            flush=True)
  index = paths.path(out_dir) / "samples.json"
  existing = []
  if index.exists():
    existing = [r for r in json.loads(index.read_text())
                if r["path"] not in {x["path"] for x in rows}]
  index.write_text(json.dumps(existing + rows, indent=1))
  print(f"[sample] wrote {len(rows)} videos and {index}", flush=True)
