//! Value parsers shared by the subcommands' arguments.

use std::time::Duration;

use gcslock::once_per::SlotZone;
use gcslock::{Ttl, Wait};

pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|error| format!("{error} (expected a duration such as 30s, 5m or 1h30m)"))
}

/// A TTL: a duration, or `forever` (only a break frees the lock).
pub fn parse_ttl(value: &str) -> Result<Ttl, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "forever" | "inf" | "infinity" | "infinite" => Ok(Ttl::Forever),
        _ => humantime::parse_duration(value.trim())
            .map(Ttl::Finite)
            .map_err(|error| {
                format!("{error} (expected a duration such as 30s or 5m, or `forever`)")
            }),
    }
}

/// A time zone for `--once-per` periods: an IANA name in the system's zone database.
pub fn parse_timezone(value: &str) -> Result<SlotZone, String> {
    SlotZone::named(value.trim()).map_err(|error| match error {
        gcslock::Error::InvalidInput(why) => why,
        other => other.to_string(),
    })
}

pub fn parse_wait(value: &str) -> Result<Wait, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "forever" | "inf" | "infinity" | "infinite" => Ok(Wait::Forever),
        "0" => Ok(Wait::No),
        _ => {
            let duration = humantime::parse_duration(value.trim()).map_err(|error| {
                format!("{error} (expected a duration such as 30s or 5m, or `forever`)")
            })?;
            Ok(if duration.is_zero() {
                Wait::No
            } else {
                Wait::For(duration)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wait_values() {
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("inf"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0s"), Ok(Wait::No));
        assert_eq!(parse_wait("90s"), Ok(Wait::For(Duration::from_secs(90))));
        assert_eq!(parse_wait("5m"), Ok(Wait::For(Duration::from_secs(300))));
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn parses_ttl_values() {
        assert_eq!(parse_ttl("forever"), Ok(Ttl::Forever));
        assert_eq!(parse_ttl("5m"), Ok(Ttl::Finite(Duration::from_secs(300))));
        assert!(parse_ttl("never").is_err());
    }
}
