//! Scenario `elect` (el): `gcslock elect` candidates under crashes, kills of
//! gcslock alone, partitions and graceful stops (issue 17).

use std::time::Duration;

use super::{base, Chaos, Scenario, TTL_MS};

pub fn scenario(soak: bool) -> Scenario {
    Scenario {
        chaos: Chaos::Election {
            faults: if soak { 16 } else { 4 },
            every_ms: (1_000, 2_500),
            // Longer than the lease, so that a cut always costs the leader its term.
            cut_ms: 2 * TTL_MS + 1_000,
            settle_ms: 3_000,
        },
        // Terms end by the command's exit as often as by faults. A term outlasts
        // the lease, so that a cut or a dead gcslock always leaves a command that
        // must be killed before the next term.
        hold_ms: (2_500, 3_500),
        // A command that ignores SIGTERM for 3 s: only gcslock's SIGKILL stops it in time.
        term_delay_ms: 3_000,
        watch_deaths: true,
        wall_limit: Duration::from_secs(if soak { 240 } else { 45 }),
        ..base(
            "elect",
            "el",
            "three `gcslock elect` candidates, each term a recorder that holds then exits; a \
             candidate is crashed with its command, killed alone, cut from storage or stopped \
             gracefully (then restarted); no two terms overlap, tokens grow",
            3,
            // The most times one worker starts its candidate (each fault but a cut ends one).
            if soak { 20 } else { 8 },
        )
    }
}
