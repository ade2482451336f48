//! Several terms (sections) per gcslock process, as `gcslock elect` runs them:
//! each term is its own recorder, named by its pid.

use super::sections::SectionEnd;
use super::*;

const S: u64 = 1_000_000_000;

fn candidate(worker: u32) -> RunId {
    RunId { worker, attempt: 0 }
}

/// A recorder's event for the term whose recorder is `pid`.
fn term_event(kind: Kind, r: RunId, t: u64, token: u64, pid: i32) -> Event {
    let mut e = Event::new(kind, t).run(r);
    e.token = Some(token);
    e.pid = Some(pid);
    if kind == Kind::End {
        e.commit = Some(COMMIT_UNFENCED.into());
    }
    e
}

/// A term `[from, to]` with `token`, ended by its command's exit.
fn term(r: RunId, pid: i32, from: u64, to: u64, token: u64) -> [Event; 2] {
    [
        term_event(Kind::Start, r, from, token, pid),
        term_event(Kind::End, r, to, token, pid),
    ]
}

fn violations(events: &[Event]) -> Vec<FindingKind> {
    analyze(events, &[]).violations().map(|f| f.kind).collect()
}

#[test]
fn several_terms_of_one_candidate_are_several_sections() {
    let (a, b) = (candidate(0), candidate(1));
    let events: Vec<Event> = [
        term(a, 10, S, 2 * S, 1),
        term(b, 20, 3 * S, 4 * S, 2),
        term(a, 11, 5 * S, 6 * S, 3),
    ]
    .concat();
    let analysis = analyze(&events, &[]);
    assert!(analysis.findings.is_empty(), "{:?}", analysis.findings);
    assert_eq!(analysis.sections.len(), 3);
    assert_eq!(
        analysis.sections[2].end,
        SectionEnd::Committed {
            t: 6 * S,
            commit: sections::Commit::Unfenced
        }
    );
}

#[test]
fn an_overlap_of_two_candidates_terms_is_caught() {
    let (a, b) = (candidate(0), candidate(1));
    // b's second term starts while a's second term runs.
    let events: Vec<Event> = [
        term(a, 10, S, 2 * S, 1),
        term(b, 20, 3 * S, 4 * S, 2),
        term(a, 11, 5 * S, 7 * S, 3),
        term(b, 21, 6 * S, 8 * S, 4),
    ]
    .concat();
    assert_eq!(violations(&events), vec![FindingKind::Overlap]);
}

#[test]
fn a_later_term_with_a_smaller_token_is_caught() {
    let a = candidate(0);
    let events: Vec<Event> = [term(a, 10, S, 2 * S, 5), term(a, 11, 3 * S, 4 * S, 4)].concat();
    let found = violations(&events);
    assert!(
        found.contains(&FindingKind::AcquireTokenRegression),
        "{found:?}"
    );
    assert!(
        found.contains(&FindingKind::CommitTokenRegression),
        "{found:?}"
    );
}

#[test]
fn one_term_s_end_does_not_close_another_term() {
    let a = candidate(0);
    // pid 11's term never ends; the end of pid 10's term must not bound it.
    let mut events: Vec<Event> = term(a, 10, S, 2 * S, 1).to_vec();
    events.push(term_event(Kind::Start, a, 3 * S, 2, 11));
    assert_eq!(violations(&events), vec![FindingKind::UnresolvedEnd]);
    // A second start of the same recorder is malformed, not a new term.
    let mut twice = term(a, 10, S, 2 * S, 1).to_vec();
    twice.push(term_event(Kind::Start, a, 3 * S, 2, 10));
    assert!(violations(&twice).contains(&FindingKind::Malformed));
}

#[test]
fn a_kill_bounds_only_the_terms_that_began_before_it() {
    let (a, b) = (candidate(0), candidate(1));
    let mut kill = Event::new(Kind::Kill, 4 * S).run(a);
    kill.sent = Some(4 * S - 1000);
    // a's second term is killed at 4 s; b's term from 5 s does not overlap it.
    let mut ok: Vec<Event> = term(a, 10, S, 2 * S, 1).to_vec();
    ok.push(term_event(Kind::Start, a, 3 * S, 2, 11));
    ok.push(kill.clone());
    ok.extend(term(b, 20, 5 * S, 6 * S, 3));
    assert!(violations(&ok).is_empty(), "{:?}", violations(&ok));
    // A term of the same run that starts after the kill is not bounded by it:
    // it is unresolved, and overlaps what follows.
    let mut late: Vec<Event> = vec![kill, term_event(Kind::Start, a, 5 * S, 2, 12)];
    late.extend(term(b, 20, 7 * S, 8 * S, 3));
    let found = violations(&late);
    assert!(found.contains(&FindingKind::UnresolvedEnd), "{found:?}");
    assert!(found.contains(&FindingKind::Overlap), "{found:?}");
}

#[test]
fn a_term_lasts_until_its_own_recorder_is_seen_dead() {
    let (a, b) = (candidate(0), candidate(1));
    let dead = |t: u64, pid: i32| {
        let mut e = Event::new(Kind::Dead, t).run(a);
        e.pid = Some(pid);
        e
    };
    // Term pid 11 (a crashed gcslock's, say) dies at 6 s; b's term began at 5 s.
    let mut events: Vec<Event> = term(a, 10, S, 2 * S, 1).to_vec();
    events.push(dead(2 * S, 10));
    events.push(term_event(Kind::Start, a, 3 * S, 2, 11));
    events.extend(term(b, 20, 5 * S, 7 * S, 3));
    events.push(dead(6 * S, 11));
    assert_eq!(violations(&events), vec![FindingKind::Overlap]);
}
