#!/usr/bin/env bash
# gcslock in one minute, on this machine: no cloud account needed.
#
#   scripts/demo.sh
#
# Builds gcslock and strict-gcs, showing progress (a first build compiles about 256
# crates: 3 to 8 minutes on 2 cores; measured 7 min 55 s with other builds running;
# later runs take about 15 s in all), starts a local GCS emulator
# (emulators/strict-gcs.sh: strict-gcs, which enforces GCS's conditional requests
# exactly; emulators/fake-gcs-server.sh if strict-gcs cannot be built), then:
#   1. three jobs start at once on one lock: one runs, the other two are told it is busy;
#   2. a holder crashes (SIGKILL) without releasing; a waiter takes the lock over once
#      the crashed holder's lease has run out by the storage server's clock.
# Everything it starts is stopped on exit. Needs cargo, curl and python3.
#
# GCSLOCK_DEMO_EMULATOR=fake-gcs-server skips strict-gcs and uses fake-gcs-server.
# The jobs' scripts are single-quoted on purpose: $GCSLOCK_TOKEN expands in the job.
# shellcheck disable=SC2016
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BUCKET=gcslock-demo
LOCK="gs://$BUCKET/jobs/nightly-report"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gcslock-demo.XXXXXX")"

EMULATOR=""
BACKGROUND=()

if [[ -t 1 ]]; then
  bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
  bold() { printf '\n%s\n' "$*"; }
fi
say() { printf '  %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local status=$?
  for pid in "${BACKGROUND[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -f "$WORK/holder-child.pid" ]]; then
    kill -KILL -- "-$(cat "$WORK/holder-child.pid")" 2>/dev/null || true
  fi
  if [[ -n "$EMULATOR" ]]; then
    "emulators/$EMULATOR.sh" --stop "${STORAGE_EMULATOR_HOST##*:}" "$WORK/$EMULATOR" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (at most ~30s) for a file to exist and be non-empty.
wait_for_file() {
  local file="$1" what="$2"
  for _ in $(seq 300); do
    [[ -s "$file" ]] && return 0
    sleep 0.1
  done
  die "timed out waiting for $what"
}

command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"

# cargo_build WHAT ABOUT ARGS...: `cargo build ARGS` with one progress line instead of
# cargo's list of crates (ABOUT: how many a first build compiles); the end of cargo's
# output if it fails.
cargo_build() {
  local what="$1" about="$2" log="$WORK/cargo-build.log" started=$SECONDS
  shift 2
  if ! cargo build --color never "$@" 2>&1 >/dev/null | tee "$log" | show_compiling "$what" "$about"; then
    tail -n 40 "$log" >&2
    say "$what: cargo build $* failed"
    return 1
  fi
  local compiled
  compiled=$(grep -c '^ *Compiling ' "$log" || true)
  if ((compiled > 0)); then
    say "$what: compiled $compiled crate(s) in $((SECONDS - started))s"
  else
    say "$what: up to date"
  fi
}

# Reads cargo's messages; on a terminal, rewrites one line with the crate count and
# the crate being compiled; elsewhere prints a line every 50 crates.
show_compiling() {
  local what="$1" about="$2" line count=0 name
  while IFS= read -r line; do
    [[ "$line" =~ ^\ *Compiling\ ([^ ]+) ]] || continue
    count=$((count + 1))
    name="${BASH_REMATCH[1]}"
    if [[ -t 1 ]]; then
      printf '\r\033[K  %s: compiling crate %d of about %d: %s' "$what" "$count" "$about" "$name"
    elif ((count % 50 == 0)); then
      say "$what: $count of about $about crates compiled..."
    fi
  done
  if [[ -t 1 ]] && ((count > 0)); then printf '\r\033[K'; fi
}

bold "Building gcslock and the strict GCS emulator (cargo, debug profile)"
say "A first build compiles about 256 crates: 3 to 8 minutes on 2 cores, depending on"
say "what else the machine is doing. Later runs take a few seconds."
cargo_build gcslock 194 -p gcslock-cli --bin gcslock || die "cannot build gcslock"
GCSLOCK="$TARGET_DIR/debug/gcslock"
if [[ "${GCSLOCK_DEMO_EMULATOR:-strict-gcs}" != fake-gcs-server ]]; then
  # The same command as emulators/strict-gcs.sh, so that its own build finds nothing to do.
  cargo_build strict-gcs 62 -p strict-gcs || true # falls back to fake-gcs-server below
fi

# start_emulator NAME: emulators/NAME.sh on a free port, serving the bucket.
start_emulator() {
  STORAGE_EMULATOR_HOST="$("emulators/$1.sh" --bucket "$BUCKET" 0 "$WORK/$1" 2>"$WORK/$1.log")" \
    || return 1
  EMULATOR="$1"
}

if [[ "${GCSLOCK_DEMO_EMULATOR:-strict-gcs}" != fake-gcs-server ]] && ! start_emulator strict-gcs; then
  say "strict-gcs could not be built or started (see below); falling back to fake-gcs-server."
  say "(fake-gcs-server ignores some preconditions, so expect warnings from gcslock.)"
  tail -n 5 "$WORK/strict-gcs.log" | sed 's/^/    /' || true
fi
if [[ -z "$EMULATOR" ]]; then
  start_emulator fake-gcs-server || { cat "$WORK/fake-gcs-server.log" >&2; die "cannot start fake-gcs-server either"; }
fi
say "$EMULATOR is serving bucket $BUCKET at $STORAGE_EMULATOR_HOST"
# gcslock talks to the emulator (plain HTTP, no credentials) when this is set.
export STORAGE_EMULATOR_HOST

# ---------------------------------------------------------------------------
bold "1. Three machines start the same nightly job at the same moment."
say "Each runs:  gcslock run --identity job-X $LOCK -- ./report.sh"
say "The lock is free, so exactly one of them gets it; the others exit at once with 75 (busy)."
echo
mkfifo "$WORK/finish"
export FINISH="$WORK/finish"
for job in A B C; do
  (
    set +e
    JOB="$job" "$GCSLOCK" run --identity "job-$job" "$LOCK" -- sh -c '
      echo "  [job $JOB] got the lock: fencing token $GCSLOCK_TOKEN; working..."
      read _ <"$FINISH"
      echo "  [job $JOB] done"' 2> >(sed "s/^/  [job $job] /" >&2)
    echo $? >"$WORK/job-$job.rc"
  ) &
  BACKGROUND+=($!)
done

# Wait until two of the three have given up (they answer within milliseconds).
for _ in $(seq 300); do
  done_jobs=$(find "$WORK" -maxdepth 1 -name 'job-*.rc' | wc -l)
  ((done_jobs >= 2)) && break
  sleep 0.1
done
((done_jobs >= 2)) || die "the busy jobs did not exit"
echo
say "While the winner works, anyone can ask who holds the lock:"
"$GCSLOCK" status "$LOCK" | sed 's/^/  $ gcslock status: /'
echo >"$WORK/finish" # let the winner finish; it releases the lock on exit
wait "${BACKGROUND[@]}" 2>/dev/null || true
BACKGROUND=()
echo
for job in A B C; do
  say "job $job exited with $(cat "$WORK/job-$job.rc")"
done
say "(0: it ran; 75: busy, did not run.)  The lock is free again:"
"$GCSLOCK" status "$LOCK" | sed 's/^/  $ gcslock status: /'

# ---------------------------------------------------------------------------
bold "2. A holder crashes without releasing the lock."
say "It runs with a 5s lease, refreshed every second while it works."
export PIDFILE="$WORK/holder-child.pid"
"$GCSLOCK" run --identity crashing-holder --ttl 5s --refresh-interval 1s "$LOCK" -- sh -c '
  echo $$ >"$PIDFILE"
  echo "  [holder] got the lock: fencing token $GCSLOCK_TOKEN; working..."
  exec sleep 600' 2> >(sed -u "s/^/  [holder] /" >&2) &
HOLDER_PID=$!
BACKGROUND+=("$HOLDER_PID")
wait_for_file "$PIDFILE" "the holder to start"
CHILD_PGID="$(cat "$PIDFILE")"
say "Now the machine dies: SIGKILL to gcslock and to its job. Nobody releases the lock."
say "(gcslock's watchdog may report that it killed the job: that is its guard against"
say "a gcslock that dies while its command runs, not a failure of the demo.)"
{ # bash's "Killed" notice for the holder would only be noise here
  kill -KILL "$HOLDER_PID"
  kill -KILL -- "-$CHILD_PGID" || true
  wait "$HOLDER_PID" || true
} 2>/dev/null
BACKGROUND=()
rm -f "$PIDFILE"
"$GCSLOCK" status "$LOCK" | sed 's/^/  $ gcslock status: /'

bold "3. Another machine waits for the lock (--wait 1m)."
say "The waiter only reads while the lease could still be alive. Once the lease has provably"
say "run out (by the storage server's clock, or because the lock stayed unchanged for a whole"
say "TTL on the waiter's own clock), it takes the lock over with a larger fencing token."
started=$SECONDS
# gcslock's own messages (stderr, -v: key events) and the job's output, in order.
"$GCSLOCK" -v run --identity waiter --wait 1m --ttl 5s --refresh-interval 1s "$LOCK" -- \
  sh -c 'echo "took over the lock: fencing token $GCSLOCK_TOKEN"' 2>&1 \
  | grep -E 'busy|taking over|took over' | sed -E 's/ lock=[^ ]+( via [^ ]+)?//; s/^/  [waiter] /'
say "(after about $((SECONDS - started))s: the 5s lease plus a safety margin)"
"$GCSLOCK" status "$LOCK" | sed 's/^/  $ gcslock status: /'

bold "That's it."
say "Tokens only grow, so storage that records the highest token it has seen can refuse"
say "writes from a holder that lost its lease. The README lists the exit codes, and the"
say "commands to try the same by hand against an emulator you keep running."
