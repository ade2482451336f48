//! `gcslock elect` and `gcslock observe` as real processes against strict-gcs
//! (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped loudly when unset, a failure with
//! `GCSLOCK_REQUIRE_STRICT=1`).

mod harness;

use std::time::Duration;

use harness::{gcslock, status_json, Emulator, Running, HANG_GUARD};
use nix::sys::signal::{kill, Signal};
use serde_json::Value;
use tokio::time::Instant;

/// A candidate whose command prints `lead ID TOKEN`, then exits when a line
/// arrives on stdin, or prints `term ID` and exits 0 on SIGTERM. (`read` runs in
/// the background so that the trap runs at once; its stdin is given explicitly, as
/// an asynchronous command's is otherwise /dev/null.)
fn candidate(emulator: &Emulator, url: &str, id: &str) -> Running {
    let script = format!(
        r#"trap 'echo "term {id}"; exit 0' TERM; echo "lead {id} $GCSLOCK_TOKEN"; exec 3<&0; read _ <&3 & wait $!"#
    );
    elect(
        emulator,
        url,
        &["--ttl", "10s", "--value", &format!("addr-{id}")],
        id,
        &script,
    )
}

/// `gcslock -v elect OPTIONS --identity ID URL -- sh -c SCRIPT`.
fn elect(emulator: &Emulator, url: &str, options: &[&str], id: &str, script: &str) -> Running {
    let mut args = vec!["-v", "elect"];
    args.extend_from_slice(options);
    args.extend(["--identity", id, url, "--", "sh", "-c", script]);
    Running::start(gcslock(Some(emulator), &args))
}

/// Reads `lead ID TOKEN` and returns the token.
async fn leads(candidate: &mut Running, id: &str) -> u64 {
    let rest = candidate.expect_line(&format!("lead {id}")).await;
    rest.parse()
        .unwrap_or_else(|_| panic!("a token after lead {id}: {rest:?}"))
}

/// SIGTERM, then the exit status (128 + 15).
async fn terminate(candidate: Running) -> (std::process::ExitStatus, String, String) {
    kill(candidate.pid(), Signal::SIGTERM).expect("SIGTERM");
    candidate.finish().await
}

#[tokio::test]
async fn a_leader_whose_command_exits_is_replaced_and_campaigns_again() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("elect-exits");
    let mut a = candidate(&emulator, &url, "a");
    let first = leads(&mut a, "a").await;
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["value"], "addr-a", "{status}");
    // Terms record the boundary that holds their command, as `run` does.
    assert!(
        matches!(status["boundary"].as_str(), Some("cgroup" | "session")),
        "{status}"
    );
    let mut b = candidate(&emulator, &url, "b");
    b.expect_stderr("campaigning as b").await;

    // a's command exits by itself: a resigns at once, and b, which waits, leads.
    let exited = Instant::now();
    a.send_line().await;
    let second = leads(&mut b, "b").await;
    assert!(
        exited.elapsed() < Duration::from_secs(3),
        "handover took {:?}",
        exited.elapsed()
    );
    assert!(second > first, "{second} after {first}");
    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(
        (&status["holder"], &status["value"]),
        (&Value::from("b"), &Value::from("addr-b")),
        "{status}"
    );

    // a stayed a candidate: when b's command exits, a leads again.
    b.send_line().await;
    let third = leads(&mut a, "a").await;
    assert!(third > second, "{third} after {second}");

    for (candidate, id) in [(a, "a"), (b, "b")] {
        let (status, _, stderr) = terminate(candidate).await;
        assert_eq!(status.code(), Some(128 + 15), "{id}: {stderr}");
    }
}

#[tokio::test]
async fn sigterm_forwards_waits_resigns_and_hands_over_within_a_second_or_so() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("elect-sigterm");
    let mut observer = Running::start(gcslock(Some(&emulator), &["observe", "--json", &url]));
    let start: Value = serde_json::from_str(&observer.next_line().await).expect("JSON");
    assert_eq!(start["state"], "none", "{start}");
    assert_eq!(start["value"], Value::Null, "{start}");

    let mut a = candidate(&emulator, &url, "a");
    let token_a = leads(&mut a, "a").await;
    let change: Value = serde_json::from_str(&observer.next_line().await).expect("JSON");
    assert_eq!(
        (&change["state"], &change["identity"], &change["value"]),
        (
            &Value::from("leader"),
            &Value::from("a"),
            &Value::from("addr-a")
        ),
        "{change}"
    );
    assert_eq!(change["token"], token_a, "{change}");
    assert!(
        change["at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{change}"
    );

    let mut b = candidate(&emulator, &url, "b");
    b.expect_stderr("campaigning as b").await;
    let signalled = Instant::now();
    kill(a.pid(), Signal::SIGTERM).expect("SIGTERM");
    a.expect_line("term a").await;
    let token_b = leads(&mut b, "b").await;
    let handover = signalled.elapsed();
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    assert!(token_b > token_a);
    let (status, _, stderr) = a.finish().await;
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");

    // The observer saw b take over, possibly after a moment of no leader.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        assert!(Instant::now() < deadline, "the observer never saw b");
        let change: Value = serde_json::from_str(&observer.next_line().await).expect("JSON");
        match change["state"].as_str() {
            Some("none") => assert_eq!(change["identity"], Value::Null),
            Some("leader") if change["identity"] == "b" => {
                assert_eq!(change["token"], token_b, "{change}");
                break;
            }
            _ => panic!("unexpected change {change}"),
        }
    }
    let (status, _, stderr) = terminate(b).await;
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    let change: Value = serde_json::from_str(&observer.next_line().await).expect("JSON");
    assert_eq!(change["state"], "none", "{change}");
    kill(observer.pid(), Signal::SIGINT).expect("SIGINT");
    let (status, rest, _) = observer.finish().await;
    assert_eq!(status.code(), Some(0));
    assert!(rest.is_empty(), "{rest}");
}

#[tokio::test]
async fn observe_prints_text_lines_and_refuses_nothing_it_reads() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("observe-text");
    let mut observer = Running::start(gcslock(Some(&emulator), &["observe", &url]));
    let line = observer.next_line().await;
    assert!(line.ends_with(": no leader"), "{line}");
    let mut a = candidate(&emulator, &url, "a");
    let token = leads(&mut a, "a").await;
    let line = observer.next_line().await;
    assert!(
        line.ends_with(&format!(": leader a (token {token}), value \"addr-a\"")),
        "{line}"
    );
    terminate(a).await;
    let line = observer.next_line().await;
    assert!(line.ends_with(": no leader"), "{line}");
    kill(observer.pid(), Signal::SIGTERM).expect("SIGTERM");
    let (status, _, _) = observer.finish().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_leader_whose_gcslock_is_killed_loses_its_command_before_the_next_term() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("elect-sigkill");
    let start = |id: &str| {
        let script = format!(r#"echo "lead {id} $GCSLOCK_TOKEN $$"; exec sleep 600"#);
        elect(&emulator, &url, &["--ttl", "2s"], id, &script)
    };
    let mut a = start("a");
    let first = a.expect_line("lead a").await;
    let (token_a, pid_a) = first.split_once(' ').expect("token and pid");
    let pid_a: i32 = pid_a.parse().expect("pid");
    let mut b = start("b");
    b.expect_stderr("campaigning as b").await;
    // gcslock alone dies: its watchdog kills the command; the lease runs out by itself.
    let killed = Instant::now();
    kill(a.pid(), Signal::SIGKILL).expect("SIGKILL");
    let second = b.expect_line("lead b").await;
    let (token_b, _) = second.split_once(' ').expect("token and pid");
    assert!(
        token_b.parse::<u64>().expect("token") > token_a.parse::<u64>().expect("token"),
        "{second} after {first}"
    );
    // Stale at 2 s + 0.2 s after the last refresh, seen within a poll.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    assert!(
        kill(nix::unistd::Pid::from_raw(pid_a), None).is_err(),
        "a's command still runs beside b's"
    );
    let (status, _, stderr) = terminate(b).await;
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    drop(a);
}

#[tokio::test]
async fn a_broken_leadership_stops_the_command_and_the_candidate_campaigns_again() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("elect-broken");
    let script = r#"echo "lead a $GCSLOCK_TOKEN"; exec sleep 600"#;
    let mut a = elect(&emulator, &url, &["--ttl", "2s"], "a", script);
    let first: u64 = a.expect_line("lead a").await.parse().expect("token");
    let broken = harness::output(gcslock(Some(&emulator), &["break", &url])).await;
    assert_eq!(
        broken.status.code(),
        Some(0),
        "{}",
        harness::describe(&broken)
    );
    a.expect_stderr("leadership lost").await;
    // Still a candidate: it leads again once the revoked term is stale.
    let second: u64 = a.expect_line("lead a").await.parse().expect("token");
    assert!(second > first, "{second} after {first}");
    let (status, _, stderr) = terminate(a).await;
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
}
