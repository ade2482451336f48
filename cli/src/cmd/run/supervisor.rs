//! Watches the lease while the command runs and stops the command's boundary (its
//! cgroup, session or process group: the [`Group`]) before anyone else can take the
//! lock over.
//!
//! The holder's own deadline (`Guard::time_left`) comes at least two safety margins
//! before any other client may judge the lease stale. So the group gets SIGTERM once
//! no more than the kill grace is left before that deadline, and SIGKILL at the
//! deadline at the latest; when the lock was taken over or broken, someone else may
//! already run, and the group gets SIGKILL at once.
//!
//! A group that survives SIGKILL (a process stuck in uninterruptible sleep) may
//! still write: while the lease is valid it is kept (the guard goes on refreshing)
//! and the group is watched until it is gone; only a lease that is lost anyway is
//! left to expire with the group still there.

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
/// How long the group may take to die after SIGKILL before gcslock says that it
/// survived it.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// The command and everything it started (its boundary), as the supervisor sees it.
pub trait Group {
    /// What it is, for messages: "cgroup /sys/fs/cgroup/...", "session 42", ...
    fn name(&self) -> &str;
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
            Err(reason @ LossReason::Expired { .. }) => LeaseState::Expired(reason.to_string()),
            Err(reason) => LeaseState::Superseded(reason.to_string()),
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
    /// The command ran past `--max-runtime` and was stopped; its status if reaped.
    TimedOut(Option<ExitStatus>),
    /// The command outlived the kill grace after a forwarded signal and was killed
    /// (`elect`: a graceful stop must hand over promptly); its status if reaped.
    Killed(Option<ExitStatus>),
    /// Waiting for the command failed; its group was killed.
    WaitFailed(io::Error),
    /// The group survived SIGKILL (say, a process stuck in uninterruptible sleep)
    /// until the lease was lost: its writes may still land, so the lock must expire
    /// by its TTL rather than be released. The command's status if it was reaped.
    Survived(Option<ExitStatus>),
}

/// How the supervision ended, and the first signal gcslock forwarded to the group
/// (the run then counts as terminated, whatever the command's exit code).
#[derive(Debug)]
pub struct Supervision {
    pub ended: Supervised,
    pub forwarded: Option<Signal>,
}

impl Supervised {
    /// Whether the lock may be released: only once nothing of the group runs.
    pub fn may_release(&self) -> bool {
        !matches!(self, Self::Survived(_))
    }
}

/// How stopping the group ended.
#[derive(Debug)]
pub struct Stopping {
    /// The command's status, if it was reaped while stopping.
    pub status: Option<ExitStatus>,
    /// Whether a process of the group still ran when the lease was lost.
    pub survived: bool,
}

impl Stopping {
    /// `stopped` of the status, unless the group survived.
    fn outcome(self, stopped: fn(Option<ExitStatus>) -> Supervised) -> Supervised {
        if self.survived {
            Supervised::Survived(self.status)
        } else {
            stopped(self.status)
        }
    }
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
    MaxRuntime,
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
        // One tick early, as the next look may come a tick too late for the grace.
        LeaseState::Held(left) if left <= kill_grace.saturating_add(LEASE_TICK) => {
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
    /// The kill grace after a forwarded signal ran out.
    GraceOver,
}

/// Waits for the command, forwarding signals to its group, and stops the group as
/// the lease requires (see the module's documentation), or once `max_runtime_end`
/// passes (`--max-runtime`: SIGTERM, then SIGKILL after the kill grace or at the
/// lease's deadline if sooner). With `bound_forwarded`, a command still running a
/// kill grace after gcslock forwarded it a signal is killed (`elect`'s graceful
/// stop: the next leader must not wait on a command that ignores SIGTERM).
pub async fn supervise<G: Group, L: Lease>(
    group: &mut G,
    lease: &L,
    signals: &mut Signals,
    kill_grace: Duration,
    url: &str,
    max_runtime_end: Option<Instant>,
    bound_forwarded: bool,
) -> Supervision {
    let mut forwarded = None;
    let limits = Limits {
        kill_grace,
        max_runtime_end,
        bound_forwarded,
    };
    let ended = supervise_group(group, lease, signals, &mut forwarded, &limits, url).await;
    Supervision { ended, forwarded }
}

/// When the group must stop besides the lease.
struct Limits {
    kill_grace: Duration,
    max_runtime_end: Option<Instant>,
    bound_forwarded: bool,
}

async fn supervise_group<G: Group, L: Lease>(
    group: &mut G,
    lease: &L,
    signals: &mut Signals,
    forwarded: &mut Option<Signal>,
    limits: &Limits,
    url: &str,
) -> Supervised {
    let (kill_grace, max_runtime_end) = (limits.kill_grace, limits.max_runtime_end);
    let mut grace_over = None;
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
            () = sleep_until_some(max_runtime_end) => Event::Look,
            () = sleep_until_some(grace_over) => Event::GraceOver,
            Some(signal) = signals.recv() => Event::Signal(signal),
        };
        match event {
            Event::Exited(status) => break status,
            Event::Signal(signal) => {
                forward(group, signal, forwarded);
                if limits.bound_forwarded && grace_over.is_none() {
                    let now = Instant::now();
                    grace_over = Some(now.checked_add(kill_grace).unwrap_or(now));
                }
            }
            Event::GraceOver => {
                let name = group.name().to_owned();
                let announce = || {
                    tracing::warn!(
                        "the command still ran {} after the forwarded signal; killing its {name}",
                        short_duration(kill_grace)
                    );
                };
                let stopping =
                    stop_by(group, Instant::now(), lease, signals, forwarded, announce).await;
                return stopping.outcome(Supervised::Killed);
            }
            Event::Look => {
                let now = Instant::now();
                if let Some(stop) = decide(lease.state(), kill_grace, now) {
                    let name = group.name().to_owned();
                    let announce = || announce(&stop, &name, url);
                    let stopping =
                        stop_by(group, stop.kill_at, lease, signals, forwarded, announce).await;
                    return stopping.outcome(Supervised::Stopped);
                }
                if max_runtime_end.is_some_and(|end| now >= end) {
                    let stop = Stop {
                        kill_at: now.checked_add(kill_grace).unwrap_or(now),
                        why: Why::MaxRuntime,
                    };
                    let name = group.name().to_owned();
                    let announce = || announce(&stop, &name, url);
                    let stopping =
                        stop_by(group, stop.kill_at, lease, signals, forwarded, announce).await;
                    return stopping.outcome(Supervised::TimedOut);
                }
            }
        }
    };
    let status = match exited {
        Ok(status) => status,
        Err(error) => {
            // Should not happen; make sure nothing of the command outlives us, and
            // wait to see that it did not.
            let name = group.name().to_owned();
            let announce = || {
                tracing::error!("cannot wait for the command ({error}); killing its {name}");
            };
            let stopping =
                stop_by(group, Instant::now(), lease, signals, forwarded, announce).await;
            if stopping.survived {
                return Supervised::Survived(stopping.status);
            }
            return Supervised::WaitFailed(error);
        }
    };
    if group.alive() {
        let name = group.name().to_owned();
        let announce = || {
            tracing::warn!(
                "the command exited but processes it started are still running in its \
                 {name}; stopping them so that nothing runs without the lock (SIGTERM, \
                 SIGKILL after {} or at the lease's deadline if sooner)",
                short_duration(kill_grace)
            );
        };
        let now = Instant::now();
        let kill_at = now.checked_add(kill_grace).unwrap_or(now);
        let stopping = stop_by(group, kill_at, lease, signals, forwarded, announce).await;
        if stopping.survived {
            return Supervised::Survived(Some(status));
        }
    }
    Supervised::Exited(status)
}

fn announce(stop: &Stop, name: &str, url: &str) {
    match &stop.why {
        Why::Superseded(reason) => tracing::error!(
            "lease on {url} lost while the command ran: {reason}; someone else may run now, so \
             the command is killed at once (SIGKILL to its {name})"
        ),
        Why::Expired(reason) => tracing::error!(
            "lease on {url} lost while the command ran: {reason}; killing the command at once \
             (SIGKILL to its {name})"
        ),
        Why::RunningOut(left) => tracing::error!(
            "lease on {url} was not refreshed and runs out in {}; stopping the command before \
             it does (SIGTERM to its {name}, SIGKILL at the lease's deadline)",
            short_duration(*left)
        ),
        Why::MaxRuntime => tracing::error!(
            "the command ran past --max-runtime; stopping it (SIGTERM to its {name}, SIGKILL \
             after --kill-grace)"
        ),
    }
}

enum StopEvent {
    Exited(Option<ExitStatus>),
    KillTime,
    Survivors,
    Signal(Signal),
    Poll,
}

/// Stops the whole group by `kill_at`: SIGTERM now, SIGKILL at `kill_at` to whatever
/// is left (at once if `kill_at` has passed), and sooner if the lease ends sooner.
/// `announce` logs the stop once the first signal is sent: a blocked stderr must not
/// delay the signal. Returns once no process of the group runs, with the command's
/// status if it was reaped here. A group still there `AFTER_SIGKILL` after SIGKILL is
/// watched (and killed again) for as long as the lease is valid; `survived` if the
/// lease was lost first.
pub async fn stop_by<G: Group, L: Lease>(
    group: &mut G,
    kill_at: Instant,
    lease: &L,
    signals: &mut Signals,
    forwarded: &mut Option<Signal>,
    announce: impl FnOnce(),
) -> Stopping {
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
    announce();
    let mut status = None;
    let mut surviving = false;
    let mut poll = tokio::time::interval(GROUP_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let survivors_at = killed_at
            .filter(|_| !surviving)
            .map(|at: Instant| at.checked_add(AFTER_SIGKILL).unwrap_or(at));
        let event = tokio::select! {
            // An error here means the child is gone; the group check decides the rest.
            result = group.wait(), if status.is_none() => StopEvent::Exited(result.ok()),
            () = tokio::time::sleep_until(kill_at), if killed_at.is_none() => StopEvent::KillTime,
            () = sleep_until_some(survivors_at) => StopEvent::Survivors,
            Some(signal) = signals.recv() => StopEvent::Signal(signal),
            _ = poll.tick() => StopEvent::Poll,
        };
        match event {
            StopEvent::Exited(result) => status = Some(result),
            StopEvent::KillTime => {
                let alive = group.alive();
                killed_at = Some(kill(group));
                if alive {
                    tracing::warn!(
                        "the command's {} still ran at its deadline; sent SIGKILL",
                        group.name()
                    );
                }
            }
            StopEvent::Survivors => {
                surviving = true;
                if group.alive() {
                    tracing::warn!(
                        "processes of the command's {} survived SIGKILL for {} (stuck in \
                         uninterruptible sleep, most likely) and may still write; the lease \
                         is kept, and released only once they are gone",
                        group.name(),
                        short_duration(AFTER_SIGKILL)
                    );
                }
            }
            StopEvent::Signal(signal) => forward(group, signal, forwarded),
            StopEvent::Poll => {
                let alive = group.alive();
                if !alive && (status.is_some() || surviving) {
                    break;
                }
                if surviving && alive {
                    if !matches!(lease.state(), LeaseState::Held(left) if !left.is_zero()) {
                        tracing::error!(
                            "processes of the command's {} still run and the lease is lost; \
                             giving up on them",
                            group.name()
                        );
                        return Stopping {
                            status: status.flatten(),
                            survived: true,
                        };
                    }
                    // Whatever wakes up, or was in the middle of a fork, dies now.
                    kill(group);
                }
                // A suspend or a takeover since the stop began moves the deadline up.
                if killed_at.is_none() {
                    kill_at = kill_at.min(lease_end(lease.state(), Instant::now()));
                }
            }
        }
    }
    Stopping {
        status: status.flatten(),
        survived: false,
    }
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

/// Forwards `signal` to the group and remembers the first one forwarded.
fn forward<G: Group>(group: &G, signal: Signal, forwarded: &mut Option<Signal>) {
    group.signal(signal);
    // A stopped process (say, one that tried to read the terminal from its background
    // group and got SIGTTIN) acts on the signal only once continued, as shells do.
    group.signal(Signal::SIGCONT);
    forwarded.get_or_insert(signal);
    tracing::info!("forwarded {signal} to the command's {}", group.name());
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::os::unix::process::ExitStatusExt as _;
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;

    const GRACE: Duration = Duration::from_secs(3);
    /// A hang guard on tokio's paused clock: only a supervisor that never stops reaches it.
    const HANG_GUARD: Duration = Duration::from_secs(600);

    /// A group whose command ignores SIGTERM, dies of SIGKILL (unless
    /// `survives_sigkill`), and otherwise exits with 0 at `exits_at`. Records every
    /// signal with its time since `start`, and in `journal`.
    struct FakeGroup {
        start: Instant,
        exits_at: Option<Instant>,
        survives_sigkill: bool,
        /// With `survives_sigkill`: SIGKILL works again from then on (the process
        /// came out of uninterruptible sleep).
        stuck_until: Option<Instant>,
        sent: RefCell<Vec<(Signal, Duration)>>,
        killed: watch::Sender<bool>,
        journal: Journal,
    }

    impl FakeGroup {
        fn new(exits_after: Option<Duration>) -> Self {
            let start = Instant::now();
            Self {
                start,
                exits_at: exits_after.map(|after| start + after),
                survives_sigkill: false,
                stuck_until: None,
                sent: RefCell::new(Vec::new()),
                killed: watch::channel(false).0,
                journal: Journal::default(),
            }
        }

        /// A command stuck in uninterruptible sleep: not even SIGKILL ends it.
        fn unkillable() -> Self {
            Self {
                survives_sigkill: true,
                ..Self::new(None)
            }
        }

        fn sent(&self) -> Vec<(Signal, Duration)> {
            self.sent.borrow().clone()
        }

        fn first(&self, signal: Signal) -> Option<Duration> {
            self.sent()
                .into_iter()
                .find(|(sent, _)| *sent == signal)
                .map(|(_, at)| at)
        }
    }

    impl Group for FakeGroup {
        fn name(&self) -> &str {
            "process group 4242"
        }

        fn signal(&self, signal: Signal) {
            self.sent.borrow_mut().push((signal, self.start.elapsed()));
            self.journal.push(format!("sent {signal}"));
            let stuck = self.survives_sigkill
                && self.stuck_until.is_none_or(|until| Instant::now() < until);
            if signal == Signal::SIGKILL && !stuck {
                self.killed.send_replace(true);
            }
        }

        async fn wait(&mut self) -> io::Result<ExitStatus> {
            let mut killed = self.killed.subscribe();
            let exit = sleep_until_some(self.exits_at);
            tokio::select! {
                _ = killed.wait_for(|killed| *killed) => Ok(ExitStatus::from_raw(9)),
                () = exit => Ok(ExitStatus::from_raw(0)),
            }
        }

        fn alive(&self) -> bool {
            !*self.killed.borrow() && self.exits_at.is_none_or(|at| Instant::now() < at)
        }
    }

    /// What happened, in order: signals sent and messages logged.
    #[derive(Clone, Default)]
    struct Journal(Arc<Mutex<Vec<String>>>);

    impl Journal {
        fn push(&self, entry: String) {
            self.0.lock().unwrap().push(entry);
        }

        fn entries(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Journal {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.push(format!(
                "logged {}: {}",
                event.metadata().level(),
                message.0
            ));
        }
    }

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    /// Supervises `group` after `signal` arrived for gcslock to forward.
    async fn after_signal<G: Group>(
        group: &mut G,
        lease: &FakeLease,
        signal: Signal,
        bound_forwarded: bool,
    ) -> Supervision {
        let (sender, mut signals) = Signals::from_channel();
        sender.send(signal).unwrap();
        supervise(
            group,
            lease,
            &mut signals,
            GRACE,
            "gs://b/o",
            None,
            bound_forwarded,
        )
        .await
    }

    /// Logs into `journal` on this thread (the paused-clock tests run on one).
    fn log_into(journal: &Journal) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(journal.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        // Tests on other threads register callsites concurrently; one registered while
        // no subscriber of ours existed may have cached "never". Recompute it now that
        // ours is in place (seen once as a missing "the lease is kept" line).
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// A lease whose deadline the test moves; its loss notice never comes, as when
    /// the keep-alive task sleeps through a suspend.
    #[derive(Clone)]
    struct FakeLease {
        deadline: Arc<Mutex<Instant>>,
        superseded: Arc<Mutex<Option<String>>>,
    }

    impl FakeLease {
        fn ending_in(left: Duration) -> Self {
            Self {
                deadline: Arc::new(Mutex::new(Instant::now() + left)),
                superseded: Arc::new(Mutex::new(None)),
            }
        }

        fn set_left(&self, left: Duration) {
            *self.deadline.lock().unwrap() = Instant::now() + left;
        }

        fn supersede(&self) {
            *self.superseded.lock().unwrap() = Some("taken over".into());
        }
    }

    impl Lease for FakeLease {
        fn state(&self) -> LeaseState {
            if let Some(reason) = self.superseded.lock().unwrap().clone() {
                return LeaseState::Superseded(reason);
            }
            let deadline = *self.deadline.lock().unwrap();
            LeaseState::Held(deadline.saturating_duration_since(Instant::now()))
        }

        fn lost_notice(&self) -> impl Future<Output = ()> + 'static {
            std::future::pending()
        }
    }

    async fn supervised<G: Group>(group: &mut G, lease: &FakeLease) -> Supervised {
        supervised_with(group, lease, GRACE, None).await
    }

    async fn supervised_with<G: Group>(
        group: &mut G,
        lease: &FakeLease,
        grace: Duration,
        end: Option<Instant>,
    ) -> Supervised {
        let (_sender, mut signals) = Signals::from_channel();
        tokio::time::timeout(
            HANG_GUARD,
            supervise(group, lease, &mut signals, grace, "gs://b/o", end, false),
        )
        .await
        .expect("the supervisor never stopped the group")
        .ended
    }

    #[tokio::test(start_paused = true)]
    async fn unrefreshed_lease_gets_sigterm_at_grace_and_sigkill_at_the_deadline() {
        let mut group = FakeGroup::new(None);
        let lease = FakeLease::ending_in(Duration::from_secs(7));
        let outcome = supervised(&mut group, &lease).await;
        assert!(matches!(outcome, Supervised::Stopped(_)), "{outcome:?}");
        let term = group.first(Signal::SIGTERM).expect("SIGTERM sent");
        let kill = group.first(Signal::SIGKILL).expect("SIGKILL sent");
        // SIGTERM once no more than the grace is left (up to one tick early, so as
        // never to be late), SIGKILL no later than the deadline itself.
        assert!(term >= Duration::from_secs(4) - LEASE_TICK, "{term:?}");
        assert!(term <= Duration::from_secs(4), "{term:?}");
        assert_eq!(kill, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn resume_after_the_deadline_kills_at_once_without_waiting_for_the_loss_notice() {
        let mut group = FakeGroup::new(None);
        let lease = FakeLease::ending_in(Duration::from_secs(60));
        let suspend = {
            let lease = lease.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Woke from a suspend longer than the TTL: the boot clock says it is over.
                lease.set_left(Duration::ZERO);
            })
        };
        let outcome = supervised(&mut group, &lease).await;
        suspend.await.unwrap();
        assert!(matches!(outcome, Supervised::Stopped(_)), "{outcome:?}");
        let kill = group.first(Signal::SIGKILL).expect("SIGKILL sent");
        assert!(kill >= Duration::from_secs(2), "{kill:?}");
        assert!(kill <= Duration::from_secs(2) + LEASE_TICK, "{kill:?}");
        assert_eq!(group.first(Signal::SIGTERM), None, "{:?}", group.sent());
    }

    #[tokio::test(start_paused = true)]
    async fn superseded_lease_kills_at_once() {
        let mut group = FakeGroup::new(None);
        let lease = FakeLease::ending_in(Duration::from_secs(60));
        let takeover = {
            let lease = lease.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                lease.supersede();
            })
        };
        let outcome = supervised(&mut group, &lease).await;
        takeover.await.unwrap();
        assert!(matches!(outcome, Supervised::Stopped(_)), "{outcome:?}");
        let kill = group.first(Signal::SIGKILL).expect("SIGKILL sent");
        assert!(kill <= Duration::from_secs(5) + LEASE_TICK, "{kill:?}");
        assert_eq!(group.first(Signal::SIGTERM), None, "{:?}", group.sent());
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_failing_during_the_grace_moves_sigkill_up_to_the_deadline() {
        // A stop that began with plenty of grace (a shutdown asked for by someone
        // else, say) still ends at the lease's deadline.
        let mut group = FakeGroup::new(None);
        let lease = FakeLease::ending_in(Duration::from_secs(2));
        let (_sender, mut signals) = Signals::from_channel();
        let kill_at = Instant::now() + Duration::from_secs(30);
        tokio::time::timeout(
            HANG_GUARD,
            stop_by(&mut group, kill_at, &lease, &mut signals, &mut None, || {}),
        )
        .await
        .expect("stop_by returned");
        assert_eq!(group.first(Signal::SIGTERM), Some(Duration::ZERO));
        assert_eq!(group.first(Signal::SIGKILL), Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_lease_never_stops_the_command() {
        // TTL 10s: margin 1s, refresh every 1.25s; a refresh extends the deadline to
        // its send time + 9s, so at least 7.75s is ever left, above the 3s grace.
        let mut group = FakeGroup::new(Some(Duration::from_secs(120)));
        let lease = FakeLease::ending_in(Duration::from_secs(9));
        let refresher = {
            let lease = lease.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1250)).await;
                    lease.set_left(Duration::from_secs(9));
                }
            })
        };
        let outcome = supervised(&mut group, &lease).await;
        refresher.abort();
        assert!(
            matches!(outcome, Supervised::Exited(status) if status.success()),
            "{outcome:?}"
        );
        assert_eq!(group.sent(), Vec::new());
    }

    #[tokio::test(start_paused = true)]
    async fn signals_are_forwarded_to_the_group() {
        let mut group = FakeGroup::new(Some(Duration::from_secs(10)));
        let lease = FakeLease::ending_in(Duration::from_secs(3600));
        let outcome = after_signal(&mut group, &lease, Signal::SIGHUP, false).await;
        assert!(
            matches!(outcome.ended, Supervised::Exited(_)),
            "{outcome:?}"
        );
        assert_eq!(outcome.forwarded, Some(Signal::SIGHUP));
        let sent: Vec<Signal> = group.sent().into_iter().map(|(s, _)| s).collect();
        assert_eq!(sent, vec![Signal::SIGHUP, Signal::SIGCONT]);
    }

    /// `elect`'s graceful stop: a command that ignores the forwarded SIGTERM is
    /// killed one kill grace later (before, it ran until it chose to exit).
    #[tokio::test(start_paused = true)]
    async fn a_bounded_forward_kills_a_command_that_ignores_it_after_the_grace() {
        let mut group = FakeGroup::new(Some(Duration::from_secs(3600)));
        let lease = FakeLease::ending_in(Duration::from_secs(7200));
        let outcome = after_signal(&mut group, &lease, Signal::SIGTERM, true).await;
        assert!(
            matches!(outcome.ended, Supervised::Killed(_)),
            "{outcome:?}"
        );
        assert_eq!(outcome.forwarded, Some(Signal::SIGTERM));
        assert_eq!(group.first(Signal::SIGTERM), Some(Duration::ZERO));
        assert_eq!(group.first(Signal::SIGKILL), Some(GRACE));

        // Unbounded (`run`), the same command is only forwarded the signal.
        let mut group = FakeGroup::new(Some(Duration::from_secs(3600)));
        let outcome = after_signal(&mut group, &lease, Signal::SIGTERM, false).await;
        assert!(
            matches!(outcome.ended, Supervised::Exited(_)),
            "{outcome:?}"
        );
        assert_eq!(group.first(Signal::SIGKILL), None);
    }

    #[tokio::test(start_paused = true)]
    async fn max_runtime_stops_the_group_with_term_then_kill() {
        // The command ignores SIGTERM and would run for an hour; the lease is healthy.
        let mut group = FakeGroup::new(Some(Duration::from_secs(3600)));
        let lease = FakeLease::ending_in(Duration::from_secs(3600));
        let end = Instant::now() + Duration::from_secs(10);
        let outcome = supervised_with(&mut group, &lease, GRACE, Some(end)).await;
        assert!(matches!(outcome, Supervised::TimedOut(_)), "{outcome:?}");
        assert_eq!(group.first(Signal::SIGTERM), Some(Duration::from_secs(10)));
        assert_eq!(group.first(Signal::SIGKILL), Some(Duration::from_secs(13)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_that_ends_in_time_is_not_timed_out() {
        let mut group = FakeGroup::new(Some(Duration::from_secs(5)));
        let lease = FakeLease::ending_in(Duration::from_secs(3600));
        let (_sender, mut signals) = Signals::from_channel();
        let end = Instant::now() + Duration::from_secs(10);
        let outcome = supervise(
            &mut group,
            &lease,
            &mut signals,
            GRACE,
            "gs://b/o",
            Some(end),
            false,
        )
        .await;
        assert!(
            matches!(outcome.ended, Supervised::Exited(status) if status.success()),
            "{outcome:?}"
        );
        assert_eq!(outcome.forwarded, None);
        assert_eq!(group.sent(), Vec::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tiny_kill_grace_still_kills_at_the_deadline_not_a_tick_later() {
        // Looks come at 0, 100ms, 200ms: at 100ms 50ms are left, more than the 10ms
        // grace, and at 200ms the deadline has passed.
        let mut group = FakeGroup::new(None);
        let lease = FakeLease::ending_in(Duration::from_millis(150));
        let grace = Duration::from_millis(10);
        let outcome = supervised_with(&mut group, &lease, grace, None).await;
        assert!(matches!(outcome, Supervised::Stopped(_)), "{outcome:?}");
        assert_eq!(
            group.first(Signal::SIGKILL),
            Some(Duration::from_millis(150)),
            "{:?}",
            group.sent()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn signals_go_out_before_the_messages_about_them() {
        // A blocked stderr must not hold up a signal: each is sent before it is logged.
        for (lease_left, first) in [
            // Running out: SIGTERM first.
            (Duration::from_secs(2), Signal::SIGTERM),
            // Lost: SIGKILL at once.
            (Duration::ZERO, Signal::SIGKILL),
        ] {
            let mut group = FakeGroup::new(None);
            let journal = group.journal.clone();
            let _logging = log_into(&journal);
            let lease = FakeLease::ending_in(lease_left);
            let outcome = supervised(&mut group, &lease).await;
            assert!(matches!(outcome, Supervised::Stopped(_)), "{outcome:?}");
            let entries = journal.entries();
            let signal = entries
                .iter()
                .position(|entry| *entry == format!("sent {first}"))
                .expect("signal sent");
            let logged = entries
                .iter()
                .position(|entry| entry.starts_with("logged"))
                .expect("stop logged");
            assert!(signal < logged, "{entries:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_that_survives_sigkill_keeps_the_lock_from_release() {
        let mut group = FakeGroup::unkillable();
        let lease = FakeLease::ending_in(Duration::from_secs(7));
        let outcome = supervised(&mut group, &lease).await;
        assert!(matches!(outcome, Supervised::Survived(None)), "{outcome:?}");
        assert!(!outcome.may_release());
        assert_eq!(group.first(Signal::SIGKILL), Some(Duration::from_secs(7)));
    }

    /// Before, gcslock gave up on a group 5s after SIGKILL and let a healthy lease
    /// expire while the group could still write.
    #[tokio::test(start_paused = true)]
    async fn survivors_keep_the_lease_and_it_is_released_once_they_are_gone() {
        // Ignores SIGTERM; stuck from its SIGKILL (at 13s) until 40s.
        let start = Instant::now();
        let mut group = FakeGroup {
            survives_sigkill: true,
            stuck_until: Some(start + Duration::from_secs(40)),
            ..FakeGroup::new(None)
        };
        let journal = group.journal.clone();
        let _logging = log_into(&journal);
        let lease = FakeLease::ending_in(Duration::from_secs(3600));
        let end = start + Duration::from_secs(10);
        let outcome = supervised_with(&mut group, &lease, GRACE, Some(end)).await;
        assert!(matches!(outcome, Supervised::TimedOut(_)), "{outcome:?}");
        assert!(outcome.may_release());
        let over = start.elapsed();
        assert!(over >= Duration::from_secs(40), "{over:?}");
        assert!(over <= Duration::from_secs(40) + GROUP_POLL, "{over:?}");
        let kept: Vec<String> = journal
            .entries()
            .into_iter()
            .filter(|entry| entry.contains("the lease is kept"))
            .collect();
        assert_eq!(kept.len(), 1, "said once: {:?}", journal.entries());
        assert!(kept[0].starts_with("logged WARN"), "{kept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn survivors_that_outlive_the_lease_leave_it_to_expire() {
        let start = Instant::now();
        let mut group = FakeGroup::unkillable();
        // Refreshes stop working at 30s (nothing refreshes this fake lease).
        let lease = FakeLease::ending_in(Duration::from_secs(30));
        let end = start + Duration::from_secs(10);
        let outcome = supervised_with(&mut group, &lease, GRACE, Some(end)).await;
        assert!(matches!(outcome, Supervised::Survived(None)), "{outcome:?}");
        assert!(!outcome.may_release());
        let over = start.elapsed();
        assert!(over >= Duration::from_secs(30), "{over:?}");
        assert!(over <= Duration::from_secs(30) + GROUP_POLL, "{over:?}");
    }

    /// Before, a run whose command exited 0 on a forwarded SIGTERM looked like a
    /// success (and completed its --once-per slot).
    #[tokio::test(start_paused = true)]
    async fn the_first_forwarded_signal_is_reported() {
        let mut group = FakeGroup::new(Some(Duration::from_secs(10)));
        let lease = FakeLease::ending_in(Duration::from_secs(3600));
        let (sender, mut signals) = Signals::from_channel();
        sender.send(Signal::SIGTERM).unwrap();
        sender.send(Signal::SIGINT).unwrap();
        let outcome = supervise(
            &mut group,
            &lease,
            &mut signals,
            GRACE,
            "gs://b/o",
            None,
            false,
        )
        .await;
        assert!(
            matches!(outcome.ended, Supervised::Exited(status) if status.success()),
            "{outcome:?}"
        );
        assert_eq!(outcome.forwarded, Some(Signal::SIGTERM));
    }

    /// A group whose processes no signal ends, so it stays alive whatever its
    /// leader does.
    struct LingeringGroup {
        inner: FakeGroup,
        leader: Leader,
    }

    enum Leader {
        /// Exits as `inner` says, leaving processes behind.
        Leftovers,
        /// Its wait fails.
        Unwaitable,
    }

    impl Group for LingeringGroup {
        fn name(&self) -> &str {
            self.inner.name()
        }

        fn signal(&self, signal: Signal) {
            self.inner.signal(signal);
        }

        async fn wait(&mut self) -> io::Result<ExitStatus> {
            match self.leader {
                Leader::Leftovers => self.inner.wait().await,
                Leader::Unwaitable => Err(io::Error::other("no child")),
            }
        }

        fn alive(&self) -> bool {
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leftovers_that_survive_sigkill_keep_the_lock_from_release() {
        // The command exits at 10s.
        let mut group = LingeringGroup {
            inner: FakeGroup {
                survives_sigkill: true,
                ..FakeGroup::new(Some(Duration::from_secs(10)))
            },
            leader: Leader::Leftovers,
        };
        // Lost at 60s, with the leftovers still there.
        let lease = FakeLease::ending_in(Duration::from_secs(60));
        let outcome = supervised(&mut group, &lease).await;
        assert!(
            matches!(outcome, Supervised::Survived(Some(status)) if status.success()),
            "{outcome:?}"
        );
        assert!(!outcome.may_release());
        assert_eq!(
            group.inner.first(Signal::SIGKILL),
            Some(Duration::from_secs(13))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_wait_kills_and_watches_the_group_before_any_release() {
        let mut group = LingeringGroup {
            inner: FakeGroup::unkillable(),
            leader: Leader::Unwaitable,
        };
        let lease = FakeLease::ending_in(Duration::from_secs(60));
        let outcome = supervised(&mut group, &lease).await;
        assert!(matches!(outcome, Supervised::Survived(_)), "{outcome:?}");
        assert!(!outcome.may_release());
        assert_eq!(group.inner.first(Signal::SIGKILL), Some(Duration::ZERO));
    }
}
