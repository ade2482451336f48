//! `gcslock observe`: who leads an election, at start and at every change, with
//! reads only, until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gcslock::election::{Election, Observation, Observed};
use gcslock::LockOptions;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::global::GlobalArgs;
use crate::output::{escape, print_lines, timestamp};
use crate::parse::parse_duration;
use crate::target::LockTarget;

pub const HELP: &str = "\
Prints one line at start and one per change: a new leader or token, a new published value,
\"no leader\" once the lock is released or stale by the storage server's clock (never a
stale leader), or \"unknown\" while storage cannot be read for longer than the last leader's
lease could last. Reads only, at most --interval apart (jittered between 80 % and 100 % of
it), and also when the leader's lease would run out. Runs until SIGINT or SIGTERM (exit 0).
Text output shows control and bidi characters read from storage escaped as \\u{..}.

--json prints one object per line and nothing else on stdout: {\"at\" (RFC 3339, the server's
clock when the change was seen), \"url\", \"state\": \"leader\"|\"none\"|\"unknown\",
\"identity\", \"token\", \"value\", \"since\", \"reason\"}; identity, token, value and since are
null without a leader (value also for a holder that published none; since when the term's
start is not known).";

#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// The election's lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Print one JSON object per change instead of a line of text
    #[arg(long)]
    pub json: bool,

    /// The longest time between two reads
    #[arg(long, env = "GCSLOCK_OBSERVE_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
}

pub async fn observe(global: &GlobalArgs, args: &ObserveArgs) -> anyhow::Result<u8> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let backend = args.url.backend(global)?;
    let interval = args.interval.max(Duration::from_millis(100));
    let options = LockOptions::default().poll_backoff(interval, interval);
    let election = Election::new(backend, args.url.object(), options)?;
    let mut observer = election.observe();
    let url = args.url.to_string();
    loop {
        let observation = tokio::select! {
            observation = observer.changed() => observation,
            _ = interrupt.recv() => return Ok(0),
            _ = terminate.recv() => return Ok(0),
        };
        let line = if args.json {
            serde_json::to_string(&ChangeView::new(&url, &observation))
                .context("cannot encode the change as JSON")?
        } else {
            describe(&url, &observation)
        };
        print_lines([line])?;
    }
}

/// One line for people; everything read from storage is escaped.
fn describe(url: &str, observation: &Observation) -> String {
    let at = timestamp(&observation.at);
    let url = escape(url);
    match &observation.state {
        Observed::Leader(leader) => {
            let value = leader
                .value
                .as_ref()
                .map(|value| format!(", value \"{}\"", escape(value)))
                .unwrap_or_default();
            format!(
                "{at} {url}: leader {} (token {}){value}",
                escape(&leader.identity),
                leader.token
            )
        }
        Observed::NoLeader => format!("{at} {url}: no leader"),
        Observed::Unknown { why } => format!("{at} {url}: unknown: {}", escape(why)),
    }
}

/// The JSON form of one change.
#[derive(Debug, Serialize)]
struct ChangeView<'a> {
    at: String,
    url: &'a str,
    state: &'static str,
    identity: Option<&'a str>,
    token: Option<u64>,
    value: Option<&'a str>,
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> ChangeView<'a> {
    fn new(url: &'a str, observation: &'a Observation) -> Self {
        let view = |state| Self {
            at: timestamp(&observation.at),
            url,
            state,
            identity: None,
            token: None,
            value: None,
            since: None,
            reason: None,
        };
        match &observation.state {
            Observed::Leader(leader) => Self {
                identity: Some(&leader.identity),
                token: Some(leader.token.value()),
                value: leader.value.as_deref(),
                since: leader.since.as_ref().map(timestamp),
                ..view("leader")
            },
            Observed::NoLeader => view("none"),
            Observed::Unknown { why } => Self {
                reason: Some(why),
                ..view("unknown")
            },
        }
    }
}
