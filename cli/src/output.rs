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

/// A duration for people, rounded: whole seconds from a minute up, milliseconds
/// below; written as [`duration`] writes it.
pub fn short_duration(duration: Duration) -> String {
    let rounded = if duration >= Duration::from_secs(60) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    };
    self::duration(rounded)
}

/// A duration as people write it on the command line, and as gcslock parses it:
/// `366d`, `7d`, `1h30m`, `90s` is `1m30s`, `750ms` (the library's messages print
/// durations the same way).
pub use gcslock::duration_text::written as duration;

/// "held by NAME" for a lock's holder read from storage; a lock that `gcslock
/// break` revoked records its holder as `revoked by NAME`, which reads as "revoked
/// by NAME" (never "held by revoked by NAME"). Not escaped: stdout lines pass it
/// through [`escape`], log lines are escaped whole by `logging`.
pub fn held_by(holder: &str) -> String {
    match holder.strip_prefix(REVOKED_BY) {
        Some(breaker) => format!("revoked by {breaker}"),
        None => format!("held by {holder}"),
    }
}

/// The busy line's holder: "held by NAME (token N), stale in 4m10s".
pub fn holder_summary(summary: &gcslock::HolderSummary) -> String {
    let stale = summary
        .expires_in
        .map(|left| format!(", stale in {}", short_duration(left)))
        .unwrap_or_default();
    format!(
        "{} (token {}){stale}",
        held_by(&summary.identity),
        summary.token
    )
}

/// How the library records a revoked lock's holder (`gcslock::break_lock`).
const REVOKED_BY: &str = "revoked by ";

/// Text read from storage (holders, object names, reasons), made safe to print:
/// others wrote it, so control characters (ESC sequences, newlines, NUL) and the
/// invisible characters that reorder or hide text (bidi overrides and isolates,
/// zero-width characters: the "Trojan Source" set) are shown as `\u{..}`, and a
/// backslash as `\\`, so the escapes cannot be forged. JSON output needs none of it:
/// serde_json escapes control characters itself.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            escaped.push_str("\\\\");
        } else if c.is_control() || is_invisible_format(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Bidi controls, zero-width characters, line/paragraph separators and the BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format itself is tested in the library (`duration_text`).
    #[test]
    fn durations_print_as_written_and_parse_back() {
        assert_eq!(short_duration(Duration::from_millis(61_500)), "1m1s");
        assert_eq!(short_duration(Duration::from_millis(3875)), "3s875ms");
        for text in ["366d", "7d", "1h30m", "3s875ms"] {
            let parsed = crate::parse::parse_duration(text).expect(text);
            assert_eq!(duration(parsed), text);
        }
    }

    #[test]
    fn holders_read_as_held_or_revoked() {
        assert_eq!(held_by("vm:1"), "held by vm:1");
        assert_eq!(held_by("revoked by vm:2"), "revoked by vm:2");
        assert_eq!(
            escape(&held_by("revoked by ops\u{202e}")),
            "revoked by ops\\u{202e}"
        );
    }

    #[test]
    fn escape_shows_controls_and_bidi_overrides_never_raw() {
        let hostile = "a\u{1b}[31mb\nc\0d\u{202E}e\\u{41}f\u{200B}";
        let shown = escape(hostile);
        assert_eq!(
            shown,
            "a\\u{1b}[31mb\\u{a}c\\u{0}d\\u{202e}e\\\\u{41}f\\u{200b}"
        );
        assert!(!shown
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c)));
        assert_eq!(escape("host-1:42 ünïcode"), "host-1:42 ünïcode");
    }
}
