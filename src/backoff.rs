//! Jittered exponential backoff for waiters and retries, and the one rule for a
//! rate-limited (429) answer: slow down, then wait.

use std::time::Duration;

use rand::Rng as _;

use crate::backend::BackendError;

/// Jittered exponential backoff ("equal jitter": half fixed, half random), so
/// waiters that started together spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            current: min,
            max: max.max(min),
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let half = self.current / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=half);
        self.current = (self.current * 2).min(self.max);
        half + jitter
    }

    /// The delay before retrying after `failure` (`None`: a failure that is no
    /// storage error, such as a lost race). A 429 first slows the backoff down.
    pub(crate) fn next_after(&mut self, failure: Option<&BackendError>) -> Duration {
        if let Some(BackendError::RateLimited { retry_after }) = failure {
            self.slow_down(*retry_after);
        }
        self.next()
    }

    /// Sleeps for [`Backoff::next_after`].
    pub(crate) async fn pause_after(&mut self, failure: Option<&BackendError>) {
        tokio::time::sleep(self.next_after(failure)).await;
    }

    /// 429: back off harder, and at least as long as the server asked.
    fn slow_down(&mut self, retry_after: Option<Duration>) {
        self.current = (self.current * 2).min(self.max);
        if let Some(after) = retry_after {
            self.current = self.current.max(after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let delay = backoff.next();
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
        }
        assert!(backoff.next() >= Duration::from_millis(500));
        backoff.slow_down(Some(Duration::from_secs(5)));
        assert!(backoff.next() >= Duration::from_millis(2500));
    }
}
