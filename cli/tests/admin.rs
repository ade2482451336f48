//! The admin commands (`status`, `list`, `break`, `put`) as real processes: retries
//! under injected storage faults, hostile records, `--repair`, and their JSON.
//!
//! They need strict-gcs (`GCSLOCK_STRICT_EMULATOR_HOST`, as in `tests/cli.rs`). The
//! fault test starts its own strict-gcs from the workspace's `target/debug`, so the
//! faults it injects cannot disturb tests running in parallel on the shared one.

mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::{Backend, BackendError, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use harness::{
    code, describe, exits, gcslock, hold, is_gone, output, status_json, text, Emulator, HANG_GUARD,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The object name inside the bucket of a `gs://BUCKET/OBJECT` URL.
fn object_of<'a>(emulator: &Emulator, url: &'a str) -> &'a str {
    url.strip_prefix(&format!("gs://{}/", emulator.bucket))
        .expect("our URL")
}

fn backend(emulator: &Emulator) -> GcsBackend {
    GcsBackend::builder(&emulator.bucket)
        .endpoint(Some(emulator.endpoint.clone()))
        .build()
        .expect("backend")
}

/// Creates `url` with `metadata`, retrying the faults an emulator may inject.
async fn create(emulator: &Emulator, url: &str, metadata: &BTreeMap<String, String>) {
    let backend = backend(emulator);
    let object = object_of(emulator, url);
    for _ in 0..100 {
        match backend
            .write(object, WriteCondition::DoesNotExist, metadata)
            .await
        {
            Ok(_) | Err(BackendError::PreconditionFailed) => return,
            Err(error) if error.is_transient() => continue,
            Err(error) => panic!("creating {url}: {error}"),
        }
    }
    panic!("could not create {url} through the injected faults");
}

fn held_by(holder: &str, token: u64) -> BTreeMap<String, String> {
    LockRecord {
        state: LockState::Held,
        token,
        holder: holder.into(),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        ttl: Duration::from_secs(300).into(),
        refresh_seq: 0,
        completed: None,
    }
    .to_metadata()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

/// A private strict-gcs with probabilistic faults on every object request.
struct FaultyEmulator {
    _child: Child,
    emulator: Emulator,
}

impl FaultyEmulator {
    async fn start(bucket: &str, faults: &[&str]) -> Option<Self> {
        let binary = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug/strict-gcs");
        if !binary.exists() {
            harness::support::loud(&format!(
                "SKIPPED: {} not built (`cargo build -p strict-gcs`)",
                binary.display()
            ));
            assert!(
                harness::support::env("GCSLOCK_REQUIRE_STRICT").as_deref() != Some("1"),
                "strict-gcs is required"
            );
            return None;
        }
        let mut child = Command::new(binary)
            .args(["--port", "0", "--bucket", bucket, "--seed", "7"])
            .args(faults)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("strict-gcs starts");
        let stdout = child.stdout.take().expect("piped");
        let first = tokio::time::timeout(HANG_GUARD, BufReader::new(stdout).lines().next_line())
            .await
            .expect("strict-gcs prints its address")
            .expect("readable")
            .expect("a first line");
        let endpoint = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Some(Self {
            _child: child,
            emulator: Emulator {
                endpoint,
                bucket: bucket.to_owned(),
            },
        })
    }

    async fn faults_injected(&self) -> u64 {
        let stats: Value = reqwest::get(format!("{}/_strict/stats", self.emulator.endpoint))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON");
        stats["faults"]
            .as_object()
            .map(|faults| faults.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn admin_commands_retry_injected_503s_429s_and_resets() {
    if Emulator::strict().is_none() {
        return;
    }
    let Some(faulty) = FaultyEmulator::start(
        "gcslock-test",
        &[
            "--fail-503",
            "0.3",
            "--fail-429",
            "0.1",
            "--reset-before",
            "0.05",
        ],
    )
    .await
    else {
        return;
    };
    let emulator = &faulty.emulator;
    let url = emulator.url("faulty");
    create(emulator, &url, &held_by("holder", 4)).await;

    // Several rounds, so that a single lucky first attempt cannot pass the test.
    for _ in 0..5 {
        let status = exits(Some(emulator), &["status", "--json", &url], 0).await;
        assert_eq!(json(&status)["state"], "held", "{}", describe(&status));

        let prefix = url.rsplit_once('/').map(|(prefix, _)| prefix).expect("/");
        let list = exits(Some(emulator), &["list", "--json", prefix], 0).await;
        assert_eq!(text(&list.stdout).lines().count(), 1, "{}", describe(&list));
    }
    let broken = exits(Some(emulator), &["break", "--json", &url], 0).await;
    let outcome = json(&broken);
    assert_eq!(outcome["outcome"], "revoked", "{outcome}");
    assert_eq!(outcome["token"], 4, "{outcome}");
    assert_eq!(outcome["previous_holder"], "holder", "{outcome}");

    let injected = faulty.faults_injected().await;
    assert!(
        injected > 0,
        "no fault was injected: the test proves nothing"
    );
    eprintln!("measured: the admin commands met {injected} injected faults and succeeded");
}

#[tokio::test]
async fn storage_timeout_bounds_the_retries() {
    if Emulator::strict().is_none() {
        return;
    }
    let Some(faulty) = FaultyEmulator::start("gcslock-test", &["--fail-503", "1"]).await else {
        return;
    };
    let url = faulty.emulator.url("always-503");
    let mut command = gcslock(Some(&faulty.emulator), &["status", &url]);
    command.env("GCSLOCK_STORAGE_TIMEOUT", "500ms");
    let out = output(command).await;
    assert_eq!(code(&out), 69, "{}", describe(&out));
    assert!(text(&out.stderr).contains("503"), "{}", describe(&out));
}

#[tokio::test]
async fn text_output_never_echoes_control_characters_from_storage() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let raw = |c: char| c.is_control() || matches!(c, '\u{202E}' | '\u{200B}');
    let one_line = |out: &std::process::Output| {
        assert_eq!(code(out), 0, "{}", describe(out));
        let shown = text(&out.stdout);
        let line = shown.strip_suffix('\n').expect("one line").to_owned();
        assert!(!line.chars().any(raw), "raw control characters: {line:?}");
        line
    };

    // A valid record whose holder carries a bidi override and a zero-width space:
    // accepted, and escaped wherever text shows it.
    let tricky = "evil\u{202E}reversed\u{200B}zw";
    let url = emulator.url("tricky");
    create(&emulator, &url, &held_by(tricky, 3)).await;
    let status = output(gcslock(Some(&emulator), &["status", &url])).await;
    // The lock's full name as the prefix: only it is listed.
    let list = output(gcslock(Some(&emulator), &["list", &url])).await;
    for out in [&status, &list] {
        let line = one_line(out);
        assert!(
            line.contains("evil\\u{202e}reversed\\u{200b}zw"),
            "{line:?}"
        );
    }
    // JSON carries the exact holder (serde_json escapes it).
    let json = status_json(Some(&emulator), &url).await;
    assert_eq!(json["holder"], tricky, "{json}");
    let line = one_line(&output(gcslock(Some(&emulator), &["break", &url])).await);
    assert!(line.contains("revoked"), "{line:?}");

    // Control characters make the record invalid; the reason, which quotes the
    // value, is escaped too.
    let hostile = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}\nline two\0nul";
    let url = emulator.url("hostile");
    create(&emulator, &url, &held_by(hostile, 3)).await;
    for args in [["status", url.as_str()], ["list", url.as_str()]] {
        let line = one_line(&output(gcslock(Some(&emulator), &args)).await);
        assert!(line.contains("not a gcslock lock"), "{line:?}");
        assert!(line.contains("gcslock-holder"), "{line:?}");
    }
    assert_eq!(
        status_json(Some(&emulator), &url).await["state"],
        "not-a-lock"
    );
}

#[tokio::test]
async fn an_invalid_record_needs_repair_which_keeps_tokens_growing() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("invalid");
    let invalid: BTreeMap<String, String> = [
        ("gcslock-format", "1"),
        ("gcslock-state", "held"),
        ("gcslock-token", "41"),
        ("gcslock-ttl-ms", "-5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    create(&emulator, &url, &invalid).await;

    let refused = exits(Some(&emulator), &["break", &url], 65).await;
    assert!(
        text(&refused.stderr).contains("--repair"),
        "{}",
        describe(&refused)
    );
    assert_eq!(
        status_json(Some(&emulator), &url).await["state"],
        "not-a-lock"
    );

    let repaired = output(gcslock(
        Some(&emulator),
        &["break", "--repair", "--json", &url],
    ))
    .await;
    assert_eq!(code(&repaired), 0, "{}", describe(&repaired));
    let outcome = json(&repaired);
    assert_eq!(outcome["outcome"], "repaired", "{outcome}");
    assert_eq!(outcome["token"], 42, "{outcome}");
    assert!(outcome["reason"].is_string(), "{outcome}");
    assert!(outcome["generation"].is_i64(), "{outcome}");

    let status = status_json(Some(&emulator), &url).await;
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["token"], 42, "{status}");
    let run = output(gcslock(
        Some(&emulator),
        &["run", &url, "--", "sh", "-c", "echo $GCSLOCK_TOKEN"],
    ))
    .await;
    assert_eq!(code(&run), 0, "{}", describe(&run));
    assert_eq!(text(&run.stdout).trim(), "43");
}

#[tokio::test]
async fn break_now_and_already_free_in_json() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("break-json");
    let free = exits(Some(&emulator), &["break", "--json", &url], 0).await;
    assert_eq!(
        json(&free),
        serde_json::json!({"url": url, "outcome": "already-free"})
    );

    create(&emulator, &url, &held_by("holder", 9)).await;
    let broken = output(gcslock(
        Some(&emulator),
        &["break", "--now", "--json", &url],
    ))
    .await;
    assert_eq!(code(&broken), 0, "{}", describe(&broken));
    let outcome = json(&broken);
    assert_eq!(outcome["outcome"], "broken", "{outcome}");
    assert_eq!(outcome["token"], 9, "{outcome}");
    assert_eq!(outcome["previous_holder"], "holder", "{outcome}");
    assert!(outcome.get("stale_at").is_none(), "{outcome}");
    assert_eq!(
        status_json(Some(&emulator), &url).await["state"],
        "released"
    );
}

#[tokio::test]
async fn put_json_describes_the_write() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("put-json");
    let first = output(gcslock(
        Some(&emulator),
        &["put", "--json", "--token", "5", &url],
    ))
    .await;
    assert_eq!(code(&first), 0, "{}", describe(&first));
    let written = json(&first);
    assert_eq!(written["outcome"], "written", "{written}");
    assert_eq!(written["token"], 5, "{written}");
    assert_eq!(written["replaced"], "nothing", "{written}");
    assert!(written.get("previous_token").is_none(), "{written}");
    assert!(written["generation"].is_i64(), "{written}");
    assert!(written["updated"].is_string(), "{written}");

    let second = output(gcslock(
        Some(&emulator),
        &["put", "--json", "--token", "6", &url],
    ))
    .await;
    assert_eq!(code(&second), 0, "{}", describe(&second));
    let written = json(&second);
    assert_eq!(written["replaced"], "fenced", "{written}");
    assert_eq!(written["previous_token"], 5, "{written}");

    let quiet = exits(Some(&emulator), &["put", "--token", "7", &url], 0).await;
    assert!(quiet.stdout.is_empty(), "{}", describe(&quiet));
}

/// The busy line and the "already done" line quote storage too: escaped, and a
/// revoked lock reads "revoked by NAME", never "held by revoked by NAME".
#[tokio::test]
async fn run_messages_escape_holders_and_done_by_names_from_storage() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let hidden = |c: char| c.is_control() || matches!(c, '\u{202E}' | '\u{200B}');

    let url = emulator.url("busy-tricky");
    create(&emulator, &url, &held_by("vm\u{202E}1\u{200B}x", 5)).await;
    let busy = exits(Some(&emulator), &["run", &url, "--", "true"], 75).await;
    let line = text(&busy.stderr);
    assert!(
        line.contains("is busy: held by vm\\u{202e}1\\u{200b}x (token 5)"),
        "{line:?}"
    );
    assert!(!line.trim_end().chars().any(hidden), "{line:?}");

    let url = emulator.url("busy-revoked");
    create(&emulator, &url, &held_by("revoked by ops\u{202E}", 6)).await;
    let busy = exits(Some(&emulator), &["run", &url, "--", "true"], 75).await;
    let line = text(&busy.stderr);
    assert!(
        line.contains("is busy: revoked by ops\\u{202e} (token 6)"),
        "{line:?}"
    );
    assert!(!line.contains("held by revoked by"), "{line:?}");

    // A once-per slot completed by a hostile name: the done line escapes it and
    // names the period as written.
    let week = Duration::from_secs(7 * 86_400);
    let slot =
        gcslock::once_per::Slot::containing(std::time::SystemTime::now(), week).expect("slot");
    let url = emulator.url("done-tricky");
    let mut record = LockRecord {
        state: LockState::Released,
        token: 9,
        holder: "host:1".into(),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        ttl: Duration::from_secs(300).into(),
        refresh_seq: 0,
        completed: None,
    };
    record.completed = Some(gcslock::testing::RecordedSlot {
        slot,
        by: "cron\u{202E}host\u{200B}".into(),
        at: Some(chrono::Utc::now()),
    });
    create(&emulator, &url, &record.to_metadata()).await;
    let done = exits(
        Some(&emulator),
        &[
            "run",
            "--once-per",
            "7d",
            &url,
            "--",
            "echo",
            "must not run",
        ],
        0,
    )
    .await;
    assert!(done.stdout.is_empty(), "{}", describe(&done));
    let line = text(&done.stderr);
    assert!(line.contains("by cron\\u{202e}host\\u{200b}"), "{line:?}");
    assert!(line.contains("the 7d slot"), "{line:?}");
    assert!(!line.trim_end().chars().any(hidden), "{line:?}");
}

/// `break` (revoke) of a lock whose TTL is forever cannot work: a usage matter
/// (64, use --now), not the 75 that means "another token, or changed meanwhile".
#[tokio::test]
async fn breaking_a_forever_lock_without_now_is_a_usage_error() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("forever-break");
    let mut record = held_by("host:1", 4);
    record.insert("gcslock-ttl-ms".into(), "forever".into());
    create(&emulator, &url, &record).await;
    let refused = exits(Some(&emulator), &["break", &url], 64).await;
    assert!(
        text(&refused.stderr).contains("--now"),
        "{}",
        describe(&refused)
    );
    exits(Some(&emulator), &["break", "--now", &url], 0).await;
}

// ---------------------------------------------------------------- a blocked stderr

/// A pipe for gcslock's (and its command's) stderr, filled to the brim first: like a
/// log collector that stopped reading. Returns the read end and the write end.
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Close-on-exec: only gcslock gets the write end, and nobody else the read end.
    let (read, write) = std::io::pipe().expect("pipe");
    // Filled through a second, non-blocking opening of the same pipe, so that the
    // end gcslock inherits stays blocking, as a stalled collector's pipe is.
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(0o4000) // O_NONBLOCK
        .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
        .expect("reopen the pipe");
    let chunk = [b'x'; 4096];
    while filler.write(&chunk).is_ok() {}
    (read, write)
}

/// How a holder loses its lease in [`a_blocked_stderr_never_delays_the_kill_of_a_cut_off_command`].
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// `break --now`: superseded, SIGKILL at once.
    Break,
    /// Every request fails: SIGTERM when the lease runs low, SIGKILL at its deadline.
    Outage,
    /// gcslock itself is SIGKILLed: its watchdog kills the command.
    Killed,
}

/// A holder whose stderr nobody drains and whose command ignores SIGTERM must still
/// SIGKILL that command once its lease is cut: no log write may delay it.
#[tokio::test]
async fn a_blocked_stderr_never_delays_the_kill_of_a_cut_off_command() {
    if Emulator::strict().is_none() {
        return;
    }
    // A private strict-gcs: the outage must not disturb other tests.
    let Some(faulty) = FaultyEmulator::start("gcslock-test", &[]).await else {
        return;
    };
    let emulator = &faulty.emulator;
    let faults = format!("{}/_strict/faults", emulator.endpoint);
    let control = reqwest::Client::new();
    for (cut, flags) in [
        (Cut::Break, &["-q"][..]),
        (Cut::Outage, &["-q"]),
        (Cut::Break, &["-v"]),
        (Cut::Outage, &["-v"]),
        (Cut::Killed, &["-q"]),
    ] {
        let url = emulator.url("blocked-stderr");
        let (read, write) = full_pipe();
        let mut args = flags.to_vec();
        args.extend_from_slice(&["run", "--ttl", "3s", "--refresh-interval", "250ms"]);
        args.extend_from_slice(&[
            &url,
            "--",
            "sh",
            "-c",
            // A grandchild too: gcslock's own death is covered by its watchdog only.
            "trap '' TERM; sleep 300 & echo ready $$ $!; wait",
        ]);
        let mut command = gcslock(Some(emulator), &args);
        command.stderr(std::process::Stdio::from(write));
        let mut holder = command.spawn().expect("start gcslock");
        let stdout = holder.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(HANG_GUARD, lines.next_line())
            .await
            .expect("the command started")
            .expect("stdout")
            .expect("a ready line");
        let pids: Vec<i32> = ready
            .strip_prefix("ready ")
            .map(|pids| pids.split(' ').filter_map(|pid| pid.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(pids.len(), 2, "{ready}");

        match cut {
            Cut::Break => {
                exits(Some(emulator), &["break", "--now", &url], 0).await;
            }
            Cut::Outage => {
                let set = control
                    .post(&faults)
                    .json(&serde_json::json!({"fail_503": 1.0}))
                    .send()
                    .await
                    .expect("set faults");
                assert!(set.status().is_success(), "{set:?}");
            }
            Cut::Killed => {
                let gcslock = holder.id().and_then(|pid| i32::try_from(pid).ok());
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(gcslock.expect("running")),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .expect("SIGKILL gcslock");
            }
        }
        let cut_at = std::time::Instant::now();
        // Killed: the watchdog kills at once. Broken: SIGKILL at the next refresh
        // (250ms). Outage: SIGTERM with the
        // kill grace left, SIGKILL at the lease deadline (under 3s). Blocked on
        // stderr, the old code never got to SIGKILL.
        while !pids.iter().all(|pid| is_gone(*pid)) {
            assert!(
                cut_at.elapsed() < Duration::from_secs(10),
                "{cut:?} {flags:?}: the command still runs {:?} after its lease was cut, \
                 with gcslock's stderr blocked",
                cut_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "measured: {cut:?} {flags:?}: command killed {:?} after the cut, stderr blocked",
            cut_at.elapsed()
        );
        let reset = control.delete(&faults).send().await.expect("reset faults");
        assert!(reset.status().is_success(), "{reset:?}");
        // gcslock exits even though stderr is still blocked (bounded flush).
        let status = tokio::time::timeout(Duration::from_secs(15), holder.wait())
            .await
            .expect("gcslock exits with stderr still blocked")
            .expect("wait");
        let expected = match cut {
            Cut::Killed => None,
            Cut::Break | Cut::Outage => Some(76),
        };
        assert_eq!(status.code(), expected, "{cut:?} {flags:?}");
        drop(read);
    }
}

/// A revoke that lands between two refreshes is found only by the release. The
/// command ran (at least partly) without the lock, so the run must not exit 0.
#[tokio::test]
async fn a_revoke_found_only_by_the_release_exits_76() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("revoked-before-release");
    // TTL 5m: the next refresh is 37.5s away, long after this test ends.
    let (mut holder, _pid, _token) = hold(Some(&emulator), &url, &["--ttl", "5m"]).await;
    exits(Some(&emulator), &["break", &url], 0).await;
    holder.send_line().await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("lost before the command's end"), "{stderr}");
}
