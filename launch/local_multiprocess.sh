#!/usr/bin/env bash
# N processes on this machine, each with its own CPU devices, joined by jax.distributed (gloo):
# a multi-host job in miniature, for trying multi-process code without a cluster.
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-m MODULE] -- ARGS
#   launch/local_multiprocess.sh -n 2 -d 4 -- --config=configs/fashion_mnist.py --workdir=/tmp/mp
#
# MODULE defaults to supcon_jax.main. Logs go to WORKDIR-independent files in $LOG_DIR
# (default: a temporary directory); a failing process's log is printed and the others killed.
set -euo pipefail

processes=2
devices=4
module=supcon_jax.main
while getopts "n:d:m:h" opt; do
  case "$opt" in
    n) processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    m) module="$OPTARG" ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" != "--" ] || shift

here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3
log_dir="${LOG_DIR:-$(mktemp -d)}"
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"

pids=()
# bash < 4.4 (macOS: 3.2) calls an empty array unbound under set -u, hence ${a[@]+...}.
cleanup() { for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

for ((i = 0; i < processes; i++)); do
  (cd "$here" && JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
    exec "$python" -m "$module" --coordinator_address="localhost:$port" \
      --num_processes="$processes" --process_id="$i" ${1+"$@"}) > "$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "$processes processes x $devices devices; logs in $log_dir"

status=0
for ((i = 0; i < processes; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; its log:" >&2
    tail -n 50 "$log_dir/process_$i.log" >&2
    status=1
    cleanup
  fi
done
trap - EXIT
exit "$status"
