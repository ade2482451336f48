//! `gcslock status`: one lock's state, for people (one line) or programs (JSON).
//! The line and the JSON object are shared with `list`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gcslock::{HeldStatus, Lock, LockOptions, LockStatus};
use serde::Serialize;

use crate::global::GlobalArgs;
use crate::output::{escape, print_lines, short_duration, timestamp};
use crate::parse::parse_duration;
use crate::target::LockTarget;

/// How long `status`, `list` and `break` retry transient storage failures (503, 429,
/// timeouts, resets) before giving up with exit 69.
#[derive(Debug, Args)]
pub struct StorageTimeout {
    /// How long to retry transient storage failures (5xx, 429, timeouts, resets) with
    /// backoff before giving up (exit 69)
    #[arg(
        long = "storage-timeout",
        value_name = "DURATION",
        value_parser = parse_duration,
        default_value = "10s",
        env = "GCSLOCK_STORAGE_TIMEOUT"
    )]
    pub duration: Duration,
}

pub const HELP: &str = "\
States: free (no lock object, or released by its last holder), held, stale (not refreshed
within its TTL by the server's clock: the next contender takes it over), not-a-lock.
Times left are judged by the storage server's clock, never this machine's. A lock revoked
by `gcslock break` shows as held by \"revoked by NAME\" until it turns stale.
Text output shows control and bidi characters read from storage escaped as \\u{..}.

--json prints one object: {\"url\", \"state\": \"free\"|\"released\"|\"held\"|\"stale\"|\"not-a-lock\",
\"free\": bool, \"token\", \"holder\", \"ttl_ms\", \"last_refresh\" (RFC 3339), \"expires_in_ms\",
\"released_at\", \"generation\", \"metageneration\", \"reason\"}; absent fields are omitted.

Exit codes: 0 when the lock could be read, whatever its state; otherwise as for run.";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Print one JSON object instead of a line of text
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,
}

pub async fn status(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<u8> {
    let backend = args.url.backend(global)?;
    let options = LockOptions::default().unavailable_timeout(args.storage_timeout.duration);
    let lock = Lock::new(backend, args.url.object(), options)?;
    let status = lock.status().await?;
    let url = args.url.to_string();
    let line = if args.json {
        serde_json::to_string(&StatusView::new(&url, &status))
            .context("cannot encode the status as JSON")?
    } else {
        describe(&url, &status)
    };
    print_lines([line])?;
    Ok(0)
}

/// One line for people; everything read from storage is escaped.
pub fn describe(url: &str, status: &LockStatus) -> String {
    let url = escape(url);
    match status {
        LockStatus::Free => format!("{url}: free (no lock object)"),
        LockStatus::Released { token, released_at } => format!(
            "{url}: free (released {}, last token {token})",
            timestamp(released_at)
        ),
        LockStatus::Held(held) => {
            let left = held
                .expires_in
                .map(|left| format!(", stale in {}", short_duration(left)))
                .unwrap_or_default();
            format!(
                "{url}: held by {} (token {}){left}; last refresh {}, ttl {}",
                escape(&held.holder),
                held.token,
                timestamp(&held.last_refresh),
                short_duration(held.ttl)
            )
        }
        LockStatus::Stale(held) => format!(
            "{url}: stale: held by {} (token {}) but not refreshed since {} (ttl {}); \
             the next contender takes it over",
            escape(&held.holder),
            held.token,
            timestamp(&held.last_refresh),
            short_duration(held.ttl)
        ),
        LockStatus::NotALock { why } => format!("{url}: not a gcslock lock: {}", escape(why)),
        _ => format!("{url}: in a state this version cannot describe"),
    }
}

/// The JSON form of a lock's status (`status --json`, one line of `list --json`).
#[derive(Debug, Serialize)]
pub struct StatusView<'a> {
    url: &'a str,
    state: &'static str,
    /// Free to take at once without a takeover: no object, or released.
    free: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    released_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metageneration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> StatusView<'a> {
    pub fn new(url: &'a str, status: &'a LockStatus) -> Self {
        let empty = |state, free| Self {
            url,
            state,
            free,
            token: None,
            holder: None,
            ttl_ms: None,
            last_refresh: None,
            expires_in_ms: None,
            released_at: None,
            generation: None,
            metageneration: None,
            reason: None,
        };
        let held = |state, held: &'a HeldStatus| Self {
            token: Some(held.token.value()),
            holder: Some(&held.holder),
            ttl_ms: Some(held.ttl.as_millis()),
            last_refresh: Some(timestamp(&held.last_refresh)),
            expires_in_ms: held.expires_in.map(|left| left.as_millis()),
            generation: Some(held.version.generation),
            metageneration: Some(held.version.metageneration),
            ..empty(state, false)
        };
        match status {
            LockStatus::Free => empty("free", true),
            LockStatus::Released { token, released_at } => Self {
                token: Some(token.value()),
                released_at: Some(timestamp(released_at)),
                ..empty("released", true)
            },
            LockStatus::Held(status) => held("held", status),
            LockStatus::Stale(status) => held("stale", status),
            LockStatus::NotALock { why } => Self {
                reason: Some(why),
                ..empty("not-a-lock", false)
            },
            _ => empty("unknown", false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use gcslock::backend::ObjectVersion;
    use gcslock::FencingToken;
    use std::time::Duration;

    fn held(ttl: Duration, left: Duration) -> LockStatus {
        LockStatus::Held(HeldStatus {
            holder: "host:1".into(),
            token: FencingToken::new(7),
            ttl,
            last_refresh: DateTime::<Utc>::UNIX_EPOCH,
            expires_in: Some(left),
            version: ObjectVersion {
                generation: 1,
                metageneration: 2,
            },
        })
    }

    #[test]
    fn describes_states_in_one_line() {
        let line = describe(
            "gs://b/o",
            &held(Duration::from_secs(300), Duration::from_secs(250)),
        );
        assert!(
            line.starts_with("gs://b/o: held by host:1 (token 7), stale in 4m 10s;"),
            "{line}"
        );
        let json = serde_json::to_value(StatusView::new("gs://b/o", &LockStatus::Free))
            .unwrap_or_default();
        assert_eq!(json["state"], "free");
        assert_eq!(json["free"], true);
        assert!(json.get("token").is_none());
    }
}
