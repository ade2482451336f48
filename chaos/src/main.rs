//! `gcslock-chaos`: a Jepsen-style checker for gcslock. See chaos/README.md.

mod clock;
mod dst;
mod emulator;
mod history;
mod procs;
mod proxy;
mod record;
mod report;
mod runner;
mod scenario;
mod stuck_pipe;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::runner::{default_binary, workspace_root, Context};
use crate::scenario::{scenarios, Chaos, Profile};

const BUILD_HINT: &str = "cargo build --bins -p gcslock-cli -p strict-gcs -p gcslock-chaos";

/// Exit codes.
const OK: u8 = 0;
const VIOLATIONS: u8 = 1;
const SETUP: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "gcslock-chaos",
    about = "Jepsen-style checker for gcslock: real `gcslock run` processes against strict-gcs \
             with faults, SIGKILLed and SIGSTOPped holders and skewed clocks",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 no violation; 1 violations found; 2 setup or harness error.\n\
                  Needs the binaries built first: cargo build --bins -p gcslock-cli -p strict-gcs -p gcslock-chaos",
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Re-run the checker on a saved history (an events.jsonl of a run)
    Check {
        /// The history file
        file: PathBuf,
        /// Print the whole history, not only around the findings
        #[arg(long)]
        history: bool,
    },
    /// The critical section run by `gcslock run` (internal)
    #[command(hide = true)]
    Record(record::RecordArgs),
    /// A helper process of the recorded job (internal)
    #[command(hide = true)]
    Linger(record::LingerArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Which sizes: short (CI, under 4 minutes) or soak
    #[arg(long, value_enum, default_value_t = Profile::Short)]
    profile: Profile,

    /// Run only these scenarios (name or letter; repeatable): steady|a, kill|b, pause|c,
    /// pause-acquire|c2, storm|d, lost-responses|e, skew|f, cut-off|h, gcslock-killed|i,
    /// gcslock-stopped|j, once-per|k, once-per-dst|l, escape|m, holders-2|n, holders-3|o,
    /// elect|el, stderr-full|h2, mixed|g (soak only)
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,

    /// Leave these scenarios out (name or id; repeatable). They are listed as skipped
    #[arg(long = "skip", value_name = "NAME")]
    skip: Vec<String>,

    /// The gcslock binary [default: <workspace>/target/debug/gcslock]
    #[arg(long, env = "GCSLOCK_BIN", value_name = "PATH")]
    gcslock: Option<PathBuf>,

    /// The strict-gcs binary [default: <workspace>/target/debug/strict-gcs]
    #[arg(long, env = "STRICT_GCS_BIN", value_name = "PATH")]
    strict_gcs: Option<PathBuf>,

    /// Where histories and logs go [default: <workspace>/target/chaos/<profile>-<unix time>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Seed of the fault draws and of the workers' choices (default: random; printed)
    #[arg(long)]
    seed: Option<u64>,

    /// Commit through the fenced store (`gcslock put --token`); refused until gcslock has `put`
    #[arg(long)]
    fenced: bool,

    /// Do not use faketime even if installed (the skew scenario then uses --skew-ms only)
    #[arg(long)]
    no_faketime: bool,

    /// Print every scenario's whole history, even without violations
    #[arg(long)]
    history: bool,

    /// List the scenarios of the profile and exit
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "record" || arg == "linger")
    {
        record::block_stop_signals();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Record(args)) => {
            return match record::record(&args) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(SETUP)),
                Err(error) => {
                    eprintln!("gcslock-chaos record: {error:#}");
                    ExitCode::from(70)
                }
            };
        }
        Some(Sub::Linger(args)) => {
            record::linger(&args);
            return ExitCode::SUCCESS;
        }
        Some(Sub::Check { file, history }) => check(&file, history),
        None => run(&cli.run),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("gcslock-chaos: error: {error:#}");
            ExitCode::from(SETUP)
        }
    }
}

fn check(file: &Path, whole: bool) -> anyhow::Result<u8> {
    let (events, malformed) = history::read(file, false)?;
    let analysis = history::analyze(&events, &malformed);
    let findings: Vec<&history::Finding> = analysis.findings.iter().collect();
    println!(
        "{}: {} events, {} sections, max concurrent holders {}",
        file.display(),
        events.len(),
        analysis.sections.len(),
        analysis.max_concurrent
    );
    report::print_findings(&analysis);
    if whole || !findings.is_empty() {
        if whole {
            let highlight = findings.iter().flat_map(|f| f.runs.clone()).collect();
            print!("{}", history::render(&events, analysis.origin, &highlight));
        } else {
            print!("{}", history::excerpt(&events, &analysis, &findings));
        }
    }
    Ok(if analysis.violations().count() > 0 {
        VIOLATIONS
    } else {
        OK
    })
}

fn binary(given: Option<&PathBuf>, name: &str, flag: &str, env: &str) -> anyhow::Result<PathBuf> {
    let path = given.cloned().unwrap_or_else(|| default_binary(name));
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it first with `{BUILD_HINT}` (from {}), or pass {flag} \
             PATH / set {env}",
            path.display(),
            workspace_root().display()
        );
    }
    Ok(path)
}

/// Warns when a binary is older than a source file cargo built it from (as
/// listed in its dep-info file, `<binary>.d`, next to it).
fn warn_if_stale(binary: &Path) {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let Ok(depinfo) = std::fs::read_to_string(binary.with_extension("d")) else {
        return;
    };
    let Some((_, deps)) = depinfo.lines().next().and_then(|l| l.split_once(": ")) else {
        return;
    };
    let stale = deps
        .replace("\\ ", "\0")
        .split_whitespace()
        .map(|dep| PathBuf::from(dep.replace('\0', " ")))
        .find(|dep| {
            dep.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        });
    if let Some(dep) = stale {
        eprintln!(
            "gcslock-chaos: warning: {} is older than {}; rebuild with `{BUILD_HINT}`",
            binary.display(),
            dep.display()
        );
    }
}

/// `faketime` when it is installed and skews a process's wall clock.
fn find_faketime() -> Option<PathBuf> {
    let ok = Command::new("faketime")
        .args(["-f", "+1h", "true"])
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    ok.then(|| PathBuf::from("faketime"))
}

/// Whether this gcslock has the `put` subcommand (storage-side fenced writes).
fn has_put(gcslock: &Path) -> bool {
    Command::new(gcslock)
        .args(["put", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether this gcslock's `run` has `--once-per` (scenario once-per needs it).
fn has_once_per(gcslock: &Path) -> bool {
    Command::new(gcslock)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|output| {
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("--once-per")
        })
}

fn run(args: &RunArgs) -> anyhow::Result<u8> {
    let all = scenarios(args.profile);
    if args.list {
        for s in &all {
            println!(
                "({}) {:<15} {} workers x {} iterations, limit {}s: {}",
                s.id,
                s.name,
                s.workers,
                s.iterations,
                s.wall_limit.as_secs(),
                s.what
            );
        }
        return Ok(OK);
    }
    for wanted in args.skip.iter().chain(&args.scenarios) {
        if !all.iter().any(|s| s.name == wanted || s.id == wanted) {
            bail!(
                "no scenario {wanted:?} in the {:?} profile (see --list)",
                args.profile
            );
        }
    }
    let skipped: Vec<String> = all
        .iter()
        .filter(|s| args.skip.iter().any(|k| s.name == k || s.id == k))
        .map(|s| format!("({}) {}", s.id, s.name))
        .collect();
    let all: Vec<_> = all
        .into_iter()
        .filter(|s| !args.skip.iter().any(|k| s.name == k || s.id == k))
        .collect();
    let chosen: Vec<_> = if args.scenarios.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for wanted in &args.scenarios {
            let found = all
                .iter()
                .find(|s| s.name == wanted || s.id == wanted)
                .with_context(|| {
                    format!(
                        "no scenario {wanted:?} in the {:?} profile (see --list)",
                        args.profile
                    )
                })?;
            chosen.push(found.clone());
        }
        chosen
    };

    let gcslock = binary(args.gcslock.as_ref(), "gcslock", "--gcslock", "GCSLOCK_BIN")?;
    let strict_gcs = binary(
        args.strict_gcs.as_ref(),
        "strict-gcs",
        "--strict-gcs",
        "STRICT_GCS_BIN",
    )?;
    let root = workspace_root();
    warn_if_stale(&gcslock);
    warn_if_stale(&strict_gcs);
    if args.fenced && !has_put(&gcslock) {
        bail!(
            "--fenced is not available yet: {} has no `put` subcommand (storage-side fenced \
             writes, `gcslock put gs://B/O --token $GCSLOCK_TOKEN < data`, are a later issue). \
             Run without --fenced: commits are then recorded, not fenced",
            gcslock.display()
        );
    }
    let mut unavailable = Vec::new();
    let chosen: Vec<_> = if chosen
        .iter()
        .any(|s| matches!(s.chaos, Chaos::OncePer { .. }))
        && !has_once_per(&gcslock)
    {
        if !args.scenarios.is_empty() {
            bail!(
                "scenario once-per is not available: {} run has no --once-per option",
                gcslock.display()
            );
        }
        chosen
            .into_iter()
            .filter(|s| {
                let once = matches!(s.chaos, Chaos::OncePer { .. });
                if once {
                    unavailable.push(format!("({}) {}", s.id, s.name));
                }
                !once
            })
            .collect()
    } else {
        chosen
    };
    let wants_faketime = chosen
        .iter()
        .any(|s| !s.faketime.is_empty() || matches!(s.chaos, Chaos::OncePer { dst: true, .. }));
    let faketime = if args.no_faketime || !wants_faketime {
        None
    } else {
        find_faketime()
    };
    let mut preamble = Vec::new();
    if !skipped.is_empty() {
        preamble.push(format!("SKIPPED by --skip: {}", skipped.join(", ")));
    }
    if !unavailable.is_empty() {
        preamble.push(format!(
            "SKIPPED, not available in this gcslock (`run` has no --once-per): {}",
            unavailable.join(", ")
        ));
    }
    if wants_faketime {
        preamble.push(match (&faketime, args.no_faketime) {
            (Some(_), _) => "faketime: in use (FAKETIME_DONT_FAKE_MONOTONIC=1: only wall clocks \
                             are skewed)"
                .to_owned(),
            (None, true) => "faketime: disabled by --no-faketime; the skew scenario uses \
                             strict-gcs --skew-ms only"
                .to_owned(),
            (None, false) => "faketime: NOT INSTALLED (apt-get install -y faketime); falling \
                              back to strict-gcs --skew-ms only: client wall clocks are not \
                              skewed"
                .to_owned(),
        });
    }
    let seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out_dir = args.out.clone().unwrap_or_else(|| {
        root.join("target")
            .join("chaos")
            .join(format!("{:?}-{stamp}", args.profile).to_lowercase())
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let ctx = Context {
        gcslock,
        strict_gcs,
        faketime,
        self_exe: std::env::current_exe().context("cannot find my own executable")?,
        out_dir,
        fenced: args.fenced,
    };
    println!(
        "gcslock-chaos: profile {:?}, seed {seed}, {} scenario(s), histories in {}",
        args.profile,
        chosen.len(),
        ctx.out_dir.display()
    );
    println!(
        "  gcslock: {}\n  strict-gcs: {}",
        ctx.gcslock.display(),
        ctx.strict_gcs.display()
    );
    for line in &preamble {
        println!("  {line}");
    }

    let started = Instant::now();
    let budget = scenario::budget(args.profile);
    let mut outcomes = Vec::new();
    for (index, scenario) in chosen.iter().enumerate() {
        let mut scenario = scenario.clone();
        if let Some(budget) = budget {
            let after = u32::try_from(chosen.len() - index - 1).unwrap_or(u32::MAX);
            let left = budget
                .saturating_sub(started.elapsed())
                .saturating_sub(scenario::MIN_SCENARIO * after)
                .max(scenario::MIN_SCENARIO);
            if left < scenario.wall_limit {
                scenario.wall_limit = left;
            }
        }
        let scenario = &scenario;
        println!(
            "\n== ({}) {}: {} [{} workers x {} iterations, ttl {}ms, refresh {}ms, limit {}s]",
            scenario.id,
            scenario.name,
            scenario.what,
            scenario.workers,
            scenario.iterations,
            scenario.ttl_ms,
            scenario.refresh_ms,
            scenario.wall_limit.as_secs()
        );
        let scenario_seed = seed.wrapping_add(u64::try_from(index).unwrap_or(0));
        let outcome = runner::run(&ctx, scenario, scenario_seed)
            .with_context(|| format!("scenario {} could not run", scenario.name))?;
        report::print_outcome(&outcome, args.history, ctx.faketime.is_some());
        outcomes.push(outcome);
    }
    let total = started.elapsed();
    report::print_summary(&outcomes, total, args.profile, seed, &preamble);
    let violations: usize = outcomes
        .iter()
        .map(|o| o.analysis.violations().count())
        .sum();
    Ok(if violations > 0 { VIOLATIONS } else { OK })
}
