//! A backend wrapper that counts and times every call the library makes. The
//! backends perform exactly one request per call (`list` aside), so a call count is
//! a request count; the emulator's own counters cross-check it.

use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gcslock::backend::{
    Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped, WriteCondition,
};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Write,
    Read,
    Update,
    Delete,
    List,
}

/// One completed call.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub op: Op,
    /// `object_key` of the object (or list prefix) it was about.
    pub object: u64,
    pub start: Instant,
    pub elapsed: Duration,
    pub ok: bool,
    /// Made by a future run inside `in_release`: the caller's own release, as
    /// opposed to a refresh that a keep-alive task sent meanwhile.
    pub in_release: bool,
}

tokio::task_local! {
    static IN_RELEASE: bool;
}

/// Runs `release` so that the calls it makes are marked `in_release`. Refreshes run
/// in the keep-alive tasks, outside this scope, so they stay unmarked even when a
/// release waits for one to finish.
pub async fn in_release<F: Future>(release: F) -> F::Output {
    IN_RELEASE.scope(true, release).await
}

/// A cheap key for an object name, to match calls about the same object.
pub fn object_key(name: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Backend>,
    /// Calls started, by `Op as usize`.
    started: [AtomicU64; 5],
    calls: Mutex<Vec<Call>>,
}

impl Counting {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            started: Default::default(),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Calls of `op` started so far.
    pub fn count(&self, op: Op) -> u64 {
        self.started[op as usize].load(Ordering::Relaxed)
    }

    /// The completed calls logged since the last take, oldest first.
    pub fn take_calls(&self) -> Vec<Call> {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *calls)
    }

    async fn timed<T>(
        &self,
        op: Op,
        name: &str,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        self.started[op as usize].fetch_add(1, Ordering::Relaxed);
        let in_release = IN_RELEASE.try_with(|flag| *flag).unwrap_or(false);
        let start = Instant::now();
        let result = call.await;
        let elapsed = start.elapsed();
        let entry = Call {
            op,
            object: object_key(name),
            start,
            elapsed,
            ok: result.is_ok(),
            in_release,
        };
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
        result
    }
}

#[async_trait]
impl Backend for Counting {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.timed(Op::Write, name, self.inner.write(name, condition, metadata))
            .await
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        self.timed(Op::Read, name, self.inner.read(name)).await
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.timed(
            Op::Update,
            name,
            self.inner.update_metadata(name, expected, metadata),
        )
        .await
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        self.timed(Op::Delete, name, self.inner.delete(name, expected))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Stamped<Vec<ObjectInfo>>, BackendError> {
        self.timed(Op::List, prefix, self.inner.list(prefix)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    /// Forwarded: a wrapper must not hide the store's write-rate floor from `Lock::new`.
    fn min_mutation_interval(&self) -> Option<Duration> {
        self.inner.min_mutation_interval()
    }
}
