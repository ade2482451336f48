//! What a read of a lock object shows, judged by the storage server's clock, and
//! the listing of locks under a prefix (PROTOCOL.md §4, rule 1).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{Backend, ObjectInfo, ObjectVersion};
use crate::error::Error;
use crate::options::default_margin;
use crate::record::{decode_boundary, decode_value, LockRecord, LockState, Ttl};
use crate::retry::Retry;
use crate::slot::CompletedSlot;
use crate::token::FencingToken;

/// What a read of the lock object shows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockStatus {
    /// No lock object exists.
    Free,
    /// Released by its last holder (or broken); `token` is the last one issued.
    Released {
        /// The last token issued.
        token: FencingToken,
        /// When it was released, by the server's clock.
        released_at: DateTime<Utc>,
        /// The last slot completed under this lock (`--once-per`), if any.
        last_completed: Option<CompletedSlot>,
        /// Why the lock's completed-slot keys could not be read, if they could not
        /// (they are then ignored: PROTOCOL.md §10).
        unreadable_completion: Option<String>,
    },
    /// Held and refreshed recently enough.
    Held(HeldStatus),
    /// Held, but not refreshed within its TTL by the server's clock: may be taken over.
    Stale(HeldStatus),
    /// The object exists but is not a gcslock lock.
    NotALock {
        /// What is wrong with its metadata.
        why: String,
    },
}

/// Details of a held (or stale) lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldStatus {
    /// The holder's identity, as recorded in the lock.
    pub holder: String,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// The TTL the holder acquired the lock with.
    pub ttl: Ttl,
    /// The last acquire or refresh, by the server's clock.
    pub last_refresh: DateTime<Utc>,
    /// Time since `last_refresh` by the server's clock; `None` if the server sent
    /// no `Date`.
    pub last_heard: Option<Duration>,
    /// Server-judged time until the lock counts as stale (zero once stale);
    /// `None` if the server sent no `Date`, and for a forever TTL.
    pub expires_in: Option<Duration>,
    /// The object version read.
    pub version: ObjectVersion,
    /// The last slot completed under this lock (`--once-per`), if any.
    pub last_completed: Option<CompletedSlot>,
    /// Why the lock's completed-slot keys could not be read, if they could not
    /// (they are then ignored: PROTOCOL.md §10).
    pub unreadable_completion: Option<String>,
    /// The value this holder published as an election's leader
    /// ([`crate::election::Election`]), if it did.
    pub value: Option<String>,
    /// What contains the holder's work, as it declared it
    /// ([`crate::LockOptions::boundary`]); `None` if it declared none, or nothing
    /// well-formed.
    pub boundary: Option<String>,
}

impl LockStatus {
    /// The last slot completed under this lock (`--once-per`), whatever its state.
    pub fn last_completed(&self) -> Option<&CompletedSlot> {
        match self {
            Self::Released { last_completed, .. } => last_completed.as_ref(),
            Self::Held(held) | Self::Stale(held) => held.last_completed.as_ref(),
            _ => None,
        }
    }

    /// Why the lock's completed-slot keys could not be read, if they could not:
    /// they are ignored, and the next completion replaces them.
    pub fn unreadable_completion(&self) -> Option<&str> {
        match self {
            Self::Released {
                unreadable_completion,
                ..
            } => unreadable_completion.as_deref(),
            Self::Held(held) | Self::Stale(held) => held.unreadable_completion.as_deref(),
            _ => None,
        }
    }
}

impl LockStatus {
    /// Judges an object by the server's clock reading taken with it. The margin
    /// comes from the holder's recorded TTL, so every observer agrees on it.
    pub(crate) fn judge(info: Option<&ObjectInfo>, server_time: Option<DateTime<Utc>>) -> Self {
        let Some(info) = info else {
            return Self::Free;
        };
        let (record, value) = match LockRecord::from_metadata(&info.metadata)
            .and_then(|record| Ok((record, decode_value(&info.metadata)?)))
        {
            Ok(decoded) => decoded,
            Err(why) => return Self::NotALock { why },
        };
        let last_completed = record
            .completed
            .as_ref()
            .map(|done| done.resolve(info.updated));
        let unreadable_completion = LockRecord::completion_problem(&info.metadata);
        if record.state == LockState::Released {
            return Self::Released {
                token: FencingToken::new(record.token),
                released_at: info.updated,
                last_completed,
                unreadable_completion,
            };
        }
        // The record's TTL is within range, but `updated` comes from the server
        // too: a time at the end of chrono's range yields no server judgement, and
        // waiters fall back to their own clock. A forever TTL is never stale.
        let stale_at = match record.ttl {
            Ttl::Finite(ttl) => ttl
                .checked_add(default_margin(ttl))
                .and_then(|lease| chrono::Duration::from_std(lease).ok())
                .and_then(|lease| info.updated.checked_add_signed(lease)),
            Ttl::Forever => None,
        };
        let expires_in = match (stale_at, server_time) {
            (Some(stale_at), Some(now)) => Some((stale_at - now).to_std().unwrap_or_default()),
            _ => None,
        };
        let held = HeldStatus {
            holder: record.holder,
            token: FencingToken::new(record.token),
            ttl: record.ttl,
            last_refresh: info.updated,
            last_heard: server_time.map(|now| (now - info.updated).to_std().unwrap_or_default()),
            expires_in,
            version: info.version,
            last_completed,
            unreadable_completion,
            value,
            boundary: decode_boundary(&info.metadata),
        };
        if expires_in == Some(Duration::ZERO) {
            Self::Stale(held)
        } else {
            Self::Held(held)
        }
    }
}

/// Lists the locks under `prefix`, each judged by the server's clock at listing time.
/// Transient storage failures (5xx, 429, timeouts, resets) are retried with jittered
/// backoff for up to `timeout` (10 s is what `Lock::status` uses by default); then
/// `Error::Unavailable`.
pub async fn list_locks(
    backend: &dyn Backend,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<(String, LockStatus)>, Error> {
    let location = format!("{}/{prefix}", backend.describe());
    let listing = Retry::new(timeout)
        .run(|| backend.list(prefix))
        .await
        .map_err(|error| Error::from_backend(&location, error))?;
    // Each object is judged by the clock reading of the page it came from.
    Ok(listing
        .iter()
        .map(|listed| {
            (
                listed.value.name.clone(),
                LockStatus::judge(Some(&listed.value), listed.server_time),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LockRecord;

    fn held_at(updated: DateTime<Utc>, ttl_ms: &str) -> ObjectInfo {
        let mut metadata = LockRecord {
            state: LockState::Held,
            token: 1,
            holder: "h:1".into(),
            nonce: "n".into(),
            ttl: Duration::from_secs(60).into(),
            refresh_seq: 0,
            completed: None,
        }
        .to_metadata();
        metadata.insert(crate::record::KEY_TTL_MS.into(), ttl_ms.into());
        ObjectInfo {
            name: "l".into(),
            version: ObjectVersion {
                generation: 1,
                metageneration: 1,
            },
            updated,
            created: Some(updated),
            metadata,
        }
    }

    #[test]
    fn hostile_ttls_and_times_are_judged_without_panicking() {
        let now = Utc::now();
        // `updated + TTL` used to overflow chrono's range and panic.
        for ttl_ms in [
            "10000000000000000",
            "9223372036854775807",
            "18446744073709551615",
        ] {
            let judged = LockStatus::judge(Some(&held_at(now, ttl_ms)), Some(now));
            assert!(matches!(judged, LockStatus::NotALock { .. }), "{judged:?}");
        }
        // A server time at the end of chrono's range: no server judgement, no panic.
        for updated in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
            for server_time in [Some(now), Some(DateTime::<Utc>::MIN_UTC), None] {
                let judged = LockStatus::judge(Some(&held_at(updated, "60000")), server_time);
                assert!(
                    matches!(judged, LockStatus::Held(_) | LockStatus::Stale(_)),
                    "{judged:?}"
                );
            }
        }
    }
}
