//! `status`, `list` and `break`: reads and one forced release, printed for people
//! (one line each) or for programs (JSON).

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use gcslock::backend::Backend;
use gcslock::{BreakOutcome, HeldStatus, Lock, LockOptions, LockStatus};
use serde::Serialize;

use crate::cli::{BreakArgs, GlobalArgs, ListArgs, StatusArgs};

pub async fn status(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<u8> {
    let backend = args.url.backend(global)?;
    let lock = Lock::new(backend, args.url.object(), LockOptions::default())?;
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

pub async fn list(global: &GlobalArgs, args: &ListArgs) -> anyhow::Result<u8> {
    let backend = args.url.backend(global)?;
    let locks = gcslock::list_locks(&*backend, args.url.prefix()).await?;
    let mut lines = Vec::with_capacity(locks.len());
    for (name, status) in &locks {
        let url = args.url.object_url(name);
        lines.push(if args.json {
            serde_json::to_string(&StatusView::new(&url, status))
                .context("cannot encode the listing as JSON")?
        } else {
            describe(&url, status)
        });
    }
    print_lines(lines)?;
    Ok(0)
}

pub async fn break_lock(global: &GlobalArgs, args: &BreakArgs) -> anyhow::Result<u8> {
    let backend: Arc<dyn Backend> = args.url.backend(global)?;
    let mut options = LockOptions::default();
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let lock = Lock::new(backend, args.url.object(), options)?;
    let line = match lock.break_lock(args.token).await {
        Ok(BreakOutcome::Broken {
            previous_holder,
            token,
        }) => format!(
            "{}: broken (it was held by {previous_holder}, token {token})",
            args.url
        ),
        Ok(BreakOutcome::AlreadyFree) => format!("{}: already free; nothing to break", args.url),
        Err(error) => return Err(error.into()),
    };
    print_lines([line])?;
    Ok(0)
}

/// Writes lines to stdout; a closed pipe (`gcslock list | head -1`) ends quietly.
fn print_lines(lines: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = lines
        .into_iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    match result {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// One line for people.
pub fn describe(url: &str, status: &LockStatus) -> String {
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
                held.holder,
                held.token,
                timestamp(&held.last_refresh),
                short_duration(held.ttl)
            )
        }
        LockStatus::Stale(held) => format!(
            "{url}: stale: held by {} (token {}) but not refreshed since {} (ttl {}); \
             the next contender takes it over",
            held.holder,
            held.token,
            timestamp(&held.last_refresh),
            short_duration(held.ttl)
        ),
        LockStatus::NotALock { why } => format!("{url}: not a gcslock lock: {why}"),
    }
}

fn timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whole seconds from a minute up, milliseconds below.
pub fn short_duration(duration: Duration) -> String {
    let rounded = if duration >= Duration::from_secs(60) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(rounded).to_string()
}

/// The JSON form of a lock's status (`status --json`, one line of `list --json`).
#[derive(Debug, Serialize)]
struct StatusView<'a> {
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
    fn new(url: &'a str, status: &'a LockStatus) -> Self {
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
            token: Some(held.token),
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
                token: Some(*token),
                released_at: Some(timestamp(released_at)),
                ..empty("released", true)
            },
            LockStatus::Held(status) => held("held", status),
            LockStatus::Stale(status) => held("stale", status),
            LockStatus::NotALock { why } => Self {
                reason: Some(why),
                ..empty("not-a-lock", false)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcslock::backend::ObjectVersion;

    fn held(ttl: Duration, left: Duration) -> LockStatus {
        LockStatus::Held(HeldStatus {
            holder: "host:1".into(),
            token: 7,
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
