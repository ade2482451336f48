//! Breaking a lock by force ([`Lock::break_lock`]) and what it found.

use crate::backend::BackendError;
use crate::error::Error;
use crate::identity::new_nonce;
use crate::lock::Lock;
use crate::record::{LockRecord, LockState};
use crate::token::FencingToken;

/// The outcome of [`Lock::break_lock`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakOutcome {
    /// The lock was held (or stale) and is now released.
    Broken {
        /// Who held it.
        previous_holder: String,
        /// The token it carried.
        token: FencingToken,
    },
    /// Nothing to break: the lock was free or already released.
    AlreadyFree,
}

impl Lock {
    /// Force-releases the lock, like `terraform force-unlock`. With `expected`,
    /// only if the lock still carries that token. The holder notices at its next
    /// refresh. The object is marked released, not deleted, so the token keeps growing.
    pub async fn break_lock(&self, expected: Option<FencingToken>) -> Result<BreakOutcome, Error> {
        let lock = self.settings();
        let fail = |error| Error::from_backend(&lock.url, error);
        let read = lock.backend.read(&lock.object).await.map_err(fail)?;
        let Some(info) = read.value else {
            return Ok(BreakOutcome::AlreadyFree);
        };
        let record = LockRecord::from_metadata(&info.metadata).map_err(|why| Error::NotALock {
            lock: lock.url.clone(),
            why,
        })?;
        if let Some(expected) = expected {
            if record.token != expected.value() {
                return Err(Error::Conflict {
                    lock: lock.url.clone(),
                    why: format!(
                        "it carries token {}, not {expected}; not broken",
                        record.token
                    ),
                });
            }
        }
        if record.state == LockState::Released {
            return Ok(BreakOutcome::AlreadyFree);
        }
        let tombstone = LockRecord {
            state: LockState::Released,
            holder: format!("broken by {}", lock.identity),
            nonce: new_nonce(),
            refresh_seq: record.refresh_seq.saturating_add(1),
            ..record.clone()
        };
        match lock
            .backend
            .update_metadata(&lock.object, info.version, &tombstone.to_metadata())
            .await
        {
            Ok(_) => Ok(BreakOutcome::Broken {
                previous_holder: record.holder,
                token: FencingToken::new(record.token),
            }),
            Err(BackendError::PreconditionFailed | BackendError::NotFound) => {
                Err(Error::Conflict {
                    lock: lock.url.clone(),
                    why: "it changed while it was being broken (a refresh or a new holder); \
                      check its status and try again"
                        .into(),
                })
            }
            Err(error) => Err(fail(error)),
        }
    }
}
