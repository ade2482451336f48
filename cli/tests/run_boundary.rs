//! The job never escapes its lease: real `gcslock run` processes against strict-gcs
//! (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped loudly when unset, a failure with
//! `GCSLOCK_REQUIRE_STRICT=1`), under each containment boundary (`GCSLOCK_BOUNDARY`).
//!
//! * processes that leave the command's process group (`timeout`) or session
//!   (`setsid`) are stopped with the boundary that holds them;
//! * a process whose main thread exited while another thread works is alive;
//! * gcslock SIGKILLed: the watchdog kills everything in the cgroup and removes it;
//! * a run ended by a forwarded signal is not a completed `--once-per` run;
//! * the options of one run do not leak into the command's environment;
//! * a background gcslock writing to a terminal with `stty tostop` does not spin.
//!
//! Where the machine has a writable cgroup v2 and the tests run as root (CI), the
//! default boundary must be the cgroup.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{code, describe, gcslock, output, status_json, text, Emulator, Running};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A boundary a test runs under: the default, or one forced by `GCSLOCK_BOUNDARY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Boundary {
    Default,
    Session,
    Group,
}

const ALL: [Boundary; 3] = [Boundary::Default, Boundary::Session, Boundary::Group];

impl Boundary {
    fn apply(self, command: &mut tokio::process::Command) {
        match self {
            Self::Default => None,
            Self::Session => Some("session"),
            Self::Group => Some("group"),
        }
        .map(|value| command.env("GCSLOCK_BOUNDARY", value));
    }
}

/// What gcslock said (at -v) it confines the command to: the cgroup's directory,
/// or `None` for a session or process group.
fn cgroup_in_force(stderr: &str, boundary: Boundary) -> Option<PathBuf> {
    let cgroup = stderr
        .split("the command runs in cgroup ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(PathBuf::from);
    if boundary == Boundary::Default && cgroup.is_none() {
        // /proc/self belongs to our effective user.
        let root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc/self"),
        ) == 0;
        assert!(!root, "running as root, yet no cgroup boundary: {stderr}");
        eprintln!("no writable cgroup v2 here: the default boundary is the session");
    }
    if boundary != Boundary::Default {
        assert!(cgroup.is_none(), "{boundary:?} forced, yet: {stderr}");
    }
    cgroup
}

/// Whether any thread of `pid` still runs (zombies and dead tasks do not).
fn runs(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let (_, fields) = stat.rsplit_once(") ")?;
                fields.chars().next()
            })
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

fn assert_removed(cgroup: Option<&Path>) {
    if let Some(cgroup) = cgroup {
        assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    }
}

/// Kills what a weaker boundary let escape, so that the test leaves nothing behind.
fn reap_escaped(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The job starts a worker under `timeout` (which moves itself and the worker to a
/// process group of their own, as `set -m` or Python's `process_group=0` do) and a
/// daemon in a session of its own (`setsid`), then prints `ready WORKER DAEMON`
/// and waits. Their output goes to /dev/null, so only the job holds stdout.
const ESCAPING_JOB: &str = r#"
d=$(mktemp -d)
timeout 600 sh -c 'echo $$ > "$0/w.tmp" && mv "$0/w.tmp" "$0/w" && exec sleep 600' "$d" </dev/null >/dev/null 2>&1 &
setsid sh -c 'echo $$ > "$0/d.tmp" && mv "$0/d.tmp" "$0/d" && exec sleep 600' "$d" </dev/null >/dev/null 2>&1 &
while [ ! -e "$d/w" ] || [ ! -e "$d/d" ]; do sleep 0.01; done
echo "ready $(cat "$d/w") $(cat "$d/d")"
rm -r "$d"
wait
"#;

/// `gcslock -v run` of ESCAPING_JOB on `url`, stopped by --max-runtime after 3 s.
fn escaping_run(url: &str) -> [&str; 11] {
    [
        "-v",
        "run",
        "--max-runtime",
        "3s",
        "--kill-grace",
        "500ms",
        url,
        "--",
        "sh",
        "-c",
        ESCAPING_JOB,
    ]
}

/// Runs `command` (a gcslock running ESCAPING_JOB) to its end; returns its status,
/// its stderr, and whether the worker and the daemon still ran then (both are
/// killed afterwards, so nothing is left behind).
async fn escaping_job(
    command: tokio::process::Command,
) -> (std::process::ExitStatus, String, bool, bool) {
    let mut holder = Running::start(command);
    let ready = holder.expect_line("ready").await;
    let pids: Vec<i32> = ready
        .split_whitespace()
        .map(|pid| pid.parse().expect("pid"))
        .collect();
    let [worker, daemon] = pids[..] else {
        panic!("two pids: {ready:?}");
    };
    let (status, _, stderr) = holder.finish().await;
    let (worker_runs, daemon_runs) = (runs(worker), runs(daemon));
    reap_escaped(&pids);
    (status, stderr, worker_runs, daemon_runs)
}

/// Before the cgroup and session boundaries, gcslock exited 124 at --max-runtime and
/// released the lock while the worker under `timeout` ran on.
#[tokio::test]
async fn processes_that_leave_the_process_group_are_stopped_with_their_boundary() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    for boundary in ALL {
        let url = emulator.url("escape");
        let args = escaping_run(&url);
        let mut command = gcslock(Some(&emulator), &args);
        boundary.apply(&mut command);
        let (status, stderr, worker_runs, daemon_runs) = escaping_job(command).await;
        assert_eq!(status.code(), Some(124), "{boundary:?}: {stderr}");
        if boundary != Boundary::Group {
            assert!(
                !worker_runs,
                "{boundary:?}: the worker under timeout ran on"
            );
        }
        let cgroup = cgroup_in_force(&stderr, boundary);
        match (boundary, &cgroup) {
            (Boundary::Default, Some(_)) => {
                assert!(
                    !worker_runs,
                    "{boundary:?}: the worker under timeout ran on"
                );
                assert!(!daemon_runs, "{boundary:?}: the setsid daemon ran on");
            }
            (Boundary::Default | Boundary::Session, _) => {
                assert!(
                    !worker_runs,
                    "{boundary:?}: the worker under timeout ran on"
                );
                // Documented: a daemon leaves the session.
                assert!(daemon_runs, "{boundary:?}: the daemon should have escaped");
            }
            (Boundary::Group, _) => {
                // Documented: both leave the process group; the test sees it.
                assert!(worker_runs && daemon_runs, "{boundary:?}: {stderr}");
            }
        }
        assert_removed(cgroup.as_deref());
    }
}

/// Where gcslock's cgroup is not writable to it, the default boundary falls back to
/// the session by itself, says why at -v, and still stops the worker that left the
/// process group (the daemon in a session of its own escapes, as documented). Run as
/// root (CI), the test drops to the user `nobody` with `setpriv`, who cannot write
/// `cgroup.procs` of the root's cgroup; elsewhere the default test above already
/// runs without a cgroup.
#[tokio::test]
async fn without_a_writable_cgroup_the_default_boundary_is_the_session() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"))
            == 0;
    if !root {
        eprintln!("SKIPPED: not root, so the default test above is the fallback's");
        return;
    }
    // A copy that `nobody` may run, whatever the permissions of the build directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("gcslock");
    std::fs::copy(harness::BIN, &bin).expect("copy gcslock");
    for path in [dir.path(), bin.as_path()] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let bin = bin.to_str().expect("UTF-8 path");
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin,
    ];
    let url = emulator.url("fallback");
    let args = escaping_run(&url);
    let mut command = harness::gcslock_via(&setpriv, Some(&emulator), &args);
    command.current_dir("/");
    let (status, stderr, worker_runs, daemon_runs) = escaping_job(command).await;
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("the command runs in its own session ")
            && stderr.contains("(boundary session: no cgroup, as cannot move processes out of "),
        "{stderr}"
    );
    assert!(!worker_runs, "the worker under timeout ran on: {stderr}");
    assert!(
        daemon_runs,
        "the setsid daemon should have escaped the session"
    );
}

/// A leftover process whose main thread called `pthread_exit` while another thread
/// works on (and SIGTERM is ignored); the command prints `ready PID` once the
/// leftover's main thread is gone, and exits 0.
const THREADED_LEFTOVER: &str = r#"
import ctypes, os, signal, threading, time
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    def work():
        while True:
            time.sleep(0.01)
    threading.Thread(target=work).start()
    ctypes.CDLL(None).pthread_exit(None)
while open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] != "Z":
    time.sleep(0.01)
print("ready", pid, flush=True)
"#;

/// Before, the leftover's zombie-looking main thread made it count as dead: gcslock
/// exited 0 and released the lock while its other thread still worked.
#[tokio::test]
async fn a_process_whose_main_thread_exited_is_alive_while_a_thread_works() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    for boundary in ALL {
        let url = emulator.url("threads");
        let args = [
            "-v",
            "run",
            "--kill-grace",
            "500ms",
            &url,
            "--",
            "python3",
            "-c",
            THREADED_LEFTOVER,
        ];
        let mut command = gcslock(Some(&emulator), &args);
        boundary.apply(&mut command);
        let mut holder = Running::start(command);
        let leftover: i32 = holder.expect_line("ready").await.parse().expect("pid");
        assert!(runs(leftover), "the leftover's thread should run");
        let (status, _, stderr) = holder.finish().await;
        let still_runs = runs(leftover);
        reap_escaped(&[leftover]);
        assert!(
            !still_runs,
            "{boundary:?}: gcslock exited while the leftover's thread ran: {stderr}"
        );
        assert_eq!(status.code(), Some(0), "{boundary:?}: {stderr}");
        assert!(stderr.contains("still running"), "{boundary:?}: {stderr}");
        assert_removed(cgroup_in_force(&stderr, boundary).as_deref());
    }
}

/// gcslock SIGKILLed alone: the forked watchdog kills everything in the command's
/// cgroup, the setsid daemon included, and removes the cgroup.
#[tokio::test]
async fn killing_gcslock_kills_everything_in_the_cgroup_and_removes_it() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("watchdog");
    let args = ["-v", "run", &url, "--", "sh", "-c", ESCAPING_JOB];
    let mut holder = Running::start(gcslock(Some(&emulator), &args));
    let ready = holder.expect_line("ready").await;
    let pids: Vec<i32> = ready
        .split_whitespace()
        .map(|pid| pid.parse().expect("pid"))
        .collect();
    kill(holder.pid(), Signal::SIGKILL).expect("killing gcslock");
    // The job holds stdout: its end means the job is dead.
    let rest = holder.stdout_to_end().await;
    assert!(rest.is_empty(), "{rest:?}");
    let (_, _, stderr) = holder.finish().await;
    let Some(cgroup) = cgroup_in_force(&stderr, Boundary::Default) else {
        reap_escaped(&pids);
        return;
    };
    // The watchdog removes the cgroup once it is empty: wait for that event.
    let removed = async {
        while cgroup.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let gone = tokio::time::timeout(harness::HANG_GUARD, removed).await;
    let escaped: Vec<i32> = pids.iter().copied().filter(|&pid| runs(pid)).collect();
    reap_escaped(&pids);
    assert!(gone.is_ok(), "{} was left behind", cgroup.display());
    assert!(escaped.is_empty(), "ran on after gcslock died: {escaped:?}");
    assert!(
        stderr.contains("gcslock ended without stopping its command"),
        "{stderr}"
    );
}

/// Before, the job's exit 0 after gcslock forwarded SIGTERM counted as success: the
/// --once-per period was recorded as done and no one ran it again.
#[tokio::test]
async fn a_run_ended_by_a_forwarded_signal_is_not_done() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("signalled-once");
    let job = r#"trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"#;
    let args = ["run", "--once-per", "1h", &url, "--", "sh", "-c", job];
    let mut first = Running::start(gcslock(Some(&emulator), &args));
    first.expect_line("ready").await;
    kill(first.pid(), Signal::SIGTERM).expect("signalling gcslock");
    let (status, _, stderr) = first.finish().await;
    assert_eq!(status.code(), Some(143), "{stderr}");

    let again = ["run", "--once-per", "1h", &url, "--", "echo", "ran again"];
    let out = output(gcslock(Some(&emulator), &again)).await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(text(&out.stdout), "ran again\n", "{}", describe(&out));
}

/// Before, `GCSLOCK_ONCE_PER` (and every other option variable) reached the job, so a
/// nested `gcslock run` of another lock became once-per-hour too.
#[tokio::test]
async fn the_options_of_one_run_stay_out_of_the_commands_environment() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    let url = emulator.url("environment");
    let mut command = gcslock(Some(&emulator), &["run", &url, "--", "env"]);
    command
        .env("GCSLOCK_ONCE_PER", "1h")
        .env("GCSLOCK_KILL_GRACE", "1s")
        .env("GCSLOCK_BOUNDARY", "session")
        .env("GCSLOCK_STORAGE_TIMEOUT", "7s")
        .env("GCSLOCK_LOG_FORMAT", "text");
    let out = output(command).await;
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let environment = text(&out.stdout);
    for removed in [
        "GCSLOCK_ONCE_PER=",
        "GCSLOCK_KILL_GRACE=",
        "GCSLOCK_BOUNDARY=",
    ] {
        assert!(
            !environment.lines().any(|line| line.starts_with(removed)),
            "{removed} leaked: {environment}"
        );
    }
    for kept in [
        "GCSLOCK_STORAGE_TIMEOUT=7s",
        "GCSLOCK_LOG_FORMAT=text",
        "GCSLOCK_TOKEN=",
        &format!("GCSLOCK_URL={url}"),
    ] {
        assert!(
            environment.lines().any(|line| line.starts_with(kept)),
            "{kept} missing: {environment}"
        );
    }
}

/// Runs gcslock as a background job of a terminal (a pty) with `stty tostop`, and
/// prints `exited CODE`, or `hung` (after killing it) if it has not exited in 20 s.
const BACKGROUND_ON_A_TERMINAL: &str = r#"
import os, pty, select, signal, sys, time
gcslock = sys.argv[1:]
pids_r, pids_w = os.pipe()
pid, terminal = pty.fork()
if pid == 0:
    os.system("stty tostop")
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        os.execv(gcslock[0], gcslock)
    os.write(pids_w, f"{child}\n".encode())
    _, status = os.waitpid(child, 0)
    os.write(pids_w, f"exited {os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)
os.close(pids_w)
said = b""
deadline = time.monotonic() + 20
while b"exited" not in said and time.monotonic() < deadline:
    ready, _, _ = select.select([pids_r, terminal], [], [], 0.1)
    if pids_r in ready:
        said += os.read(pids_r, 100)
    if terminal in ready:
        try:
            os.read(terminal, 4096)
        except OSError:
            pass
lines = said.decode().split()
if b"exited" in said:
    print(said.decode().splitlines()[-1])
else:
    os.kill(int(lines[0]), signal.SIGKILL)
    print("hung")
"#;

/// Before, gcslock caught SIGTTOU: its write to the terminal got SIGTTOU, was
/// restarted after the handler, got SIGTTOU again, and so on forever.
#[tokio::test]
async fn a_background_gcslock_writing_to_a_tostop_terminal_does_not_spin() {
    let out = output({
        let mut command = tokio::process::Command::new("python3");
        command
            .args(["-c", BACKGROUND_ON_A_TERMINAL, harness::BIN])
            // Storage that refuses at once: gcslock writes its error and exits 69.
            .args([
                "run",
                "--endpoint",
                "http://127.0.0.1:1",
                "--storage-timeout",
                "1s",
                "gs://gcslock-test/tostop",
                "--",
                "true",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    })
    .await;
    assert_eq!(text(&out.stdout), "exited 69\n", "{}", describe(&out));
}

/// `status` says which boundary holds a running command (the acquiring write records
/// it), in text and in JSON; a busy run leaves no cgroup behind, as its boundary is
/// made ready before it asks for the lock.
#[tokio::test]
async fn status_shows_the_boundary_that_holds_the_command() {
    let Some(emulator) = Emulator::strict() else {
        return;
    };
    for boundary in ALL {
        let url = emulator.url(&format!("status-{boundary:?}"));
        let args = ["-v", "run", &url, "--", "sh", "-c", "echo ready; read _"];
        let mut command = gcslock(Some(&emulator), &args);
        boundary.apply(&mut command);
        let mut holder = Running::start(command);
        holder.expect_line("ready").await;
        let json = status_json(Some(&emulator), &url).await;
        let shown = json["boundary"].as_str().map(str::to_owned);
        let out = output(gcslock(Some(&emulator), &["status", &url])).await;
        let line = text(&out.stdout);

        let mut busy = gcslock(Some(&emulator), &["run", &url, "--", "true"]);
        boundary.apply(&mut busy);
        let busy = busy.spawn().expect("gcslock");
        let busy_cgroup = format!("gcslock-run-{}", busy.id().expect("pid"));
        let busy = busy.wait_with_output().await.expect("gcslock");
        assert_eq!(code(&busy), 75, "{}", describe(&busy));

        holder.send_line().await;
        let (status, _, stderr) = holder.finish().await;
        assert!(status.success(), "{stderr}");
        let expected = match (boundary, cgroup_in_force(&stderr, boundary)) {
            (_, Some(cgroup)) => {
                assert_removed(Some(&cgroup));
                let parent = cgroup.parent().expect("a parent cgroup");
                let left = parent.join(&busy_cgroup);
                assert!(!left.exists(), "the busy run left {}", left.display());
                "cgroup"
            }
            (Boundary::Group, None) => "group",
            (_, None) => "session",
        };
        assert_eq!(shown.as_deref(), Some(expected), "{boundary:?}: {json}");
        assert!(
            line.contains(&format!("; boundary {expected}")),
            "{boundary:?}: {line}"
        );
    }
}
