//! Per-scenario figures, findings with their history, and the final table.

use std::collections::HashSet;
use std::time::Duration;

use crate::history::{self, Analysis, Finding, FindingKind};
use crate::runner::Outcome;
use crate::scenario::Profile;

fn faults_text(outcome: &Outcome) -> String {
    if outcome.faults.is_empty() {
        return "none".to_owned();
    }
    outcome
        .faults
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn exits_text(outcome: &Outcome) -> String {
    outcome
        .exit_codes
        .iter()
        .map(|(code, n)| {
            let meaning = match code.as_str() {
                "0" => " ok",
                "75" => " busy",
                "76" => " lease-lost",
                "69" => " unavailable",
                "70" => " internal",
                "143" => " terminated",
                "sig9" => " SIGKILLed",
                _ => "",
            };
            format!("{code}{meaning} x{n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_findings(analysis: &Analysis) {
    let violations: Vec<&Finding> = analysis.violations().collect();
    let expected: Vec<&Finding> = analysis.expected().collect();
    println!("  violations: {}", violations.len());
    for finding in &violations {
        println!(
            "    VIOLATION [{}] {}",
            finding.kind.label(),
            finding.message
        );
    }
    if !expected.is_empty() {
        println!(
            "  expected anomalies (reported, not failed): {}",
            expected.len()
        );
        for finding in &expected {
            println!(
                "    expected [{}] {}",
                finding.kind.label(),
                finding.message
            );
        }
    }
}

pub fn print_outcome(outcome: &Outcome, whole_history: bool, faketime: bool) {
    let a = &outcome.analysis;
    println!(
        "  attempts {}, acquisitions (sections started) {}, committed {}, aborted {}, killed {}, \
         paused {}, cut off {}; tokens issued {}",
        outcome.attempts,
        outcome.acquisitions(),
        outcome.committed,
        outcome.aborted,
        outcome.killed,
        outcome.paused,
        outcome.cut,
        outcome
            .tokens_issued
            .map_or_else(|| "?".to_owned(), |t| t.to_string())
    );
    println!("  gcslock exits: {}", exits_text(outcome));
    println!(
        "  max concurrent holders {}; faults injected {} ({}); requests {}, mutations applied {}",
        a.max_concurrent,
        outcome.faults_total(),
        faults_text(outcome),
        outcome.requests,
        outcome.mutations
    );
    if !outcome.scenario.faketime.is_empty() {
        if faketime {
            let skews: Vec<String> = outcome
                .wall_skew
                .iter()
                .map(|(label, (lo, hi))| {
                    format!("faketime {label}: recorders' wall clocks off by {lo:+.0}s..{hi:+.0}s")
                })
                .collect();
            println!("  {}", skews.join("; "));
        } else {
            println!("  faketime not used: client wall clocks were NOT skewed (--skew-ms only)");
        }
    }
    println!(
        "  final lock: {} {:.2}s after the last worker exited",
        outcome.final_state,
        outcome.final_after.as_secs_f64()
    );
    for note in &outcome.notes {
        println!("  note: {note}");
    }
    print_findings(a);
    println!(
        "  duration {:.1}s{}; seed {}; history: {}",
        outcome.duration.as_secs_f64(),
        if outcome.wall_limit_hit {
            " (WALL-TIME LIMIT HIT: workers stopped early)"
        } else {
            ""
        },
        outcome.seed,
        outcome.dir.join("events.jsonl").display()
    );
    let violations: Vec<&Finding> = a.violations().collect();
    if !violations.is_empty() {
        println!(
            "  history (>> marks the runs involved; times on CLOCK_MONOTONIC from the scenario \
             start; worker stderr in {}):",
            outcome.dir.display()
        );
        print!("{}", history::excerpt(&outcome.events, a, &violations));
    } else if whole_history {
        let highlight: HashSet<_> = a.expected().flat_map(|f| f.runs.clone()).collect();
        print!("{}", history::render(&outcome.events, a.origin, &highlight));
    }
}

pub fn print_summary(
    outcomes: &[Outcome],
    total: Duration,
    profile: Profile,
    seed: u64,
    preamble: &[String],
) {
    println!(
        "\n## gcslock-chaos summary (profile {}, seed {seed}, total {:.1}s)\n",
        format!("{profile:?}").to_lowercase(),
        total.as_secs_f64()
    );
    for line in preamble {
        println!("{line}\n");
    }
    println!(
        "| scenario | workers x iter | attempts | acquisitions | committed | killed / paused / cut | \
         max concurrent | faults injected | violations | expected overlaps | duration |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let s = &o.scenario;
        let violations = o.analysis.violations().count();
        println!(
            "| ({}) {} | {} x {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {:.1}s{} |",
            s.id,
            s.name,
            s.workers,
            s.iterations,
            o.attempts,
            o.acquisitions(),
            o.committed,
            o.killed,
            o.paused,
            o.cut,
            o.analysis.max_concurrent,
            if o.faults.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", o.faults_total(), faults_text(o))
            },
            if violations == 0 {
                "0".to_owned()
            } else {
                format!("**{violations}**")
            },
            o.analysis.count(FindingKind::Overlap, true),
            o.duration.as_secs_f64(),
            if o.wall_limit_hit { " (limit)" } else { "" }
        );
    }
    let violations: usize = outcomes
        .iter()
        .map(|o| o.analysis.violations().count())
        .sum();
    println!(
        "\n{}",
        if violations == 0 {
            "RESULT: no violations".to_owned()
        } else {
            format!("RESULT: {violations} VIOLATION(S) — see the histories above")
        }
    );
}
