//! The scenarios and the two profiles that size them.

use std::time::Duration;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Every scenario, small: under 4 minutes on 2 cores (for CI)
    Short,
    /// Every scenario, more workers and iterations, plus a mixed one (about 15-20 minutes)
    Soak,
}

/// What the orchestrator does to holders while the workers run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chaos {
    None,
    /// SIGKILL the process groups of gcslock and its child, mid-section.
    Kill {
        count: u32,
        every_ms: (u64, u64),
    },
    /// SIGSTOP them for `pause_ms` (longer than the TTL), then SIGCONT.
    Pause {
        count: u32,
        pause_ms: u64,
        every_ms: (u64, u64),
    },
    /// Rounds of: gcslock SIGSTOPped while its create is in flight, the lock
    /// taken over meanwhile, gcslock continued (see `runner::pause_acquire_rounds`).
    PauseAcquire {
        rounds: u32,
        stop_after_ms: u64,
        pause_ms: u64,
        contender_hold_ms: u64,
    },
    /// Black-hole a random holder's link to storage (its own proxy) mid-section,
    /// for `cut_ms` or until its gcslock exits.
    CutOff {
        count: u32,
        cut_ms: u64,
        every_ms: (u64, u64),
    },
    /// SIGKILL a random holder's gcslock alone, mid-section: its command (and the
    /// helper it started) run on unless gcslock's watchdog kills them.
    CrashGcslock {
        count: u32,
        every_ms: (u64, u64),
    },
    /// Rounds of: gcslock alone SIGSTOPped while its command runs (`victim_hold_ms`),
    /// the lock taken over meanwhile, gcslock continued after `pause_ms`
    /// (see `runner::stop_gcslock_rounds`).
    StopGcslock {
        rounds: u32,
        pause_ms: u64,
        victim_hold_ms: u64,
        contender_hold_ms: u64,
    },
    /// Ticks of `gcslock run --once-per PERIOD`: in each, every worker fires once
    /// at a random offset within `window_ms` after a period boundary; a job fails
    /// (exit 1) with `fail_percent` % probability; `kills` holders are SIGKILLed
    /// over the scenario (see `runner::once_per_ticks`). With `dst`, the ticks fire
    /// just before and just after the daylight-saving changes of `dst::CHANGES`,
    /// on faked New York wall clocks, instead of at period boundaries (see
    /// `runner::dst_ticks`).
    OncePer {
        ticks: u32,
        period_s: u64,
        window_ms: u64,
        fail_percent: u32,
        kills: u32,
        dst: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Short id: a, b, c, c2, d, e, f, h, i, j, k, l, g.
    pub id: &'static str,
    pub what: &'static str,
    pub workers: u32,
    /// `gcslock run` invocations per worker.
    pub iterations: u32,
    /// Critical section length, uniform in this range.
    pub hold_ms: (u64, u64),
    /// Pause between a worker's invocations, uniform in this range.
    pub gap_ms: (u64, u64),
    pub ttl_ms: u64,
    pub refresh_ms: u64,
    /// `gcslock run --wait`.
    pub wait: &'static str,
    /// Hard bound on the scenario: then workers are stopped (SIGTERM, SIGKILL).
    pub wall_limit: Duration,
    /// strict-gcs fault flags.
    pub emulator: Vec<String>,
    pub chaos: Chaos,
    /// faketime offsets (`faketime -f OFFSET`), dealt round robin to the workers.
    pub faketime: Vec<&'static str>,
    /// The recorder's slow stop: it goes on this long after SIGTERM (0: stops at once).
    pub term_delay_ms: u64,
    /// The recorder starts a helper process in its group, living as long as the hold.
    pub helper: bool,
    /// The helper leaves the recorder's process group and session (`setsid`).
    pub helper_leaves: bool,
    /// Record each recorder's and helper's death as soon as it is seen (a thread
    /// polls /proc), rather than only after its gcslock exited.
    pub watch_deaths: bool,
    /// `gcslock run --holders N`: at most N sections at once (1: the lock).
    pub holders: u32,
}

const TTL_MS: u64 = 2_000;
const REFRESH_MS: u64 = 250;

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn base(
    name: &'static str,
    id: &'static str,
    what: &'static str,
    workers: u32,
    iterations: u32,
) -> Scenario {
    Scenario {
        name,
        id,
        what,
        workers,
        iterations,
        hold_ms: (100, 700),
        gap_ms: (0, 100),
        ttl_ms: TTL_MS,
        refresh_ms: REFRESH_MS,
        wait: "30s",
        wall_limit: Duration::from_secs(45),
        emulator: vec![],
        chaos: Chaos::None,
        faketime: vec![],
        term_delay_ms: 0,
        helper: false,
        helper_leaves: false,
        watch_deaths: false,
        holders: 1,
    }
}

/// The total wall time a profile may take: each scenario's limit is cut so the
/// scenarios left still get [`MIN_SCENARIO`] each (see `main`).
pub fn budget(profile: Profile) -> Option<Duration> {
    match profile {
        Profile::Short => Some(Duration::from_secs(280)),
        Profile::Soak => None,
    }
}

/// The least wall time a scenario is given under a budget.
pub const MIN_SCENARIO: Duration = Duration::from_secs(8);

/// The scenarios of a profile, in order (a) to (f), (h) to (m) (and (g) for soak).
pub fn scenarios(profile: Profile) -> Vec<Scenario> {
    let soak = profile == Profile::Soak;
    let (workers, iterations) = if soak { (8, 12) } else { (6, 3) };
    let limit = |short: u64, long: u64| Duration::from_secs(if soak { long } else { short });
    let storm = flags(&[
        "--fail-503",
        "0.2",
        "--fail-429",
        "0.1",
        "--reset-before",
        "0.05",
        "--latency-ms",
        "3",
        "--jitter-ms",
        "3",
    ]);
    let lost = flags(&["--reset-after", "0.15", "--fault-scope", "mutations"]);
    let skew = flags(&["--skew-ms", "-5400000"]);
    let mut list =
        vec![
        Scenario {
            wall_limit: limit(40, 300),
            ..base("steady", "a", "steady contention, no faults", workers, iterations)
        },
        Scenario {
            hold_ms: (300, 800),
            chaos: Chaos::Kill {
                count: if soak { 10 } else { 2 },
                every_ms: (1_000, 2_500),
            },
            wall_limit: limit(50, 360),
            ..base(
                "kill",
                "b",
                "SIGKILL of random holders (gcslock and child process groups) mid-section",
                workers,
                iterations,
            )
        },
        Scenario {
            hold_ms: (300, 800),
            chaos: Chaos::Pause {
                count: if soak { 6 } else { 2 },
                pause_ms: 2 * TTL_MS + 500,
                every_ms: (1_000, 2_000),
            },
            wall_limit: limit(50, 360),
            ..base(
                "pause",
                "c",
                "SIGSTOP of a holder's process groups for 2xTTL, then SIGCONT (overlap expected)",
                if soak { workers } else { 5 },
                iterations,
            )
        },
        Scenario {
            emulator: flags(&["--latency-ms", "400", "--fault-scope", "mutations"]),
            chaos: Chaos::PauseAcquire {
                rounds: if soak { 5 } else { 2 },
                stop_after_ms: 200,
                pause_ms: 2 * TTL_MS + 500,
                contender_hold_ms: 3_000,
            },
            wall_limit: limit(40, 120),
            ..base(
                "pause-acquire",
                "c2",
                "gcslock SIGSTOPped while its create is in flight (400ms mutation latency), the \
                 lock taken over meanwhile, then SIGCONT: it must not start the command",
                2,
                if soak { 5 } else { 2 },
            )
        },
        Scenario {
            emulator: storm.clone(),
            wall_limit: limit(45, 360),
            ..base(
                "storm",
                "d",
                "503 20%, 429 10%, reset-before 5%, latency 3±3ms on every object request",
                workers,
                iterations,
            )
        },
        Scenario {
            emulator: lost.clone(),
            wall_limit: limit(45, 360),
            ..base(
                "lost-responses",
                "e",
                "responses lost after apply: reset-after 15% on mutations",
                workers,
                iterations,
            )
        },
        Scenario {
            emulator: skew.clone(),
            faketime: vec!["+3h", "-2h"],
            wall_limit: limit(40, 300),
            ..base(
                "skew",
                "f",
                "client wall clocks +3h / -2h (faketime), server clock -90min (--skew-ms)",
                workers,
                iterations,
            )
        },
    ];
    list.extend([
        Scenario {
            chaos: Chaos::CutOff {
                count: if soak { 6 } else { 2 },
                cut_ms: 2 * TTL_MS + 1_000,
                every_ms: (500, 1_500),
            },
            // Longer than the lease, so that a cut always costs the holder its lease.
            hold_ms: (2_500, 3_500),
            term_delay_ms: 3_000,
            watch_deaths: true,
            wall_limit: limit(40, 240),
            ..base(
                "cut-off",
                "h",
                "a holder's link to storage black-holed mid-section; its command takes 3s to \
                 stop after SIGTERM, so gcslock must SIGKILL it before waiters take over",
                if soak { 5 } else { 3 },
                if soak { 4 } else { 2 },
            )
        },
        Scenario {
            chaos: Chaos::CrashGcslock {
                count: if soak { 6 } else { 2 },
                every_ms: (500, 1_500),
            },
            hold_ms: (3_000, 4_000),
            helper: true,
            watch_deaths: true,
            wall_limit: limit(40, 240),
            ..base(
                "gcslock-killed",
                "i",
                "SIGKILL of a holder's gcslock alone; its command and the helper it started \
                 must die with it (watchdog), not run on beside the next holder",
                if soak { 4 } else { 3 },
                if soak { 4 } else { 2 },
            )
        },
        Scenario {
            chaos: Chaos::StopGcslock {
                rounds: if soak { 4 } else { 2 },
                pause_ms: 2 * TTL_MS + 500,
                victim_hold_ms: 2 * TTL_MS + 4_000,
                contender_hold_ms: 3_000,
            },
            watch_deaths: true,
            wall_limit: limit(30, 90),
            ..base(
                "gcslock-stopped",
                "j",
                "gcslock alone SIGSTOPped for 2xTTL while its command runs on (overlap \
                 expected); on SIGCONT it must kill the command within 1s",
                2,
                if soak { 4 } else { 2 },
            )
        },
    ]);
    list.push(Scenario {
        chaos: Chaos::OncePer {
            ticks: if soak { 8 } else { 3 },
            period_s: 10,
            window_ms: 1_500,
            fail_percent: 35,
            kills: if soak { 4 } else { 1 },
            dst: false,
        },
        hold_ms: (300, 700),
        wait: "6s",
        wall_limit: limit(50, 150),
        ..base(
            "once-per",
            "k",
            "ticks of `run --once-per 10s`: workers fire at random offsets after each period \
             boundary, 35% of jobs fail, holders are killed; at most one success per slot, \
             failed slots retried, nothing overlaps",
            if soak { 5 } else { 4 },
            if soak { 8 } else { 3 },
        )
    });
    list.push(Scenario {
        chaos: Chaos::OncePer {
            ticks: crate::dst::TICKS,
            period_s: 2 * 3600,
            window_ms: 1_500,
            fail_percent: 35,
            kills: 0,
            dst: true,
        },
        hold_ms: (300, 700),
        wait: "6s",
        wall_limit: limit(60, 90),
        ..base(
            "once-per-dst",
            "l",
            "`run --once-per 2h` in America/New_York (TZ, faketime) just before and after both \
             DST changes of 2025: the slot after the spring change runs, the repeated hour \
             after the autumn change is the slot before it (done); nothing skipped or doubled",
            4,
            crate::dst::TICKS,
        )
    });
    list.push(Scenario {
        chaos: Chaos::CutOff {
            count: if soak { 4 } else { 2 },
            cut_ms: 2 * TTL_MS + 1_000,
            every_ms: (500, 1_500),
        },
        // The helper lives as long as the hold, well past a takeover after the cut.
        hold_ms: (4_000, 5_000),
        term_delay_ms: 3_000,
        helper: true,
        helper_leaves: true,
        watch_deaths: true,
        wall_limit: limit(40, 150),
        ..base(
            "escape",
            "m",
            "a holder's link to storage black-holed while its job's helper runs in a session of \
             its own (setsid, as daemons do; `timeout` leaves the process group the same way): \
             the boundary (the cgroup) must stop the helper too before waiters take over",
            3,
            2,
        )
    });
    // Semaphores: more contenders than places, with crashes, slow and lost
    // responses, and partitions. Never more than N sections at once, and each
    // place's tokens grow.
    list.extend([
        Scenario {
            holders: 2,
            hold_ms: (300, 800),
            emulator: flags(&[
                "--latency-ms",
                "30",
                "--jitter-ms",
                "30",
                "--reset-after",
                "0.1",
                "--fault-scope",
                "mutations",
            ]),
            chaos: Chaos::Kill {
                count: if soak { 6 } else { 2 },
                every_ms: (1_000, 2_000),
            },
            wall_limit: limit(25, 180),
            ..base(
                "holders-2",
                "n",
                "`run --holders 2` with 5 contenders: SIGKILLed holders, slow responses                  (30+-30 ms), lost mutation responses (10%)",
                5,
                if soak { 8 } else { 3 },
            )
        },
        Scenario {
            holders: 3,
            emulator: flags(&["--latency-ms", "20", "--jitter-ms", "20"]),
            chaos: Chaos::CutOff {
                count: if soak { 4 } else { 1 },
                cut_ms: 2 * TTL_MS + 1_000,
                every_ms: (500, 1_500),
            },
            hold_ms: (2_500, 3_500),
            term_delay_ms: 3_000,
            watch_deaths: true,
            wall_limit: limit(25, 180),
            ..base(
                "holders-3",
                "o",
                "`run --holders 3` with 5 contenders: holders' links to storage black-holed                  mid-section (partition), slow responses (20+-20 ms)",
                5,
                if soak { 4 } else { 2 },
            )
        },
    ]);
    if soak {
        let mut mixed = storm;
        mixed.extend(flags(&["--reset-after", "0.05"]));
        mixed.extend(skew);
        list.push(Scenario {
            hold_ms: (300, 800),
            emulator: mixed,
            faketime: vec!["+3h", "-2h"],
            chaos: Chaos::Kill {
                count: 8,
                every_ms: (1_500, 3_000),
            },
            wall_limit: limit(60, 420),
            ..base(
                "mixed",
                "g",
                "kills + storm + lost responses + skewed clocks together",
                workers,
                iterations,
            )
        });
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_cover_every_scenario_with_short_ttls() {
        for profile in [Profile::Short, Profile::Soak] {
            let list = scenarios(profile);
            let ids: Vec<&str> = list.iter().map(|s| s.id).collect();
            assert_eq!(
                ids[..15],
                ["a", "b", "c", "c2", "d", "e", "f", "h", "i", "j", "k", "l", "m", "n", "o"]
            );
            for s in &list {
                assert!(s.refresh_ms * 8 <= s.ttl_ms, "{}", s.name);
                assert!(s.hold_ms.0 <= s.hold_ms.1 && s.gap_ms.0 <= s.gap_ms.1);
                if let Chaos::Pause { pause_ms, .. } = s.chaos {
                    assert!(pause_ms > s.ttl_ms, "a pause must outlast the TTL");
                }
            }
        }
        // The profile's budget, not the sum of the limits, bounds a short run.
        assert!(budget(Profile::Short).is_some_and(|b| b < Duration::from_secs(300)));
        assert!(budget(Profile::Soak).is_none());
    }
}
