#!/usr/bin/env bash
# Runs one sora_jax command on every worker of a Cloud TPU pod slice (multi-host).
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE -- --config=configs/dit_14b.py \
#       --workdir=gs://BUCKET/wan14 --mode=train [--config.a.b=v ...]
#
# Env knobs: PROJECT (gcloud project; default: gcloud's), REPO_DIR (the checkout on the
# workers, default ~/sora_jax), PYTHON (default $REPO_DIR/.venv/bin/python), PORT (the
# coordinator's port, default 8476), SETUP (a command run first on every worker, e.g.
# "cd ~/sora_jax && git pull && .venv/bin/pip install -e .").
#
# Worker 0's internal IP becomes JAX_COORDINATOR_ADDRESS; each worker's own index (from
# the TPU VM metadata server) becomes JAX_PROCESS_ID; the worker count JAX_NUM_PROCESSES.
# The entry point calls jax.distributed.initialize with them. Every worker must see the
# same code and config; the workdir should be shared storage (gs://...) so checkpoints
# and metrics.jsonl are one set (process 0 writes metrics; every process writes its shards).
set -euo pipefail
if [ $# -lt 3 ] || [ "$3" != "--" ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
TPU_NAME="$1"; ZONE="$2"; shift 3
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project="$PROJECT")
REPO_DIR="${REPO_DIR:-~/sora_jax}"
PYTHON="${PYTHON:-$REPO_DIR/.venv/bin/python}"
PORT="${PORT:-8476}"

endpoints=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
  --format='value(networkEndpoints[].ipAddress)')
COORD_IP=$(echo "$endpoints" | tr ';,' '\n\n' | head -n1)
NUM_WORKERS=$(echo "$endpoints" | tr ';,' '\n\n' | grep -c .)
echo "TPU $TPU_NAME: $NUM_WORKERS workers, coordinator $COORD_IP:$PORT"

ARGS=$(printf '%q ' "$@")
WORKER_ID='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
REMOTE="set -e; ${SETUP:+$SETUP; }cd $REPO_DIR && \
JAX_COORDINATOR_ADDRESS=$COORD_IP:$PORT JAX_NUM_PROCESSES=$NUM_WORKERS JAX_PROCESS_ID=$WORKER_ID \
$PYTHON -m sora_jax $ARGS"

exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
  --worker=all --command="$REMOTE"
