#!/usr/bin/env bash
# Runs moto's S3 server (PyPI moto[server], pinned) on 127.0.0.1 without Docker.
#
# moto 5.x enforces the conditional writes gcslock needs on S3: If-None-Match: *
# and If-Match on PutObject, and If-Match on DeleteObject (emulators/README.md
# lists what was measured). It is installed once into a venv under a cache directory.
#
# Usage:
#   emulators/start-moto.sh [--bucket NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one this script started there), creates
#       the buckets, and prints the endpoint URL (for AWS_ENDPOINT_URL) on stdout:
#           export AWS_ENDPOINT_URL=$(emulators/start-moto.sh --bucket gcslock-test 5000)
#           export AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
#   emulators/start-moto.sh --stop PORT [STATE_DIR]
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

VERSION="${MOTO_VERSION:-5.2.5}"
CACHE_DIR="${MOTO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gcslock/moto}"
START_TIMEOUT="${MOTO_START_TIMEOUT:-30}"
PYTHON="${PYTHON:-python3}"

say() { echo "start-moto: $*" >&2; }
die() { echo "start-moto: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }

stop=false
buckets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stop) stop=true; shift ;;
    --bucket) [[ $# -ge 2 ]] || usage; buckets+=("$2"); shift 2 ;;
    --bucket=*) buckets+=("${1#--bucket=}"); shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 && $# -le 2 ]] || usage
PORT="$1"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || die "PORT must be a number from 1 to 65535, got '$PORT'"
STATE_DIR="${2:-${TMPDIR:-/tmp}/gcslock-moto-$PORT}"
PID_FILE="$STATE_DIR/moto.pid"
LOG_FILE="$STATE_DIR/moto.log"
URL="http://127.0.0.1:$PORT"
VENV="$CACHE_DIR/venv-$VERSION"

command -v curl >/dev/null || die "curl is required"

# The pid in the pid file if it is alive and is moto (not a reused pid).
our_server_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q moto_server || return 1
  fi
  echo "$pid"
}

# moto's own API answers without credentials.
answers() {
  curl -sf --max-time 2 "$URL/moto-api/data.json" >/dev/null 2>&1
}

stop_server() {
  local pid
  if pid="$(our_server_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid did not stop on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped moto (pid $pid) on port $PORT"
  else
    say "no moto server started by this script is running for port $PORT"
  fi
  rm -f "$PID_FILE"
}

if $stop; then
  stop_server
  exit 0
fi

install_moto() {
  if [[ -x "$VENV/bin/moto_server" && -f "$VENV/.installed" ]]; then
    return
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON is required to install moto"
  mkdir -p "$CACHE_DIR"
  # Build in a fresh directory and rename it into place, so an interrupted or
  # concurrent install never leaves a half-built venv behind.
  local tmp
  tmp="$(mktemp -d "$CACHE_DIR/.install.XXXXXX")"
  say "installing moto[server]==$VERSION into $VENV"
  if ! "$PYTHON" -m venv "$tmp/venv" >&2; then
    rm -rf "$tmp"
    die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if ! "$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$VERSION" >&2; then
    rm -rf "$tmp"
    die "pip could not install moto[server]==$VERSION"
  fi
  touch "$tmp/venv/.installed"
  rm -rf "$VENV"
  mv "$tmp/venv" "$VENV"
  rmdir "$tmp" 2>/dev/null || true
}

create_bucket() {
  local bucket="$1" code body
  [[ "$bucket" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] \
    || die "invalid bucket name '$bucket': use 3-63 lowercase letters, digits, '-' or '.'"
  body="$(mktemp)"
  # moto does not check signatures, so a plain path-style PUT creates the bucket.
  code="$(curl -s --max-time 10 -o "$body" -w '%{http_code}' -X PUT "$URL/$bucket" || true)"
  case "$code" in
    200) say "created bucket $bucket" ;;
    409) say "bucket $bucket already exists" ;;
    *) say "server answered HTTP $code: $(head -c 500 "$body")"; rm -f "$body"; die "cannot create bucket '$bucket' on $URL" ;;
  esac
  rm -f "$body"
}

mkdir -p "$STATE_DIR"

if pid="$(our_server_pid)"; then
  say "moto already running on port $PORT (pid $pid)"
else
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use"
  fi
  install_moto
  say "starting moto_server $VERSION on $URL (log: $LOG_FILE)"
  # The venv's interpreter runs the entry point: python -m venv writes absolute
  # shebangs, which the rename above would break.
  nohup "$VENV/bin/python" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
    </dev/null >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
fi

deadline=$((SECONDS + START_TIMEOUT))
until answers; do
  if [[ -f "$PID_FILE" ]] && ! our_server_pid >/dev/null; then
    say "server log ($LOG_FILE):"
    tail -n 20 "$LOG_FILE" >&2 || true
    rm -f "$PID_FILE"
    die "moto exited before answering on $URL"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "moto did not answer on $URL within ${START_TIMEOUT}s"
  fi
  sleep 0.2
done

for bucket in "${buckets[@]}"; do
  create_bucket "$bucket"
done

echo "$URL"
