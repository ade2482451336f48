//! `gcslock break`: a forced release, safe by default (revoke), at once with `--now`,
//! conditional on the fencing token when given, and `--repair` for invalid records.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use gcslock::admin::{BreakOptions, BreakOutcome};
use gcslock::backend::{Backend, ObjectVersion};
use gcslock::semaphore::{place_name, Semaphore};
use gcslock::{FencingToken, Lock, LockOptions};
use serde::Serialize;

use crate::cmd::places;
use crate::cmd::status::StorageTimeout;
use crate::exit::{self, Coded};
use crate::global::GlobalArgs;
use crate::output::{escape, held_by, print_lines, short_duration, timestamp};
use crate::target::LockTarget;

pub const HELP: &str = "\
Which to use:
  gcslock break URL        the safe default. A HELD lock is revoked: it stays held, by
                           \"revoked by NAME\", with its holder's TTL and token, but its
                           version changes, so the holder's next refresh fails and
                           `gcslock run` stops its command. Nobody can acquire the lock
                           until it turns stale (TTL plus safety margin after the break),
                           by when the broken holder's own deadline (TTL minus margin
                           after its last refresh) has passed and its command has been
                           stopped. No overlap, at the cost of waiting up to one TTL.
                           A STALE lock is released at once: its holder's deadline has
                           passed already. Breaking a revoked lock again changes nothing.
  gcslock break --now URL  release at once: the next contender acquires immediately,
                           while the broken holder's command MAY STILL RUN for up to its
                           refresh interval plus its --kill-grace, overlapping the next
                           holder's. Use it when you know the holder is gone (its machine
                           is dead), or for a lock whose TTL is forever (`run --ttl
                           forever`), which the default refuses to revoke.

The lock is never deleted: fencing tokens keep growing (the next holder gets token+1).
With --token N the lock is broken only if it still carries token N.

A semaphore (`run --holders N`): `gcslock break --holders N URL --holder NAME` (or --token T,
or both) breaks the one place that holder has, as above, conditional on its token; the other
places are untouched. Nothing matching: exit 75; several places match: exit 64.

--repair: an object whose gcslock record is invalid (written by something else: missing
fields, numbers out of range, an unknown state) is refused without it (exit 65). With it,
the object is marked released, conditional on the exact version read, with a token above
every number in its gcslock-*token* fields (at least 1), so tokens never restart. An object
without any gcslock-* metadata is not a lock and is never touched. On a valid record,
--repair breaks as without it.

Transient storage failures are retried until --storage-timeout; a break whose answer was
lost is resolved by reading the lock back.

Prints one line on stdout (holders read from storage show control characters escaped as
\\u{..}), or with --json one object: {\"url\", \"outcome\": \"revoked\"|\"broken\"|\"repaired\"|
\"already-free\", \"previous_holder\", \"token\" (the token the lock carries now; the next
holder gets token+1), \"stale_at\" (RFC 3339, revoked: when it turns stale by the server's
clock), \"stale_in_ms\", \"reason\" (repaired: what was invalid), \"generation\",
\"metageneration\" (the version read or written)}; absent fields are omitted.

Exit codes: 0 revoked, broken, repaired or already free; 75 nothing was broken: the lock
carries another token than --token, or changed meanwhile; 64 nothing was broken: the lock's
TTL is forever or too long to revoke (use --now); 65 not a gcslock lock, or an invalid
record without --repair; otherwise as for run.";

#[derive(Debug, Args)]
pub struct BreakArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Break it only if it still carries this fencing token
    #[arg(long, value_name = "N", value_parser = crate::cmd::put::parse_token)]
    pub token: Option<u64>,

    /// Who is breaking it, recorded in the lock. Default: HOST:PID
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,

    /// Release a held lock at once instead of revoking it; its holder's command may
    /// still run for up to its refresh interval plus kill grace (see --help)
    #[arg(long)]
    pub now: bool,

    /// Also repair an invalid gcslock record: mark it released with a token above
    /// every token it carries
    #[arg(long)]
    pub repair: bool,

    /// Print one JSON object instead of a line of text
    #[arg(long)]
    pub json: bool,

    /// A semaphore of N holders (`run --holders N`): break the one place held by
    /// --holder and/or --token
    #[arg(long, env = "GCSLOCK_HOLDERS", value_name = "N", default_value_t = 1)]
    pub holders: u32,

    /// With --holders: the identity of the holder to break
    #[arg(long, value_name = "NAME", requires = "holders")]
    pub holder: Option<String>,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,
}

pub async fn break_lock(global: &GlobalArgs, args: &BreakArgs) -> anyhow::Result<u8> {
    let backend: Arc<dyn Backend> = args.url.backend(global)?;
    let mut options = LockOptions::default().unavailable_timeout(args.storage_timeout.duration);
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let (lock, url, token) = if args.holders > 1 {
        let semaphore = Semaphore::new(backend, args.url.object(), args.holders, options)?;
        let (place, token) =
            places::chosen_place(&semaphore, args.holder.as_deref(), args.token).await?;
        let lock = semaphore
            .place(place)
            .cloned()
            .context("the chosen place is within the limit")?;
        let object = place_name(args.url.object(), place);
        let url = places::place_url(&args.url.to_string(), args.url.object(), &object);
        (lock, url, Some(token))
    } else {
        let lock = Lock::new(backend, args.url.object(), options)?;
        (lock, args.url.to_string(), args.token)
    };
    let break_options = BreakOptions::new()
        .expected_token(token.map(FencingToken::new))
        .now(args.now)
        .repair(args.repair);
    let outcome = match lock.break_with(&break_options).await {
        Ok(outcome) => outcome,
        Err(error @ gcslock::Error::NotALock { .. }) if !args.repair => {
            return Err(anyhow::Error::new(error).context(
                "not broken; if its gcslock-* metadata is merely invalid, `gcslock break \
                 --repair` marks it released with a token above every token it carries",
            ))
        }
        // The library's remedy for a lock that cannot be revoked (TTL forever or too
        // long) is `--now`: a matter of the command line, not a busy lock (75).
        Err(error @ gcslock::Error::Conflict { .. })
            if !args.now && error.to_string().contains("`--now`") =>
        {
            return Err(Coded::new(exit::USAGE, format!("{error}; nothing was broken")).into())
        }
        Err(error) => return Err(error.into()),
    };
    let line = if args.json {
        serde_json::to_string(&BreakView::new(&url, &outcome))
            .context("cannot encode the outcome as JSON")?
    } else {
        describe(&url, &outcome)
    };
    print_lines([line])?;
    Ok(0)
}

/// One line for people; everything read from storage is escaped.
fn describe(url: &str, outcome: &BreakOutcome) -> String {
    let url = escape(url);
    match outcome {
        BreakOutcome::RevokedUntil {
            previous_holder,
            token,
            stale_at,
            stale_in,
            ..
        } => {
            let left = stale_in
                .map(|left| format!(" (in {})", short_duration(left)))
                .unwrap_or_default();
            format!(
                "{url}: broken: revoked (it was {}, token {token}); the holder loses \
                 its lease at its next refresh; the lock turns stale and free at {}{left}; \
                 `gcslock break --now` frees it at once",
                escape(&held_by(previous_holder)),
                timestamp(stale_at)
            )
        }
        BreakOutcome::Broken {
            previous_holder,
            token,
            ..
        } => format!(
            "{url}: broken (it was {}, token {token}); released, free now",
            escape(&held_by(previous_holder))
        ),
        BreakOutcome::Repaired { why, token, .. } => format!(
            "{url}: repaired: its invalid record ({}) is now released with token {token}",
            escape(why)
        ),
        BreakOutcome::AlreadyFree => format!("{url}: already free; nothing to break"),
        _ => format!("{url}: break finished"),
    }
}

/// The JSON form of a break's outcome (`break --json`).
#[derive(Debug, Serialize)]
struct BreakView<'a> {
    url: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_holder: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_in_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metageneration: Option<i64>,
}

impl<'a> BreakView<'a> {
    fn new(url: &'a str, outcome: &'a BreakOutcome) -> Self {
        let empty = |outcome| Self {
            url,
            outcome,
            previous_holder: None,
            token: None,
            stale_at: None,
            stale_in_ms: None,
            reason: None,
            generation: None,
            metageneration: None,
        };
        let at = |outcome, token: &FencingToken, version: &ObjectVersion| Self {
            token: Some(token.value()),
            generation: Some(version.generation),
            metageneration: Some(version.metageneration),
            ..empty(outcome)
        };
        match outcome {
            BreakOutcome::RevokedUntil {
                previous_holder,
                token,
                stale_at,
                stale_in,
                version,
            } => Self {
                previous_holder: Some(previous_holder),
                stale_at: Some(timestamp(stale_at)),
                stale_in_ms: stale_in.map(|left| left.as_millis()),
                ..at("revoked", token, version)
            },
            BreakOutcome::Broken {
                previous_holder,
                token,
                version,
            } => Self {
                previous_holder: Some(previous_holder),
                ..at("broken", token, version)
            },
            BreakOutcome::Repaired {
                why,
                token,
                version,
            } => Self {
                reason: Some(why),
                ..at("repaired", token, version)
            },
            BreakOutcome::AlreadyFree => empty("already-free"),
            _ => empty("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outcomes_in_text_and_json() {
        let outcome = BreakOutcome::RevokedUntil {
            previous_holder: "evil\u{1b}]0;x\u{7}\n\u{202E}".into(),
            token: FencingToken::new(7),
            stale_at: chrono::DateTime::UNIX_EPOCH,
            stale_in: Some(Duration::from_secs(90)),
            version: ObjectVersion {
                generation: 3,
                metageneration: 4,
            },
        };
        let line = describe("gs://b/o", &outcome);
        assert!(line.starts_with("gs://b/o: broken: revoked"), "{line}");
        assert!(line.contains("in 1m30s"), "{line}");
        assert!(!line.chars().any(|c| c.is_control() || c == '\u{202E}'));
        let json = serde_json::to_value(BreakView::new("gs://b/o", &outcome)).unwrap_or_default();
        assert_eq!(json["outcome"], "revoked");
        assert_eq!(json["token"], 7);
        assert_eq!(json["stale_in_ms"], 90_000);
        assert_eq!(json["stale_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["generation"], 3);
        assert!(json.get("reason").is_none());
        let free = serde_json::to_value(BreakView::new("gs://b/o", &BreakOutcome::AlreadyFree))
            .unwrap_or_default();
        assert_eq!(
            free,
            serde_json::json!({"url": "gs://b/o", "outcome": "already-free"})
        );
    }
}
