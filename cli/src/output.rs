//! How the command line prints: lines to stdout that end quietly on a closed pipe,
//! and durations and times for people.

use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// Writes lines to stdout; a closed pipe (`gcslock list | head -1`) ends quietly.
pub fn print_lines(lines: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = lines
        .into_iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    match result {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

pub fn timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whole seconds from a minute up, milliseconds below.
pub fn short_duration(duration: Duration) -> String {
    let rounded = if duration >= Duration::from_secs(60) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(rounded).to_string()
}
