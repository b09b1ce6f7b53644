#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install this project on every host, run one config on all.
#
#   launch/tpu_vm.sh create  NAME ZONE ACCELERATOR [VERSION]   # e.g. v4-32 tpu-ubuntu2204-base
#   launch/tpu_vm.sh setup   NAME ZONE REPO_URL                # clone + pip install, all hosts
#   launch/tpu_vm.sh run     NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_vm.sh delete  NAME ZONE
#
# `run` starts the same command on every host (--worker=all). JAX finds the slice's
# coordinator itself (TFJ_DISTRIBUTED=auto: jax.distributed.initialize() with no
# arguments), every
# host feeds its own share of each batch, and only process 0 writes. WORKDIR must be a
# path every host can write: a gs:// bucket (Orbax and tfds read and write GCS) or a
# mounted shared disk. Datasets are read from --config.data.data_dir (e.g. gs://BUCKET/tfds)
# prepared beforehand with `tfds build NAME --file_format=array_record`.
set -euo pipefail
cmd=${1:-}; shift || true
case "$cmd" in
  create)
    name=$1 zone=$2 accel=$3 version=${4:-tpu-ubuntu2204-base}
    gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
      --accelerator-type="$accel" --version="$version" ;;
  setup)
    name=$1 zone=$2 repo=$3
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
      set -e; git clone '$repo' transfusion_jax || (cd transfusion_jax && git pull)
      cd transfusion_jax && python3 -m venv .venv && . .venv/bin/activate
      pip install -U pip && pip install -e . 'jax[tpu]'" ;;
  run)
    name=$1 zone=$2 config=$3 workdir=$4; shift 4
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
      cd transfusion_jax && . .venv/bin/activate &&
      TFJ_DISTRIBUTED=auto python -m transfusion_jax.main --config='$config' --workdir='$workdir' $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$1" --zone="$2" --quiet ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
