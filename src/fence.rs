//! Fenced writes: the storage itself rejects a writer whose lease has passed.
//!
//! No lease lock can stop a holder that pauses (a GC pause, a VM migration,
//! SIGSTOP) and wakes up after its lease has passed to someone else: it still
//! believes it holds the lock and writes. The remedy is a [`FencingToken`] that the
//! *storage* checks. [`FencedObject::write`] writes a GCS object only if the
//! caller's token is at least the highest token recorded on that object (custom
//! metadata [`TOKEN_KEY`]), and both the check and the write are pinned to the
//! object's exact version: the upload is conditioned on the generation and
//! metageneration that were read (`ifGenerationMatch=G&ifMetagenerationMatch=M`, or
//! `ifGenerationMatch=0` when the object is absent), so no other write can slip in
//! between the check and the write.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use gcslock::backend::memory::MemoryBackend;
//! use gcslock::fence::{BodySource, FenceError, FencedObject};
//! use gcslock::{FencingToken, Lock, LockOptions, Wait};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bucket = Arc::new(MemoryBackend::new("my-bucket"));
//! let lock = Lock::new(bucket.clone(), "jobs/nightly.lock", LockOptions::default())?;
//! let report = FencedObject::new(bucket, "reports/nightly.csv")?;
//!
//! let guard = lock.acquire(Wait::For(Duration::from_secs(30))).await?;
//! // Checks the lease, then lets the storage check the token.
//! guard.fenced_write(&report, &BodySource::from("a,b\n1,2\n")).await?;
//!
//! // A holder from before (token 0 < 1), e.g. one that was paused, is refused
//! // by the storage, not by its own belief.
//! let stale = report.write(FencingToken::new(0), &BodySource::from("old")).await;
//! assert!(matches!(
//!     stale,
//!     Err(FenceError::Stale { seen, presented, .. })
//!         if seen == FencingToken::new(1) && presented == FencingToken::new(0)
//! ));
//! assert_eq!(report.read().await?.bytes().await?, "a,b\n1,2\n");
//! # Ok(()) }
//! ```
//!
//! # What is guaranteed
//!
//! For an object written only by fenced writes, on storage that enforces
//! preconditions as GCS documents them (GCS, strict-gcs, `MemoryBackend`):
//!
//! * **Tokens on the object never go down.** Once a fenced write with token `T`
//!   has been applied, no fenced write with a token below `T` is applied after it,
//!   however long its writer was paused between checking and writing: its upload is
//!   conditioned on a version that no longer exists, and the re-read shows `T`. It
//!   fails with [`FenceError::Stale`], which names both tokens.
//! * **A newer token wins, even when it raced an older one.** A write whose
//!   precondition failed because of a concurrent writer with an equal or older token
//!   is retried (read again, checked again, written again), up to
//!   [`FenceOptions::max_attempts`] uploads; then it fails with
//!   [`FenceError::Contended`]. It is never dropped silently: `write` returns `Ok`
//!   only once the object carries this write.
//! * **Equal tokens may rewrite.** The same holder (or several writers sharing one
//!   token, such as the processes of one `gcslock run`) may write again.
//! * **Lost responses are resolved, not guessed.** Each write carries a random nonce
//!   ([`NONCE_KEY`]); after a timeout, a reset or a 5xx the object is read back, and
//!   a write that did apply is recognised by its nonce instead of being repeated.
//! * **Reads are consistent.** [`FencedObject::read`] returns a body and the token
//!   of the write that produced it, from the same version (the download is
//!   conditioned on the version whose metadata was read).
//!
//! # What is not guaranteed
//!
//! * **Fencing orders writes against writes, nothing more.** A stale holder whose
//!   successor has not yet written *this object* still succeeds; the object then
//!   carries the old token until the successor's write replaces it. Side effects of
//!   the critical section other than fenced writes are not fenced at all.
//! * **Readers that ignore the metadata** (`gsutil cat`, other clients) read
//!   whatever is there; only [`FencedObject::read`] reports the token.
//! * **Objects written by other tools** (`gsutil cp`, the console, unconditional
//!   uploads) bypass the check entirely. They normally carry no token and are then
//!   refused as [`FenceError::Unfenced`] (see below); a tool that copies the
//!   metadata along can carry any token.
//! * **Deletes are not fenced.** Deleting the object forgets its highest token: the
//!   next fenced write, with any token, creates it afresh. So do metadata edits that
//!   change [`TOKEN_KEY`].
//! * **Tokens are comparable only within one lock.** Fence an object with the
//!   tokens of the one lock that guards it; nothing records which lock that is.
//! * **Each object is fenced on its own.** Output spread over several objects is not
//!   written atomically: a stale writer may be refused on one object after it
//!   succeeded on another.
//! * **Emulators that ignore preconditions do not fence.** fake-gcs-server ignores
//!   `ifGenerationMatch` on media uploads and `ifMetagenerationMatch` on multipart
//!   uploads (emulators/README.md): fencing cannot be shown, or relied on, there.
//!
//! # Objects without a fencing token
//!
//! An object that exists without [`TOKEN_KEY`] (or with a malformed one) is
//! refused by default with [`FenceError::Unfenced`]. Such an object was written
//! outside the protocol, by another tool, by hand or by a job not yet converted to
//! fenced writes; adopting it silently would hide that, and would let any token,
//! including a stale holder's, overwrite data that the protocol never judged.
//! [`FenceOptions::adopt_unfenced`] opts in explicitly: the object then counts as
//! token 0, and once overwritten it carries a token like any other. A gcslock *lock*
//! object is never adopted: fenced data must live beside its lock, not in it.
//!
//! # Bodies
//!
//! Bodies are streamed, never buffered whole: [`BodySource::File`] is re-opened and
//! streamed for every attempt (an upload retried after a 412 needs the body again),
//! and [`FencedRead`] streams the download. On GCS the upload is one multipart
//! request (metadata and media together, so the token and the data change
//! atomically) with the media part streamed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};

use crate::backend::{
    BackendError, ByteStream, Metadata, ObjectBodies, ObjectInfo, UploadBody, WriteCondition,
};
use crate::backoff::Backoff;
use crate::identity::new_nonce;
use crate::{Error, FencingToken, Guard};

pub use crate::location::ObjectUrl;

/// The custom metadata key holding the token of the write that produced the object.
pub const TOKEN_KEY: &str = "gcslock-fence-token";
/// The custom metadata key holding a random value per fenced write, used to
/// recognise a write whose response was lost.
pub const NONCE_KEY: &str = "gcslock-fence-nonce";

/// How much of a file is read at a time while it is uploaded.
const FILE_CHUNK: usize = 256 * 1024;

/// Why a fenced write or read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The object carries a newer token than the one presented: a newer lock holder
    /// has written it. This write was refused by the storage.
    #[error(
        "stale fencing token: {object} was written with token {seen}, and this write \
         presented token {presented}; a newer lock holder has written it, so this write \
         was refused"
    )]
    Stale {
        /// The object, for messages.
        object: String,
        /// The token the object carries.
        seen: FencingToken,
        /// The older token presented.
        presented: FencingToken,
    },

    /// The object exists without a valid fencing token, and adopting it was not
    /// asked for (or it is a lock object, which is never adopted).
    #[error("{object} is not a fenced object: {why}")]
    Unfenced {
        /// The object, for messages.
        object: String,
        /// Why it is not fenced.
        why: String,
    },

    /// Every attempt found the object replaced before it completed: each upload
    /// lost to a concurrent writer with an equal or older token (its precondition
    /// failed), or each download found a newer version. A write was not applied.
    #[error(
        "{object} kept changing under concurrent writers: each of {attempts} attempts found \
         it replaced before completing (a write is then not applied)"
    )]
    Contended {
        /// The object, for messages.
        object: String,
        /// Uploads attempted.
        attempts: u32,
    },

    /// A read found no object.
    #[error("{object} does not exist")]
    NotFound {
        /// The object, for messages.
        object: String,
    },

    /// The body to upload could not be opened.
    #[error("cannot read the body to upload from {}: {source}", path.display())]
    Body {
        /// The file.
        path: PathBuf,
        #[source]
        /// What went wrong.
        source: io::Error,
    },

    /// An error of the lock library: storage unreachable or failing (after bounded
    /// retries), permission denied, missing bucket, invalid object name, or, when
    /// writing through a [`Guard`], the lease lost before the write was sent.
    #[error(transparent)]
    Lock(#[from] Error),
}

/// A body to upload that can be read again for each attempt.
#[derive(Clone, Debug)]
pub enum BodySource {
    /// Bytes in memory (cheap to clone).
    Bytes(Bytes),
    /// A regular file, re-opened and streamed for every attempt. It must not change
    /// while the write runs: an upload whose length differs from the file's length
    /// at open fails instead of writing a torn object.
    File(PathBuf),
    /// An open regular file (an unnamed temporary file, say), streamed from its
    /// start for every attempt. Each attempt reads at its own explicit offsets, so
    /// a retry never shares a position with an earlier attempt whose body is still
    /// being read, and the handle's own offset is left alone.
    Handle(Arc<std::fs::File>),
}

impl BodySource {
    /// Opens the body for one upload.
    pub async fn open(&self) -> Result<UploadBody, FenceError> {
        let (file, path) = match self {
            Self::Bytes(bytes) => return Ok(UploadBody::from_bytes(bytes.clone())),
            Self::File(path) => {
                let file =
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|source| FenceError::Body {
                            path: path.clone(),
                            source,
                        })?;
                (Arc::new(file.into_std().await), path.clone())
            }
            Self::Handle(handle) => (handle.clone(), PathBuf::from("(an open file)")),
        };
        let len = regular_file_len(&file).map_err(|source| FenceError::Body { path, source })?;
        Ok(UploadBody::from_stream(len, file_chunks(file)))
    }
}

/// The length of a regular file: an upload must announce it before it starts.
fn regular_file_len(file: &std::fs::File) -> io::Result<u64> {
    let stat = file.metadata()?;
    if !stat.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (the length must be known before the upload; copy a pipe \
             to a file first)",
        ));
    }
    Ok(stat.len())
}

impl From<Bytes> for BodySource {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<Vec<u8>> for BodySource {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }
}

impl From<&'static str> for BodySource {
    fn from(text: &'static str) -> Self {
        Self::Bytes(Bytes::from_static(text.as_bytes()))
    }
}

impl From<String> for BodySource {
    fn from(text: String) -> Self {
        Self::Bytes(text.into())
    }
}

/// The file from its start to its end, in chunks read at explicit offsets: never
/// through the file's shared position, which another attempt may be moving.
fn file_chunks(file: Arc<std::fs::File>) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    stream::try_unfold(0_u64, move |offset| {
        let file = file.clone();
        async move {
            let chunk = tokio::task::spawn_blocking(move || read_chunk_at(&file, offset))
                .await
                .map_err(io::Error::other)??;
            if chunk.is_empty() {
                return Ok(None);
            }
            let next = u64::try_from(chunk.len())
                .ok()
                .and_then(|len| offset.checked_add(len))
                .ok_or_else(|| io::Error::other("file offset overflow"))?;
            Ok(Some((chunk, next)))
        }
    })
}

/// Up to `FILE_CHUNK` bytes at `offset`; fewer only at the end of the file.
fn read_chunk_at(file: &std::fs::File, offset: u64) -> io::Result<Bytes> {
    let mut chunk = vec![0; FILE_CHUNK];
    let mut filled = 0;
    while filled < FILE_CHUNK {
        let at = offset
            .checked_add(filled as u64)
            .ok_or_else(|| io::Error::other("file offset overflow"))?;
        match read_at(file, &mut chunk[filled..], at) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    chunk.truncate(filled);
    Ok(chunk.into())
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// Settings of fenced writes and reads.
#[derive(Clone, Debug)]
pub struct FenceOptions {
    adopt_unfenced: bool,
    max_attempts: u32,
    retry_min: Duration,
    retry_max: Duration,
}

impl Default for FenceOptions {
    fn default() -> Self {
        Self {
            adopt_unfenced: false,
            max_attempts: 5,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

impl FenceOptions {
    /// Treat an existing object without a fencing token as token 0 instead of
    /// refusing it with [`FenceError::Unfenced`] (default: refuse). Lock objects are
    /// refused all the same.
    pub fn adopt_unfenced(mut self, adopt: bool) -> Self {
        self.adopt_unfenced = adopt;
        self
    }

    /// How many uploads one write may send before it gives up (default 5, at least
    /// 1); the same bound applies to reads that keep failing transiently and to
    /// downloads that keep finding a newer version.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Bounds of the jittered exponential pause between attempts (default 100 ms to
    /// 2 s; GCS sustains about one write per second per object).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }
}

/// The fencing state of an object, as one read showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// No object: the first fenced write creates it, with any token.
    Absent,
    /// Written by a fenced write with this token.
    Fenced {
        /// The token.
        token: FencingToken,
        /// The object's metadata.
        info: ObjectInfo,
    },
    /// The object exists without a valid fencing token.
    Unfenced {
        /// Why it is not fenced.
        why: String,
        /// A gcslock lock object: never adopted.
        is_lock: bool,
        /// The object's metadata.
        info: ObjectInfo,
    },
}

impl FenceState {
    /// Judges an object's metadata.
    pub fn of(info: Option<ObjectInfo>) -> Self {
        let Some(info) = info else {
            return Self::Absent;
        };
        let is_lock = info.metadata.contains_key(crate::record::KEY_FORMAT);
        let why = match info.metadata.get(TOKEN_KEY) {
            _ if is_lock => "it is a gcslock lock object; fenced data must live in an object \
                             of its own, never in its lock"
                .to_owned(),
            Some(value) => match value.parse::<FencingToken>() {
                Ok(token) => return Self::Fenced { token, info },
                Err(why) => format!("its {TOKEN_KEY} metadata is {why}"),
            },
            None => format!(
                "it has no {TOKEN_KEY} metadata, so it was written outside fenced writes \
                 (by another tool, by hand, or before fencing was used); it is not \
                 overwritten unless adopting unfenced objects is asked for"
            ),
        };
        Self::Unfenced { why, is_lock, info }
    }

    /// The token, for a fenced object.
    pub fn token(&self) -> Option<FencingToken> {
        match self {
            Self::Fenced { token, .. } => Some(*token),
            _ => None,
        }
    }

    /// The object's metadata, if it exists.
    pub fn info(&self) -> Option<&ObjectInfo> {
        match self {
            Self::Absent => None,
            Self::Fenced { info, .. } | Self::Unfenced { info, .. } => Some(info),
        }
    }
}

/// What a fenced write replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Nothing: the write created the object.
    Nothing,
    /// A fenced object with this token.
    Fenced(FencingToken),
    /// An unfenced object, adopted as token 0.
    Unfenced,
}

/// A successful fenced write.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FencedWrite {
    /// The token the object now carries.
    pub token: FencingToken,
    /// What the write replaced.
    pub replaced: Replaced,
    /// The object as written.
    pub info: ObjectInfo,
    /// How many uploads were sent (1 unless some were retried).
    pub attempts: u32,
}

/// A fenced read: the object, the token of the write that produced it, and its body.
pub struct FencedRead {
    /// The object's metadata.
    pub info: ObjectInfo,
    /// `None` for an object without a (valid) fencing token.
    pub token: Option<FencingToken>,
    /// The body's length, when the storage said it.
    pub len: Option<u64>,
    url: String,
    body: ByteStream,
}

impl fmt::Debug for FencedRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedRead")
            .field("url", &self.url)
            .field("token", &self.token)
            .field("len", &self.len)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl FencedRead {
    /// The body, streamed. An error ends the stream; what came before it is not
    /// the whole body.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, FenceError>> {
        let url = self.url;
        self.body
            .map_err(move |error| FenceError::Lock(Error::from_backend(&url, error)))
            .boxed()
    }

    /// The whole body in memory; for small objects.
    pub async fn bytes(self) -> Result<Bytes, FenceError> {
        let chunks: Vec<Bytes> = self.into_stream().try_collect().await?;
        Ok(chunks.concat().into())
    }
}

/// An object written only through fenced writes. Cheap to clone.
#[derive(Clone)]
pub struct FencedObject {
    store: Arc<dyn ObjectBodies>,
    name: String,
    url: String,
    options: FenceOptions,
}

impl fmt::Debug for FencedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedObject")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A validity check run right before each upload (a [`Guard`]'s lease check).
type Check<'a> = &'a (dyn Fn() -> Result<(), Error> + Send + Sync);

impl FencedObject {
    /// The object `name` in `store`'s bucket, with default options. Validates the
    /// name without sending any request.
    pub fn new(store: Arc<dyn ObjectBodies>, name: &str) -> Result<Self, FenceError> {
        crate::validate_object_name(name)?;
        let url = format!("{}/{}", store.describe(), name);
        Ok(Self {
            store,
            name: name.to_owned(),
            url,
            options: FenceOptions::default(),
        })
    }

    /// These options instead of the defaults.
    pub fn with_options(mut self, options: FenceOptions) -> Self {
        self.options = options;
        self
    }

    /// The object's name in its bucket.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the object lives, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads the object's fencing state (metadata only).
    pub async fn inspect(&self) -> Result<FenceState, FenceError> {
        Ok(FenceState::of(self.read_info().await?))
    }

    /// Writes `body` if `token` is at least the token recorded on the object; see
    /// the [module documentation](self) for what that guarantees. Use
    /// [`Guard::fenced_write`] from a held lock; this form is for a writer
    /// that only has the token (another process than the holder, say).
    pub async fn write(
        &self,
        token: FencingToken,
        body: &BodySource,
    ) -> Result<FencedWrite, FenceError> {
        self.write_checked(token, body, &|| Ok(())).await
    }

    /// Reads the body and the token of the write that produced it.
    pub async fn read(&self) -> Result<FencedRead, FenceError> {
        let mut backoff = self.backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(info) = self.read_info().await? else {
                return Err(FenceError::NotFound {
                    object: self.url.clone(),
                });
            };
            let error = match self.store.download(&self.name, info.version).await {
                Ok(download) => {
                    let token = FenceState::of(Some(info.clone())).token();
                    return Ok(FencedRead {
                        info,
                        token,
                        len: download.len,
                        url: self.url.clone(),
                        body: download.stream,
                    });
                }
                // Replaced or deleted between the two requests: look again.
                Err(BackendError::PreconditionFailed | BackendError::NotFound) => None,
                Err(error) if error.is_transient() => Some(error),
                Err(error) => return Err(self.storage(error)),
            };
            if attempts >= self.options.max_attempts {
                return Err(match error {
                    Some(error) => self.storage(error),
                    None => FenceError::Contended {
                        object: self.url.clone(),
                        attempts,
                    },
                });
            }
            tracing::debug!(object = %self.url, attempt = attempts, error = ?error, "fenced read: retrying");
            pause(&mut backoff, error.as_ref()).await;
        }
    }

    async fn write_checked(
        &self,
        token: FencingToken,
        body: &BodySource,
        check: Check<'_>,
    ) -> Result<FencedWrite, FenceError> {
        let nonce = new_nonce();
        let metadata: Metadata = [
            (TOKEN_KEY.to_owned(), token.to_string()),
            (NONCE_KEY.to_owned(), nonce.clone()),
        ]
        .into();
        let mut backoff = self.backoff();
        let mut uploads = 0;
        // The failure of the last upload: `None` for a failed precondition.
        let mut last_failure: Option<BackendError> = None;
        // What the last upload would have replaced, should it turn out applied.
        let mut replacing = Replaced::Nothing;
        loop {
            let current = self.read_info().await?;
            if let Some(info) = current
                .as_ref()
                .filter(|info| uploads > 0 && info.metadata.get(NONCE_KEY) == Some(&nonce))
            {
                // An upload whose response was lost did apply.
                tracing::debug!(object = %self.url, %token, "fenced write: a lost response had applied");
                return Ok(FencedWrite {
                    token,
                    replaced: replacing,
                    info: info.clone(),
                    attempts: uploads,
                });
            }
            let (condition, replaced) = match FenceState::of(current) {
                FenceState::Absent => (WriteCondition::DoesNotExist, Replaced::Nothing),
                FenceState::Fenced { token: seen, info } => {
                    if token < seen {
                        return Err(FenceError::Stale {
                            object: self.url.clone(),
                            seen,
                            presented: token,
                        });
                    }
                    (
                        WriteCondition::Matches(info.version),
                        Replaced::Fenced(seen),
                    )
                }
                FenceState::Unfenced { why, is_lock, info } => {
                    if is_lock || !self.options.adopt_unfenced {
                        return Err(FenceError::Unfenced {
                            object: self.url.clone(),
                            why,
                        });
                    }
                    (WriteCondition::Matches(info.version), Replaced::Unfenced)
                }
            };
            if uploads >= self.options.max_attempts {
                return Err(match last_failure {
                    Some(error) => self.storage(error),
                    None => FenceError::Contended {
                        object: self.url.clone(),
                        attempts: uploads,
                    },
                });
            }
            check()?;
            let upload = body.open().await?;
            uploads += 1;
            replacing = replaced;
            match self
                .store
                .upload(&self.name, condition, &metadata, upload)
                .await
            {
                Ok(written) => {
                    return Ok(FencedWrite {
                        token,
                        replaced,
                        info: written.value,
                        attempts: uploads,
                    })
                }
                Err(BackendError::PreconditionFailed) => {
                    tracing::debug!(object = %self.url, %token, attempt = uploads,
                        "fenced write: the object changed since it was read; reading it again");
                    last_failure = None;
                }
                // Resolved by the read-back at the top of the loop.
                Err(error) if error.is_transient() || error.may_have_applied() => {
                    tracing::debug!(object = %self.url, %token, attempt = uploads, %error,
                        "fenced write: upload failed; reading back before retrying");
                    last_failure = Some(error);
                }
                Err(error) => return Err(self.storage(error)),
            }
            pause(&mut backoff, last_failure.as_ref()).await;
        }
    }

    /// The object's metadata, retrying transient failures a bounded number of times.
    async fn read_info(&self) -> Result<Option<ObjectInfo>, FenceError> {
        let mut backoff = self.backoff();
        let mut failures = 0;
        loop {
            match self.store.read(&self.name).await {
                Ok(read) => return Ok(read.value),
                Err(error) if error.is_transient() && failures + 1 < self.options.max_attempts => {
                    failures += 1;
                    tracing::debug!(object = %self.url, %error, "fenced object: read failed; retrying");
                    pause(&mut backoff, Some(&error)).await;
                }
                Err(error) => return Err(self.storage(error)),
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.options.retry_min, self.options.retry_max)
    }

    fn storage(&self, error: BackendError) -> FenceError {
        FenceError::Lock(Error::from_backend(&self.url, error))
    }
}

async fn pause(backoff: &mut Backoff, error: Option<&BackendError>) {
    backoff.pause_after(error).await;
}

/// Fenced writes from a held lock.
impl Guard {
    /// Writes `body` to `object` with this holder's token. Before each upload the
    /// lease is checked ([`Guard::check`]): a holder that knows its lease is gone
    /// does not write ([`FenceError::Lock`] with [`Error::LeaseLost`]). One that does
    /// not know yet (it was paused) is refused by the storage as
    /// [`FenceError::Stale`] once a newer holder has written the object.
    pub async fn fenced_write(
        &self,
        object: &FencedObject,
        body: &BodySource,
    ) -> Result<FencedWrite, FenceError> {
        object
            .write_checked(self.token(), body, &|| self.check_lease())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ObjectVersion;

    fn info(metadata: &[(&str, &str)]) -> ObjectInfo {
        ObjectInfo {
            name: "o".into(),
            version: ObjectVersion {
                generation: 1,
                metageneration: 1,
            },
            updated: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            created: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn fence_states() {
        assert_eq!(FenceState::of(None), FenceState::Absent);
        let fenced = FenceState::of(Some(info(&[(TOKEN_KEY, "7")])));
        assert_eq!(fenced.token(), Some(FencingToken::new(7)));
        match FenceState::of(Some(info(&[]))) {
            FenceState::Unfenced { why, is_lock, .. } => {
                assert!(!is_lock);
                assert!(why.contains("no gcslock-fence-token"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Only the one form tokens are written in: `+1` and ` 1` were read as 1.
        for bad in ["seven", "+1", " 1", "1 ", "01", "-1"] {
            match FenceState::of(Some(info(&[(TOKEN_KEY, bad)]))) {
                FenceState::Unfenced { why, .. } => {
                    assert!(why.contains("not a fencing token"), "{bad:?}: {why}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // A lock object is never a fenced object, whatever it carries.
        match FenceState::of(Some(info(&[
            (crate::record::KEY_FORMAT, "1"),
            (TOKEN_KEY, "3"),
        ]))) {
            FenceState::Unfenced { is_lock, .. } => assert!(is_lock),
            other => panic!("{other:?}"),
        }
    }

    /// A fresh directory holding a file `body` of `len` patterned bytes.
    fn temp_body(len: usize) -> (PathBuf, PathBuf, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("gcslock-fence-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("body");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        (dir, path, data)
    }

    #[tokio::test]
    async fn file_bodies_stream_in_chunks_and_must_keep_their_length() {
        let (dir, path, data) = temp_body(FILE_CHUNK * 2 + 10);
        let source = BodySource::File(path.clone());
        let body = source.open().await.expect("open");
        assert_eq!(body.len(), data.len() as u64);
        let chunks: Vec<Bytes> = body.into_stream().try_collect().await.expect("read");
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), data);

        // The file grows after it was opened: the upload fails instead of tearing.
        let body = source.open().await.expect("open");
        std::fs::write(&path, [&data[..], b"more"].concat()).expect("grow");
        let error = body.into_bytes().await.expect_err("grew");
        assert!(error.to_string().contains("grew"), "{error}");

        let body = source.open().await.expect("open");
        std::fs::write(&path, b"short").expect("shrink");
        let error = body.into_bytes().await.expect_err("shrank");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");

        let missing = BodySource::File(dir.join("missing")).open().await;
        assert!(
            matches!(missing, Err(FenceError::Body { .. })),
            "{missing:?}"
        );
        let directory = BodySource::File(dir.clone()).open().await;
        assert!(
            matches!(directory, Err(FenceError::Body { .. })),
            "{directory:?}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A retry opens the body again while the earlier attempt's stream may still be
    /// read (its request not yet torn down): each must see exactly the file.
    #[tokio::test]
    async fn attempts_on_one_handle_never_share_a_file_offset() {
        let (dir, path, data) = temp_body(FILE_CHUNK * 3 + 10);
        let source = BodySource::Handle(Arc::new(std::fs::File::open(&path).expect("open")));

        let mut first = source.open().await.expect("first attempt").into_stream();
        let mut first_bytes = first
            .try_next()
            .await
            .expect("read")
            .expect("chunk")
            .to_vec();
        // The retry starts while the first attempt's body is mid-stream.
        let mut second = source.open().await.expect("retry").into_stream();
        let mut second_bytes = Vec::new();
        loop {
            let a = second.try_next().await.expect("retry read");
            let b = first.try_next().await.expect("first read");
            if let Some(chunk) = &a {
                second_bytes.extend_from_slice(chunk);
            }
            if let Some(chunk) = &b {
                first_bytes.extend_from_slice(chunk);
            }
            if a.is_none() && b.is_none() {
                break;
            }
        }
        assert!(
            second_bytes == data,
            "the retry sent other bytes than the file's"
        );
        assert!(
            first_bytes == data,
            "the first attempt's bytes were disturbed"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
