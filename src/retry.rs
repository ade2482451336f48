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
    /// `None`: a timeout too long for the clock, i.e. no limit (never a panic).
    give_up_at: Option<Instant>,
    started: Instant,
}

impl Retry {
    pub(crate) fn new(timeout: Duration) -> Self {
        let started = Instant::now();
        Self {
            backoff: Backoff::new(PAUSE_MIN, PAUSE_MAX),
            give_up_at: started.checked_add(timeout),
            started,
        }
    }

    /// After a failed attempt: pauses and returns `Ok` if another attempt is worth
    /// making, or gives the error back (not transient, or the time allowed is over).
    /// No attempt starts at or after the deadline: when the pause would reach it, the
    /// error is reported at the deadline instead, never before.
    pub(crate) async fn pause_or_give_up(
        &mut self,
        error: BackendError,
    ) -> Result<(), BackendError> {
        let now = Instant::now();
        if !error.is_transient() || self.give_up_at.is_some_and(|end| now >= end) {
            return Err(error);
        }
        tracing::debug!(%error, "transient storage error; retrying");
        let pause = self.backoff.next_after(Some(&error));
        let wake = now.checked_add(pause).unwrap_or(now);
        match self.give_up_at {
            Some(end) if wake >= end => {
                tokio::time::sleep_until(end).await;
                Err(error)
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                Ok(())
            }
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the time allowed is over.
    /// Each attempt is cut off when the time allowed ends: no request outlives the
    /// budget, whatever the backend's own request timeout.
    /// Only for calls that are safe to repeat (reads, listings).
    pub(crate) async fn run<T, F, Fut>(&mut self, mut call: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        loop {
            let attempt = match self.give_up_at {
                Some(end) => match tokio::time::timeout_at(end, call()).await {
                    Ok(result) => result,
                    Err(_) => Err(BackendError::Timeout(
                        end.saturating_duration_since(self.started),
                    )),
                },
                None => call().await,
            };
            match attempt {
                Ok(value) => return Ok(value),
                Err(error) => self.pause_or_give_up(error).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_answers_ends_at_the_budget() {
        let started = Instant::now();
        let result: Result<(), _> = Retry::new(Duration::from_secs(3))
            .run(std::future::pending)
            .await;
        assert!(
            matches!(result, Err(BackendError::Timeout(_))),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_after_the_deadline() {
        let started = Instant::now();
        let mut attempts = Vec::new();
        // Each attempt fails transiently after 1.9s: the budget of 3s has room for
        // two; a third would start past it.
        let result: Result<(), _> = Retry::new(Duration::from_secs(3))
            .run(|| {
                attempts.push(started.elapsed());
                async {
                    tokio::time::sleep(Duration::from_millis(1900)).await;
                    Err(BackendError::Server {
                        status: 503,
                        message: "unavailable".into(),
                    })
                }
            })
            .await;
        assert!(result.is_err());
        assert!(
            attempts.iter().all(|at| *at < Duration::from_secs(3)),
            "{attempts:?}"
        );
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
