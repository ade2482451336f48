//! Runs the built `gcslock` binary as real processes, for `tests/cli.rs`,
//! `tests/fence.rs` and `tests/object_store.rs`.
//!
//! * [`Emulator`]: a GCS endpoint from the environment, or a skip (a failure where
//!   the environment requires it), as the conformance suite's targets do;
//! * [`gcslock`]: the binary with a clean environment, [`output`] to run it to the
//!   end, [`Running`] to talk to it while it runs;
//! * [`hold`], [`wait_for`] and [`status_json`]: the holders, waiters and status
//!   checks the tests are made of.
//!
//! Nothing here sleeps to let something happen: every wait is for an event (a
//! line, an exit) under [`HANG_GUARD`].

#![allow(dead_code)] // each test crate uses its part

#[macro_use]
#[allow(unused_imports, unused_macros)] // each test crate uses its part of it too
#[path = "../../../tests/conformance/support.rs"]
pub mod support;

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

use support::{env, not_configured, run_id};

pub const BIN: &str = env!("CARGO_BIN_EXE_gcslock");
/// Upper bound for any single wait; only a hang ever reaches it.
pub const HANG_GUARD: Duration = Duration::from_secs(90);
/// A short lease, so that loss and staleness show within seconds.
pub const SHORT_TTL: [&str; 4] = ["--ttl", "2s", "--refresh-interval", "250ms"];

// ---------------------------------------------------------------- endpoints

/// A GCS endpoint and the test bucket on it (`GCSLOCK_TEST_BUCKET`, default
/// `gcslock-test`), which must exist.
#[derive(Clone, Debug)]
pub struct Emulator {
    pub endpoint: String,
    pub bucket: String,
}

impl Emulator {
    /// fake-gcs-server, or any GCS-compatible endpoint: `STORAGE_EMULATOR_HOST`.
    /// Unset: skipped with a message, a failure when `CI` is set.
    pub fn wire() -> Option<Self> {
        let required = std::env::var_os("CI").is_some().then_some("CI");
        Self::from_env("fake-gcs-server", "STORAGE_EMULATOR_HOST", required)
    }

    /// An endpoint that enforces GCS's preconditions (strict-gcs, or real GCS):
    /// `GCSLOCK_STRICT_EMULATOR_HOST`. Unset: skipped with a message, a failure with
    /// `GCSLOCK_REQUIRE_STRICT=1`.
    pub fn strict() -> Option<Self> {
        let required = (env("GCSLOCK_REQUIRE_STRICT").as_deref() == Some("1"))
            .then_some("GCSLOCK_REQUIRE_STRICT=1");
        Self::from_env("strict-gcs", "GCSLOCK_STRICT_EMULATOR_HOST", required)
    }

    fn from_env(which: &str, variable: &str, required_by: Option<&str>) -> Option<Self> {
        let Some(endpoint) = env(variable) else {
            return not_configured(which, variable, "emulators/README.md", required_by);
        };
        let bucket = env("GCSLOCK_TEST_BUCKET").unwrap_or_else(|| "gcslock-test".to_owned());
        Some(Self { endpoint, bucket })
    }

    /// A fresh lock URL for one test.
    pub fn url(&self, test: &str) -> String {
        unique_url(&format!("gs://{}/cli-tests", self.bucket), test)
    }
}

/// `BASE/RUN/TEST-RANDOM`: no two tests, and no two runs, share it.
pub fn unique_url(base: &str, test: &str) -> String {
    format!("{base}/{}/{test}-{:016x}", run_id(), rand::random::<u64>())
}

// ---------------------------------------------------------------- running gcslock

/// `gcslock ARGS` pointed at `emulator` (through `STORAGE_EMULATOR_HOST`) if any,
/// without an inherited token or URL; stdin empty, stdout and stderr piped.
pub fn gcslock(emulator: Option<&Emulator>, args: &[&str]) -> Command {
    gcslock_via(&[BIN], emulator, args)
}

/// [`gcslock`] started through `program` (its first word; the gcslock binary among
/// the others), e.g. `setpriv … BIN` to run it as another user.
pub fn gcslock_via(program: &[&str], emulator: Option<&Emulator>, args: &[&str]) -> Command {
    let (first, rest) = program.split_first().expect("a program");
    let mut command = Command::new(first);
    command.args(rest);
    // Only what each test sets: none of the caller's GCSLOCK_* configuration.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GCSLOCK_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env_remove("STORAGE_EMULATOR_HOST")
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
pub async fn output(mut command: Command) -> Output {
    timeout(HANG_GUARD, command.output())
        .await
        .expect("gcslock hung")
        .expect("cannot start gcslock")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn code(output: &Output) -> i32 {
    output
        .status
        .code()
        .unwrap_or_else(|| panic!("gcslock died of a signal: {}", describe(output)))
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Runs `gcslock ARGS` to completion and checks its exit code.
pub async fn exits(emulator: Option<&Emulator>, args: &[&str], expected: i32) -> Output {
    let out = output(gcslock(emulator, args)).await;
    assert_eq!(code(&out), expected, "gcslock {args:?}: {}", describe(&out));
    out
}

/// `gcslock status --json URL`, which must succeed.
pub async fn status_json(emulator: Option<&Emulator>, url: &str) -> Value {
    let out = output(gcslock(emulator, &["status", "--json", url])).await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// A gcslock process the test interacts with: its stdout lines, its stderr lines as
/// they come, its stdin.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_seen: Vec<String>,
}

impl Running {
    pub fn start(mut command: Command) -> Self {
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

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// The next stdout line.
    pub async fn next_line(&mut self) -> String {
        timeout(HANG_GUARD, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no stdout line in time"))
            .expect("reading stdout")
            .unwrap_or_else(|| panic!("stdout closed; stderr: {:?}", self.stderr_seen))
    }

    /// The next stdout line, which must start with `prefix`; returns the rest.
    pub async fn expect_line(&mut self, prefix: &str) -> String {
        let line = self.next_line().await;
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected a line starting {prefix:?}, got {line:?}"))
            .trim()
            .to_owned()
    }

    /// Waits for a stderr line containing `needle`.
    pub async fn expect_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let line = timeout_at(deadline, self.stderr.recv())
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
    pub async fn send_line(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"\n").await.expect("writing stdin");
        stdin.flush().await.expect("flushing stdin");
    }

    /// Closes stdin and waits for exit; returns the status, the rest of stdout and
    /// all of stderr.
    pub async fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let status = timeout(HANG_GUARD, self.child.wait())
            .await
            .expect("gcslock did not exit")
            .expect("waiting for gcslock");
        let mut stdout = String::new();
        while let Ok(Ok(Some(line))) = timeout(HANG_GUARD, self.stdout.next_line()).await {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        while let Ok(Some(line)) = timeout(HANG_GUARD, self.stderr.recv()).await {
            self.stderr_seen.push(line);
        }
        (status, stdout, self.stderr_seen.join("\n"))
    }
}

/// A holder: `gcslock run EXTRA URL` of a command that prints `ready PID TOKEN` and
/// then waits for a line on stdin (or EOF) before exiting 0. Returns the holder, its
/// command's pid (also its process group) and its token.
pub async fn hold(emulator: Option<&Emulator>, url: &str, extra: &[&str]) -> (Running, i32, u64) {
    let args = run_script(extra, url, r#"echo "ready $$ $GCSLOCK_TOKEN"; read _"#);
    start_ready(gcslock(emulator, &args)).await
}

/// The arguments of `gcslock run EXTRA URL -- sh -c SCRIPT`.
pub fn run_script<'a>(extra: &[&'a str], url: &'a str, script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[url, "--", "sh", "-c", script]);
    args
}

/// Starts `command` and reads its `ready A B` line.
pub async fn start_ready<A: std::str::FromStr, B: std::str::FromStr>(
    command: Command,
) -> (Running, A, B) {
    let mut running = Running::start(command);
    let ready = running.expect_line("ready").await;
    let (a, b) = ready
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or_else(|| panic!("two values after ready: {ready:?}"));
    (running, a, b)
}

/// A waiter: `gcslock -v run EXTRA --wait 60s URL` of a command that prints
/// `got TOKEN`.
pub fn wait_for(emulator: Option<&Emulator>, url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["-v", "run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--wait",
        "60s",
        url,
        "--",
        "sh",
        "-c",
        r#"echo "got $GCSLOCK_TOKEN""#,
    ]);
    Running::start(gcslock(emulator, &args))
}

impl Running {
    /// Reads stdout to its end (every process holding it has closed it or died),
    /// under the hang guard; returns the lines read.
    pub async fn stdout_to_end(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let read_all = async {
            while let Some(line) = self.stdout.next_line().await.expect("reading stdout") {
                lines.push(line);
            }
        };
        timeout(HANG_GUARD, read_all)
            .await
            .unwrap_or_else(|_| panic!("stdout still open after {HANG_GUARD:?}"));
        lines
    }
}

/// Whether `pid` has exited: no such process, or a zombie waiting for its
/// (re-parented) parent to reap it, which runs nothing.
pub fn is_gone(pid: i32) -> bool {
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
