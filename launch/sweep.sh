#!/usr/bin/env bash
# Run a sweep (a config with job = sweep) here, or spread its runs over several hosts.
#
#   launch/sweep.sh CONFIG SWEEP_DIR [--config.key=value ...]
#   HOSTS="gpu1 gpu2 gpu3" launch/sweep.sh configs/recipe_transfusion.py /shared/sweeps/t1
#
# Locally: trains every run one after another, skips finished runs, resumes cut-off ones;
# re-run the same command after an interruption. With HOSTS, host i (of N) trains runs
# i, i+N, i+2N, ... over ssh, in this repository's path on that host (REMOTE_DIR to change),
# with its own devices; SWEEP_DIR must be on a filesystem every host sees. Shard 0 trains the
# sweep's stages first; the others wait for them. The last shard to finish writes the
# report; `--config.job=aggregate` on the same SWEEP_DIR rewrites it at any time.
# On one machine with several GPUs, GPUS=4 runs four local shards, one GPU each.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
config=$1; workdir=$2; shift 2
run() {  # run SHARD NUM_SHARDS PREFIX...
  local shard=$1 num=$2; shift 2
  "$@" "${PYTHON:-python}" -m transfusion_jax.main --config="$config" --workdir="$workdir" \
    --config.sweep.shard_index="$shard" --config.sweep.num_shards="$num" "${extra[@]}"
}
extra=("$@")
pids=()
if [[ -n "${HOSTS:-}" ]]; then
  read -r -a hosts <<< "$HOSTS"
  remote=${REMOTE_DIR:-$(pwd)}
  for i in "${!hosts[@]}"; do
    ssh "${hosts[$i]}" "cd '$remote' && ${PYTHON:-python} -m transfusion_jax.main --config='$config' \
      --workdir='$workdir' --config.sweep.shard_index=$i \
      --config.sweep.num_shards=${#hosts[@]} ${extra[*]}" &
    pids+=($!)
  done
elif [[ -n "${GPUS:-}" ]]; then
  for ((i = 0; i < GPUS; i++)); do
    run "$i" "$GPUS" env CUDA_VISIBLE_DEVICES="$i" &
    pids+=($!)
  done
else
  run 0 1 env
  exit $?
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
