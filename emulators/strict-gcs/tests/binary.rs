//! The `strict-gcs` binary: flags, the first stdout line, shutdown.

mod common;

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_strict-gcs");

/// Starts the binary and returns it with its URL, read from its first stdout line.
async fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the first line comes within a minute")
        .expect("stdout is readable")
        .expect("the binary prints a first line");
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "a real port was picked: {url}");
    (child, url)
}

#[tokio::test]
async fn flags_configure_the_server() {
    let (mut child, url) = spawn(&[
        "--port",
        "0",
        "--bucket",
        "first-bucket",
        "--bucket",
        "second-bucket",
        "--object-rate-limit",
        "1/1h",
        "--fail-503",
        "0",
        "--reset-after",
        "0.25",
        "--latency-ms",
        "0",
        "--fault-scope",
        "mutations",
        "--seed",
        "7",
        "--skew-ms",
        "-5000",
    ])
    .await;
    let client = common::client();
    for bucket in ["first-bucket", "second-bucket"] {
        let response = client
            .get(format!("{url}/storage/v1/b/{bucket}"))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::OK, "{bucket} was created");
    }
    let faults = common::get_json(&client, format!("{url}/_strict/faults")).await;
    assert_eq!(faults["object_rate_limit"], "1/3600s");
    assert_eq!(faults["reset_after"], 0.25);
    assert_eq!(faults["scope"], "mutations");
    assert_eq!(faults["seed"], 7);
    assert_eq!(faults["skew_ms"], -5000);
    child.start_kill().expect("the child can be killed");
    let _ = child.wait().await;
}

#[tokio::test]
async fn bad_flags_exit_with_an_error() {
    for args in [
        &["--fail-503", "2"][..],
        &["--object-rate-limit", "fast"][..],
        &["--bucket", "UPPER"][..],
    ] {
        let status = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("the binary runs");
        assert!(!status.success(), "{args:?} must be refused");
    }
}
