#!/usr/bin/env bash
# Run one experiment on this machine, on every local device.
#
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   launch/local.sh configs/quickstart.py runs/single --config.train.steps=300
#
# On a CPU-only machine, DEVICES=8 splits each batch over 8 virtual CPU devices
# (useful to check data-parallel code paths; not faster).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0"; exit 2
fi
config=$1; workdir=$2; shift 2
if [[ -n "${DEVICES:-}" ]]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES} ${XLA_FLAGS:-}"
fi
exec python -m transfusion_jax.main --config="$config" --workdir="$workdir" "$@"
