#!/usr/bin/env bash
# Runs strict-gcs (this workspace's emulators/strict-gcs crate) on 127.0.0.1: the
# GCS JSON API with GCS's conditional semantics enforced exactly, and fault
# injection. It is built with cargo first (the dev profile, so it shares
# artifacts with `cargo test`).
#
# Usage:
#   emulators/strict-gcs.sh [--bucket NAME]... PORT [STATE_DIR]
#       Builds and starts the server (or reuses the one this script started there),
#       creates the buckets, and prints the STORAGE_EMULATOR_HOST value on stdout
#       (PORT 0: a free port):
#           export GCSLOCK_STRICT_EMULATOR_HOST=$(emulators/strict-gcs.sh --bucket gcslock-test 0)
#   emulators/strict-gcs.sh --stop PORT [STATE_DIR]
#       Stops the server started for PORT.
#
# STATE_DIR holds the pid file and the server log (default: $TMPDIR/gcslock-strict-gcs-PORT).
# Objects live in memory and vanish when the server stops.
#
# Environment:
#   STRICT_GCS_FLAGS          extra server flags, e.g. "--reset-after 0.1 --seed 7"
#                             (emulators/strict-gcs/README.md lists them)
#   STRICT_GCS_START_TIMEOUT  seconds to wait for the server to answer (default: 30)
#   CARGO_TARGET_DIR          honoured, as cargo does
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START_TIMEOUT="${STRICT_GCS_START_TIMEOUT:-30}"

EMU_NAME=strict-gcs
EMU_WHAT=strict-gcs
EMU_PROC=strict-gcs
EMU_FILE=strict-gcs
EMU_STATE_PREFIX=gcslock-strict-gcs
EMU_NAME_OPTION=--bucket

emu_answers() {
  curl -sf --max-time 2 -o /dev/null "$URL/_strict/stats" 2>/dev/null
}

emu_launch() {
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/strict-gcs" extra
  emu_need cargo "cargo is required to build strict-gcs (https://rustup.rs)"
  say "building (cargo build -p strict-gcs, dev profile)"
  cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p strict-gcs >&2 \
    || die "cargo could not build strict-gcs"
  [[ -x "$bin" ]] || die "$bin was not built"
  # shellcheck disable=SC2206 # word splitting of the extra flags is intended
  extra=(${STRICT_GCS_FLAGS:-})
  say "starting $bin on $URL (log: $LOG_FILE)"
  emu_spawn "$PWD" "$bin" --host 127.0.0.1 --port "$PORT" "${extra[@]}"
}

emu_create() {
  emu_gcs_create_bucket "$1"
}

emu_main "$@"
