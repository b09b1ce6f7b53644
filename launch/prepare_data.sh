#!/usr/bin/env bash
# Prepare the datasets of configs/recipe_at_scale.py once, as tfds array_record files.
#
#   launch/prepare_data.sh DATA_DIR MANUAL_DIR [dr|chexpert|cifar10 ...]   # default: all three
#
# Run it where TensorFlow and OpenCV are installed (tfds builders decode and re-encode the
# images with them: `pip install tensorflow opencv-python-headless`); training then reads
# DATA_DIR without either. DATA_DIR may be a gs:// bucket, the place a TPU slice reads.
# Manual downloads (registration and licence agreement needed), unpacked under MANUAL_DIR:
#   MANUAL_DIR/diabetic_retinopathy_detection/  Kaggle "diabetic-retinopathy-detection":
#       train/*.jpeg, test/*.jpeg, trainLabels.csv (the builder also fetches the public
#       test-label CSV from the internet while building)
#   MANUAL_DIR/chexpert/CheXpert-v1.0-small/    train/, valid/, train.csv, valid.csv
# cifar10 is downloaded by tfds itself.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
data_dir=$1; manual_dir=$2; shift 2
datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=(dr chexpert cifar10)
for d in "${datasets[@]}"; do
  manual=(--manual_dir="$manual_dir" --add_name_to_manual_dir)
  case "$d" in
    dr) name=diabetic_retinopathy_detection/btgraham-300 ;;
    chexpert) name=chexpert ;;
    cifar10) name=cifar10; manual=() ;;
    *) echo "unknown dataset '$d': choose dr, chexpert or cifar10" >&2; exit 2 ;;
  esac
  tfds build "$name" --data_dir="$data_dir" --file_format=array_record "${manual[@]}"
done
