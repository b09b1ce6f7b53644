#!/usr/bin/env bash
# One process per GPU on one machine (or per host on several), joined by jax.distributed.
#
#   launch/gpu_multiprocess.sh NUM_PROCESSES CONFIG WORKDIR [--config.key=value ...]
#
# Process i sees only GPU i (CUDA_VISIBLE_DEVICES) and joins the coordinator at
# ${COORDINATOR:-127.0.0.1:12355}. For several hosts, run this script on each host with
# FIRST_ID set to that host's first process index and COORDINATOR set to host 0's address.
# The workdir must be on a filesystem every process sees; only process 0 writes metrics.
# (A single process driving all GPUs, `launch/local.sh`, works too: jit shards over them.)
# TFJ_EXPECT_ACCELERATOR=1: a JAX without its CUDA build stops with one error line instead of
# training on the CPU (install it: pip install -U "jax[cuda12]"; set it to 0 to allow CPU).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
nproc=$1; config=$2; workdir=$3; shift 3
first=${FIRST_ID:-0}
total=${TOTAL_PROCESSES:-$nproc}
pids=()
for ((i = 0; i < nproc; i++)); do
  CUDA_VISIBLE_DEVICES=$i TFJ_EXPECT_ACCELERATOR=${TFJ_EXPECT_ACCELERATOR:-1} \
  TFJ_COORDINATOR=${COORDINATOR:-127.0.0.1:12355} \
  TFJ_NUM_PROCESSES=$total TFJ_PROCESS_ID=$((first + i)) \
    python -m transfusion_jax.main --config="$config" --workdir="$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
