//! `gcslock elect`: campaign for leadership, run the command while leading (under
//! `run`'s supervision), and campaign again whenever a term ends, until stopped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use gcslock::election::{Election, Leadership};
use gcslock::{Lock, LockOptions};
use nix::sys::signal::Signal;
use tokio::signal::unix::SignalKind;
use tokio_util::sync::CancellationToken;

use super::run::job::{per_run_variables, run_job, Job, Ready};
use super::run::signals::Signals;
use super::run::{job_kill_grace, CommandArgs};
use crate::cmd::status::{StorageTimeout, STORAGE_TIMEOUT};
use crate::exit::{self, Coded};
use crate::global::GlobalArgs;
use crate::logging::OUTCOME;
use crate::output::short_duration;
use crate::parse::parse_duration;
use crate::target::LockTarget;

pub const LONG_ABOUT: &str = "\
Campaign for leadership of gs://BUCKET/OBJECT and run COMMAND while leading; one of many
machines runs it at a time, and another takes over when it stops.

gcslock is a candidate: it reads the lock once a second (jittered, reads only) while another
leader is alive, and takes the lock when it is free, released, or stale by the server's clock.
While it leads, COMMAND runs exactly as under `gcslock run` (in its own cgroup, GCSLOCK_TOKEN and
GCSLOCK_URL in its environment, stopped before the lease can run out, killed at once if the lock
is broken or taken over, and with gcslock if gcslock dies). Each term has its own fencing token,
larger than every earlier term's. --value is published in the lock for `gcslock observe` and
`gcslock status` (at most 1024 bytes, no control characters).

When a term ends, gcslock stays a candidate and campaigns again: when COMMAND exits by itself
(any exit code) gcslock resigns at once (another waiting candidate takes over within about a
second) and waits two poll intervals before campaigning, so that the other candidate wins;
when leadership is lost, COMMAND is stopped and gcslock campaigns again.

SIGTERM, SIGINT, SIGHUP or SIGQUIT: forwarded to COMMAND while it runs; gcslock waits for it
at most --kill-grace (then SIGKILL), resigns at once, and exits 128+N. While
campaigning, they stop the campaign and gcslock exits 128+N at once.

A crashed leader's term ends when its lease is stale: after TTL plus a tenth of it (the safety
margin) plus one poll. Choose --ttl accordingly (default 30s: about 34 s).";

#[derive(Debug, Args)]
#[command(
    mut_arg(STORAGE_TIMEOUT, |arg| arg.help(
        "How long a single storage operation keeps retrying transient failures; a campaign \
         itself retries for as long as it waits"
    )),
    mut_arg("command", |arg| arg.help("The command to run while leading, after `--`"))
)]
pub struct ElectArgs {
    /// The election's lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// How long a term lasts without a refresh (1s to 7d): a crashed leader is
    /// replaced after about TTL + TTL/10 + 1s
    #[arg(
        long,
        env = "GCSLOCK_TTL",
        value_name = "DURATION",
        value_parser = parse_duration,
        default_value = "30s"
    )]
    pub ttl: Duration,

    /// The value published while leading (an address, say), shown by `observe` and `status`
    #[arg(long, env = "GCSLOCK_VALUE", value_name = "TEXT", default_value = "")]
    pub value: String,

    /// Candidate name recorded in the lock. Default: HOST:PID
    #[arg(long, env = "GCSLOCK_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,

    /// How often the lease is refreshed. Default: TTL/8
    #[arg(long, env = "GCSLOCK_REFRESH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_interval: Option<Duration>,

    /// Time between SIGTERM and SIGKILL when the command must stop (as for `run`)
    #[arg(long, env = "GCSLOCK_KILL_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub kill_grace: Option<Duration>,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,

    #[command(flatten)]
    pub command: CommandArgs,
}

/// The longest gcslock spends resigning before it moves on (the lock then expires).
const RESIGN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn elect(global: &GlobalArgs, args: ElectArgs) -> anyhow::Result<u8> {
    // Both catch the same signals: `signals` forwards them to the command, `stop`
    // remembers that gcslock itself must stop once the command is over.
    let mut signals = Signals::install()?;
    let stop = Stop::install()?;
    let backend = args.url.backend(global)?;
    // Each term gets a boundary of its own, made ready before it campaigns (see
    // `Ready`); every term's is of the kind the first one found, which the lock records.
    let mut ready = Some(Ready::requested()?);
    let first = ready.as_ref().and_then(Ready::first);
    let kind = first.as_ref().map(|first| first.kind);
    let mut options = LockOptions::default()
        .ttl(args.ttl)
        .unavailable_timeout(args.storage_timeout.duration);
    if let Some(kind) = kind {
        options = options.boundary(kind.name());
    }
    if let Some(interval) = args.refresh_interval {
        options = options.refresh_interval(interval);
    }
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let lock = Lock::new(backend, args.url.object(), options)?;
    let kill_grace = job_kill_grace(args.kill_grace, &lock)?;
    let election = Election::from_lock(lock);
    let url = args.url.to_string();
    let remove_from_environment =
        per_run_variables(&ElectArgs::augment_args(clap::Command::new("elect")));
    let job = Job {
        command: &args.command.argv,
        url: &url,
        place: 0,
        kill_grace,
        max_runtime: None,
        remove_from_environment: &remove_from_environment,
        log_format: global.log_format,
        bound_forwarded: true,
    };
    loop {
        let term_ready = match ready.take() {
            Some(first) => first,
            None => match &first {
                Some(first) => Ready::again(first)?,
                None => Ready::requested()?,
            },
        };
        tracing::info!("{url}: campaigning as {}", election.lock().identity());
        let leadership = match election.campaign(&args.value, &stop.token).await {
            Ok(leadership) => leadership,
            Err(gcslock::Error::Cancelled { .. }) => return Ok(stop.code()),
            Err(gcslock::Error::InvalidInput(why)) => {
                return Err(
                    Coded::new(exit::USAGE, format!("--value (GCSLOCK_VALUE): {why}")).into(),
                )
            }
            Err(error) => return Err(error.into()),
        };
        tracing::info!(target: OUTCOME, "{url}: leading (token {})", leadership.token());
        let end = run_job(leadership.guard(), &job, term_ready, &mut signals).await;
        let code = end.code;
        if !end.may_release {
            // Part of the command's group survived SIGKILL: no new term may start
            // beside it, so stop being a candidate and let the lease expire: no
            // write, not even the release a dropped guard would send.
            tracing::error!("{url}: not resigning, as the command's processes may still write");
            leadership.abandon();
            return code;
        }
        let lost = leadership.check().is_err();
        resign(leadership, &url).await;
        if stop.token.is_cancelled() {
            return Ok(stop.code());
        }
        match (code, lost) {
            (Ok(_), true) => tracing::warn!(
                target: OUTCOME,
                "{url}: leadership lost; the command was stopped; campaigning again"
            ),
            (Ok(code), false) => tracing::info!(
                target: OUTCOME,
                "{url}: the command exited ({code}); resigned; campaigning again in {}",
                short_duration(election.rejoin_delay())
            ),
            (Err(error), _) => tracing::error!("{url}: {error:#}; resigned; campaigning again"),
        }
    }
}

/// Resigns, bounded in time; a failure is reported, not fatal: the lock then
/// expires after its TTL.
async fn resign(leadership: Leadership, url: &str) {
    match tokio::time::timeout(RESIGN_TIMEOUT, leadership.resign()).await {
        Ok(Ok(())) => tracing::debug!("{url}: resigned"),
        Ok(Err(gcslock::Error::LeaseLost { reason, .. })) => {
            tracing::debug!("{url}: nothing to resign: {reason}")
        }
        Ok(Err(error)) => {
            tracing::warn!("could not resign {url}: {error}; the term ends at its TTL")
        }
        Err(_) => tracing::warn!(
            "could not resign {url} within {}; the term ends at its TTL",
            short_duration(RESIGN_TIMEOUT)
        ),
    }
}

/// The first of INT, TERM, HUP or QUIT: gcslock stops after this term (or campaign).
struct Stop {
    token: CancellationToken,
    signal: Arc<OnceLock<Signal>>,
}

impl Stop {
    fn install() -> Result<Self, Coded> {
        let token = CancellationToken::new();
        let signal = Arc::new(OnceLock::new());
        for which in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            let mut stream = tokio::signal::unix::signal(SignalKind::from_raw(which as i32))
                .map_err(|error| {
                    Coded::new(
                        exit::INTERNAL,
                        format!("cannot install a handler for {which}: {error}"),
                    )
                })?;
            let (token, signal) = (token.clone(), Arc::clone(&signal));
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    let _first_wins = signal.set(which);
                    token.cancel();
                }
            });
        }
        Ok(Self { token, signal })
    }

    fn code(&self) -> u8 {
        let signal = self.signal.get().copied().unwrap_or(Signal::SIGTERM);
        exit::signal(signal as i32)
    }
}
