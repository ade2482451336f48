//! 5. CLI overhead: `gcslock run URL -- true` against `flock -n FILE true`, one
//!    bare GET by `curl`, and spawning `true` alone; medians of repeated runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::process::Command;
use tokio::time::Instant;

use crate::emulator::{Emulator, BUCKET};
use crate::report::{table, Config, Report};
use crate::summary::{ms, ratio, summarize, us, Summary};

/// The `gcslock` binary: the one given, else built beside this executable.
pub fn locate_or_build(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--gcslock-bin {}: no such file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace directory")?;
    let mut build = std::process::Command::new(cargo);
    build.current_dir(workspace).args([
        "build",
        "--quiet",
        "-p",
        "gcslock-cli",
        "--bin",
        "gcslock",
    ]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    eprintln!("building the gcslock binary ({build:?})");
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the gcslock binary failed: {status}");
    }
    let path = dir.join("gcslock");
    if !path.is_file() {
        bail!(
            "{} does not exist after the build (is CARGO_TARGET_DIR different?); pass --gcslock-bin",
            path.display()
        );
    }
    Ok(path)
}

async fn time_runs(runs: usize, program: &Path, args: &[&str]) -> Result<Summary> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let output = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        let took = start.elapsed();
        if !output.status.success() {
            bail!(
                "{} {args:?} failed: {}: {}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        samples.push(took);
    }
    Ok(summarize(&samples))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

pub async fn run(
    emulator: &Emulator,
    config: &Config,
    report: &mut Report,
    gcslock: Option<&Path>,
    in_process_get: Summary,
) -> Result<()> {
    eprintln!("== 5. CLI overhead");
    let runs = config.cli_runs;
    let lock_url = format!("gs://{BUCKET}/cli/lock");
    let mut rows = Vec::new();
    let mut medians: Vec<(&str, Duration)> = Vec::new();

    let gcslock_median = match gcslock {
        Some(bin) => {
            let args = [
                "--endpoint",
                emulator.url.as_str(),
                "run",
                &lock_url,
                "--",
                "true",
            ];
            // Requests of one run, counted by the emulator (the first run creates the object).
            time_runs(1, bin, &args).await?;
            let before = emulator.stats().await?;
            time_runs(1, bin, &args).await?;
            let one = emulator.stats().await?.since(&before);
            report.check(
                "`gcslock run` = GET + POST + PATCH",
                one.method("GET") == 1
                    && one.method("POST") == 1
                    && one.method("PATCH") == 1
                    && one.total() == 3,
                one.breakdown(),
            );
            let s = time_runs(runs, bin, &args).await?;
            rows.push(vec![
                format!("`gcslock run {lock_url} -- true`"),
                s.n.to_string(),
                ms(s.p50),
                ms(s.max),
                format!("{} ({})", one.total(), one.breakdown()),
            ]);
            medians.push(("gcslock run", s.p50));
            Some(s.p50)
        }
        None => {
            rows.push(vec![
                "`gcslock run` (skipped: no binary)".into(),
                "0".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ]);
            None
        }
    };
    let flock_median = match which("flock") {
        Some(flock) => {
            let file =
                std::env::temp_dir().join(format!("gcslock-bench-{}.lock", std::process::id()));
            std::fs::write(&file, b"")?;
            let path = file.to_string_lossy().into_owned();
            let s = time_runs(runs, &flock, &["-n", &path, "true"]).await;
            let _ = std::fs::remove_file(&file);
            let s = s?;
            rows.push(vec![
                "`flock -n FILE true`".into(),
                s.n.to_string(),
                ms(s.p50),
                ms(s.max),
                "0".into(),
            ]);
            medians.push(("flock", s.p50));
            Some(s.p50)
        }
        None => None,
    };
    let curl_median = match which("curl") {
        Some(curl) => {
            let url = format!("{}/storage/v1/b/{BUCKET}/o/cli%2Flock", emulator.url);
            let s = time_runs(runs, &curl, &["-sS", "-o", "/dev/null", &url]).await?;
            rows.push(vec![
                "`curl` one GET of the lock object".into(),
                s.n.to_string(),
                ms(s.p50),
                ms(s.max),
                "1".into(),
            ]);
            Some(s.p50)
        }
        None => None,
    };
    if let Some(true_bin) = which("true") {
        let s = time_runs(runs, &true_bin, &[]).await?;
        rows.push(vec![
            "spawn `true` alone".into(),
            s.n.to_string(),
            ms(s.p50),
            ms(s.max),
            "0".into(),
        ]);
    }
    rows.push(vec![
        "in-process bare GET (section 2)".into(),
        in_process_get.n.to_string(),
        us(in_process_get.p50),
        us(in_process_get.max),
        "1".into(),
    ]);
    let _ = medians;
    // What building the HTTP client costs in-process (once per CLI run).
    let build = |f: &dyn Fn() -> Result<()>| -> Result<Summary> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs.max(3) {
            let start = std::time::Instant::now();
            f()?;
            samples.push(start.elapsed());
        }
        Ok(summarize(&samples))
    };
    let endpoint = emulator.url.clone();
    let backend_build = build(&|| {
        gcslock::backend::gcs::GcsBackend::builder(BUCKET)
            .endpoint(Some(endpoint.clone()))
            .build()?;
        Ok(())
    })?;
    let client_default = build(&|| {
        reqwest::Client::builder().build()?;
        Ok(())
    })?;
    let client_no_roots = build(&|| {
        reqwest::Client::builder()
            .tls_certs_only(std::iter::empty())
            .build()?;
        Ok(())
    })?;
    for (what, s) in [
        ("in-process: `GcsBackend::builder(..).endpoint(http://..).build()`", backend_build),
        ("in-process: `reqwest::Client::builder().build()` (platform verifier loads the system roots)", client_default),
        ("in-process: same with `.tls_certs_only([])` (no root store)", client_no_roots),
    ] {
        rows.push(vec![what.into(), s.n.to_string(), ms(s.p50), ms(s.max), "0".into()]);
    }
    let verdict = match (gcslock_median, flock_median, curl_median) {
        (Some(g), Some(f), Some(c)) => format!(
            "{} of flock, {} of curl, {} of one in-process GET",
            ratio(g, f),
            ratio(g, c),
            ratio(g, in_process_get.p50)
        ),
        _ => "incomplete (a program is missing)".into(),
    };
    report.headline(
        "5",
        "CLI: `gcslock run URL -- true` median wall time",
        gcslock_median.map_or("skipped".into(), ms),
        format!(
            "flock {}, curl GET {}",
            flock_median.map_or("–".into(), ms),
            curl_median.map_or("–".into(), ms)
        ),
        verdict,
    );
    report.headline(
        "5",
        "CLI: building the HTTP client (in-process, per run)",
        format!(
            "`GcsBackend` build {} (reqwest default {}, without a root store {})",
            ms(backend_build.p50),
            ms(client_default.p50),
            ms(client_no_roots.p50)
        ),
        gcslock_median.map_or("–".into(), |g| format!("`gcslock run` {}", ms(g))),
        // Closer to the client without roots than to the one that loads them?
        if backend_build.p50 * 2 < client_default.p50 + client_no_roots.p50 {
            "no root certificates loaded for a plain-http endpoint"
        } else {
            "roots are loaded even for a plain-http emulator"
        },
    );
    report.section(
        "5. CLI overhead (wall time per process, spawn to exit)",
        table(
            &["command", "runs", "median", "max", "storage requests"],
            &rows,
        ),
    );
    Ok(())
}
