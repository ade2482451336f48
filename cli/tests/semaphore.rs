//! End-to-end tests of `gcslock run --holders N` (a semaphore, PROTOCOL.md §13) and
//! of `status`, `list` and `break` on its places, with real processes on strict-gcs
//! (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped, loudly, when it is unset).

mod harness;

use harness::{code, describe, exits, gcslock, output, start_ready, text, Emulator, Running};
use serde_json::Value;

/// A holder of one of `holders` places: prints `ready PLACE TOKEN`, then waits for
/// a line on stdin.
async fn holder(
    emulator: &Emulator,
    url: &str,
    holders: &str,
    identity: &str,
) -> (Running, u32, u64) {
    let args = [
        "run",
        "--holders",
        holders,
        "--identity",
        identity,
        // Refreshes every second: a broken holder learns of it within seconds.
        "--ttl",
        "8s",
        url,
        "--",
        "sh",
        "-c",
        r#"echo "ready $GCSLOCK_PLACE $GCSLOCK_TOKEN"; read _ || true"#,
    ];
    start_ready(gcslock(Some(emulator), &args)).await
}

async fn status_places(emulator: &Emulator, url: &str, holders: &str) -> Value {
    let out = exits(
        Some(emulator),
        &["status", "--json", "--holders", holders, url],
        0,
    )
    .await;
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

#[tokio::test]
async fn n_plus_one_contenders_one_is_busy_and_places_are_shown_and_broken() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("holders");
    let mut held = Vec::new();
    for name in ["a", "b", "c"] {
        held.push(holder(&emulator, &url, "3", name).await);
    }
    let mut places: Vec<u32> = held.iter().map(|(_, place, _)| *place).collect();
    places.sort_unstable();
    assert_eq!(places, vec![0, 1, 2], "each holder on a place of its own");
    assert!(held.iter().all(|(_, _, token)| *token == 1));

    // The fourth is busy: exit 75, its command never runs.
    let busy = output(gcslock(
        Some(&emulator),
        &["run", "--holders", "3", &url, "--", "sh", "-c", "echo ran"],
    ))
    .await;
    assert_eq!(code(&busy), 75, "{}", describe(&busy));
    assert!(!text(&busy.stdout).contains("ran"));
    assert!(
        text(&busy.stderr).contains("every other of the 3 places"),
        "{}",
        describe(&busy)
    );

    // status shows every place, who holds it and its token.
    let status = status_places(&emulator, &url, "3").await;
    assert_eq!(
        (status["holders"].as_u64(), status["held"].as_u64()),
        (Some(3), Some(3))
    );
    let mut holders: Vec<&str> = status["places"]
        .as_array()
        .expect("places")
        .iter()
        .map(|place| {
            assert_eq!(place["state"], "held");
            assert_eq!(place["token"], 1);
            assert_eq!(place["recorded_holders"], 3);
            place["holder"].as_str().expect("holder")
        })
        .collect();
    holders.sort_unstable();
    assert_eq!(holders, vec!["a", "b", "c"]);
    let lines = text(
        &exits(Some(&emulator), &["status", "--holders", "3", &url], 0)
            .await
            .stdout,
    );
    assert!(
        lines.starts_with(&format!("{url}: at most 3 holders; 3 place(s) held")),
        "{lines}"
    );
    assert_eq!(lines.lines().count(), 4, "{lines}");

    // list names the semaphore of every place beyond place 0.
    let listed = text(&exits(Some(&emulator), &["list", &url], 0).await.stdout);
    assert_eq!(listed.matches("; place ").count(), 2, "{listed}");

    // break one holder by identity: only its place, and its command is stopped.
    let (b_index, _) = held
        .iter()
        .enumerate()
        .find(|(_, (_, place, _))| {
            status["places"]
                .as_array()
                .expect("places")
                .iter()
                .any(|p| p["place"] == *place && p["holder"] == "b")
        })
        .expect("b holds a place");
    let broken = exits(
        Some(&emulator),
        &["break", "--now", "--holders", "3", "--holder", "b", &url],
        0,
    )
    .await;
    assert!(
        text(&broken.stdout).contains("broken (it was held by b, token 1)"),
        "{}",
        describe(&broken)
    );
    let (mut b, _, _) = held.remove(b_index);
    b.expect_stderr("lost while the command ran").await;
    let (status_b, _, _) = b.finish().await;
    assert_eq!(
        status_b.code(),
        Some(76),
        "the broken holder lost its lease"
    );
    let after = status_places(&emulator, &url, "3").await;
    assert_eq!(after["held"], 2);
    // Nothing matches a token nobody holds: exit 75, nothing broken.
    exits(
        Some(&emulator),
        &["break", "--holders", "3", "--token", "99", &url],
        75,
    )
    .await;

    for (running, _, _) in held {
        let (status, _, stderr) = running.finish().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
    let released = status_places(&emulator, &url, "3").await;
    assert_eq!(released["held"], 0);
}

#[tokio::test]
async fn a_contender_with_another_limit_exits_79_without_running() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("holders-mismatch");
    // Both places held, so place 0 (the URL itself, all a plain lock reads) too.
    let first = holder(&emulator, &url, "2", "two").await.0;
    let second = holder(&emulator, &url, "2", "two").await.0;
    for other in ["3", "1"] {
        let out = output(gcslock(
            Some(&emulator),
            &[
                "run",
                "--holders",
                other,
                &url,
                "--",
                "sh",
                "-c",
                "echo ran",
            ],
        ))
        .await;
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 79, "{}", describe(&out));
        assert!(!text(&out.stdout).contains("ran"));
        assert!(
            stderr.contains(&format!("at most {other} holder(s)")) && stderr.contains("allowing 2"),
            "{stderr}"
        );
    }
    for running in [first, second] {
        let (status, _, stderr) = running.finish().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

#[tokio::test]
async fn once_per_with_more_than_one_holder_is_refused() {
    let out = output(gcslock(
        None,
        &[
            "run",
            "--holders",
            "2",
            "--once-per",
            "1h",
            "gs://bucket/o",
            "--",
            "sh",
            "-c",
            "echo ran",
        ],
    ))
    .await;
    assert_eq!(code(&out), 64, "{}", describe(&out));
    assert!(text(&out.stderr).contains("once per period is a one-holder promise"));
    assert!(!text(&out.stdout).contains("ran"));
    // Out of range: a usage error too.
    for bad in ["0", "1001", "x"] {
        let out = output(gcslock(
            None,
            &["run", "--holders", bad, "gs://bucket/o", "--", "true"],
        ))
        .await;
        assert_eq!(code(&out), 64, "--holders {bad}: {}", describe(&out));
    }
}
