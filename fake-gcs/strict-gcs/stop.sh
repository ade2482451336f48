#!/usr/bin/env bash
# Stops a strict-gcs started by start.sh:  fake-gcs/strict-gcs/stop.sh PORT
set -euo pipefail

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT" >&2
    exit 64
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
run_dir=${STRICT_GCS_RUN_DIR:-$target_dir/strict-gcs}
pid_file=$run_dir/strict-gcs-$1.pid

[[ -f $pid_file ]] || { echo "strict-gcs: no pid file $pid_file" >&2; exit 1; }
pid=$(cat "$pid_file")
# Only ever signal the process start.sh started, not whatever reuses its pid later.
comm=$(ps -p "$pid" -o comm= 2>/dev/null || true)
if [[ -n $comm && $comm != strict-gcs* ]]; then
    echo "strict-gcs: pid $pid is now $comm, not strict-gcs; removing the stale pid file" >&2
    rm -f "$pid_file"
    exit 1
fi
if kill "$pid" 2>/dev/null; then
    # SIGTERM ends it at once; wait at most ~5 s.
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
fi
rm -f "$pid_file"
echo "strict-gcs: stopped pid $pid" >&2
