//! What a read of a lock object shows, judged by the storage server's clock, and
//! the listing of locks under a prefix.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{Backend, ObjectInfo, ObjectVersion};
use crate::error::Error;
use crate::options::default_margin;
use crate::record::{LockRecord, LockState, Ttl};
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
}

impl LockStatus {
    /// Judges an object by the server's clock reading taken with it. The margin
    /// comes from the holder's recorded TTL, so every observer agrees on it.
    pub(crate) fn judge(info: Option<&ObjectInfo>, server_time: Option<DateTime<Utc>>) -> Self {
        let Some(info) = info else {
            return Self::Free;
        };
        let record = match LockRecord::from_metadata(&info.metadata) {
            Ok(record) => record,
            Err(why) => return Self::NotALock { why },
        };
        let last_completed = record
            .completed
            .as_ref()
            .map(|done| done.resolve(info.updated));
        if record.state == LockState::Released {
            return Self::Released {
                token: FencingToken::new(record.token),
                released_at: info.updated,
                last_completed,
            };
        }
        let stale_at = match record.ttl {
            Ttl::Finite(ttl) => chrono::Duration::from_std(ttl + default_margin(ttl))
                .ok()
                .and_then(|lease| info.updated.checked_add_signed(lease)),
            Ttl::Forever => None,
        };
        let expires_in = match (stale_at, server_time) {
            (Some(stale_at), Some(now)) => Some((stale_at - now).to_std().unwrap_or_default()),
            // A forever TTL, or one too large for chrono: never stale.
            (None, Some(_)) => None,
            (_, None) => None,
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
        };
        if expires_in == Some(Duration::ZERO) {
            Self::Stale(held)
        } else {
            Self::Held(held)
        }
    }
}

/// Lists the locks under `prefix`, each judged by the server's clock at listing time.
pub async fn list_locks(
    backend: &dyn Backend,
    prefix: &str,
) -> Result<Vec<(String, LockStatus)>, Error> {
    let location = format!("{}/{prefix}", backend.describe());
    let listing = backend
        .list(prefix)
        .await
        .map_err(|error| Error::from_backend(&location, error))?;
    let now = listing.server_time;
    let objects = listing.value;
    Ok(objects
        .iter()
        .map(|info| (info.name.clone(), LockStatus::judge(Some(info), now)))
        .collect())
}
