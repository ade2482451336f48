//! Failover: the shared poll schedule's handoff after short and long holds (library
//! waiters, [`crate::handoff::measure`]); `gcslock elect` from a leader's graceful
//! stop (SIGTERM), its command's own exit, or its crash (SIGKILL of gcslock, whose
//! watchdog then kills the command) to the next leader's command starting; and the
//! requests a candidate costs per hour.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::emulator::{Emulator, BUCKET};
use crate::report::{table, Config, Report};
use crate::summary::ms;

/// A lock name not used before in this run (each run has its own emulator).
fn next_name() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[index]
}

/// One `gcslock elect` candidate whose command prints `lead` and runs until a line
/// arrives on gcslock's stdin.
struct Candidate {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Candidate {
    fn start(
        bin: &Path,
        emulator: &Emulator,
        url: &str,
        ttl: &str,
        id: usize,
        leads: mpsc::UnboundedSender<(usize, Instant)>,
    ) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["-q", "elect", "--ttl", ttl, "--identity"])
            .arg(format!("bench-{id}"))
            .args([url, "--", "sh", "-c"])
            .arg(r#"echo lead; exec 3<&0; read _ <&3 & wait $!"#)
            .env("STORAGE_EMULATOR_HOST", &emulator.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting gcslock elect")?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "lead" && leads.send((id, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, stdin })
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    async fn end_command(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Graceful,
    CommandExit,
    Crash,
}

impl Event {
    fn label(self) -> &'static str {
        match self {
            Self::Graceful => "graceful stop (SIGTERM to the leader's gcslock)",
            Self::CommandExit => "the leader's command exits by itself",
            Self::Crash => "crash (SIGKILL to the leader's gcslock)",
        }
    }
}

/// Rounds of `event` with two candidates; each sample runs from the event to the
/// other candidate's command printing `lead`.
async fn failovers(
    bin: &Path,
    emulator: &Emulator,
    ttl: &str,
    event: Event,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let url = format!("gs://{BUCKET}/failover/{ttl}-{}", next_name());
    let (sender, mut leads) = mpsc::unbounded_channel();
    let mut candidates = vec![Candidate::start(
        bin,
        emulator,
        &url,
        ttl,
        0,
        sender.clone(),
    )?];
    let wait_lead = Duration::from_secs(600);
    let (mut leader, _) = tokio::time::timeout(wait_lead, leads.recv())
        .await?
        .context("no leader")?;
    candidates.push(Candidate::start(
        bin,
        emulator,
        &url,
        ttl,
        1,
        sender.clone(),
    )?);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        // Let the waiting candidate settle into its steady poll, and a resigned one
        // past its rejoin delay.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let at = Instant::now();
        match event {
            Event::Graceful => candidates[leader].signal(Signal::SIGTERM)?,
            Event::CommandExit => candidates[leader].end_command().await?,
            Event::Crash => candidates[leader].signal(Signal::SIGKILL)?,
        }
        let (next, led_at) = tokio::time::timeout(wait_lead, leads.recv())
            .await?
            .context("no next leader")?;
        if next == leader {
            bail!("{}: the same candidate led again", event.label());
        }
        samples.push(led_at - at);
        if event != Event::CommandExit {
            // The stopped candidate comes back as a new process, as systemd restarts it.
            let _ = candidates[leader].child.wait().await;
            candidates[leader] =
                Candidate::start(bin, emulator, &url, ttl, leader, sender.clone())?;
        }
        leader = next;
    }
    for candidate in &candidates {
        let _ = candidate.signal(Signal::SIGTERM);
    }
    for candidate in &mut candidates {
        let _ = tokio::time::timeout(Duration::from_secs(30), candidate.child.wait()).await;
    }
    Ok(samples)
}

/// Requests per hour of a leader and of one waiting candidate, measured over `window`.
async fn cost(bin: &Path, emulator: &Emulator, ttl: &str, window: Duration) -> Result<(f64, f64)> {
    let url = format!("gs://{BUCKET}/failover/cost-{}", next_name());
    let (sender, mut leads) = mpsc::unbounded_channel();
    let mut leader = Candidate::start(bin, emulator, &url, ttl, 0, sender.clone())?;
    tokio::time::timeout(Duration::from_secs(60), leads.recv())
        .await?
        .context("no leader")?;
    let mut waiting = Candidate::start(bin, emulator, &url, ttl, 1, sender)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = emulator.stats().await?;
    tokio::time::sleep(window).await;
    let stats = emulator.stats().await?.since(&before);
    for candidate in [&mut leader, &mut waiting] {
        let _ = candidate.signal(Signal::SIGTERM);
        let _ = tokio::time::timeout(Duration::from_secs(30), candidate.child.wait()).await;
    }
    let per_hour = 3600.0 / window.as_secs_f64();
    Ok((
        stats.writes() as f64 * per_hour,
        stats.method("GET") as f64 * per_hour,
    ))
}

pub async fn run(
    emulator: &Emulator,
    config: &Config,
    report: &mut Report,
    bin: &Path,
) -> Result<()> {
    eprintln!("== failover");
    let (library_rounds, graceful_rounds, crash_rounds) = if config.smoke {
        ((4, 2), 2, 1)
    } else {
        ((30, 10), 10, 3)
    };
    let mut rows = Vec::new();
    for (hold, handoffs) in [
        (Duration::from_secs(2), library_rounds.0),
        (Duration::from_secs(15), library_rounds.1),
    ] {
        for waiters in [1, 8] {
            eprintln!("  library waiters: hold {}, {waiters} waiters", ms(hold));
            let h = crate::handoff::measure(
                emulator,
                &format!("failover/library/{}-{waiters}", hold.as_secs()),
                waiters,
                (Duration::from_millis(250), Duration::from_secs(8)),
                hold,
                handoffs,
            )
            .await?;
            rows.push(vec![
                format!("library `acquire`, {waiters} waiter(s)"),
                ms(hold),
                h.samples.len().to_string(),
                ms(percentile(&h.samples, 0.5)),
                ms(percentile(&h.samples, 0.9)),
                ms(h.handoffs.max),
                format!("{:.2}", h.per_second(h.gets) / waiters as f64),
            ]);
        }
    }
    report.section(
        "Failover 1. Handoff with the steady poll: holder's `release()` to the next `acquire()`",
        table(
            &["waiter", "hold", "handoffs", "p50", "p90", "max", "GET/s per waiter"],
            &rows,
        ) + "\nWaiters poll a live holder once per second, jittered ±20 % (PROTOCOL.md §4 rule 5), \
             whatever the hold. GET/s per waiter counts every GET over the run (the holders' \
             read-backs too) divided by the waiters.\n",
    );

    let mut rows = Vec::new();
    let ttl = "10s";
    for (event, rounds) in [
        (Event::Graceful, graceful_rounds),
        (Event::CommandExit, graceful_rounds),
        (Event::Crash, crash_rounds),
    ] {
        eprintln!("  elect, TTL {ttl}: {}", event.label());
        let samples = failovers(bin, emulator, ttl, event, rounds).await?;
        rows.push(vec![
            event.label().to_owned(),
            ttl.to_owned(),
            samples.len().to_string(),
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.9)),
            ms(samples.iter().max().copied().unwrap_or_default()),
        ]);
    }
    if !config.smoke {
        eprintln!("  elect, TTL 30s: crash");
        let samples = failovers(bin, emulator, "30s", Event::Crash, 1).await?;
        rows.push(vec![
            Event::Crash.label().to_owned(),
            "30s".to_owned(),
            samples.len().to_string(),
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.9)),
            ms(samples.iter().max().copied().unwrap_or_default()),
        ]);
    }
    eprintln!("  cost per hour");
    let window = if config.smoke {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    let (writes, gets) = cost(bin, emulator, ttl, window).await?;
    report.section(
        "Failover 2. `gcslock elect`: event to the next leader's command starting (two candidates)",
        table(&["event", "TTL", "failovers", "p50", "p90", "max"], &rows)
            + &format!(
                "\nA stopped candidate is started again (as systemd would) and waits 3 s before the \
                 next event. Crash: the lease ran from the leader's last refresh, up to TTL/8 \
                 before the kill, and is stale at TTL + TTL/10 after it. Cost measured over {} \
                 with a leader and one waiting candidate at TTL {ttl}: {writes:.0} writes/h \
                 (the leader's refreshes, TTL/8) and {gets:.0} GETs/h (the candidate's polls).\n",
                ms(window)
            ),
    );
    Ok(())
}
