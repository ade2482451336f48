#!/usr/bin/env bash
# Builds the Debian package of the gcslock command with cargo-deb:
#
#   packaging/build-deb.sh            # prints the .deb's path as the only stdout line
#
# 1. cargo build -p gcslock-cli (profile $GCSLOCK_DEB_PROFILE, default release);
# 2. the built binary writes its man pages and bash/zsh/fish completions
#    (`gcslock generate`, from the same clap definitions it parses with) under
#    TARGET/PROFILE/packaging/ (man pages gzipped), where cli/Cargo.toml's [package.metadata.deb]
#    assets expect them;
# 3. cargo deb --no-build packs the binary, those files, README, LICENSE (as
#    /usr/share/doc/gcslock/copyright) and examples/schedulers/ into
#    TARGET/debian/gcslock_VERSION-1_ARCH.deb.
#
# Environment:
#   GCSLOCK_DEB_PROFILE  cargo profile: release (default; what ships) or dev (reuses
#                        a test build; cargo-deb warns that it is meant for releases)
#   CARGO_TARGET_DIR     honoured, as cargo does
# Needs cargo-deb: cargo install cargo-deb --version 3.8.0 --locked
set -euo pipefail

die() { echo "build-deb: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=${GCSLOCK_DEB_PROFILE:-release}
case $profile in
  dev) profile_dir=debug ;;
  *) profile_dir=$profile ;;
esac
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=$target_dir/$profile_dir

command -v cargo-deb >/dev/null 2>&1 ||
  die "cargo-deb is not installed: cargo install cargo-deb --version 3.8.0 --locked"

echo "build-deb: cargo build -p gcslock-cli --profile $profile" >&2
cargo build --locked --quiet --manifest-path "$root/Cargo.toml" -p gcslock-cli --profile "$profile" >&2

generated=$out/packaging
rm -rf "$generated"
mkdir -p "$generated/completions"
"$out/gcslock" generate man "$generated/man"
# Debian policy wants man pages gzipped; cargo-deb leaves files under target/ as they are.
gzip -9n "$generated"/man/*.1
"$out/gcslock" generate completions bash >"$generated/completions/gcslock.bash"
"$out/gcslock" generate completions zsh >"$generated/completions/_gcslock"
"$out/gcslock" generate completions fish >"$generated/completions/gcslock.fish"

mkdir -p "$target_dir/debian"
echo "build-deb: cargo deb -p gcslock-cli --no-build --profile $profile" >&2
# A dev package only checks the packaging: lighter compression saves most of its time.
compression=()
[[ $profile == dev ]] && compression=(--fast)
# cargo-deb prints the package's path on stdout.
deb=$(cargo deb --locked --quiet --manifest-path "$root/Cargo.toml" -p gcslock-cli \
  --no-build --strip "${compression[@]}" --profile "$profile" --output "$target_dir/debian")
[[ -f $deb ]] || die "cargo deb did not report a package (stdout: $deb)"
echo "$deb"
