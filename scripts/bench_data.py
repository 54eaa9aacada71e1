"""Data benchmark: ShapesWorld build time and input-pipeline throughput.

  python scripts/bench_data.py --num_clips=20000 --buckets=17x32x32 --workers=0

Builds `num_clips` training clips (no validation split) into a fresh temporary folder
(or --data_dir), then reads `--steps` batches through `pipeline.make_iterator` and
reports clips/s. Prints one JSON line; --extrapolate_to reports the build time of that
many clips scaled linearly from the measured run (say so when quoting it).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sora_jax.config_defaults import base_config  # noqa: E402
from sora_jax.data import build  # noqa: E402
from sora_jax.data import pipeline  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_clips", type=int, default=20000)
  p.add_argument("--buckets", default="17x32x32")
  p.add_argument("--workers", type=int, default=0, help="build processes (0: all cores)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--steps", type=int, default=300, help="batches read for clips/s")
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--worker_count", type=int, default=0, help="Grain worker processes")
  p.add_argument("--data_dir", default="", help="default: a temporary folder, removed after")
  p.add_argument("--extrapolate_to", type=int, default=0)
  args = p.parse_args()

  cfg = base_config()
  cfg.data.buckets = args.buckets
  cfg.data.num_train = args.num_clips
  cfg.data.num_val = 0
  cfg.data.build_workers = args.workers
  cfg.data.prefetch = args.prefetch
  cfg.data.worker_count = args.worker_count
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="sj_bench_data_")
  try:
    builder = build.make_builder(cfg, data_dir)
    t0 = time.time()
    builder.download_and_prepare()
    build_s = time.time() - t0
    size = sum(f.stat().length for f in builder.data_path.iterdir())  # --data_dir may be a bucket

    it = pipeline.make_iterator(cfg, data_dir, batch_size=args.batch_size, process_index=0,
                                process_count=1)
    next(it)  # Start-up (threads / worker processes) is not throughput.
    t0 = time.time()
    for _ in range(args.steps):
      next(it)
    read_s = time.time() - t0
    out = {
        "num_clips": args.num_clips, "buckets": args.buckets,
        "build_workers": args.workers or os.cpu_count(), "cpu_count": os.cpu_count(),
        "build_s": round(build_s, 2), "build_clips_per_s": round(args.num_clips / build_s, 1),
        "bytes_on_disk": size, "batch_size": args.batch_size, "steps": args.steps,
        "prefetch": args.prefetch, "grain_workers": args.worker_count,
        "pipeline_clips_per_s": round(args.steps * args.batch_size / read_s, 1),
    }
    if args.extrapolate_to:
      out[f"build_s_extrapolated_to_{args.extrapolate_to}"] = round(
          build_s * args.extrapolate_to / args.num_clips, 1)
    print(json.dumps(out), flush=True)
  finally:
    if not args.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
