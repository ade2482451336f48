#!/usr/bin/env bash
# Runs Azurite's Blob service (npm package azurite, pinned) on 127.0.0.1 without Docker.
#
# Azurite enforces the conditional writes gcslock needs on Azure Blob: If-None-Match: *
# and If-Match on Put Blob (emulators/README.md lists what was measured). It is
# installed once with npm into a cache directory, and runs in memory, without
# telemetry and without --loose (which would ignore headers it does not support).
#
# Usage:
#   emulators/azurite.sh [--container NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one this script started there), creates
#       the containers in the emulator account devstoreaccount1, and prints the
#       blob endpoint (for AZURITE_BLOB_STORAGE_URL) on stdout (PORT 0: a free port):
#           export AZURITE_BLOB_STORAGE_URL=$(emulators/azurite.sh --container gcslock-test 10000)
#           export AZURE_STORAGE_USE_EMULATOR=true
#   emulators/azurite.sh --stop PORT [STATE_DIR]
#       Stops the server started for PORT.
#
# STATE_DIR holds the pid file and the server log, and is Azurite's working
# directory (default: $TMPDIR/gcslock-azurite-PORT). Blobs live in memory.
#
# Environment:
#   AZURITE_CACHE_DIR      where npm installs it (default: $XDG_CACHE_HOME or ~/.cache, /gcslock/azurite)
#   AZURITE_VERSION        the npm package version (default: 3.35.0, the newest that runs on node 20)
#   AZURITE_START_TIMEOUT  seconds to wait for the server to answer (default: 30)
#   PYTHON                 the Python 3 interpreter that signs the create-container request (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${AZURITE_VERSION:-3.35.0}"
CACHE_DIR="${AZURITE_CACHE_DIR:-$EMU_CACHE_ROOT/azurite}"
START_TIMEOUT="${AZURITE_START_TIMEOUT:-30}"
# Azurite's documented, public development account (not a secret).
ACCOUNT=devstoreaccount1
ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
PREFIX="$CACHE_DIR/$VERSION"
BIN="$PREFIX/node_modules/.bin/azurite-blob"

EMU_NAME=azurite
EMU_WHAT=Azurite
EMU_PROC=azurite-blob
EMU_FILE=azurite
EMU_STATE_PREFIX=gcslock-azurite
EMU_NAME_OPTION=--container

# Any HTTP answer from Azurite (an anonymous request gets 4xx with its Server header).
emu_answers() {
  curl -s --max-time 2 -o /dev/null -D - "$URL/$ACCOUNT?comp=list" 2>/dev/null | grep -qi '^server: Azurite-Blob'
}

install_package() {
  emu_npm_install "$1" "azurite@$VERSION"
  touch "$1/.installed"
}

emu_launch() {
  if ! [[ -x "$BIN" && -f "$PREFIX/.installed" ]]; then
    emu_need node "node is required (Azurite $VERSION needs node >= 18)"
    emu_need npm "npm is required to install Azurite"
    emu_staged_install "$PREFIX" "azurite@$VERSION" install_package
    [[ -x "$BIN" ]] || die "installed, but $BIN is not there"
  fi
  say "starting azurite-blob $VERSION on $URL (log: $LOG_FILE)"
  # --disableTelemetry: no traffic leaves this machine. --skipApiVersionCheck: the
  # object_store crate may send a newer x-ms-version than this Azurite knows.
  # It runs in STATE_DIR, so nothing it may write lands in the caller's directory.
  emu_spawn "$STATE_DIR" "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" \
    --inMemoryPersistence --extentMemoryLimit 64 --disableTelemetry --skipApiVersionCheck \
    --disableProductStyleUrl \
    --silent
}

# Creates a container with a SharedKey-signed request (the emulator account's key).
emu_create() {
  local container="$1"
  [[ "$container" =~ ^[a-z0-9]([a-z0-9]|-[a-z0-9]){2,62}$ ]] \
    || die "invalid container name '$container': 3-63 lowercase letters, digits and single hyphens"
  emu_need "$PYTHON" "$PYTHON is required to create containers"
  "$PYTHON" - "$URL" "$ACCOUNT" "$ACCOUNT_KEY" "$container" <<'PY' || die "cannot create container '$container' on $URL"
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate
url, account, key, container = sys.argv[1:5]
date, version = formatdate(usegmt=True), "2021-08-06"
resource = f"/{account}/{account}/{container}\nrestype:container"
to_sign = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
signature = base64.b64encode(
    hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
).decode()
request = urllib.request.Request(
    f"{url}/{account}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version,
             "Authorization": f"SharedKey {account}:{signature}", "Content-Length": "0"})
try:
    urllib.request.urlopen(request, timeout=10)
    print(f"azurite: created container {container}", file=sys.stderr)
except urllib.error.HTTPError as error:
    if error.code != 409:
        print(f"azurite: HTTP {error.code}: {error.read()[:500]!r}", file=sys.stderr)
        sys.exit(1)
    print(f"azurite: container {container} already exists", file=sys.stderr)
PY
}

emu_main "$@"
