//! The storage a lock lives in, reduced to the five calls the lease protocol needs.
//!
//! A backend is one bucket. It performs exactly one request per call and never
//! retries: retrying is the algorithm's job (`crate::lock`, `crate::lease`), because
//! only the algorithm knows how to resolve an ambiguous outcome (by nonce) and how
//! long it may keep trying (until its lease deadline).
//!
//! Every backend must pass the conformance suite in `tests/conformance/`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod fault;
pub mod gcs;
pub mod memory;

/// Custom metadata of an object (GCS `metadata`, string to string).
pub type Metadata = BTreeMap<String, String>;

/// Identifies one version of an object: GCS's generation and metageneration.
///
/// The generation changes whenever the object is (re)created; the metageneration
/// starts at 1 for each generation and grows with every metadata update. Only the
/// pair identifies a version (metageneration alone restarts at 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    pub generation: i64,
    pub metageneration: i64,
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.generation, self.metageneration)
    }
}

/// What the server says about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub version: ObjectVersion,
    /// Last modification of data or metadata, by the server's clock.
    pub updated: DateTime<Utc>,
    pub metadata: Metadata,
}

/// A response value together with the server's clock reading (HTTP `Date`) when
/// it answered. Expiry is judged only by comparing two readings of that one clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped<T> {
    pub value: T,
    /// `None` when the server sent no usable `Date` header.
    pub server_time: Option<DateTime<Utc>>,
}

/// The precondition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    /// Only if no live object has this name (`ifGenerationMatch=0`).
    DoesNotExist,
    /// Only if the live object is exactly this version
    /// (`ifGenerationMatch=G&ifMetagenerationMatch=M`).
    Matches(ObjectVersion),
}

/// One bucket that holds lock objects.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Creates or replaces the object `name` with an empty body and `metadata`,
    /// only if `condition` holds. A replaced object gets a new generation.
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError>;

    /// Reads the object's metadata, `None` if it does not exist.
    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError>;

    /// Merges `metadata` into the object's metadata, only if it is exactly `expected`.
    /// The metageneration grows by one; the generation stays.
    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError>;

    /// Deletes the object, only if it is exactly `expected`.
    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError>;

    /// Every object whose name starts with `prefix`, in name order, across all
    /// pages; `server_time` is the clock reading of the last page.
    async fn list(&self, prefix: &str) -> Result<Stamped<Vec<ObjectInfo>>, BackendError>;

    /// A human-readable location for messages, such as `gs://bucket`.
    fn describe(&self) -> String;
}

/// The outcome of one failed request, classified by what the caller may do next.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A precondition did not hold (HTTP 412). Nothing was changed.
    #[error("precondition failed: the object is not in the expected state")]
    PreconditionFailed,
    /// The object does not exist (HTTP 404 on an object).
    #[error("object not found")]
    NotFound,
    /// The bucket does not exist (HTTP 404 on the bucket).
    #[error("bucket {0} does not exist")]
    BucketNotFound(String),
    /// Backpressure (HTTP 429). Nothing was changed; slow down and try again.
    #[error("rate limited by the storage service")]
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx. The request may or may not have been applied.
    #[error("storage service error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// No response within the request timeout. The request may have been applied.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made. The request was not sent.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The connection broke after the request was sent. It may have been applied.
    #[error("connection error: {0}")]
    Transport(String),
    /// HTTP 401/403, or credentials that cannot be obtained.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A request the service refused as malformed (HTTP 400 and other 4xx).
    #[error("request rejected (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// A response that is not what the API documents (not JSON, missing fields).
    #[error("invalid response from storage: {0}")]
    InvalidResponse(String),
}

impl BackendError {
    /// Worth trying again after a pause: the failure says nothing about the lock.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout(_)
                | Self::Connect { .. }
                | Self::Transport(_)
        )
    }

    /// The request may have taken effect although it reported failure; a write that
    /// fails this way must be resolved by reading the object back.
    pub fn may_have_applied(&self) -> bool {
        matches!(
            self,
            Self::Server { .. } | Self::Timeout(_) | Self::Transport(_) | Self::InvalidResponse(_)
        )
    }
}
