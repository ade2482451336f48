//! End-to-end tests of the `gcslock` binary, run as real processes against live
//! emulators.
//!
//! * Wire-level tests use `STORAGE_EMULATOR_HOST` (fake-gcs-server in CI). They are
//!   skipped, loudly, when it is unset, and fail instead when `CI` is set.
//! * Tests whose outcome depends on GCS's conditional-request semantics (busy,
//!   waiting, loss after `break`, takeover of a crashed holder) use
//!   `GCSLOCK_STRICT_EMULATOR_HOST` (strict-gcs), because fake-gcs-server ignores
//!   preconditions on PATCH/DELETE: a refresh over a broken lock would succeed
//!   there. They are skipped, loudly, when it is unset.
//! * Usage errors and an unreachable endpoint need no emulator.
//!
//! The bucket is `GCSLOCK_TEST_BUCKET` (default `gcslock-test`) and must exist on
//! both emulators. Every test uses its own object name, so tests run in parallel.
//!
//! Locally:
//! ```text
//! export STORAGE_EMULATOR_HOST=$(fake-gcs/start-fake-gcs-server.sh --bucket gcslock-test 4443)
//! cargo build -p strict-gcs && target/debug/strict-gcs --port 0 --bucket gcslock-test
//! export GCSLOCK_STRICT_EMULATOR_HOST=http://127.0.0.1:PORT   # from its first line
//! cargo test --test cli
//! ```
//!
//! No test sleeps to let something happen: each waits for an event (a line the
//! command prints, a process exit, a log line) under a generous hang guard.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::{Backend, WriteCondition};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

/// Upper bound for any single wait; only a hang ever reaches it.
const HANG_GUARD: Duration = Duration::from_secs(90);
/// A short lease, so that loss and staleness show within seconds.
const SHORT_TTL: [&str; 4] = ["--ttl", "2s", "--refresh-interval", "250ms"];

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Emulator {
    endpoint: String,
    bucket: String,
}

impl Emulator {
    /// A fresh lock URL for one test.
    fn url(&self, test: &str) -> String {
        format!(
            "gs://{}/cli-tests/{test}-{:016x}",
            self.bucket,
            rand::random::<u64>()
        )
    }
}

fn bucket() -> String {
    std::env::var("GCSLOCK_TEST_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "gcslock-test".to_owned())
}

fn env_endpoint(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Written straight to stderr, past the test harness's output capture, so that a
/// skip shows in a plain `cargo test` run.
fn loud_skip(test: &str, why: &str) {
    use std::io::Write as _;
    let banner = format!(
        "\n==================== SKIPPED: tests/cli.rs {test} ====================\n\
         {why}\n\
         =====================================================================\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
}

/// fake-gcs-server (or any GCS-compatible endpoint), for wire-level tests.
fn wire(test: &str) -> Option<Emulator> {
    match env_endpoint("STORAGE_EMULATOR_HOST") {
        Some(endpoint) => Some(Emulator {
            endpoint,
            bucket: bucket(),
        }),
        None => {
            let why = "STORAGE_EMULATOR_HOST is not set: start fake-gcs-server \
                       (fake-gcs/start-fake-gcs-server.sh) and export it";
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: {why} (required in CI)"
            );
            loud_skip(test, why);
            None
        }
    }
}

/// An endpoint that enforces preconditions exactly (strict-gcs, or real GCS).
fn strict(test: &str) -> Option<Emulator> {
    match env_endpoint("GCSLOCK_STRICT_EMULATOR_HOST") {
        Some(endpoint) => Some(Emulator {
            endpoint,
            bucket: bucket(),
        }),
        None => {
            loud_skip(
                test,
                "GCSLOCK_STRICT_EMULATOR_HOST is not set: this test relies on preconditions \
                 being enforced (fake-gcs-server ignores them on PATCH/DELETE). Start \
                 strict-gcs (`cargo build -p strict-gcs && target/debug/strict-gcs --port 0 \
                 --bucket gcslock-test`) and export its URL",
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Running gcslock
// ---------------------------------------------------------------------------

/// `gcslock ARGS` pointed at `emulator` through STORAGE_EMULATOR_HOST.
fn gcslock(emulator: Option<&Emulator>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gcslock"));
    command
        .args(args)
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("GCSLOCK_TOKEN")
        .env_remove("GCSLOCK_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(emulator) = emulator {
        command.env("STORAGE_EMULATOR_HOST", &emulator.endpoint);
    }
    command
}

/// Runs to completion under the hang guard.
async fn output(mut command: Command) -> Output {
    tokio::time::timeout(HANG_GUARD, command.output())
        .await
        .expect("gcslock hung")
        .expect("cannot start gcslock")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or_else(|| {
        panic!(
            "gcslock died of a signal: {:?}\nstderr: {}",
            output.status,
            text(&output.stderr)
        )
    })
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// A gcslock process the test interacts with: its stdout lines, its stderr lines as
/// they come, its stdin.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("cannot start gcslock");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            stdout,
            stderr: receiver,
            stderr_seen: Vec::new(),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// The next stdout line, which must start with `prefix`; returns the rest.
    async fn expect_line(&mut self, prefix: &str) -> String {
        let line = tokio::time::timeout(HANG_GUARD, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no stdout line {prefix:?} in time"))
            .expect("reading stdout")
            .unwrap_or_else(|| {
                panic!(
                    "stdout closed before {prefix:?}; stderr: {:?}",
                    self.stderr_seen
                )
            });
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected a line starting {prefix:?}, got {line:?}"))
            .trim()
            .to_owned()
    }

    /// Waits for a stderr line containing `needle`.
    async fn expect_stderr(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no stderr line with {needle:?}; saw {:?}", self.stderr_seen)
                })
                .unwrap_or_else(|| {
                    panic!(
                        "stderr closed before {needle:?}; saw {:?}",
                        self.stderr_seen
                    )
                });
            let found = line.contains(needle);
            self.stderr_seen.push(line);
            if found {
                return;
            }
        }
    }

    /// Lets a command that waits on `read` go on.
    async fn send_line(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"\n").await.expect("writing stdin");
        stdin.flush().await.expect("flushing stdin");
    }

    /// Waits for exit; returns the status, the rest of stdout and all of stderr.
    async fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(HANG_GUARD, self.child.wait())
            .await
            .expect("gcslock did not exit")
            .expect("waiting for gcslock");
        let mut stdout = String::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(HANG_GUARD, self.stdout.next_line()).await
        {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        while let Ok(Some(line)) = tokio::time::timeout(HANG_GUARD, self.stderr.recv()).await {
            self.stderr_seen.push(line);
        }
        (status, stdout, self.stderr_seen.join("\n"))
    }
}

/// A holder: `gcslock run` of a command that prints `ready TOKEN` and then waits
/// for a line on stdin (or EOF) before exiting 0.
async fn hold(emulator: &Emulator, url: &str, extra: &[&str]) -> (Running, u64) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        url,
        "--",
        "sh",
        "-c",
        r#"echo "ready $GCSLOCK_TOKEN"; read _"#,
    ]);
    let mut holder = Running::start(gcslock(Some(emulator), &args));
    let token = holder
        .expect_line("ready")
        .await
        .parse()
        .expect("numeric token");
    (holder, token)
}

async fn status_json(emulator: &Emulator, url: &str) -> Value {
    let out = output(gcslock(Some(emulator), &["status", "--json", url])).await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

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
        let out = output(gcslock(None, &args)).await;
        assert_eq!(code(&out), 69, "{admin:?}: {}", describe(&out));
    }
}

// ---------------------------------------------------------------------------
// Wire-level: STORAGE_EMULATOR_HOST (fake-gcs-server)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn exit_codes_pass_through() {
    let Some(emulator) = wire("exit_codes_pass_through") else {
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
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], 4, "{status}");
}

#[tokio::test]
async fn child_gets_the_token_that_status_reports() {
    let Some(emulator) = wire("child_gets_the_token_that_status_reports") else {
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

    let status = status_json(&emulator, &url).await;
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
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["free"], true, "{status}");
    assert_eq!(status["token"], token, "{status}");
}

#[tokio::test]
async fn sigterm_reaches_the_child_and_the_lock_is_released() {
    let Some(emulator) = wire("sigterm_reaches_the_child_and_the_lock_is_released") else {
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

    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], token, "{status}");
}

#[tokio::test]
async fn processes_left_behind_are_stopped_before_the_release() {
    let Some(emulator) = wire("processes_left_behind_are_stopped_before_the_release") else {
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
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn command_not_found_127_not_executable_126() {
    let Some(emulator) = wire("command_not_found_127_not_executable_126") else {
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
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], 2, "{status}");
}

#[tokio::test]
async fn foreign_objects_are_not_locks() {
    let Some(emulator) = wire("foreign_objects_are_not_locks") else {
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

    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "not-a-lock", "{status}");
    let run = output(gcslock(Some(&emulator), &["run", &url, "--", "true"])).await;
    assert_eq!(code(&run), 65, "{}", describe(&run));
    let broken = output(gcslock(Some(&emulator), &["break", &url])).await;
    assert_eq!(code(&broken), 65, "{}", describe(&broken));
}

#[tokio::test]
async fn break_is_conditional_on_the_token() {
    let Some(emulator) = wire("break_is_conditional_on_the_token") else {
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
    let Some(emulator) = strict("busy_exits_75_quickly_with_one_line") else {
        return;
    };
    let url = emulator.url("busy");
    let (holder, token) = hold(&emulator, &url, &[]).await;

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
    let Some(emulator) = strict("wait_acquires_once_the_holder_exits") else {
        return;
    };
    let url = emulator.url("wait");
    let (holder, first) = hold(&emulator, &url, &[]).await;

    let mut waiter = Running::start(gcslock(
        Some(&emulator),
        &[
            "-v",
            "run",
            "--wait",
            "60s",
            &url,
            "--",
            "sh",
            "-c",
            r#"echo "got $GCSLOCK_TOKEN""#,
        ],
    ));
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
    let Some(emulator) = strict("a_signal_aborts_the_wait_without_leaving_a_lock") else {
        return;
    };
    let url = emulator.url("abort-wait");
    let (holder, token) = hold(&emulator, &url, &[]).await;

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
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "held", "{status}");
    assert_eq!(status["token"], token, "{status}");
    let (status, _, stderr) = finish_holder(holder).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn lease_lost_to_break_kills_grandchildren_and_exits_76() {
    let Some(emulator) = strict("lease_lost_to_break_kills_grandchildren_and_exits_76") else {
        return;
    };
    let url = emulator.url("lost");
    let mut args = vec!["run"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&["--kill-grace", "5s", &url, "--", "sh", "-c"]);
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

    // The break left a released lock that nobody re-took.
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn a_crashed_holder_is_taken_over_after_its_ttl() {
    let Some(emulator) = strict("a_crashed_holder_is_taken_over_after_its_ttl") else {
        return;
    };
    let url = emulator.url("crash");
    let mut args = vec!["run"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&[
        &url,
        "--",
        "sh",
        "-c",
        r#"echo "ready $$ $GCSLOCK_TOKEN"; read _"#,
    ]);
    let mut holder = Running::start(gcslock(Some(&emulator), &args));
    let ready = holder.expect_line("ready").await;
    let (child, first) = ready.split_once(' ').expect("pid and token");
    let child: i32 = child.parse().expect("pid");
    let first: u64 = first.parse().expect("token");

    // Crash: no release, no more refreshes.
    kill(holder.pid(), Signal::SIGKILL).expect("killing gcslock");
    let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
    let (status, _, _) = holder.finish().await;
    assert_eq!(status.code(), None, "gcslock died of SIGKILL");
    let crashed = Instant::now();
    let status = status_json(&emulator, &url).await;
    assert_eq!(status["token"], first, "{status}");
    assert!(
        status["state"] == "held" || status["state"] == "stale",
        "{status}"
    );

    let mut waiter_args = vec!["-v", "run"];
    waiter_args.extend_from_slice(&SHORT_TTL);
    waiter_args.extend_from_slice(&[
        "--wait",
        "60s",
        &url,
        "--",
        "sh",
        "-c",
        r#"echo "got $GCSLOCK_TOKEN""#,
    ]);
    let mut waiter = Running::start(gcslock(Some(&emulator), &waiter_args));
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
    let Some(emulator) = strict("a_missing_bucket_exits_66") else {
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
