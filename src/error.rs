//! The library's one error type.

use std::fmt;
use std::time::Duration;

use crate::backend::BackendError;
use crate::token::FencingToken;

/// `Result` with the library's [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a lock, grouped by what the caller does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Someone else holds the lock (after waiting, if a wait was asked for).
    #[error("lock {lock} is busy: {holder}")]
    Busy {
        /// The lock, for messages.
        lock: String,
        /// Who holds it.
        holder: HolderSummary,
    },

    /// The lease is gone; work done under it must not be committed.
    #[error("lease on {lock} lost: {reason}")]
    LeaseLost {
        /// The lock, for messages.
        lock: String,
        /// Why the lease ended.
        reason: LossReason,
    },

    /// `commit` refused because too little of the lease is left.
    #[error("lease on {lock} has {left:?} left, less than the {needed:?} the commit needs")]
    InsufficientTime {
        /// The lock, for messages.
        lock: String,
        /// Time left on the lease.
        left: Duration,
        /// Time the commit asked for.
        needed: Duration,
    },

    /// A bad URL, name, TTL or option, detected before any request was sent.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The object exists but is not a gcslock lock (no or malformed gcslock metadata).
    /// It is never overwritten.
    #[error("{lock} is not a gcslock lock object: {why}")]
    NotALock {
        /// The object, for messages.
        lock: String,
        /// What is wrong with its metadata.
        why: String,
    },

    /// Credentials are missing or lack a permission.
    #[error("permission denied on {lock}: {cause}")]
    PermissionDenied {
        /// The lock, for messages.
        lock: String,
        /// The storage's answer.
        cause: BackendError,
    },

    /// The bucket does not exist.
    #[error("bucket of {lock} does not exist")]
    BucketNotFound {
        /// The lock, for messages.
        lock: String,
    },

    /// The storage service could not be reached or kept failing until the time
    /// allowed ran out.
    #[error("storage unavailable for {lock}: {cause}")]
    Unavailable {
        /// The lock, for messages.
        lock: String,
        /// The last failure.
        cause: BackendError,
    },

    /// The lock is not in the state the operation was conditioned on (a `break`
    /// with another token, or a lock that changed while being broken).
    #[error("{lock}: {why}")]
    Conflict {
        /// The lock, for messages.
        lock: String,
        /// What did not match.
        why: String,
    },

    /// A semaphore contender met a live holder that allows another number of
    /// holders at once (`--holders`): all contenders of one name must agree. Nothing
    /// of this contender is left held.
    #[error(
        "{lock}: this contender allows at most {ours} holder(s), but {holder} holds it \
         allowing {theirs}; every contender must use the same limit (to change it, stop \
         every holder, or break their places, first)"
    )]
    HoldersMismatch {
        /// The semaphore (its first place), for messages.
        lock: String,
        /// The limit this contender was created with.
        ours: u32,
        /// The limit recorded by the live holder met.
        theirs: u32,
        /// That holder's identity and place.
        holder: String,
    },

    /// The operation was cancelled through its cancellation token.
    #[error("cancelled while waiting for {lock}")]
    Cancelled {
        /// The lock, for messages.
        lock: String,
    },
}

impl Error {
    /// Maps a backend failure that the algorithm cannot handle itself. The cause
    /// is part of the message (not `source()`), so error chains don't repeat it.
    pub(crate) fn from_backend(lock: &str, cause: BackendError) -> Self {
        let lock = lock.to_owned();
        match cause {
            BackendError::PermissionDenied(_) => Self::PermissionDenied { lock, cause },
            BackendError::BucketNotFound(_) => Self::BucketNotFound { lock },
            BackendError::Rejected { .. } => Self::InvalidInput(format!("{lock}: {cause}")),
            cause => Self::Unavailable { lock, cause },
        }
    }
}

/// Who holds a lock, as far as the last read showed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderSummary {
    /// The holder's identity, as recorded in the lock.
    pub identity: String,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// Time left before the lock counts as stale, by the server's clock.
    pub expires_in: Option<Duration>,
}

impl fmt::Display for HolderSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "held by {} (token {})", self.identity, self.token)?;
        if let Some(left) = self.expires_in {
            write!(
                f,
                ", stale in {}",
                crate::duration_text::written(Duration::from_secs(left.as_secs()))
            )?;
        }
        Ok(())
    }
}

/// Why a lease ended: lost (superseded, deleted, expired, its keep-alive gone) or
/// let go by this process ([`LossReason::Released`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The lock object changed under us: someone took it over or broke it.
    Superseded {
        /// The new holder and its token, if the lock is held again.
        holder: Option<String>,
    },
    /// The lock object was deleted.
    Deleted,
    /// No refresh succeeded before the holder's deadline; the last error is given.
    Expired {
        /// The last refresh failure.
        last_error: String,
    },
    /// This process let go: the guard was released, abandoned or dropped.
    Released,
    /// The task that refreshes the lease ended without deciding the lease's fate
    /// (it panicked, was aborted, or its runtime shut down): nothing refreshes
    /// the lease any more.
    KeepAliveStopped {
        /// How it ended.
        why: String,
    },
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Superseded {
                holder: Some(holder),
            } => {
                write!(
                    f,
                    "the lock was taken over or broken; it is now held by {holder}"
                )
            }
            Self::Superseded { holder: None } => {
                write!(f, "the lock was broken or taken over by someone else")
            }
            Self::Deleted => write!(f, "the lock object was deleted"),
            Self::Expired { last_error } => write!(
                f,
                "no refresh succeeded before the lease deadline (last error: {last_error})"
            ),
            Self::Released => write!(f, "the lock was released"),
            Self::KeepAliveStopped { why } => write!(
                f,
                "the task refreshing the lease stopped unexpectedly ({why}); nothing refreshes it"
            ),
        }
    }
}
