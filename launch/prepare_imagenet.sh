#!/usr/bin/env bash
# Builds ImageNet (tfds imagenet2012) once into gs://BUCKET/tensorflow_datasets, where
# launch/tpu.sh points the trainer (--config.data.data_dir).
#
#   launch/prepare_imagenet.sh [--dry-run] --bucket=NAME [--manual_dir=DIR]
#
# Inputs, from https://image-net.org (ILSVRC2012, after accepting its terms), in DIR (default
# ~/imagenet): ILSVRC2012_img_train.tar (138 GiB, 1,281,167 images) and ILSVRC2012_img_val.tar
# (6.3 GiB, 50,000 images). tfds builds a split only for the tars it finds and only logs a
# warning for a missing one; a run without the validation split cannot be evaluated, so both
# are required here. The test tar is not used.
# Where: one VM in the bucket's region, e.g. n2-standard-16 with a 400 GB disk: the tars (145 GB)
# stay on local disk, tfds streams them and writes ~155 GB of TFRecords straight to the bucket.
# Expect roughly 3-6 hours (one process decoding and re-encoding 1.33 M JPEGs; not measured
# here). Rerunning is a no-op once the dataset is complete in the bucket.
# Python: this checkout's venv (requirements.txt), whose `tfds` command is used.
set -euo pipefail

BUCKET="${BUCKET:-}"
MANUAL_DIR="${MANUAL_DIR:-$HOME/imagenet}"
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bucket=*) BUCKET="${1#*=}" ;;
    --manual_dir=*) MANUAL_DIR="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare_imagenet.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$BUCKET" ] || { echo "prepare_imagenet.sh: needs --bucket=NAME" >&2; exit 2; }
for tar in ILSVRC2012_img_train.tar ILSVRC2012_img_val.tar; do
  [ -s "$MANUAL_DIR/$tar" ] || {
    echo "prepare_imagenet.sh: $MANUAL_DIR/$tar is missing; download it from https://image-net.org" \
      "(or pass --manual_dir=DIR)" >&2
    exit 2
  }
done

here="$(cd "$(dirname "$0")/.." && pwd)"
tfds="$here/.venv/bin/tfds"
[ -x "$tfds" ] || tfds=tfds
command=("$tfds" build imagenet2012 --data_dir="gs://$BUCKET/tensorflow_datasets"
         --manual_dir="$MANUAL_DIR")
printf '%q ' "${command[@]}"; echo
[ "$DRY_RUN" = 1 ] || "${command[@]}"
