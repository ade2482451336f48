//! Durations as people write them on gcslock's command line, which parses them back:
//! `366d`, `7d`, `1h30m`, `750ms`. humantime's own format turns 366d into
//! "1year 18h" and 7d into "7days", which nobody typed.

use std::time::Duration;

/// `duration` in days, hours, minutes, seconds and milliseconds (days are the
/// largest unit; below a millisecond is dropped; zero is `0s`).
pub fn written(duration: Duration) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut left = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let mut text = String::new();
    for (unit, millis) in UNITS {
        let count = left / millis;
        if count > 0 {
            text.push_str(&count.to_string());
            text.push_str(unit);
            left %= millis;
        }
    }
    if text.is_empty() {
        text.push_str("0s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        let s = Duration::from_secs;
        assert_eq!(written(s(366 * 86_400)), "366d");
        assert_eq!(written(s(7 * 86_400)), "7d");
        assert_eq!(written(s(5400)), "1h30m");
        assert_eq!(written(s(90)), "1m30s");
        assert_eq!(written(Duration::from_millis(3875)), "3s875ms");
        assert_eq!(written(Duration::from_micros(999)), "0s");
        assert_eq!(written(Duration::ZERO), "0s");
        assert_eq!(written(Duration::MAX), "213503982334d14h25m51s615ms");
    }
}
