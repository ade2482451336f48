//! The shared history (one JSON object per line, appended with a single write(2)
//! on an O_APPEND file) and the checker that judges it.
//!
//! The checker is pure: it sees only the events, so the same code judges a live
//! run, a saved `events.jsonl` (`gcslock-chaos check FILE`) and the synthetic
//! histories of the unit tests (`tests.rs`).
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
//!
//! `events` is the recorded history and its parsing, `sections` the critical
//! sections the events bound, `checks` one function per rule, and `render` the
//! report text.

mod checks;
mod events;
mod render;
mod sections;

pub use checks::{analyze, lock_free_deadline, Analysis, Finding, FindingKind};
pub use events::{
    parse, read, Event, Kind, Log, RunId, COMMIT_FENCED_ACCEPTED, COMMIT_FENCED_REJECTED,
    COMMIT_UNFENCED, STOPPED_GCSLOCK_ONLY, STOPPED_NO_COMMAND,
};
pub use render::{excerpt, render};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_terms;
