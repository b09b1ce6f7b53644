#!/usr/bin/env bash
# Run a sweep (a config with job = sweep) on this machine, or submit it to a Slurm cluster.
#
#   launch/sweep.sh CONFIG SWEEP_DIR [--config.key=value ...]
#   launch/sweep.sh configs/recipe_transfusion.py /shared/sweeps/t1 \
#     --config.sweep.executor=slurm --config.sweep.slurm.partition=gpu
#
# Here: trains every run, skips finished runs, resumes cut-off ones; re-run the same command
# after an interruption. A group of runs that train together is one JAX program over every
# device of this host (the run axis sharded). GPUS=4 runs four local shards instead, one GPU
# each: for runs that cannot train together (other models or batch sizes) and fit one GPU.
# On a cluster (pip install 'transfusion_jax[cluster]', run on the login node, SWEEP_DIR on
# a filesystem the nodes share): --config.sweep.executor=slurm submits each group of runs as
# a Slurm job (sweep.slurm.*), requeued on preemption or timeout; the report is written once
# every job has ended, and running the command again resubmits only what did not finish.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0"; exit 2
fi
if [[ -n "${HOSTS:-}" ]]; then
  echo "error: HOSTS (runs split over hosts by ssh) is gone; submit the sweep to the" \
    "cluster's scheduler instead: --config.sweep.executor=slurm (see the README)" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
run() {  # run SHARD NUM_SHARDS PREFIX...
  local shard=$1 num=$2; shift 2
  "$@" "${PYTHON:-python}" -m transfusion_jax.main --config="$config" --workdir="$workdir" \
    --config.sweep.shard_index="$shard" --config.sweep.num_shards="$num" "${extra[@]}"
}
extra=("$@")
if [[ -z "${GPUS:-}" ]]; then
  run 0 1 env
  exit $?
fi
pids=()
for ((i = 0; i < GPUS; i++)); do
  run "$i" "$GPUS" env CUDA_VISIBLE_DEVICES="$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
