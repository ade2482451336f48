//! Scenario `stderr-full` (h2): scenario h's cut-off holders with a stderr that
//! nobody drains (issue 16, item 1).

use std::time::Duration;

use super::{base, Chaos, Scenario, TTL_MS};

pub fn scenario(soak: bool) -> Scenario {
    Scenario {
        chaos: Chaos::CutOff {
            count: if soak { 6 } else { 2 },
            cut_ms: 2 * TTL_MS + 1_000,
            every_ms: (500, 1_500),
        },
        hold_ms: (2_500, 3_500),
        term_delay_ms: 3_000,
        watch_deaths: true,
        undrained_stderr: true,
        wall_limit: Duration::from_secs(if soak { 240 } else { 40 }),
        ..base(
            "stderr-full",
            "h2",
            "as cut-off (h), with gcslock's stderr a pipe that is full and never read: its \
             logging must not delay the SIGKILL of a command that ignores SIGTERM",
            if soak { 5 } else { 3 },
            // One run each in short: the two cuts land on two of the three sections.
            if soak { 4 } else { 1 },
        )
    }
}
