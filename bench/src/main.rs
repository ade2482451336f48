//! gcslock-bench: what a lock operation costs, how fast the lock changes hands and
//! how far one process scales, measured against the project's own strict-gcs
//! emulator (started by this program, in its own process).
//!
//! ```text
//! cargo run --release -p gcslock-bench -- --full     # BENCHMARKS.md's table (~11 min on 2 cores)
//! cargo run --release -p gcslock-bench -- --smoke    # every path, tiny counts (CI)
//! ```
//!
//! Prints one markdown report on stdout (progress on stderr). Times are only
//! meaningful as ratios to the bare-GET baseline measured in the same run. The
//! process exits non-zero if a request-count check fails; timings are never
//! asserted.

mod cli_overhead;
mod counting;
mod counts;
mod emulator;
mod failover;
mod handoff;
mod latency;
mod ratelimit;
mod report;
mod scale;
mod semaphore;
mod summary;
mod sys;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use tokio::time::Instant;

use crate::report::{Config, Report};

const USAGE: &str = "usage: gcslock-bench (--smoke | --full) [--gcslock-bin PATH] [--skip-cli] \
                     [--only counts,latency,handoff,scale,cli,ratelimit,failover,semaphore] \
                     [--out FILE]";

const SECTIONS: [&str; 8] = [
    "counts",
    "latency",
    "handoff",
    "scale",
    "cli",
    "ratelimit",
    "failover",
    "semaphore",
];

struct Args {
    config: Config,
    gcslock_bin: Option<PathBuf>,
    skip_cli: bool,
    only: Vec<String>,
    out: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut config = None;
    let mut gcslock_bin = None;
    let mut skip_cli = false;
    // Failover takes minutes even in smoke mode (TTLs, crashes): only when asked for.
    let mut only: Vec<String> = SECTIONS
        .iter()
        .filter(|s| **s != "failover")
        .map(|s| (*s).to_owned())
        .collect();
    let mut out = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => config = Some(Config::smoke()),
            "--full" => config = Some(Config::full()),
            "--skip-cli" => skip_cli = true,
            "--gcslock-bin" => {
                gcslock_bin = Some(PathBuf::from(args.next().context(USAGE)?));
            }
            "--out" => out = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--only" => {
                only = args
                    .next()
                    .context(USAGE)?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
                if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!("unknown section {bad:?}; {USAGE}");
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(Args {
        config: config.context(USAGE)?,
        gcslock_bin,
        skip_cli,
        only,
        out,
    })
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("__emulator") => return emulator::serve_main(),
        Some("__scale") => return scale::child_main(&argv[1..]),
        _ => {}
    }
    let args = parse_args(&argv)?;
    let needs_bin = args.only.iter().any(|s| s == "cli" || s == "failover");
    let gcslock_bin = if args.skip_cli || !needs_bin {
        None
    } else {
        Some(cli_overhead::locate_or_build(args.gcslock_bin.clone())?)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let load_before = sys::load_average();
    let (report, header) = runtime.block_on(run(&args, gcslock_bin))?;
    let elapsed = started.elapsed();
    let text = format!(
        "{}\n_Run time: {:.0} s; 1-minute load average {} at the start, {} at the end \
         (2 cores: anything above ~2 means other work shared the machine)._\n",
        report.render(&header),
        elapsed.as_secs_f64(),
        load_before,
        sys::load_average()
    );
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    let failed = report.failed_checks();
    if !failed.is_empty() {
        bail!(
            "{} behaviour check(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|c| format!("{} ({})", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    eprintln!("done in {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

async fn run(args: &Args, gcslock_bin: Option<PathBuf>) -> Result<(Report, String)> {
    let config = &args.config;
    let emulator = emulator::Emulator::start().await?;
    let mut report = Report::default();
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let clock = Instant::now();
    let (cores, model) = sys::machine();
    let header = format!(
        "### gcslock benchmarks ({} mode, {})\n\n\
         Machine: {cores} cores (`nproc`), {model}; client and strict-gcs emulator share it, \
         each in its own process, over loopback HTTP/1.1. Build: {}. \
         Absolute times are this machine's; read the ratios.\n",
        if config.smoke { "smoke" } else { "full" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );

    if wants("counts") {
        counts::run(&emulator, config, &mut report).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    let mut get = summary::Summary::default();
    if wants("latency") {
        let outcome = latency::run(&emulator, config, &mut report).await?;
        get = outcome.get;
        report.section(
            "Baseline",
            format!(
                "One bare GET of a lock object with reqwest (same client settings as `GcsBackend`): \
                 p50 {}, p99 {}, client CPU {} per GET.\n",
                summary::us(get.p50),
                summary::us(get.p99),
                summary::us(outcome.get_cpu)
            ),
        );
    }
    if wants("semaphore") {
        semaphore::run(&emulator, config, &mut report).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    if wants("handoff") {
        handoff::run(&emulator, config, &mut report).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    if wants("scale") {
        scale::run(&emulator, config, &mut report).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    if wants("cli") {
        if get.n == 0 {
            // The CLI table compares with one in-process GET; measure a few.
            let client = reqwest::Client::new();
            let url = format!(
                "{}/storage/v1/b/{}/o/cli%2Flock",
                emulator.url,
                emulator::BUCKET
            );
            let mut samples = Vec::new();
            for _ in 0..20 {
                let start = Instant::now();
                let _ = client.get(&url).send().await?.bytes().await?;
                samples.push(start.elapsed());
            }
            get = summary::summarize(&samples);
        }
        cli_overhead::run(&emulator, config, &mut report, gcslock_bin.as_deref(), get).await?;
    }
    if wants("failover") {
        let bin = gcslock_bin
            .as_deref()
            .context("failover runs `gcslock elect`: drop --skip-cli")?;
        failover::run(&emulator, config, &mut report, bin).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    if wants("ratelimit") {
        ratelimit::run(&emulator, config, &mut report).await?;
        eprintln!("   ({:.1} s so far)", clock.elapsed().as_secs_f64());
    }
    Ok((report, header))
}
