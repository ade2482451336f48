//! Runs one scenario: a fresh strict-gcs, N worker threads each looping real
//! `gcslock run` processes (whose child is `gcslock-chaos record`), a chaos
//! thread that kills or pauses holders, a wall-time bound, the final check of the
//! lock, and the analysis of the history.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

use crate::clock::{mono_ns, ms, wall_ns};
use crate::emulator::{faults_injected, Emulator};
use crate::history::{self, Analysis, Event, Kind, Log, RunId};
use crate::procs::{is_dead, signal_group, stopped_group_children, wait_dead};
use crate::proxy::Proxy;
use crate::scenario::{Chaos, Scenario};

pub const BUCKET: &str = "chaos";
pub const LOCK_URL: &str = "gs://chaos/lock";
pub const FENCED_STORE_URL: &str = "gs://chaos/fenced-data";

/// What every scenario needs from outside.
#[derive(Debug)]
pub struct Context {
    pub gcslock: PathBuf,
    pub strict_gcs: PathBuf,
    /// `faketime`, when installed and not disabled.
    pub faketime: Option<PathBuf>,
    pub self_exe: PathBuf,
    pub out_dir: PathBuf,
    pub fenced: bool,
}

/// The figures of one scenario.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    pub seed: u64,
    pub dir: PathBuf,
    pub events: Vec<Event>,
    pub analysis: Analysis,
    pub attempts: usize,
    pub committed: usize,
    pub aborted: usize,
    /// SIGKILLs of holders: their groups (`kill`) or gcslock alone (`crash`).
    pub killed: usize,
    pub paused: usize,
    /// Holders whose link to storage was cut.
    pub cut: usize,
    /// Final token shown by `gcslock status`: lock instances issued.
    pub tokens_issued: Option<u64>,
    pub exit_codes: BTreeMap<String, usize>,
    pub faults: Vec<(String, u64)>,
    pub mutations: u64,
    pub requests: u64,
    pub final_state: String,
    /// After the last worker, how long until the lock showed free/released/stale.
    pub final_after: Duration,
    pub duration: Duration,
    pub wall_limit_hit: bool,
    /// faketime offset → (min, max) wall-clock offset the recorders saw, seconds.
    pub wall_skew: BTreeMap<String, (f64, f64)>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn acquisitions(&self) -> usize {
        self.analysis.sections.len()
    }

    pub fn faults_total(&self) -> u64 {
        self.faults.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Clone, Copy, Debug)]
struct Running {
    attempt: u32,
    pgid: i32,
}

struct Shared<'a> {
    ctx: &'a Context,
    scenario: &'a Scenario,
    endpoint: String,
    /// One proxy per worker when the scenario cuts links (else empty).
    proxies: Vec<Proxy>,
    dir: PathBuf,
    log_path: PathBuf,
    log: Log,
    running: Mutex<HashMap<u32, Running>>,
    /// No new `gcslock run` after this (wall-time limit reached).
    stop: AtomicBool,
    /// Every worker has finished.
    done: AtomicBool,
    notes: Mutex<Vec<String>>,
    /// Scenario `once-per-dst`: the faketime offset (seconds) of the tick being
    /// fired, which puts every gcslock's wall clock next to a DST change.
    dst_offset_s: Mutex<Option<i64>>,
}

impl Shared<'_> {
    fn running(&self) -> MutexGuard<'_, HashMap<u32, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, note: String) {
        eprintln!("gcslock-chaos: {}: {note}", self.scenario.name);
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(note);
    }

    /// Where worker `w`'s gcslock reaches storage: its proxy, if it has one.
    fn endpoint_for(&self, w: u32) -> &str {
        usize::try_from(w)
            .ok()
            .and_then(|w| self.proxies.get(w))
            .map_or(self.endpoint.as_str(), |proxy| proxy.endpoint.as_str())
    }

    fn events(&self) -> Vec<Event> {
        history::read(&self.log_path, true)
            .map(|(events, _)| events)
            .unwrap_or_default()
    }
}

/// Runs `scenario` and judges it. Errors are failures of the harness itself.
pub fn run(ctx: &Context, scenario: &Scenario, seed: u64) -> anyhow::Result<Outcome> {
    let dir = ctx
        .out_dir
        .join(format!("{}-{}", scenario.id, scenario.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("events.jsonl");
    let log = Log::create(&log_path)?;

    let mut args = vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--bucket".to_owned(),
        BUCKET.to_owned(),
        "--seed".to_owned(),
        seed.to_string(),
    ];
    args.extend(scenario.emulator.iter().cloned());
    let mut emulator = Emulator::start(&ctx.strict_gcs, &args, &dir.join("strict-gcs.stderr"))?;

    let started = Instant::now();
    let t0 = mono_ns()?;
    let mut begin = Event::new(Kind::Begin, t0);
    begin.wall = Some(wall_ns()?);
    begin.ttl_ms = Some(scenario.ttl_ms);
    begin.holders = (scenario.holders > 1).then_some(scenario.holders);
    begin.note = Some(format!(
        "scenario {} seed {seed} strict-gcs {} {}",
        scenario.name,
        emulator.endpoint,
        scenario.emulator.join(" ")
    ));
    log.append(&begin)?;

    let proxies = if matches!(scenario.chaos, Chaos::CutOff { .. }) {
        (0..scenario.workers)
            .map(|_| Proxy::start(&emulator.endpoint))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let shared = Shared {
        ctx,
        scenario,
        endpoint: emulator.endpoint.clone(),
        proxies,
        dir: dir.clone(),
        log_path: log_path.clone(),
        log,
        running: Mutex::new(HashMap::new()),
        stop: AtomicBool::new(false),
        done: AtomicBool::new(false),
        notes: Mutex::new(Vec::new()),
        dst_offset_s: Mutex::new(None),
    };

    let mut wall_limit_hit = false;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = match scenario.chaos {
            Chaos::PauseAcquire {
                rounds,
                stop_after_ms,
                pause_ms,
                contender_hold_ms,
            } => {
                let shared = &shared;
                vec![scope.spawn(move || {
                    pause_acquire_rounds(shared, rounds, stop_after_ms, pause_ms, contender_hold_ms)
                })]
            }
            Chaos::StopGcslock {
                rounds,
                pause_ms,
                victim_hold_ms,
                contender_hold_ms,
            } => {
                let shared = &shared;
                vec![scope.spawn(move || {
                    stop_gcslock_rounds(shared, rounds, pause_ms, victim_hold_ms, contender_hold_ms)
                })]
            }
            Chaos::OncePer {
                window_ms,
                fail_percent,
                dst: true,
                ..
            } => {
                let shared = &shared;
                vec![scope.spawn(move || dst_ticks(shared, seed, window_ms, fail_percent))]
            }
            Chaos::OncePer {
                ticks,
                period_s,
                window_ms,
                fail_percent,
                ..
            } => {
                let shared = &shared;
                vec![scope.spawn(move || {
                    once_per_ticks(shared, seed, ticks, period_s, window_ms, fail_percent)
                })]
            }
            _ => (0..scenario.workers)
                .map(|w| {
                    let shared = &shared;
                    scope.spawn(move || worker(shared, w, seed))
                })
                .collect(),
        };
        let chaos = {
            let shared = &shared;
            scope.spawn(move || chaos(shared, seed))
        };
        let watcher = scenario.watch_deaths.then(|| {
            let shared = &shared;
            scope.spawn(move || watch_deaths(shared))
        });
        let deadline = started + scenario.wall_limit;
        let mut terminated_at: Option<Instant> = None;
        let mut killed = false;
        while workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            let now = Instant::now();
            if now >= deadline && terminated_at.is_none() {
                wall_limit_hit = true;
                shared.stop.store(true, Ordering::SeqCst);
                shared.note(format!(
                    "wall-time limit {}s reached: stopping the workers (SIGTERM)",
                    scenario.wall_limit.as_secs()
                ));
                for running in shared.running().values() {
                    signal_group(running.pgid, Signal::SIGTERM);
                    signal_group(running.pgid, Signal::SIGCONT);
                }
                terminated_at = Some(now);
            }
            if let Some(at) = terminated_at {
                if !killed && now >= at + Duration::from_secs(8) {
                    killed = true;
                    shared.note("workers still running 8s after SIGTERM: SIGKILL".into());
                    kill_everything(&shared);
                }
            }
        }
        shared.done.store(true, Ordering::SeqCst);
        for handle in workers {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => shared.note(format!("worker failed: {error:#}")),
                Err(_) => shared.note("a worker thread panicked".into()),
            }
        }
        match chaos.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => shared.note(format!("chaos thread failed: {error:#}")),
            Err(_) => shared.note("the chaos thread panicked".into()),
        }
        match watcher.map(|w| w.join()) {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(error))) => shared.note(format!("death watcher failed: {error:#}")),
            Some(Err(_)) => shared.note("the death watcher panicked".into()),
        }
        Ok(())
    })?;

    // 3. The lock after the last worker: faults off (the server's skew stays, or
    // the lock's age would jump), then poll status until it is not held.
    let quiet = json!({
        "fail_503": 0.0, "fail_429": 0.0, "reset_before": 0.0, "reset_after": 0.0,
        "stall": 0.0, "latency_ms": 0, "jitter_ms": 0, "object_rate_limit": null
    });
    if let Err(error) = emulator.set_faults(&quiet) {
        shared.note(format!(
            "cannot turn faults off for the final check: {error:#}"
        ));
    }
    let events = shared.events();
    let last_exit = events
        .iter()
        .filter(|e| matches!(e.ev, Kind::Exit | Kind::Kill | Kind::Dead))
        .map(|e| e.t)
        .max()
        .unwrap_or(t0);
    let lock_deadline = history::lock_free_deadline(last_exit, ms(scenario.ttl_ms));
    let (final_state, final_json, final_t) = loop {
        let (state, json) = lock_status(ctx, &shared.endpoint, scenario.holders);
        let now = mono_ns()?;
        if matches!(state.as_str(), "free" | "released" | "stale") || now > lock_deadline {
            break (state, json, now);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut last = Event::new(Kind::Final, final_t);
    last.state = Some(final_state.clone());
    last.note = Some(final_json.to_string());
    shared.log.append(&last)?;
    let tokens_issued = final_json.get("token").and_then(Value::as_u64);

    let stats = emulator.stats().unwrap_or_else(|error| {
        shared.note(format!("cannot read strict-gcs stats: {error:#}"));
        Value::Null
    });
    emulator.stop();
    let duration = started.elapsed();

    let (events, malformed) = history::read(&log_path, false)?;
    let analysis = history::analyze(&events, &malformed);
    let count = |kind: Kind| events.iter().filter(|e| e.ev == kind).count();
    let mut exit_codes = BTreeMap::new();
    for event in events.iter().filter(|e| e.ev == Kind::Exit) {
        let key = match (event.code, event.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("sig{signal}"),
            (None, None) => "?".to_owned(),
        };
        *exit_codes.entry(key).or_insert(0) += 1;
    }
    let notes = shared
        .notes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        scenario: scenario.clone(),
        seed,
        dir,
        attempts: count(Kind::Spawn),
        committed: count(Kind::End),
        aborted: count(Kind::Abort),
        killed: count(Kind::Kill).saturating_add(count(Kind::Crash)),
        paused: count(Kind::Stop),
        cut: count(Kind::Cut),
        tokens_issued,
        exit_codes,
        faults: faults_injected(&stats),
        mutations: stats
            .get("mutations_applied")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        requests: stats
            .get("requests")
            .and_then(Value::as_object)
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0),
        final_state,
        final_after: Duration::from_nanos(final_t.saturating_sub(last_exit)),
        duration,
        wall_limit_hit,
        wall_skew: wall_skew(&events, t0),
        events,
        analysis,
        notes,
    })
}

/// `gcslock status --json`: (state, the JSON) or ("error", the message). A
/// semaphore (`--holders N`) is `free` when no place is held, else `held`.
fn lock_status(ctx: &Context, endpoint: &str, holders: u32) -> (String, Value) {
    let holders = holders.to_string();
    let output = Command::new(&ctx.gcslock)
        .args(["-q", "status", "--json", "--holders", &holders])
        .args(["--endpoint", endpoint, LOCK_URL])
        .env_remove("STORAGE_EMULATOR_HOST")
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            match serde_json::from_slice::<Value>(&output.stdout) {
                Ok(value) if value.get("places").is_some() => {
                    let held = value
                        .get("held")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX);
                    let state = if held == 0 { "free" } else { "held" };
                    (state.to_owned(), value)
                }
                Ok(value) => (
                    value
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_owned(),
                    value,
                ),
                Err(error) => ("error".into(), json!(format!("unparsable status: {error}"))),
            }
        }
        Ok(output) => (
            "error".into(),
            json!(format!(
                "gcslock status failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        ),
        Err(error) => (
            "error".into(),
            json!(format!("cannot run gcslock status: {error}")),
        ),
    }
}

/// Per faketime offset, the range of wall-clock offsets the recorders saw
/// against the orchestrator's wall clock: proof that faketime took effect.
fn wall_skew(events: &[Event], t0: u64) -> BTreeMap<String, (f64, f64)> {
    let Some(wall0) = events
        .iter()
        .find(|e| e.ev == Kind::Begin)
        .and_then(|e| e.wall)
    else {
        return BTreeMap::new();
    };
    let offsets: HashMap<RunId, String> = events
        .iter()
        .filter(|e| e.ev == Kind::Spawn)
        .filter_map(|e| Some((e.run_id()?, e.note.clone().unwrap_or_else(|| "none".into()))))
        .collect();
    let mut skew: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for event in events.iter().filter(|e| e.ev == Kind::Start) {
        let (Some(run), Some(wall)) = (event.run_id(), event.wall) else {
            continue;
        };
        let elapsed = i64::try_from(event.t.saturating_sub(t0)).unwrap_or(i64::MAX);
        let offset = (wall - wall0 - elapsed) as f64 / 1e9;
        let label = offsets.get(&run).cloned().unwrap_or_else(|| "none".into());
        let entry = skew.entry(label).or_insert((offset, offset));
        entry.0 = entry.0.min(offset);
        entry.1 = entry.1.max(offset);
    }
    skew
}

/// A `gcslock run` process of one run, not yet reaped.
struct Launched {
    child: std::process::Child,
    pgid: i32,
    /// The worker's stderr file and where this run's part of it begins.
    stderr_path: PathBuf,
    stderr_from: u64,
}

/// The faketime wrapper and offset for worker `w`, if the scenario skews clocks:
/// the DST tick's offset, or the scenario's offsets dealt round robin.
fn faketime_for(shared: &Shared<'_>, w: u32) -> Option<(PathBuf, String)> {
    let faketime = shared.ctx.faketime.as_ref()?;
    if let Some(offset) = *shared
        .dst_offset_s
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Some((faketime.clone(), format!("{offset:+}")));
    }
    let offsets = &shared.scenario.faketime;
    if offsets.is_empty() {
        return None;
    }
    let index = usize::try_from(w).unwrap_or(0) % offsets.len();
    Some((faketime.clone(), offsets[index].to_owned()))
}

/// What one run's command does.
#[derive(Clone, Copy, Debug)]
struct Job {
    hold_ms: u64,
    /// The job's exit code (0: it succeeds).
    exit_code: u8,
}

impl Job {
    fn hold(hold_ms: u64) -> Self {
        Self {
            hold_ms,
            exit_code: 0,
        }
    }
}

/// Spawns `gcslock run` for `run` in its own process group, with the recorder
/// as its command; `None` once the scenario is stopping.
fn launch(
    shared: &Shared<'_>,
    run: RunId,
    job: Job,
    wait: &str,
    stderr: &(PathBuf, std::fs::File),
) -> anyhow::Result<Option<Launched>> {
    let hold = job.hold_ms;
    let (stderr_path, stderr) = stderr;
    let scenario = shared.scenario;
    let ctx = shared.ctx;
    let fake = faketime_for(shared, run.worker);
    let dst_offset = *shared
        .dst_offset_s
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut command = match &fake {
        Some((faketime, offset)) => {
            let mut command = Command::new(faketime);
            command
                .args(["-f", offset])
                .arg(&ctx.gcslock)
                // Only the wall clock is skewed; the shared monotonic clock stays true.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            command
        }
        None => Command::new(&ctx.gcslock),
    };
    command
        .args(["-q", "run", "--wait", wait])
        .args(["--ttl", &format!("{}ms", scenario.ttl_ms)])
        .args(["--refresh-interval", &format!("{}ms", scenario.refresh_ms)])
        .args(["--kill-grace", "500ms"]);
    if scenario.holders > 1 {
        command.args(["--holders", &scenario.holders.to_string()]);
    }
    let period = match scenario.chaos {
        Chaos::OncePer { period_s, .. } => Some(period_s),
        _ => None,
    };
    if let Some(period) = period {
        command.args(["--once-per", &format!("{period}s")]);
    }
    if dst_offset.is_some() {
        // The zone as cron sees it: TZ.
        command.env("TZ", crate::dst::ZONE);
    }
    command
        .args(["--identity", &format!("chaos-{run}")])
        .args([
            "--endpoint",
            shared.endpoint_for(run.worker),
            LOCK_URL,
            "--",
        ])
        .arg(&ctx.self_exe)
        .arg("record")
        .arg("--log")
        .arg(&shared.log_path)
        .args(["--worker", &run.worker.to_string()])
        .args(["--attempt", &run.attempt.to_string()])
        .args(["--hold-ms", &hold.to_string()])
        .args(["--term-delay-ms", &scenario.term_delay_ms.to_string()])
        .args(["--exit-code", &job.exit_code.to_string()]);
    if scenario.helper {
        command.arg("--helper");
    }
    if scenario.helper_leaves {
        command.arg("--helper-setsid");
    }
    if ctx.fenced {
        command
            .args([
                "--fenced-store",
                FENCED_STORE_URL,
                "--endpoint",
                &shared.endpoint,
            ])
            .arg("--gcslock")
            .arg(&ctx.gcslock);
    }
    command
        .env_remove("STORAGE_EMULATOR_HOST")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone()?);
    let _ = writeln!(
        &*stderr,
        "--- {run}: hold {hold}ms{}",
        if job.exit_code == 0 {
            String::new()
        } else {
            format!(", then fail with exit {}", job.exit_code)
        }
    );
    let stderr_from = stderr.metadata().map(|m| m.len()).unwrap_or(0);

    let (child, spawned_at, pgid, slot) = {
        let mut running = shared.running();
        // Checked under the lock, so the wall-time SIGTERM cannot miss this run.
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let spawned_at = mono_ns()?;
        // The slot gcslock will name: its wall clock at start (the same machine's),
        // in New York's calendar (by the oracle) for the DST ticks.
        let slot = match period {
            Some(period) if period > 0 => {
                let wall = wall_ns()? / 1_000_000_000;
                let civil = match dst_offset {
                    Some(offset) => crate::dst::new_york_civil(wall + offset)
                        .context("a DST tick outside the oracle's stretch of time")?,
                    None => u64::try_from(wall).unwrap_or(0),
                };
                Some(civil / period)
            }
            _ => None,
        };
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {}", ctx.gcslock.display()))?;
        let pgid = i32::try_from(child.id()).context("pid out of range")?;
        running.insert(
            run.worker,
            Running {
                attempt: run.attempt,
                pgid,
            },
        );
        (child, spawned_at, pgid, slot)
    };
    let mut spawn = Event::new(Kind::Spawn, spawned_at).run(run);
    spawn.pgid = Some(pgid);
    spawn.slot = slot;
    spawn.note = fake.map(|(_, offset)| offset);
    shared.log.append(&spawn)?;
    Ok(Some(Launched {
        child,
        pgid,
        stderr_path: stderr_path.clone(),
        stderr_from,
    }))
}

/// Waits for a run's gcslock to exit, records how, and bounds its section.
fn finish(shared: &Shared<'_>, run: RunId, launched: Launched) -> anyhow::Result<()> {
    let Launched {
        mut child,
        pgid,
        stderr_path,
        stderr_from,
    } = launched;
    // Wait for the exit without reaping, so that while the run is listed in
    // `running` its pid (= its process group) cannot be reused.
    loop {
        match waitid(
            Id::Pid(Pid::from_raw(pgid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => bail!("waitid({pgid}) failed: {error}"),
        }
    }
    shared.running().remove(&run.worker);
    let status = child.wait().context("cannot reap gcslock")?;
    let mut exit = Event::new(Kind::Exit, mono_ns()?).run(run);
    exit.pgid = Some(pgid);
    exit.code = status.code();
    exit.signal = status.signal();
    shared.log.append(&exit)?;
    if status.code() == Some(LEASE_LOST) {
        note_unrecorded_command(shared, run, &stderr_path, stderr_from)?;
    }
    resolve_open_section(shared, run)
}

/// gcslock's exit code for "the lease was lost while the command ran; the command
/// was stopped" (documented in `gcslock --help`).
const LEASE_LOST: i32 = 76;

/// Exit 76 says the command ran. If it never recorded a start (gcslock's SIGTERM
/// came before the recorder could block it: gcslock sends it as soon as it sees
/// the lease lost, even if that was before the command started), record that a
/// command ran unrecorded, with gcslock's own words as evidence.
fn note_unrecorded_command(
    shared: &Shared<'_>,
    run: RunId,
    stderr_path: &Path,
    stderr_from: u64,
) -> anyhow::Result<()> {
    let events = shared.events();
    if events
        .iter()
        .any(|e| e.ev == Kind::Start && e.run_id() == Some(run))
    {
        return Ok(());
    }
    let text = std::fs::read(stderr_path).unwrap_or_default();
    let from = usize::try_from(stderr_from).unwrap_or(0).min(text.len());
    let text = String::from_utf8_lossy(&text[from..]);
    let evidence = text
        .lines()
        .take_while(|line| !line.starts_with("--- "))
        .find(|line| line.contains("lost"))
        .unwrap_or("(no message from gcslock)");
    let pid = evidence.split("process group ").nth(1).and_then(|rest| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    let mut event = Event::new(Kind::Unrecorded, mono_ns()?).run(run);
    event.pid = pid;
    event.code = Some(LEASE_LOST);
    event.note = Some(evidence.trim().to_owned());
    shared.log.append(&event)
}

fn worker_stderr(shared: &Shared<'_>, w: u32) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = shared.dir.join(format!("worker-{w}.stderr"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path, file))
}

fn worker(shared: &Shared<'_>, w: u32, seed: u64) -> anyhow::Result<()> {
    let scenario = shared.scenario;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(w)));
    let stderr = worker_stderr(shared, w)?;
    for attempt in 0..scenario.iterations {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let run = RunId { worker: w, attempt };
        let hold = rng.random_range(scenario.hold_ms.0..=scenario.hold_ms.1);
        let Some(launched) = launch(shared, run, Job::hold(hold), scenario.wait, &stderr)? else {
            break;
        };
        finish(shared, run, launched)?;
        let gap = rng.random_range(scenario.gap_ms.0..=scenario.gap_ms.1);
        std::thread::sleep(Duration::from_millis(gap));
    }
    Ok(())
}

/// Scenario `pause-acquire`, in rounds on a free lock: worker 0 starts
/// `gcslock run` and is SIGSTOPped `stop_after_ms` later, while its create
/// request is held by strict-gcs's mutation latency (so the create applies while
/// it is frozen); worker 1 then waits for the lock, takes it over once it is
/// stale and holds it for `contender_hold_ms`; worker 0 is continued after
/// `pause_ms`. A correct gcslock sees on resuming that its lease has expired and
/// does not start the command; a section of worker 0 that starts after the
/// SIGCONT while worker 1 holds the lock is a violation.
fn pause_acquire_rounds(
    shared: &Shared<'_>,
    rounds: u32,
    stop_after_ms: u64,
    pause_ms: u64,
    contender_hold_ms: u64,
) -> anyhow::Result<()> {
    let frozen_stderr = worker_stderr(shared, 0)?;
    let contender_stderr = worker_stderr(shared, 1)?;
    for round in 0..rounds {
        let frozen = RunId {
            worker: 0,
            attempt: round,
        };
        let contender = RunId {
            worker: 1,
            attempt: round,
        };
        let Some(first) = launch(shared, frozen, Job::hold(300), "0", &frozen_stderr)? else {
            break;
        };
        std::thread::sleep(Duration::from_millis(stop_after_ms));
        let sent = mono_ns()?;
        signal_group(first.pgid, Signal::SIGSTOP);
        let stopped = Stopped {
            pgid: first.pgid,
            pid: None,
            sent,
            state: stopped_state(first.pgid),
        };
        stopped.record(
            shared,
            frozen,
            "while acquiring: its create is held by the mutation latency",
        )?;
        let pgid = first.pgid;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let waiter = scope.spawn(|| finish(shared, frozen, first));
            let other = spawn_contender(
                scope,
                shared,
                contender,
                contender_hold_ms,
                &contender_stderr,
            )?;
            continue_after(shared, frozen, pgid, None, pause_ms)?;
            join_runs(std::iter::once(waiter).chain(other))
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Scenario `gcslock-stopped`, in rounds on a free lock: worker 0 runs a long
/// command; once it has started, its gcslock alone (not the command) is
/// SIGSTOPped for `pause_ms`, longer than the TTL, as a suspend would stop it
/// while leaving the command unsupervised. Worker 1 takes the lock over meanwhile
/// and holds it for `contender_hold_ms`. The overlap is expected (gcslock could
/// not act); once continued, gcslock must kill its command at once (checked by
/// `checks::stopped_after_resume`).
fn stop_gcslock_rounds(
    shared: &Shared<'_>,
    rounds: u32,
    pause_ms: u64,
    victim_hold_ms: u64,
    contender_hold_ms: u64,
) -> anyhow::Result<()> {
    let victim_stderr = worker_stderr(shared, 0)?;
    let contender_stderr = worker_stderr(shared, 1)?;
    for round in 0..rounds {
        let victim = RunId {
            worker: 0,
            attempt: round,
        };
        let contender = RunId {
            worker: 1,
            attempt: round,
        };
        let Some(first) = launch(
            shared,
            victim,
            Job::hold(victim_hold_ms),
            "0",
            &victim_stderr,
        )?
        else {
            break;
        };
        let pgid = first.pgid;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let waiter = scope.spawn(|| finish(shared, victim, first));
            let started = wait_for_start(shared, victim, Duration::from_secs(10));
            let mut other = None;
            if let Some(start) = started {
                // A little into the section, as a suspend would catch it.
                std::thread::sleep(Duration::from_millis(200));
                let sent = mono_ns()?;
                signal_group(pgid, Signal::SIGSTOP);
                let stopped = stopped_group_children(pgid, Duration::from_secs(1));
                let note = match stopped {
                    Some(_) => "gcslock alone; its command runs on",
                    None => "gcslock alone; it did not show as stopped within 1s",
                };
                let stopped = Stopped {
                    pgid,
                    pid: start.pid,
                    sent,
                    state: history::STOPPED_GCSLOCK_ONLY,
                };
                stopped.record(shared, victim, note)?;
                other = spawn_contender(
                    scope,
                    shared,
                    contender,
                    contender_hold_ms,
                    &contender_stderr,
                )?;
                continue_after(shared, victim, pgid, start.pid, pause_ms)?;
            } else {
                shared.note(format!("{victim}: its command did not start within 10s"));
            }
            join_runs(std::iter::once(waiter).chain(other))
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Scenario `once-per`, in ticks: each waits for the next boundary of the
/// period on the wall clock (plus 300 ms, so that no spawn straddles one), then
/// every worker fires `gcslock run --once-per` once, at a random offset within
/// `window_ms`; its job fails (exit 1) with `fail_percent` % probability. The
/// checker judges each slot (`checks::once_per_slots`).
fn once_per_ticks(
    shared: &Shared<'_>,
    seed: u64,
    ticks: u32,
    period_s: u64,
    window_ms: u64,
    fail_percent: u32,
) -> anyhow::Result<()> {
    let scenario = shared.scenario;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7_000_003));
    let stderr: Vec<_> = (0..scenario.workers)
        .map(|w| worker_stderr(shared, w))
        .collect::<anyhow::Result<_>>()?;
    let period_ns = period_s.saturating_mul(1_000_000_000).max(1);
    for tick in 0..ticks {
        let now = u64::try_from(wall_ns()?).unwrap_or(0);
        let next_boundary = (now / period_ns)
            .saturating_add(1)
            .saturating_mul(period_ns);
        let wait_ns = next_boundary.saturating_sub(now).saturating_add(ms(300));
        if !nap(shared, Duration::from_nanos(wait_ns)) && shared.stop.load(Ordering::SeqCst) {
            break;
        }
        fire_tick(shared, &mut rng, &stderr, tick, window_ms, fail_percent)?;
    }
    Ok(())
}

/// One tick: every worker fires `gcslock run --once-per` once, at a random offset
/// within `window_ms`; its job fails (exit 1) with `fail_percent` % probability.
fn fire_tick(
    shared: &Shared<'_>,
    rng: &mut StdRng,
    stderr: &[(PathBuf, std::fs::File)],
    tick: u32,
    window_ms: u64,
    fail_percent: u32,
) -> anyhow::Result<()> {
    let scenario = shared.scenario;
    let plans: Vec<(u64, Job)> = (0..scenario.workers)
        .map(|_| {
            let offset = rng.random_range(0..=window_ms);
            let hold_ms = rng.random_range(scenario.hold_ms.0..=scenario.hold_ms.1);
            let fails = rng.random_range(0..100) < fail_percent;
            (
                offset,
                Job {
                    hold_ms,
                    exit_code: u8::from(fails),
                },
            )
        })
        .collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = plans
            .iter()
            .zip(stderr)
            .zip(0u32..)
            .map(|(((offset, job), stderr), w)| {
                let run = RunId {
                    worker: w,
                    attempt: tick,
                };
                scope.spawn(move || -> anyhow::Result<()> {
                    std::thread::sleep(Duration::from_millis(*offset));
                    if let Some(launched) = launch(shared, run, *job, scenario.wait, stderr)? {
                        finish(shared, run, launched)?;
                    }
                    Ok(())
                })
            })
            .collect();
        join_runs(handles)
    })
}

/// Scenario `once-per-dst`: ticks that fire on New York wall clocks (faketime,
/// `TZ`) just before and just after each change of `dst::CHANGES`. Each tick's
/// faketime offset is set as it fires, so its spawns all read a time a few
/// seconds from the change. The spawns' slots come from `dst::new_york_civil`,
/// and the checker judges them as scenario once-per's.
fn dst_ticks(
    shared: &Shared<'_>,
    seed: u64,
    window_ms: u64,
    fail_percent: u32,
) -> anyhow::Result<()> {
    if shared.ctx.faketime.is_none() {
        shared.note(
            "SKIPPED: faketime is not installed (apt-get install -y faketime) or was \
             disabled; the DST ticks need it"
                .into(),
        );
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7_000_003));
    let stderr: Vec<_> = (0..shared.scenario.workers)
        .map(|w| worker_stderr(shared, w))
        .collect::<anyhow::Result<_>>()?;
    let ticks = crate::dst::CHANGES
        .iter()
        .flat_map(|change| crate::dst::LEADS_S.map(|lead| change + lead));
    for (tick, fake_at) in (0u32..).zip(ticks) {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let offset = fake_at - wall_ns()? / 1_000_000_000;
        *shared
            .dst_offset_s
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(offset);
        fire_tick(shared, &mut rng, &stderr, tick, window_ms, fail_percent)?;
    }
    Ok(())
}

type RunThread<'scope> = std::thread::ScopedJoinHandle<'scope, anyhow::Result<()>>;

/// Waits for every run thread, passing on the first error.
fn join_runs<'scope>(handles: impl IntoIterator<Item = RunThread<'scope>>) -> anyhow::Result<()> {
    for handle in handles {
        match handle.join() {
            Ok(result) => result?,
            Err(_) => bail!("a run thread panicked"),
        }
    }
    Ok(())
}

/// Launches the contender of a pause round on a thread of `scope` (`None` once
/// the run is stopped).
fn spawn_contender<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shared: &'scope Shared<'_>,
    contender: RunId,
    hold_ms: u64,
    stderr: &(PathBuf, std::fs::File),
) -> anyhow::Result<Option<RunThread<'scope>>> {
    let launched = launch(
        shared,
        contender,
        Job::hold(hold_ms),
        shared.scenario.wait,
        stderr,
    )?;
    Ok(launched.map(|launched| scope.spawn(move || finish(shared, contender, launched))))
}

/// A SIGSTOP a pause round sent: to group `pgid`, at `sent`.
struct Stopped {
    pgid: i32,
    pid: Option<i32>,
    sent: u64,
    state: &'static str,
}

impl Stopped {
    fn record(&self, shared: &Shared<'_>, run: RunId, note: &str) -> anyhow::Result<()> {
        let mut stop = Event::new(Kind::Stop, mono_ns()?).run(run);
        stop.pgid = Some(self.pgid);
        stop.pid = self.pid;
        stop.sent = Some(self.sent);
        stop.state = Some(self.state.to_owned());
        stop.note = Some(note.to_owned());
        shared.log.append(&stop)
    }
}

/// Ends a pause: after `pause_ms`, SIGCONTs the group and records it.
fn continue_after(
    shared: &Shared<'_>,
    run: RunId,
    pgid: i32,
    pid: Option<i32>,
    pause_ms: u64,
) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_millis(pause_ms));
    signal_group(pgid, Signal::SIGCONT);
    let mut cont = Event::new(Kind::Cont, mono_ns()?).run(run);
    cont.pgid = Some(pgid);
    cont.pid = pid;
    shared.log.append(&cont)
}

/// The start event of `run`, once it is in the history (`None` after `timeout`
/// or once the run's gcslock has exited without one).
fn wait_for_start(shared: &Shared<'_>, run: RunId, timeout: Duration) -> Option<Event> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        let events = shared.events();
        if let Some(start) = events
            .iter()
            .find(|e| e.ev == Kind::Start && e.run_id() == Some(run))
        {
            return Some(start.clone());
        }
        if events
            .iter()
            .any(|e| e.ev == Kind::Exit && e.run_id() == Some(run))
        {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// After a run's gcslock exited: if its section has neither end nor abort, wait
/// for the recorder to die and record when, so the section's end is bounded.
fn resolve_open_section(shared: &Shared<'_>, run: RunId) -> anyhow::Result<()> {
    let events = shared.events();
    let Some(start) = events
        .iter()
        .find(|e| e.ev == Kind::Start && e.run_id() == Some(run))
    else {
        return Ok(()); // never entered its section
    };
    let closed = events
        .iter()
        .any(|e| matches!(e.ev, Kind::End | Kind::Abort) && e.run_id() == Some(run));
    let Some(pid) = start.pid.filter(|_| !closed) else {
        return Ok(());
    };
    let mut dead = Event::new(Kind::Dead, 0).run(run);
    dead.pid = Some(pid);
    dead.token = start.token;
    if !wait_dead(&[pid], Duration::from_secs(20)) {
        shared.note(format!(
            "{run}: recorder pid {pid} still running 20s after its gcslock exited; SIGKILL"
        ));
        dead.note = Some("outlived its gcslock by 20s; SIGKILLed by gcslock-chaos".into());
        signal_group(pid, Signal::SIGKILL);
        wait_dead(&[pid], Duration::from_secs(5));
    }
    dead.t = mono_ns()?;
    shared.log.append(&dead)?;
    Ok(())
}

/// Sections that have started and not ended, with their gcslock's process group.
fn open_sections(shared: &Shared<'_>, min_age_ns: u64) -> anyhow::Result<Vec<(RunId, Event, i32)>> {
    let events = shared.events();
    let now = mono_ns()?;
    let running = shared.running();
    Ok(events
        .iter()
        .filter(|e| e.ev == Kind::Start && e.t + min_age_ns <= now)
        .filter_map(|start| {
            let run = start.run_id()?;
            let finished = events.iter().any(|e| {
                matches!(
                    e.ev,
                    Kind::End | Kind::Abort | Kind::Kill | Kind::Dead | Kind::Stop
                ) && e.run_id() == Some(run)
            });
            let current = running.get(&run.worker)?;
            (!finished && current.attempt == run.attempt)
                .then(|| (run, start.clone(), current.pgid))
        })
        .collect())
}

/// Sleeps up to `duration`, returning early (false) once the workers are done.
fn nap(shared: &Shared<'_>, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if shared.done.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// What the chaos thread does to a random holder.
#[derive(Clone, Copy, Debug)]
enum Action {
    Kill,
    Pause { pause_ms: u64 },
    Cut { cut_ms: u64 },
    Crash,
}

fn chaos(shared: &Shared<'_>, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c4a0);
    let (count, every_ms, action) = match shared.scenario.chaos {
        Chaos::None | Chaos::PauseAcquire { .. } | Chaos::StopGcslock { .. } => return Ok(()),
        Chaos::Kill { count, every_ms } => (count, every_ms, Action::Kill),
        Chaos::Pause {
            count,
            pause_ms,
            every_ms,
        } => (count, every_ms, Action::Pause { pause_ms }),
        Chaos::CutOff {
            count,
            cut_ms,
            every_ms,
        } => (count, every_ms, Action::Cut { cut_ms }),
        Chaos::CrashGcslock { count, every_ms } => (count, every_ms, Action::Crash),
        // Sections are short and come once per tick: look often, or kills rarely land.
        Chaos::OncePer { kills, .. } => (kills, (300, 900), Action::Kill),
    };
    let mut done = 0;
    while done < count {
        if !nap(
            shared,
            Duration::from_millis(rng.random_range(every_ms.0..=every_ms.1)),
        ) {
            break;
        }
        // Mid-section: at least 100 ms in.
        let candidates = open_sections(shared, ms(100))?;
        if candidates.is_empty() {
            continue;
        }
        let (run, start, pgid) = candidates[rng.random_range(0..candidates.len())].clone();
        let Some(pid) = start.pid else { continue };
        let gcslock_pid = start.ppid.unwrap_or(pgid);
        let sent = {
            let running = shared.running();
            // Still the same run (its group id cannot have been reused: unreaped).
            if running.get(&run.worker).map(|r| r.attempt) != Some(run.attempt) {
                continue;
            }
            let sent = mono_ns()?;
            match action {
                Action::Kill | Action::Pause { .. } => {
                    let signal = if matches!(action, Action::Pause { .. }) {
                        Signal::SIGSTOP
                    } else {
                        Signal::SIGKILL
                    };
                    // gcslock's group first (with faketime, the wrapper too), then the child's.
                    signal_group(pgid, signal);
                    signal_group(pid, signal);
                }
                Action::Cut { .. } => {
                    let Some(proxy) = usize::try_from(run.worker)
                        .ok()
                        .and_then(|w| shared.proxies.get(w))
                    else {
                        continue;
                    };
                    proxy.cut();
                }
                // gcslock alone: not its group (the watchdog has its own anyway),
                // not its command's.
                Action::Crash => signal_group(pgid, Signal::SIGKILL),
            }
            sent
        };
        let kind = match action {
            Action::Kill => Kind::Kill,
            Action::Pause { .. } => Kind::Stop,
            Action::Cut { .. } => Kind::Cut,
            Action::Crash => Kind::Crash,
        };
        let mut event = Event::new(kind, 0).run(run);
        event.pid = Some(pid);
        event.pgid = Some(pgid);
        event.token = start.token;
        event.sent = Some(sent);
        match action {
            Action::Pause { pause_ms } => {
                event.state = Some(stopped_state(pgid).to_owned());
                event.t = mono_ns()?;
                shared.log.append(&event)?;
                std::thread::sleep(Duration::from_millis(pause_ms));
                signal_group(pgid, Signal::SIGCONT);
                signal_group(pid, Signal::SIGCONT);
                let mut cont = Event::new(Kind::Cont, mono_ns()?).run(run);
                cont.pid = Some(pid);
                cont.pgid = Some(pgid);
                shared.log.append(&cont)?;
            }
            Action::Kill => {
                // The section ended at an unknown time before both were seen dead.
                if !wait_dead(&[pid, gcslock_pid, pgid], Duration::from_secs(10)) {
                    shared.note(format!("{run}: SIGKILLed processes still alive after 10s"));
                }
                event.t = mono_ns()?;
                shared.log.append(&event)?;
            }
            Action::Crash => {
                // Only gcslock is known dead here; the command's end is the watcher's.
                if !wait_dead(&[gcslock_pid], Duration::from_secs(10)) {
                    shared.note(format!("{run}: SIGKILLed gcslock still alive after 10s"));
                }
                event.ppid = Some(gcslock_pid);
                event.t = mono_ns()?;
                shared.log.append(&event)?;
            }
            Action::Cut { cut_ms } => {
                event.t = sent;
                event.note = Some(format!("storage black-holed for up to {cut_ms} ms"));
                shared.log.append(&event)?;
                heal_after(shared, run, cut_ms)?;
            }
        }
        done += 1;
    }
    Ok(())
}

/// Restores worker `run`'s link once its gcslock has exited, or after `cut_ms`.
fn heal_after(shared: &Shared<'_>, run: RunId, cut_ms: u64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_millis(cut_ms);
    while Instant::now() < until {
        let current = shared.running().get(&run.worker).map(|r| r.attempt);
        if current != Some(run.attempt) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(proxy) = usize::try_from(run.worker)
        .ok()
        .and_then(|w| shared.proxies.get(w))
    {
        proxy.heal();
    }
    let heal = Event::new(Kind::Heal, mono_ns()?).run(run);
    shared.log.append(&heal)
}

/// Records each recorder's and helper's death (`dead`, with its pid) as soon as
/// it is seen: for sections that end without a word (SIGKILL), this is the
/// tightest bound the history can have. Polls /proc every 2 ms; a process that
/// died before its start was read is recorded when first seen dead (later than
/// the truth, so never hiding an overlap).
fn watch_deaths(shared: &Shared<'_>) -> anyhow::Result<()> {
    let mut tail = Tail::default();
    let mut watched: Vec<(RunId, i32)> = Vec::new();
    let mut done_since: Option<Instant> = None;
    loop {
        for event in tail.read_new(&shared.log_path)? {
            if matches!(event.ev, Kind::Start | Kind::Helper) {
                if let (Some(run), Some(pid)) = (event.run_id(), event.pid) {
                    watched.push((run, pid));
                }
            }
        }
        let mut still = Vec::with_capacity(watched.len());
        for (run, pid) in watched.drain(..) {
            if is_dead(pid) {
                let mut dead = Event::new(Kind::Dead, mono_ns()?).run(run);
                dead.pid = Some(pid);
                shared.log.append(&dead)?;
            } else {
                still.push((run, pid));
            }
        }
        watched = still;
        if shared.done.load(Ordering::SeqCst) {
            let since = *done_since.get_or_insert_with(Instant::now);
            if watched.is_empty() {
                return Ok(());
            }
            if since.elapsed() > Duration::from_secs(10) {
                for (run, pid) in watched.drain(..) {
                    shared.note(format!(
                        "{run}: pid {pid} still running 10s after the last worker; SIGKILL"
                    ));
                    signal_group(pid, Signal::SIGKILL);
                    signal_group_member(pid);
                    wait_dead(&[pid], Duration::from_secs(5));
                    let mut dead = Event::new(Kind::Dead, mono_ns()?).run(run);
                    dead.pid = Some(pid);
                    dead.note =
                        Some("outlived every worker by 10s; SIGKILLed by gcslock-chaos".into());
                    shared.log.append(&dead)?;
                }
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILLs one process (a helper is not its group's leader).
fn signal_group_member(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Reads a growing history file incrementally, whole lines only.
#[derive(Default)]
struct Tail {
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn read_new(&mut self, path: &Path) -> anyhow::Result<Vec<Event>> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        file.seek(SeekFrom::Start(self.offset))
            .context("cannot seek in the history")?;
        let read = file
            .read_to_end(&mut self.partial)
            .context("cannot read the history")?;
        self.offset = self.offset.saturating_add(u64::try_from(read).unwrap_or(0));
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        Ok(history::parse(&String::from_utf8_lossy(&complete), false).0)
    }
}

/// What a SIGSTOPped `gcslock run` group was doing: `no-command` (it had not
/// started its command: it cannot until continued), `command-started`, or
/// `unknown` (the group did not stop within a second).
fn stopped_state(pgid: i32) -> &'static str {
    match stopped_group_children(pgid, Duration::from_secs(1)) {
        Some(children) if children.is_empty() => history::STOPPED_NO_COMMAND,
        Some(_) => "command-started",
        None => "unknown",
    }
}

/// The wall-time limit's last resort: SIGKILL every run and every open recorder.
fn kill_everything(shared: &Shared<'_>) {
    let running: Vec<Running> = shared.running().values().copied().collect();
    for run in &running {
        signal_group(run.pgid, Signal::SIGKILL);
    }
    for event in shared.events().iter().filter(|e| e.ev == Kind::Start) {
        if let Some(pid) = event.pid {
            if !is_dead(pid) {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}

/// The default binaries: `<workspace>/target/debug/NAME`, honouring CARGO_TARGET_DIR.
pub fn default_binary(name: &str) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join(name)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
