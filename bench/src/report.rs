//! Collects results into one markdown report: a headline table, then sub-tables.

use std::fmt::Write as _;
use std::time::Duration;

/// Sizes of every measurement; `--smoke` shrinks them.
#[derive(Clone, Debug)]
pub struct Config {
    pub smoke: bool,
    /// Counts: how long a waiter waits on a live holder.
    pub wait_period: Duration,
    /// Latency: operations per lock operation, GETs per baseline, warm-up calls.
    pub lat_ops: usize,
    pub lat_gets: usize,
    pub lat_warmup: usize,
    /// Latency: lease-driven refreshes and the paced GET baseline beside them.
    pub lat_paced: usize,
    pub lat_paced_interval: Duration,
    /// Handoff: handoffs per configuration, how long each holder holds, waiters.
    pub handoffs: usize,
    pub hold: Duration,
    pub waiters: Vec<usize>,
    pub rl_handoffs: usize,
    /// Scale: lock counts, TTL, refresh interval, measured window, acquire concurrency.
    /// (locks, latency the emulator adds to every request in ms).
    pub scale_runs: Vec<(usize, u64)>,
    pub scale_ttl: Duration,
    pub scale_refresh: Duration,
    pub scale_window: Duration,
    pub scale_concurrency: usize,
    /// CLI: runs per command.
    pub cli_runs: usize,
    /// Rate limit: how long each lease is held under 1 mutation/s/object.
    pub rl_hold: Duration,
}

impl Config {
    pub fn full() -> Self {
        Self {
            smoke: false,
            wait_period: Duration::from_secs(5),
            lat_ops: 1000,
            lat_gets: 2000,
            lat_warmup: 100,
            lat_paced: 1000,
            lat_paced_interval: Duration::from_millis(10),
            handoffs: 30,
            hold: Duration::from_secs(2),
            waiters: vec![1, 8, 64],
            rl_handoffs: 10,
            scale_runs: vec![(1000, 0), (10_000, 0), (10_000, 20)],
            scale_ttl: Duration::from_secs(60),
            scale_refresh: Duration::from_millis(7500),
            scale_window: Duration::from_secs(15),
            scale_concurrency: 64,
            cli_runs: 30,
            rl_hold: Duration::from_secs(6),
        }
    }

    pub fn smoke() -> Self {
        Self {
            smoke: true,
            wait_period: Duration::from_secs(1),
            lat_ops: 30,
            lat_gets: 30,
            lat_warmup: 5,
            lat_paced: 20,
            lat_paced_interval: Duration::from_millis(10),
            handoffs: 1,
            hold: Duration::from_millis(200),
            waiters: vec![1, 8, 64],
            rl_handoffs: 1,
            scale_runs: vec![(50, 0), (50, 20)],
            scale_ttl: Duration::from_secs(8),
            scale_refresh: Duration::from_secs(1),
            scale_window: Duration::from_millis(1200),
            scale_concurrency: 16,
            cli_runs: 3,
            rl_hold: Duration::from_millis(1500),
        }
    }
}

/// A behaviour check on deterministic request counts (never on timings).
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    headline: Vec<[String; 5]>,
    sections: Vec<(String, String)>,
    checks: Vec<Check>,
}

impl Report {
    /// One row of the headline table.
    pub fn headline(
        &mut self,
        area: &str,
        what: impl Into<String>,
        result: impl Into<String>,
        baseline: impl Into<String>,
        verdict: impl Into<String>,
    ) {
        self.headline.push([
            area.to_owned(),
            what.into(),
            result.into(),
            baseline.into(),
            verdict.into(),
        ]);
    }

    pub fn section(&mut self, title: impl Into<String>, body: impl Into<String>) {
        self.sections.push((title.into(), body.into()));
    }

    pub fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        let check = Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        };
        eprintln!(
            "  check {}: {} ({})",
            if check.ok { "ok" } else { "FAILED" },
            check.name,
            check.detail
        );
        self.checks.push(check);
    }

    pub fn failed_checks(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }

    pub fn render(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(
            out,
            "| # | measurement | result | baseline / target | verdict |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for row in &self.headline {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        for (title, body) in &self.sections {
            let _ = writeln!(out, "\n#### {title}\n\n{}", body.trim_end());
        }
        let _ = writeln!(
            out,
            "\n#### Behaviour checks (request counts only, never timings)\n"
        );
        let _ = writeln!(out, "| check | result | detail |");
        let _ = writeln!(out, "|---|---|---|");
        for check in &self.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                check.name,
                if check.ok { "ok" } else { "**FAILED**" },
                check.detail
            );
        }
        out
    }
}

/// A markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}
