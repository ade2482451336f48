//! One command under a held lock, from the last checks before it starts to the end
//! of everything it started: [`run_job`], shared by every subcommand that runs a
//! command under a lease (`run`, and the leader and semaphore modes built on it).

use std::ffi::OsString;
use std::time::Duration;

use gcslock::Guard;
use nix::sys::signal::Signal;

use super::boundary::{self, Prepared};
use super::child::{self, describe_status, exit_code, Environment};
use super::signals::Signals;
use super::supervisor::{supervise, Group, Supervised, Supervision};
use super::watchdog::Watchdog;
use crate::exit::{self, Coded};
use crate::global::LogFormat;
use crate::logging::OUTCOME;
use crate::output::short_duration;

/// What to run and how to stop it.
pub struct Job<'a> {
    pub command: &'a [OsString],
    /// The lock's URL, for messages and the command's `GCSLOCK_URL`.
    pub url: &'a str,
    /// The semaphore place held (`--holders`), for the command's `GCSLOCK_PLACE`.
    pub place: u32,
    pub kill_grace: Duration,
    pub max_runtime: Option<Duration>,
    /// Variables removed from the command's environment (see `per_run_variables`).
    pub remove_from_environment: &'a [String],
    /// For the watchdog's one message.
    pub log_format: LogFormat,
    /// Kill the command if it still runs a kill grace after a forwarded signal
    /// (`elect`); `run` waits for it as long as the lease lasts.
    pub bound_forwarded: bool,
}

/// The command's boundary, made ready before the lock is taken so that the
/// acquiring write can record which one holds the command (`status` shows it),
/// and so that a boundary that cannot be had fails before the lock is touched.
/// One that is never used removes itself.
pub struct Ready {
    prepared: Option<Prepared>,
    /// Why no stronger boundary was available, if one was not.
    weaker: Option<String>,
}

/// The kind of `elect`'s first boundary, and why no stronger one was available.
#[derive(Clone, Debug)]
pub struct FirstBoundary {
    pub kind: boundary::Kind,
    weaker: Option<String>,
}

impl Ready {
    /// The boundary asked for (`GCSLOCK_BOUNDARY`), or the strongest available.
    pub fn new(requested: Option<boundary::Kind>) -> Result<Self, Coded> {
        let (prepared, weaker) = Prepared::new(requested)?;
        Ok(Self {
            prepared: Some(prepared),
            weaker,
        })
    }

    /// The boundary `GCSLOCK_BOUNDARY` asks for, or the strongest available.
    pub fn requested() -> Result<Self, Coded> {
        Self::new(boundary::requested()?)
    }

    /// A boundary of the same kind as `first`'s, for `elect`'s later terms (the
    /// lock records one kind), announced for the same reason.
    pub fn again(first: &FirstBoundary) -> Result<Self, Coded> {
        Ok(Self {
            prepared: Some(Prepared::again(first.kind)?),
            weaker: first.weaker.clone(),
        })
    }

    /// What later terms need to know of this, the first term's, boundary.
    pub fn first(&self) -> Option<FirstBoundary> {
        Some(FirstBoundary {
            kind: self.kind()?,
            weaker: self.weaker.clone(),
        })
    }

    /// The boundary's kind, as the lock records it.
    pub fn kind(&self) -> Option<boundary::Kind> {
        self.prepared.as_ref().map(Prepared::kind)
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(Prepared::Cgroup(cgroup)) = &self.prepared {
            let _ = cgroup.remove();
        }
    }
}

/// How a job ended.
#[derive(Debug)]
pub struct JobEnd {
    /// gcslock's exit code: 0 only if the command exited 0 with the lease valid to
    /// the end and no signal forwarded to it (the run may count as done); the
    /// command's code if it failed; 76 lease lost, 124 --max-runtime, 128+N after
    /// forwarding signal N.
    pub code: anyhow::Result<u8>,
    /// Whether the lock may be released: not while processes of the job may still
    /// write (they survived SIGKILL and the lease was lost).
    pub may_release: bool,
}

/// Runs `job` under `guard`: starts the command in its boundary, forwards
/// `signals`, stops it as the lease and `--max-runtime` require, and returns once
/// nothing of it runs (or once the lease is lost with survivors).
pub async fn run_job(
    guard: &Guard,
    job: &Job<'_>,
    mut ready: Ready,
    signals: &mut Signals,
) -> JobEnd {
    let end = |code: u8| JobEnd {
        code: Ok(code),
        may_release: true,
    };
    let url = job.url;
    if let Some(signal) = signals.try_recv() {
        tracing::info!("{url}: {signal} arrived before the command started; releasing the lock");
        return end(exit::signal(signal as i32));
    }
    let Some(prepared) = ready.prepared.take() else {
        tracing::error!("{url}: the command's boundary was used up; the command was not started");
        return end(exit::INTERNAL);
    };
    let watchdog = match Watchdog::start(&prepared, job.log_format) {
        Ok(watchdog) => watchdog,
        Err(error) => {
            tracing::error!("{error}; the command was not started");
            ready.prepared = Some(prepared);
            return end(error.code);
        }
    };
    // A final validity check right before the command starts: gcslock may have been
    // suspended since the lock was acquired, and the lock may be someone else's now.
    if let Err(reason) = guard.check() {
        tracing::error!(
            "lease on {} lost: {reason}; the command was not started",
            guard.url()
        );
        ready.prepared = Some(prepared);
        watchdog.done();
        return end(exit::LEASE_LOST);
    }
    let environment = Environment {
        token: guard.token().value(),
        place: job.place,
        url,
        remove: job.remove_from_environment,
    };
    let mut group = match child::spawn(job.command, &environment, prepared, watchdog.pipe_fd()) {
        Ok(group) => group,
        Err(error) => {
            tracing::error!("{error}");
            watchdog.done();
            return end(error.code);
        }
    };
    announce_boundary(url, &group, ready.weaker.as_deref());
    tracing::info!(
        token = guard.token().value(),
        pid = group.pid().as_raw(),
        "{url}: command started"
    );
    let started = tokio::time::Instant::now();
    // Past the end of the clock (refused up front) means no limit.
    let max_runtime_end = job.max_runtime.and_then(|limit| started.checked_add(limit));
    let supervision = supervise(
        &mut group,
        guard,
        signals,
        job.kill_grace,
        url,
        max_runtime_end,
        job.bound_forwarded,
    )
    .await;
    // Disarmed only once nothing of the boundary runs, so that a session or process
    // group id reused later is never signalled; otherwise the watchdog takes over.
    if group.alive() {
        drop(watchdog);
    } else {
        group.remove();
        watchdog.done();
    }
    let may_release = supervision.ended.may_release();
    JobEnd {
        code: code_of(supervision, guard, url, job.max_runtime),
        may_release,
    }
}

/// The one line (at -v) that says what the command is confined to.
fn announce_boundary(url: &str, group: &boundary::Boundary, weaker: Option<&str>) {
    let name = group.name();
    match (group.kind(), weaker) {
        (boundary::Kind::Cgroup, _) => {
            tracing::info!("{url}: the command runs in {name}; nothing it starts can leave it")
        }
        (kind, Some(reason)) => tracing::info!(
            "{url}: the command runs in its own {name} (boundary {}: no cgroup, as {reason}); \
             processes that call setsid leave it",
            kind.name()
        ),
        (kind, None) => tracing::info!(
            "{url}: the command runs in its own {name} (boundary {} as {}={0}); processes that \
             leave it are neither stopped nor waited for",
            kind.name(),
            boundary::VARIABLE
        ),
    }
}

/// The exit code of a supervision that ended this way.
fn code_of(
    supervision: Supervision,
    guard: &Guard,
    url: &str,
    max_runtime: Option<Duration>,
) -> anyhow::Result<u8> {
    let Supervision { ended, forwarded } = supervision;
    // A forwarded signal ends the run as terminated, whatever the command made of it
    // (a lost lease still says more).
    let terminated = |ended_with: String| {
        forwarded.map(|signal: Signal| {
            tracing::info!(
                "{url}: the command ended with {ended_with} after gcslock forwarded {signal}; \
                 the run counts as terminated by {signal}"
            );
            exit::signal(signal as i32)
        })
    };
    match ended {
        Supervised::Survived(status) => {
            let ended = status
                .map(|status| {
                    format!(
                        " (the command itself ended with {})",
                        describe_status(status)
                    )
                })
                .unwrap_or_default();
            tracing::error!("{url}: processes of the command survived SIGKILL{ended}");
            if guard.check().is_err() {
                Ok(exit::LEASE_LOST)
            } else {
                Ok(exit::INTERNAL)
            }
        }
        Supervised::Stopped(status) => {
            if let Some(status) = status {
                tracing::info!("{url}: the command ended with {}", describe_status(status));
            }
            Ok(exit::LEASE_LOST)
        }
        Supervised::TimedOut(status) => {
            let ended = status
                .map(|status| format!("; it ended with {}", describe_status(status)))
                .unwrap_or_default();
            tracing::error!(
                target: OUTCOME,
                "{url}: the command ran longer than --max-runtime {} and was stopped{ended}",
                short_duration(max_runtime.unwrap_or_default())
            );
            Ok(terminated("the stop".to_owned()).unwrap_or(exit::TIMED_OUT))
        }
        Supervised::Killed(status) => {
            if let Some(status) = status {
                tracing::info!("{url}: the command ended with {}", describe_status(status));
            }
            Ok(terminated("SIGKILL".to_owned()).unwrap_or(exit::signal(Signal::SIGKILL as i32)))
        }
        Supervised::WaitFailed(error) => Err(Coded::new(
            exit::INTERNAL,
            format!("cannot wait for the command: {error}"),
        )
        .into()),
        Supervised::Exited(status) => {
            tracing::debug!("{url}: the command ended with {}", describe_status(status));
            if let Err(reason) = guard.check() {
                tracing::error!(
                    "lease on {} lost: {reason} before the command finished (it exited with {})",
                    guard.url(),
                    describe_status(status)
                );
                return Ok(exit::LEASE_LOST);
            }
            Ok(terminated(describe_status(status)).unwrap_or_else(|| exit_code(status)))
        }
    }
}

/// The variables that configure one `gcslock run` (from clap's definitions, so that
/// new options are covered), less the connection and output settings that a nested
/// run should share, plus `GCSLOCK_BOUNDARY`: removed from the command's environment
/// so that a nested `gcslock run` of another lock is not configured by ours.
pub fn per_run_variables(arguments: &clap::Command) -> Vec<String> {
    const SHARED: [&str; 1] = ["GCSLOCK_STORAGE_TIMEOUT"];
    arguments
        .get_arguments()
        .filter(|argument| !argument.is_global_set())
        .filter_map(|argument| argument.get_env())
        .filter_map(|name| name.to_str())
        .filter(|name| !SHARED.contains(name))
        .map(str::to_owned)
        .chain(std::iter::once(boundary::VARIABLE.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Args as _;

    use super::*;
    use crate::cmd::run::RunArgs;

    #[test]
    fn per_run_variables_come_from_the_run_options_and_spare_connection_settings() {
        let variables = per_run_variables(&RunArgs::augment_args(clap::Command::new("run")));
        for configures_one_run in [
            "GCSLOCK_WAIT",
            "GCSLOCK_TTL",
            "GCSLOCK_ONCE_PER",
            "GCSLOCK_DONE_EXIT_CODE",
            "GCSLOCK_MAX_RUNTIME",
            "GCSLOCK_REFRESH_INTERVAL",
            "GCSLOCK_IDENTITY",
            "GCSLOCK_KILL_GRACE",
            "GCSLOCK_BUSY_EXIT_CODE",
            "GCSLOCK_BOUNDARY",
        ] {
            assert!(
                variables.iter().any(|name| name == configures_one_run),
                "{configures_one_run}: {variables:?}"
            );
        }
        for shared in [
            "GCSLOCK_STORAGE_TIMEOUT",
            "GCSLOCK_ENDPOINT",
            "GCSLOCK_QUIET",
            "GCSLOCK_LOG_FORMAT",
        ] {
            assert!(!variables.iter().any(|name| name == shared), "{shared}");
        }
    }
}
