#!/usr/bin/env bash
# Cloud TPU VM slices: create, install the project on every worker, run a job detached on
# all of them, watch, stop, delete. The launcher itself is transfusion_jax/launch/tpu_vm.py
# (standard library only; run from a checkout, nothing to install here but gcloud).
#
#   launch/tpu_vm.sh create NAME ZONE ACCELERATOR [--version=IMAGE] [--spot]
#   launch/tpu_vm.sh setup  NAME ZONE REPO_URL [--ref=BRANCH_OR_COMMIT]
#   launch/tpu_vm.sh run    NAME ZONE CONFIG gs://BUCKET/WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_vm.sh status NAME ZONE
#   launch/tpu_vm.sh logs   NAME ZONE [--lines=N] [--follow] [--worker=I]
#   launch/tpu_vm.sh stop   NAME ZONE
#   launch/tpu_vm.sh delete NAME ZONE
#
# --dry-run (before the subcommand) prints the gcloud commands instead of running them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" \
  -m transfusion_jax.launch.tpu_vm "$@"
