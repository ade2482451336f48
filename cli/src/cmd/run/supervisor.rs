//! Watches the lease while the command runs and stops the command's process group
//! before anyone else can take the lock over.
//!
//! The holder's own deadline (`Guard::time_left`) comes at least two safety margins
//! before any other client may judge the lease stale. So the group gets SIGTERM once
//! no more than the kill grace is left before that deadline, and SIGKILL at the
//! deadline at the latest; when the lock was taken over or broken, someone else may
//! already run, and the group gets SIGKILL at once.

use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use gcslock::{Guard, LossReason};
use nix::sys::signal::Signal;
use tokio::time::{Instant, MissedTickBehavior};

use super::signals::Signals;
use crate::output::short_duration;

/// How often the lease is looked at while the command runs. The keep-alive task
/// notices a loss only when it next wakes; tokio's clock stops during a system
/// suspend, so the first tick after a resume sees the boot clock's verdict.
pub const LEASE_TICK: Duration = Duration::from_millis(100);
/// How often a stopping group is checked for survivors.
const GROUP_POLL: Duration = Duration::from_millis(50);
/// How long gcslock waits for the group to die after SIGKILL before giving up on it.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// The command's process group, as the supervisor sees it.
pub trait Group {
    /// The process group id, for messages.
    fn id(&self) -> i32;
    /// Sends `signal` to every process of the group.
    fn signal(&self, signal: Signal);
    /// Waits for the command itself (the group's leader) to exit.
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>>;
    /// Whether any process of the group still runs.
    fn alive(&self) -> bool;
}

/// The lease, as the supervisor sees it.
pub trait Lease {
    fn state(&self) -> LeaseState;
    /// Resolves when the lease is lost, for a prompt reaction; the tick catches
    /// whatever it does not report in time.
    fn lost_notice(&self) -> impl Future<Output = ()> + 'static;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Held, with this much time before the holder's own deadline.
    Held(Duration),
    /// Not refreshed before the deadline: nobody else holds the lock yet, but soon may.
    Expired(String),
    /// Taken over, broken or deleted: someone else may hold the lock now.
    Superseded(String),
}

impl Lease for Guard {
    fn state(&self) -> LeaseState {
        match self.check() {
            Ok(()) => LeaseState::Held(self.time_left()),
            Err(gcslock::Error::LeaseLost {
                reason: reason @ LossReason::Expired { .. },
                ..
            }) => LeaseState::Expired(reason.to_string()),
            Err(gcslock::Error::LeaseLost { reason, .. }) => {
                LeaseState::Superseded(reason.to_string())
            }
            Err(other) => LeaseState::Expired(other.to_string()),
        }
    }

    fn lost_notice(&self) -> impl Future<Output = ()> + 'static {
        let lost = self.lost();
        async move {
            lost.await;
        }
    }
}

/// How the supervision ended.
#[derive(Debug)]
pub enum Supervised {
    /// The command exited by itself; anything it left in its group was stopped.
    Exited(ExitStatus),
    /// The command was stopped because of the lease; its status if it was reaped.
    Stopped(Option<ExitStatus>),
    /// Waiting for the command failed; its group got SIGKILL.
    WaitFailed(io::Error),
}

/// Why and by when the group must stop.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stop {
    kill_at: Instant,
    why: Why,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Why {
    Superseded(String),
    Expired(String),
    RunningOut(Duration),
}

/// Whether the lease still covers the command for longer than the kill grace.
fn decide(state: LeaseState, kill_grace: Duration, now: Instant) -> Option<Stop> {
    let (kill_at, why) = match state {
        LeaseState::Superseded(reason) => (now, Why::Superseded(reason)),
        LeaseState::Expired(reason) => (now, Why::Expired(reason)),
        LeaseState::Held(left) if left.is_zero() => (
            now,
            Why::Expired("the lease deadline passed before a refresh succeeded".into()),
        ),
        LeaseState::Held(left) if left <= kill_grace => {
            // Past the end of time: kill now rather than never.
            (now.checked_add(left).unwrap_or(now), Why::RunningOut(left))
        }
        LeaseState::Held(_) => return None,
    };
    Some(Stop { kill_at, why })
}

/// The latest moment the lease allows the group to live.
fn lease_end(state: LeaseState, now: Instant) -> Instant {
    match state {
        LeaseState::Held(left) => now.checked_add(left).unwrap_or(now),
        LeaseState::Expired(_) | LeaseState::Superseded(_) => now,
    }
}

enum Event {
    Exited(io::Result<ExitStatus>),
    Look,
    Signal(Signal),
}

/// Waits for the command, forwarding signals to its process group, and stops the
/// group as the lease requires (see the module's documentation).
pub async fn supervise<G: Group, L: Lease>(
    group: &mut G,
    lease: &L,
    signals: &mut Signals,
    kill_grace: Duration,
    url: &str,
) -> Supervised {
    let lost = lease.lost_notice();
    tokio::pin!(lost);
    let mut lost_seen = false;
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let exited = loop {
        let event = tokio::select! {
            biased;
            status = group.wait() => Event::Exited(status),
            () = &mut lost, if !lost_seen => {
                lost_seen = true;
                Event::Look
            }
            _ = tick.tick() => Event::Look,
            Some(signal) = signals.recv() => Event::Signal(signal),
        };
        match event {
            Event::Exited(status) => break status,
            Event::Signal(signal) => forward(group, signal),
            Event::Look => {
                if let Some(stop) = decide(lease.state(), kill_grace, Instant::now()) {
                    announce(&stop, group.id(), url);
                    let status = stop_by(group, stop.kill_at, lease, signals).await;
                    return Supervised::Stopped(status);
                }
            }
        }
    };
    let status = match exited {
        Ok(status) => status,
        Err(error) => {
            // Should not happen; make sure nothing of the command outlives us.
            group.signal(Signal::SIGKILL);
            return Supervised::WaitFailed(error);
        }
    };
    if group.alive() {
        tracing::warn!(
            "the command exited but processes it started are still running in process group \
             {}; stopping them so that nothing runs without the lock (SIGTERM, SIGKILL after {} \
             or at the lease's deadline if sooner)",
            group.id(),
            short_duration(kill_grace)
        );
        let now = Instant::now();
        stop_by(
            group,
            now.checked_add(kill_grace).unwrap_or(now),
            lease,
            signals,
        )
        .await;
    }
    Supervised::Exited(status)
}

fn announce(stop: &Stop, pgid: i32, url: &str) {
    match &stop.why {
        Why::Superseded(reason) => tracing::error!(
            "lease on {url} lost while the command ran: {reason}; someone else may run now, so \
             the command is killed at once (SIGKILL to process group {pgid})"
        ),
        Why::Expired(reason) => tracing::error!(
            "lease on {url} lost while the command ran: {reason}; killing the command at once \
             (SIGKILL to process group {pgid})"
        ),
        Why::RunningOut(left) => tracing::error!(
            "lease on {url} was not refreshed and runs out in {}; stopping the command before \
             it does (SIGTERM to process group {pgid}, SIGKILL at the lease's deadline)",
            short_duration(*left)
        ),
    }
}

enum StopEvent {
    Exited(Option<ExitStatus>),
    KillTime,
    GiveUp,
    Signal(Signal),
    Poll,
}

/// Stops the whole group by `kill_at`: SIGTERM now, SIGKILL at `kill_at` to whatever
/// is left (at once if `kill_at` has passed), and sooner if the lease ends sooner.
/// Returns once no process of the group runs (or after it survived SIGKILL for
/// `AFTER_SIGKILL`), with the command's status if it was reaped here.
pub async fn stop_by<G: Group, L: Lease>(
    group: &mut G,
    kill_at: Instant,
    lease: &L,
    signals: &mut Signals,
) -> Option<ExitStatus> {
    let now = Instant::now();
    let mut kill_at = kill_at.min(lease_end(lease.state(), now));
    let mut killed_at = None;
    if kill_at <= now {
        killed_at = Some(kill(group));
    } else {
        group.signal(Signal::SIGTERM);
        // A stopped process acts on SIGTERM only once continued.
        group.signal(Signal::SIGCONT);
    }
    let mut status = None;
    let mut poll = tokio::time::interval(GROUP_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let give_up_at = killed_at.map(|at: Instant| at.checked_add(AFTER_SIGKILL).unwrap_or(at));
        let event = tokio::select! {
            // An error here means the child is gone; the group check decides the rest.
            result = group.wait(), if status.is_none() => StopEvent::Exited(result.ok()),
            () = tokio::time::sleep_until(kill_at), if killed_at.is_none() => StopEvent::KillTime,
            () = sleep_until_some(give_up_at) => StopEvent::GiveUp,
            Some(signal) = signals.recv() => StopEvent::Signal(signal),
            _ = poll.tick() => StopEvent::Poll,
        };
        match event {
            StopEvent::Exited(result) => status = Some(result),
            StopEvent::KillTime => {
                if group.alive() {
                    tracing::warn!(
                        "process group {} still running at its deadline; sending SIGKILL",
                        group.id()
                    );
                }
                killed_at = Some(kill(group));
            }
            StopEvent::GiveUp => {
                tracing::error!(
                    "process group {} survived SIGKILL for {}; giving up on it",
                    group.id(),
                    short_duration(AFTER_SIGKILL)
                );
                break;
            }
            StopEvent::Signal(signal) => forward(group, signal),
            StopEvent::Poll => {
                if status.is_some() && !group.alive() {
                    break;
                }
                // A suspend or a takeover since the stop began moves the deadline up.
                if killed_at.is_none() {
                    kill_at = kill_at.min(lease_end(lease.state(), Instant::now()));
                }
            }
        }
    }
    status.flatten()
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn kill<G: Group>(group: &G) -> Instant {
    group.signal(Signal::SIGKILL);
    Instant::now()
}

fn forward<G: Group>(group: &G, signal: Signal) {
    tracing::info!(
        "forwarding {signal} to the command's process group {}",
        group.id()
    );
    group.signal(signal);
    // A stopped process (say, one that tried to read the terminal from its background
    // group and got SIGTTIN) acts on the signal only once continued, as shells do.
    group.signal(Signal::SIGCONT);
}
