"""Prompt adherence of a model on freshly generated ShapesWorld prompts (no data set needed).

`score_model` draws validation prompts with their specs and ground-truth clips from
`shapes_world.validation_specs` (seeds disjoint from training), samples each prompt as
t2v, and scores both with the ShapesWorld detector. Used to record and re-check the
shipped model's figure, and for adherence-vs-training-time curves.
"""
import numpy as np

from sora_jax.data import shapes_world
from sora_jax.eval import shapes_detector


def vae_ceiling(pipe, videos, specs, batch_size: int = 8) -> dict:
  """Adherence of ground-truth clips after a VAE round trip (encode, decode).

  No sampler can beat what its VAE reconstructs, so this is the ceiling the latent model
  works under; reported beside the model and the ground truth.
  """
  recon = []
  for i in range(0, len(videos), batch_size):
    recon += list(pipe.decode(pipe.encode(np.stack(videos[i:i + batch_size]))))
  return shapes_detector.adherence(recon, specs)


def compare(pipe, samples, clips, specs, batch_size: int = 8, scores=None) -> dict:
  """{'model', 'vae_ceiling', 'ground_truth'}: detector adherence of the model's samples,
  of the ground-truth clips after a VAE round trip, and of the clips themselves.
  `scores`: the samples' `shapes_detector.score` results, where the caller has them."""
  model = (shapes_detector.adherence(samples, specs) if scores is None
           else shapes_detector.summarize(scores, specs))
  return {"model": model,
          "vae_ceiling": vae_ceiling(pipe, clips, specs, batch_size),
          "ground_truth": shapes_detector.adherence(clips, specs)}


def score_model(pipe, num_prompts: int, frames: int, height: int, width: int, *, steps: int,
                cfg_scale: float, seed: int = 0, batch_size: int = 8, solver: str = "euler",
                two_object_fraction: float = 0.5) -> dict:
  """{'model', 'vae_ceiling', 'ground_truth': adherence, 'ratio': model/truth match, ...}."""
  clips = [shapes_world.generate_clip(shapes_world.validation_seed(seed, i), frames, height,
                                      width, two_object_fraction=two_object_fraction)
           for i in range(num_prompts)]  # as validation_specs, keeping the videos too
  prompts = [c["prompt"] for c in clips]
  specs = [c["spec"] for c in clips]
  videos = []
  for i in range(0, num_prompts, batch_size):
    chunk = prompts[i:i + batch_size]
    videos += list(pipe.run_task("t2v", chunk, list(range(seed + i, seed + i + len(chunk))),
                                 frames, height, width, steps=steps, cfg_scale=cfg_scale,
                                 solver=solver))
  scores = [shapes_detector.score(v, s) for v, s in zip(videos, specs)]
  figures = compare(pipe, videos, [c["video"] for c in clips], specs, batch_size, scores)
  gt = figures["ground_truth"]
  ratio = figures["model"]["match"] / gt["match"] if gt["match"] else None
  per_prompt = [bool(s["match"]) for s in scores]
  # What each prompt got wrong ('count', 'shape', 'permanence', ...): where a model fails.
  failed = [shapes_detector.failures(s) for s in scores]
  return {**figures, "ratio": ratio, "prompts": prompts,
          "matches": per_prompt, "failed": failed, "frames": frames, "height": height, "width": width,
          "steps": steps, "cfg_scale": cfg_scale, "seed": seed,
          "two_object_fraction": two_object_fraction,
          "mean_pixels": [float(v.mean()) for v in videos]}
