//! The shared history (one JSON object per line, appended with a single write(2)
//! on an O_APPEND file) and the checker that judges it.
//!
//! The checker is pure: it sees only the events, so the same code judges a live
//! run, a saved `events.jsonl` (`gcslock-chaos check FILE`) and the synthetic
//! histories of the unit tests below.
//!
//! What it rejects:
//! 1. two critical sections overlapping on the shared monotonic clock, unless one
//!    of them belongs to a holder that was SIGSTOPped (then it is reported as an
//!    *expected* overlap: the case fencing exists for);
//! 2. a commit (a section's end event) whose fencing token is not greater than
//!    every token committed before it, and a section that starts with a token
//!    smaller than an earlier section's, unless the late section was paused (and,
//!    for commits, the commit was not fenced: a fenced store accepting a stale
//!    token is never expected); two sections with the same token, always;
//! 3. the lock still held, after every worker finished, beyond one TTL (plus the
//!    safety margin and the granularity of the server's `Date` header);
//!
//! and, to keep the premises honest: a section whose end cannot be bounded, a
//! section that starts before the process that ran it was spawned (the clocks
//! are not shared), and lines that do not parse.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::clock::{ms, rel};

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The scenario starts (orchestrator): `wall`, `ttl_ms`, `note` = scenario name.
    Begin,
    /// A `gcslock run` process is about to be spawned (orchestrator); `t` is taken
    /// before the fork, so every event of that run comes later.
    Spawn,
    /// The critical section starts (recorder child, holding the lock).
    Start,
    /// The critical section commits and ends (recorder child): `commit` says how.
    End,
    /// The recorder got a signal (gcslock stopping it after losing the lease, or
    /// the orchestrator's wall-time limit) and stops without committing.
    Abort,
    /// The `gcslock run` process exited (orchestrator): `code` or `signal`.
    Exit,
    /// The orchestrator SIGKILLed a holder's process groups: `sent` is when,
    /// `t` when both processes were seen dead.
    Kill,
    /// The orchestrator SIGSTOPped a holder's process groups.
    Stop,
    /// ... and SIGCONTinued them.
    Cont,
    /// A recorder (`pid`) was seen dead after its gcslock exited, section unfinished.
    Dead,
    /// The lock's state after every worker finished (`state`, `note` = status JSON).
    Final,
    /// gcslock exited 76 ("the lease was lost while the command ran") but the
    /// recorder never wrote a start: it was stopped before it could. `pid` is the
    /// process group gcslock says it signalled, `note` its message.
    Unrecorded,
}

/// A stop event's `state` when the stopped gcslock had not started its command
/// (so it can start it only after being continued).
pub const STOPPED_NO_COMMAND: &str = "no-command";

/// One line of the history. Fields not used by a kind are absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ev: Kind,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub t: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The recorder's pid (start, end, abort, kill, stop, dead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The recorder's parent: the gcslock process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<i32>,
    /// The process group of the spawned `gcslock run` (with faketime, if used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// CLOCK_REALTIME as the process saw it, nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// End: `unfenced`, `fenced-accepted` or `fenced-rejected: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Kill/stop: when the signal was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Final: `free`, `released`, `stale`, `held`, `not-a-lock` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Event {
    pub fn new(ev: Kind, t: u64) -> Self {
        Self {
            ev,
            t,
            worker: None,
            attempt: None,
            token: None,
            pid: None,
            ppid: None,
            pgid: None,
            wall: None,
            code: None,
            signal: None,
            commit: None,
            sent: None,
            ttl_ms: None,
            state: None,
            note: None,
        }
    }

    pub fn run(mut self, run: RunId) -> Self {
        self.worker = Some(run.worker);
        self.attempt = Some(run.attempt);
        self
    }

    pub fn run_id(&self) -> Option<RunId> {
        Some(RunId {
            worker: self.worker?,
            attempt: self.attempt?,
        })
    }
}

/// The commit outcomes a recorder writes.
pub const COMMIT_UNFENCED: &str = "unfenced";
pub const COMMIT_FENCED_ACCEPTED: &str = "fenced-accepted";
pub const COMMIT_FENCED_REJECTED: &str = "fenced-rejected";

/// One `gcslock run` invocation: worker number and its attempt number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId {
    pub worker: u32,
    pub attempt: u32,
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}#{}", self.worker, self.attempt)
    }
}

/// An append-only history file; each event is one write(2) of one whole line.
#[derive(Debug)]
pub struct Log {
    file: File,
}

impl Log {
    /// Creates (truncates) the history file.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Self::open(path)
    }

    /// Opens an existing history for appending (O_APPEND).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(Self { file })
    }

    pub fn append(&self, event: &Event) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(event).context("cannot encode an event")?;
        line.push('\n');
        // One write(2), never a loop of them: with O_APPEND the line lands whole.
        let written = (&self.file)
            .write(line.as_bytes())
            .context("cannot append to the history")?;
        anyhow::ensure!(
            written == line.len(),
            "short write to the history ({written} of {} bytes)",
            line.len()
        );
        Ok(())
    }
}

/// Reads a history. While writers may still be appending (`live`), an unfinished
/// last line is ignored; otherwise every line that does not parse is returned.
pub fn read(path: &Path, live: bool) -> anyhow::Result<(Vec<Event>, Vec<String>)> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut file| file.read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse(&text, live))
}

pub fn parse(text: &str, live: bool) -> (Vec<Event>, Vec<String>) {
    let complete = if live {
        text.rfind('\n').map_or("", |end| &text[..end])
    } else {
        text
    };
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for line in complete.lines().filter(|line| !line.trim().is_empty()) {
        match serde_json::from_str::<Event>(line) {
            Ok(event) => events.push(event),
            Err(error) => bad.push(format!("{error}: {line}")),
        }
    }
    (events, bad)
}

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
    pub pid: i32,
    pub start: u64,
    pub end: SectionEnd,
    /// When its holder was first SIGSTOPped while the section ran (or the section
    /// started while its gcslock was stopped), if it was.
    pub paused_at: Option<u64>,
}

impl Section {
    /// The latest time the section may still have been running.
    pub fn end_bound(&self) -> u64 {
        match self.end {
            SectionEnd::Committed { t, .. }
            | SectionEnd::Aborted { t, .. }
            | SectionEnd::Killed { t }
            | SectionEnd::Dead { t } => t,
            SectionEnd::Unknown => u64::MAX,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingKind {
    Overlap,
    CommitTokenRegression,
    AcquireTokenRegression,
    DuplicateToken,
    LockLeftHeld,
    UnresolvedEnd,
    ClockSanity,
    Malformed,
    /// An unrecorded command whose window only partly meets another section.
    PossibleOverlap,
}

impl FindingKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Overlap => "overlap",
            Self::CommitTokenRegression => "commit-token-regression",
            Self::AcquireTokenRegression => "acquire-token-regression",
            Self::DuplicateToken => "duplicate-token",
            Self::LockLeftHeld => "lock-left-held",
            Self::UnresolvedEnd => "unresolved-end",
            Self::ClockSanity => "clock-sanity",
            Self::Malformed => "malformed-history",
            Self::PossibleOverlap => "possible-overlap",
        }
    }
}

/// A violation, or (`expected`) an anomaly the scenario is meant to provoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub expected: bool,
    pub message: String,
    /// The runs involved, highlighted in the printed history.
    pub runs: Vec<RunId>,
    /// When it happened, to pick the part of the history to print.
    pub at: u64,
}

/// What the checker concluded.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub sections: Vec<Section>,
    pub findings: Vec<Finding>,
    pub max_concurrent: usize,
    /// Time origin: the begin event, else the first event.
    pub origin: u64,
}

impl Analysis {
    pub fn violations(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.expected)
    }

    pub fn expected(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.expected)
    }

    pub fn count(&self, kind: FindingKind, expected: bool) -> usize {
        self.findings
            .iter()
            .filter(|f| f.kind == kind && f.expected == expected)
            .count()
    }
}

/// The safety margin gcslock adds to a TTL by default (mirrors the library's
/// `default_margin`: TTL/10 within 200 ms..30 s).
pub fn default_margin_ns(ttl_ns: u64) -> u64 {
    (ttl_ns / 10).clamp(ms(200), ms(30_000))
}

/// The latest time the lock may still show as held once every worker is gone:
/// the last holder refreshed at most at `last_exit`, so it is stale by
/// `last_exit + TTL + margin` by the server's clock, whose `Date` header has
/// whole seconds (up to 1 s late), plus 500 ms for polling and request time.
pub fn lock_free_deadline(last_exit: u64, ttl_ns: u64) -> u64 {
    last_exit + ttl_ns + default_margin_ns(ttl_ns) + ms(1_000) + ms(500)
}

fn span(section: &Section, origin: u64) -> String {
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

/// Judges a complete history.
pub fn analyze(events: &[Event], malformed: &[String]) -> Analysis {
    let mut findings = Vec::new();
    let origin = events
        .iter()
        .find(|e| e.ev == Kind::Begin)
        .or_else(|| events.iter().min_by_key(|e| e.t))
        .map_or(0, |e| e.t);
    for line in malformed {
        findings.push(Finding {
            kind: FindingKind::Malformed,
            expected: false,
            message: format!("unparsable history line: {line}"),
            runs: vec![],
            at: origin,
        });
    }
    let malformed_event = |event: &Event, why: &str| Finding {
        kind: FindingKind::Malformed,
        expected: false,
        message: format!("{why}: {event:?}"),
        runs: event.run_id().into_iter().collect(),
        at: event.t,
    };

    let by_run = |kind: Kind| {
        let mut map: HashMap<RunId, Vec<&Event>> = HashMap::new();
        for event in events.iter().filter(|e| e.ev == kind) {
            if let Some(run) = event.run_id() {
                map.entry(run).or_default().push(event);
            }
        }
        map
    };
    let ends = by_run(Kind::End);
    let aborts = by_run(Kind::Abort);
    let kills = by_run(Kind::Kill);
    let spawns = by_run(Kind::Spawn);
    // Pause intervals per run: from the SIGSTOP to the next SIGCONT (or forever).
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
    let mut dead: HashMap<i32, u64> = HashMap::new();
    for event in events.iter().filter(|e| e.ev == Kind::Dead) {
        if let Some(pid) = event.pid {
            let t = dead.entry(pid).or_insert(event.t);
            *t = (*t).min(event.t);
        }
    }

    // Sections, one per start event.
    let mut sections = Vec::new();
    let mut started = HashSet::new();
    for event in events.iter().filter(|e| e.ev == Kind::Start) {
        let (Some(run), Some(token), Some(pid)) = (event.run_id(), event.token, event.pid) else {
            findings.push(malformed_event(
                event,
                "start event without worker, attempt, token or pid",
            ));
            continue;
        };
        if !started.insert(run) {
            findings.push(malformed_event(event, "second start event for one run"));
            continue;
        }
        let end = if let Some(end) = ends.get(&run).and_then(|e| e.first()) {
            if end.token != Some(token) {
                findings.push(malformed_event(end, "end event with another token"));
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
            let died = dead.get(&pid).copied();
            match (killed, died) {
                (Some(k), Some(d)) => SectionEnd::Killed { t: k.min(d) },
                (Some(k), None) => SectionEnd::Killed { t: k },
                (None, Some(d)) => SectionEnd::Dead { t: d },
                (None, None) => SectionEnd::Unknown,
            }
        };
        let mut section = Section {
            run,
            token,
            pid,
            start: event.t,
            end,
            paused_at: None,
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
        if section.end == SectionEnd::Unknown {
            findings.push(Finding {
                kind: FindingKind::UnresolvedEnd,
                expected: false,
                message: format!(
                    "{}: no end, abort, kill or death was recorded; it is treated as running \
                     to the end of the history",
                    span(&section, origin)
                ),
                runs: vec![run],
                at: section.start,
            });
        }
        if section.end_bound() < section.start {
            findings.push(Finding {
                kind: FindingKind::ClockSanity,
                expected: false,
                message: format!("{} ends before it starts", span(&section, origin)),
                runs: vec![run],
                at: section.start,
            });
        }
        if let Some(spawn) = spawns.get(&run).and_then(|s| s.first()) {
            if section.start < spawn.t {
                findings.push(Finding {
                    kind: FindingKind::ClockSanity,
                    expected: false,
                    message: format!(
                        "{} starts at {}, before its gcslock was spawned at {}: the processes \
                         do not share one monotonic clock",
                        span(&section, origin),
                        rel(section.start, origin),
                        rel(spawn.t, origin)
                    ),
                    runs: vec![run],
                    at: section.start,
                });
            }
        }
        sections.push(section);
    }
    for (kind, map) in [(Kind::End, &ends), (Kind::Abort, &aborts)] {
        for (run, list) in map {
            if !started.contains(run) {
                for event in list {
                    findings.push(malformed_event(event, &format!("{kind:?} without a start")));
                }
            }
        }
    }
    sections.sort_by_key(|s| (s.start, s.run));

    // 1. Overlaps.
    for (i, a) in sections.iter().enumerate() {
        for b in &sections[i + 1..] {
            if b.start < a.end_bound() {
                let overlap = a.end_bound().min(b.end_bound()) - b.start;
                // Expected only if a pause, begun by the time the overlap began
                // (when `b` started), explains it.
                let paused_by = |s: &Section| s.paused_at.is_some_and(|p| p <= b.start);
                let expected = paused_by(a) || paused_by(b);
                findings.push(Finding {
                    kind: FindingKind::Overlap,
                    expected,
                    message: format!(
                        "{} overlaps {} for {}{}",
                        span(a, origin),
                        span(b, origin),
                        if overlap == u64::MAX - b.start {
                            "an unknown time".to_owned()
                        } else if overlap < 1_000_000 {
                            format!("{:.3}ms", overlap as f64 / 1e6)
                        } else {
                            format!("{:.3}s", overlap as f64 / 1e9)
                        },
                        if expected {
                            " (expected: a holder was paused past its TTL)"
                        } else {
                            ""
                        }
                    ),
                    runs: vec![a.run, b.run],
                    at: b.start,
                });
            }
        }
    }

    // 1b. Commands gcslock started but that never recorded: they ran at some time
    // in [lower, upper]: from the spawn of their gcslock, or from the SIGCONT that
    // ended a pause which caught that gcslock before it had started any command,
    // to gcslock's exit. A section covering that whole window surely overlapped.
    for event in events.iter().filter(|e| e.ev == Kind::Unrecorded) {
        let Some(run) = event.run_id() else {
            findings.push(malformed_event(event, "unrecorded event without a run"));
            continue;
        };
        let of_run = |kind: Kind| {
            events
                .iter()
                .filter(move |e| e.ev == kind && e.run_id() == Some(run))
        };
        let upper = of_run(Kind::Exit).map(|e| e.t).min().unwrap_or(event.t);
        let mut lower = of_run(Kind::Spawn).map(|e| e.t).min().unwrap_or(origin);
        let mut resumed = None;
        for stop in of_run(Kind::Stop).filter(|e| e.state.as_deref() == Some(STOPPED_NO_COMMAND)) {
            let from = stop.sent.unwrap_or(stop.t);
            if let Some(cont) = of_run(Kind::Cont)
                .map(|e| e.t)
                .filter(|&t| t >= from && t <= upper)
                .min()
            {
                if cont > lower {
                    lower = cont;
                    resumed = Some(cont);
                }
            }
        }
        let evidence = event.note.as_deref().unwrap_or("");
        for section in sections.iter().filter(|s| s.run != run) {
            let covers = section.start <= lower && section.end_bound() >= upper;
            let meets = section.start < upper && section.end_bound() > lower;
            if !meets {
                continue;
            }
            let certain = covers && event.pid.is_some();
            findings.push(Finding {
                kind: if certain {
                    FindingKind::Overlap
                } else {
                    FindingKind::PossibleOverlap
                },
                expected: !certain,
                message: format!(
                    "{run}: gcslock ran its command{} at some time in [{}, {}]{} and exited 76 \
                     (lease lost while the command ran); the command never recorded its start. \
                     {} {}: {evidence}",
                    event
                        .pid
                        .map(|p| format!(" (process group {p})"))
                        .unwrap_or_default(),
                    rel(lower, origin),
                    rel(upper, origin),
                    if resumed.is_some() {
                        ", i.e. only after it was continued from a pause that caught it before \
                         it had started any command: it started the command on a lease that had \
                         already expired"
                    } else {
                        ""
                    },
                    span(section, origin),
                    if certain {
                        "held the lock during that whole window"
                    } else {
                        "held the lock during part of that window (overlap possible, unproven)"
                    }
                ),
                runs: vec![section.run, run],
                at: lower,
            });
        }
    }

    // Max concurrent holders: ends sort before starts at the same instant.
    let mut marks: Vec<(u64, i8)> = sections
        .iter()
        .flat_map(|s| [(s.start, 1), (s.end_bound(), -1)])
        .collect();
    marks.sort();
    let mut current = 0i64;
    let mut max_concurrent = 0i64;
    for (_, delta) in marks {
        current += i64::from(delta);
        max_concurrent = max_concurrent.max(current);
    }

    // 2a. Tokens: unique, and growing in the order sections start.
    let mut first_with: HashMap<u64, &Section> = HashMap::new();
    let mut highest: Option<&Section> = None;
    for section in &sections {
        if let Some(first) = first_with.get(&section.token) {
            findings.push(Finding {
                kind: FindingKind::DuplicateToken,
                expected: false,
                message: format!(
                    "{} and {} hold the same fencing token",
                    span(first, origin),
                    span(section, origin)
                ),
                runs: vec![first.run, section.run],
                at: section.start,
            });
            continue;
        }
        first_with.insert(section.token, section);
        match highest {
            Some(top) if section.token < top.token => {
                // Its section started while its gcslock was stopped.
                let expected = section.paused_at.is_some_and(|p| p <= section.start);
                findings.push(Finding {
                    kind: FindingKind::AcquireTokenRegression,
                    expected,
                    message: format!(
                        "{} starts after {} with a smaller token{}",
                        span(section, origin),
                        span(top, origin),
                        if expected {
                            " (expected: it was paused)"
                        } else {
                            ""
                        }
                    ),
                    runs: vec![top.run, section.run],
                    at: section.start,
                });
            }
            _ => highest = Some(section),
        }
    }

    // 2b. Commits in time order carry growing tokens.
    let mut commits: Vec<(u64, &Section, bool)> = sections
        .iter()
        .filter_map(|s| match &s.end {
            SectionEnd::Committed {
                t,
                commit: Commit::Unfenced,
            } => Some((*t, s, false)),
            SectionEnd::Committed {
                t,
                commit: Commit::Accepted,
            } => Some((*t, s, true)),
            _ => None,
        })
        .collect();
    commits.sort_by_key(|(t, s, _)| (*t, s.run));
    let mut top: Option<(u64, &Section)> = None;
    for (t, section, fenced) in commits {
        match top {
            Some((top_t, top_section)) if section.token <= top_section.token => {
                let expected = section.paused_at.is_some_and(|p| p <= t) && !fenced;
                findings.push(Finding {
                    kind: FindingKind::CommitTokenRegression,
                    expected,
                    message: format!(
                        "{} commits token {} at {}, not above token {} committed at {} by {}{}",
                        span(section, origin),
                        section.token,
                        rel(t, origin),
                        top_section.token,
                        rel(top_t, origin),
                        top_section.run,
                        if expected {
                            " (expected without fencing: the holder was paused)"
                        } else if fenced {
                            " (a fenced store accepted a stale token)"
                        } else {
                            ""
                        }
                    ),
                    runs: vec![top_section.run, section.run],
                    at: t,
                });
            }
            _ => top = Some((t, section)),
        }
    }

    // 3. The lock after the last worker.
    if let Some(begin) = events.iter().find(|e| e.ev == Kind::Begin) {
        let ttl = ms(begin.ttl_ms.unwrap_or(0));
        let last_exit = events
            .iter()
            .filter(|e| matches!(e.ev, Kind::Exit | Kind::Kill | Kind::Dead))
            .map(|e| e.t)
            .max()
            .unwrap_or(begin.t);
        let deadline = lock_free_deadline(last_exit, ttl);
        match events.iter().rfind(|e| e.ev == Kind::Final) {
            None => findings.push(Finding {
                kind: FindingKind::LockLeftHeld,
                expected: false,
                message: "the lock's final state was never checked".into(),
                runs: vec![],
                at: last_exit,
            }),
            Some(last) => {
                let state = last.state.as_deref().unwrap_or("unknown");
                let free = matches!(state, "free" | "released" | "stale");
                if !free || last.t > deadline {
                    findings.push(Finding {
                        kind: FindingKind::LockLeftHeld,
                        expected: false,
                        message: format!(
                            "the lock was {state} at {}, after the last worker exited at {}; it \
                             must be free, released or stale by {} (TTL {} ms + margin + 1 s \
                             Date granularity + 0.5 s): {}",
                            rel(last.t, origin),
                            rel(last_exit, origin),
                            rel(deadline, origin),
                            ttl / 1_000_000,
                            last.note.as_deref().unwrap_or("")
                        ),
                        runs: vec![],
                        at: last.t,
                    });
                }
            }
        }
    }

    findings.sort_by_key(|f| (f.expected, f.at));
    Analysis {
        sections,
        findings,
        max_concurrent: usize::try_from(max_concurrent).unwrap_or(0),
        origin,
    }
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
            .any(|f| t + window >= f.at && t <= f.at.saturating_add(window))
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn run(worker: u32, attempt: u32) -> RunId {
        RunId { worker, attempt }
    }

    fn start(r: RunId, t: u64, token: u64) -> Event {
        let mut e = Event::new(Kind::Start, t).run(r);
        e.token = Some(token);
        e.pid = Some(1000 + i32::try_from(r.worker * 100 + r.attempt).unwrap_or(0));
        e
    }

    fn end(r: RunId, t: u64, token: u64) -> Event {
        let mut e = Event::new(Kind::End, t).run(r);
        e.token = Some(token);
        e.commit = Some(COMMIT_UNFENCED.into());
        e
    }

    fn section(r: RunId, from: u64, to: u64, token: u64) -> [Event; 2] {
        [start(r, from, token), end(r, to, token)]
    }

    fn begin(ttl_ms: u64) -> Event {
        let mut e = Event::new(Kind::Begin, 0);
        e.ttl_ms = Some(ttl_ms);
        e
    }

    fn final_state(t: u64, state: &str) -> Event {
        let mut e = Event::new(Kind::Final, t);
        e.state = Some(state.into());
        e
    }

    fn exit(r: RunId, t: u64) -> Event {
        let mut e = Event::new(Kind::Exit, t).run(r);
        e.code = Some(0);
        e
    }

    fn kinds(a: &Analysis, expected: bool) -> Vec<FindingKind> {
        a.findings
            .iter()
            .filter(|f| f.expected == expected)
            .map(|f| f.kind)
            .collect()
    }

    fn clean(events: &[Event]) -> Analysis {
        analyze(events, &[])
    }

    #[test]
    fn a_clean_serial_history_passes() {
        let mut events = vec![begin(2000)];
        events.extend(section(run(1, 0), S, 2 * S, 1));
        events.push(exit(run(1, 0), 2 * S + 10));
        events.extend(section(run(2, 0), 3 * S, 4 * S, 2));
        events.extend(section(run(1, 1), 4 * S, 5 * S, 3)); // touching is not overlapping
        events.push(exit(run(2, 0), 5 * S));
        events.push(final_state(5 * S + 100, "released"));
        let a = clean(&events);
        assert!(a.findings.is_empty(), "{:?}", a.findings);
        assert_eq!(a.max_concurrent, 1);
        assert_eq!(a.sections.len(), 3);
    }

    #[test]
    fn detects_an_overlap_of_unpaused_holders() {
        let mut events = vec![];
        events.extend(section(run(1, 0), S, 3 * S, 1));
        events.extend(section(run(2, 0), 2 * S, 4 * S, 2));
        let a = clean(&events);
        assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
        assert_eq!(a.max_concurrent, 2);
        assert!(
            a.findings[0].message.contains("1.000s"),
            "{}",
            a.findings[0].message
        );
        assert_eq!(a.findings[0].runs, vec![run(1, 0), run(2, 0)]);
    }

    #[test]
    fn detects_overlap_with_a_section_nested_inside_another() {
        let mut events = vec![];
        events.extend(section(run(1, 0), S, 10 * S, 1));
        events.extend(section(run(2, 0), 4 * S, 5 * S, 2));
        events.extend(section(run(3, 0), 11 * S, 12 * S, 3));
        let a = clean(&events);
        // The outer section also commits token 1 after the inner one committed 2.
        assert_eq!(
            kinds(&a, false),
            vec![FindingKind::Overlap, FindingKind::CommitTokenRegression]
        );
    }

    #[test]
    fn a_pause_does_not_excuse_an_overlap_that_began_before_it() {
        let a_run = run(1, 0);
        let mut stop = Event::new(Kind::Stop, 3 * S).run(a_run);
        stop.sent = Some(3 * S);
        let mut events = vec![start(a_run, S, 1), stop];
        // Worker 2 starts at 2s, while worker 1 was still running unpaused.
        events.extend(section(run(2, 0), 2 * S, 6 * S, 2));
        events.push(end(a_run, 7 * S, 1));
        let a = clean(&events);
        assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
        // The stale commit after the pause is still the expected kind of anomaly.
        assert_eq!(kinds(&a, true), vec![FindingKind::CommitTokenRegression]);
        // A stop sent after the section ended explains nothing either.
        let mut late = Event::new(Kind::Stop, 9 * S).run(run(3, 0));
        late.sent = Some(9 * S);
        let mut events = vec![late];
        events.extend(section(run(3, 0), S, 8 * S, 3));
        events.extend(section(run(4, 0), 4 * S, 5 * S, 4));
        let a = clean(&events);
        assert!(
            a.count(FindingKind::Overlap, false) == 1,
            "{:?}",
            a.findings
        );
    }

    #[test]
    fn a_killed_section_lasts_until_the_kill_was_seen() {
        let r = run(1, 0);
        let mut kill = Event::new(Kind::Kill, 3 * S).run(r);
        kill.sent = Some(3 * S - 1000);
        // Killed holder, then a survivor after the kill: fine.
        let ok = vec![
            start(r, S, 1),
            kill.clone(),
            start(run(2, 0), 6 * S, 2),
            end(run(2, 0), 7 * S, 2),
        ];
        let a = clean(&ok);
        assert!(a.findings.is_empty(), "{:?}", a.findings);
        assert_eq!(a.sections[0].end, SectionEnd::Killed { t: 3 * S });
        // A survivor that starts before the kill overlaps the killed section.
        let bad = vec![
            start(r, S, 1),
            start(run(2, 0), 2 * S, 2),
            kill,
            end(run(2, 0), 7 * S, 2),
        ];
        assert_eq!(kinds(&clean(&bad), false), vec![FindingKind::Overlap]);
    }

    #[test]
    fn a_section_without_any_end_is_unresolved_and_overlaps_everything_after() {
        let events = vec![
            start(run(1, 0), S, 1),
            start(run(2, 0), 9 * S, 2),
            end(run(2, 0), 10 * S, 2),
        ];
        let a = clean(&events);
        assert_eq!(
            kinds(&a, false),
            vec![FindingKind::UnresolvedEnd, FindingKind::Overlap]
        );
        // A death bounds it.
        let mut dead = Event::new(Kind::Dead, 2 * S);
        dead.pid = events[0].pid;
        let mut resolved = events.clone();
        resolved.push(dead);
        assert!(clean(&resolved).findings.is_empty());
    }

    #[test]
    fn an_aborted_section_ends_at_its_abort() {
        let r = run(1, 0);
        let mut abort = Event::new(Kind::Abort, 2 * S).run(r);
        abort.signal = Some(15);
        let events = vec![
            start(r, S, 1),
            abort,
            start(run(2, 0), 3 * S, 2),
            end(run(2, 0), 4 * S, 2),
        ];
        let a = clean(&events);
        assert!(a.findings.is_empty(), "{:?}", a.findings);
        assert_eq!(
            a.sections[0].end,
            SectionEnd::Aborted {
                t: 2 * S,
                signal: 15
            }
        );
    }

    #[test]
    fn detects_a_commit_token_regression() {
        // Serial sections, but the later commit carries a smaller token.
        let mut events = vec![];
        events.extend(section(run(1, 0), S, 2 * S, 5));
        events.extend(section(run(2, 0), 3 * S, 4 * S, 4));
        let a = clean(&events);
        assert_eq!(
            kinds(&a, false),
            vec![
                FindingKind::AcquireTokenRegression,
                FindingKind::CommitTokenRegression
            ]
        );
        // Equal tokens: a duplicate, and a commit that is not greater.
        let mut events = vec![];
        events.extend(section(run(1, 0), S, 2 * S, 5));
        events.extend(section(run(2, 0), 3 * S, 4 * S, 5));
        assert_eq!(
            kinds(&clean(&events), false),
            vec![
                FindingKind::DuplicateToken,
                FindingKind::CommitTokenRegression
            ]
        );
    }

    #[test]
    fn commit_order_is_judged_by_commit_time_not_start_time() {
        // Sections overlap (violation), and the commit of the older token lands last.
        let mut events = vec![];
        events.extend(section(run(1, 0), S, 5 * S, 1));
        events.extend(section(run(2, 0), 2 * S, 3 * S, 2));
        let a = clean(&events);
        assert!(
            a.count(FindingKind::CommitTokenRegression, false) == 1,
            "{:?}",
            a.findings
        );
        assert!(a.count(FindingKind::Overlap, false) == 1);
    }

    #[test]
    fn pauses_make_overlap_and_stale_commits_expected_but_only_for_the_paused_holder() {
        let paused = run(1, 0);
        let mut stop = Event::new(Kind::Stop, 2 * S).run(paused);
        stop.pid = Some(1);
        let mut events = vec![
            start(paused, S, 1),
            stop,
            Event::new(Kind::Cont, 7 * S).run(paused),
        ];
        events.extend(section(run(2, 0), 4 * S, 6 * S, 2));
        events.push(end(paused, 7 * S + 1000, 1)); // the stale holder commits after resuming
        let a = clean(&events);
        assert_eq!(a.violations().count(), 0, "{:?}", a.findings);
        assert_eq!(
            kinds(&a, true),
            vec![FindingKind::Overlap, FindingKind::CommitTokenRegression]
        );
        assert_eq!(a.max_concurrent, 2);

        // Two unpaused holders overlapping in the same history is still a violation.
        events.extend(section(run(3, 0), 8 * S, 9 * S, 3));
        events.extend(section(run(4, 0), 8 * S + 500, 10 * S, 4));
        let a = clean(&events);
        assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
    }

    #[test]
    fn a_section_started_after_its_gcslock_resumed_is_not_excused() {
        // gcslock paused while acquiring (no section yet), resumed at 6s, and only
        // then started its command although w2 held the lock: not excused.
        let late = run(1, 0);
        let mut stop = Event::new(Kind::Stop, S).run(late);
        stop.sent = Some(S);
        let mut events = vec![stop, Event::new(Kind::Cont, 6 * S).run(late)];
        events.extend(section(run(2, 0), 4 * S, 8 * S, 2));
        events.push(start(late, 6 * S + 1000, 1));
        let mut abort = Event::new(Kind::Abort, 6 * S + 5000).run(late);
        abort.signal = Some(15);
        events.push(abort);
        let a = clean(&events);
        assert_eq!(
            kinds(&a, false),
            vec![FindingKind::Overlap, FindingKind::AcquireTokenRegression]
        );
        // Had the section started while gcslock was still stopped (its child was
        // already on its way), the overlap would be the expected kind.
        let last = events.len() - 2;
        events[last] = start(late, 5 * S, 1);
        let a = clean(&events);
        assert_eq!(a.violations().count(), 0, "{:?}", a.findings);
    }

    #[test]
    fn a_command_started_on_an_expired_lease_without_recording_is_caught() {
        let late = run(0, 0);
        let mut stop = Event::new(Kind::Stop, S).run(late);
        stop.sent = Some(S);
        stop.state = Some(STOPPED_NO_COMMAND.into());
        let mut unrecorded = Event::new(Kind::Unrecorded, 6 * S + 3000).run(late);
        unrecorded.pid = Some(4242);
        unrecorded.note = Some("gcslock: error: lease lost while the command ran".into());
        let mut events = vec![
            Event::new(Kind::Spawn, S / 2).run(late),
            stop,
            Event::new(Kind::Cont, 6 * S).run(late),
            exit(late, 6 * S + 2000),
            unrecorded,
        ];
        events.extend(section(run(1, 0), 4 * S, 8 * S, 2));
        let a = clean(&events);
        assert_eq!(
            kinds(&a, false),
            vec![FindingKind::Overlap],
            "{:?}",
            a.findings
        );
        assert!(
            a.findings[0].message.contains("already expired"),
            "{}",
            a.findings[0].message
        );
        // Without the proof that the command was not started before the pause,
        // the window starts at the spawn: only a possible overlap.
        events[1].state = Some("command-started".into());
        let a = clean(&events);
        assert_eq!(a.violations().count(), 0, "{:?}", a.findings);
        assert_eq!(kinds(&a, true), vec![FindingKind::PossibleOverlap]);
    }

    #[test]
    fn a_fenced_store_accepting_a_stale_token_is_never_expected() {
        let paused = run(1, 0);
        let mut events = vec![
            start(paused, S, 1),
            Event::new(Kind::Stop, 2 * S).run(paused),
        ];
        let mut newer = section(run(2, 0), 4 * S, 5 * S, 2);
        newer[1].commit = Some(COMMIT_FENCED_ACCEPTED.into());
        events.extend(newer);
        let mut stale = end(paused, 7 * S, 1);
        stale.commit = Some(COMMIT_FENCED_ACCEPTED.into());
        events.push(stale);
        let a = clean(&events);
        assert_eq!(kinds(&a, false), vec![FindingKind::CommitTokenRegression]);
        // Rejected by the store: not a commit at all.
        let last = events.len() - 1;
        events[last].commit = Some(format!("{COMMIT_FENCED_REJECTED}: exit 75"));
        let a = clean(&events);
        assert_eq!(a.violations().count(), 0, "{:?}", a.findings);
    }

    #[test]
    fn detects_a_lock_left_held_past_its_ttl() {
        let r = run(1, 0);
        let mut events = vec![begin(2000)];
        events.extend(section(r, S, 2 * S, 1));
        events.push(exit(r, 3 * S));
        // Still held long after the last exit.
        events.push(final_state(3 * S + 5 * S, "held"));
        assert_eq!(
            kinds(&clean(&events), false),
            vec![FindingKind::LockLeftHeld]
        );
        // Stale within the bound: fine.
        let last = events.len() - 1;
        events[last] = final_state(3 * S + 2 * S, "stale");
        assert!(clean(&events).findings.is_empty());
        // Never checked: a violation too.
        events.pop();
        assert_eq!(
            kinds(&clean(&events), false),
            vec![FindingKind::LockLeftHeld]
        );
    }

    #[test]
    fn detects_clock_mismatch_and_malformed_lines() {
        let r = run(1, 0);
        let mut events = vec![Event::new(Kind::Spawn, 5 * S).run(r)];
        events.extend(section(r, S, 2 * S, 1));
        let a = analyze(&events, &["oops".into()]);
        assert_eq!(
            kinds(&a, false),
            vec![FindingKind::Malformed, FindingKind::ClockSanity]
        );
        let orphan_end = vec![end(run(9, 9), S, 3)];
        assert_eq!(
            kinds(&clean(&orphan_end), false),
            vec![FindingKind::Malformed]
        );
    }

    #[test]
    fn parses_complete_lines_only_while_live() {
        let line = serde_json::to_string(&start(run(1, 2), 7, 3)).unwrap_or_default();
        let text = format!("{line}\n{{\"ev\":\"end\",\"t\":");
        let (events, bad) = parse(&text, true);
        assert_eq!(events.len(), 1);
        assert!(bad.is_empty());
        assert_eq!(events[0].run_id(), Some(run(1, 2)));
        let (_, bad) = parse(&text, false);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn the_log_appends_whole_lines() {
        let dir = std::env::temp_dir().join(format!("gcslock-chaos-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("events.jsonl");
        let log = Log::create(&path).expect("create");
        let other = Log::open(&path).expect("open");
        log.append(&start(run(1, 0), 1, 1)).expect("append");
        other.append(&end(run(1, 0), 2, 1)).expect("append");
        let (events, bad) = read(&path, false).expect("read");
        assert!(bad.is_empty());
        assert_eq!(events.len(), 2);
        let a = analyze(&events, &bad);
        assert!(a.findings.is_empty());
        let text = render(&events, 0, &[run(1, 0)].into_iter().collect());
        assert!(text.contains(">>"), "{text}");
        assert!(text.contains("token 1"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
