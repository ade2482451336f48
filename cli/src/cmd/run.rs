//! `gcslock run`: acquire, run the command in its own process group, forward
//! signals, stop the group if the lease is lost, release on every way out.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use gcslock::{Guard, Lock, LockOptions, Wait};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exit::{self, Coded};
use crate::global::GlobalArgs;
use crate::logging::OUTCOME;
use crate::output::short_duration;
use crate::parse::{parse_duration, parse_wait};
use crate::target::LockTarget;

pub const LONG_ABOUT: &str = "\
Run COMMAND while holding the lock gs://BUCKET/OBJECT.

The command inherits stdin, stdout and stderr and runs in its own process group, with
GCSLOCK_TOKEN (the fencing token: larger than every earlier holder's) and GCSLOCK_URL in its
environment. gcslock's own messages go to stderr only.

Signals INT, TERM, HUP and QUIT sent to gcslock are forwarded to the command's whole process
group; while gcslock is still waiting for the lock they abort the wait instead (exit 128+N).
If the lease is lost while the command runs (the lock was broken or taken over, or storage
could not be reached before the lease ran out), the process group gets SIGTERM, then SIGKILL
after --kill-grace, and gcslock exits 76 (also when the loss is found only as the command
exits). Processes the command leaves behind in its process group are stopped the same way
once it exits, so that nothing runs without the lock. The lock is released on every way out.

The command is not in the terminal's foreground process group: it can write to a terminal
but not read from one (it would be stopped by SIGTTIN).";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// How long to wait for a lock someone else holds: a duration (30s, 5m, 1h30m) or
    /// `forever`. Default: a single attempt
    #[arg(short, long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Wait>,

    /// How long the lease lasts without a refresh (1s to 7d)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub ttl: Duration,

    /// How often the lease is refreshed. Default: TTL/8
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_interval: Option<Duration>,

    /// Holder name recorded in the lock. Default: HOST:PID
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,

    /// After the lease is lost: time between SIGTERM and SIGKILL to the command's group
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub kill_grace: Duration,

    /// Exit code when the lock is busy
    #[arg(long, value_name = "CODE", default_value_t = exit::BUSY)]
    pub busy_exit_code: u8,

    /// How long to keep retrying while storage is unreachable before giving up (exit 69);
    /// the retries also continue until the end of --wait (forever with `--wait forever`)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub storage_timeout: Duration,

    /// The command to run, after `--`
    #[arg(
        value_name = "COMMAND",
        last = true,
        required = true,
        num_args = 1..,
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// The signals gcslock forwards to the command (or that abort the wait).
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];
/// The longest gcslock spends releasing the lock before it exits anyway (the lock
/// then expires after its TTL).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the command's process group is checked for survivors while it stops.
const GROUP_POLL: Duration = Duration::from_millis(50);
/// How long gcslock waits for the group to die after SIGKILL before giving up on it.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<u8> {
    // Catch signals before anything can take time, so none is lost or kills us.
    let mut signals = Signals::install()?;
    let backend = args.url.backend(global)?;
    let mut options = LockOptions::default()
        .ttl(args.ttl)
        .unavailable_timeout(args.storage_timeout);
    if let Some(interval) = args.refresh_interval {
        options = options.refresh_interval(interval);
    }
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let lock = Lock::new(backend, args.url.object(), options)?;
    let url = args.url.to_string();

    let (acquired, interrupted) =
        acquire(&lock, args.wait.unwrap_or(Wait::No), &mut signals, &url).await;
    let guard = match (acquired, interrupted) {
        (Ok(guard), None) => guard,
        (Ok(guard), Some(signal)) => {
            tracing::info!("{url}: acquired just as {signal} arrived; releasing it");
            release(guard, &url).await;
            return Ok(exit::signal(signal as i32));
        }
        (Err(gcslock::Error::Cancelled { .. }), Some(signal)) => {
            tracing::info!("{url}: stopped waiting for the lock on {signal}");
            return Ok(exit::signal(signal as i32));
        }
        (Err(gcslock::Error::Busy { holder, .. }), None) => {
            tracing::warn!(target: OUTCOME, "{url} is busy: {holder}");
            return Ok(args.busy_exit_code);
        }
        (Err(error), Some(signal)) => {
            tracing::info!("{url}: {error} (after {signal})");
            return Ok(exit::signal(signal as i32));
        }
        (Err(error), None) => return Err(error.into()),
    };
    if let Some(signal) = signals.try_recv() {
        tracing::info!("{url}: {signal} arrived before the command started; releasing the lock");
        release(guard, &url).await;
        return Ok(exit::signal(signal as i32));
    }
    // A final validity check right before the command starts: gcslock may have been
    // suspended since the lock was acquired, and the lock may be someone else's now.
    if let Err(error) = guard.check() {
        tracing::error!("{error}; the command was not started");
        release(guard, &url).await;
        return Ok(exit::LEASE_LOST);
    }

    let code = match spawn(&args.command, &guard, &url) {
        Ok(child) => supervise(child, &guard, &url, args.kill_grace, &mut signals).await,
        Err(error) => {
            tracing::error!("{error}");
            Ok(error.code)
        }
    };
    release(guard, &url).await;
    code
}

/// Acquires the lock; the forwarded signals cancel the wait cleanly (the library
/// honours cancellation only where no lock can be left behind). Returns the
/// outcome and the signal that interrupted the wait, if any.
///
/// A first attempt does not wait, so that a wait is announced (at info level) only
/// when the lock is actually busy.
async fn acquire(
    lock: &Lock,
    wait: Wait,
    signals: &mut Signals,
    url: &str,
) -> (Result<Guard, gcslock::Error>, Option<Signal>) {
    let cancel = CancellationToken::new();
    let mut interrupted = None;
    let first = cancellable(lock, Wait::No, &cancel, signals, &mut interrupted).await;
    if wait == Wait::No || interrupted.is_some() {
        return (first, interrupted);
    }
    let how_long = match wait {
        Wait::For(limit) => format!("up to {}", short_duration(limit)),
        _ => "until it is free".to_owned(),
    };
    let result = match first {
        Err(gcslock::Error::Busy { holder, .. }) => {
            tracing::info!("{url} is busy: {holder}; waiting {how_long}");
            cancellable(lock, wait, &cancel, signals, &mut interrupted).await
        }
        // --wait also covers an outage.
        Err(error @ gcslock::Error::Unavailable { .. }) => {
            tracing::warn!("{error}; still trying {how_long}");
            cancellable(lock, wait, &cancel, signals, &mut interrupted).await
        }
        other => other,
    };
    (result, interrupted)
}

async fn cancellable(
    lock: &Lock,
    wait: Wait,
    cancel: &CancellationToken,
    signals: &mut Signals,
    interrupted: &mut Option<Signal>,
) -> Result<Guard, gcslock::Error> {
    let acquire = lock.acquire_cancellable(wait, cancel);
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            result = &mut acquire => return result,
            Some(signal) = signals.recv(), if interrupted.is_none() => {
                tracing::debug!("{signal} while waiting for the lock; cancelling the wait");
                *interrupted = Some(signal);
                cancel.cancel();
            }
        }
    }
}

/// Starts the command in a new process group with the lock's token and URL in its
/// environment. Failures carry the shell's exit codes: 127 not found, 126 otherwise.
fn spawn(command: &[OsString], guard: &Guard, url: &str) -> Result<Child, Coded> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| Coded::new(exit::USAGE, "no command given"))?;
    let mut process = tokio::process::Command::new(program);
    process
        .args(arguments)
        .env("GCSLOCK_TOKEN", guard.token().to_string())
        .env("GCSLOCK_URL", url)
        .process_group(0);
    process.spawn().map_err(|error| {
        let code = match error.kind() {
            io::ErrorKind::NotFound => exit::NOT_FOUND,
            _ => exit::CANNOT_EXECUTE,
        };
        Coded::new(
            code,
            format!("cannot run {}: {error}", program.to_string_lossy()),
        )
    })
}

/// Waits for the command, forwarding signals to its process group; stops the
/// group if the lease is lost. Returns gcslock's exit code.
async fn supervise(
    mut child: Child,
    guard: &Guard,
    url: &str,
    grace: Duration,
    signals: &mut Signals,
) -> anyhow::Result<u8> {
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // Only possible if the child was already reaped, which nothing here does.
        return Err(Coded::new(exit::INTERNAL, "the command's process id is unknown").into());
    };
    tracing::info!(
        token = guard.token().value(),
        pid = pgid.as_raw(),
        "{url}: command started"
    );
    let lost = guard.lost();
    tokio::pin!(lost);
    let exited = loop {
        tokio::select! {
            biased;
            status = child.wait() => break status,
            reason = &mut lost => {
                tracing::error!(
                    "lease on {url} lost while the command ran: {reason}; stopping it \
                     (SIGTERM to process group {pgid}, SIGKILL after {})",
                    short_duration(grace)
                );
                let status = stop_group(&mut child, pgid, grace, signals).await;
                if let Some(status) = status {
                    tracing::info!("{url}: the command ended with {}", describe_status(status));
                }
                return Ok(exit::LEASE_LOST);
            }
            Some(signal) = signals.recv() => forward(pgid, signal),
        }
    };
    let status = match exited {
        Ok(status) => status,
        Err(error) => {
            // Should not happen; make sure nothing of the command outlives us.
            tracing::error!("cannot wait for the command: {error}; stopping its process group");
            let _ = killpg(pgid, Signal::SIGKILL);
            return Err(Coded::new(
                exit::INTERNAL,
                format!("cannot wait for the command: {error}"),
            )
            .into());
        }
    };
    tracing::debug!("{url}: the command ended with {}", describe_status(status));
    if group_alive(pgid) {
        tracing::warn!(
            "the command exited but processes it started are still running in process group \
             {pgid}; stopping them so that nothing runs without the lock (SIGTERM, SIGKILL after {})",
            short_duration(grace)
        );
        stop_group(&mut child, pgid, grace, signals).await;
    }
    if let Err(error) = guard.check() {
        tracing::error!(
            "{error} before the command finished (it exited with {})",
            describe_status(status)
        );
        return Ok(exit::LEASE_LOST);
    }
    Ok(exit_code(status))
}

/// SIGTERM to the group, then SIGKILL once `grace` has passed with any member left.
/// Returns the command's status if it was reaped here.
async fn stop_group(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    signals: &mut Signals,
) -> Option<ExitStatus> {
    send(pgid, Signal::SIGTERM);
    send(pgid, Signal::SIGCONT);
    let kill_at = Instant::now() + grace;
    let mut status = None;
    let mut killed = false;
    let mut poll = tokio::time::interval(GROUP_POLL);
    loop {
        tokio::select! {
            result = child.wait(), if status.is_none() => {
                // An error here means the child is gone; the group check decides the rest.
                status = Some(result.ok());
            }
            () = tokio::time::sleep_until(kill_at), if !killed => {
                tracing::warn!("process group {pgid} still running after {}; sending SIGKILL", short_duration(grace));
                send(pgid, Signal::SIGKILL);
                killed = true;
            }
            () = tokio::time::sleep_until(kill_at + AFTER_SIGKILL), if killed => {
                tracing::error!("process group {pgid} survived SIGKILL for {}; giving up on it", short_duration(AFTER_SIGKILL));
                break;
            }
            Some(signal) = signals.recv() => forward(pgid, signal),
            _ = poll.tick() => {
                // The command itself is reaped above; orphans of the group that were
                // re-parented to us (gcslock as PID 1 in a container) are reaped here.
                if status.is_some() && !group_alive(pgid) {
                    break;
                }
            }
        }
    }
    status.flatten()
}

/// Whether any process of the group is still running (zombies do not count: they
/// run nothing, and an init that reaps slowly must not delay us). Reaps the group's
/// zombies that are our children (possible only after the command itself has been
/// reaped: orphans re-parented to gcslock when it runs as PID 1).
fn group_alive(pgid: Pid) -> bool {
    while let Ok(status) = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
    // ESRCH: no member at all. EPERM: the id now names someone else's group.
    if killpg(pgid, None).is_err() {
        return false;
    }
    running_member(pgid).unwrap_or(true)
}

/// Whether /proc shows a member of the group that is not a zombie; `None` without
/// a readable /proc.
fn running_member(pgid: Pid) -> Option<bool> {
    let wanted = pgid.as_raw().to_string();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Gone since the listing, or not ours to read: either way not a member we
        // can wait for.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may contain anything, even ')'.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = fields.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1);
        if pgrp == Some(wanted.as_str()) && !matches!(state, Some("Z" | "X")) {
            return Some(true);
        }
    }
    Some(false)
}

fn forward(pgid: Pid, signal: Signal) {
    tracing::info!("forwarding {signal} to the command's process group {pgid}");
    send(pgid, signal);
    // A stopped process (say, one that tried to read the terminal from its background
    // group and got SIGTTIN) acts on the signal only once continued, as shells do.
    send(pgid, Signal::SIGCONT);
}

fn send(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!("cannot send {signal} to process group {pgid}: {error}"),
    }
}

/// The command's exit code, or 128+N if signal N killed it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::INTERNAL),
        (None, Some(signal)) => exit::signal(signal),
        (None, None) => exit::INTERNAL,
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("signal {signal}"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Releases the lock, bounded in time; failures are reported, not fatal: an
/// unreleased lock expires after its TTL.
async fn release(guard: Guard, url: &str) {
    match tokio::time::timeout(RELEASE_TIMEOUT, guard.release()).await {
        Ok(Ok(())) => tracing::debug!("{url}: released"),
        // Already reported when it happened.
        Ok(Err(gcslock::Error::LeaseLost { reason, .. })) => {
            tracing::debug!("{url}: nothing to release: {reason}");
        }
        Ok(Err(error)) => {
            tracing::warn!("could not release {url}: {error}; it stays locked until its TTL passes")
        }
        Err(_) => tracing::warn!(
            "could not release {url} within {}; it stays locked until its TTL passes",
            short_duration(RELEASE_TIMEOUT)
        ),
    }
}

/// INT, TERM, HUP and QUIT, caught (so they no longer kill gcslock) and delivered
/// in order through one channel.
struct Signals {
    receiver: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let (sender, receiver) = mpsc::unbounded_channel();
        for signal in FORWARDED {
            let mut stream = tokio::signal::unix::signal(SignalKind::from_raw(signal as i32))
                .map_err(|error| {
                    Coded::new(
                        exit::INTERNAL,
                        format!("cannot install a handler for {signal}: {error}"),
                    )
                })?;
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if sender.send(signal).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { receiver })
    }

    async fn recv(&mut self) -> Option<Signal> {
        self.receiver.recv().await
    }

    fn try_recv(&mut self) -> Option<Signal> {
        self.receiver.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
