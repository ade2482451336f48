#!/usr/bin/env bash
# Builds strict-gcs and starts it in the background.
#
#   fake-gcs/strict-gcs/start.sh PORT [BUCKET...]
#
# PORT 0 picks a free port. Prints the STORAGE_EMULATOR_HOST value (for example
# http://127.0.0.1:4443) as the only line on stdout, so that
#
#   export STORAGE_EMULATOR_HOST="$(fake-gcs/strict-gcs/start.sh 0 my-bucket)"
#
# works; everything else goes to stderr. The build uses the workspace's default
# (dev) profile, so it shares artifacts with `cargo test`.
#
# Environment:
#   STRICT_GCS_FLAGS    extra flags for the server, e.g. "--reset-after 0.1 --seed 7"
#   STRICT_GCS_RUN_DIR  where the pid and log files go (default: target/strict-gcs)
#   CARGO_TARGET_DIR    honoured, as cargo does
#
# Files: $STRICT_GCS_RUN_DIR/strict-gcs-PORT.pid, .out (stdout) and .log (stderr).
# Stop it with fake-gcs/strict-gcs/stop.sh PORT.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT [BUCKET...]   (PORT 0 picks a free port)" >&2
    exit 64
fi
port=$1
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
run_dir=${STRICT_GCS_RUN_DIR:-$target_dir/strict-gcs}
mkdir -p "$run_dir"

echo "strict-gcs: building (cargo build -p strict-gcs, dev profile)" >&2
cargo build --quiet --manifest-path "$root/Cargo.toml" -p strict-gcs >&2
bin=$target_dir/debug/strict-gcs
[[ -x $bin ]] || { echo "strict-gcs: $bin was not built" >&2; exit 1; }

args=(--host 127.0.0.1 --port "$port")
for bucket in "$@"; do
    args+=(--bucket "$bucket")
done
# shellcheck disable=SC2206 # word splitting of the extra flags is intended
extra=(${STRICT_GCS_FLAGS:-})

out=$(mktemp "$run_dir/starting.XXXXXX.out")
nohup "$bin" "${args[@]}" "${extra[@]}" >"$out" 2>"$out.log" </dev/null &
pid=$!

fail() {
    echo "strict-gcs: $1" >&2
    if [[ -s "$out.log" ]]; then tail -n 20 "$out.log" >&2; fi
    kill "$pid" 2>/dev/null || true
    rm -f "$out" "$out.log"
    exit 1
}

# The first stdout line is "listening on http://127.0.0.1:PORT": at most ~10 s.
url=
for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || fail "exited during start-up"
    line=$(head -n 1 "$out" 2>/dev/null || true)
    if [[ $line == "listening on "* ]]; then
        url=${line#listening on }
        break
    fi
    sleep 0.1
done
[[ -n $url ]] || fail "did not report its address within 10 s"
actual_port=${url##*:}

# Then wait until it answers HTTP: at most ~10 s.
answered=
for _ in $(seq 100); do
    if exec 3<>"/dev/tcp/127.0.0.1/$actual_port" 2>/dev/null; then
        printf 'GET /_strict/stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        status=$(head -n 1 <&3 || true)
        exec 3<&- 3>&-
        if [[ $status == "HTTP/1."?" 200"* ]]; then
            answered=yes
            break
        fi
    fi
    kill -0 "$pid" 2>/dev/null || fail "exited during start-up"
    sleep 0.1
done
[[ -n $answered ]] || fail "does not answer on $url"

base=$run_dir/strict-gcs-$actual_port
mv -f "$out" "$base.out"
mv -f "$out.log" "$base.log"
echo "$pid" >"$base.pid"
echo "strict-gcs: pid $pid on $url (pid file $base.pid, log $base.log)" >&2
echo "$url"
