//! Whether the completion a lock records counts for this run's slot, and the
//! warnings when it might seem to but does not (PROTOCOL.md §10).
//!
//! No clock is trusted blindly: a completion of a slot that starts after the
//! storage server's `Date` (beyond [`CLOCK_TOLERANCE`]) was recorded by a machine
//! whose clock is fast, and silencing the fleet on its word would skip real work;
//! it does not count. Every doubt resolves to running, never to skipping.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use super::{CompletedSlot, Slot};

/// How far a clock may be from the storage server's before gcslock distrusts
/// (a completion) or warns (this machine's own clock). Wide enough for any NTP-run
/// clock and for the server's whole-second `Date`; narrow next to any period a
/// schedule would use.
pub(crate) const CLOCK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a recorded completion does not count for this run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotCounted {
    /// It is of another period (two schedules share one lock).
    OtherPeriod,
    /// It is of another time zone's calendar.
    OtherZone,
    /// Its slot starts this long after the storage server's clock.
    Ahead(Duration),
}

/// What the recorded completion means for this run's slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Our slot (or a later one) is done: the command does not run.
    Done,
    /// An earlier slot, or none: run.
    Open,
    /// A completion that does not count: run, and say why.
    NotCounted(NotCounted),
}

/// Judges the completion `done` for our slot, by the server's clock reading taken
/// with it (`None`: the response had no `Date`, and the start cannot be checked).
pub(crate) fn judge(ours: &Slot, done: &Slot, server_time: Option<DateTime<Utc>>) -> Verdict {
    if done.period_secs != ours.period_secs {
        return Verdict::NotCounted(NotCounted::OtherPeriod);
    }
    if done.zone != ours.zone {
        return Verdict::NotCounted(NotCounted::OtherZone);
    }
    if !done.covers(ours) {
        return Verdict::Open;
    }
    let ahead = server_time.and_then(|now| (done.start() - now).to_std().ok());
    match ahead {
        Some(ahead) if ahead > CLOCK_TOLERANCE => Verdict::NotCounted(NotCounted::Ahead(ahead)),
        _ => Verdict::Done,
    }
}

/// How far `local` is from `server`, if more than [`CLOCK_TOLERANCE`]: the
/// distance, and whether `local` is ahead.
pub(crate) fn clock_skew(local: SystemTime, server: DateTime<Utc>) -> Option<(Duration, bool)> {
    let server = SystemTime::from(server);
    let (skew, ahead) = match local.duration_since(server) {
        Ok(ahead) => (ahead, true),
        Err(behind) => (behind.duration(), false),
    };
    (skew > CLOCK_TOLERANCE).then_some((skew, ahead))
}

/// The slot an acquire asked for, and the warnings it has given: each kind once
/// per acquire, however often a waiter looks.
#[derive(Debug)]
pub(crate) struct SlotCheck {
    pub slot: Slot,
    warned: AtomicU8,
}

const WARNED_SKEW: u8 = 1;
const WARNED_UNREADABLE: u8 = 2;
const WARNED_NOT_COUNTED: u8 = 4;

impl SlotCheck {
    pub(crate) fn new(slot: Slot) -> Self {
        Self {
            slot,
            warned: AtomicU8::new(0),
        }
    }

    /// Warns (once) if this machine's clock is far from the server's reading
    /// `server_time`, taken with the inspect of an acquire.
    pub(crate) fn check_clock(&self, lock: &str, server_time: Option<DateTime<Utc>>) {
        let Some((skew, ahead)) = server_time.and_then(|now| clock_skew(SystemTime::now(), now))
        else {
            return;
        };
        if self.first(WARNED_SKEW) {
            tracing::warn!(
                lock,
                "this machine's clock is {} {} the storage server's (more than {}): \
                 periods are still named by this machine's clock, the one that fired this \
                 run; check its time synchronisation",
                whole_seconds(skew),
                if ahead { "ahead of" } else { "behind" },
                whole_seconds(CLOCK_TOLERANCE)
            );
        }
    }

    /// The completion that makes our slot done, if any. `recorded` is the lock's
    /// last completion, `unreadable` why its keys could not be read; warns about
    /// completions that do not count.
    pub(crate) fn done(
        &self,
        lock: &str,
        recorded: Option<CompletedSlot>,
        unreadable: Option<String>,
        server_time: Option<DateTime<Utc>>,
    ) -> Option<CompletedSlot> {
        let ours = &self.slot;
        if let Some(why) = unreadable {
            if self.first(WARNED_UNREADABLE) {
                tracing::warn!(
                    lock,
                    "the lock's completed-slot keys are unreadable, so they are \
                     ignored and this run proceeds: {why}"
                );
            }
        }
        let done = recorded?;
        let why = match judge(ours, &done.slot, server_time) {
            Verdict::Done => return Some(done),
            Verdict::Open => return None,
            Verdict::NotCounted(why) => why,
        };
        if self.first(WARNED_NOT_COUNTED) {
            // Raw: whoever prints it escapes it (the CLI escapes whole log lines).
            let what = format!("{} completed by \"{}\"", done.slot, done.completed_by);
            match why {
                NotCounted::OtherPeriod => tracing::warn!(
                    lock,
                    "this run's period is {}, but the lock's last completion is of \
                     period {} ({what}): mixing periods on one lock, it does not count, and \
                     this run's completion replaces it; use one lock object per schedule",
                    super::period_text(ours.period()),
                    super::period_text(done.slot.period())
                ),
                NotCounted::OtherZone => tracing::warn!(
                    lock,
                    "this run's periods are in time zone {}, but the lock's last \
                     completion is in {} ({what}): it does not count, so this run proceeds; \
                     give every machine the same --timezone",
                    ours.zone,
                    done.slot.zone
                ),
                NotCounted::Ahead(ahead) => tracing::warn!(
                    lock,
                    "the lock's last completion ({what}) is of a slot that starts {} \
                     after the storage server's clock (more than {}): it does not count, so \
                     this run proceeds; check the clock of \"{}\"",
                    whole_seconds(ahead),
                    whole_seconds(CLOCK_TOLERANCE),
                    done.completed_by
                ),
            }
        }
        None
    }

    /// Whether the warning `kind` has not been given yet (and marks it given).
    fn first(&self, kind: u8) -> bool {
        self.warned.fetch_or(kind, Ordering::Relaxed) & kind == 0
    }
}

/// A duration for a message, in whole seconds as one writes it ("23h59m58s").
fn whole_seconds(duration: Duration) -> String {
    super::period_text(Duration::from_secs(duration.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::SlotZone;

    const HOUR: Duration = Duration::from_secs(3600);

    fn hour(index: u64) -> Slot {
        Slot::new(HOUR, index).unwrap()
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(secs, 0)
    }

    #[test]
    fn a_completion_counts_for_its_slot_and_earlier_ones_of_its_calendar() {
        let now = at(10 * 3600 + 60);
        assert_eq!(judge(&hour(10), &hour(10), now), Verdict::Done);
        assert_eq!(judge(&hour(9), &hour(10), now), Verdict::Done);
        assert_eq!(judge(&hour(11), &hour(10), now), Verdict::Open);
        let half = Slot::new(Duration::from_secs(1800), 20).unwrap();
        assert_eq!(
            judge(&half, &hour(10), now),
            Verdict::NotCounted(NotCounted::OtherPeriod)
        );
        let Ok(paris) = SlotZone::named("Europe/Paris") else {
            return; // no zone database
        };
        let paris_slot = Slot::in_zone(HOUR, 10, paris).unwrap();
        assert_eq!(
            judge(&paris_slot, &hour(10), now),
            Verdict::NotCounted(NotCounted::OtherZone)
        );
    }

    #[test]
    fn a_completion_ahead_of_the_server_clock_does_not_count() {
        // Recorded by a machine a day fast: slot 34 starts 24 h after the server's now.
        let now = at(10 * 3600 + 60);
        assert_eq!(
            judge(&hour(10), &hour(34), now),
            Verdict::NotCounted(NotCounted::Ahead(Duration::from_secs(24 * 3600 - 60)))
        );
        // Within the tolerance it counts: a clock a few minutes fast is ordinary.
        assert_eq!(
            judge(&hour(10), &hour(11), at(11 * 3600 - 299)),
            Verdict::Done
        );
        assert_eq!(
            judge(&hour(10), &hour(11), at(11 * 3600 - 301)),
            Verdict::NotCounted(NotCounted::Ahead(Duration::from_secs(301)))
        );
        // No Date header: nothing to check against.
        assert_eq!(judge(&hour(10), &hour(34), None), Verdict::Done);
    }

    #[test]
    fn clock_skew_beyond_the_tolerance_is_reported_either_way() {
        let server = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let local = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(clock_skew(local(1_000_000 + 300), server), None);
        assert_eq!(clock_skew(local(1_000_000 - 300), server), None);
        assert_eq!(
            clock_skew(local(1_000_000 + 86_400), server),
            Some((Duration::from_secs(86_400), true))
        );
        assert_eq!(
            clock_skew(local(1_000_000 - 301), server),
            Some((Duration::from_secs(301), false))
        );
    }

    #[test]
    fn each_warning_is_given_once_per_acquire() {
        let check = SlotCheck::new(hour(1));
        assert!(check.first(WARNED_SKEW));
        assert!(!check.first(WARNED_SKEW));
        assert!(check.first(WARNED_NOT_COUNTED));
    }
}
