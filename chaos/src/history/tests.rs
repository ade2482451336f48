use super::checks::retry_grace_ns;
use super::events::parse;
use super::events::STOPPED_GCSLOCK_ONLY;
use super::sections::SectionEnd;
use super::*;

const S: u64 = 1_000_000_000;

fn run(worker: u32, attempt: u32) -> RunId {
    RunId { worker, attempt }
}

fn start(r: RunId, t: u64, token: u64) -> Event {
    let mut e = Event::new(Kind::Start, t).run(r);
    e.token = Some(token);
    e.pid = Some(pid_of(r));
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

/// The history of these `(run, from, to, token)` sections, in this order.
fn sections(list: &[(RunId, u64, u64, u64)]) -> Vec<Event> {
    list.iter()
        .flat_map(|&(r, from, to, token)| section(r, from, to, token))
        .collect()
}

/// A signal event (`Stop`, `Kill`) whose signal was sent at `t`.
fn signalled(kind: Kind, r: RunId, t: u64) -> Event {
    let mut e = Event::new(kind, t).run(r);
    e.sent = Some(t);
    e
}

fn abort(r: RunId, t: u64) -> Event {
    let mut e = Event::new(Kind::Abort, t).run(r);
    e.signal = Some(15);
    e
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
    exit_with(r, t, Some(0))
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
    let events = sections(&[(run(1, 0), S, 3 * S, 1), (run(2, 0), 2 * S, 4 * S, 2)]);
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
    let events = sections(&[
        (run(1, 0), S, 10 * S, 1),
        (run(2, 0), 4 * S, 5 * S, 2),
        (run(3, 0), 11 * S, 12 * S, 3),
    ]);
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
    let mut events = vec![start(a_run, S, 1), signalled(Kind::Stop, a_run, 3 * S)];
    // Worker 2 starts at 2s, while worker 1 was still running unpaused.
    events.extend(section(run(2, 0), 2 * S, 6 * S, 2));
    events.push(end(a_run, 7 * S, 1));
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
    // The stale commit after the pause is still the expected kind of anomaly.
    assert_eq!(kinds(&a, true), vec![FindingKind::CommitTokenRegression]);
    // A stop sent after the section ended explains nothing either.
    let mut events = vec![signalled(Kind::Stop, run(3, 0), 9 * S)];
    events.extend(sections(&[
        (run(3, 0), S, 8 * S, 3),
        (run(4, 0), 4 * S, 5 * S, 4),
    ]));
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
    let events = vec![
        start(r, S, 1),
        abort(r, 2 * S),
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
    let events = sections(&[(run(1, 0), S, 2 * S, 5), (run(2, 0), 3 * S, 4 * S, 4)]);
    let a = clean(&events);
    assert_eq!(
        kinds(&a, false),
        vec![
            FindingKind::AcquireTokenRegression,
            FindingKind::CommitTokenRegression
        ]
    );
    // Equal tokens: a duplicate, and a commit that is not greater.
    let events = sections(&[(run(1, 0), S, 2 * S, 5), (run(2, 0), 3 * S, 4 * S, 5)]);
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
    let events = sections(&[(run(1, 0), S, 5 * S, 1), (run(2, 0), 2 * S, 3 * S, 2)]);
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
    events.extend(sections(&[
        (run(3, 0), 8 * S, 9 * S, 3),
        (run(4, 0), 8 * S + 500, 10 * S, 4),
    ]));
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
}

#[test]
fn a_section_started_after_its_gcslock_resumed_is_not_excused() {
    // gcslock paused while acquiring (no section yet), resumed at 6s, and only
    // then started its command although w2 held the lock: not excused.
    let late = run(1, 0);
    let mut events = vec![
        signalled(Kind::Stop, late, S),
        Event::new(Kind::Cont, 6 * S).run(late),
    ];
    events.extend(section(run(2, 0), 4 * S, 8 * S, 2));
    events.push(start(late, 6 * S + 1000, 1));
    events.push(abort(late, 6 * S + 5000));
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
    let mut stop = signalled(Kind::Stop, late, S);
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

fn dead(r: RunId, t: u64, pid: i32) -> Event {
    let mut e = Event::new(Kind::Dead, t).run(r);
    e.pid = Some(pid);
    e
}

fn pid_of(r: RunId) -> i32 {
    1000 + i32::try_from(r.worker * 100 + r.attempt).unwrap_or(0)
}

fn helper(r: RunId, t: u64, pid: i32) -> Event {
    let mut e = Event::new(Kind::Helper, t).run(r);
    e.pid = Some(pid);
    e.ppid = Some(pid_of(r));
    e
}

fn term(r: RunId, t: u64) -> Event {
    let mut e = Event::new(Kind::Term, t).run(r);
    e.pid = Some(pid_of(r));
    e.signal = Some(15);
    e
}

/// Scenario h: a cut-off holder whose command stops slowly after SIGTERM. Its
/// section lasts until the recorder is seen dead, whatever `term` said.
#[test]
fn a_slowly_stopping_command_lasts_until_it_is_seen_dead() {
    let holder = run(1, 0);
    let waiter = run(2, 0);
    let history = |death: u64| {
        let mut events = vec![start(holder, S / 10, 1), term(holder, 2 * S)];
        events.push(dead(holder, death, pid_of(holder)));
        events.extend(section(waiter, 3 * S, 4 * S, 2));
        events
    };
    // gcslock's SIGKILL landed before the waiter took over.
    let a = clean(&history(2 * S + S / 2));
    assert!(a.findings.is_empty(), "{:?}", a.findings);
    assert_eq!(a.sections[0].end, SectionEnd::Dead { t: 2 * S + S / 2 });
    // It ran on, handling SIGTERM, after the waiter started.
    let a = clean(&history(3 * S + S / 2));
    assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
}

/// Scenario i: the job is the recorder and the helper it started; the section
/// lasts until both are gone.
#[test]
fn a_helper_that_outlives_its_recorder_extends_the_section() {
    let holder = run(1, 0);
    let waiter = run(2, 0);
    let helper_pid = 7777;
    let history = |helper_death: Option<u64>| {
        let mut events = vec![
            start(holder, S, 1),
            helper(holder, S + 1, helper_pid),
            dead(holder, 2 * S, pid_of(holder)),
        ];
        events.extend(helper_death.map(|t| dead(holder, t, helper_pid)));
        events.extend(section(waiter, 3 * S, 4 * S, 2));
        events
    };
    let a = clean(&history(Some(2 * S + 1)));
    assert!(a.findings.is_empty(), "{:?}", a.findings);
    assert_eq!(a.sections[0].end_bound(), 2 * S + 1);

    let a = clean(&history(Some(3 * S + 1)));
    assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
    assert_eq!(a.sections[0].end_bound(), 3 * S + 1);

    // A helper never seen dead leaves the section unbounded.
    let a = clean(&history(None));
    assert_eq!(
        kinds(&a, false),
        vec![FindingKind::UnresolvedEnd, FindingKind::Overlap]
    );
}

/// A death recorded for the same pid before the helper started (pid reuse) does
/// not bound it.
#[test]
fn a_death_before_a_process_started_does_not_bound_it() {
    let holder = run(1, 0);
    let events = vec![
        dead(run(3, 0), S / 2, 7777),
        start(holder, S, 1),
        helper(holder, S + 1, 7777),
        end(holder, 2 * S, 1),
    ];
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::UnresolvedEnd]);
}

fn stop_gcslock_only(r: RunId, stop_at: u64, cont_at: u64) -> [Event; 2] {
    let mut stop = signalled(Kind::Stop, r, stop_at);
    stop.state = Some(STOPPED_GCSLOCK_ONLY.into());
    let cont = Event::new(Kind::Cont, cont_at).run(r);
    [stop, cont]
}

/// Scenario j: gcslock alone stopped past its lease. The overlap is expected; a
/// command still running more than the bound after SIGCONT is not.
#[test]
fn a_command_must_stop_soon_after_its_gcslock_is_continued() {
    let victim = run(0, 0);
    let contender = run(1, 0);
    let history = |death: u64| {
        let mut events = vec![start(victim, S / 10, 1)];
        events.extend(stop_gcslock_only(victim, S / 2, 5 * S));
        events.extend(section(contender, 3 * S, 6 * S, 2));
        events.push(dead(victim, death, pid_of(victim)));
        events
    };
    let a = clean(&history(5 * S + S / 5));
    assert!(kinds(&a, false).is_empty(), "{:?}", a.findings);
    assert_eq!(kinds(&a, true), vec![FindingKind::Overlap]);

    let a = clean(&history(5 * S + 2 * S));
    assert_eq!(kinds(&a, false), vec![FindingKind::SlowStopAfterResume]);
    assert_eq!(kinds(&a, true), vec![FindingKind::Overlap]);
}

fn spawn_in_slot(r: RunId, t: u64, slot: u64) -> Event {
    let mut e = Event::new(Kind::Spawn, t).run(r);
    e.slot = Some(slot);
    e
}

fn exit_with(r: RunId, t: u64, code: Option<i32>) -> Event {
    let mut e = Event::new(Kind::Exit, t).run(r);
    e.code = code;
    e.signal = code.is_none().then_some(9);
    e
}

fn failed_section(r: RunId, from: u64, to: u64, token: u64) -> [Event; 2] {
    let mut end = end(r, to, token);
    end.code = Some(1);
    [start(r, from, token), end]
}

/// Slot 7 fired by w0 and w1 (which waits); w0 ran the job, and it failed.
fn slot_failed_by_w0() -> Vec<Event> {
    let (w0, w1) = (run(0, 0), run(1, 0));
    let mut events = vec![begin(2000)];
    events.push(spawn_in_slot(w0, S / 10, 7));
    events.push(spawn_in_slot(w1, S / 5, 7));
    events.extend(failed_section(w0, S / 2, S, 1));
    events.push(exit_with(w0, S + 1, Some(1)));
    events
}

/// One slot: w0 fails, w1 (waiting) retries and succeeds, w2 fires later and
/// finds the slot done.
fn once_per_tick() -> Vec<Event> {
    let (w1, w2) = (run(1, 0), run(2, 0));
    let mut events = slot_failed_by_w0();
    events.extend(section(w1, 2 * S, 3 * S, 2));
    events.push(exit_with(w1, 3 * S + 1, Some(0)));
    events.push(spawn_in_slot(w2, 3 * S + 2, 7));
    events.push(exit_with(w2, 3 * S + 3, Some(0)));
    events.push(final_state(4 * S, "released"));
    events
}

#[test]
fn a_failed_slot_retried_by_a_waiter_and_then_skipped_passes() {
    let a = clean(&once_per_tick());
    assert!(a.findings.is_empty(), "{:?}", a.findings);
}

#[test]
fn a_command_started_after_its_slot_completed_is_flagged() {
    let mut events = once_per_tick();
    // w2 ran the job although w1 had completed the slot.
    events.retain(|e| e.run_id() != Some(run(2, 0)) || e.ev == Kind::Spawn);
    events.extend(section(run(2, 0), 3 * S + 10, 3 * S + 20, 3));
    events.push(exit_with(run(2, 0), 3 * S + 30, Some(0)));
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::SlotRunAfterDone]);
}

#[test]
fn a_run_that_skips_a_slot_nobody_completed_is_flagged() {
    // As if w0's failure had recorded the slot: w1 gives up at once, w2 skips too.
    let (w1, w2) = (run(1, 0), run(2, 0));
    let mut events = slot_failed_by_w0();
    events.push(exit_with(w1, S + 2, Some(0)));
    events.push(spawn_in_slot(w2, 3 * S, 7));
    events.push(exit_with(w2, 3 * S + 1, Some(0)));
    events.push(final_state(4 * S, "released"));
    let a = clean(&events);
    assert_eq!(
        kinds(&a, false),
        vec![
            FindingKind::SlotSkippedUndone,
            FindingKind::SlotSkippedUndone
        ]
    );
}

#[test]
fn a_failed_slot_left_alone_while_a_run_still_waited_is_flagged() {
    let w1 = run(1, 0);
    let history = |waiter_exit: u64| {
        let mut events = slot_failed_by_w0();
        events.push(exit_with(w1, waiter_exit, Some(75)));
        events.push(final_state(waiter_exit + S, "released"));
        events
    };
    // The waiter gave up before the lock could be expected to reach it: fine.
    let a = clean(&history(2 * S));
    assert!(a.findings.is_empty(), "{:?}", a.findings);
    // It was still waiting long after the failure and never ran the job.
    let a = clean(&history(S + retry_grace_ns(2 * S) + S));
    assert_eq!(kinds(&a, false), vec![FindingKind::FailedSlotNotRetried]);
}

#[test]
fn a_killed_holder_counts_as_a_failed_run_of_its_slot() {
    let (w0, w1) = (run(0, 0), run(1, 0));
    let mut events = vec![begin(2000)];
    events.push(spawn_in_slot(w0, S / 10, 7));
    events.push(spawn_in_slot(w1, S / 5, 7));
    events.push(start(w0, S / 2, 1));
    events.push(signalled(Kind::Kill, w0, S));
    events.push(exit_with(w0, S + 1, None));
    events.push(exit_with(w1, 10 * S, Some(75)));
    events.push(final_state(11 * S, "free"));
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::FailedSlotNotRetried]);
}

/// A section of a semaphore place.
fn placed(r: RunId, from: u64, to: u64, token: u64, place: u32) -> [Event; 2] {
    let [mut s, e] = section(r, from, to, token);
    s.place = Some(place);
    [s, e]
}

fn begin_holders(holders: u32) -> Event {
    let mut e = begin(2000);
    e.holders = Some(holders);
    e
}

#[test]
fn a_semaphore_allows_n_at_once_with_tokens_per_place() {
    let mut events = vec![begin_holders(2)];
    // Two places busy at once, each place's tokens growing on their own.
    events.extend(placed(run(1, 0), S, 3 * S, 1, 0));
    events.extend(placed(run(2, 0), 2 * S, 4 * S, 1, 1));
    events.extend(placed(run(3, 0), 3 * S, 5 * S, 2, 0));
    events.extend(placed(run(4, 0), 4 * S, 6 * S, 2, 1));
    events.push(exit(run(4, 0), 6 * S));
    events.push(final_state(6 * S + 100, "free"));
    let a = clean(&events);
    assert!(a.findings.is_empty(), "{:?}", a.findings);
    assert_eq!(a.max_concurrent, 2);
}

#[test]
fn a_semaphore_rejects_n_plus_one_at_once_and_a_place_shared_or_going_back() {
    let mut events = vec![begin_holders(2)];
    events.extend(placed(run(1, 0), S, 4 * S, 1, 0));
    events.extend(placed(run(2, 0), 2 * S, 4 * S, 1, 1));
    // A third at once: more than the two places.
    events.extend(placed(run(3, 0), 3 * S, 5 * S, 5, 2));
    events.push(exit(run(3, 0), 5 * S));
    events.push(final_state(5 * S + 100, "free"));
    let a = clean(&events);
    assert_eq!(kinds(&a, false), vec![FindingKind::Overlap]);
    assert!(
        a.findings[0]
            .message
            .contains("3 sections at once, more than the 2 places"),
        "{}",
        a.findings[0].message
    );

    // Two holders of one place at once, and that place's token going back.
    let mut events = vec![begin_holders(3)];
    events.extend(placed(run(1, 0), S, 3 * S, 4, 1));
    events.extend(placed(run(2, 0), 2 * S, 4 * S, 5, 1));
    events.extend(placed(run(3, 0), 5 * S, 6 * S, 3, 1));
    let a = clean(&events);
    let found = kinds(&a, false);
    assert!(found.contains(&FindingKind::Overlap), "{found:?}");
    assert!(
        found.contains(&FindingKind::AcquireTokenRegression),
        "{found:?}"
    );
}
