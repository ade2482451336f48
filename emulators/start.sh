#!/usr/bin/env bash
# Starts moto (S3) and Azurite (Azure Blob) side by side on free ports, installing
# them on first use (in parallel), and prints the shell lines that point gcslock's
# object_store tests at them:
#
#   eval "$(emulators/start.sh STATE_DIR [BUCKET])"    # BUCKET: default gcslock-test
#   cargo test --features object-store --test object_store
#   emulators/stop.sh STATE_DIR
#
# BUCKET is created as an S3 bucket on moto and as a container on Azurite. STATE_DIR
# keeps the pid files, logs and ports; emulators/stop.sh stops both. Each emulator's
# own script (start-moto.sh, start-azurite.sh) documents its settings.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/emulator.sh
source "$HERE/../scripts/lib/emulator.sh"
EMU_NAME=emulators/start.sh

[[ $# -ge 1 && $# -le 2 ]] || die "usage: emulators/start.sh STATE_DIR [BUCKET]"
STATE_DIR="$1"
BUCKET="${2:-gcslock-test}"
mkdir -p "$STATE_DIR"
MOTO_PORT="$(emu_free_port)"
AZURITE_PORT="$(emu_free_port)"
while [[ "$AZURITE_PORT" == "$MOTO_PORT" ]]; do AZURITE_PORT="$(emu_free_port)"; done
echo "$MOTO_PORT $AZURITE_PORT" >"$STATE_DIR/ports"

"$HERE/start-moto.sh" --bucket "$BUCKET" "$MOTO_PORT" "$STATE_DIR/moto" \
  >"$STATE_DIR/moto.url" 2>"$STATE_DIR/moto.start.log" &
moto=$!
"$HERE/start-azurite.sh" --container "$BUCKET" "$AZURITE_PORT" "$STATE_DIR/azurite" \
  >"$STATE_DIR/azurite.url" 2>"$STATE_DIR/azurite.start.log" &
azurite=$!
failed=""
wait "$moto" || failed+=" moto"
wait "$azurite" || failed+=" azurite"
cat "$STATE_DIR/moto.start.log" "$STATE_DIR/azurite.start.log" >&2
if [[ -n "$failed" ]]; then
  "$HERE/stop.sh" "$STATE_DIR" >/dev/null 2>&1 || true
  die "could not start:$failed"
fi

cat <<LINES
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL_S3 AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY AZURE_STORAGE_SAS_KEY
export AWS_ENDPOINT_URL=$(cat "$STATE_DIR/moto.url") AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export GCSLOCK_TEST_S3_URL=s3://$BUCKET
export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=$(cat "$STATE_DIR/azurite.url")
export GCSLOCK_TEST_AZURE_URL=az://$BUCKET
LINES
