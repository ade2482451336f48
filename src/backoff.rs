//! Jittered exponential backoff for retries after failures, the steady jittered poll
//! of waiters while a holder is alive, and the one rule for a rate-limited (429)
//! answer: slow down, then wait.

use std::time::Duration;

use rand::Rng as _;

use crate::backend::BackendError;

/// The longest `Retry-After` honoured. A server (or a proxy) may send any number;
/// beyond this the lease deadline or the caller's wait governs, not the header.
pub(crate) const RETRY_AFTER_CEILING: Duration = Duration::from_secs(60);

/// How often a waiter polls a lock held by a live holder, unless its poll bounds
/// say otherwise ([`steady_poll`]). A poller at r reads/s sees a release 1/(2r)
/// later on average, so 1/s gives about 0.5 s, and costs one class B operation
/// per second per waiter; writing faster than about 1/s to one object is refused
/// by GCS anyway, so polling faster would buy little after a release.
pub(crate) const STEADY_POLL: Duration = Duration::from_secs(1);

/// The waiters' steady poll interval: [`STEADY_POLL`] within the lock's poll bounds.
pub(crate) fn steady_poll(min: Duration, max: Duration) -> Duration {
    STEADY_POLL.min(max).max(min)
}

/// One pause of the steady poll: `interval` ± 20 % (uniform), so the mean rate is
/// 1/interval and waiters that started together drift apart.
pub(crate) fn jittered_poll(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.8..=1.2))
}

/// One pause of a poll that must never be longer than `interval` (observers):
/// 80 % to 100 % of it.
pub(crate) fn jittered_below(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.8..=1.0))
}

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
        self.current = self.current.saturating_mul(2).min(self.max);
        half.saturating_add(jitter)
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

    /// 429: back off harder, and at least as long as the server asked (up to
    /// [`RETRY_AFTER_CEILING`]).
    fn slow_down(&mut self, retry_after: Option<Duration>) {
        self.current = self.current.saturating_mul(2).min(self.max);
        if let Some(after) = retry_after {
            self.current = self.current.max(after.min(RETRY_AFTER_CEILING));
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

    #[test]
    fn the_steady_poll_averages_its_interval_within_twenty_percent() {
        let second = Duration::from_secs(1);
        assert_eq!(
            steady_poll(Duration::from_millis(250), Duration::from_secs(8)),
            second
        );
        assert_eq!(
            steady_poll(Duration::from_millis(50), Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        assert_eq!(
            steady_poll(Duration::from_secs(2), Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        let pauses: Vec<Duration> = (0..10_000).map(|_| jittered_poll(second)).collect();
        assert!(pauses
            .iter()
            .all(|p| *p >= second.mul_f64(0.8) && *p <= second.mul_f64(1.2)));
        let mean = pauses.iter().sum::<Duration>() / 10_000;
        assert!(
            mean > Duration::from_millis(980) && mean < Duration::from_millis(1020),
            "{mean:?}"
        );
    }

    #[test]
    fn an_absurd_retry_after_is_capped_and_never_overflows() {
        for absurd in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(1 << 40),
        ] {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            let limited = BackendError::RateLimited {
                retry_after: Some(absurd),
            };
            for _ in 0..100 {
                let delay = backoff.next_after(Some(&limited));
                assert!(delay <= RETRY_AFTER_CEILING, "{delay:?}");
                assert!(delay >= RETRY_AFTER_CEILING / 2, "{delay:?}");
            }
            // And it comes back down to its own bounds once the server stops asking.
            backoff.next();
            assert!(backoff.next() <= Duration::from_secs(1));
        }
        // Bounds that are themselves absurd saturate instead of overflowing.
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            assert!(huge.next_after(None) >= Duration::MAX / 2);
        }
    }
}
