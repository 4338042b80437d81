#!/usr/bin/env bash
# Cloud TPU (TPU VM) launcher for supcon_jax: the whole job in one command, or step by step.
#
#   launch/tpu.sh [--flag=value ...] COMMAND [-- extra trainer flags]
#
# Commands:
#   job        create -> wait until ACTIVE -> setup -> preflight -> train -> eval -> delete. The
#              slice is deleted on success, on failure and on Ctrl-C. A preempted slice
#              (spot, or SUSPENDED) is deleted and re-created, and training resumes from the
#              last checkpoint in the workdir, at most --max-attempts times.
#   create     request the slice as a queued resource (--spot: spot capacity) and wait for ACTIVE
#   setup      on every worker: clone --repo at --ref, install Python 3.11 with uv (the TPU
#              images ship 3.10; jax 0.10.2 needs 3.11) and the pinned packages, check them
#   preflight  on every worker: start jax.distributed, check process and device counts
#   train|eval start the trainer / linear evaluation on every worker and wait for it; if one
#              worker fails the others are stopped (Ctrl-C stops waiting, not the run)
#   logs       follow the logs of every worker
#   stop       SIGTERM the trainer on every worker: it saves a checkpoint and exits
#   status     the queued resource's state;  delete: delete it and its TPU VMs
# Flags (each also reads the environment variable in brackets; flags win):
#   --project      [PROJECT]       GCP project (default: gcloud's configured project)
#   --accelerator  [ACCELERATOR]   v4-N, v5litepod-N (v5e), v5p-N or v6e-N (default v5p-128);
#                                  picks the runtime version and the default zone
#   --zone         [ZONE]          default: the accelerator's (see ZONES below)
#   --version      [TPU_VERSION]   runtime version (default: the accelerator's)
#   --name         [TPU_NAME]      queued resource and node name (default supcon)
#   --bucket       [BUCKET]        GCS bucket for data and workdirs (train, eval, job)
#   --config       [CONFIG]        configs/imagenet_r50.py
#   --run          [RUN]           workdir name under gs://BUCKET/runs/ (default: config's name)
#   --spot         [SPOT=1]        spot capacity (preemptible; --max-attempts re-creations)
#   --max-attempts [MAX_ATTEMPTS]  slices or resumptions `job` tries at most (default 5)
#   --repo         [REPO]          https URL the workers clone (default: origin, as https)
#   --ref          [REF]           commit the workers check out (default: HEAD, if pushed)
#   --dry-run      [DRY_RUN=1]     print the gcloud commands instead of running them
set -euo pipefail

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }

PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-v5p-128}"
ZONE="${ZONE:-}"
TPU_VERSION="${TPU_VERSION:-}"
TPU_NAME="${TPU_NAME:-supcon}"
BUCKET="${BUCKET:-}"
CONFIG="${CONFIG:-configs/imagenet_r50.py}"
RUN="${RUN:-}"
SPOT="${SPOT:-0}"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-5}"
REPO="${REPO:-}"
REF="${REF:-}"
DRY_RUN="${DRY_RUN:-0}"
POLL_SECONDS="${POLL_SECONDS:-30}"  # between state / worker polls
UV_VERSION=0.13.8      # pinned uv; it pins the CPython 3.11 build it downloads
PYTHON_VERSION=3.11    # jax 0.10.2: Requires-Python >=3.11
COMMAND=""
EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --version=*) TPU_VERSION="${1#*=}" ;;
    --name=*) TPU_NAME="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --run=*) RUN="${1#*=}" ;;
    --max-attempts=*) MAX_ATTEMPTS="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=(${1+"$@"}); break ;;
    -*) echo "tpu.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    *) if [ -n "$COMMAND" ]; then echo "tpu.sh: one command at a time" >&2; exit 2; fi
       COMMAND="$1" ;;
  esac
  shift
done
[ -n "$COMMAND" ] || { usage; exit 2; }
die() { echo "tpu.sh: $*" >&2; exit 2; }

# --- What the accelerator implies. Checked before any gcloud call. ---------------------------
# Runtime versions: https://cloud.google.com/tpu/docs/runtimes (v4 also takes v2-alpha-tpuv4, as
# in https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create).
# ZONES (first = default): https://cloud.google.com/tpu/docs/regions-zones; add a zone here when
# that page lists a new one. Cores per chip: v4 and v5p count 2 TensorCores per chip in the
# type's number, v5e and v6e 1 (https://cloud.google.com/tpu/docs/v5p, .../v5e); jax sees one
# device per chip. Autocheckpoint (SIGTERM before maintenance) exists for v2-v4 and v5e only
# (https://cloud.google.com/tpu/docs/autocheckpoint).
case "$ACCELERATOR" in
  v4-*)        RUNTIMES="tpu-ubuntu2204-base v2-alpha-tpuv4"; ZONES="us-central2-b"
               CORES_PER_CHIP=2; AUTOCHECKPOINT=1 ;;
  v5litepod-*) RUNTIMES="v2-alpha-tpuv5-lite"; ZONES="us-west4-a us-central1-a us-south1-a us-west1-c"
               CORES_PER_CHIP=1; AUTOCHECKPOINT=1 ;;
  v5p-*)       RUNTIMES="v2-alpha-tpuv5"; ZONES="us-east5-a us-central1-a"
               CORES_PER_CHIP=2; AUTOCHECKPOINT=0 ;;
  v6e-*)       RUNTIMES="v2-alpha-tpuv6e"; ZONES="us-east5-b us-central1-b us-east1-d us-east5-a europe-west4-a"
               CORES_PER_CHIP=1; AUTOCHECKPOINT=0 ;;
  *) die "unknown accelerator '$ACCELERATOR': use v4-N, v5litepod-N (v5e), v5p-N or v6e-N" ;;
esac
CORES="${ACCELERATOR##*-}"
case "$CORES" in ''|*[!0-9]*) die "accelerator '$ACCELERATOR' must end in a number, e.g. v5p-128" ;; esac
DEVICES=$((CORES / CORES_PER_CHIP))
[ "$DEVICES" -ge 1 ] || die "accelerator '$ACCELERATOR' has no whole chip"
TPU_VERSION="${TPU_VERSION:-${RUNTIMES%% *}}"
ZONE="${ZONE:-${ZONES%% *}}"
case " $RUNTIMES " in *" $TPU_VERSION "*) ;;
  *) die "runtime version '$TPU_VERSION' does not match $ACCELERATOR (use: $RUNTIMES)" ;; esac
case " $ZONES " in *" $ZONE "*) ;;
  *) die "$ACCELERATOR is not offered in zone '$ZONE' (documented: $ZONES)" ;; esac
case "$MAX_ATTEMPTS" in ''|*[!0-9]*|0) die "--max-attempts must be a positive number" ;; esac

here="$(cd "$(dirname "$0")/.." && pwd)"
RUN="${RUN:-$(basename "$CONFIG" .py)}"
PROJECT_FLAGS=()
[ -z "$PROJECT" ] || PROJECT_FLAGS=(--project="$PROJECT")

# Prints the command (quoted, so it can be pasted); runs it unless --dry-run.
run() {
  printf '%q ' "$@"; echo
  [ "$DRY_RUN" = 1 ] || "$@"
}

# gcloud COMMAND... with the project and zone flags (bash 3.2: no empty "${a[@]}" under set -u).
tpus() {
  run gcloud compute tpus "$@" ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} --zone="$ZONE"
}

need_bucket() {
  [ -n "$BUCKET" ] || die "$COMMAND needs --bucket=NAME (or BUCKET=NAME)"
}

workdir() { echo "gs://$BUCKET/runs/$RUN"; }

# The workers clone over https without credentials: refuse what they could not fetch.
resolve_source() {
  if [ -z "$REPO" ]; then
    REPO="$(git -C "$here" remote get-url origin 2>/dev/null)" \
      || die "no git remote 'origin' here: pass --repo=https://HOST/OWNER/supcon_jax.git"
    case "$REPO" in  # git@github.com:o/r.git and ssh://git@host/o/r.git -> https
      git@*:*) REPO="${REPO#git@}"; REPO="https://${REPO/://}" ;;
      ssh://git@*) REPO="https://${REPO#ssh://git@}" ;;
    esac
    case "$REPO" in https://*) ;; *) die "origin '$REPO' is not https: pass --repo" ;; esac
  fi
  if [ -z "$REF" ]; then
    REF="$(git -C "$here" rev-parse HEAD)"
    [ -n "$(git -C "$here" branch -r --contains "$REF" 2>/dev/null)" ] \
      || die "HEAD $REF is not on any pushed branch, so the workers cannot fetch it: push it, or pass --ref"
    git -C "$here" diff --quiet HEAD \
      || echo "tpu.sh: warning: uncommitted changes here do not reach the workers" >&2
  fi
}

# --- Worker side: these functions are sent with each ssh command and run on every worker. ----
# worker_setup REPO REF UV_VERSION PYTHON_VERSION: a fresh checkout with its own Python.
worker_setup() {
  set -euo pipefail
  rm -rf ~/supcon_jax
  git clone --quiet "$1" ~/supcon_jax
  cd ~/supcon_jax
  git checkout --quiet "$2"
  python3 -m pip install --quiet --user "uv==$3"
  ~/.local/bin/uv venv --quiet --python "$4" --python-preference only-managed .venv
  local jax_version
  jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
  grep -v '^jax' requirements.txt > .requirements-tpu.txt
  ~/.local/bin/uv pip install --quiet --python .venv/bin/python "jax[tpu]==$jax_version" \
    -r .requirements-tpu.txt
  .venv/bin/python -m supcon_jax.preflight --notopology
}

# worker_start NAME MODULE [ARGS...]: runs the module detached from ssh (nohup, no stdin), its
# output in ~/NAME.log, its pid in ~/NAME.pid and, when it ends, its exit status in ~/NAME.exit.
# SUPCON_TPU_SLICE=1 tells supcon_jax.distributed to join the slice with jax.distributed.
worker_start() {
  local name="$1" i; shift
  cd ~/supcon_jax || return 1
  rm -f ~/"$name".exit ~/"$name".pid ~/"$name".stopped
  # shellcheck disable=SC2016  # expanded by the inner bash: $0 is ~/NAME, $@ the module's args
  SUPCON_TPU_SLICE=1 nohup bash -c \
    '.venv/bin/python -m "$@" & echo "$!" > "$0.pid"; wait "$!"; echo "$?" > "$0.exit"' \
    ~/"$name" "$@" < /dev/null >> ~/"$name".log 2>&1 &
  for ((i = 0; i < 100; i++)); do  # until the pid is on disk, so a poll never sees "gone"
    [ ! -f ~/"$name".pid ] || return 0
    sleep 0.1
  done
  return 1
}

# worker_status NAME: "supcon-status running|exit:N|stopped:N|gone" for this worker.
worker_status() {
  local state=gone
  if [ -f ~/"$1".exit ]; then
    state="exit:$(cat ~/"$1".exit)"
    [ ! -f ~/"$1".stopped ] || state="stopped:$(cat ~/"$1".exit)"
  elif [ -f ~/"$1".pid ] && kill -0 "$(cat ~/"$1".pid)" 2>/dev/null; then
    state=running
  fi
  echo "supcon-status $state"
}

# worker_stop MARK NAME...: SIGTERM each running module (the trainer saves, then exits 75);
# MARK=1 records that a person asked, so `job` ends instead of resuming.
worker_stop() {
  local mark="$1" name; shift
  for name in "$@"; do
    if [ -f ~/"$name".pid ] && [ ! -f ~/"$name".exit ]; then
      [ "$mark" != 1 ] || touch ~/"$name".stopped
      kill -TERM "$(cat ~/"$name".pid)" 2>/dev/null || true
    fi
  done
}

# Runs one worker function on every worker (or --worker=W as $1 before the function's name).
# Prints the call without the shipped function bodies.
on_workers() {
  local worker=all call
  case "$1" in --worker=*) worker="${1#*=}"; shift ;; esac
  call="$(printf '%q ' "$@")"
  echo "gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=$worker --command='<worker_* of tpu.sh>; $call'"
  [ "$DRY_RUN" = 1 ] || gcloud compute tpus tpu-vm ssh "$TPU_NAME" \
    ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} --zone="$ZONE" --worker="$worker" \
    --command="$(declare -f worker_setup worker_start worker_status worker_stop); $call"
}

# --- Control side. ---------------------------------------------------------------------------
describe() {  # describe KIND FORMAT: one field of the queued resource or node, or NOT_FOUND
  gcloud compute tpus "$1" describe "$TPU_NAME" ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} \
    --zone="$ZONE" --format="value($2)" 2>/dev/null || echo NOT_FOUND
}

create_slice() {
  local create=(gcloud compute tpus queued-resources create)
  # --autocheckpoint-enabled is a gcloud alpha flag:
  # https://cloud.google.com/sdk/gcloud/reference/alpha/compute/tpus/queued-resources/create
  [ "$AUTOCHECKPOINT" = 0 ] || create=(gcloud alpha compute tpus queued-resources create)
  local flags=(--node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR"
               --runtime-version="$TPU_VERSION")
  [ "$SPOT" != 1 ] || flags+=(--spot)
  [ "$AUTOCHECKPOINT" = 0 ] || flags+=(--autocheckpoint-enabled)
  run "${create[@]}" "$TPU_NAME" ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} --zone="$ZONE" \
    "${flags[@]}"
}

# Deletes the queued resource with its node; a SUSPENDED one stays until deleted, and its name
# is taken until the deletion has finished.
delete_slice() {
  tpus queued-resources delete "$TPU_NAME" --force --quiet
  [ "$DRY_RUN" = 1 ] || until [ "$(describe queued-resources state.state)" = NOT_FOUND ]; do
    sleep "$POLL_SECONDS"
  done
}

# Waits for ACTIVE and a READY node. Returns 0, 75 if the request was suspended (preempted)
# first, 1 if it FAILED. States: https://cloud.google.com/tpu/docs/queued-resources
wait_active() {
  local state
  [ "$DRY_RUN" != 1 ] || return 0
  while :; do
    state="$(describe queued-resources state.state)"
    [ "$state" != ACTIVE ] || state="$state, node $(describe tpu-vm state)"
    echo "tpu.sh: $TPU_NAME: $state"
    case "$state" in
      "ACTIVE, node READY") return 0 ;;
      SUSPENDING|SUSPENDED) return 75 ;;
      FAILED|NOT_FOUND) tpus queued-resources describe "$TPU_NAME" >&2 || true; return 1 ;;
    esac
    sleep "$POLL_SECONDS"
  done
}

# Polls every worker's NAME job until it ends. Returns 0 when all exited 0; 2 when stopped by
# `stop`; 1 when one failed; 75 when it should resume: the slice was preempted, the job saved
# and exited 75 on SIGTERM (maintenance with autocheckpoint), or a worker lost its processes or
# stopped answering (maintenance without). On 1 and on a lost worker the others are stopped:
# they would wait for it in their collectives forever, at full cost.
watch_job() {
  local name="$1" workers out lines statuses answered misses=0
  [ "$DRY_RUN" != 1 ] || return 0
  # gcloud's len() transform (gcloud topic projections); without a number, any answer counts.
  workers="$(describe tpu-vm 'networkEndpoints.len()')"
  case "$workers" in ''|*[!0-9]*) workers=0 ;; esac
  while :; do
    case "$(describe queued-resources state.state)" in
      ACTIVE) ;;
      *) echo "tpu.sh: $TPU_NAME was preempted during $name" >&2; return 75 ;;
    esac
    out="$(on_workers worker_status "$name" 2>&1)" || true
    lines="$(echo "$out" | sed -n 's/^supcon-status //p')"
    statuses="$(echo "$lines" | sort | uniq -c | tr -s ' \n' ' ')"
    echo "tpu.sh: $name:$statuses"
    answered="$(echo "$lines" | grep -c . || true)"
    if [ "$answered" = 0 ] || { [ "$workers" != 0 ] && [ "$answered" != "$workers" ]; }; then
      misses=$((misses + 1))  # ssh to some worker failed: a passing fault, or a host is down
      if [ "$misses" -ge 3 ]; then
        echo "tpu.sh: of $workers workers only these answered:$statuses; resuming" >&2
        on_workers worker_stop 0 "$name" >/dev/null 2>&1 || true
        return 75
      fi
    elif echo "$lines" | grep -q '^stopped:'; then
      return 2
    elif echo "$lines" | grep -q '^gone$'; then
      echo "tpu.sh: a worker lost its $name process (host restarted?); resuming" >&2
      on_workers worker_stop 0 "$name" >/dev/null 2>&1 || true
      return 75
    elif echo "$lines" | grep -qv '^running$\|^exit:0$\|^exit:75$'; then
      echo "tpu.sh: $name failed on a worker; stopping the others. Last lines:" >&2
      on_workers worker_stop 0 "$name" >/dev/null 2>&1 || true
      tpus tpu-vm ssh "$TPU_NAME" --worker=all \
        --command="tail -n 30 ~/$name.log | sed \"s/^/[\$(hostname)] /\"" >&2 || true
      return 1
    elif ! echo "$lines" | grep -q '^running$'; then
      if echo "$lines" | grep -q '^exit:75$'; then return 75; fi
      return 0
    else
      misses=0
    fi
    sleep "$POLL_SECONDS"
  done
}

start_job() {  # start_job train|eval
  local module=supcon_jax.main
  [ "$1" = train ] || module=supcon_jax.linear_eval
  on_workers worker_start "$1" "$module" --config="$CONFIG" --workdir="$(workdir)" \
    --config.data.data_dir="gs://$BUCKET/tensorflow_datasets" ${EXTRA[@]+"${EXTRA[@]}"}
}

# jax.distributed joins all workers at once; --worker=all runs the command on them
# simultaneously (https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh).
preflight() {
  tpus tpu-vm ssh "$TPU_NAME" --worker=all --command="cd ~/supcon_jax && \
SUPCON_TPU_SLICE=1 .venv/bin/python -m supcon_jax.preflight --expect_platform=tpu \
--expect_devices=$DEVICES"
}

setup() {
  on_workers worker_setup "$REPO" "$REF" "$UV_VERSION" "$PYTHON_VERSION"
}

# The whole job. An attempt is one slice, or one resumption on the same slice after the trainer
# saved and stopped for maintenance; setup runs again each time (a new slice is bare) and the
# trainer resumes from the workdir's last checkpoint.
job() {
  need_bucket
  resolve_source
  local existing attempt=1 phase=train status new_slice=1
  [ "$DRY_RUN" = 1 ] || existing="$(describe queued-resources state.state)"
  [ "${existing:-NOT_FOUND}" = NOT_FOUND ] \
    || die "a queued resource $TPU_NAME exists ($existing): delete it, or pick another --name"
  trap 'echo "tpu.sh: deleting $TPU_NAME"; delete_slice || true' EXIT
  trap 'exit 130' INT TERM
  while :; do
    echo "tpu.sh: attempt $attempt of $MAX_ATTEMPTS: $phase on $ACCELERATOR in $ZONE"
    [ "$new_slice" = 0 ] || create_slice
    status=0; wait_active || status=$?
    if [ "$status" = 0 ]; then
      setup
      preflight
      while :; do
        start_job "$phase"
        status=0; watch_job "$phase" || status=$?
        [ "$status" = 0 ] || break
        [ "$phase" = train ] || { echo "tpu.sh: done; results in $(workdir)"; return 0; }
        phase="eval"
      done
    fi
    case "$status" in
      75) ;;
      2) echo "tpu.sh: stopped on request; rerun the same command to resume" >&2; return 2 ;;
      *) echo "tpu.sh: $phase failed" >&2; return 1 ;;
    esac
    [ "$attempt" -lt "$MAX_ATTEMPTS" ] \
      || { echo "tpu.sh: interrupted $attempt times; giving up (--max-attempts)" >&2; return 1; }
    attempt=$((attempt + 1))
    if [ "$(describe queued-resources state.state)" = ACTIVE ]; then
      new_slice=0  # saved for maintenance: the slice is still ours
    else
      new_slice=1
      delete_slice
    fi
  done
}

case "$COMMAND" in
  job) job ;;
  create) create_slice; wait_active ;;
  setup) resolve_source; setup ;;
  preflight) preflight ;;
  train|eval) need_bucket; start_job "$COMMAND"; watch_job "$COMMAND" ;;
  logs)
    tpus tpu-vm ssh "$TPU_NAME" --worker=all \
      --command="tail -n 100 -F ~/train.log ~/eval.log 2>/dev/null | sed \"s/^/[\$(hostname)] /\"" ;;
  stop) on_workers worker_stop 1 train eval ;;
  status) tpus queued-resources describe "$TPU_NAME" ;;
  delete) delete_slice ;;
  *) die "unknown command $COMMAND (see --help)" ;;
esac
