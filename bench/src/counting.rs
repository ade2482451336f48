//! A backend wrapper that counts and times every call the library makes. The
//! backends perform exactly one request per call (`list` aside), so a call count is
//! a request count; the emulator's own counters cross-check it.

use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
pub use gcslock::backend::intercept::Operation as Op;
use gcslock::backend::intercept::{Call as BackendCall, Hook, Intercept, Outcome};
use gcslock::backend::Backend;
use tokio::time::Instant;

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

/// A backend that counts and logs every call ([`Counter`] on an [`Intercept`]).
pub type Counting = Intercept<Counter>;

#[derive(Debug, Default)]
pub struct Counter {
    /// Calls started, by `Op as usize`.
    started: [AtomicU64; Op::ALL.len()],
    calls: Mutex<Vec<Call>>,
}

impl Counter {
    /// `inner`, counted.
    pub fn wrap(inner: Arc<dyn Backend>) -> Arc<Counting> {
        Arc::new(Intercept::wrap(inner, Self::default()))
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
}

#[async_trait]
impl Hook for Counter {
    async fn around(&self, call: BackendCall<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        let op = call.operation();
        self.started[op as usize].fetch_add(1, Ordering::Relaxed);
        let in_release = IN_RELEASE.try_with(|flag| *flag).unwrap_or(false);
        let start = Instant::now();
        let outcome = proceed.await;
        let entry = Call {
            op,
            object: object_key(call.object()),
            start,
            elapsed: start.elapsed(),
            ok: outcome.is_ok(),
            in_release,
        };
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
        outcome
    }
}
