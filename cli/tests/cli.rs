//! End-to-end tests of the `gcslock` binary, run as real processes against live
//! emulators.
//!
//! * Wire-level tests use `STORAGE_EMULATOR_HOST` (fake-gcs-server in CI). They are
//!   skipped, loudly, when it is unset, and fail instead when `CI` is set.
//! * Tests whose outcome depends on GCS's conditional-request semantics (busy,
//!   waiting, loss after `break`, takeover of a crashed holder) use
//!   `GCSLOCK_STRICT_EMULATOR_HOST` (strict-gcs), because fake-gcs-server ignores
//!   preconditions on PATCH/DELETE: a refresh over a broken lock would succeed
//!   there. They are skipped, loudly, when it is unset, and fail instead with
//!   `GCSLOCK_REQUIRE_STRICT=1`.
//! * Usage errors and an unreachable endpoint need no emulator.
//!
//! The bucket is `GCSLOCK_TEST_BUCKET` (default `gcslock-test`) and must exist on
//! both emulators. Every test uses its own object name, so tests run in parallel.
//!
//! Locally:
//! ```text
//! export STORAGE_EMULATOR_HOST=$(emulators/fake-gcs-server.sh --bucket gcslock-test 4443)
//! cargo build -p strict-gcs && target/debug/strict-gcs --port 0 --bucket gcslock-test
//! export GCSLOCK_STRICT_EMULATOR_HOST=http://127.0.0.1:PORT   # from its first line
//! cargo test --test cli
//! ```
//!
//! No test sleeps to let something happen: each waits for an event (a line the
//! command prints, a process exit, a log line) under a generous hang guard. The
//! process harness is `tests/harness/mod.rs`, shared with `tests/fence.rs` and
//! `tests/object_store.rs`.

mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Instant;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::{Backend, WriteCondition};
use harness::{
    code, describe, gcslock, hold, output, status_json, text, wait_for, Emulator, Running,
    SHORT_TTL,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn temp_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "gcslock-cli-{test}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

fn is_gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    // A zombie waiting for its (re-parented) parent to reap it is dead too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

// ---------------------------------------------------------------------------
// No emulator needed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn usage_errors_exit_64_with_one_line() {
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["run", "gs://gcslock-test/o"],
        &["run", "gs://gcslock-test/o", "true"],
        &["run", "ftp://bucket/o", "--", "true"],
        &["run", "gs://Bad_Bucket/o", "--", "true"],
        &["run", "gs://gcslock-test/", "--", "true"],
        &["run", "--wait", "soon", "gs://gcslock-test/o", "--", "true"],
        &["run", "--ttl", "0s", "gs://gcslock-test/o", "--", "true"],
        &[
            "run",
            "--busy-exit-code",
            "300",
            "gs://gcslock-test/o",
            "--",
            "true",
        ],
        &["run", "--bogus", "gs://gcslock-test/o", "--", "true"],
        &["status"],
        &["list", "ftp://x"],
        &["break", "gs://gcslock-test/o", "--token", "x"],
    ];
    for args in cases {
        let out = output(gcslock(None, args)).await;
        assert_eq!(code(&out), 64, "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
        let stderr = text(&out.stderr);
        if args.is_empty() {
            continue; // prints the help, as a usage error
        }
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("gcslock: error: "), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn ttl_out_of_range_is_a_usage_error() {
    // Validated by the library before any request: no emulator is contacted.
    let out = output(gcslock(
        None,
        &[
            "run",
            "--endpoint",
            "http://127.0.0.1:1",
            "--ttl",
            "30d",
            "gs://gcslock-test/o",
            "--",
            "true",
        ],
    ))
    .await;
    assert_eq!(code(&out), 64, "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TTL"), "{stderr}");
}

#[tokio::test]
async fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["run", "--help"],
        &["help", "status"],
    ] {
        let out = output(gcslock(None, args)).await;
        assert_eq!(code(&out), 0, "{args:?}: {}", describe(&out));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = output(gcslock(None, &["--help"])).await;
    let help = text(&out.stdout);
    for documented in [
        "64", "65", "66", "69", "70", "75", "76", "77", "126", "127", "128+N",
    ] {
        assert!(
            help.contains(documented),
            "exit code {documented} is not documented:\n{help}"
        );
    }
}

#[tokio::test]
async fn unreachable_endpoint_exits_69() {
    let endpoint = ["--endpoint", "http://127.0.0.1:1"];
    let mut run = endpoint.to_vec();
    run.extend([
        "run",
        "--storage-timeout",
        "1s",
        "gs://gcslock-test/unreachable",
        "--",
        "true",
    ]);
    let out = output(gcslock(None, &run)).await;
    assert_eq!(code(&out), 69, "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(
        text(&out.stderr).starts_with("gcslock: error: "),
        "{}",
        describe(&out)
    );

    for admin in [
        &["status", "gs://gcslock-test/unreachable"][..],
        &["list", "gs://gcslock-test/"],
        &["break", "gs://gcslock-test/unreachable"],
    ] {
        let mut args = endpoint.to_vec();
        args.extend_from_slice(admin);
        // Admin commands retry transient failures; keep the wait short.
        args.extend_from_slice(&["--storage-timeout", "1s"]);
        let out = output(gcslock(None, &args)).await;
        assert_eq!(code(&out), 69, "{admin:?}: {}", describe(&out));
    }
}

// ---------------------------------------------------------------------------
// Wire-level: STORAGE_EMULATOR_HOST (fake-gcs-server)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn exit_codes_pass_through() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("passthrough");
    for (script, expected, stdout) in [
        ("echo out; exit 0", 0, "out\n"),
        ("echo seven; exit 7", 7, "seven\n"),
        ("kill -KILL $$", 128 + 9, ""),
        ("kill -TERM $$", 128 + 15, ""),
    ] {
        let out = output(gcslock(
            Some(&emulator),
            &["run", &url, "--", "sh", "-c", script],
        ))
        .await;
        assert_eq!(code(&out), expected, "{script}: {}", describe(&out));
        // gcslock's own messages never reach stdout.
        assert_eq!(text(&out.stdout), stdout, "{script}: {}", describe(&out));
    }
    // Each run released the lock: the next one got it at once, with a growing token.
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], 4, "{status}");
}

#[tokio::test]
async fn child_gets_the_token_that_status_reports() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("token");
    let mut holder = Running::start(gcslock(
        Some(&emulator),
        &[
            "run",
            &url,
            "--",
            "sh",
            "-c",
            r#"echo "url $GCSLOCK_URL"; echo "ready $GCSLOCK_TOKEN"; read _"#,
        ],
    ));
    assert_eq!(holder.expect_line("url").await, url);
    let token: u64 = holder
        .expect_line("ready")
        .await
        .parse()
        .expect("numeric token");

    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "held", "{status}");
    assert_eq!(status["free"], false, "{status}");
    assert_eq!(status["token"], token, "{status}");
    assert!(
        status["holder"].as_str().is_some_and(|h| !h.is_empty()),
        "{status}"
    );
    assert!(
        status["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{status}"
    );

    // The same lock in a listing, as JSON lines.
    let prefix = url
        .rsplit_once('/')
        .map(|(dir, _)| dir)
        .unwrap_or(&url)
        .to_owned()
        + "/";
    let out = output(gcslock(Some(&emulator), &["list", "--json", &prefix])).await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let listed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let ours = listed.iter().find(|entry| entry["url"] == url.as_str());
    assert!(
        ours.is_some_and(|entry| entry["token"] == token && entry["state"] == "held"),
        "{listed:?}"
    );

    let text_status = output(gcslock(Some(&emulator), &["status", &url])).await;
    let line = text(&text_status.stdout);
    assert!(line.starts_with(&format!("{url}: held by ")), "{line}");
    assert!(line.contains(&format!("(token {token})")), "{line}");

    holder.send_line().await;
    let (status_code, _, stderr) = holder.finish().await;
    assert_eq!(status_code.code(), Some(0), "{stderr}");
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["free"], true, "{status}");
    assert_eq!(status["token"], token, "{status}");
}

#[tokio::test]
async fn sigterm_reaches_the_child_and_the_lock_is_released() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("sigterm");
    let marker = temp_path("sigterm");
    let script = r#"trap 'echo "got TERM" > "$MARKER"; exit 42' TERM; echo "ready $GCSLOCK_TOKEN"; sleep 300 & wait"#;
    let mut command = gcslock(Some(&emulator), &["run", &url, "--", "sh", "-c", script]);
    command.env("MARKER", &marker);
    let mut holder = Running::start(command);
    let token: u64 = holder
        .expect_line("ready")
        .await
        .parse()
        .expect("numeric token");

    kill(holder.pid(), Signal::SIGTERM).expect("signalling gcslock");
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(
        status.code(),
        Some(42),
        "the child's exit code; stderr: {stderr}"
    );
    let written = std::fs::read_to_string(&marker).expect("the child's trap ran");
    assert_eq!(written.trim(), "got TERM");
    let _ = std::fs::remove_file(&marker);

    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], token, "{status}");
}

#[tokio::test]
async fn processes_left_behind_are_stopped_before_the_release() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("leftover");
    // The command exits at once, leaving a background process in its group.
    let out = output(gcslock(
        Some(&emulator),
        &[
            "run",
            &url,
            "--",
            "sh",
            "-c",
            r#"sleep 300 >/dev/null 2>&1 & echo "left $!"; exit 3"#,
        ],
    ))
    .await;
    assert_eq!(code(&out), 3, "{}", describe(&out));
    let stdout = text(&out.stdout);
    let left: i32 = stdout
        .trim()
        .strip_prefix("left ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    assert!(is_gone(left), "process {left} outlived the lock");
    assert!(
        text(&out.stderr).contains("still running"),
        "{}",
        describe(&out)
    );
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn command_not_found_127_not_executable_126() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("spawn");
    let missing = output(gcslock(
        Some(&emulator),
        &["run", &url, "--", "/nonexistent/gcslock-test-command"],
    ))
    .await;
    assert_eq!(code(&missing), 127, "{}", describe(&missing));
    assert!(
        text(&missing.stderr).contains("cannot run"),
        "{}",
        describe(&missing)
    );

    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("UTF-8 temp dir");
    let not_executable = output(gcslock(Some(&emulator), &["run", &url, "--", dir])).await;
    assert_eq!(code(&not_executable), 126, "{}", describe(&not_executable));

    // The lock was released both times.
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], 2, "{status}");
}

#[tokio::test]
async fn foreign_objects_are_not_locks() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("foreign");
    let object = url
        .strip_prefix(&format!("gs://{}/", emulator.bucket))
        .expect("our URL");
    let backend = GcsBackend::builder(&emulator.bucket)
        .endpoint(Some(emulator.endpoint.clone()))
        .build()
        .expect("backend");
    let metadata = BTreeMap::from([("owner".to_owned(), "someone else".to_owned())]);
    Arc::new(backend)
        .write(object, WriteCondition::DoesNotExist, &metadata)
        .await
        .expect("uploading a plain object");

    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "not-a-lock", "{status}");
    let run = output(gcslock(Some(&emulator), &["run", &url, "--", "true"])).await;
    assert_eq!(code(&run), 65, "{}", describe(&run));
    let broken = output(gcslock(Some(&emulator), &["break", &url])).await;
    assert_eq!(code(&broken), 65, "{}", describe(&broken));
}

#[tokio::test]
async fn break_is_conditional_on_the_token() {
    let Some(emulator) = Emulator::wire() else {
        return;
    };
    let url = emulator.url("break-token");
    let free = output(gcslock(Some(&emulator), &["break", &url])).await;
    assert_eq!(code(&free), 0, "{}", describe(&free));
    assert!(
        text(&free.stdout).contains("already free"),
        "{}",
        describe(&free)
    );

    let run = output(gcslock(Some(&emulator), &["run", &url, "--", "true"])).await;
    assert_eq!(code(&run), 0, "{}", describe(&run));
    let wrong = output(gcslock(Some(&emulator), &["break", "--token", "99", &url])).await;
    assert_eq!(code(&wrong), 75, "{}", describe(&wrong));
    assert!(
        text(&wrong.stderr).contains("token 1"),
        "{}",
        describe(&wrong)
    );
}

// ---------------------------------------------------------------------------
// Semantics: GCSLOCK_STRICT_EMULATOR_HOST (strict-gcs)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn busy_exits_75_quickly_with_one_line() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("busy");
    let (holder, _, token) = hold(Some(&emulator), &url, &[]).await;

    let started = Instant::now();
    let busy = output(gcslock(
        Some(&emulator),
        &["run", &url, "--", "echo", "must not run"],
    ))
    .await;
    let latency = started.elapsed();
    assert_eq!(code(&busy), 75, "{}", describe(&busy));
    assert!(
        busy.stdout.is_empty(),
        "the command must not run: {}",
        describe(&busy)
    );
    let stderr = text(&busy.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("gcslock: {url} is busy: held by ")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("(token {token})")), "{stderr}");
    eprintln!("measured: busy answered in {latency:?} (process start to exit)");

    let custom = output(gcslock(
        Some(&emulator),
        &["run", "--busy-exit-code", "3", &url, "--", "true"],
    ))
    .await;
    assert_eq!(code(&custom), 3, "{}", describe(&custom));

    let quiet = output(gcslock(Some(&emulator), &["-q", "run", &url, "--", "true"])).await;
    assert_eq!(code(&quiet), 75, "{}", describe(&quiet));
    assert!(
        quiet.stderr.is_empty(),
        "-q prints errors only: {}",
        describe(&quiet)
    );

    let json = output(gcslock(
        Some(&emulator),
        &["--log-format", "json", "run", &url, "--", "true"],
    ))
    .await;
    assert_eq!(code(&json), 75, "{}", describe(&json));
    let lines: Vec<Value> = text(&json.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is busy")),
        "{lines:?}"
    );

    let (status, _, stderr) = finish_holder(holder).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

async fn finish_holder(mut holder: Running) -> (ExitStatus, String, String) {
    holder.send_line().await;
    holder.finish().await
}

#[tokio::test]
async fn wait_acquires_once_the_holder_exits() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("wait");
    let (holder, _, first) = hold(Some(&emulator), &url, &[]).await;

    let mut waiter = wait_for(Some(&emulator), &url, &[]);
    waiter.expect_stderr("is busy").await;

    let (status, _, stderr) = finish_holder(holder).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let released = Instant::now();
    let second: u64 = waiter
        .expect_line("got")
        .await
        .parse()
        .expect("numeric token");
    eprintln!(
        "measured: waiter acquired {:?} after the holder released",
        released.elapsed()
    );
    assert!(second > first, "tokens must grow: {first} then {second}");
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_signal_aborts_the_wait_without_leaving_a_lock() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("abort-wait");
    let (holder, _, token) = hold(Some(&emulator), &url, &[]).await;

    let mut waiter = Running::start(gcslock(
        Some(&emulator),
        &[
            "-v",
            "run",
            "--wait",
            "forever",
            &url,
            "--",
            "echo",
            "must not run",
        ],
    ));
    // Logged once the first attempt found the lock busy: signal handlers are in place.
    waiter.expect_stderr("is busy").await;
    kill(waiter.pid(), Signal::SIGINT).expect("signalling the waiter");
    let (status, stdout, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(128 + 2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");

    // The holder still holds it: the waiter wrote nothing.
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "held", "{status}");
    assert_eq!(status["token"], token, "{status}");
    let (status, _, stderr) = finish_holder(holder).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn lease_lost_to_break_kills_grandchildren_and_exits_76() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("lost");
    let mut args = vec!["run"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&["--kill-grace", "500ms", &url, "--", "sh", "-c"]);
    // `sleep` is a grandchild of gcslock: consul would leave it running.
    args.push(r#"sleep 300 & echo "grandchild $!"; wait"#);
    let mut holder = Running::start(gcslock(Some(&emulator), &args));
    let grandchild: i32 = holder.expect_line("grandchild").await.parse().expect("pid");
    assert!(!is_gone(grandchild));

    let broken = output(gcslock(Some(&emulator), &["break", &url])).await;
    assert_eq!(code(&broken), 0, "{}", describe(&broken));
    assert!(
        text(&broken.stdout).contains("broken"),
        "{}",
        describe(&broken)
    );
    let broken_at = Instant::now();

    let (status, _, stderr) = holder.finish().await;
    let detected = broken_at.elapsed();
    assert_eq!(status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("lost while the command ran"), "{stderr}");
    assert!(
        is_gone(grandchild),
        "the grandchild {grandchild} survived the loss"
    );
    eprintln!("measured: break to gcslock exit (loss detected, group stopped): {detected:?}");

    // The break revoked the lock: held by the breaker until it turns stale.
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "held", "{status}");
    assert!(
        status["holder"]
            .as_str()
            .is_some_and(|holder| holder.starts_with("revoked by ")),
        "{status}"
    );
}

#[tokio::test]
async fn a_crashed_holder_is_taken_over_after_its_ttl() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("crash");
    let (holder, child, first) = hold(Some(&emulator), &url, &SHORT_TTL).await;

    // Crash: no release, no more refreshes.
    kill(holder.pid(), Signal::SIGKILL).expect("killing gcslock");
    let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
    let (status, _, _) = holder.finish().await;
    assert_eq!(status.code(), None, "gcslock died of SIGKILL");
    let crashed = Instant::now();
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["token"], first, "{status}");
    assert!(
        status["state"] == "held" || status["state"] == "stale",
        "{status}"
    );

    let mut waiter = wait_for(Some(&emulator), &url, &SHORT_TTL);
    let second: u64 = waiter
        .expect_line("got")
        .await
        .parse()
        .expect("numeric token");
    eprintln!(
        "measured: takeover {:?} after the crash (TTL 2s)",
        crashed.elapsed()
    );
    assert_eq!(second, first + 1);
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("taking over a stale lock"), "{stderr}");
}

#[tokio::test]
async fn a_missing_bucket_exits_66() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = format!(
        "gs://gcslock-no-such-bucket-{:08x}/o",
        rand::random::<u32>()
    );
    let run = output(gcslock(Some(&emulator), &["run", &url, "--", "true"])).await;
    assert_eq!(code(&run), 66, "{}", describe(&run));
    let status = output(gcslock(Some(&emulator), &["status", &url])).await;
    assert_eq!(code(&status), 66, "{}", describe(&status));
}
