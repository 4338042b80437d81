#!/usr/bin/env bash
# Cloud TPU (TPU VM) launcher for supcon_jax: create a slice, install, train, follow logs,
# run the linear evaluation, delete the slice.
#
#   launch/tpu.sh [--dry-run] [--flag=value ...] COMMAND [-- extra trainer flags]
#
# Commands: create | setup | train | logs | eval | delete | status
# Every flag also reads an environment variable (shown in brackets); flags win.
#   --project      [PROJECT]       GCP project (default: gcloud's configured project)
#   --zone         [ZONE]          us-central2-b
#   --name         [TPU_NAME]      supcon
#   --accelerator  [ACCELERATOR]   v4-32
#   --version      [TPU_VERSION]   tpu-ubuntu2204-base
#   --bucket       [BUCKET]        GCS bucket for data and workdirs (required by train/eval)
#   --config       [CONFIG]        configs/imagenet_r50.py
#   --run          [RUN]           name of the run's workdir under gs://BUCKET/runs/
#   --spot         [SPOT=1]        create through a queued resource on spot capacity
#   --repo         [REPO]          git URL the workers clone (default: this checkout's origin)
#   --ref          [REF]           git ref to check out (default: this checkout's HEAD)
#   --dry-run      [DRY_RUN=1]     print the commands instead of running them
# Preemption: rerun `create`, `setup` and `train` with the same flags: the trainer resumes
# from the last checkpoint in gs://BUCKET/runs/RUN (it also saves on SIGTERM).
set -euo pipefail

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-supcon}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
BUCKET="${BUCKET:-}"
CONFIG="${CONFIG:-configs/imagenet_r50.py}"
RUN="${RUN:-}"
SPOT="${SPOT:-0}"
REPO="${REPO:-}"
REF="${REF:-}"
DRY_RUN="${DRY_RUN:-0}"
COMMAND=""
EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    --project=*) PROJECT="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --name=*) TPU_NAME="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --version=*) TPU_VERSION="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --run=*) RUN="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) echo "tpu.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    *) if [ -n "$COMMAND" ]; then echo "tpu.sh: one command at a time" >&2; exit 2; fi
       COMMAND="$1" ;;
  esac
  shift
done
[ -n "$COMMAND" ] || { usage; exit 2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
RUN="${RUN:-$(basename "$CONFIG" .py)}"
REPO="${REPO:-$(git -C "$here" remote get-url origin 2>/dev/null || echo https://github.com/OWNER/supcon_jax.git)}"
REF="${REF:-$(git -C "$here" rev-parse HEAD 2>/dev/null || echo main)}"
project_flag=()
[ -z "$PROJECT" ] || project_flag=(--project="$PROJECT")

# Prints the command (quoted, so it can be pasted); runs it unless --dry-run.
run() {
  printf '%q ' "$@"; echo
  [ "$DRY_RUN" = 1 ] || "$@"
}

need_bucket() {
  [ -n "$BUCKET" ] || { echo "tpu.sh: $COMMAND needs --bucket=NAME (or BUCKET=NAME)" >&2; exit 2; }
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${project_flag[@]}" --zone="$ZONE" \
    --worker=all --command="$1"
}

workdir() { echo "gs://$BUCKET/runs/$RUN"; }

# Inside the workers' shells: the checkout, its venv, and a log per worker.
remote_job() {  # $1: python module, $2: log name, rest: its flags
  local module="$1" log="$2"; shift 2
  printf 'cd ~/supcon_jax && nohup .venv/bin/python -m %s %s > ~/%s.log 2>&1 &' \
    "$module" "$(printf '%q ' "$@")" "$log"
}

case "$COMMAND" in
  create)
    if [ "$SPOT" = 1 ]; then
      run gcloud compute tpus queued-resources create "$TPU_NAME" "${project_flag[@]}" \
        --zone="$ZONE" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
        --runtime-version="$TPU_VERSION" --spot
    else
      run gcloud compute tpus tpu-vm create "$TPU_NAME" "${project_flag[@]}" --zone="$ZONE" \
        --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION"
    fi
    ;;
  setup)
    on_all_workers "set -e; rm -rf ~/supcon_jax; git clone $(printf '%q' "$REPO") ~/supcon_jax && \
cd ~/supcon_jax && git checkout $(printf '%q' "$REF") && python3 -m venv .venv && \
.venv/bin/pip install -q 'jax[tpu]==0.10.2' -r <(grep -v '^jax' requirements.txt)"
    ;;
  train)
    need_bucket
    on_all_workers "$(remote_job supcon_jax.main train --config="$CONFIG" --workdir="$(workdir)" \
      --config.data.data_dir="gs://$BUCKET/tensorflow_datasets" "${EXTRA[@]}")"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${project_flag[@]}" --zone="$ZONE" \
      --worker=0 --command="tail -n 200 -F ~/train.log ~/eval.log"
    ;;
  eval)
    need_bucket
    on_all_workers "$(remote_job supcon_jax.linear_eval eval --config="$CONFIG" \
      --workdir="$(workdir)" --config.data.data_dir="gs://$BUCKET/tensorflow_datasets" \
      "${EXTRA[@]}")"
    ;;
  status)
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${project_flag[@]}" --zone="$ZONE"
    ;;
  delete)
    if [ "$SPOT" = 1 ]; then
      run gcloud compute tpus queued-resources delete "$TPU_NAME" "${project_flag[@]}" \
        --zone="$ZONE" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${project_flag[@]}" --zone="$ZONE" \
        --quiet
    fi
    ;;
  *) echo "tpu.sh: unknown command $COMMAND (see --help)" >&2; exit 2 ;;
esac
