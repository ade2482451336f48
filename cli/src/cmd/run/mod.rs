//! `gcslock run`: acquire, run the command inside a containment boundary, forward
//! signals, stop the boundary before the lease can run out, release on every way out.
//!
//! [`job::run_job`] is the one way to run a command under a held [`Guard`]: it takes
//! the guard (by reference), the command, the kill grace, `--max-runtime` and the
//! forwarded [`Signals`], and returns gcslock's exit code and whether the lock may
//! be released. `run` wraps it in acquire and release (of the lock, or of a
//! semaphore place with `--holders`); `elect` calls it once per term.
//!
//! `holders`: what `run` contends for (a lock or a semaphore place); `boundary`: what "the command and everything it started" is (cgroup, session or
//! process group; see docs/containment.md); `child`: starting the command in it;
//! `signals`: the signals gcslock forwards; `supervisor`: when to stop the boundary;
//! `watchdog`: the boundary dies with gcslock; `job`: all of it for one command.

mod boundary;
mod child;
mod clone_into;
mod holders;
pub mod job;
pub mod signals;
mod supervisor;
mod watchdog;

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

use clap::Args;
use gcslock::once_per::{CompletedSlot, PeriodGuard, Slot, SlotZone};
use gcslock::{Guard, Lock, LockOptions, Ttl, Wait};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use self::holders::Contender;
use self::job::{per_run_variables, run_job, Job, Ready};
use self::signals::Signals;
use crate::cmd::status::{StorageTimeout, STORAGE_TIMEOUT};
use crate::exit::{self, Coded};
use crate::global::GlobalArgs;
use crate::logging::OUTCOME;
use crate::output::{holder_summary, short_duration, timestamp};
use crate::parse::{parse_duration, parse_timezone, parse_ttl, parse_wait};
use crate::target::LockTarget;

pub const LONG_ABOUT: &str = "\
Run COMMAND while holding the lock gs://BUCKET/OBJECT; stop everything it started before
the lease can run out. Details: `man gcslock-run`, docs/command.md and docs/containment.md.";

/// Shown right after the usage line, in `-h` and `--help`.
pub const EXAMPLES: &str = "\
Examples:
  gcslock run gs://my-bucket/locks/backup -- /usr/local/bin/backup
  gcslock run --wait 10m --ttl 2m gs://my-bucket/locks/deploy -- ./deploy.sh
  */5 * * * * gcslock run --once-per 1h gs://my-bucket/locks/report -- report.sh";

/// The explanations behind `run`'s options, in the man page (`gcslock generate man`).
pub const MANUAL: &str = "\
The command inherits stdin, stdout and stderr, with GCSLOCK_TOKEN (the fencing token: larger
than every earlier holder's) and GCSLOCK_URL in its environment, and without the GCSLOCK_*
variables of this run's own options (wait, TTL, once-per, ...: docs/environment.md) or
GCSLOCK_BOUNDARY, so that a `gcslock run` inside the command is configured by its own. Connection and output settings (GCSLOCK_ENDPOINT,
GCSLOCK_STORAGE_TIMEOUT, GCSLOCK_LOG_FORMAT, GCSLOCK_QUIET) stay. The lock URL is never read
from the environment. gcslock's own messages go to stderr only, through a queue: when stderr
is not drained, its lines are dropped (and counted once it flows again) rather than delay a
refresh or a signal.

Everything the command starts is kept in a boundary: its own cgroup v2 where gcslock can
create one (Linux with a writable cgroup v2; under systemd only in a unit with
Delegate=yes), which no process can leave; else its own session, which processes that change
their process group (timeout, set -m) stay in but processes that call setsid (daemons, sudo
with use_pty, docker run containers) leave. GCSLOCK_BOUNDARY=cgroup|session|group forces one;
a forced boundary that is not available is an error (exit 126, the command is not started).
`gcslock -v run` names the boundary in force.

Signals INT, TERM, HUP and QUIT sent to gcslock are forwarded to every process of the boundary;
a run during which one was forwarded exits 128+N (N: the first one) whatever the command's
code, and is never recorded as a completed --once-per period. While gcslock is still waiting
for the lock they abort the wait instead (exit 128+N).

The command never outlives the lease. gcslock's own lease deadline (TTL minus the safety
margin after the last refresh was sent) comes at least two safety margins before any other
client may take the lock over. If the lease is not refreshed and no more than --kill-grace
is left before that deadline, the boundary gets SIGTERM, and SIGKILL at the deadline at the
latest. If the lock was broken or taken over, someone else may already run, and the boundary
gets SIGKILL at once; likewise when gcslock wakes from a system suspend after the lease ran
out. Either way gcslock exits 76 (also when the loss is found only as the command exits).
Processes the command leaves behind are stopped the same way once it exits, and the lock is
released only once nothing of the boundary runs. Processes that survive SIGKILL (stuck in
uninterruptible sleep) keep the lease refreshed while it is valid; if it is lost first, the
lock is left to expire by its TTL, as their writes may still land (exit 76).

Ctrl-Z (SIGTSTP) and SIGTTIN are ignored with a warning: a stopped gcslock could neither
refresh the lease nor stop the command. SIGTTOU is ignored, so that a background gcslock
writing to a `stty tostop` terminal does not hang; the command gets the default back.

A healthy lease has as little as TTL - margin - refresh interval left just before each refresh,
so --kill-grace may be at most half of that (TTL 5m: about 1m56s; TTL 10s: about 3.9s); a longer one
is refused (exit 64). The default is 10s or that limit, whichever is shorter.

If gcslock itself dies (even of SIGKILL), the command dies too: the kernel kills the command
(parent-death signal), and a watchdog that gcslock forks before starting the command (no
second program start) kills the whole boundary and removes its cgroup.

Once per period (--once-per PERIOD, e.g. `*/5 * * * * gcslock run --once-per 1h URL -- job`:
hourly, retried every five minutes until one machine succeeds): periods follow the calendar of
the local time zone as cron sees it (TZ, else the system zone; --timezone to name one), and the
run belongs to the period its wall clock is in when gcslock starts: a local calendar day for 1d
(23 or 25 hours at a daylight-saving change), a part of the local day for a shorter period
(which must divide 24h evenly), local days counted from 1970-01-01 for several days. The
command starts only if the lock records no completed run of that period (or a later one) of
this PERIOD and zone, and the lock is free. When the command exits 0 with the lease valid to
the end and no signal forwarded, the release records the period as completed, in the same
conditional write; no extra request is made. When it fails (non-zero exit, signal, lost lease,
--max-runtime), the period stays open: another machine waiting with --wait, or a later cron
tick, runs it. A run whose period is already completed does not start the command and exits 0
(--done-exit-code), with one line on stderr saying when it completed (server clock) and by
whom. A completion of another period or zone, or of a period that starts more than 5 minutes
after the storage server's clock (a machine whose clock is fast), does not count: the command
runs, with a warning.

--max-runtime DURATION (more than zero): once the command has run that long, its boundary gets
SIGTERM, and SIGKILL after --kill-grace; gcslock releases the lock and exits 124.

--ttl forever: the lease never expires by time and no waiter ever takes it over; only
`gcslock break --now` frees the lock (a crashed holder's lock stays until then). The holder still
refreshes (every minute by default) so that `gcslock status` shows when it was last heard from,
and keeps its lease while refreshes fail. Older gcslock versions see such a lock as
\"not a gcslock lock\" and never touch it.

At most N at once (--holders N, 2 to 1000): up to N commands hold URL at the same time, across
all machines, each on a place of its own (place 0 is the object URL itself, place K the object
URL/place-K), with every guarantee above per place; the command also gets GCSLOCK_PLACE (its
place; 0 for the plain lock) and GCSLOCK_TOKEN (that place's fencing token). With all N places
held, a run is busy (exit 75) or waits with --wait, polling by listing without writing. Every
contender of URL must give the same N: one that meets a live holder with another N exits 79
without running the command (to change N, stop every holder, or `gcslock break` their places,
first). --once-per with --holders above 1 is refused (exit 64). --holders 1 (the default) is the
plain lock.

Every option can also be set by an environment variable (shown with each option; the option
wins), as cron and systemd units like to configure things.

The command is not in the terminal's foreground process group: it can write to a terminal
but not read from one (it would be stopped by SIGTTIN); in the session boundary it has no
controlling terminal and can read the terminal it inherited.";

#[derive(Debug, Args)]
#[command(mut_arg(STORAGE_TIMEOUT, |arg| arg.help(
    "How long storage may fail before gcslock gives up (exit 69), and the longest request; \
     --wait extends the retries"
)))]
pub struct RunArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// How long to wait for a lock someone else holds: a duration (30s, 5m, 1h30m) or
    /// `forever`. Default: a single attempt
    #[arg(short, long, env = "GCSLOCK_WAIT", value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Wait>,

    /// How long the lease lasts without a refresh (1s to 7d), or `forever`: never
    /// stale, only `gcslock break --now` frees it
    #[arg(
        long,
        env = "GCSLOCK_TTL",
        value_name = "DURATION",
        value_parser = parse_ttl,
        default_value = "5m"
    )]
    pub ttl: Ttl,

    /// Run at most once per PERIOD of the local calendar (10m, 1h, 1d, 7d: dividing 24h
    /// evenly, or whole days up to 366d); a failed run leaves the period to a retry
    #[arg(long, env = "GCSLOCK_ONCE_PER", value_name = "PERIOD", value_parser = parse_duration)]
    pub once_per: Option<Duration>,

    /// Zone of --once-per's calendar: IANA name (Europe/Paris) or UTC. Default: TZ,
    /// else the system zone
    #[arg(long, env = "GCSLOCK_TIMEZONE", value_name = "ZONE", value_parser = parse_timezone)]
    pub timezone: Option<SlotZone>,

    /// Exit code when --once-per finds this period's slot already completed
    #[arg(
        long,
        env = "GCSLOCK_DONE_EXIT_CODE",
        value_name = "CODE",
        default_value_t = 0
    )]
    pub done_exit_code: u8,

    /// Stop the command after this long (SIGTERM, SIGKILL after --kill-grace): exit 124
    #[arg(long, env = "GCSLOCK_MAX_RUNTIME", value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,

    /// How often the lease is refreshed. Default: TTL/8 (1m for --ttl forever)
    #[arg(long, env = "GCSLOCK_REFRESH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_interval: Option<Duration>,

    /// Holder name recorded in the lock. Default: HOST:PID
    #[arg(long, env = "GCSLOCK_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,

    /// Time between SIGTERM and SIGKILL when the lease runs out: at most (TTL -
    /// margin - refresh interval) / 2. Default: 10s or that limit if shorter
    #[arg(long, env = "GCSLOCK_KILL_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub kill_grace: Option<Duration>,

    /// Up to N holders at once, across machines (1 to 1000); every contender gives the
    /// same N
    #[arg(
        long,
        env = "GCSLOCK_HOLDERS",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(gcslock::semaphore::MAX_HOLDERS))
    )]
    pub holders: u32,

    /// Exit code when the lock is busy
    #[arg(long, env = "GCSLOCK_BUSY_EXIT_CODE", value_name = "CODE", default_value_t = exit::BUSY)]
    pub busy_exit_code: u8,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,

    #[command(flatten)]
    pub command: CommandArgs,
}

/// The command `run` and `elect` run under the lock, after `--`.
#[derive(Debug, Args)]
pub struct CommandArgs {
    /// The command to run, after `--`
    #[arg(
        id = "command",
        value_name = "COMMAND",
        last = true,
        required = true,
        num_args = 1..,
        value_parser = clap::value_parser!(OsString)
    )]
    pub argv: Vec<OsString>,
}

/// The longest gcslock spends releasing the lock before it exits anyway (the lock
/// then expires after its TTL).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The kill grace when none is given, if the lease leaves room for it.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// The longest kill grace a lease leaves room for: half of the least time a healthy
/// lease has left (just before a refresh), so that a stop never starts while the
/// lease is fine, and the other half absorbs a slow refresh.
pub fn max_kill_grace(ttl: Duration, margin: Duration, refresh_interval: Duration) -> Duration {
    ttl.saturating_sub(margin).saturating_sub(refresh_interval) / 2
}

/// The kill grace to use: the one asked for, refused above the limit, or the default.
fn kill_grace(requested: Option<Duration>, lock: &Lock) -> Result<Duration, Coded> {
    // A forever lease never runs out: the grace only serves --max-runtime and leftovers.
    let Ttl::Finite(ttl) = lock.ttl() else {
        return Ok(requested.unwrap_or(DEFAULT_KILL_GRACE));
    };
    let (margin, interval) = (lock.safety_margin(), lock.refresh_interval());
    let limit = max_kill_grace(ttl, margin, interval);
    match requested {
        None => Ok(DEFAULT_KILL_GRACE.min(limit)),
        Some(grace) if grace <= limit => Ok(grace),
        Some(grace) => Err(Coded::new(
            exit::USAGE,
            format!(
                "--kill-grace (GCSLOCK_KILL_GRACE) {} is too long for --ttl {}: at most {} ((TTL {} - safety margin \
                 {} - refresh interval {}) / 2), so that the command is killed before the lease \
                 can run out; shorten --kill-grace or lengthen --ttl",
                short_duration(grace),
                short_duration(ttl),
                short_duration(limit),
                short_duration(ttl),
                short_duration(margin),
                short_duration(interval)
            ),
        )),
    }
}

pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<u8> {
    // Catch signals before anything can take time, so none is lost or kills us.
    let mut signals = Signals::install()?;
    // The slot is named by the wall clock at start, the clock that made cron fire,
    // in the calendar of the zone cron fires by.
    let slot = args
        .once_per
        .map(|period| {
            let zone = args.timezone.map_or_else(SlotZone::local, Ok)?;
            Slot::containing_in(SystemTime::now(), period, zone)
        })
        .transpose()?;
    let backend = args.url.backend(global)?;
    // Made ready first: the acquiring write records it, and a boundary that cannot
    // be had fails before the lock is touched.
    let ready = Ready::requested()?;
    let options = match args.ttl {
        Ttl::Finite(ttl) => LockOptions::default().ttl(ttl),
        _ => LockOptions::default().ttl(Ttl::Forever),
    };
    let mut options = options.unavailable_timeout(args.storage_timeout.duration);
    if let Some(kind) = ready.kind() {
        options = options.boundary(kind.name());
    }
    if let Some(interval) = args.refresh_interval {
        options = options.refresh_interval(interval);
    }
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let contender = Contender::new(
        backend,
        args.url.object(),
        options,
        args.holders,
        args.once_per,
    )?;
    let kill_grace = kill_grace(args.kill_grace, contender.lock())?;
    check_max_runtime(args.max_runtime, tokio::time::Instant::now())?;
    let url = args.url.to_string();

    let (acquired, interrupted) = acquire(
        &contender,
        slot,
        args.wait.unwrap_or(Wait::No),
        &mut signals,
        &url,
    )
    .await;
    let guard = match (acquired, interrupted) {
        (Ok(Acquired::Held(guard)), None) => guard,
        (Ok(Acquired::Held(guard)), Some(signal)) => {
            tracing::info!("{url}: acquired just as {signal} arrived; releasing it");
            release(guard, &url, false).await;
            return Ok(exit::signal(signal as i32));
        }
        (Ok(Acquired::Done(done)), None) => {
            tracing::warn!(target: OUTCOME, "{url}: {}; not running the command", done_line(slot, &done));
            return Ok(args.done_exit_code);
        }
        (Ok(Acquired::Done(_)), Some(signal)) => {
            return Ok(exit::signal(signal as i32));
        }
        (Err(gcslock::Error::Cancelled { .. }), Some(signal)) => {
            tracing::info!("{url}: stopped waiting for the lock on {signal}");
            return Ok(exit::signal(signal as i32));
        }
        (Err(gcslock::Error::Busy { holder, .. }), None) => {
            tracing::Span::current().record("holder", holder.identity.as_str());
            tracing::warn!(target: OUTCOME, "{url} is busy: {}", holder_summary(&holder));
            return Ok(args.busy_exit_code);
        }
        (Err(error), Some(signal)) => {
            tracing::info!("{url}: {error} (after {signal})");
            return Ok(exit::signal(signal as i32));
        }
        (Err(error), None) => return Err(error.into()),
    };
    let span = tracing::Span::current();
    span.record("holder", guard.identity());
    span.record("token", guard.token().value());
    let remove_from_environment =
        per_run_variables(&RunArgs::augment_args(clap::Command::new("run")));
    let job = Job {
        command: &args.command.argv,
        url: &url,
        place: contender.place_of(&guard),
        kill_grace,
        max_runtime: args.max_runtime,
        remove_from_environment: &remove_from_environment,
        log_format: global.log_format,
        bound_forwarded: false,
    };
    let end = run_job(&guard, &job, ready, &mut signals).await;
    // Exit 0 means the command succeeded with the lease valid to the end, and no
    // signal was forwarded to it.
    let completed = slot.is_some() && matches!(end.code, Ok(0));
    if end.may_release {
        if let Some(reason) = release(guard, &url, completed).await {
            // Nobody noticed before the command ended: a break or takeover that came
            // between two refreshes. The command may have run without the lock.
            if !matches!(end.code, Ok(exit::LEASE_LOST)) {
                tracing::error!(
                    target: OUTCOME,
                    "lease on {url} was lost before the command's end could be released \
                     ({reason}); the command may have run without the lock"
                );
                return Ok(exit::LEASE_LOST);
            }
        }
    } else {
        tracing::error!(
            "{url}: not released, as the command's processes may still write; the lock expires \
             after its TTL"
        );
        guard.abandon();
    }
    end.code
}

/// `run`'s --kill-grace rule, for `elect`, which runs its command through the same
/// [`run_job`].
pub(crate) fn job_kill_grace(requested: Option<Duration>, lock: &Lock) -> Result<Duration, Coded> {
    kill_grace(requested, lock)
}

/// Refuses a --max-runtime of zero (it would stop the command at once) and one
/// past the end of the clock (it would never come).
fn check_max_runtime(
    max_runtime: Option<Duration>,
    now: tokio::time::Instant,
) -> Result<(), Coded> {
    let Some(limit) = max_runtime else {
        return Ok(());
    };
    if limit.is_zero() {
        return Err(Coded::new(
            exit::USAGE,
            "--max-runtime (GCSLOCK_MAX_RUNTIME) must be more than zero; leave it out for no limit",
        ));
    }
    if now.checked_add(limit).is_none() {
        return Err(Coded::new(
            exit::USAGE,
            format!(
                "--max-runtime (GCSLOCK_MAX_RUNTIME) {} is beyond the end of this machine's \
                 clock; leave it out for no limit",
                short_duration(limit)
            ),
        ));
    }
    Ok(())
}

/// "the 1d slot starting 2026-03-08T00:00:00-05:00 (America/New_York) is already
/// done: completed ... by ...", naming the later slot that was completed if it is
/// not ours.
fn done_line(ours: Option<Slot>, done: &CompletedSlot) -> String {
    let start = |slot: &Slot| {
        slot.local_start()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let which = match ours {
        Some(ours) if ours != done.slot => format!(
            "{ours} is already done: the later slot starting {} was",
            start(&done.slot)
        ),
        _ => format!("{} is already done:", done.slot),
    };
    // Log lines are escaped whole when printed (`logging`).
    format!(
        "{which} completed {} by {}",
        timestamp(&done.completed_at),
        done.completed_by
    )
}

/// The lock as `run` holds it: with a --once-per period or without.
#[derive(Debug)]
enum Held {
    Plain(Guard),
    Period(PeriodGuard),
}

impl std::ops::Deref for Held {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        match self {
            Self::Plain(guard) => guard,
            Self::Period(guard) => guard,
        }
    }
}

impl Held {
    /// Lets the lock expire by its TTL, writing nothing.
    fn abandon(self) {
        match self {
            Self::Plain(guard) => guard.abandon(),
            Self::Period(guard) => guard.abandon(),
        }
    }
}

/// What an acquire for `run` ended with.
enum Acquired {
    Held(Held),
    Done(CompletedSlot),
}

/// Acquires the lock; the forwarded signals cancel the wait cleanly (the library
/// honours cancellation only where no lock can be left behind). Returns the
/// outcome and the signal that interrupted the wait, if any.
///
/// A first attempt does not wait, so that a wait is announced (at info level) only
/// when the lock is actually busy.
async fn acquire(
    lock: &Contender,
    slot: Option<Slot>,
    wait: Wait,
    signals: &mut Signals,
    url: &str,
) -> (Result<Acquired, gcslock::Error>, Option<Signal>) {
    let cancel = CancellationToken::new();
    let mut interrupted = None;
    let first = cancellable(lock, slot, Wait::No, &cancel, signals, &mut interrupted).await;
    if wait == Wait::No || interrupted.is_some() {
        return (first, interrupted);
    }
    let how_long = match wait {
        Wait::For(limit) => format!("up to {}", short_duration(limit)),
        _ => "until it is free".to_owned(),
    };
    let result = match first {
        Err(gcslock::Error::Busy { holder, .. }) => {
            tracing::info!(
                "{url} is busy: {}; waiting {how_long}",
                holder_summary(&holder)
            );
            cancellable(lock, slot, wait, &cancel, signals, &mut interrupted).await
        }
        // --wait also covers an outage.
        Err(error @ gcslock::Error::Unavailable { .. }) => {
            tracing::warn!("{error}; still trying {how_long}");
            cancellable(lock, slot, wait, &cancel, signals, &mut interrupted).await
        }
        other => other,
    };
    (result, interrupted)
}

async fn cancellable(
    lock: &Contender,
    slot: Option<Slot>,
    wait: Wait,
    cancel: &CancellationToken,
    signals: &mut Signals,
    interrupted: &mut Option<Signal>,
) -> Result<Acquired, gcslock::Error> {
    let acquire = lock.acquire(slot, wait, cancel);
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

/// Releases the lock, bounded in time; failures are reported, not fatal: an
/// unreleased lock expires after its TTL. With `completed`, the release also
/// records the guard's --once-per slot as completed. Returns the loss the release
/// found instead, if the lease was no longer ours.
async fn release(guard: Held, url: &str, completed: bool) -> Option<gcslock::LossReason> {
    let released = async {
        match guard {
            Held::Period(guard) if completed => guard.release_completed().await,
            Held::Period(guard) => guard.release().await,
            Held::Plain(guard) => guard.release().await,
        }
    };
    match tokio::time::timeout(RELEASE_TIMEOUT, released).await {
        Ok(Ok(())) if completed => {
            tracing::debug!("{url}: released; the slot is recorded as completed")
        }
        Ok(Ok(())) => tracing::debug!("{url}: released"),
        Ok(Err(gcslock::Error::LeaseLost { reason, .. })) => {
            tracing::debug!("{url}: nothing to release: {reason}");
            return Some(reason);
        }
        Ok(Err(error)) if completed => tracing::warn!(
            "{url}: the command succeeded, but its slot could not be recorded as completed \
             ({error}); another run may repeat it"
        ),
        Ok(Err(error)) => {
            tracing::warn!("could not release {url}: {error}; it stays locked until its TTL passes")
        }
        Err(_) => tracing::warn!(
            "could not release {url} within {}; it stays locked until its TTL passes",
            short_duration(RELEASE_TIMEOUT)
        ),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_grace_fits_between_refreshes() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // The defaults for TTL 5m: margin 30s, refresh every 37.5s.
        assert_eq!(max_kill_grace(s(300), s(30), ms(37_500)), ms(116_250));
        // TTL 10s: margin 1s, refresh every 1.25s.
        assert_eq!(max_kill_grace(s(10), s(1), ms(1250)), ms(3875));
        assert_eq!(max_kill_grace(s(1), s(2), s(1)), Duration::ZERO);
    }
}
