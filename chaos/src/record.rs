//! `gcslock-chaos record`: the critical section that `gcslock run` runs.
//!
//! It appends a start event (monotonic time, the token from `GCSLOCK_TOKEN`, its
//! pid), holds for `--hold-ms`, commits, and appends an end event. INT, TERM, HUP
//! and QUIT are blocked and read from a signalfd, so when gcslock stops it after a
//! lost lease, it appends an abort event (with the time) before exiting. No shell
//! and no wall clock are involved in the times.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::clock::{mono_ns, wall_ns};
use crate::history::{
    Event, Kind, Log, RunId, COMMIT_FENCED_ACCEPTED, COMMIT_FENCED_REJECTED, COMMIT_UNFENCED,
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The shared history file (appended to)
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long)]
    pub worker: u32,
    #[arg(long)]
    pub attempt: u32,
    /// How long the critical section lasts
    #[arg(long)]
    pub hold_ms: u64,
    /// Commit through `gcslock put URL --token $GCSLOCK_TOKEN` (fenced store)
    #[arg(long, value_name = "gs://BUCKET/OBJECT")]
    pub fenced_store: Option<String>,
    /// The gcslock binary, for --fenced-store
    #[arg(long)]
    pub gcslock: Option<PathBuf>,
    /// The storage endpoint, for --fenced-store
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A slow stop: on the first stop signal, record `term` and go on this long
    /// before aborting (so gcslock's SIGKILL may come first)
    #[arg(long, default_value_t = 0)]
    pub term_delay_ms: u64,
    /// Start a helper process in the command's process group that lives as long
    /// as the hold (a grandchild of gcslock: the job is not one process)
    #[arg(long)]
    pub helper: bool,
    /// The helper leaves the command's process group and session (`setsid`), as
    /// daemons do and as `timeout` leaves the process group
    #[arg(long, requires = "helper")]
    pub helper_setsid: bool,
    /// The job fails: after the hold, record `end` with this code and exit with it
    #[arg(long, default_value_t = 0)]
    pub exit_code: u8,
}

/// `gcslock-chaos linger`: a helper process of the job. Stop signals are blocked
/// (by `main`), so only SIGKILL ends it early.
#[derive(Debug, Args)]
pub struct LingerArgs {
    /// How long it lives
    #[arg(long)]
    pub ms: u64,
}

pub fn linger(args: &LingerArgs) {
    std::thread::sleep(Duration::from_millis(args.ms));
}

/// Exit codes of the recorder.
const STOPPED_BASE: i32 = 128;

fn stop_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        mask.add(signal);
    }
    mask
}

/// Blocks INT, TERM, HUP and QUIT. `main` calls it before anything else when it
/// runs as the recorder, to shorten the window in which gcslock's SIGTERM (sent
/// at once when it finds its lease lost as the command starts) kills the recorder
/// before it can write its start event. The window from exec to here remains.
pub fn block_stop_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), None);
}

pub fn record(args: &RecordArgs) -> anyhow::Result<i32> {
    // Already blocked by `main`; again in case it was not (harmless).
    let mask = stop_signals();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .context("cannot block signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot create a signalfd")?;

    let token: u64 = std::env::var("GCSLOCK_TOKEN")
        .context("GCSLOCK_TOKEN is not set: run me under `gcslock run`")?
        .parse()
        .context("GCSLOCK_TOKEN is not a number")?;
    let log = Log::open(&args.log)?;
    let run = RunId {
        worker: args.worker,
        attempt: args.attempt,
    };
    let pid = i32::try_from(std::process::id()).context("pid out of range")?;
    let ppid = nix::unistd::getppid().as_raw();

    let started = mono_ns()?;
    let mut start = Event::new(Kind::Start, started).run(run);
    start.token = Some(token);
    // A semaphore's place (`run --holders N`); a lock's is 0.
    start.place = std::env::var("GCSLOCK_PLACE")
        .ok()
        .and_then(|place| place.parse().ok());
    start.pid = Some(pid);
    start.ppid = Some(ppid);
    start.wall = Some(wall_ns()?);
    log.append(&start)?;
    let mut helper = if args.helper {
        Some(start_helper(
            &log,
            run,
            pid,
            args.hold_ms,
            args.helper_setsid,
        )?)
    } else {
        None
    };

    // Hold, unless a signal arrives (then abort, at once or after the slow stop).
    let mut until = started.saturating_add(args.hold_ms.saturating_mul(1_000_000));
    let mut stopping: Option<i32> = None;
    loop {
        let now = mono_ns()?;
        if let Some(info) = signals.read_signal().context("cannot read the signalfd")? {
            let signal = i32::try_from(info.ssi_signo).unwrap_or(0);
            if stopping.is_none() {
                stopping = Some(signal);
                if args.term_delay_ms > 0 {
                    let mut term = Event::new(Kind::Term, now).run(run);
                    term.pid = Some(pid);
                    term.signal = Some(signal);
                    term.note = Some(format!("stopping slowly: {} ms", args.term_delay_ms));
                    log.append(&term)?;
                }
                until = now.saturating_add(args.term_delay_ms.saturating_mul(1_000_000));
            }
        }
        if now >= until {
            if let Some(signal) = stopping {
                // The helper goes first, so that the abort is the job's last act.
                if let Some(mut child) = helper.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let mut abort = Event::new(Kind::Abort, mono_ns()?).run(run);
                abort.token = Some(token);
                abort.pid = Some(pid);
                abort.signal = Some(signal);
                log.append(&abort)?;
                return Ok(STOPPED_BASE.saturating_add(signal));
            }
            break;
        }
        let left_ms = (until - now).div_ceil(1_000_000);
        let timeout =
            PollTimeout::try_from(Duration::from_millis(left_ms)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&signals),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(error) => bail!("poll failed: {error}"),
        }
    }

    if let Some(mut child) = helper.take() {
        // It lives as long as the hold, from a little later: the end is the job's last act.
        child.wait().context("cannot wait for the helper")?;
    }
    let commit = commit_through_fenced_store(args, token);
    let mut end = Event::new(Kind::End, mono_ns()?).run(run);
    end.token = Some(token);
    end.pid = Some(pid);
    end.wall = Some(wall_ns()?);
    end.commit = Some(commit);
    if args.exit_code != 0 {
        end.code = Some(i32::from(args.exit_code));
    }
    log.append(&end)?;
    Ok(i32::from(args.exit_code))
}

/// Starts `gcslock-chaos linger` in this process group (or, with `setsid`, in a
/// session of its own) and records its pid, so that the checker knows the job
/// lasts until it is gone too.
fn start_helper(
    log: &Log,
    run: RunId,
    pid: i32,
    hold_ms: u64,
    setsid: bool,
) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let mut command = Command::new(exe);
    command
        .args(["linger", "--ms", &hold_ms.to_string()])
        .stdin(Stdio::null());
    if setsid {
        // SAFETY: setsid is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
    }
    let child = command.spawn().context("cannot start the helper")?;
    let mut event = Event::new(Kind::Helper, mono_ns()?).run(run);
    event.pid = Some(i32::try_from(child.id()).context("pid out of range")?);
    event.ppid = Some(pid);
    log.append(&event)?;
    Ok(child)
}

/// HOOK — storage-side fenced writes (a later issue adds
/// `gcslock put gs://B/O --token $GCSLOCK_TOKEN < data`).
///
/// Today, without `--fenced-store`, this is a recording no-op: the commit is only
/// the end event, marked `unfenced`, and the checker holds it to rule 2 (tokens
/// grow in commit order) except for holders that were paused.
///
/// With `--fenced-store` (only passed when `gcslock-chaos --fenced` found a
/// `put` subcommand), it really runs `gcslock put` and records its verdict:
/// exit 0 is `fenced-accepted`, anything else `fenced-rejected: ...`. The checker
/// then counts only accepted commits, and a stale token that the store accepted
/// is a violation even for a paused holder. This path is UNTESTED until `put`
/// exists; the exit-code contract (0 = written) is an assumption to confirm then.
/// Nothing here ever decides the outcome itself.
fn commit_through_fenced_store(args: &RecordArgs, token: u64) -> String {
    let (Some(store), Some(gcslock)) = (&args.fenced_store, &args.gcslock) else {
        return COMMIT_UNFENCED.to_owned();
    };
    let mut command = Command::new(gcslock);
    command.arg("-q");
    if let Some(endpoint) = &args.endpoint {
        command.args(["--endpoint", endpoint]);
    }
    command
        .args(["put", store, "--token", &token.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let outcome = command.spawn().and_then(|mut child| {
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            // The data names the writer, so the stored object shows who won.
            let _ = writeln!(
                stdin,
                "token {token} worker {} attempt {}",
                args.worker, args.attempt
            );
        }
        child.wait_with_output()
    });
    match outcome {
        Ok(output) if output.status.success() => COMMIT_FENCED_ACCEPTED.to_owned(),
        Ok(output) => format!(
            "{COMMIT_FENCED_REJECTED}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("{COMMIT_FENCED_REJECTED}: cannot run gcslock put: {error}"),
    }
}
