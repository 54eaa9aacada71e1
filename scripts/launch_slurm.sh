#!/usr/bin/env bash
# Multi-node GPU training under Slurm: one process per node, all of its GPUs.
#
#   sbatch --nodes=8 --gpus-per-node=8 --ntasks-per-node=1 --cpus-per-task=64 \
#     scripts/launch_slurm.sh --config=configs/dit_14b.py --workdir=/shared/wan14 --mode=train
#
# (or run it under `salloc` with the same flags). Env knobs: PYTHON (default
# .venv/bin/python in the submit directory), PORT (coordinator port, default 8476).
#
# The first node of the allocation hosts the coordinator; srun starts one task per node
# and each gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES (= SLURM_NTASKS) and its own
# JAX_PROCESS_ID (= SLURM_PROCID); the entry point calls jax.distributed.initialize with
# them. The workdir must be on a file system every node sees.
#SBATCH --job-name=sora_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
if [ $# -eq 0 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
: "${SLURM_JOB_NODELIST:?run under sbatch or salloc (see the header of this script)}"
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON="${PYTHON:-$PWD/.venv/bin/python}"
PORT="${PORT:-8476}"
COORD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export JAX_COORDINATOR_ADDRESS="$COORD:$PORT"
export JAX_NUM_PROCESSES="${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}"
echo "slurm job $SLURM_JOB_ID: $JAX_NUM_PROCESSES processes, coordinator $JAX_COORDINATOR_ADDRESS"
# JAX_PROCESS_ID is read inside each task (single quotes), where SLURM_PROCID is its own.
exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash -c 'JAX_PROCESS_ID=$SLURM_PROCID exec "$0" -m sora_jax "$@"' "$PYTHON" "$@"
