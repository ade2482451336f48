//! End-to-end tests of `gcslock run --once-per`, `--max-runtime` and `--ttl forever`
//! with real processes on strict-gcs (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped,
//! loudly, when it is unset). See `tests/cli.rs` for how to run them locally.
//!
//! Slots are named by the wall clock, so two waits here are for the wall clock
//! itself: past a period boundary, never a sleep to let something happen.

mod harness;

use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{
    code, describe, gcslock, hold, output, run_script, status_json, text, Emulator, Running, BIN,
};
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
    // The machine's own zone varies; these tests name periods in UTC.
    let mut args = vec![
        "run",
        "--identity",
        identity,
        "--once-per",
        period,
        "--timezone",
        "UTC",
    ];
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

/// `gcslock run --once-per PERIOD EXTRA URL -- echo ran` under faketime: `clock` is
/// faketime's argument(s) (`["2026-01-01 10:00:00"]`, a start time read in zone `tz`
/// that runs on from there, or `["-f", "+1d"]`, an offset), `tz` the machine's `TZ`.
fn faked(
    emulator: &Emulator,
    url: &str,
    identity: &str,
    clock: &[&str],
    tz: &str,
    period: &str,
    extra: &[&str],
) -> Command {
    let mut command = Command::new("faketime");
    command
        .args(clock)
        .args([BIN, "run", "--identity", identity, "--once-per", period])
        .args(extra)
        .args([url, "--", "sh", "-c", "echo ran"])
        // Only the wall clock is skewed; the lease runs on the monotonic clock.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TZ", tz)
        .env("STORAGE_EMULATOR_HOST", &emulator.endpoint)
        .env_remove("GCSLOCK_TOKEN")
        .env_remove("GCSLOCK_URL")
        .env_remove("GCSLOCK_TIMEZONE")
        .env_remove("GCSLOCK_ONCE_PER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `gcslock run --once-per 1h ... -- echo ran` on a UTC machine whose wall clock
/// reads `clock` (a faketime start time: the clock starts there and runs on).
fn at_clock(emulator: &Emulator, url: &str, identity: &str, clock: &str) -> Command {
    faked(emulator, url, identity, &[clock], "UTC", "1h", &[])
}

/// Whether faketime runs here; in CI it must (apt-get install faketime).
fn has_faketime() -> bool {
    let works = std::process::Command::new("faketime")
        .args(["2026-01-01 00:00:00", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        assert!(
            std::env::var_os("CI").is_none(),
            "faketime is required in CI (apt-get install faketime)"
        );
        eprintln!("once_per: SKIPPED: faketime is not installed");
    }
    works
}

#[tokio::test]
async fn machines_with_skewed_clocks_agree_on_the_slot() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    if !has_faketime() {
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
                stderr.contains("the 1h slot starting 2026-01-01T10:00:00Z (UTC) is already done"),
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
            "the 1h slot starting 2026-01-01T09:00:00Z (UTC) is already done: \
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

/// Issue 16, item 6: a daily job at 19:30 in New York, with `--once-per 1d`, ran on
/// 2026-03-07 (00:30 UTC on the 8th) and was skipped on 2026-03-08 (23:30 UTC on the
/// 8th): UTC-aligned periods. Periods are local calendar days now.
#[tokio::test]
async fn a_daily_job_runs_on_both_days_around_a_dst_change() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    if !has_faketime() {
        return;
    }
    let url = emulator.url("once-dst");
    let zone = "America/New_York";
    for (machine, day) in [("sat", "2026-03-07"), ("sun", "2026-03-08")] {
        let clock = format!("{day} 19:30:00");
        let out = output(faked(&emulator, &url, machine, &[&clock], zone, "1d", &[])).await;
        assert_eq!(code(&out), 0, "{machine}: {}", describe(&out));
        assert!(ran(&out), "{machine} must run: {}", describe(&out));
        let again = output(faked(&emulator, &url, "again", &[&clock], zone, "1d", &[])).await;
        assert!(!ran(&again), "{}", describe(&again));
        assert!(
            text(&again.stderr).contains(&format!(
                "the 1d slot starting {day}T00:00:00-05:00 (America/New_York) is already done"
            )),
            "{}",
            describe(&again)
        );
    }
    let status = status_json(Some(&emulator), &url).await;
    let completed = &status["last_completed"];
    assert_eq!(completed["zone"], zone, "{status}");
    assert_eq!(completed["slot_start_local"], "2026-03-08T00:00:00-05:00");
    assert_eq!(completed["period_s"], 86_400);
    // --timezone names the zone whatever TZ says; the same day in UTC is another
    // calendar, so the New York completion does not count there: it runs, and warns.
    let utc = output(faked(
        &emulator,
        &url,
        "utc",
        &["2026-03-08 23:40:00"],
        zone,
        "1d",
        &["--timezone", "UTC"],
    ))
    .await;
    assert!(ran(&utc), "{}", describe(&utc));
    let stderr = text(&utc.stderr);
    assert!(
        stderr.contains("this run's periods are in time zone UTC, but the lock's last completion is in America/New_York"),
        "{stderr}"
    );
}

/// Issue 16, item 7: a machine whose clock was a day fast recorded tomorrow's period,
/// and every correct machine then exited 0 "already done" without running.
#[tokio::test]
async fn a_fast_clock_does_not_silence_the_fleet() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    if !has_faketime() {
        return;
    }
    let url = emulator.url("once-fast");
    let fast = output(faked(
        &emulator,
        &url,
        "fast",
        &["-f", "+1d"],
        "UTC",
        "1d",
        &[],
    ))
    .await;
    assert!(ran(&fast), "{}", describe(&fast));
    // It is never refused, and says its clock is off.
    assert!(
        text(&fast.stderr).contains("this machine's clock is 1d"),
        "{}",
        describe(&fast)
    );
    assert!(text(&fast.stderr).contains("ahead of the storage server's"));
    let correct = output(once(&emulator, &url, "correct", "1d", &[], "echo ran")).await;
    assert_eq!(code(&correct), 0, "{}", describe(&correct));
    assert!(
        ran(&correct),
        "a correct clock must run: {}",
        describe(&correct)
    );
    let stderr = text(&correct.stderr);
    assert!(stderr.contains("completed by \"fast\""), "{stderr}");
    assert!(
        stderr.contains("after the storage server's clock"),
        "{stderr}"
    );
    assert!(stderr.contains("it does not count"), "{stderr}");
    // Its completion replaced tomorrow's: the next correct machine is done.
    let next = output(once(&emulator, &url, "next", "1d", &[], "echo ran")).await;
    assert!(!ran(&next), "{}", describe(&next));
}

/// Issue 19: `--once-per 2h` after `--once-per 1h` on one lock silently ran again;
/// it still runs (the other period's completion does not count), and warns.
#[tokio::test]
async fn mixing_periods_on_one_lock_warns() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-mixed");
    let hourly = output(once(&emulator, &url, "hourly", "1h", &[], "echo ran")).await;
    assert!(ran(&hourly), "{}", describe(&hourly));
    let two = output(once(&emulator, &url, "two", "2h", &[], "echo ran")).await;
    assert!(ran(&two), "{}", describe(&two));
    let stderr = text(&two.stderr);
    assert!(
        stderr.contains("this run's period is 2h, but the lock's last completion is of period 1h"),
        "{stderr}"
    );
    assert!(
        stderr.contains("use one lock object per schedule"),
        "{stderr}"
    );
}

#[tokio::test]
async fn time_zones_are_checked() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("once-zone");
    let unknown = output(gcslock(
        Some(&emulator),
        &[
            "run",
            "--once-per",
            "1h",
            "--timezone",
            "Mars/Olympus_Mons",
            &url,
            "--",
            "true",
        ],
    ))
    .await;
    assert_eq!(code(&unknown), 64, "{}", describe(&unknown));
    assert!(
        text(&unknown.stderr).contains("unknown time zone \"Mars/Olympus_Mons\""),
        "{}",
        describe(&unknown)
    );
    // A period that does not fit the calendar is a usage error too.
    let odd = output(once(&emulator, &url, "a", "7m", &[], "echo ran")).await;
    assert_eq!(code(&odd), 64, "{}", describe(&odd));
    assert!(text(&odd.stderr).contains("does not fit the calendar"));
    // TZ names the default zone; a POSIX rule has no name to record.
    let mut posix = gcslock(
        Some(&emulator),
        &run_script(&["--once-per", "1h"], &url, "echo ran"),
    );
    posix.env("TZ", "EST5EDT,M3.2.0,M11.1.0");
    let posix = output(posix).await;
    assert_eq!(code(&posix), 64, "{}", describe(&posix));
    assert!(
        text(&posix.stderr).contains("--timezone"),
        "{}",
        describe(&posix)
    );
    let mut paris = gcslock(
        Some(&emulator),
        &run_script(&["--once-per", "1h"], &url, "echo ran"),
    );
    paris.env("TZ", "Europe/Paris");
    let paris = output(paris).await;
    assert!(ran(&paris), "{}", describe(&paris));
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["last_completed"]["zone"], "Europe/Paris");
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
        &run_script(&["--max-runtime", "30s"], &url, "exit 3"),
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
