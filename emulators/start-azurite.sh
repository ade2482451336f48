#!/usr/bin/env bash
# Runs Azurite's Blob service (npm package azurite, pinned) on 127.0.0.1 without Docker.
#
# Azurite enforces the conditional writes gcslock needs on Azure Blob: If-None-Match: *
# and If-Match on Put Blob (emulators/README.md lists what was measured). It is
# installed once with npm into a cache directory, and runs in memory, without
# telemetry and without --loose (which would ignore headers it does not support).
#
# Usage:
#   emulators/start-azurite.sh [--container NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one this script started there), creates
#       the containers in the emulator account devstoreaccount1, and prints the
#       blob endpoint (for AZURITE_BLOB_STORAGE_URL) on stdout:
#           export AZURITE_BLOB_STORAGE_URL=$(emulators/start-azurite.sh --container gcslock-test 10000)
#           export AZURE_STORAGE_USE_EMULATOR=true
#   emulators/start-azurite.sh --stop PORT [STATE_DIR]
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

VERSION="${AZURITE_VERSION:-3.35.0}"
CACHE_DIR="${AZURITE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gcslock/azurite}"
START_TIMEOUT="${AZURITE_START_TIMEOUT:-30}"
PYTHON="${PYTHON:-python3}"
# Azurite's documented, public development account (not a secret).
ACCOUNT=devstoreaccount1
ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

say() { echo "start-azurite: $*" >&2; }
die() { echo "start-azurite: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }

stop=false
containers=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stop) stop=true; shift ;;
    --container) [[ $# -ge 2 ]] || usage; containers+=("$2"); shift 2 ;;
    --container=*) containers+=("${1#--container=}"); shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 && $# -le 2 ]] || usage
PORT="$1"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || die "PORT must be a number from 1 to 65535, got '$PORT'"
STATE_DIR="${2:-${TMPDIR:-/tmp}/gcslock-azurite-$PORT}"
PID_FILE="$STATE_DIR/azurite.pid"
LOG_FILE="$STATE_DIR/azurite.log"
URL="http://127.0.0.1:$PORT"
PREFIX="$CACHE_DIR/$VERSION"
BIN="$PREFIX/node_modules/.bin/azurite-blob"

command -v curl >/dev/null || die "curl is required"

# The pid in the pid file if it is alive and is Azurite (not a reused pid).
our_server_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q azurite-blob || return 1
  fi
  echo "$pid"
}

# Any HTTP answer from Azurite (an anonymous request gets 4xx with its Server header).
answers() {
  curl -s --max-time 2 -o /dev/null -D - "$URL/$ACCOUNT?comp=list" 2>/dev/null | grep -qi '^server: Azurite-Blob'
}

stop_server() {
  local pid
  if pid="$(our_server_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    # Azurite takes a second or two to close its listeners.
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid did not stop on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped Azurite (pid $pid) on port $PORT"
  else
    say "no Azurite started by this script is running for port $PORT"
  fi
  rm -f "$PID_FILE"
}

if $stop; then
  stop_server
  exit 0
fi

install_azurite() {
  if [[ -x "$BIN" && -f "$PREFIX/.installed" ]]; then
    return
  fi
  command -v node >/dev/null || die "node is required (Azurite $VERSION needs node >= 18)"
  command -v npm >/dev/null || die "npm is required to install Azurite"
  mkdir -p "$CACHE_DIR"
  local tmp
  tmp="$(mktemp -d "$CACHE_DIR/.install.XXXXXX")"
  say "installing azurite@$VERSION into $PREFIX"
  if ! npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2; then
    rm -rf "$tmp"
    die "npm could not install azurite@$VERSION"
  fi
  touch "$tmp/.installed"
  rm -rf "$PREFIX"
  mv "$tmp" "$PREFIX"
  [[ -x "$BIN" ]] || die "installed, but $BIN is not there"
}

# Creates a container with a SharedKey-signed request (the emulator account's key).
create_container() {
  local container="$1"
  [[ "$container" =~ ^[a-z0-9]([a-z0-9]|-[a-z0-9]){2,62}$ ]] \
    || die "invalid container name '$container': 3-63 lowercase letters, digits and single hyphens"
  command -v "$PYTHON" >/dev/null || die "$PYTHON is required to create containers"
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
    print(f"start-azurite: created container {container}", file=sys.stderr)
except urllib.error.HTTPError as error:
    if error.code != 409:
        print(f"start-azurite: HTTP {error.code}: {error.read()[:500]!r}", file=sys.stderr)
        sys.exit(1)
    print(f"start-azurite: container {container} already exists", file=sys.stderr)
PY
}

mkdir -p "$STATE_DIR"

if pid="$(our_server_pid)"; then
  say "Azurite already running on port $PORT (pid $pid)"
else
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use"
  fi
  install_azurite
  say "starting azurite-blob $VERSION on $URL (log: $LOG_FILE)"
  # --disableTelemetry: no traffic leaves this machine. --skipApiVersionCheck: the
  # object_store crate may send a newer x-ms-version than this Azurite knows.
  # It runs in STATE_DIR, so nothing it may write lands in the caller's directory.
  (cd "$STATE_DIR" && exec nohup "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" \
    --inMemoryPersistence --extentMemoryLimit 64 --disableTelemetry --skipApiVersionCheck \
    --disableProductStyleUrl \
    --silent </dev/null >"$LOG_FILE" 2>&1) &
  echo $! >"$PID_FILE"
fi

deadline=$((SECONDS + START_TIMEOUT))
until answers; do
  if [[ -f "$PID_FILE" ]] && ! our_server_pid >/dev/null; then
    say "server log ($LOG_FILE):"
    tail -n 20 "$LOG_FILE" >&2 || true
    rm -f "$PID_FILE"
    die "Azurite exited before answering on $URL"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "Azurite did not answer on $URL within ${START_TIMEOUT}s"
  fi
  sleep 0.2
done

for container in "${containers[@]}"; do
  create_container "$container"
done

echo "$URL"
