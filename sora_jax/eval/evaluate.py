"""`--mode=eval`: VAE PSNR/SSIM, prompt adherence and task figures of a workdir -> WORKDIR/eval.json.

- vae: PSNR/SSIM of VAE reconstructions of validation clips.
- adherence: validation prompts sampled as t2v and scored by the ShapesWorld detector
  against their specs, beside the ground-truth clips of the same prompts (the ceiling)
  and the ratio model / ground truth, overall and per attribute.
- tasks: i2v first-frame PSNR (output frame 0 vs the given image), extension seam
  (mean |Δ| across the seam vs within the given clip), interpolation endpoint PSNR
  (first vs start image, last vs end image) and loop closure (mean |first − last|),
  each over ground-truth validation clips.
"""
import json
import time

import jax
import numpy as np

from sora_jax import paths
from sora_jax.config_check import parse_buckets
from sora_jax.data import build as build_lib
from sora_jax.eval import adherence, image_metrics
from sora_jax.sampling.sample import VideoPipeline
from sora_jax.training import train_vae


def _mean_abs(a, b) -> float:
  return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def task_figures(pipe: VideoPipeline, examples: list[dict], cfg, batch: int) -> dict:
  """Fidelity of the conditioned tasks on ground-truth clips (uint8 scale for |Δ|)."""
  e = cfg.eval
  kw = dict(steps=e.steps, cfg_scale=e.cfg_scale, solver=cfg.sample.solver)
  wanted = [t.strip() for t in e.tasks.split(",") if t.strip()]
  figs = {}
  ex = examples[:batch]
  prompts = [x["prompt"] for x in ex]
  seeds = list(range(len(ex)))
  t, h, w = ex[0]["video"].shape[:3]
  if "i2v" in wanted:
    ps = [image_metrics.psnr(pipe.run_task("i2v", [p], [s], t, h, w, image=x["video"][0], **kw)[0, 0],
                             x["video"][0]) for x, p, s in zip(ex, prompts, seeds)]
    figs["i2v_first_frame_psnr"] = float(np.mean(ps))
  if "extend" in wanted:
    k = cfg.sample.cond_frames
    seam, within = [], []
    for x, p, s in zip(ex, prompts, seeds):
      out = pipe.run_task("extend", [p], [s], t, h, w, video=x["video"], cond_frames=k, **kw)[0]
      n = len(x["video"])
      seam.append(_mean_abs(out[n], out[n - 1]))
      within.append(np.mean([_mean_abs(x["video"][i + 1], x["video"][i]) for i in range(n - 1)]))
    figs["extend_seam_abs_diff"] = float(np.mean(seam))
    figs["extend_within_clip_abs_diff"] = float(np.mean(within))
  if "interpolate" in wanted:
    first, last = [], []
    for x, p, s in zip(ex, prompts, seeds):
      out = pipe.run_task("interpolate", [p], [s], t, h, w, image=x["video"][0],
                          end_image=x["video"][-1], **kw)[0]
      first.append(image_metrics.psnr(out[0], x["video"][0]))
      last.append(image_metrics.psnr(out[-1], x["video"][-1]))
    figs["interpolate_start_psnr"] = float(np.mean(first))
    figs["interpolate_end_psnr"] = float(np.mean(last))
  if "loop" in wanted:
    out = pipe.run_task("loop", prompts, seeds, t, h, w, **kw)
    figs["loop_closure_abs_diff"] = float(np.mean([_mean_abs(v[0], v[-1]) for v in out]))
  return figs


def adherence_figures(pipe: VideoPipeline, examples: list[dict], cfg) -> dict:
  """t2v samples of the validation prompts scored against their specs, beside ground truth."""
  e, s = cfg.eval, cfg.sample
  t, h, w = examples[0]["video"].shape[:3]
  videos = []
  for i in range(0, len(examples), s.batch_size):
    chunk = examples[i:i + s.batch_size]
    videos += list(pipe.run_task("t2v", [x["prompt"] for x in chunk],
                                 [s.seed + i + j for j in range(len(chunk))], t, h, w,
                                 steps=e.steps, cfg_scale=e.cfg_scale, solver=s.solver))
  specs = [x["spec"] for x in examples]
  figures = adherence.compare(pipe, videos, [x["video"] for x in examples], specs,
                             s.batch_size)
  model, truth = figures["model"], figures["ground_truth"]
  ratio = {k: (model[k] / truth[k] if model.get(k) is not None and truth.get(k) else None)
           for k in truth if k != "n" and not isinstance(truth[k], dict)}
  return {**figures, "ratio": ratio, "frames": t, "height": h, "width": w}, videos


def run(cfg, workdir: str) -> None:
  t0 = time.time()
  e = cfg.eval
  result = {"workdir": str(paths.path(workdir))}
  vae, vae_params = train_vae.load_vae(cfg, workdir)
  clips = [x["video"] for x in build_lib.validation_examples(cfg, workdir, e.num_vae_clips)]
  result["vae"] = {**train_vae.reconstruction_metrics(vae, vae_params, clips), "n": len(clips)}
  print(f"[eval] VAE PSNR {result['vae']['psnr']:.2f} dB SSIM {result['vae']['ssim']:.4f}",
        flush=True)
  if cfg.weights or paths.path(paths.dit_checkpoints(workdir)).is_dir():
    pipe = VideoPipeline(cfg, workdir, use_ema=cfg.sample.use_ema, vae_params=vae_params)
    result["dit_step"] = int(pipe.step)
    frames = max(b[0] for b in parse_buckets(cfg.data.buckets))
    examples = build_lib.validation_examples(cfg, workdir, e.num_prompts, frames=frames)
    result["adherence"], _ = adherence_figures(pipe, examples, cfg)
    a = result["adherence"]
    print(f"[eval] adherence model {a['model']['match']:.3f}, VAE round trip "
          f"{a['vae_ceiling']['match']:.3f}, ground truth {a['ground_truth']['match']:.3f} "
          f"(ratio {a['ratio']['match']})", flush=True)
    result["tasks"] = task_figures(pipe, examples, cfg, batch=min(8, len(examples)))
    print(f"[eval] tasks {result['tasks']}", flush=True)
  result["eval_seconds"] = time.time() - t0
  path = paths.path(workdir) / "eval.json"
  if jax.process_index() == 0:
    path.write_text(json.dumps(result, indent=1))
  print(f"[eval] wrote {path}", flush=True)
