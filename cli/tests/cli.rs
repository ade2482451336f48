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
    code, describe, exits, gcslock, hold, is_gone, output, status_json, text, wait_for, Emulator,
    Running, SHORT_TTL,
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

/// The emulator and the URL of the lock `object` on it, if the emulator runs.
fn lock_on(emulator: Option<Emulator>, object: &str) -> Option<(Emulator, String)> {
    let emulator = emulator?;
    let url = emulator.url(object);
    Some((emulator, url))
}

/// The lock's `status --json`, asserted to be `state` with the last token `token`.
async fn status_is(emulator: &Emulator, url: &str, state: &str, token: u64) -> Value {
    let status = status_json(Some(emulator), url).await;
    assert_eq!(status["state"], state, "{status}");
    assert_eq!(status["token"], token, "{status}");
    status
}

/// The token a `run` child printed on its `ready TOKEN` line.
async fn ready_token(holder: &mut Running) -> u64 {
    holder
        .expect_line("ready")
        .await
        .parse()
        .expect("numeric token")
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
            "400d",
            "gs://gcslock-test/o",
            "--",
            "true",
        ],
    ))
    .await;
    assert_eq!(code(&out), 64, "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Durations as written, not humantime's "1year 1month 4days 13h 30m" (failed before).
    assert!(
        stderr.contains("TTL 400d is out of range") && stderr.contains(" and 7d"),
        "{stderr}"
    );
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
        "64", "65", "66", "68", "69", "70", "74", "75", "76", "77", "78", "126", "127", "128+N",
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
    let out = exits(None, &run, 69).await;
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
    let Some((emulator, url)) = lock_on(Emulator::wire(), "passthrough") else {
        return;
    };
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
    status_is(&emulator, &url, "released", 4).await;
}

#[tokio::test]
async fn child_gets_the_token_that_status_reports() {
    let Some((emulator, url)) = lock_on(Emulator::wire(), "token") else {
        return;
    };
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
    let token = ready_token(&mut holder).await;

    let status = status_is(&emulator, &url, "held", token).await;
    assert_eq!(status["free"], false, "{status}");
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
    let out = exits(Some(&emulator), &["list", "--json", &prefix], 0).await;
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
    let status = status_is(&emulator, &url, "released", token).await;
    assert_eq!(status["free"], true, "{status}");
}

#[tokio::test]
async fn sigterm_reaches_the_child_and_the_lock_is_released() {
    let Some((emulator, url)) = lock_on(Emulator::wire(), "sigterm") else {
        return;
    };
    let marker = temp_path("sigterm");
    let script = r#"trap 'echo "got TERM" > "$MARKER"; exit 42' TERM; echo "ready $GCSLOCK_TOKEN"; sleep 300 & wait"#;
    let mut command = gcslock(Some(&emulator), &["run", &url, "--", "sh", "-c", script]);
    command.env("MARKER", &marker);
    let mut holder = Running::start(command);
    let token = ready_token(&mut holder).await;

    kill(holder.pid(), Signal::SIGTERM).expect("signalling gcslock");
    let (status, _, stderr) = holder.finish().await;
    // Ended by a forwarded TERM: the exit status says so (128+15), whatever the
    // command's own code.
    assert_eq!(
        status.code(),
        Some(143),
        "terminated, not the child's 42; stderr: {stderr}"
    );
    let written = std::fs::read_to_string(&marker).expect("the child's trap ran");
    assert_eq!(written.trim(), "got TERM");
    let _ = std::fs::remove_file(&marker);

    status_is(&emulator, &url, "released", token).await;
}

#[tokio::test]
async fn processes_left_behind_are_stopped_before_the_release() {
    let Some((emulator, url)) = lock_on(Emulator::wire(), "leftover") else {
        return;
    };
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
    let Some((emulator, url)) = lock_on(Emulator::wire(), "spawn") else {
        return;
    };
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
    exits(Some(&emulator), &["run", &url, "--", dir], 126).await;

    // The lock was released both times.
    status_is(&emulator, &url, "released", 2).await;
}

#[tokio::test]
async fn foreign_objects_are_not_locks() {
    let Some((emulator, url)) = lock_on(Emulator::wire(), "foreign") else {
        return;
    };
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
    exits(Some(&emulator), &["run", &url, "--", "true"], 65).await;
    exits(Some(&emulator), &["break", &url], 65).await;
}

#[tokio::test]
async fn break_is_conditional_on_the_token() {
    let Some((emulator, url)) = lock_on(Emulator::wire(), "break-token") else {
        return;
    };
    let free = exits(Some(&emulator), &["break", &url], 0).await;
    assert!(
        text(&free.stdout).contains("already free"),
        "{}",
        describe(&free)
    );

    exits(Some(&emulator), &["run", &url, "--", "true"], 0).await;
    let wrong = exits(Some(&emulator), &["break", "--token", "99", &url], 75).await;
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
    let Some((emulator, url)) = lock_on(Emulator::strict(), "busy") else {
        return;
    };
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

    let quiet = exits(Some(&emulator), &["-q", "run", &url, "--", "true"], 75).await;
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
    let Some((emulator, url)) = lock_on(Emulator::strict(), "wait") else {
        return;
    };
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
    let Some((emulator, url)) = lock_on(Emulator::strict(), "abort-wait") else {
        return;
    };
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
    status_is(&emulator, &url, "held", token).await;
    let (status, _, stderr) = finish_holder(holder).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn lease_lost_to_break_kills_grandchildren_and_exits_76() {
    let Some((emulator, url)) = lock_on(Emulator::strict(), "lost") else {
        return;
    };
    let mut args = vec!["run"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&["--kill-grace", "500ms", &url, "--", "sh", "-c"]);
    // `sleep` is a grandchild of gcslock: consul would leave it running.
    args.push(r#"sleep 300 & echo "grandchild $!"; wait"#);
    let mut holder = Running::start(gcslock(Some(&emulator), &args));
    let grandchild: i32 = holder.expect_line("grandchild").await.parse().expect("pid");
    assert!(!is_gone(grandchild));

    let broken = exits(Some(&emulator), &["break", &url], 0).await;
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
    let Some((emulator, url)) = lock_on(Emulator::strict(), "crash") else {
        return;
    };
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
    exits(Some(&emulator), &["run", &url, "--", "true"], 66).await;
    exits(Some(&emulator), &["status", &url], 66).await;
}

// ---------------------------------------------------------------------------
// Output never holds up supervision; a command line that explains itself
// ---------------------------------------------------------------------------

/// A server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (endpoint, task)
}

#[tokio::test]
async fn the_storage_timeout_bounds_every_command_against_a_silent_server() {
    let (endpoint, server) = silent_server().await;
    let url = "gs://gcslock-test/silent";
    let commands: [&[&str]; 6] = [
        &["run", url, "--", "true"],
        &["status", url],
        &["list", "gs://gcslock-test/"],
        &["break", url],
        &["cat", url],
        &["put", "--token", "1", url],
    ];
    for command in commands {
        // --storage-timeout is the subcommand's: after its name.
        let mut args = vec!["--endpoint", endpoint.as_str(), command[0]];
        args.extend(["--storage-timeout", "3s"]);
        args.extend_from_slice(&command[1..]);
        let started = Instant::now();
        let out = output(gcslock(None, &args)).await;
        let took = started.elapsed();
        eprintln!("measured: {} against a silent server: {took:?}", command[0]);
        assert_eq!(code(&out), 69, "{args:?}: {}", describe(&out));
        assert!(
            took < std::time::Duration::from_secs(7),
            "{args:?} took {took:?} with --storage-timeout 3s"
        );
    }
    server.abort();
}

/// An HTTP server that answers every request with a 404 HTML page.
async fn not_gcs_server() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0_u8; 8192];
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let body = "<html><body><h1>404 Not Found</h1></body></html>";
                    let reply = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, task)
}

#[tokio::test]
async fn an_endpoint_that_is_not_gcs_is_named_as_such_with_exit_68() {
    let (endpoint, server) = not_gcs_server().await;
    let url = "gs://gcslock-test/not-gcs";
    for command in [&["status", url][..], &["run", url, "--", "true"]] {
        let mut args = vec!["--endpoint", endpoint.as_str()];
        args.extend_from_slice(command);
        let out = output(gcslock(None, &args)).await;
        assert_eq!(code(&out), 68, "{args:?}: {}", describe(&out));
        assert!(
            text(&out.stderr).contains("does not answer like Google Cloud Storage"),
            "{}",
            describe(&out)
        );
    }
    server.abort();
}

#[tokio::test]
async fn usage_errors_keep_clap_details_and_name_the_variable() {
    let details: [(&[&str], &str); 3] = [
        (&["run", "gs://gcslock-test/o"], "<COMMAND>"),
        (&["status"], "<URL>"),
        (
            &["--log-format", "yaml", "status", "gs://gcslock-test/o"],
            "[possible values: text, json]",
        ),
    ];
    for (args, detail) in details {
        let out = exits(None, args, 64).await;
        let stderr = text(&out.stderr);
        assert!(stderr.contains(detail), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }

    let mut command = gcslock(None, &["run", "gs://gcslock-test/o", "--", "true"]);
    command.env("GCSLOCK_TTL", "5");
    let out = output(command).await;
    assert_eq!(code(&out), 64, "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("$GCSLOCK_TTL"),
        "{}",
        describe(&out)
    );

    let out = exits(None, &["--log-format", "json", "status"], 64).await;
    let line: Value =
        serde_json::from_slice(&out.stderr).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(line["exit_code"], 64, "{line}");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("<URL>")),
        "{line}"
    );
}

#[tokio::test]
async fn the_object_store_hint_names_the_cli_crate() {
    if cfg!(feature = "object-store") {
        return;
    }
    let out = exits(None, &["run", "s3://bucket/o", "--", "true"], 64).await;
    assert!(
        text(&out.stderr).contains("cargo install --locked --path cli --features object-store"),
        "{}",
        describe(&out)
    );
}

/// With --log-format json every event carries the command's fields: the lock URL
/// always, the period as written, the holder and token once acquired (the holder
/// failed before), the exit code at the end.
#[tokio::test]
async fn json_log_lines_carry_url_token_period_and_exit_code() {
    let Some((emulator, url)) = lock_on(Emulator::strict(), "json-fields") else {
        return;
    };
    let out = output(gcslock(
        Some(&emulator),
        &[
            "-vv",
            "--log-format",
            "json",
            "run",
            "--once-per",
            "1h",
            "--identity",
            "json-runner",
            &url,
            "--",
            "sh",
            "-c",
            "echo $GCSLOCK_TOKEN",
        ],
    ))
    .await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let token: u64 = text(&out.stdout).trim().parse().expect("token");
    let lines: Vec<Value> = text(&out.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["url"], url.as_str(), "{line}");
        assert_eq!(line["period"], "1h", "{line}");
        assert!(
            line["message"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    let started = lines
        .iter()
        .position(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("command started"))
        })
        .unwrap_or_else(|| panic!("no 'command started': {lines:?}"));
    for line in &lines[started..] {
        assert_eq!(line["token"], token, "{line}");
        assert_eq!(line["holder"], "json-runner", "{line}");
    }
    let last = lines.last().expect("a line");
    assert_eq!(last["exit_code"], 0, "{last}");
}

/// `run --help` is read for its usage and examples: they come first, the option
/// list is short, and the explanations are in the man page.
#[tokio::test]
async fn run_help_is_usage_and_examples_first_and_short() {
    for flag in ["--help", "-h"] {
        let out = exits(None, &["run", flag], 0).await;
        let help = text(&out.stdout);
        assert!(
            help.lines().count() < 60,
            "{flag}: {} lines",
            help.lines().count()
        );
        assert!(
            help.lines()
                .take(4)
                .any(|line| line.starts_with("Usage: gcslock run")),
            "{help}"
        );
        assert!(help.matches("gcslock run ").count() >= 4, "{help}");
    }
    let dir = temp_path("man");
    exits(None, &["generate", "man", dir.to_str().expect("UTF-8")], 0).await;
    let page = std::fs::read_to_string(dir.join("gcslock-run.1")).expect("gcslock-run.1");
    let _ = std::fs::remove_dir_all(&dir);
    for explained in [
        "parent\\-death signal",
        "Once per period",
        "EX_USAGE",
        "124",
    ] {
        assert!(page.contains(explained), "{explained} not in the man page");
    }
}
