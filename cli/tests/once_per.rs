//! End-to-end tests of `gcslock run --once-per`, `--max-runtime` and `--ttl forever`
//! with real processes on strict-gcs (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped,
//! loudly, when it is unset). See `tests/cli.rs` for how to run them locally.
//!
//! Slots are named by the wall clock, so two waits here are for the wall clock
//! itself: past a period boundary, never a sleep to let something happen.

mod harness;

use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{code, describe, gcslock, hold, output, status_json, text, Emulator, Running, BIN};
use serde_json::Value;
use tokio::process::Command;

/// `gcslock run --identity ID --once-per PERIOD EXTRA URL -- sh -c SCRIPT`.
fn once(
    emulator: &Emulator,
    url: &str,
    identity: &str,
    period: &str,
    extra: &[&str],
    script: &str,
) -> Command {
    let mut args = vec!["run", "--identity", identity, "--once-per", period];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[url, "--", "sh", "-c", script]);
    gcslock(Some(emulator), &args)
}

fn ran(out: &Output) -> bool {
    text(&out.stdout).contains("ran")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// If fewer than `needed` seconds of the current `period` slot are left, waits for
/// the next slot to begin, so that a test's runs all name one slot.
async fn inside_one_slot(period: u64, needed: u64) {
    let into = now_secs() % period;
    if period - into < needed {
        tokio::time::sleep(Duration::from_secs(period - into + 1)).await;
    }
}

/// Waits until the wall clock is past the end of the slot recorded as completed.
async fn past_completed_slot(completed: &Value) {
    let period = completed["period_s"].as_u64().expect("period_s");
    let slot = completed["slot"].as_u64().expect("slot");
    let next = UNIX_EPOCH + Duration::from_secs((slot + 1) * period);
    if let Ok(left) = next.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn once_per_runs_a_short_job_once_across_staggered_starts() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-staggered");
    inside_one_slot(3600, 60).await;
    let first = output(once(&emulator, &url, "first", "1h", &[], "echo ran")).await;
    assert_eq!(code(&first), 0, "{}", describe(&first));
    assert!(ran(&first), "{}", describe(&first));
    for machine in ["second", "third", "fourth"] {
        let out = output(once(&emulator, &url, machine, "1h", &[], "echo ran")).await;
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(!ran(&out), "{machine} ran it again: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("the 1h slot starting "), "{stderr}");
        assert!(stderr.contains("already done: completed "), "{stderr}");
        assert!(stderr.contains(" by first"), "{stderr}");
    }
    // -q: nothing on stderr; --done-exit-code: the caller's code.
    let quiet = output(once(&emulator, &url, "q", "1h", &["-q"], "echo ran")).await;
    assert_eq!(code(&quiet), 0, "{}", describe(&quiet));
    assert_eq!(text(&quiet.stderr), "");
    let coded = output(once(
        &emulator,
        &url,
        "c",
        "1h",
        &["--done-exit-code", "3"],
        "echo ran",
    ))
    .await;
    assert_eq!(code(&coded), 3, "{}", describe(&coded));

    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released");
    assert_eq!(status["token"], 1, "only the first run ever wrote");
    let completed = &status["last_completed"];
    assert_eq!(completed["period_s"], 3600);
    assert_eq!(completed["completed_by"], "first");
    assert_eq!(completed["slot"].as_u64(), Some(now_secs() / 3600));
    assert_eq!(completed["completed_at"], status["released_at"]);
}

#[tokio::test]
async fn a_failed_run_is_retried_by_exactly_one_waiter() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-retry");
    inside_one_slot(3600, 120).await;
    // The first machine's run fails once the others wait.
    let mut failing = Running::start(once(
        &emulator,
        &url,
        "failing",
        "1h",
        &[],
        r#"echo "ready $$"; read _; exit 1"#,
    ));
    failing.expect_line("ready").await;
    let mut waiters: Vec<Running> = ["b", "c", "d"]
        .into_iter()
        .map(|machine| {
            Running::start(once(
                &emulator,
                &url,
                machine,
                "1h",
                &["-v", "--wait", "60s"],
                "echo ran",
            ))
        })
        .collect();
    for waiter in &mut waiters {
        waiter.expect_stderr("is busy").await;
    }
    failing.send_line().await;
    let (status, _, stderr) = failing.finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");

    let mut runs = 0;
    for waiter in waiters {
        let (status, stdout, stderr) = waiter.finish().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
        if stdout.contains("ran") {
            runs += 1;
        } else {
            assert!(stderr.contains("already done"), "{stderr}");
        }
    }
    assert_eq!(runs, 1, "exactly one retry");
    let status = status_json(Some(&emulator), &url).await;
    assert_ne!(status["last_completed"]["completed_by"], "failing");
}

#[tokio::test]
async fn the_next_period_runs_again() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-next");
    let first = output(once(&emulator, &url, "a", "2s", &[], "echo ran")).await;
    assert!(ran(&first), "{}", describe(&first));
    let status = status_json(Some(&emulator), &url).await;
    let completed = status["last_completed"].clone();
    assert_eq!(completed["completed_by"], "a");
    past_completed_slot(&completed).await;
    let next = output(once(&emulator, &url, "b", "2s", &[], "echo ran")).await;
    assert!(ran(&next), "the next period must run: {}", describe(&next));
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["last_completed"]["completed_by"], "b");
    assert!(
        status["last_completed"]["slot"].as_u64() > completed["slot"].as_u64(),
        "{status}"
    );
}

/// `gcslock run --once-per 1h ... -- echo ran` on a machine whose wall clock reads
/// `clock` (a faketime start time: the clock starts there and runs on).
fn at_clock(emulator: &Emulator, url: &str, identity: &str, clock: &str) -> Command {
    let mut command = Command::new("faketime");
    command
        .args([
            clock,
            BIN,
            "run",
            "--identity",
            identity,
            "--once-per",
            "1h",
        ])
        .args([url, "--", "sh", "-c", "echo ran"])
        // Only the wall clock is skewed; the lease runs on the monotonic clock.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("STORAGE_EMULATOR_HOST", &emulator.endpoint)
        .env_remove("GCSLOCK_TOKEN")
        .env_remove("GCSLOCK_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn machines_with_skewed_clocks_agree_on_the_slot() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let has_faketime = std::process::Command::new("faketime")
        .args(["2026-01-01 00:00:00", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !has_faketime {
        assert!(
            std::env::var_os("CI").is_none(),
            "faketime is required in CI (apt-get install faketime)"
        );
        eprintln!("once_per: SKIPPED skewed clocks: faketime is not installed");
        return;
    }
    let url = emulator.url("once-skew");
    // Crons fire at 10:00 on each machine's own clock, which disagree by seconds.
    let clocks = [
        ("fast", "2026-01-01 10:00:00"),
        ("slow", "2026-01-01 10:00:07"),
        ("late", "2026-01-01 10:59:58"),
    ];
    let mut runs = Vec::new();
    for (machine, clock) in clocks {
        let out = output(at_clock(&emulator, &url, machine, clock)).await;
        assert_eq!(code(&out), 0, "{machine}: {}", describe(&out));
        if ran(&out) {
            runs.push(machine);
        } else {
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("the 1h slot starting 2026-01-01T10:00:00Z is already done"),
                "{stderr}"
            );
        }
    }
    assert_eq!(runs, ["fast"]);
    // A clock in the next hour names the next slot; one behind names an earlier
    // slot, which a later completion covers.
    let behind = output(at_clock(&emulator, &url, "behind", "2026-01-01 09:59:30")).await;
    assert!(!ran(&behind), "{}", describe(&behind));
    assert!(
        text(&behind.stderr).contains(
            "the 1h slot starting 2026-01-01T09:00:00Z is already done: \
             the later slot starting 2026-01-01T10:00:00Z was completed "
        ),
        "{}",
        describe(&behind)
    );
    let next = output(at_clock(&emulator, &url, "next", "2026-01-01 11:00:03")).await;
    assert!(ran(&next), "{}", describe(&next));
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(
        status["last_completed"]["slot_start"],
        "2026-01-01T11:00:00.000Z"
    );
}

#[tokio::test]
async fn max_runtime_stops_the_command_and_leaves_the_slot_open() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-max-runtime");
    inside_one_slot(3600, 60).await;
    // The command ignores SIGTERM: SIGKILL ends it after the kill grace.
    let out = output(once(
        &emulator,
        &url,
        "slow",
        "1h",
        &["--max-runtime", "1s", "--kill-grace", "500ms"],
        r#"trap "" TERM; echo started; sleep 60"#,
    ))
    .await;
    assert_eq!(code(&out), 124, "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("--max-runtime"),
        "{}",
        describe(&out)
    );
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "the lock was released");
    assert!(status.get("last_completed").is_none(), "{status}");
    // So the slot is still open.
    let retry = output(once(&emulator, &url, "retry", "1h", &[], "echo ran")).await;
    assert!(ran(&retry), "{}", describe(&retry));
    // Also without --once-per, and for a command that ends in time: its own code.
    let quick = output(gcslock(
        Some(&emulator),
        &[
            "run",
            "--max-runtime",
            "30s",
            &url,
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    ))
    .await;
    assert_eq!(code(&quick), 3, "{}", describe(&quick));
}

#[tokio::test]
async fn a_forever_lock_is_held_until_broken() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("forever");
    let (mut holder, _, token) = hold(
        Some(&emulator),
        &url,
        &["--ttl", "forever", "--refresh-interval", "1s"],
    )
    .await;
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "held");
    assert_eq!(status["ttl_forever"], true);
    assert!(status.get("ttl_ms").is_none(), "{status}");
    assert!(status.get("expires_in_ms").is_none(), "{status}");
    assert!(status.get("last_heard_ms").is_some(), "{status}");
    let line = output(gcslock(Some(&emulator), &["status", &url])).await;
    assert!(
        text(&line.stdout).contains("ttl forever"),
        "{}",
        describe(&line)
    );
    // A waiter never takes it over.
    let waiter = output(gcslock(
        Some(&emulator),
        &["run", "--wait", "3s", &url, "--", "true"],
    ))
    .await;
    assert_eq!(code(&waiter), 75, "{}", describe(&waiter));
    // A break frees it; the holder notices at its next refresh.
    let broken = output(gcslock(
        Some(&emulator),
        &["break", "--now", "--token", &token.to_string(), &url],
    ))
    .await;
    assert_eq!(code(&broken), 0, "{}", describe(&broken));
    holder.expect_stderr("lost").await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(76), "{stderr}");
}
