#!/usr/bin/env bash
# CI check of the Debian package, from a clean clone, as root (dpkg -i):
#
#   packaging/ci-deb.sh
#
# 1. installs cargo-deb if it is missing (pinned version, built from crates.io);
# 2. builds the package (packaging/build-deb.sh) and installs it with dpkg -i;
# 3. checks the installed files: man page (man -w), bash completion (sourced),
#    the scheduler examples (systemd-analyze verify, when there is one);
# 4. drives the INSTALLED /usr/bin/gcslock through one lock cycle against strict-gcs:
#    a holder holds the lock, a second run exits 75 (busy), the holder finishes, a
#    third run takes the free lock;
# 5. prints the package size, `gcslock --version` and the time dpkg -i took.
#
# Environment:
#   GCSLOCK_DEB_PROFILE  cargo profile of the packaged binary. Default here: dev,
#                        which reuses CI's build; release is what ships (a full
#                        optimised build on top).
#   CARGO_DEB_VERSION    the cargo-deb to install when missing (default 3.8.0)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GCSLOCK_DEB_PROFILE=${GCSLOCK_DEB_PROFILE:-dev}
cargo_deb_version=${CARGO_DEB_VERSION:-3.8.0}
bucket=gcslock-ci-deb
installed=/usr/bin/gcslock

say() { printf 'ci-deb: %s\n' "$*"; }
die() { printf 'ci-deb: FAILED: %s\n' "$*" >&2; exit 1; }
seconds_since() { echo "$(( $(date +%s%N) - $1 ))" | awk '{ printf "%.1f", $1 / 1e9 }'; }

[[ $(id -u) -eq 0 ]] || die "run as root: dpkg -i installs into /usr"

# 1. cargo-deb
if ! command -v cargo-deb >/dev/null 2>&1; then
  say "installing cargo-deb $cargo_deb_version (cargo install --locked)"
  start=$(date +%s%N)
  cargo install --quiet --locked cargo-deb --version "$cargo_deb_version"
  say "cargo-deb installed in $(seconds_since "$start") s"
fi

# 2. build and install
start=$(date +%s%N)
deb=$("$root/packaging/build-deb.sh")
say "built $deb in $(seconds_since "$start") s (profile $GCSLOCK_DEB_PROFILE)"
start=$(date +%s%N)
dpkg -i "$deb" >/dev/null
dpkg_seconds=$(seconds_since "$start")
[[ -x $installed ]] || die "$installed is not installed"

# 3. installed files
man -w gcslock >/dev/null 2>&1 || [[ -f /usr/share/man/man1/gcslock.1.gz ]] ||
  die "no gcslock man page"
[[ -f /usr/share/man/man1/gcslock-run.1.gz ]] || die "no gcslock-run man page"
bash -c 'source /usr/share/bash-completion/completions/gcslock && complete -p gcslock' >/dev/null ||
  die "the bash completion does not load"
[[ -f /usr/share/zsh/vendor-completions/_gcslock ]] || die "no zsh completion"
[[ -f /usr/share/fish/vendor_completions.d/gcslock.fish ]] || die "no fish completion"
grep -q "Apache License" /usr/share/doc/gcslock/copyright || die "no license in copyright"
examples=/usr/share/doc/gcslock/examples/schedulers
if command -v systemd-analyze >/dev/null 2>&1; then
  # Unknown keys are only warnings: any output counts as a failure.
  report=$(systemd-analyze verify --man=no "$examples/gcslock-nightly.timer" \
    "$examples/gcslock-nightly.service" 2>&1) || die "systemd-analyze verify: $report"
  [[ -z $report ]] || die "systemd-analyze verify: $report"
  say "systemd-analyze verify: the example unit and timer are valid"
fi

# 4. one lock cycle with the installed binary
work=$(mktemp -d)
strict_port=
cleanup() {
  [[ -n ${holder:-} ]] && kill "$holder" 2>/dev/null
  [[ -n $strict_port ]] && "$root/emulators/strict-gcs.sh" --stop "$strict_port" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
STORAGE_EMULATOR_HOST=$("$root/emulators/strict-gcs.sh" --bucket "$bucket" 0)
export STORAGE_EMULATOR_HOST
strict_port=${STORAGE_EMULATOR_HOST##*:}
url="gs://$bucket/ci-deb/$$-$RANDOM"

# The holder says "held" through one FIFO, then waits for a line on the other.
mkfifo "$work/held" "$work/release"
exec 3<>"$work/held" 4<>"$work/release" # read-write: opening never blocks
# shellcheck disable=SC2016 # $1 and $2 are the inner shell's
"$installed" run "$url" -- sh -c 'echo held >"$1"; read -r _ <"$2"' sh "$work/held" "$work/release" &
holder=$!
read -r -t 60 -u 3 line || die "the holder did not start its command within 60 s"
[[ $line == held ]] || die "the holder said '$line'"
status=$("$installed" status "$url" --json)
[[ $status == *'"state":"held"'* ]] || die "status of the held lock: $status"
say "holder holds $url"

code=0
"$installed" -q run "$url" -- true || code=$?
[[ $code -eq 75 ]] || die "a second run exited $code, not 75 (busy)"
say "a second run exits 75 (busy)"

echo release >&4
code=0
wait "$holder" || code=$?
holder=
[[ $code -eq 0 ]] || die "the holder exited $code"
say "the holder finished and released the lock"

code=0
"$installed" run "$url" -- true || code=$?
[[ $code -eq 0 ]] || die "a third run on the free lock exited $code"
say "a third run takes the free lock"

# 5. figures
size=$(stat -c %s "$deb")
installed_size=$(dpkg-deb -f "$deb" Installed-Size)
say "package: $(basename "$deb"), $size bytes, Installed-Size ${installed_size} KiB"
say "gcslock --version: $("$installed" --version)"
say "dpkg -i took $dpkg_seconds s"
say "OK"
