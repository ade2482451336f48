#!/usr/bin/env bash
# Starts the storage emulators side by side on free ports of 127.0.0.1, installing
# (or, for strict-gcs, building) them on first use, all in parallel, and prints the
# shell lines that point gcslock's tests at them:
#
#   eval "$(emulators/start-all.sh STATE_DIR [BUCKET [EMULATOR...]])"
#   cargo test --workspace --all-features
#   emulators/stop-all.sh STATE_DIR
#
# EMULATOR: fake-gcs-server, strict-gcs, moto or azurite (default: all four).
# BUCKET (default gcslock-test) is created on each: a bucket, or on Azurite a
# container. STATE_DIR keeps the ports, pid files and logs; stop-all.sh stops
# what this started there. Each emulator's own script documents its settings.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
EMU_NAME=start-all

[[ $# -ge 1 ]] || die "usage: emulators/start-all.sh STATE_DIR [BUCKET [EMULATOR...]]"
STATE_DIR="$1"
BUCKET="${2:-gcslock-test}"
shift $(($# >= 2 ? 2 : 1))
EMULATORS=("$@")
((${#EMULATORS[@]} > 0)) || EMULATORS=(fake-gcs-server strict-gcs moto azurite)
mkdir -p "$STATE_DIR"
: >"$STATE_DIR/ports"

declare -A OPTION=([fake-gcs-server]=--bucket [strict-gcs]=--bucket [moto]=--bucket [azurite]=--container)
for name in "${EMULATORS[@]}"; do
  [[ -n "${OPTION[$name]:-}" ]] || die "unknown emulator '$name' (fake-gcs-server, strict-gcs, moto or azurite)"
done

declare -A STARTER PORTS
for name in "${EMULATORS[@]}"; do
  # A port no other emulator of this run has taken.
  port="$(emu_free_port)"
  while [[ " ${PORTS[*]} " == *" $port "* ]]; do port="$(emu_free_port)"; done
  PORTS[$name]="$port"
  echo "$name $port" >>"$STATE_DIR/ports"
  "$HERE/$name.sh" "${OPTION[$name]}" "$BUCKET" "$port" "$STATE_DIR/$name" \
    >"$STATE_DIR/$name.url" 2>"$STATE_DIR/$name.start.log" &
  STARTER[$name]=$!
done

failed=""
for name in "${EMULATORS[@]}"; do
  wait "${STARTER[$name]}" || failed+=" $name"
  cat "$STATE_DIR/$name.start.log" >&2
done
if [[ -n "$failed" ]]; then
  "$HERE/stop-all.sh" "$STATE_DIR" >/dev/null 2>&1 || true
  die "could not start:$failed"
fi

url() { cat "$STATE_DIR/$1.url"; }
for name in "${EMULATORS[@]}"; do
  case "$name" in
    fake-gcs-server)
      # GCSLOCK_EMULATOR_KIND marks fake-gcs-server's measured gaps, so the suites
      # skip (and name) the cases it cannot judge; strict-gcs runs those.
      echo "export STORAGE_EMULATOR_HOST=$(url fake-gcs-server) GCSLOCK_EMULATOR_KIND=fake-gcs-server" ;;
    strict-gcs)
      echo "export GCSLOCK_STRICT_EMULATOR_HOST=$(url strict-gcs)" ;;
    moto)
      echo "unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL_S3"
      echo "export AWS_ENDPOINT_URL=$(url moto) AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
      echo "export GCSLOCK_TEST_S3_URL=s3://$BUCKET" ;;
    azurite)
      echo "unset AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY AZURE_STORAGE_SAS_KEY"
      echo "export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=$(url azurite)"
      echo "export GCSLOCK_TEST_AZURE_URL=az://$BUCKET" ;;
  esac
done
echo "export GCSLOCK_TEST_BUCKET=$BUCKET"
