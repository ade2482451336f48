//! The time zone whose calendar names once-per periods (PROTOCOL.md §10): cron and
//! systemd timers fire by the local wall clock, so periods follow it too.
//!
//! Zones come from the system's zone database through `jiff` (`/usr/share/zoneinfo`,
//! or `TZDIR`). A zone is identified by its IANA name, which a completion records;
//! names are canonical (`US/Eastern` and `America/New_York` are one zone, and every
//! alias of UTC is `UTC`), so machines configured with different aliases agree.

use std::fmt;

use jiff::tz::TimeZone;

use crate::error::Error;

/// The longest zone name accepted: IANA's longest is 32 bytes
/// (`America/Argentina/ComodRivadavia`); kept small because every lock record
/// that carries a completion holds one inline.
const MAX_NAME_LEN: usize = 40;

/// A time zone by its IANA name, or UTC. Small and `Copy`, so that a [`crate::once_per::Slot`]
/// stays a plain value.
///
/// ```
/// use gcslock::once_per::SlotZone;
///
/// assert_eq!(SlotZone::UTC.name(), "UTC");
/// # if SlotZone::named("America/New_York").is_err() { return Ok(()) } // no zone database
/// assert_eq!(SlotZone::named("America/New_York")?.name(), "America/New_York");
/// assert_eq!(SlotZone::named("Etc/UTC")?, SlotZone::UTC);
/// assert!(SlotZone::named("Mars/Olympus_Mons").is_err());
/// # Ok::<(), gcslock::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotZone {
    len: u8,
    name: [u8; MAX_NAME_LEN],
}

impl SlotZone {
    /// Coordinated Universal Time: the zone of records written before zones were
    /// recorded, when periods were aligned to the Unix epoch.
    pub const UTC: Self = {
        let mut name = [0; MAX_NAME_LEN];
        name[0] = b'U';
        name[1] = b'T';
        name[2] = b'C';
        Self { len: 3, name }
    };

    /// The zone named `name` (IANA, such as `Europe/Paris`; `UTC`), which must be
    /// in the system's zone database.
    pub fn named(name: &str) -> Result<Self, Error> {
        let checked = Self::from_name(name).map_err(Error::InvalidInput)?;
        let zone = TimeZone::get(checked.name()).map_err(|error| {
            Error::InvalidInput(format!(
                "unknown time zone {name:?}: {error} (IANA names such as Europe/Paris or UTC; \
                 the zone database is read from /usr/share/zoneinfo or TZDIR: install tzdata)"
            ))
        })?;
        Self::canonical(&zone)
            .ok_or_else(|| Error::InvalidInput(format!("time zone {name:?} has no IANA name")))
    }

    /// This machine's zone as cron sees it: `TZ` if set, else the system zone
    /// (`/etc/localtime`); UTC when neither is configured, as the C library does.
    pub fn local() -> Result<Self, Error> {
        let unnamed = |what: String| {
            Error::InvalidInput(format!(
                "the local time zone {what} has no IANA name, so periods cannot be \
                 recorded with it; name one with --timezone (GCSLOCK_TIMEZONE), such as \
                 Europe/Paris or UTC"
            ))
        };
        let tz_variable = std::env::var_os("TZ");
        match TimeZone::try_system() {
            Ok(zone) => Self::canonical(&zone).ok_or_else(|| {
                unnamed(tz_variable.map_or_else(
                    || "(/etc/localtime)".to_owned(),
                    |tz| format!("(TZ={:?})", tz.to_string_lossy()),
                ))
            }),
            // Nothing configured at all: the C library, and so cron, use UTC.
            Err(_) if tz_variable.is_none() && !std::path::Path::new("/etc/localtime").exists() => {
                Ok(Self::UTC)
            }
            Err(error) => Err(Error::InvalidInput(format!(
                "cannot tell the local time zone: {error}; name one with --timezone \
                 (GCSLOCK_TIMEZONE), such as Europe/Paris or UTC"
            ))),
        }
    }

    /// The canonical IANA name.
    pub fn name(&self) -> &str {
        // Only ASCII is ever stored (`from_name`).
        std::str::from_utf8(&self.name[..usize::from(self.len)]).unwrap_or("UTC")
    }

    /// A zone name as a record carries it: checked for shape only (the zone
    /// database of this machine need not know it).
    pub(crate) fn from_name(name: &str) -> Result<Self, String> {
        let shaped = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"/_-+".contains(&byte));
        let len = u8::try_from(name.len())
            .ok()
            .filter(|_| shaped)
            .ok_or_else(|| {
                format!(
                    "a time zone name is 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 / _ - +, not {:?}",
                    name.chars().take(MAX_NAME_LEN).collect::<String>()
                )
            })?;
        let mut bytes = [0; MAX_NAME_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self { len, name: bytes })
    }

    /// The zone's rules, from the zone database.
    pub(crate) fn rules(&self) -> Result<TimeZone, Error> {
        if *self == Self::UTC {
            return Ok(TimeZone::UTC); // needs no database
        }
        TimeZone::get(self.name()).map_err(|error| {
            Error::InvalidInput(format!(
                "time zone {} is not in this machine's zone database: {error}",
                self.name()
            ))
        })
    }

    /// The canonical name of a zone: its primary IANA name (`UTC` for every alias
    /// of UTC), `None` for a zone without one (a POSIX `TZ` rule, a copied file).
    fn canonical(zone: &TimeZone) -> Option<Self> {
        let offset_zero_always = zone.iana_name().is_some_and(|name| {
            UTC_ALIASES
                .iter()
                .any(|alias| alias.eq_ignore_ascii_case(name))
        });
        if offset_zero_always {
            return Some(Self::UTC);
        }
        let name = zone.primary_iana_name().or_else(|| zone.iana_name())?;
        Self::from_name(name).ok()
    }
}

/// Zones whose offset is zero at every instant: one calendar, so one name.
const UTC_ALIASES: [&str; 18] = [
    "UTC",
    "Etc/UTC",
    "Etc/UCT",
    "UCT",
    "Etc/Universal",
    "Universal",
    "Etc/Zulu",
    "Zulu",
    "GMT",
    "Etc/GMT",
    "GMT0",
    "Etc/GMT0",
    "GMT+0",
    "Etc/GMT+0",
    "GMT-0",
    "Etc/GMT-0",
    "Greenwich",
    "Etc/Greenwich",
];

impl fmt::Display for SlotZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for SlotZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotZone({:?})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_shape_without_a_database() {
        assert_eq!(SlotZone::from_name("UTC"), Ok(SlotZone::UTC));
        assert_eq!(
            SlotZone::from_name("America/Argentina/ComodRivadavia")
                .map(|zone| zone.name().to_owned()),
            Ok("America/Argentina/ComodRivadavia".to_owned())
        );
        let long = "A".repeat(MAX_NAME_LEN + 1);
        for hostile in ["", "Europe/Paris\n", "a b", "Zürich", "\u{202e}UTC", &long] {
            let why = SlotZone::from_name(hostile).unwrap_err();
            assert!(why.contains("time zone name"), "{why}");
            assert!(why.len() < 200, "{why}");
        }
    }

    #[test]
    fn aliases_name_one_zone() {
        if TimeZone::get("America/New_York").is_err() {
            eprintln!("SKIPPED: no zone database");
            return;
        }
        for utc in ["UTC", "Etc/UTC", "etc/utc", "Etc/GMT", "Zulu"] {
            assert_eq!(SlotZone::named(utc).unwrap(), SlotZone::UTC, "{utc}");
        }
        assert_eq!(
            SlotZone::named("US/Eastern").unwrap(),
            SlotZone::named("America/New_York").unwrap()
        );
        assert!(SlotZone::named("Nowhere/Atlantis").is_err());
        assert!(SlotZone::named("../../etc/passwd").is_err());
    }
}
