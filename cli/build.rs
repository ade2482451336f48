//! Sets `GCSLOCK_BUILD_REVISION` for `gcslock --version`: the source revision the
//! binary was built from. In order: `$GCSLOCK_BUILD_REVISION` if set (a distribution
//! building from a tarball knows it), else `git rev-parse --short HEAD` plus `-dirty`
//! when tracked files differ from it, else `unknown` (a `cargo package` tarball, or
//! no git). Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE: &str = "GCSLOCK_BUILD_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = match std::env::var(OVERRIDE) {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => git_revision().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env={OVERRIDE}={revision}");
}

/// `abc1234` or `abc1234-dirty`, or None outside a git checkout of this crate.
fn git_revision() -> Option<String> {
    // A packaged crate unpacked inside some other checkout (cargo package's verify
    // step builds under target/package/) must not report that checkout's revision:
    // only a checkout that tracks this very file counts.
    // Watched first, so that committing this file makes the next build see git.
    watch_git_state();
    git(&["ls-files", "--error-unmatch", "build.rs"])?;
    let revision = git(&["rev-parse", "--short", "HEAD"])?;
    // `git diff --quiet` is not usable here: it answers through its exit code, and
    // refreshes the index. `status --porcelain` prints nothing when clean.
    let changes = git(&["status", "--porcelain", "--untracked-files=no"])?;
    Some(if changes.is_empty() {
        revision
    } else {
        format!("{revision}-dirty")
    })
}

/// Reruns this script when HEAD moves (commit, checkout), when the index changes
/// (add, commit) or when sources change (the dirty flag).
fn watch_git_state() {
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) else {
        return;
    };
    let common_dir = git(&["rev-parse", "--git-common-dir"])
        .map(|dir| absolute(&dir))
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![
        git_dir.join("HEAD"),
        git_dir.join("index"),
        common_dir.join("packed-refs"),
    ];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(reference));
    }
    // The crate's and the library's sources, so that an edit marks the build dirty.
    watched.extend(["src", "Cargo.toml", "../src", "../Cargo.toml"].map(PathBuf::from));
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// A path git printed relative to this crate's directory, made absolute.
fn absolute(path: &str) -> PathBuf {
    let path = Path::new(path);
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(manifest_dir) if path.is_relative() => PathBuf::from(manifest_dir).join(path),
        _ => path.to_owned(),
    }
}

/// The trimmed stdout of a successful `git ARGS`, or None.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8(output.stdout).ok()?.trim().to_owned())
}
