//! Retrying the one-shot operations (status, list, break) through transient storage
//! failures, within a time allowed. The acquire and refresh loops have their own
//! rules (bounded by the wait and the lease deadline); these have only a timeout.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::BackendError;
use crate::backoff::Backoff;

/// Shortest and longest pause between attempts. Short at first: a lone 503 should
/// cost an operator a fraction of a second, not the whole timeout.
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(2);

/// The time allowed when the caller gives none: `LockOptions`' default
/// `unavailable_timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The retry budget of one operation: jittered backoff (a 429 slows it down and
/// honours `Retry-After`) until `timeout` after it started.
#[derive(Debug)]
pub(crate) struct Retry {
    backoff: Backoff,
    give_up_at: Instant,
}

impl Retry {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            backoff: Backoff::new(PAUSE_MIN, PAUSE_MAX),
            give_up_at: Instant::now() + timeout,
        }
    }

    /// After a failed attempt: pauses and returns `Ok` if another attempt is worth
    /// making, or gives the error back (not transient, or the time allowed is over).
    /// The last pause ends at the deadline, so the final attempt is made there: a
    /// persistent failure is reported once the timeout has passed, never before.
    pub(crate) async fn pause_or_give_up(
        &mut self,
        error: BackendError,
    ) -> Result<(), BackendError> {
        let now = Instant::now();
        if !error.is_transient() || now >= self.give_up_at {
            return Err(error);
        }
        tracing::debug!(%error, "transient storage error; retrying");
        let wake = (now + self.backoff.next_after(Some(&error))).min(self.give_up_at);
        tokio::time::sleep_until(wake).await;
        Ok(())
    }

    /// Runs `call` until it succeeds, fails for good, or the time allowed is over.
    /// Only for calls that are safe to repeat (reads, listings).
    pub(crate) async fn run<T, F, Fut>(&mut self, mut call: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(error) => self.pause_or_give_up(error).await?,
            }
        }
    }
}
