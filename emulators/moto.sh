#!/usr/bin/env bash
# Runs moto's S3 server (PyPI moto[server], pinned) on 127.0.0.1 without Docker.
#
# moto 5.x enforces the conditional writes gcslock needs on S3: If-None-Match: *
# and If-Match on PutObject, and If-Match on DeleteObject (emulators/README.md
# lists what was measured). It is installed once into a venv under a cache directory.
#
# Usage:
#   emulators/moto.sh [--bucket NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one this script started there), creates
#       the buckets, and prints the endpoint URL (for AWS_ENDPOINT_URL) on stdout
#       (PORT 0: a free port):
#           export AWS_ENDPOINT_URL=$(emulators/moto.sh --bucket gcslock-test 5000)
#           export AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
#   emulators/moto.sh --stop PORT [STATE_DIR]
#       Stops the server started for PORT.
#
# STATE_DIR holds the pid file and the server log (default: $TMPDIR/gcslock-moto-PORT).
# Objects live in memory and vanish when the server stops.
#
# Environment:
#   MOTO_CACHE_DIR       where the venv goes (default: $XDG_CACHE_HOME or ~/.cache, /gcslock/moto)
#   MOTO_VERSION         the moto version (default: 5.2.5, the one measured)
#   MOTO_START_TIMEOUT   seconds to wait for the server to answer (default: 30)
#   PYTHON               the Python 3 interpreter (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${MOTO_VERSION:-5.2.5}"
CACHE_DIR="${MOTO_CACHE_DIR:-$EMU_CACHE_ROOT/moto}"
START_TIMEOUT="${MOTO_START_TIMEOUT:-30}"
VENV="$CACHE_DIR/venv-$VERSION"

EMU_NAME=moto
EMU_WHAT=moto
EMU_PROC=moto_server
EMU_FILE=moto
EMU_STATE_PREFIX=gcslock-moto
EMU_NAME_OPTION=--bucket

# moto's own API answers without credentials.
emu_answers() {
  curl -sf --max-time 2 "$URL/moto-api/data.json" >/dev/null 2>&1
}

install_venv() {
  emu_pip_venv "$1" "moto[server]==$VERSION"
  touch "$1/.installed"
}

emu_launch() {
  if ! [[ -x "$VENV/bin/moto_server" && -f "$VENV/.installed" ]]; then
    emu_need "$PYTHON" "$PYTHON is required to install moto"
    emu_staged_install "$VENV" "moto[server]==$VERSION" install_venv
  fi
  say "starting moto_server $VERSION on $URL (log: $LOG_FILE)"
  # The venv's interpreter runs the entry point: python -m venv writes absolute
  # shebangs, which the rename after the install breaks.
  emu_spawn "$PWD" "$VENV/bin/python" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT"
}

emu_create() {
  local bucket="$1"
  [[ "$bucket" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] \
    || die "invalid bucket name '$bucket': use 3-63 lowercase letters, digits, '-' or '.'"
  # moto does not check signatures, so a plain path-style PUT creates the bucket.
  emu_http_create bucket "$bucket" -X PUT "$URL/$bucket"
}

emu_main "$@"
