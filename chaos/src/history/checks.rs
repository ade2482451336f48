//! The checker: one function per rule, each judging the sections (and, where it
//! needs them, the raw events) and returning what it found.

use std::collections::HashMap;

use super::events::{Event, Kind, RunId, STOPPED_GCSLOCK_ONLY, STOPPED_NO_COMMAND};
use super::render::span;
use super::sections::{self, by_run, malformed_event, Commit, Section, SectionEnd};
use crate::clock::{ms, rel};

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
    /// A command still running well after its stopped gcslock was continued.
    SlowStopAfterResume,
    /// `--once-per`: a command of a slot started after a run of that slot succeeded.
    SlotRunAfterDone,
    /// `--once-per`: a run exited 0 without running although its slot was not done.
    SlotSkippedUndone,
    /// `--once-per`: a slot's run failed, a run of the slot was still trying, and
    /// nobody ran the command again.
    FailedSlotNotRetried,
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
            Self::SlowStopAfterResume => "slow-stop-after-resume",
            Self::SlotRunAfterDone => "slot-run-after-done",
            Self::SlotSkippedUndone => "slot-skipped-undone",
            Self::FailedSlotNotRetried => "failed-slot-not-retried",
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
    last_exit
        .saturating_add(ttl_ns)
        .saturating_add(default_margin_ns(ttl_ns))
        .saturating_add(ms(1_000))
        .saturating_add(ms(500))
}

/// Judges a complete history.
pub fn analyze(events: &[Event], malformed: &[String]) -> Analysis {
    let origin = origin(events);
    let (sections, misfits) = sections::build(events);
    let mut findings = unparsable_lines(malformed, origin);
    findings.extend(misfits);
    findings.extend(unresolved_ends(&sections, origin));
    findings.extend(clock_sanity(events, &sections, origin));
    let holders = events
        .iter()
        .find(|e| e.ev == Kind::Begin)
        .and_then(|e| e.holders)
        .unwrap_or(1);
    // A semaphore's places are locks: each obeys the lock's rules on its own.
    findings.extend(per_place(&sections, |place| overlaps(place, origin)));
    if holders > 1 {
        findings.extend(over_capacity(&sections, holders, origin));
    } else {
        // An unrecorded command's place is unknown: judged for a lock only.
        findings.extend(unrecorded_overlaps(events, &sections, origin));
    }
    findings.extend(per_place(&sections, |place| token_order(place, origin)));
    findings.extend(per_place(&sections, |place| commit_order(place, origin)));
    findings.extend(lock_left_held(events, origin));
    findings.extend(stopped_after_resume(events, &sections, origin));
    findings.extend(once_per_slots(events, &sections, origin));
    findings.sort_by_key(|f| (f.expected, f.at));
    Analysis {
        max_concurrent: max_concurrent(&sections),
        sections,
        findings,
        origin,
    }
}

/// Time origin: the begin event, else the first event.
fn origin(events: &[Event]) -> u64 {
    events
        .iter()
        .find(|e| e.ev == Kind::Begin)
        .or_else(|| events.iter().min_by_key(|e| e.t))
        .map_or(0, |e| e.t)
}

/// Lines of the history that do not parse.
fn unparsable_lines(malformed: &[String], origin: u64) -> Vec<Finding> {
    malformed
        .iter()
        .map(|line| Finding {
            kind: FindingKind::Malformed,
            expected: false,
            message: format!("unparsable history line: {line}"),
            runs: vec![],
            at: origin,
        })
        .collect()
}

/// A section that nothing bounds: no end, abort, kill or death.
fn unresolved_ends(sections: &[Section], origin: u64) -> Vec<Finding> {
    sections
        .iter()
        .filter(|section| section.end_bound() == u64::MAX)
        .map(|section| Finding {
            kind: FindingKind::UnresolvedEnd,
            expected: false,
            message: format!(
                "{}: {}; it is treated as running to the end of the history",
                span(section, origin),
                if section.end == SectionEnd::Unknown {
                    "no end, abort, kill or death was recorded"
                } else {
                    "a helper process it started was never seen dead"
                }
            ),
            runs: vec![section.run],
            at: section.start,
        })
        .collect()
}

/// A section that ends before it starts, or starts before its gcslock was
/// spawned: the processes do not share one monotonic clock.
fn clock_sanity(events: &[Event], sections: &[Section], origin: u64) -> Vec<Finding> {
    let spawns = by_run(events, Kind::Spawn);
    let mut findings = Vec::new();
    for section in sections {
        if section.end_bound() < section.start {
            findings.push(Finding {
                kind: FindingKind::ClockSanity,
                expected: false,
                message: format!("{} ends before it starts", span(section, origin)),
                runs: vec![section.run],
                at: section.start,
            });
        }
        if let Some(spawn) = spawns.get(&section.run).and_then(|s| s.first()) {
            if section.start < spawn.t {
                findings.push(Finding {
                    kind: FindingKind::ClockSanity,
                    expected: false,
                    message: format!(
                        "{} starts at {}, before its gcslock was spawned at {}: the processes \
                         do not share one monotonic clock",
                        span(section, origin),
                        rel(section.start, origin),
                        rel(spawn.t, origin)
                    ),
                    runs: vec![section.run],
                    at: section.start,
                });
            }
        }
    }
    findings
}

/// Rule 1: no two sections overlap, unless a pause that had begun by the time
/// the overlap began explains it.
fn overlaps(sections: &[Section], origin: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (i, a) in sections.iter().enumerate() {
        for b in sections.iter().skip(i.saturating_add(1)) {
            if b.start >= a.end_bound() {
                continue;
            }
            let overlap = a.end_bound().min(b.end_bound()).saturating_sub(b.start);
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
    findings
}

/// Runs `check` on the sections of each place separately (one place for a lock).
fn per_place(sections: &[Section], check: impl Fn(&[Section]) -> Vec<Finding>) -> Vec<Finding> {
    let mut places: Vec<u32> = sections.iter().map(|s| s.place).collect();
    places.sort_unstable();
    places.dedup();
    places
        .into_iter()
        .flat_map(|place| {
            let of_place: Vec<Section> = sections
                .iter()
                .filter(|s| s.place == place)
                .cloned()
                .collect();
            check(&of_place)
        })
        .collect()
}

/// Rule 1 for a semaphore (`--holders N`): never more than N sections at once,
/// whichever places they hold (expected only if one of them was paused while it ran).
fn over_capacity(sections: &[Section], holders: u32, origin: u64) -> Vec<Finding> {
    let mut marks: Vec<(u64, i8, usize)> = sections
        .iter()
        .enumerate()
        .flat_map(|(i, s)| [(s.start, 1, i), (s.end_bound(), -1, i)])
        .collect();
    // At one instant, ends before starts: touching sections do not overlap.
    marks.sort();
    let mut open: Vec<&Section> = Vec::new();
    let mut findings = Vec::new();
    for (t, delta, i) in marks {
        let Some(section) = sections.get(i) else {
            continue;
        };
        if delta < 0 {
            open.retain(|s| s.run != section.run);
            continue;
        }
        open.push(section);
        if open.len() > usize::try_from(holders).unwrap_or(usize::MAX) {
            let expected = open.iter().any(|s| s.paused_at.is_some_and(|p| p <= t));
            findings.push(Finding {
                kind: FindingKind::Overlap,
                expected,
                message: format!(
                    "{} sections at once, more than the {holders} places: {}{}",
                    open.len(),
                    open.iter()
                        .map(|s| format!("{} (place {})", span(s, origin), s.place))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if expected {
                        " (expected: a holder was paused past its TTL)"
                    } else {
                        ""
                    }
                ),
                runs: open.iter().map(|s| s.run).collect(),
                at: t,
            });
        }
    }
    findings
}

/// Rule 1 for commands gcslock started but that never recorded: they ran at some
/// time in [lower, upper]: from the spawn of their gcslock, or from the SIGCONT
/// that ended a pause which caught that gcslock before it had started any
/// command, to gcslock's exit. A section covering that whole window surely
/// overlapped; one meeting part of it possibly did.
fn unrecorded_overlaps(events: &[Event], sections: &[Section], origin: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
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
    findings
}

/// The most sections running at once; ends sort before starts at the same instant.
fn max_concurrent(sections: &[Section]) -> usize {
    let mut marks: Vec<(u64, i8)> = sections
        .iter()
        .flat_map(|s| [(s.start, 1), (s.end_bound(), -1)])
        .collect();
    marks.sort();
    let mut current = 0i64;
    let mut max_concurrent = 0i64;
    for (_, delta) in marks {
        current = current.saturating_add(i64::from(delta));
        max_concurrent = max_concurrent.max(current);
    }
    usize::try_from(max_concurrent).unwrap_or(0)
}

/// Rule 2a: tokens are unique, and grow in the order sections start (a smaller
/// one is expected only from a section that started while its gcslock was stopped).
fn token_order(sections: &[Section], origin: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut first_with: HashMap<u64, &Section> = HashMap::new();
    let mut highest: Option<&Section> = None;
    for section in sections {
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
    findings
}

/// Rule 2b: commits, in time order, carry growing tokens. A stale commit is
/// expected only unfenced, from a holder that was paused; a fenced store
/// accepting one never is.
fn commit_order(sections: &[Section], origin: u64) -> Vec<Finding> {
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
    let mut findings = Vec::new();
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
    findings
}

/// Rule 3: once every worker is gone, the lock is free, released or stale
/// within one TTL (see `lock_free_deadline`), and that was checked.
fn lock_left_held(events: &[Event], origin: u64) -> Option<Finding> {
    let begin = events.iter().find(|e| e.ev == Kind::Begin)?;
    let ttl = ms(begin.ttl_ms.unwrap_or(0));
    let last_exit = events
        .iter()
        .filter(|e| matches!(e.ev, Kind::Exit | Kind::Kill | Kind::Dead))
        .map(|e| e.t)
        .max()
        .unwrap_or(begin.t);
    let deadline = lock_free_deadline(last_exit, ttl);
    let Some(last) = events.iter().rfind(|e| e.ev == Kind::Final) else {
        return Some(Finding {
            kind: FindingKind::LockLeftHeld,
            expected: false,
            message: "the lock's final state was never checked".into(),
            runs: vec![],
            at: last_exit,
        });
    };
    let state = last.state.as_deref().unwrap_or("unknown");
    let free = matches!(state, "free" | "released" | "stale");
    if free && last.t <= deadline {
        return None;
    }
    Some(Finding {
        kind: FindingKind::LockLeftHeld,
        expected: false,
        message: format!(
            "the lock was {state} at {}, after the last worker exited at {}; it must be free, \
             released or stale by {} (TTL {} ms + margin + 1 s Date granularity + 0.5 s): {}",
            rel(last.t, origin),
            rel(last_exit, origin),
            rel(deadline, origin),
            ttl / 1_000_000,
            last.note.as_deref().unwrap_or("")
        ),
        runs: vec![],
        at: last.t,
    })
}

/// How soon after SIGCONT a gcslock that was stopped alone (its command ran on)
/// must have stopped its command: it looks at the lease every 100 ms and then
/// SIGKILLs at once, as the deadline has passed; the rest is room for a loaded
/// 2-core machine.
pub const RESUME_STOP_BOUND_NS: u64 = 1_000_000_000;

/// Scenario `gcslock-stopped`: gcslock alone was SIGSTOPped past its lease while
/// its command ran on. The overlap that follows is expected (gcslock could not
/// act), but once continued it must stop the command at once: the section (the
/// recorder and its helpers) must be gone by SIGCONT + [`RESUME_STOP_BOUND_NS`].
fn stopped_after_resume(events: &[Event], sections: &[Section], origin: u64) -> Vec<Finding> {
    let mut findings = Vec::new();
    for stop in events
        .iter()
        .filter(|e| e.ev == Kind::Stop && e.state.as_deref() == Some(STOPPED_GCSLOCK_ONLY))
    {
        let Some(run) = stop.run_id() else {
            findings.push(malformed_event(stop, "stop event without a run"));
            continue;
        };
        let Some(cont) = events
            .iter()
            .filter(|e| e.ev == Kind::Cont && e.run_id() == Some(run) && e.t >= stop.t)
            .map(|e| e.t)
            .min()
        else {
            continue; // never continued: nothing to judge
        };
        let bound = cont.saturating_add(RESUME_STOP_BOUND_NS);
        for section in sections.iter().filter(|s| s.run == run) {
            let end = section.end_bound();
            if end <= bound {
                continue;
            }
            findings.push(Finding {
                kind: FindingKind::SlowStopAfterResume,
                expected: false,
                message: format!(
                    "{}: gcslock alone was stopped at {} and continued at {}, its lease long \
                     gone, but its command ran until {}: it must be stopped within {} ms of \
                     the SIGCONT",
                    span(section, origin),
                    rel(stop.t, origin),
                    rel(cont, origin),
                    rel(end, origin),
                    RESUME_STOP_BOUND_NS / 1_000_000
                ),
                runs: vec![run],
                at: cont,
            });
        }
    }
    findings
}

/// How long after a failed run of a slot a run of the same slot that was still
/// trying must have taken the lock: the failed holder's lease runs out (one TTL
/// plus the margin after its last refresh) and a waiter polls about once per TTL;
/// the last second is room for a loaded machine.
pub fn retry_grace_ns(ttl_ns: u64) -> u64 {
    ttl_ns
        .saturating_mul(2)
        .saturating_add(default_margin_ns(ttl_ns))
        .saturating_add(ms(1_000))
}

/// One `gcslock run --once-per` invocation as the checker sees it.
struct SlotRun<'a> {
    run: RunId,
    slot: u64,
    spawned: u64,
    exit: Option<&'a Event>,
    section: Option<&'a Section>,
    unrecorded: bool,
}

impl SlotRun<'_> {
    fn exited_0(&self) -> bool {
        self.exit.is_some_and(|e| e.code == Some(0))
    }

    /// The command ran and succeeded, and gcslock said so (and so recorded the slot).
    fn succeeded(&self) -> bool {
        self.exited_0()
            && self.section.is_some_and(|s| {
                matches!(s.end, SectionEnd::Committed { .. }) && s.failed_with.is_none()
            })
    }

    /// gcslock exited 0 without starting the command: the slot was done.
    fn skipped(&self) -> bool {
        self.exited_0() && self.section.is_none() && !self.unrecorded
    }

    fn exited_at(&self) -> u64 {
        self.exit.map_or(u64::MAX, |e| e.t)
    }
}

/// `--once-per` (scenario `once-per`): runs whose spawn names a slot.
/// * No command of a slot starts after a run of that slot has succeeded (so at
///   most one success per slot).
/// * A run that exits 0 without running its command does so only after a run of
///   its slot succeeded (a failed run does not record the slot).
/// * When a run of a slot fails (its job exits non-zero, or is killed) and
///   another run of that slot is still trying [`retry_grace_ns`] later, the
///   command starts again after the failure.
fn once_per_slots(events: &[Event], sections: &[Section], origin: u64) -> Vec<Finding> {
    let ttl = events
        .iter()
        .find(|e| e.ev == Kind::Begin)
        .and_then(|e| e.ttl_ms)
        .map_or(0, ms);
    let grace = retry_grace_ns(ttl);
    let exits = by_run(events, Kind::Exit);
    let unrecorded = by_run(events, Kind::Unrecorded);
    let mut slots: HashMap<u64, Vec<SlotRun<'_>>> = HashMap::new();
    for spawn in events.iter().filter(|e| e.ev == Kind::Spawn) {
        let (Some(run), Some(slot)) = (spawn.run_id(), spawn.slot) else {
            continue;
        };
        slots.entry(slot).or_default().push(SlotRun {
            run,
            slot,
            spawned: spawn.t,
            exit: exits.get(&run).and_then(|e| e.first().copied()),
            section: sections.iter().find(|s| s.run == run),
            unrecorded: unrecorded.contains_key(&run),
        });
    }
    let mut findings = Vec::new();
    let mut ordered: Vec<(&u64, &Vec<SlotRun<'_>>)> = slots.iter().collect();
    ordered.sort_by_key(|(slot, _)| **slot);
    for (_, runs) in ordered {
        let first_success = runs
            .iter()
            .filter(|r| r.succeeded())
            .filter_map(|r| Some((r.section?.end_bound(), r)))
            .min_by_key(|(t, _)| *t);
        if let Some((done_at, done)) = first_success {
            for late in runs
                .iter()
                .filter_map(|r| r.section)
                .filter(|s| s.start > done_at)
            {
                findings.push(Finding {
                    kind: FindingKind::SlotRunAfterDone,
                    expected: false,
                    message: format!(
                        "slot {}: {} started its command after {} had completed the slot at {}",
                        done.slot,
                        span(late, origin),
                        done.run,
                        rel(done_at, origin)
                    ),
                    runs: vec![done.run, late.run],
                    at: late.start,
                });
            }
        }
        for skip in runs.iter().filter(|r| r.skipped()) {
            let done_before = first_success.is_some_and(|(t, _)| t <= skip.exited_at());
            if !done_before {
                findings.push(Finding {
                    kind: FindingKind::SlotSkippedUndone,
                    expected: false,
                    message: format!(
                        "slot {}: {} exited 0 at {} without running its command, but no run \
                         of the slot had succeeded by then",
                        skip.slot,
                        skip.run,
                        rel(skip.exited_at(), origin)
                    ),
                    runs: vec![skip.run],
                    at: skip.exited_at(),
                });
            }
        }
        for failed in runs.iter().filter(|r| !r.succeeded()) {
            let Some(section) = failed.section else {
                continue;
            };
            let failed_at = section.end_bound();
            let by = failed_at.saturating_add(grace);
            let retried = runs
                .iter()
                .filter_map(|r| r.section)
                .any(|s| s.start >= failed_at && s.run != failed.run);
            let trying = runs
                .iter()
                .filter(|r| r.run != failed.run && r.spawned <= by && r.exited_at() >= by)
                .map(|r| r.run)
                .collect::<Vec<_>>();
            if retried || trying.is_empty() || first_success.is_some_and(|(t, _)| t <= failed_at) {
                continue;
            }
            let mut involved = vec![failed.run];
            involved.extend(trying.iter().copied());
            findings.push(Finding {
                kind: FindingKind::FailedSlotNotRetried,
                expected: false,
                message: format!(
                    "slot {}: {} failed ({}), and {} still tried to run at {} (failure + {} ms), \
                     but nobody ran the command again",
                    failed.slot,
                    span(section, origin),
                    match (section.failed_with, failed.exit.and_then(|e| e.code)) {
                        (Some(code), _) => format!("the job exited {code}"),
                        (None, Some(code)) => format!("gcslock exited {code}"),
                        (None, None) => "killed".to_owned(),
                    },
                    trying
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    rel(by, origin),
                    grace / 1_000_000
                ),
                runs: involved,
                at: failed_at,
            });
        }
    }
    findings
}
