//! Once per period: the period slot a run belongs to, and the completed slot a
//! lock record carries (PROTOCOL.md §10).
//!
//! Periods are calendar periods of a time zone ([`SlotZone`]), because cron and
//! systemd timers fire by the local wall clock: a slot is `floor(civil / period)`,
//! where `civil` is the local wall-clock reading, in seconds since
//! 1970-01-01T00:00:00 *of that wall clock*, when the run starts. So a `1d` slot
//! is a local calendar day (23 or 25 hours at a daylight-saving change), a period
//! shorter than a day divides the local day (it must divide 24 h evenly), and a
//! period of several days counts local days from 1970-01-01. In UTC this is the
//! epoch-aligned slot of records from before zones were recorded.
//!
//! A wall-clock time that occurs twice (the repeated hour when clocks go back)
//! names one slot: a slot is its civil name, so the repeated hour's slot lasts two
//! real hours and runs once. A wall-clock time that never occurs (the hour skipped
//! when clocks go forward) names no slot: nothing is owed for it, and a run fired
//! just after the change names the slot of the time it starts.
//!
//! The wall clock only names slots; lease expiry never uses it.

mod verdict;
mod zone;

use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, Offset as _, Utc};

use crate::error::Error;

pub(crate) use verdict::SlotCheck;
pub use zone::SlotZone;

/// The shortest period: slots are named in whole seconds.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The longest period (366 days): longer periods are more likely a typo than a
/// schedule, and a lease-based retry window of years is not useful.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * DAY_SECS);
const DAY_SECS: u64 = 24 * 3600;
/// Slots starting after 9999-12-31T23:59:59 (civil) are refused, so every slot's
/// start is a printable RFC 3339 time.
const LAST_START_SECS: u64 = 253_402_300_799;

/// One period of a time zone's calendar: slot `index` of `period` starts at the
/// local wall-clock time `index * period` seconds after 1970-01-01T00:00:00.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use gcslock::once_per::{Slot, SlotZone};
///
/// let hour = Duration::from_secs(3600);
/// // Two machines whose crons fire at 10:00:02 and 10:00:05 name the same slot.
/// let a = Slot::containing_in(UNIX_EPOCH + Duration::from_secs(36_002), hour, SlotZone::UTC)?;
/// let b = Slot::containing_in(UNIX_EPOCH + Duration::from_secs(36_005), hour, SlotZone::UTC)?;
/// assert_eq!(a, b);
/// assert_eq!(a.index(), 10);
/// assert_eq!(a.to_string(), "the 1h slot starting 1970-01-01T10:00:00Z (UTC)");
/// // A period must fit the calendar: 7 minutes does not divide the day.
/// assert!(Slot::containing_in(UNIX_EPOCH, Duration::from_secs(420), SlotZone::UTC).is_err());
/// # Ok::<(), gcslock::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    period_secs: u64,
    index: u64,
    zone: SlotZone,
    /// The first instant of the slot, Unix seconds.
    start_secs: i64,
    /// The zone's UTC offset at that instant, seconds east.
    start_offset: i32,
}

/// Slots are their calendar names: period, zone and index. (The start follows
/// from them by the zone's rules.)
impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        (self.period_secs, self.index, self.zone) == (other.period_secs, other.index, other.zone)
    }
}

impl Eq for Slot {}

impl std::hash::Hash for Slot {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.period_secs, self.index, self.zone).hash(state);
    }
}

impl Slot {
    /// The slot of `period` that contains `time` in this machine's time zone as
    /// cron sees it ([`SlotZone::local`]). See [`Slot::containing_in`].
    pub fn containing(time: SystemTime, period: Duration) -> Result<Self, Error> {
        Self::containing_in(time, period, SlotZone::local()?)
    }

    /// The slot of `period` that contains `time` in `zone`'s calendar. Fails for a
    /// period that does not fit the calendar (whole seconds that divide 24 hours
    /// evenly, or whole days up to [`MAX_PERIOD`]), and for a time before 1970
    /// (a wall clock that is badly wrong).
    pub fn containing_in(
        time: SystemTime,
        period: Duration,
        zone: SlotZone,
    ) -> Result<Self, Error> {
        let period_secs = calendar_period_secs(period)?;
        let before_1970 = || {
            Error::InvalidInput(
                "the wall clock reads a time before 1970, so it cannot name a period slot; \
                 fix the clock"
                    .into(),
            )
        };
        let since_epoch = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| before_1970())?;
        let past_9999 = || {
            Error::InvalidInput(
                "the wall clock reads a time after the year 9999, so it cannot name a period \
                 slot; fix the clock"
                    .into(),
            )
        };
        let instant = i64::try_from(since_epoch.as_secs())
            .ok()
            .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
            .ok_or_else(past_9999)?;
        let rules = zone.rules()?;
        let civil = instant
            .as_second()
            .checked_add(i64::from(rules.to_offset(instant).seconds()))
            .ok_or_else(past_9999)?;
        let civil = u64::try_from(civil).map_err(|_| before_1970())?;
        Self::with_rules(period_secs, civil / period_secs, zone, &rules)
    }

    /// Slot `index` of `period` in UTC (epoch-aligned, as records from before zones
    /// were recorded name it): any whole number of seconds from [`MIN_PERIOD`] to
    /// [`MAX_PERIOD`]. Fails if the slot would start after the year 9999.
    pub fn new(period: Duration, index: u64) -> Result<Self, Error> {
        Self::with_rules(
            period_secs(period)?,
            index,
            SlotZone::UTC,
            &jiff::tz::TimeZone::UTC,
        )
    }

    /// Slot `index` of `period` in `zone`'s calendar, with the checks of
    /// [`Slot::containing_in`].
    pub fn in_zone(period: Duration, index: u64, zone: SlotZone) -> Result<Self, Error> {
        Self::with_rules(calendar_period_secs(period)?, index, zone, &zone.rules()?)
    }

    fn with_rules(
        period_secs: u64,
        index: u64,
        zone: SlotZone,
        rules: &jiff::tz::TimeZone,
    ) -> Result<Self, Error> {
        let too_late = || {
            Error::InvalidInput(format!(
                "slot {index} of a {period_secs}s period would start after the year 9999"
            ))
        };
        let civil_start = index
            .checked_mul(period_secs)
            .filter(|start| *start <= LAST_START_SECS)
            .and_then(|start| i64::try_from(start).ok())
            .and_then(|start| jiff::Timestamp::from_second(start).ok())
            .ok_or_else(too_late)?;
        // The wall-clock time the slot starts at, and its first instant: in a gap
        // (clocks went forward) the time just after it, in a fold (clocks went back)
        // the first of the two.
        let wall = jiff::tz::TimeZone::UTC.to_datetime(civil_start);
        let start = rules
            .to_ambiguous_timestamp(wall)
            .compatible()
            .map_err(|_| too_late())?;
        Ok(Self {
            period_secs,
            index,
            zone,
            start_secs: start.as_second(),
            start_offset: rules.to_offset(start).seconds(),
        })
    }

    /// A slot as a record carries it: the period, index and zone name, and the
    /// local start the writer computed. The zone need not be in this machine's
    /// database; the start must be the slot's own (its wall-clock reading names
    /// the slot).
    pub(crate) fn recorded(
        period_secs: u64,
        index: u64,
        zone: SlotZone,
        local_start: DateTime<FixedOffset>,
    ) -> Result<Self, String> {
        let slot = Self::new(Duration::from_secs(period_secs), index).map_err(|e| e.to_string())?;
        let start_offset = local_start.offset().local_minus_utc();
        let start_secs = local_start.timestamp();
        let names_the_slot = start_secs
            .checked_add(i64::from(start_offset))
            .and_then(|civil| u64::try_from(civil).ok())
            .is_some_and(|civil| civil / period_secs == index);
        if !names_the_slot {
            return Err(format!(
                "its local start {} is not in slot {index} of a {period_secs}s period",
                local_start.to_rfc3339()
            ));
        }
        Ok(Self {
            zone,
            start_secs,
            start_offset,
            ..slot
        })
    }

    /// The period length.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// The slot's number: whole periods of the zone's wall clock since
    /// 1970-01-01T00:00:00 of that wall clock.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The time zone whose calendar the slot belongs to.
    pub fn zone(&self) -> SlotZone {
        self.zone
    }

    /// The slot's first instant.
    pub fn start(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.start_secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The slot's first instant as the zone's wall clock reads it.
    pub fn local_start(&self) -> DateTime<FixedOffset> {
        // Offsets come from the zone rules or a checked record: within a day.
        let offset = FixedOffset::east_opt(self.start_offset).unwrap_or_else(|| Utc.fix());
        self.start().with_timezone(&offset)
    }

    /// Whether a completion of `self` means `other` is done too: the same period
    /// and zone, and a slot at least as late. A completion recorded for another
    /// period or zone never counts.
    pub fn covers(&self, other: &Slot) -> bool {
        self.period_secs == other.period_secs
            && self.zone == other.zone
            && self.index >= other.index
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} slot starting {} ({})",
            period_text(self.period()),
            self.local_start()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.zone
        )
    }
}

/// A period as one writes it: `1d`, `1h30m`, `10s` (not `1day`).
pub(crate) fn period_text(period: Duration) -> String {
    let secs = period.as_secs();
    let parts = [
        (secs / DAY_SECS, "d"),
        (secs % DAY_SECS / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let text: String = parts
        .iter()
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text
    }
}

fn period_secs(period: Duration) -> Result<u64, Error> {
    if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) || period.subsec_nanos() != 0 {
        return Err(Error::InvalidInput(format!(
            "period {} must be a whole number of seconds between {} and {}",
            crate::duration_text::written(period),
            crate::duration_text::written(MIN_PERIOD),
            crate::duration_text::written(MAX_PERIOD)
        )));
    }
    Ok(period.as_secs())
}

/// A period that fits the calendar: it divides the day evenly, or is whole days.
fn calendar_period_secs(period: Duration) -> Result<u64, Error> {
    let secs = period_secs(period)?;
    if DAY_SECS.is_multiple_of(secs) || secs.is_multiple_of(DAY_SECS) {
        return Ok(secs);
    }
    Err(Error::InvalidInput(format!(
        "period {} does not fit the calendar: a period shorter than a day must divide 24h \
         evenly (such as 1m, 5m, 10m, 15m, 20m, 30m, 1h, 2h, 3h, 4h, 6h, 8h, 12h), and a \
         longer one must be whole days",
        crate::duration_text::written(period)
    )))
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
    fn periods_are_printed_as_written() {
        for (secs, text) in [
            (86_400, "1d"),
            (7 * 86_400, "7d"),
            (5400, "1h30m"),
            (10, "10s"),
        ] {
            assert_eq!(period_text(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn start_is_index_times_period() {
        let slot = Slot::new(Duration::from_secs(60), 3).unwrap();
        assert_eq!(slot.start().timestamp(), 180);
        assert_eq!(
            slot.to_string(),
            "the 1m slot starting 1970-01-01T00:03:00Z (UTC)"
        );
    }
}
