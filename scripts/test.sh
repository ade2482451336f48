#!/usr/bin/env bash
# Runs every test against emulators this script starts itself (emulators/start-all.sh):
#   fake-gcs-server (GCS wire compatibility), strict-gcs (GCS's conditional
#   semantics, with faults), moto (S3) and Azurite (Azure Blob).
# Needs only the Rust toolchain, python3 with pip and venv, curl, node and npm.
# Extra arguments are passed to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== %s\n' "$*"; }

STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gcslock-test.XXXXXX")"

stop_emulators() {
  local status=$? log
  if ((status != 0)); then
    for log in "$STATE_DIR"/*/*.log; do
      [[ -s "$log" ]] || continue
      echo "--- $log (last 30 lines)"
      tail -n 30 "$log" || true
    done
  fi
  emulators/stop-all.sh "$STATE_DIR" >/dev/null 2>&1 || true
  rm -rf "$STATE_DIR"
  exit "$status"
}
trap stop_emulators EXIT

section "emulators: fake-gcs-server, strict-gcs, moto, Azurite (emulators/README.md)"
eval "$(emulators/start-all.sh "$STATE_DIR" gcslock-test)"
for url in "$STATE_DIR"/*.url; do
  echo "$(basename "$url" .url): $(cat "$url")"
done
# Semantics and object_store tests must never be skipped silently.
export GCSLOCK_REQUIRE_STRICT=1 GCSLOCK_REQUIRE_OBJECT_STORE=1

section "cargo test"
cargo test --workspace --all-features --no-fail-fast "$@"
