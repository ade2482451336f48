#!/usr/bin/env bash
# Stops the emulators emulators/start.sh started with the same STATE_DIR.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: emulators/stop.sh STATE_DIR" >&2; exit 64; }
STATE_DIR="$1"
[[ -f "$STATE_DIR/ports" ]] || { echo "emulators/stop.sh: nothing started in $STATE_DIR" >&2; exit 0; }
read -r MOTO_PORT AZURITE_PORT <"$STATE_DIR/ports"
"$HERE/start-moto.sh" --stop "$MOTO_PORT" "$STATE_DIR/moto"
"$HERE/start-azurite.sh" --stop "$AZURITE_PORT" "$STATE_DIR/azurite"
