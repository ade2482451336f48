//! The history and its sections as report text.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::checks::{Analysis, Finding};
use super::events::{Event, RunId};
use super::sections::{Section, SectionEnd};
use crate::clock::{ms, rel};

/// A section in one phrase: run, token, pid, time span and how it ended.
pub fn span(section: &Section, origin: u64) -> String {
    format!(
        "{} (token {}, pid {}, [{}, {}]{})",
        section.run,
        section.token,
        section.pid,
        rel(section.start, origin),
        rel(section.end_bound(), origin),
        match section.end {
            SectionEnd::Committed { .. } => "",
            SectionEnd::Aborted { .. } => " aborted",
            SectionEnd::Killed { .. } => " killed: end unknown, up to the kill",
            SectionEnd::Dead { .. } => " died: end unknown, up to its death",
            SectionEnd::Unknown => " end unknown",
        }
    )
}

/// One line per event, sorted by time, relative to `origin`; lines of the runs in
/// `highlight` are marked `>>`.
pub fn render(events: &[Event], origin: u64, highlight: &HashSet<RunId>) -> String {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.t);
    let mut out = String::new();
    for event in sorted {
        let _ = writeln!(out, "{}", render_one(event, origin, highlight));
    }
    out
}

pub fn render_one(event: &Event, origin: u64, highlight: &HashSet<RunId>) -> String {
    let mark = match event.run_id() {
        Some(run) if highlight.contains(&run) => ">>",
        _ => "  ",
    };
    let run = event.run_id().map_or_else(String::new, |r| r.to_string());
    let mut detail = String::new();
    if let Some(token) = event.token {
        let _ = write!(detail, " token {token}");
    }
    if let Some(pid) = event.pid {
        let _ = write!(detail, " pid {pid}");
    }
    if let Some(ppid) = event.ppid {
        let _ = write!(detail, " gcslock {ppid}");
    }
    if let Some(pgid) = event.pgid {
        let _ = write!(detail, " pgid {pgid}");
    }
    if let Some(commit) = &event.commit {
        let _ = write!(detail, " commit {commit}");
    }
    if let Some(code) = event.code {
        let _ = write!(detail, " code {code}");
    }
    if let Some(signal) = event.signal {
        let _ = write!(detail, " signal {signal}");
    }
    if let Some(sent) = event.sent {
        let _ = write!(detail, " (sent {})", rel(sent, origin));
    }
    if let Some(slot) = event.slot {
        let _ = write!(detail, " slot {slot}");
    }
    if let Some(state) = &event.state {
        let _ = write!(detail, " state {state}");
    }
    if let Some(note) = &event.note {
        let _ = write!(detail, " {note}");
    }
    format!(
        "{mark} {:>10}  {:<7} {:<6}{}",
        rel(event.t, origin),
        run,
        format!("{:?}", event.ev).to_lowercase(),
        detail
    )
}

/// The history for a report: everything when short, else the events within 3 s
/// of each finding.
pub fn excerpt(events: &[Event], analysis: &Analysis, findings: &[&Finding]) -> String {
    let highlight: HashSet<RunId> = findings.iter().flat_map(|f| f.runs.clone()).collect();
    if events.len() <= 400 {
        return render(events, analysis.origin, &highlight);
    }
    let window = ms(3_000);
    let near = |t: u64| {
        findings
            .iter()
            .any(|f| t.saturating_add(window) >= f.at && t <= f.at.saturating_add(window))
    };
    let chosen: Vec<Event> = events
        .iter()
        .filter(|e| near(e.t) || e.run_id().is_some_and(|r| highlight.contains(&r)))
        .cloned()
        .collect();
    format!(
        "  ({} of {} events: those within 3s of a finding or of its runs)\n{}",
        chosen.len(),
        events.len(),
        render(&chosen, analysis.origin, &highlight)
    )
}
