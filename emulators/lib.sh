# shellcheck shell=bash
# The one shell library of the emulator scripts in this folder: fake-gcs-server.sh,
# strict-gcs.sh, moto.sh and azurite.sh each run one storage emulator on 127.0.0.1
# without Docker; start-all.sh and stop-all.sh run them together.
#
# Source it, set the variables below, define the hooks, and call `emu_main "$@"`.
# It gives every emulator script the same command line:
#
#   SCRIPT [OPTION NAME]... PORT [STATE_DIR]   start (or reuse), create NAMEs, print the URL
#                                              (PORT 0 picks a free port)
#   SCRIPT --stop PORT [STATE_DIR]             stop the server started for PORT
#   SCRIPT --help                              the script's header comment
#
# Variables (set before emu_main):
#   EMU_NAME          prefix of messages (moto)
#   EMU_WHAT          the server in messages (moto)
#   EMU_PROC          a word of the server's command line, so a reused pid is not taken for it
#   EMU_FILE          pid and log files: STATE_DIR/EMU_FILE.pid and .log
#   EMU_STATE_PREFIX  default STATE_DIR: $TMPDIR/EMU_STATE_PREFIX-PORT
#   EMU_NAME_OPTION   the option that names what to create (--bucket)
#   START_TIMEOUT     seconds to wait for the server to answer
# Hooks:
#   emu_answers       true once the server answers on $URL
#   emu_launch        installs the server if needed and starts it with emu_spawn
#   emu_create NAME   creates the bucket (container) NAME
#   emu_reuse_foreign optional: true (after saying so) to reuse a server this script
#                     did not start
# emu_main sets PORT, STATE_DIR, PID_FILE, LOG_FILE, URL and EMU_TO_CREATE for them.

PYTHON="${PYTHON:-python3}"
# Where installs go, one folder per emulator.
# shellcheck disable=SC2034 # read by the scripts that source this
EMU_CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/gcslock"

say() { echo "$EMU_NAME: $*" >&2; }
die() { echo "$EMU_NAME: ERROR: $*" >&2; exit 1; }

# The header comment of the running script, as help.
usage() {
  awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0" >&2
  exit 64
}

# emu_need PROGRAM MESSAGE: fails with MESSAGE unless PROGRAM is on the PATH.
emu_need() {
  command -v "$1" >/dev/null || die "$2"
}

# A TCP port that is free on 127.0.0.1 now.
emu_free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The pid in the pid file if it is alive and is our server (not a reused pid).
emu_our_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$EMU_PROC" || return 1
  fi
  echo "$pid"
}

# SIGTERM, up to 5 s to exit (Azurite takes a second or two to close its
# listeners), then SIGKILL.
emu_stop() {
  local pid
  if pid="$(emu_our_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid did not stop on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $EMU_WHAT (pid $pid) on port $PORT"
  else
    say "no $EMU_WHAT started by this script is running for port $PORT"
  fi
  rm -f "$PID_FILE"
}

# emu_spawn DIR COMMAND...: runs COMMAND in DIR in the background, detached from
# the terminal, its output in the log, its pid in the pid file.
emu_spawn() {
  local dir="$1"
  shift
  (cd "$dir" && exec nohup "$@" </dev/null >"$LOG_FILE" 2>&1) &
  echo $! >"$PID_FILE"
}

# emu_staged_install DEST WHAT STEP: runs `STEP STAGE` in a subshell, STAGE being a
# fresh directory next to DEST, and renames STAGE to DEST only if STEP succeeds, so
# an interrupted or concurrent install never leaves a half-built DEST behind.
emu_staged_install() {
  local dest="$1" what="$2" step="$3" tmp
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp -d "$(dirname "$dest")/.install.XXXXXX")"
  say "installing $what into $dest"
  if ! ("$step" "$tmp/stage"); then
    rm -rf "$tmp"
    exit 1
  fi
  rm -rf "$dest"
  mv "$tmp/stage" "$dest"
  rmdir "$tmp" 2>/dev/null || true
}

# emu_pip_venv DIR PACKAGE: a venv in DIR with PACKAGE installed (for emu_staged_install).
emu_pip_venv() {
  local dir="$1" package="$2"
  "$PYTHON" -m venv "$dir" >&2 \
    || die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$package" >&2 \
    || die "pip could not install $package"
}

# emu_npm_install DIR PACKAGE: PACKAGE installed with npm under the prefix DIR
# (for emu_staged_install).
emu_npm_install() {
  local dir="$1" package="$2"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$package" >&2 \
    || die "npm could not install $package"
}

# emu_http_create KIND NAME CURL_ARGS...: creates KIND NAME with one request
# (200 created, 409 already there).
emu_http_create() {
  local kind="$1" name="$2" code body
  shift 2
  body="$(mktemp)"
  code="$(curl -s --max-time 10 -o "$body" -w '%{http_code}' "$@" || true)"
  case "$code" in
    200) say "created $kind $name" ;;
    409) say "$kind $name already exists" ;;
    *) say "server answered HTTP $code: $(head -c 500 "$body")"; rm -f "$body"; die "cannot create $kind '$name' on $URL" ;;
  esac
  rm -f "$body"
}

# emu_gcs_create_bucket NAME: creates bucket NAME through the GCS JSON API on $URL.
emu_gcs_create_bucket() {
  local bucket="$1"
  [[ "$bucket" =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] \
    || die "invalid bucket name '$bucket': use 3-222 lowercase letters, digits, '-', '_' or '.'"
  emu_http_create bucket "$bucket" -X POST -H 'Content-Type: application/json' \
    -d "{\"name\":\"$bucket\"}" "$URL/storage/v1/b"
}

# Waits, at most START_TIMEOUT seconds, until the server answers; fails at once if
# the server it started exits.
emu_wait_until_answers() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until emu_answers; do
    if [[ -f "$PID_FILE" ]] && ! emu_our_pid >/dev/null; then
      say "server log ($LOG_FILE):"
      tail -n 20 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      die "$EMU_WHAT exited before answering on $URL"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$LOG_FILE" >&2 || true
      emu_stop
      die "$EMU_WHAT did not answer on $URL within ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

emu_main() {
  local stop=false pid name
  EMU_TO_CREATE=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --stop) stop=true; shift ;;
      "$EMU_NAME_OPTION") [[ $# -ge 2 ]] || usage; EMU_TO_CREATE+=("$2"); shift 2 ;;
      "$EMU_NAME_OPTION"=*) EMU_TO_CREATE+=("${1#"$EMU_NAME_OPTION"=}"); shift ;;
      -h|--help) usage ;;
      --) shift; break ;;
      -*) die "unknown option $1 (see --help)" ;;
      *) break ;;
    esac
  done
  [[ $# -ge 1 && $# -le 2 ]] || usage
  PORT="$1"
  [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -le 65535 ]] || die "PORT must be a number from 0 to 65535, got '$PORT'"
  if ((PORT == 0)); then
    $stop && die "--stop needs the port the server was started on"
    PORT="$(emu_free_port)"
  fi
  STATE_DIR="${2:-${TMPDIR:-/tmp}/$EMU_STATE_PREFIX-$PORT}"
  PID_FILE="$STATE_DIR/$EMU_FILE.pid"
  LOG_FILE="$STATE_DIR/$EMU_FILE.log"
  URL="http://127.0.0.1:$PORT"

  emu_need curl "curl is required"

  if $stop; then
    emu_stop
    exit 0
  fi

  mkdir -p "$STATE_DIR"
  if pid="$(emu_our_pid)"; then
    say "$EMU_WHAT already running on port $PORT (pid $pid)"
  elif declare -F emu_reuse_foreign >/dev/null && emu_reuse_foreign; then
    :
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      die "port $PORT on 127.0.0.1 is already in use${EMU_PORT_IN_USE_NOTE:-}"
    fi
    emu_launch
  fi
  emu_wait_until_answers
  for name in "${EMU_TO_CREATE[@]}"; do
    emu_create "$name"
  done
  echo "$URL"
}
