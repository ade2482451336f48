//! `gcslock run` never lets the command outlive the lease: real processes against
//! strict-gcs (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped loudly when unset, a failure
//! with `GCSLOCK_REQUIRE_STRICT=1`), as in `tests/cli.rs`.
//!
//! * gcslock killed alone (SIGKILL): its command's whole process group dies before a
//!   waiter's command starts;
//! * a holder cut off from storage stops a command that ignores SIGTERM before the
//!   lease can run out, so a waiter's command never runs beside it;
//! * `run` reads its options from the environment, but never the lock URL or the
//!   token: a nested `gcslock run` works on its own lock.
//!
//! A waiter's command reports, first thing, whether the earlier holder's processes
//! still run; the tests wait for events (lines, end of output, exits), never sleep.

mod harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use harness::{
    code, describe, exits, gcslock, output, run_script, start_ready, status_json, text, Emulator,
    Running, BIN, SHORT_TTL,
};
use nix::sys::signal::{kill, Signal};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A waiter: `gcslock -v run --wait 60s EXTRA URL` of a command that first prints
/// the state of each of `pids` (`state PID S`, with S `gone` if no such process),
/// then `got TOKEN`.
fn waiter_checking(emulator: &Emulator, url: &str, pids: &[i32]) -> Running {
    let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
    let script = format!(
        r#"for p in {}; do s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1); echo "state $p ${{s:-gone}}"; done; echo "got $GCSLOCK_TOKEN""#,
        pids.join(" ")
    );
    let mut args = vec!["-v", "run", "--wait", "60s"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&[url, "--", "sh", "-c", &script]);
    Running::start(gcslock(Some(emulator), &args))
}

/// Reads the waiter's report; every process must be gone (or a zombie, which runs
/// nothing) before its command started. Returns the waiter's token.
async fn assert_gone_when_the_waiter_started(waiter: &mut Running, pids: &[i32]) -> u64 {
    for _ in pids {
        let line = waiter.expect_line("state").await;
        let state = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        assert!(
            state == "gone" || state == "Z" || state == "X",
            "the earlier holder's process still ran when the waiter's command started: {line}"
        );
    }
    waiter.expect_line("got").await.parse().expect("token")
}

/// A holder whose command starts a grandchild in its process group; both ignore
/// SIGTERM. Returns the holder, the command's pid and the grandchild's.
async fn hold_stubborn(emulator: &Emulator, url: &str, extra: &[&str]) -> (Running, i32, i32) {
    let extra = [&SHORT_TTL[..], extra].concat();
    // The grandchild inherits the ignored SIGTERM: like a job whose graceful
    // shutdown takes longer than the lease has left.
    let script = r#"trap '' TERM; sleep 300 & echo "ready $$ $!"; wait"#;
    let args = run_script(&extra, url, script);
    start_ready(gcslock(Some(emulator), &args)).await
}

#[tokio::test]
async fn killing_gcslock_kills_its_command_group_before_a_waiter_runs() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("orphan");
    let (mut holder, command, grandchild) = hold_stubborn(&emulator, &url, &[]).await;

    // gcslock alone, not its command's group.
    kill(holder.pid(), Signal::SIGKILL).expect("killing gcslock");
    let killed = Instant::now();
    let mut waiter = waiter_checking(&emulator, &url, &[command, grandchild]);

    // The command and the grandchild hold the holder's stdout: its end means both
    // are dead.
    let rest = holder.stdout_to_end().await;
    eprintln!(
        "measured: gcslock SIGKILLed to its command group's end: {:?} (TTL 2s)",
        killed.elapsed()
    );
    assert!(rest.is_empty(), "{rest:?}");

    let token = assert_gone_when_the_waiter_started(&mut waiter, &[command, grandchild]).await;
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("taking over a stale lock"), "{stderr}");
    assert!(token >= 2, "{token}");
}

/// A TCP proxy to the emulator that the test can cut, so that one holder loses
/// storage while everyone else keeps it.
struct Proxy {
    address: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = listener.local_addr().expect("address");
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Self { address, tasks }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes the listener and every connection: from now on, connections are refused.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_holder_cut_off_from_storage_stops_its_command_before_a_takeover() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("cutoff");
    let proxy = Proxy::start(&emulator.endpoint).await;
    let endpoint = proxy.endpoint();
    // The default kill grace (10s, limited to 775ms by TTL 2s) applies.
    let (holder, command, grandchild) =
        hold_stubborn(&emulator, &url, &["--endpoint", &endpoint]).await;

    proxy.cut();
    let cut = Instant::now();
    let mut waiter = waiter_checking(&emulator, &url, &[command, grandchild]);
    let token = assert_gone_when_the_waiter_started(&mut waiter, &[command, grandchild]).await;
    eprintln!(
        "measured: storage cut to the waiter's command: {:?} (TTL 2s)",
        cut.elapsed()
    );
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(token >= 2, "{token}");

    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(76), "{stderr}");
    assert!(
        stderr.contains("was not refreshed and runs out in"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_nested_run_uses_its_own_url_and_token() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let outer_url = emulator.url("nested-outer");
    let inner_url = emulator.url("nested-inner");
    // The outer lock's token becomes 2, the inner's 1: a leak would show.
    exits(Some(&emulator), &["run", &outer_url, "--", "true"], 0).await;

    let inner = format!(
        r#"{BIN} run {inner_url} -- sh -c 'echo "inner $GCSLOCK_URL $GCSLOCK_TOKEN"' && echo "outer $GCSLOCK_URL $GCSLOCK_TOKEN" && {BIN} run -- true; echo "no url: $?""#
    );
    let out = output(gcslock(
        Some(&emulator),
        &["run", &outer_url, "--", "sh", "-c", &inner],
    ))
    .await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("inner {inner_url} 1\n")),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains(&format!("outer {outer_url} 2\n")),
        "{}",
        describe(&out)
    );
    // GCSLOCK_URL is set in there, but `run` without a URL is still a usage error.
    assert!(stdout.contains("no url: 64\n"), "{}", describe(&out));
    let status = status_json(Some(&emulator), &inner_url).await;
    assert_eq!(status["token"], 1, "{status}");
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn options_come_from_the_environment_and_flags_win() {
    // Refused before any request: no emulator needed.
    let url = "gs://gcslock-test/env-options";
    let mut refused = gcslock(
        None,
        &[
            "run",
            "--endpoint",
            "http://127.0.0.1:1",
            "--ttl",
            "2s",
            url,
            "--",
            "true",
        ],
    );
    // The flag beats GCSLOCK_TTL (with TTL 1h a 5s grace would fit).
    refused
        .env("GCSLOCK_TTL", "1h")
        .env("GCSLOCK_REFRESH_INTERVAL", "250ms")
        .env("GCSLOCK_KILL_GRACE", "5s");
    let out = output(refused).await;
    assert_eq!(code(&out), 64, "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("5s is too long for --ttl 2s: at most 775ms"),
        "{stderr}"
    );

    let help = output(gcslock(None, &["run", "--help"])).await;
    // Words rejoined: the short help may wrap inside a tag.
    let help = text(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for variable in [
        "GCSLOCK_TTL",
        "GCSLOCK_WAIT",
        "GCSLOCK_IDENTITY",
        "GCSLOCK_KILL_GRACE",
        "GCSLOCK_STORAGE_TIMEOUT",
        "GCSLOCK_REFRESH_INTERVAL",
        "GCSLOCK_BUSY_EXIT_CODE",
    ] {
        assert!(help.contains(&format!("[env: {variable}=")), "{variable}");
    }
    assert!(!help.contains("[env: GCSLOCK_URL"), "{help}");
    assert!(!help.contains("[env: GCSLOCK_TOKEN"), "{help}");
}

#[tokio::test]
async fn a_kill_grace_the_lease_has_no_room_for_is_refused() {
    let url = "gs://gcslock-test/grace";
    let base = ["run", "--endpoint", "http://127.0.0.1:1", "--ttl", "10s"];
    let mut args = base.to_vec();
    args.extend_from_slice(&["--kill-grace", "4s", url, "--", "true"]);
    let out = exits(None, &args, 64).await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "--kill-grace (GCSLOCK_KILL_GRACE) 4s is too long for --ttl 10s: at most 3s875ms"
        ),
        "{stderr}"
    );
    // At the limit it is accepted: the run goes on to storage (unreachable: 69).
    let mut args = base.to_vec();
    args.extend_from_slice(&[
        "--storage-timeout",
        "1s",
        "--kill-grace",
        "3875ms",
        url,
        "--",
        "true",
    ]);
    exits(None, &args, 69).await;
}

#[tokio::test]
async fn job_control_stops_are_refused_so_the_lease_stays_watched() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("ctrl-z");
    let (mut holder, _command, _token) = harness::hold(Some(&emulator), &url, &[]).await;
    // Ctrl-Z reaches only gcslock's process group, not the command's. SIGTTOU is
    // ignored without a word (SIG_IGN: see run_boundary.rs for why), so it is only
    // checked not to stop gcslock.
    for signal in [Signal::SIGTTOU, Signal::SIGTSTP, Signal::SIGTTIN] {
        kill(holder.pid(), signal).expect("signalling gcslock");
        if signal != Signal::SIGTTOU {
            holder.expect_stderr(&format!("ignoring {signal}")).await;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", holder.pid()))
            .expect("gcslock's /proc stat");
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        assert_ne!(state, Some("T"), "gcslock was stopped by {signal}: {stat}");
    }
    holder.send_line().await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_max_runtime_of_zero_or_past_the_clock_is_refused() {
    for (max_runtime, message) in [
        (
            "0s",
            "--max-runtime (GCSLOCK_MAX_RUNTIME) must be more than zero",
        ),
        ("300000000000y", "is beyond the end of this machine's clock"),
    ] {
        let args = [
            "run",
            "--endpoint",
            "http://127.0.0.1:1",
            "--max-runtime",
            max_runtime,
            "gs://gcslock-test/max-runtime",
            "--",
            "true",
        ];
        let out = exits(None, &args, 64).await;
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{max_runtime}: {stderr}");
    }
}
