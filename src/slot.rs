//! Once per period: the period slot a run belongs to, and the completed slot a
//! lock record carries (PROTOCOL.md §10).
//!
//! A slot is `floor(unix_time / period)` of the wall clock of the machine that
//! starts the run: the clock that made its cron fire, so machines whose clocks
//! disagree by seconds still agree on the slot when their crons fire at or after
//! the period boundary. The wall clock only names slots; lease expiry never uses it.

use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::error::Error;

/// The shortest period: slots are named in whole seconds.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The longest period (366 days): longer periods are more likely a typo than a
/// schedule, and a lease-based retry window of years is not useful.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// Slots starting after 9999-12-31T23:59:59Z are refused, so every slot's start
/// is a printable RFC 3339 time.
const LAST_START_SECS: u64 = 253_402_300_799;

/// One period-long window of wall-clock time: slot `index` of `period` starts at
/// `index * period` seconds after the Unix epoch.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use gcslock::once_per::Slot;
///
/// let hour = Duration::from_secs(3600);
/// // Two machines whose crons fire at 10:00:02 and 10:00:05 name the same slot.
/// let a = Slot::containing(UNIX_EPOCH + Duration::from_secs(36_002), hour)?;
/// let b = Slot::containing(UNIX_EPOCH + Duration::from_secs(36_005), hour)?;
/// assert_eq!(a, b);
/// assert_eq!(a.index(), 10);
/// assert_eq!(a.start().to_rfc3339(), "1970-01-01T10:00:00+00:00");
/// assert!(Slot::containing(SystemTime::now(), Duration::ZERO).is_err());
/// # Ok::<(), gcslock::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    period_secs: u64,
    index: u64,
}

impl Slot {
    /// The slot of `period` that contains `time`. Fails for a period that is not a
    /// whole number of seconds between [`MIN_PERIOD`] and [`MAX_PERIOD`], and for a
    /// time before 1970 (a wall clock that is badly wrong).
    pub fn containing(time: SystemTime, period: Duration) -> Result<Self, Error> {
        let period_secs = period_secs(period)?;
        let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| {
            Error::InvalidInput(
                "the wall clock reads a time before 1970, so it cannot name a period slot; \
                 fix the clock"
                    .into(),
            )
        })?;
        let index = since_epoch.as_secs() / period_secs;
        Self::from_parts(period_secs, index)
    }

    /// Slot `index` of `period`, with the same checks as [`Slot::containing`]; also
    /// fails if the slot would start after the year 9999.
    pub fn new(period: Duration, index: u64) -> Result<Self, Error> {
        Self::from_parts(period_secs(period)?, index)
    }

    fn from_parts(period_secs: u64, index: u64) -> Result<Self, Error> {
        let start = index
            .checked_mul(period_secs)
            .filter(|start| *start <= LAST_START_SECS);
        if start.is_none() {
            return Err(Error::InvalidInput(format!(
                "slot {index} of a {period_secs}s period would start after the year 9999"
            )));
        }
        Ok(Self { period_secs, index })
    }

    /// The period length.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// The slot's number: whole periods since the Unix epoch.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// When the slot starts.
    pub fn start(&self) -> DateTime<Utc> {
        // Checked at construction: the product fits and is a valid timestamp.
        let secs = self
            .index
            .saturating_mul(self.period_secs)
            .min(LAST_START_SECS);
        i64::try_from(secs)
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether a completion of `self` means `other` is done too: the same period
    /// and a slot at least as late. A completion recorded for another period never
    /// counts.
    pub fn covers(&self, other: &Slot) -> bool {
        self.period_secs == other.period_secs && self.index >= other.index
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} slot starting {}",
            humantime::format_duration(self.period()),
            self.start()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

fn period_secs(period: Duration) -> Result<u64, Error> {
    if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) || period.subsec_nanos() != 0 {
        return Err(Error::InvalidInput(format!(
            "period {} must be a whole number of seconds between {} and {}",
            humantime::format_duration(period),
            humantime::format_duration(MIN_PERIOD),
            humantime::format_duration(MAX_PERIOD)
        )));
    }
    Ok(period.as_secs())
}

/// A slot that a run completed: recorded in the lock by the release that followed
/// the successful run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompletedSlot {
    /// The slot.
    pub slot: Slot,
    /// When the completing release was written, by the storage server's clock.
    pub completed_at: DateTime<Utc>,
    /// The identity of the holder that completed it.
    pub completed_by: String,
}

impl fmt::Display for CompletedSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} was completed at {} by {}",
            self.slot,
            self.completed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.completed_by
        )
    }
}

/// The outcome of [`crate::Acquire::once_per`].
#[derive(Debug)]
#[must_use = "an acquired guard must be released (with `release_completed` once the work succeeded)"]
pub enum SlotAcquire {
    /// The slot is not completed yet and the lock is ours: do the work, then
    /// [`crate::once_per::PeriodGuard::release_completed`].
    Acquired(crate::once_per::PeriodGuard),
    /// The slot (or a later one of the same period) is already completed; nothing
    /// was written.
    AlreadyDone(CompletedSlot),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_index_times_period() {
        let slot = Slot::new(Duration::from_secs(60), 3).unwrap();
        assert_eq!(slot.start().timestamp(), 180);
        assert_eq!(
            slot.to_string(),
            "the 1m slot starting 1970-01-01T00:03:00Z"
        );
    }
}
