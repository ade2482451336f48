//! The holder's clocks: when a request was sent, and the lease deadline it yields,
//! on the monotonic clock and (on Linux) on CLOCK_BOOTTIME, which keeps counting
//! through a suspend.

use std::time::Duration;

use tokio::time::Instant;

/// When a request was sent, on two clocks. tokio's clock is CLOCK_MONOTONIC, which
/// stops while the machine is suspended (laptop sleep, some VM suspends); the lease
/// must also end by CLOCK_BOOTTIME, which keeps counting, so a holder that wakes
/// from a suspend does not trust a lease that ran out while it slept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendTime {
    pub at: Instant,
    boot: Option<Duration>,
}

impl SendTime {
    pub(crate) fn now() -> Self {
        Self {
            at: Instant::now(),
            boot: boot_time(),
        }
    }
}

/// Time since boot including suspend, where the platform has it.
fn boot_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        rustix::time::clock_gettime_dynamic(rustix::time::DynamicClockId::Boottime)
            .ok()
            .and_then(|t| {
                Some(Duration::new(
                    t.tv_sec.try_into().ok()?,
                    t.tv_nsec.try_into().ok()?,
                ))
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The end of a lease on both clocks: it has passed once either clock says so.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// On tokio's (monotonic) clock.
    pub monotonic: Instant,
    /// The same deadline on CLOCK_BOOTTIME, where available.
    boot: Option<Duration>,
}

impl Deadline {
    /// `lease` after `sent`.
    pub(crate) fn after(sent: SendTime, lease: Duration) -> Self {
        Self {
            monotonic: sent.at + lease,
            boot: sent.boot.map(|boot| boot + lease),
        }
    }

    /// Time left by both clocks: the shorter wins.
    pub(crate) fn left(&self) -> Duration {
        let monotonic = self.monotonic.saturating_duration_since(Instant::now());
        match (self.boot, boot_time()) {
            (Some(deadline), Some(now)) => monotonic.min(deadline.saturating_sub(now)),
            _ => monotonic,
        }
    }

    /// Moves the deadline to `lease` after `sent`, never earlier than it was.
    pub(crate) fn extend(&mut self, sent: SendTime, lease: Duration) {
        self.monotonic = self.monotonic.max(sent.at + lease);
        self.boot = match (self.boot, sent.boot) {
            (Some(old), Some(boot)) => Some(old.max(boot + lease)),
            (_, boot) => boot.map(|boot| boot + lease),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_by_the_boot_clock_too() {
        let Some(boot) = boot_time() else {
            return; // no CLOCK_BOOTTIME on this platform: the monotonic clock alone rules
        };
        // As after a suspend: the monotonic clock says a minute is left, the boot clock
        // says the deadline passed while the machine slept.
        let slept = Deadline {
            monotonic: Instant::now() + Duration::from_secs(60),
            boot: Some(boot.saturating_sub(Duration::from_secs(1))),
        };
        assert_eq!(slept.left(), Duration::ZERO);
        let awake = Deadline {
            boot: Some(boot + Duration::from_secs(3600)),
            ..slept
        };
        assert!(awake.left() > Duration::from_secs(50));
    }
}
