//! `gcslock status`: one lock's state, for people (one line) or programs (JSON).
//! The line and the JSON object are shared with `list`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gcslock::admin::{HeldStatus, LockStatus};
use gcslock::once_per::CompletedSlot;
use gcslock::{Lock, LockOptions, Ttl};
use serde::Serialize;

use crate::global::GlobalArgs;
use crate::output::{escape, held_by, print_lines, short_duration, timestamp};
use crate::parse::parse_duration;
use crate::target::LockTarget;

/// The clap id of `--storage-timeout`, for a command that explains it in its own
/// words (`#[command(mut_arg(STORAGE_TIMEOUT, ..))]`).
pub const STORAGE_TIMEOUT: &str = "duration";

/// The storage budget of every command that talks to storage: how long they
/// retry transient storage failures (503, 429, timeouts, resets) before giving up
/// with exit 69. No request outlasts it.
#[derive(Debug, Args)]
pub struct StorageTimeout {
    /// How long storage may take, retries included, before giving up (exit 69); no
    /// single request outlasts it (status, list, break: the whole command)
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
A forever lock has \"ttl_forever\": true instead of \"ttl_ms\"; \"last_heard_ms\" is the server's
time since the last refresh. A lock used with `run --once-per` has \"last_completed\":
{\"period_s\", \"slot\", \"zone\", \"slot_start\", \"slot_start_local\", \"completed_at\" (server
clock), \"completed_by\"}, or \"last_completed_unreadable\" (why its keys are ignored).
A lock held by a `gcslock elect` leader has \"value\": the value it publishes (--value).
A lock held by `gcslock run` or `elect` has \"boundary\": \"cgroup\", \"session\" or \"group\", what
holds the command and everything it started (docs/containment.md).

--holders N (a semaphore, `run --holders N`; one listing): a summary line, then one line per
place (\"place K: ...\", place K being the object URL/place-K, place 0 URL itself), or with --json
one object {\"url\", \"holders\", \"held\", \"places\": [{\"place\", \"recorded_holders\", and the
fields above}]}. Places beyond N that exist (left by contenders with a larger N) are listed too.

Exit codes: 0 when the lock could be read, whatever its state; otherwise as for run.";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Print one JSON object instead of a line of text
    #[arg(long)]
    pub json: bool,

    /// Show the places of a semaphore of N holders (`run --holders N`)
    #[arg(long, env = "GCSLOCK_HOLDERS", value_name = "N", default_value_t = 1)]
    pub holders: u32,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,
}

pub async fn status(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<u8> {
    let backend = args.url.backend(global)?;
    let options = LockOptions::default().unavailable_timeout(args.storage_timeout.duration);
    if args.holders > 1 {
        let url = args.url.to_string();
        let object = args.url.object();
        let lines = crate::cmd::places::status_lines(
            backend,
            &url,
            object,
            args.holders,
            options,
            args.json,
        )
        .await?;
        print_lines(lines)?;
        return Ok(0);
    }
    let lock = Lock::new(backend, args.url.object(), options)?;
    let status = lock.status().await?;
    if let LockStatus::Held(held) | LockStatus::Stale(held) = &status {
        let span = tracing::Span::current();
        span.record("holder", held.holder.as_str());
        span.record("token", held.token.value());
    }
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
    let line = match status {
        LockStatus::Free => format!("{url}: free (no lock object)"),
        LockStatus::Released {
            token, released_at, ..
        } => format!(
            "{url}: free (released {}, last token {token})",
            timestamp(released_at)
        ),
        LockStatus::Held(held) if held.ttl == Ttl::Forever => {
            let heard = held
                .last_heard
                .map(|ago| format!(", last heard {} ago", short_duration(ago)))
                .unwrap_or_default();
            format!(
                "{url}: {} (token {}){heard}; last refresh {}, ttl forever \
                 (only `gcslock break --now` frees it)",
                escape(&held_by(&held.holder)),
                held.token,
                timestamp(&held.last_refresh),
            )
        }
        LockStatus::Held(held) => {
            let left = held
                .expires_in
                .map(|left| format!(", stale in {}", short_duration(left)))
                .unwrap_or_default();
            format!(
                "{url}: {} (token {}){left}; last refresh {}, ttl {}",
                escape(&held_by(&held.holder)),
                held.token,
                timestamp(&held.last_refresh),
                ttl_text(held.ttl)
            )
        }
        LockStatus::Stale(held) => format!(
            "{url}: stale: {} (token {}) but not refreshed since {} (ttl {}); \
             the next contender takes it over",
            escape(&held_by(&held.holder)),
            held.token,
            timestamp(&held.last_refresh),
            ttl_text(held.ttl)
        ),
        LockStatus::NotALock { why } => format!("{url}: not a gcslock lock: {}", escape(why)),
        _ => format!("{url}: in a state this version cannot describe"),
    };
    // What held the holder's work: for a stale lock too, whose work may run on.
    let line = match status {
        LockStatus::Held(HeldStatus {
            boundary: Some(boundary),
            ..
        })
        | LockStatus::Stale(HeldStatus {
            boundary: Some(boundary),
            ..
        }) => format!("{line}; boundary {}", escape(boundary)),
        _ => line,
    };
    // The value of the term in force only: a stale leader's is no one's.
    let line = match status {
        LockStatus::Held(HeldStatus {
            value: Some(value), ..
        }) => format!("{line}; leader value \"{}\"", escape(value)),
        _ => line,
    };
    match (status.last_completed(), status.unreadable_completion()) {
        (Some(done), _) => format!("{line}; last completed {}", completed_text(done)),
        (None, Some(why)) => format!(
            "{line}; last completed: unreadable, ignored ({})",
            escape(why)
        ),
        (None, None) => line,
    }
}

fn ttl_text(ttl: Ttl) -> String {
    match ttl {
        Ttl::Finite(ttl) => short_duration(ttl),
        _ => "forever".into(),
    }
}

/// "the 1d slot starting 2026-03-08T00:00:00-05:00 (America/New_York), completed
/// 2026-03-08T19:30:42.123Z by host:12"
pub fn completed_text(done: &CompletedSlot) -> String {
    format!(
        "{}, completed {} by {}",
        done.slot,
        timestamp(&done.completed_at),
        escape(&done.completed_by)
    )
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
    /// Only for a forever TTL (then `ttl_ms` is absent).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ttl_forever: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heard_ms: Option<u128>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    last_completed: Option<CompletedView<'a>>,
    /// Why the completed-slot keys could not be read (they are ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_completed_unreadable: Option<&'a str>,
    /// The value an election's leader publishes (`gcslock elect --value`); only
    /// while held, never a stale term's.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    /// What contains the holder's work, as it declared it (`run` and `elect`:
    /// "cgroup", "session" or "group"; docs/containment.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    boundary: Option<&'a str>,
}

/// The last completed slot (`run --once-per`) in JSON.
#[derive(Debug, Serialize)]
struct CompletedView<'a> {
    period_s: u64,
    slot: u64,
    /// The IANA zone whose calendar the period follows.
    zone: String,
    slot_start: String,
    /// The slot's start as the zone's wall clock reads it (RFC 3339 with offset).
    slot_start_local: String,
    completed_at: String,
    completed_by: &'a str,
}

impl<'a> CompletedView<'a> {
    fn new(done: &'a CompletedSlot) -> Self {
        Self {
            period_s: done.slot.period().as_secs(),
            slot: done.slot.index(),
            zone: done.slot.zone().name().to_owned(),
            slot_start: timestamp(&done.slot.start()),
            slot_start_local: done
                .slot
                .local_start()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            completed_at: timestamp(&done.completed_at),
            completed_by: &done.completed_by,
        }
    }
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
            ttl_forever: false,
            last_heard_ms: None,
            last_refresh: None,
            expires_in_ms: None,
            released_at: None,
            generation: None,
            metageneration: None,
            reason: None,
            last_completed: status.last_completed().map(CompletedView::new),
            last_completed_unreadable: status.unreadable_completion(),
            value: None,
            boundary: None,
        };
        let held = |state, held: &'a HeldStatus| Self {
            token: Some(held.token.value()),
            holder: Some(&held.holder),
            ttl_ms: match held.ttl {
                Ttl::Finite(ttl) => Some(ttl.as_millis()),
                _ => None,
            },
            ttl_forever: held.ttl == Ttl::Forever,
            last_heard_ms: held.last_heard.map(|ago| ago.as_millis()),
            last_refresh: Some(timestamp(&held.last_refresh)),
            expires_in_ms: held.expires_in.map(|left| left.as_millis()),
            generation: Some(held.version.generation),
            metageneration: Some(held.version.metageneration),
            boundary: held.boundary.as_deref(),
            ..empty(state, false)
        };
        match status {
            LockStatus::Free => empty("free", true),
            LockStatus::Released {
                token, released_at, ..
            } => Self {
                token: Some(token.value()),
                released_at: Some(timestamp(released_at)),
                ..empty("released", true)
            },
            LockStatus::Held(status) => Self {
                value: status.value.as_deref(),
                ..held("held", status)
            },
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
    use gcslock::backend::{memory::MemoryBackend, Backend, WriteCondition};
    use gcslock::once_per::Slot;
    use gcslock::testing::{LockRecord, LockState, RecordedSlot};
    use std::sync::Arc;
    use std::time::Duration;

    /// The status of a lock whose record is `record`, read `after` it was written.
    async fn status_of(record: LockRecord, after: Duration) -> LockStatus {
        let memory = Arc::new(MemoryBackend::new("b"));
        memory
            .write("o", WriteCondition::DoesNotExist, &record.to_metadata())
            .await
            .unwrap();
        tokio::time::advance(after).await;
        Lock::new(memory, "o", LockOptions::default())
            .unwrap()
            .status()
            .await
            .unwrap()
    }

    fn held(ttl: Ttl) -> LockRecord {
        LockRecord {
            state: LockState::Held,
            token: 7,
            holder: "host:1".into(),
            nonce: "n".into(),
            ttl,
            refresh_seq: 0,
            completed: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn describes_states_in_one_line() {
        let status = status_of(
            held(Duration::from_secs(300).into()),
            Duration::from_secs(80),
        )
        .await;
        let line = describe("gs://b/o", &status);
        assert!(
            line.starts_with("gs://b/o: held by host:1 (token 7), stale in 4m10s;"),
            "{line}"
        );
        let json = serde_json::to_value(StatusView::new("gs://b/o", &LockStatus::Free))
            .unwrap_or_default();
        assert_eq!(json["state"], "free");
        assert_eq!(json["free"], true);
        assert!(json.get("token").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn shows_forever_holders_and_the_last_completed_slot() {
        let slot = Slot::new(Duration::from_secs(3600), 10).unwrap();
        let completed_at = "2026-01-01T10:00:42Z".parse().unwrap();
        let record = LockRecord {
            completed: Some(RecordedSlot {
                slot,
                by: "host:9".into(),
                at: Some(completed_at),
            }),
            ..held(Ttl::Forever)
        };
        let status = status_of(record, Duration::from_secs(3 * 3600)).await;
        let line = describe("gs://b/o", &status);
        assert!(
            line.starts_with("gs://b/o: held by host:1 (token 7), last heard 3h ago;"),
            "{line}"
        );
        assert!(line.contains("ttl forever"), "{line}");
        assert!(
            line.ends_with(
                "; last completed the 1h slot starting 1970-01-01T10:00:00Z (UTC), \
                 completed 2026-01-01T10:00:42.000Z by host:9"
            ),
            "{line}"
        );
        let json = serde_json::to_value(StatusView::new("gs://b/o", &status)).unwrap();
        assert_eq!(json["ttl_forever"], true);
        assert!(json.get("ttl_ms").is_none());
        assert!(json.get("expires_in_ms").is_none());
        assert_eq!(json["last_heard_ms"], 3 * 3600 * 1000);
        assert_eq!(json["last_completed"]["period_s"], 3600);
        assert_eq!(json["last_completed"]["slot"], 10);
        assert_eq!(json["last_completed"]["zone"], "UTC");
        assert_eq!(
            json["last_completed"]["slot_start_local"],
            "1970-01-01T10:00:00Z"
        );
        assert_eq!(
            json["last_completed"]["slot_start"],
            "1970-01-01T10:00:00.000Z"
        );
        assert_eq!(
            json["last_completed"]["completed_at"],
            "2026-01-01T10:00:42.000Z"
        );
        assert_eq!(json["last_completed"]["completed_by"], "host:9");
    }

    /// Unreadable done keys are ignored, and said so (text and JSON).
    #[tokio::test(start_paused = true)]
    async fn says_when_the_completed_slot_is_unreadable() {
        let memory = Arc::new(MemoryBackend::new("b"));
        let mut metadata = held(Ttl::Finite(Duration::from_secs(60))).to_metadata();
        metadata.insert("gcslock-done-slot".into(), "12".into()); // alone: partial
        memory
            .write("o", WriteCondition::DoesNotExist, &metadata)
            .await
            .unwrap();
        let status = Lock::new(memory, "o", LockOptions::default())
            .unwrap()
            .status()
            .await
            .unwrap();
        let line = describe("gs://b/o", &status);
        assert!(
            line.contains("; last completed: unreadable, ignored (the completed-slot keys"),
            "{line}"
        );
        let json = serde_json::to_value(StatusView::new("gs://b/o", &status)).unwrap();
        assert!(json.get("last_completed").is_none());
        assert!(
            json["last_completed_unreadable"]
                .as_str()
                .is_some_and(|why| why.contains("all present or all absent")),
            "{json}"
        );
    }
}
