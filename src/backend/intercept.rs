//! The one forwarding wrapper: [`Intercept`] runs a [`Hook`] around every
//! [`Backend`] call and forwards everything else (`describe`,
//! `min_mutation_interval`) unchanged, so no wrapper can forget to forward one.
//!
//! A hook sees the call ([`Call`]) and a future that performs it on the inner
//! backend; it may await that future or not (inject a failure), wait before or after
//! it (delay), count and time it, or rewrite its [`Outcome`] (strip server times).
//! [`super::fault::FaultyBackend`] is such a hook.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

use super::{
    Backend, BackendError, Download, Metadata, ObjectBodies, ObjectInfo, ObjectVersion, Stamped,
    UploadBody, WriteCondition,
};

/// The backend calls, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`Backend::write`].
    Write,
    /// [`Backend::read`].
    Read,
    /// [`Backend::update_metadata`].
    UpdateMetadata,
    /// [`Backend::delete`].
    Delete,
    /// [`Backend::list`].
    List,
}

impl Operation {
    /// Every operation, in declaration order (`op as usize` indexes it).
    pub const ALL: [Self; 5] = [
        Self::Write,
        Self::Read,
        Self::UpdateMetadata,
        Self::Delete,
        Self::List,
    ];
}

/// One backend call and its arguments.
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)] // the fields are the trait methods' arguments, named alike
pub enum Call<'a> {
    Write {
        name: &'a str,
        condition: WriteCondition,
        metadata: &'a Metadata,
    },
    Read {
        name: &'a str,
    },
    UpdateMetadata {
        name: &'a str,
        expected: ObjectVersion,
        metadata: &'a Metadata,
    },
    Delete {
        name: &'a str,
        expected: ObjectVersion,
    },
    List {
        prefix: &'a str,
    },
}

impl Call<'_> {
    /// Which method this call is.
    pub fn operation(&self) -> Operation {
        match self {
            Self::Write { .. } => Operation::Write,
            Self::Read { .. } => Operation::Read,
            Self::UpdateMetadata { .. } => Operation::UpdateMetadata,
            Self::Delete { .. } => Operation::Delete,
            Self::List { .. } => Operation::List,
        }
    }

    /// The object name, or the prefix of a list.
    pub fn object(&self) -> &str {
        match self {
            Self::Write { name, .. }
            | Self::Read { name }
            | Self::UpdateMetadata { name, .. }
            | Self::Delete { name, .. } => name,
            Self::List { prefix } => prefix,
        }
    }
}

/// The result of one backend call, whichever it was.
#[derive(Debug)]
#[allow(missing_docs)] // one variant per operation, holding that method's result
pub enum Outcome {
    Write(Result<Stamped<ObjectInfo>, BackendError>),
    Read(Result<Stamped<Option<ObjectInfo>>, BackendError>),
    UpdateMetadata(Result<Stamped<ObjectInfo>, BackendError>),
    Delete(Result<(), BackendError>),
    List(Result<Vec<Stamped<ObjectInfo>>, BackendError>),
}

impl Outcome {
    /// A failed outcome of `operation`, for a hook that injects `error`.
    pub fn failed(operation: Operation, error: BackendError) -> Self {
        match operation {
            Operation::Write => Self::Write(Err(error)),
            Operation::Read => Self::Read(Err(error)),
            Operation::UpdateMetadata => Self::UpdateMetadata(Err(error)),
            Operation::Delete => Self::Delete(Err(error)),
            Operation::List => Self::List(Err(error)),
        }
    }

    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        match self {
            Self::Write(r) | Self::UpdateMetadata(r) => r.is_ok(),
            Self::Read(r) => r.is_ok(),
            Self::Delete(r) => r.is_ok(),
            Self::List(r) => r.is_ok(),
        }
    }

    /// Every server clock reading the outcome carries (one per listed object), for
    /// a hook that rewrites them.
    pub fn server_times_mut(&mut self) -> Vec<&mut Option<chrono::DateTime<chrono::Utc>>> {
        match self {
            Self::Write(Ok(s)) | Self::UpdateMetadata(Ok(s)) => vec![&mut s.server_time],
            Self::Read(Ok(s)) => vec![&mut s.server_time],
            Self::List(Ok(objects)) => objects.iter_mut().map(|s| &mut s.server_time).collect(),
            _ => Vec::new(),
        }
    }
}

/// What runs around each call of an [`Intercept`].
#[async_trait]
pub trait Hook: Send + Sync + fmt::Debug + 'static {
    /// Handles `call`; `proceed` performs it on the inner backend. The returned
    /// outcome must be of `call`'s operation ([`Outcome::failed`] builds one).
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome;
}

/// A backend that runs `hook` around every call of `inner`. Object bodies
/// ([`ObjectBodies`]) pass through unhooked. It dereferences to its hook, so the
/// hook's own methods (a counter's counts, a fault script) are callable on it.
#[derive(Clone, Debug)]
pub struct Intercept<H> {
    inner: Arc<dyn Backend>,
    hook: H,
    bodies: Option<Arc<dyn ObjectBodies>>,
}

impl<H: Hook + Default> Intercept<H> {
    /// Wraps `inner` with a fresh hook.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self::wrap(inner, H::default())
    }
}

impl<H> std::ops::Deref for Intercept<H> {
    type Target = H;

    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<H: Hook> Intercept<H> {
    /// `inner`, with every call passing through `hook`.
    pub fn wrap(inner: Arc<dyn Backend>, hook: H) -> Self {
        Self {
            inner,
            hook,
            bodies: None,
        }
    }

    /// Wraps a store with object bodies; uploads and downloads reach it unhooked.
    pub fn wrap_bodies(inner: Arc<dyn ObjectBodies>, hook: H) -> Self {
        Self {
            // Through `impl Backend for Arc<T>`: trait upcasting needs Rust 1.86.
            inner: Arc::new(inner.clone()),
            hook,
            bodies: Some(inner),
        }
    }

    /// The hook, to inspect or reconfigure it.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    async fn run(&self, call: Call<'_>) -> Outcome {
        let inner = &self.inner;
        let proceed = async move {
            match call {
                Call::Write {
                    name,
                    condition,
                    metadata,
                } => Outcome::Write(inner.write(name, condition, metadata).await),
                Call::Read { name } => Outcome::Read(inner.read(name).await),
                Call::UpdateMetadata {
                    name,
                    expected,
                    metadata,
                } => Outcome::UpdateMetadata(inner.update_metadata(name, expected, metadata).await),
                Call::Delete { name, expected } => {
                    Outcome::Delete(inner.delete(name, expected).await)
                }
                Call::List { prefix } => Outcome::List(inner.list(prefix).await),
            }
        };
        self.hook.around(call, proceed.boxed()).await
    }
}

/// The error for a hook that answered with another operation's outcome.
fn mismatched(operation: Operation) -> BackendError {
    BackendError::InvalidResponse(format!(
        "a backend hook answered a {operation:?} call with another operation's outcome"
    ))
}

#[async_trait]
impl<H: Hook> Backend for Intercept<H> {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        let call = Call::Write {
            name,
            condition,
            metadata,
        };
        match self.run(call).await {
            Outcome::Write(result) => result,
            _ => Err(mismatched(Operation::Write)),
        }
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        match self.run(Call::Read { name }).await {
            Outcome::Read(result) => result,
            _ => Err(mismatched(Operation::Read)),
        }
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        let call = Call::UpdateMetadata {
            name,
            expected,
            metadata,
        };
        match self.run(call).await {
            Outcome::UpdateMetadata(result) => result,
            _ => Err(mismatched(Operation::UpdateMetadata)),
        }
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        match self.run(Call::Delete { name, expected }).await {
            Outcome::Delete(result) => result,
            _ => Err(mismatched(Operation::Delete)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError> {
        match self.run(Call::List { prefix }).await {
            Outcome::List(result) => result,
            _ => Err(mismatched(Operation::List)),
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn min_mutation_interval(&self) -> Option<Duration> {
        self.inner.min_mutation_interval()
    }
}

#[async_trait]
impl<H: Hook> ObjectBodies for Intercept<H> {
    async fn upload(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
        body: UploadBody,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        match &self.bodies {
            Some(bodies) => bodies.upload(name, condition, metadata, body).await,
            None => Err(no_bodies(&self.inner)),
        }
    }

    async fn download(
        &self,
        name: &str,
        expected: ObjectVersion,
    ) -> Result<Download, BackendError> {
        match &self.bodies {
            Some(bodies) => bodies.download(name, expected).await,
            None => Err(no_bodies(&self.inner)),
        }
    }
}

fn no_bodies(inner: &Arc<dyn Backend>) -> BackendError {
    BackendError::Rejected {
        status: 501,
        message: format!(
            "{} was wrapped without object bodies (use Intercept::wrap_bodies)",
            inner.describe()
        ),
    }
}

/// A shared backend is a backend: `Arc<MemoryBackend>` and `Arc<dyn Backend>` can
/// be passed wherever one is expected, and every call (including
/// `min_mutation_interval`) is forwarded.
#[async_trait]
impl<T: Backend + ?Sized> Backend for Arc<T> {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        (**self).write(name, condition, metadata).await
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        (**self).read(name).await
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        (**self).update_metadata(name, expected, metadata).await
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        (**self).delete(name, expected).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError> {
        (**self).list(prefix).await
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn min_mutation_interval(&self) -> Option<Duration> {
        (**self).min_mutation_interval()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gcs::{GcsBackend, DEFAULT_ENDPOINT};
    use crate::backend::memory::MemoryBackend;

    /// Strips the server's clock readings, as a store without `Date` headers would.
    #[derive(Debug)]
    struct NoDate;

    #[async_trait]
    impl Hook for NoDate {
        async fn around(&self, _call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
            let mut outcome = proceed.await;
            for time in outcome.server_times_mut() {
                *time = None;
            }
            outcome
        }
    }

    /// Answers every call with a list outcome.
    #[derive(Debug)]
    struct Confused;

    #[async_trait]
    impl Hook for Confused {
        async fn around(&self, _call: Call<'_>, _proceed: BoxFuture<'_, Outcome>) -> Outcome {
            Outcome::List(Ok(Vec::new()))
        }
    }

    #[tokio::test]
    async fn hooks_rewrite_outcomes_and_everything_else_is_forwarded() {
        let memory = MemoryBackend::new("m");
        let wrapped = Intercept::wrap(Arc::new(memory.clone()), NoDate);
        let written = wrapped
            .write("a", WriteCondition::DoesNotExist, &Metadata::new())
            .await
            .expect("write");
        assert_eq!(written.server_time, None);
        let listed = wrapped.list("").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed.iter().all(|o| o.server_time.is_none()));
        assert!(memory.read("a").await.expect("read").server_time.is_some());
        assert_eq!(wrapped.describe(), "memory://m");

        // The write-rate floor reaches Lock::new through any number of wrappers.
        let gcs = GcsBackend::builder("bkt")
            .endpoint(Some(DEFAULT_ENDPOINT.into()))
            .build()
            .expect("gcs");
        assert_eq!(gcs.min_mutation_interval(), Some(Duration::from_secs(1)));
        let twice = Intercept::wrap(Arc::new(Intercept::wrap(Arc::new(gcs), NoDate)), NoDate);
        assert_eq!(twice.min_mutation_interval(), Some(Duration::from_secs(1)));
        let shared: Arc<dyn Backend> = Arc::new(twice);
        assert_eq!(shared.min_mutation_interval(), Some(Duration::from_secs(1)));
        assert_eq!(shared.describe(), "gs://bkt");
    }

    #[tokio::test]
    async fn a_hook_answering_the_wrong_operation_is_an_error_not_a_panic() {
        let wrapped = Intercept::wrap(Arc::new(MemoryBackend::new("m")), Confused);
        let error = wrapped.read("a").await.expect_err("mismatch");
        assert!(
            matches!(error, BackendError::InvalidResponse(_)),
            "{error:?}"
        );
        assert!(wrapped.list("").await.expect("list").is_empty());
        let bodies = wrapped
            .download(
                "a",
                ObjectVersion {
                    generation: 1,
                    metageneration: 1,
                },
            )
            .await;
        assert!(matches!(bodies, Err(BackendError::Rejected { .. })));
    }
}
