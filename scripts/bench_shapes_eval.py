"""Measures the ShapesWorld yardstick: ground-truth ceilings, noise floor, and speed.

  .venv/bin/python scripts/bench_shapes_eval.py --clips=500

Prints one JSON object: match and per-attribute rates of ground-truth clips (one and two
objects at 17x32x32; one object at 17x32x48, 17x48x32, 1x32x32; soft ground truth, i.e.
3x3-blurred with grain sigma 8), of uniform noise, and milliseconds per clip to generate
and to detect (process CPU time, which shared machines distort less than wall time, and
wall time).
"""
import argparse
import json
import time

import numpy as np

from sora_jax.data import shapes_world as sw
from sora_jax.eval import shapes_detector as sd


def _soft(video_THWC, rng):
  x = np.pad(video_THWC.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  H, W = video_THWC.shape[1:3]
  blurred = sum(x[:, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)) / 9
  return np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8)


def _rates(n, T, H, W, fraction, corrupt=None, seed0=0):
  rng = np.random.default_rng(seed0)
  gen_cpu = gen_wall = det_cpu = det_wall = 0.0
  scores = []
  for s in range(seed0, seed0 + n):
    c0, w0 = time.process_time(), time.perf_counter()
    clip = sw.generate_clip(s, T, H, W, fraction)
    c1, w1 = time.process_time(), time.perf_counter()
    video = clip["video"] if corrupt is None else corrupt(clip["video"], rng)
    c2, w2 = time.process_time(), time.perf_counter()
    scores.append(sd.score(video, clip["spec"]))
    c3, w3 = time.process_time(), time.perf_counter()
    gen_cpu, gen_wall = gen_cpu + c1 - c0, gen_wall + w1 - w0
    det_cpu, det_wall = det_cpu + c3 - c2, det_wall + w3 - w2
  out = {"n": n}
  for key in ("match", "count", "color", "shape", "size", "motion", "position", "permanence"):
    vals = [r[key] for r in scores if r[key] is not None]
    out[key] = round(float(np.mean(vals)), 4) if vals else None
  out["ms_generate_cpu"] = round(1e3 * gen_cpu / n, 3)
  out["ms_generate_wall"] = round(1e3 * gen_wall / n, 3)
  out["ms_detect_cpu"] = round(1e3 * det_cpu / n, 3)
  out["ms_detect_wall"] = round(1e3 * det_wall / n, 3)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=500, help="clips per measured setting")
  n = parser.parse_args().clips
  noise = lambda video, rng: rng.integers(0, 256, video.shape, dtype=np.uint8)  # noqa: E731
  report = {
      "gt_1obj_17x32x32": _rates(n, 17, 32, 32, 0.0),
      "gt_2obj_17x32x32": _rates(n, 17, 32, 32, 1.0),
      "gt_1obj_17x32x48": _rates(n // 2, 17, 32, 48, 0.0),
      "gt_1obj_17x48x32": _rates(n // 2, 17, 48, 32, 0.0),
      "gt_1obj_1x32x32": _rates(n // 2, 1, 32, 32, 0.0),
      "gt_2obj_1x32x32": _rates(n // 2, 1, 32, 32, 1.0),
      "soft_gt_1obj_17x32x32": _rates(n // 2, 17, 32, 32, 0.0, _soft),
      "soft_gt_2obj_17x32x32": _rates(n // 2, 17, 32, 32, 1.0, _soft),
      "uniform_noise_17x32x32": _rates(n // 2, 17, 32, 32, 0.5, noise),
  }
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
