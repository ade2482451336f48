#!/usr/bin/env bash
# Stops the emulators emulators/start-all.sh started with the same STATE_DIR:
#   emulators/stop-all.sh STATE_DIR
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: emulators/stop-all.sh STATE_DIR" >&2; exit 64; }
STATE_DIR="$1"
[[ -f "$STATE_DIR/ports" ]] || { echo "stop-all: nothing started in $STATE_DIR" >&2; exit 0; }
status=0
while read -r name port; do
  "$HERE/$name.sh" --stop "$port" "$STATE_DIR/$name" || status=1
done <"$STATE_DIR/ports"
exit "$status"
