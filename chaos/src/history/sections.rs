//! Critical sections, each bounded by the events of its run.

use std::collections::{HashMap, HashSet};

use super::checks::{Finding, FindingKind};
use super::events::{Event, Kind, RunId, COMMIT_FENCED_ACCEPTED, COMMIT_FENCED_REJECTED};

/// How a critical section ended, as far as the history can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionEnd {
    /// It committed (its end event).
    Committed { t: u64, commit: Commit },
    /// It stopped on a signal without committing.
    Aborted { t: u64, signal: i32 },
    /// It was SIGKILLed: it ended at an unknown time before `t`.
    Killed { t: u64 },
    /// Its process was found dead by `t` without a word.
    Dead { t: u64 },
    /// Nothing bounds it.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Recorded only (no fenced store in the loop).
    Unfenced,
    /// A fenced store accepted the write.
    Accepted,
    /// A fenced store refused it (not a commit).
    Rejected(String),
}

impl Commit {
    fn parse(text: Option<&str>) -> Self {
        match text {
            Some(COMMIT_FENCED_ACCEPTED) => Self::Accepted,
            Some(other) if other.starts_with(COMMIT_FENCED_REJECTED) => {
                Self::Rejected(other.to_owned())
            }
            _ => Self::Unfenced,
        }
    }
}

/// A critical section: from the recorder's start event to its end, whatever ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub run: RunId,
    pub token: u64,
    /// The semaphore place held (`--holders N`); 0 for a lock.
    pub place: u32,
    pub pid: i32,
    pub start: u64,
    pub end: SectionEnd,
    /// When its holder was first SIGSTOPped while the section ran (or the section
    /// started while its gcslock was stopped), if it was.
    pub paused_at: Option<u64>,
    /// When the last helper process the command started (in its process group)
    /// was seen dead: `u64::MAX` if one never was; `None` without helpers.
    pub helpers_gone: Option<u64>,
    /// The job's exit code, from its end event, when it failed (not 0).
    pub failed_with: Option<i32>,
}

impl Section {
    /// The latest time the section may still have been running: the job lasts
    /// until its recorder and every helper it started are gone.
    pub fn end_bound(&self) -> u64 {
        self.recorder_end().max(self.helpers_gone.unwrap_or(0))
    }

    /// The latest time the recorder itself may still have been running.
    pub fn recorder_end(&self) -> u64 {
        match self.end {
            SectionEnd::Committed { t, .. }
            | SectionEnd::Aborted { t, .. }
            | SectionEnd::Killed { t }
            | SectionEnd::Dead { t } => t,
            SectionEnd::Unknown => u64::MAX,
        }
    }
}

/// The events of one kind, by run, in history order.
pub fn by_run(events: &[Event], kind: Kind) -> HashMap<RunId, Vec<&Event>> {
    let mut map: HashMap<RunId, Vec<&Event>> = HashMap::new();
    for event in events.iter().filter(|e| e.ev == kind) {
        if let Some(run) = event.run_id() {
            map.entry(run).or_default().push(event);
        }
    }
    map
}

/// Pause intervals per run: from the SIGSTOP to the next SIGCONT (or forever).
fn pauses(events: &[Event]) -> HashMap<RunId, Vec<(u64, u64)>> {
    let mut pauses: HashMap<RunId, Vec<(u64, u64)>> = HashMap::new();
    for event in events.iter().filter(|e| e.ev == Kind::Stop) {
        if let Some(run) = event.run_id() {
            let from = event.sent.unwrap_or(event.t);
            let until = events
                .iter()
                .filter(|e| e.ev == Kind::Cont && e.run_id() == Some(run) && e.t >= from)
                .map(|e| e.t)
                .min()
                .unwrap_or(u64::MAX);
            pauses.entry(run).or_default().push((from, until));
        }
    }
    pauses
}

/// When each process (by pid) was seen dead, in time order (a pid may be reused).
fn deaths(events: &[Event]) -> HashMap<i32, Vec<u64>> {
    let mut dead: HashMap<i32, Vec<u64>> = HashMap::new();
    for event in events.iter().filter(|e| e.ev == Kind::Dead) {
        if let Some(pid) = event.pid {
            dead.entry(pid).or_default().push(event.t);
        }
    }
    for times in dead.values_mut() {
        times.sort_unstable();
    }
    dead
}

/// When `pid` was first seen dead at or after `since`.
fn died(dead: &HashMap<i32, Vec<u64>>, pid: i32, since: u64) -> Option<u64> {
    dead.get(&pid)?.iter().copied().find(|&t| t >= since)
}

/// A finding for an event the sections cannot be built from.
pub fn malformed_event(event: &Event, why: &str) -> Finding {
    Finding {
        kind: FindingKind::Malformed,
        expected: false,
        message: format!("{why}: {event:?}"),
        runs: event.run_id().into_iter().collect(),
        at: event.t,
    }
}

/// The sections, one per start event, sorted by start; and the events that do
/// not fit one (a start without its fields, a second start, an end with another
/// token, an end or abort without a start).
pub fn build(events: &[Event]) -> (Vec<Section>, Vec<Finding>) {
    let ends = by_run(events, Kind::End);
    let aborts = by_run(events, Kind::Abort);
    let kills = by_run(events, Kind::Kill);
    let pauses = pauses(events);
    let dead = deaths(events);
    let helpers = by_run(events, Kind::Helper);
    let mut malformed = Vec::new();
    let mut sections = Vec::new();
    let mut started = HashSet::new();
    for event in events.iter().filter(|e| e.ev == Kind::Start) {
        let (Some(run), Some(token), Some(pid)) = (event.run_id(), event.token, event.pid) else {
            malformed.push(malformed_event(
                event,
                "start event without worker, attempt, token or pid",
            ));
            continue;
        };
        if !started.insert(run) {
            malformed.push(malformed_event(event, "second start event for one run"));
            continue;
        }
        let mut failed_with = None;
        let end = if let Some(end) = ends.get(&run).and_then(|e| e.first()) {
            failed_with = end.code.filter(|&code| code != 0);
            if end.token != Some(token) {
                malformed.push(malformed_event(end, "end event with another token"));
            }
            SectionEnd::Committed {
                t: end.t,
                commit: Commit::parse(end.commit.as_deref()),
            }
        } else if let Some(abort) = aborts.get(&run).and_then(|e| e.first()) {
            SectionEnd::Aborted {
                t: abort.t,
                signal: abort.signal.unwrap_or(0),
            }
        } else {
            let killed = kills.get(&run).and_then(|k| k.iter().map(|e| e.t).min());
            let died = died(&dead, pid, event.t);
            match (killed, died) {
                (Some(k), Some(d)) => SectionEnd::Killed { t: k.min(d) },
                (Some(k), None) => SectionEnd::Killed { t: k },
                (None, Some(d)) => SectionEnd::Dead { t: d },
                (None, None) => SectionEnd::Unknown,
            }
        };
        let mut section = Section {
            place: event.place.unwrap_or(0),
            run,
            token,
            pid,
            start: event.t,
            end,
            paused_at: None,
            helpers_gone: helpers.get(&run).map(|list| {
                list.iter()
                    .map(|h| {
                        h.pid
                            .and_then(|pid| died(&dead, pid, h.t))
                            .unwrap_or(u64::MAX)
                    })
                    .max()
                    .unwrap_or(0)
            }),
            failed_with,
        };
        // Only a pause while the section ran explains anything about it: one that
        // ended before it started left gcslock time to see its lease had expired,
        // one that began after it ended changed nothing.
        section.paused_at = pauses.get(&run).and_then(|list| {
            list.iter()
                .filter(|&&(from, until)| from < section.end_bound() && until > section.start)
                .map(|&(from, _)| from.max(section.start))
                .min()
        });
        sections.push(section);
    }
    for (kind, map) in [(Kind::End, &ends), (Kind::Abort, &aborts)] {
        for (run, list) in map {
            if !started.contains(run) {
                for event in list {
                    malformed.push(malformed_event(event, &format!("{kind:?} without a start")));
                }
            }
        }
    }
    sections.sort_by_key(|s| (s.start, s.run));
    (sections, malformed)
}
