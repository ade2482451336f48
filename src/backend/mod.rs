//! The storage a lock lives in, reduced to the five calls the lease protocol needs.
//!
//! A backend is one bucket. It performs exactly one request per call and never
//! retries: retrying is the algorithm's job (`crate::lock`, `crate::lease`), because
//! only the algorithm knows how to resolve an ambiguous outcome (by nonce) and how
//! long it may keep trying (until its lease deadline).
//!
//! Every backend must pass the conformance suite, published as `gcslock::conformance`
//! (feature `conformance`) and run by the project's own tests on every backend.
//!
//! [`open`] turns a lock URL (`gs://`, `s3://`, `az://`, `memory://`) into a
//! backend. To observe or alter calls (count them, inject faults, rewrite
//! responses), wrap a backend in [`intercept::Intercept`] with a
//! [`intercept::Hook`] rather than writing another forwarding `impl Backend`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod address;
pub mod fault;
pub mod gcs;
pub mod intercept;
pub mod memory;
#[cfg(feature = "object-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store")))]
pub mod object_store;

pub use address::{open, open_prefix, OpenOptions, Scheme, StorageUrl};

/// The longest one storage request may take unless configured otherwise
/// ([`OpenOptions::request_timeout`]); the one definition every backend uses.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Custom metadata of an object (GCS `metadata`, string to string).
pub type Metadata = BTreeMap<String, String>;

// `ObjectVersion`, `ObjectInfo`, `Stamped` and `Download` keep their fields public
// and are not `#[non_exhaustive]`: every `Backend` implementation outside this
// crate has to build them, and they model GCS's object resource, which is stable.

/// Identifies one version of an object: GCS's generation and metageneration.
///
/// The generation changes whenever the object is (re)created; the metageneration
/// starts at 1 for each generation and grows with every metadata update. Only the
/// pair identifies a version (metageneration alone restarts at 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    /// Changes whenever the object's data is replaced.
    pub generation: i64,
    /// Changes whenever its metadata changes; restarts at 1 with each generation.
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
    /// The object's name in its bucket.
    pub name: String,
    /// Its current version.
    pub version: ObjectVersion,
    /// Last modification of data or metadata, by the server's clock.
    pub updated: DateTime<Utc>,
    /// When this generation was written, by the server's clock: kept by metadata
    /// updates, new with every write. `None` where the store does not report it
    /// (object_store's stores rewrite the object to change its metadata).
    pub created: Option<DateTime<Utc>>,
    /// Its custom metadata.
    pub metadata: Metadata,
}

/// A response value together with the server's clock reading (HTTP `Date`) when
/// it answered. Expiry is judged only by comparing two readings of that one clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped<T> {
    /// What the server answered.
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
    /// pages; each carries the clock reading of the page (response) it came from,
    /// so a long listing judges no object by a later page's clock.
    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError>;

    /// A human-readable location for messages, such as `gs://bucket`.
    fn describe(&self) -> String;

    /// The shortest interval at which one object may be mutated without being
    /// throttled, if the store has one (GCS: about one write per second per object).
    /// `Lock::new` refuses a refresh interval below it.
    fn min_mutation_interval(&self) -> Option<Duration> {
        None
    }
}

/// The outcome of one failed request, classified by what the caller may do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    RateLimited {
        /// How long the server asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx. The request may or may not have been applied.
    #[error("storage service error (HTTP {status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// No response within the request timeout. The request may have been applied.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made. The request was not sent.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// Where the connection was attempted.
        endpoint: String,
        /// Why it failed.
        message: String,
    },
    /// The connection broke after the request was sent. It may have been applied.
    #[error("connection error: {0}")]
    Transport(String),
    /// HTTP 401/403, or credentials that cannot be obtained.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A request the service refused as malformed (HTTP 400 and other 4xx).
    #[error("request rejected (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
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

// ---------------------------------------------------------------------------
// Object bodies, for fenced writes (`crate::fence`). The lock itself never uses
// them: lock objects have empty bodies and go through `Backend` alone.
// ---------------------------------------------------------------------------

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt as _, TryStreamExt as _};

/// The bytes of a download, in order; an error ends it.
pub type ByteStream = BoxStream<'static, Result<Bytes, BackendError>>;

/// The body of one upload: a stream read once, and its exact length (GCS needs the
/// length up front to stream a multipart upload without buffering it).
///
/// A stream that yields more or fewer bytes than announced ends with an error
/// instead, so a file that changes while it is uploaded fails the upload rather
/// than writing a torn object.
pub struct UploadBody {
    len: u64,
    content: Content,
}

enum Content {
    /// Already in memory: a transport may send it as one buffer.
    Memory(Bytes),
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadBody")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl UploadBody {
    /// A body already in memory.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self {
            len: bytes.len() as u64,
            content: Content::Memory(bytes),
        }
    }

    /// A body of exactly `len` bytes produced by `stream`.
    pub fn from_stream(
        len: u64,
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            len,
            content: Content::Stream(
                ExactLength {
                    inner: stream.boxed(),
                    expected: len,
                    seen: 0,
                    done: false,
                }
                .boxed(),
            ),
        }
    }

    /// The number of bytes the stream yields.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, if the body was made in memory ([`UploadBody::from_bytes`]);
    /// else the body itself, to stream.
    pub fn into_memory(self) -> Result<Bytes, Self> {
        match self.content {
            Content::Memory(bytes) => Ok(bytes),
            content => Err(Self {
                len: self.len,
                content,
            }),
        }
    }

    /// The bytes, for a transport that streams them.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        match self.content {
            Content::Memory(bytes) => stream::once(async move { Ok(bytes) }).boxed(),
            Content::Stream(stream) => stream,
        }
    }

    /// The whole body in memory, for backends that keep objects in memory anyway.
    pub async fn into_bytes(self) -> io::Result<Bytes> {
        let capacity = usize::try_from(self.len).unwrap_or(0);
        let stream = match self.content {
            Content::Memory(bytes) => return Ok(bytes),
            Content::Stream(stream) => stream,
        };
        let mut chunks: Vec<Bytes> = stream.try_collect().await?;
        if chunks.len() == 1 {
            return Ok(chunks.swap_remove(0));
        }
        let mut all = bytes::BytesMut::with_capacity(capacity);
        for chunk in chunks {
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

/// Ends a stream with an error if it yields more or fewer bytes than `expected`.
struct ExactLength {
    inner: BoxStream<'static, io::Result<Bytes>>,
    expected: u64,
    seen: u64,
    done: bool,
}

impl Stream for ExactLength {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let expected = self.expected;
        Poll::Ready(match item {
            Some(Ok(chunk)) => {
                self.seen += chunk.len() as u64;
                if self.seen > expected {
                    self.done = true;
                    Some(Err(io::Error::other(format!(
                        "the body grew while it was being uploaded: more than the {expected} \
                         bytes announced"
                    ))))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(error)) => {
                self.done = true;
                Some(Err(error))
            }
            None => {
                self.done = true;
                (self.seen < expected).then(|| {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the body ended after {} of the {expected} bytes announced",
                            self.seen
                        ),
                    ))
                })
            }
        })
    }
}

/// A body being downloaded, from exactly one version of an object.
pub struct Download {
    /// The version downloaded.
    pub version: ObjectVersion,
    /// The body's length, when the server said it.
    pub len: Option<u64>,
    /// The body, streamed.
    pub stream: ByteStream,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("version", &self.version)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Object bodies in the same bucket as a [`Backend`]: a conditional upload of body
/// and metadata in one request, and a download pinned to one version. Like
/// `Backend`, each call is exactly one request and never retries; reading metadata
/// is [`Backend::read`].
#[async_trait]
pub trait ObjectBodies: Backend {
    /// Creates or replaces the object `name` with `body`, its custom metadata being
    /// exactly `metadata`, only if `condition` holds (`ifGenerationMatch=0`, or
    /// `ifGenerationMatch=G&ifMetagenerationMatch=M`). A replaced object gets a new
    /// generation. The body is streamed, not buffered, where the transport allows.
    async fn upload(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
        body: UploadBody,
    ) -> Result<Stamped<ObjectInfo>, BackendError>;

    /// Streams the body of `name` if the live object is exactly `expected`:
    /// `PreconditionFailed` if it is another version, `NotFound` if there is none.
    async fn download(&self, name: &str, expected: ObjectVersion)
        -> Result<Download, BackendError>;
}

#[async_trait]
impl ObjectBodies for memory::MemoryBackend {
    async fn upload(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
        body: UploadBody,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        // Everything lives in memory here anyway. A body that cannot be read fails
        // before anything is written, like a broken upload connection.
        let body = body
            .into_bytes()
            .await
            .map_err(|e| BackendError::Transport(format!("cannot read the body to upload: {e}")))?;
        self.put_object(name, Some(condition), metadata, body)
    }

    async fn download(
        &self,
        name: &str,
        expected: ObjectVersion,
    ) -> Result<Download, BackendError> {
        let (info, body) = self.get_object(name)?.value;
        if info.version != expected {
            return Err(BackendError::PreconditionFailed);
        }
        Ok(Download {
            version: info.version,
            len: Some(body.len() as u64),
            stream: stream::once(async move { Ok(body) }).boxed(),
        })
    }
}
