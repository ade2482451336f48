//! The holder's clocks: when a request was sent, and the lease deadline it yields,
//! on the monotonic clock and (on Linux) on CLOCK_BOOTTIME, which keeps counting
//! through a suspend, and on CLOCK_MONOTONIC_RAW, which NTP does not slew.
//!
//! # Clock-rate tolerance
//!
//! The holder trusts its lease until `send time + TTL − m` by its own clock; an
//! observer judges the lock stale at `updated + TTL + m` by the server's clock
//! (`updated` is never before the send), with `m` the default safety margin of
//! the holder's TTL: TTL/10, at least 200 ms, no upper cap. A holder whose clock
//! runs slow by a rate error `r` reaches its deadline after `(TTL − m)(1 + r)` of
//! real time, so it is safe while `(TTL − m)(1 + r) ≤ TTL + m`, that is
//! `r ≤ 2m / (TTL − m)` = **22 %** at m = TTL/10 (more for TTLs under 2 s, where
//! the 200 ms floor rules). The same bound holds against a waiter's own monotonic
//! clock when the server sends no `Date`. NTP daemons slew far less than that
//! (chrony's default maximum is 83,333 ppm = 8.3 %), and the deadline is also kept
//! on CLOCK_MONOTONIC_RAW, which no slew touches: the lease ends by whichever
//! clock says so first.
use std::time::Duration;

use tokio::time::Instant;

/// When a request was sent, on two clocks. tokio's clock is CLOCK_MONOTONIC, which
/// stops while the machine is suspended (laptop sleep, some VM suspends); the lease
/// must also end by CLOCK_BOOTTIME, which keeps counting, so a holder that wakes
/// from a suspend does not trust a lease that ran out while it slept.
/// The unslewed clock counts the same (hardware) rate whatever NTP does, so a
/// misbehaving time daemon cannot stretch the lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendTime {
    pub at: Instant,
    boot: Option<Duration>,
    raw: Option<Duration>,
}

impl SendTime {
    pub(crate) fn now() -> Self {
        Self {
            at: Instant::now(),
            boot: boot_time(),
            raw: raw_time(),
        }
    }
}

/// Time since boot including suspend, where the platform has it.
fn boot_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        read_clock(rustix::time::DynamicClockId::Boottime)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The monotonic clock without NTP's rate adjustments, where the platform has it.
fn raw_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        read_clock(rustix::time::DynamicClockId::Known(
            rustix::time::ClockId::MonotonicRaw,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(target_os = "linux")]
fn read_clock(clock: rustix::time::DynamicClockId<'_>) -> Option<Duration> {
    rustix::time::clock_gettime_dynamic(clock)
        .ok()
        .and_then(|t| {
            Some(Duration::new(
                t.tv_sec.try_into().ok()?,
                t.tv_nsec.try_into().ok()?,
            ))
        })
}

/// `lease` after `at`; if that is beyond what the clock can represent, `at`
/// itself: a deadline that cannot be computed is treated as already passed.
pub(crate) fn instant_after(at: Instant, lease: Duration) -> Instant {
    at.checked_add(lease).unwrap_or(at)
}

/// The same rule for the Linux clocks, read as time since their epoch.
fn reading_after(at: Duration, lease: Duration) -> Duration {
    at.checked_add(lease).unwrap_or(at)
}

/// The end of a lease on every clock: it has passed once any clock says so.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// On tokio's (monotonic) clock.
    pub monotonic: Instant,
    /// The same deadline on CLOCK_BOOTTIME, where available.
    boot: Option<Duration>,
    /// The same deadline on CLOCK_MONOTONIC_RAW, where available.
    raw: Option<Duration>,
}

impl Deadline {
    /// `lease` after `sent`.
    pub(crate) fn after(sent: SendTime, lease: Duration) -> Self {
        Self {
            monotonic: instant_after(sent.at, lease),
            boot: sent.boot.map(|boot| reading_after(boot, lease)),
            raw: sent.raw.map(|raw| reading_after(raw, lease)),
        }
    }

    /// Time left by every clock: the shortest wins.
    pub(crate) fn left(&self) -> Duration {
        let monotonic = self.monotonic.saturating_duration_since(Instant::now());
        let left_on = |deadline: Option<Duration>, now: Option<Duration>| match (deadline, now) {
            (Some(deadline), Some(now)) => deadline.saturating_sub(now),
            _ => Duration::MAX,
        };
        monotonic
            .min(left_on(self.boot, boot_time()))
            .min(left_on(self.raw, raw_time()))
    }

    /// Moves the deadline to `lease` after `sent`, never earlier than it was.
    pub(crate) fn extend(&mut self, sent: SendTime, lease: Duration) {
        let later = Self::after(sent, lease);
        let latest = |old: Option<Duration>, new: Option<Duration>| match (old, new) {
            (Some(old), Some(new)) => Some(old.max(new)),
            (_, new) => new,
        };
        self.monotonic = self.monotonic.max(later.monotonic);
        self.boot = latest(self.boot, later.boot);
        self.raw = latest(self.raw, later.raw);
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
            raw: None,
        };
        assert_eq!(slept.left(), Duration::ZERO);
        let awake = Deadline {
            boot: Some(boot + Duration::from_secs(3600)),
            ..slept
        };
        assert!(awake.left() > Duration::from_secs(50));
    }

    #[test]
    fn a_lease_ends_by_the_unslewed_clock_too() {
        let Some(raw) = raw_time() else {
            return; // no CLOCK_MONOTONIC_RAW on this platform
        };
        // As under an NTP slew that slowed the monotonic clock: it says a minute
        // is left, the unslewed clock says the deadline has passed.
        let slewed = Deadline {
            monotonic: Instant::now() + Duration::from_secs(60),
            boot: None,
            raw: Some(raw.saturating_sub(Duration::from_secs(1))),
        };
        assert_eq!(slewed.left(), Duration::ZERO);
        let mut extended = slewed;
        extended.extend(SendTime::now(), Duration::from_secs(3600));
        assert!(extended.left() > Duration::from_secs(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_too_long_for_the_clock_counts_as_already_over() {
        let sent = SendTime::now();
        let deadline = Deadline::after(sent, Duration::MAX);
        assert_eq!(deadline.left(), Duration::ZERO);
        let mut extended = Deadline::after(sent, Duration::from_secs(10));
        extended.extend(SendTime::now(), Duration::MAX);
        assert!(
            extended.left() <= Duration::from_secs(10),
            "never later than before"
        );
        assert_eq!(instant_after(sent.at, Duration::MAX), sent.at);
    }
}
