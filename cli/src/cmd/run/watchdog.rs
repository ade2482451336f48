//! If gcslock dies, its command dies: a watchdog process that stops the command's
//! whole boundary when gcslock's end of a pipe closes without a "done".
//!
//! The kernel's parent-death signal (see `child.rs`) kills only the command itself,
//! not what it started. So before starting the command, gcslock **forks** (no exec:
//! no second program start) a helper in a process group of its own (out of reach of
//! the signals sent to gcslock's group), with the read end of a pipe. The command
//! writes `watch PID` to the pipe before it executes; gcslock writes `done` once the
//! boundary is known to be empty. On end of file without `done` (gcslock died, even
//! of SIGKILL), the helper kills the boundary until nothing of it runs: `cgroup.kill`
//! (then it removes the cgroup), or SIGKILL to every process of the session or
//! process group. Because gcslock says `done` only once the boundary is empty, a
//! session or process group id reused later is never signalled.
//!
//! The helper is a forked copy of a process that may have other threads (tokio's
//! blocking pool), so it runs only async-signal-safe code: system calls on
//! descriptors opened before the fork, buffers on the stack, no allocation, no lock.

use std::os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::boundary::cgroup::Handles;
use super::boundary::procfs::{self, parse_id, Membership};
use super::boundary::Prepared;
use crate::exit::{self, Coded};
use crate::global::LogFormat;

/// How long the helper keeps killing a boundary that will not die.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// The pause between kill rounds (processes in the middle of a fork may escape one).
const KILL_ROUND: Duration = Duration::from_millis(10);

/// Helpers told `done` that had not exited yet: reaped at the next start.
static UNREAPED: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

/// gcslock's side: the helper's pid and the write end of its pipe.
pub struct Watchdog {
    pid: Pid,
    pipe: Option<OwnedFd>,
}

/// What the helper stops, as descriptors opened before the fork.
#[derive(Clone, Copy)]
enum Target<'a> {
    Cgroup(Handles<'a>),
    /// The session or process group named by the pid the command sends.
    Members {
        proc: BorrowedFd<'a>,
        session: bool,
    },
}

impl Watchdog {
    /// Forks the helper for the boundary `prepared`; it kills nothing until the
    /// command has started (or, for a cgroup, only what is in the cgroup).
    pub fn start(prepared: &Prepared, log_format: LogFormat) -> Result<Self, Coded> {
        reap_earlier_helpers();
        let cannot = |error: &dyn std::fmt::Display| {
            Coded::new(
                exit::INTERNAL,
                format!("cannot start gcslock's watchdog: {error}"),
            )
        };
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|error| cannot(&error))?;
        let (target, what) = match prepared {
            Prepared::Cgroup(cgroup) => (
                Target::Cgroup(cgroup.handles()),
                format!("cgroup {}", cgroup.path().display()),
            ),
            Prepared::Session(proc) => (
                Target::Members {
                    proc: proc.as_fd(),
                    session: true,
                },
                "session".to_owned(),
            ),
            Prepared::Group(proc) => (
                Target::Members {
                    proc: proc.as_fd(),
                    session: false,
                },
                "process group".to_owned(),
            ),
        };
        let message = last_words(
            log_format,
            &format!(
                "gcslock ended without stopping its command; killing everything in the \
                 command's {what} so that it does not run without the lock"
            ),
        );
        // SAFETY: the child runs only `helper`, which is async-signal-safe (see the
        // module's documentation) and never returns.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => helper(read.as_fd(), write.as_raw_fd(), target, &message),
            Ok(ForkResult::Parent { child }) => Ok(Self {
                pid: child,
                pipe: Some(write),
            }),
            Err(error) => Err(cannot(&error)),
        }
    }

    /// The write end of the pipe, for the command to arm the watchdog itself before it
    /// executes (see `child::spawn`).
    pub fn pipe_fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Disarms the watchdog (it exits), once the boundary is known to be empty.
    pub fn done(mut self) {
        let Some(pipe) = self.pipe.take() else {
            return;
        };
        if let Err(error) = nix::unistd::write(&pipe, b"done\n") {
            tracing::warn!(
                "gcslock's watchdog (pid {}) is gone ({error}); it can no longer stop the \
                 command's processes",
                self.pid
            );
        }
        drop(pipe);
        // It exits as soon as it reads the line; whoever is late is reaped next time
        // (or by init once gcslock exits).
        if matches!(
            waitpid(self.pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        ) {
            if let Ok(mut unreaped) = UNREAPED.lock() {
                unreaped.push(self.pid);
            }
        }
    }
}

fn reap_earlier_helpers() {
    if let Ok(mut unreaped) = UNREAPED.lock() {
        unreaped.retain(|pid| {
            matches!(
                waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
    }
}

/// The helper's one message, formatted before the fork as gcslock's log lines are.
fn last_words(format: LogFormat, message: &str) -> Vec<u8> {
    let mut line = match format {
        LogFormat::Text => format!("gcslock: error: {message}"),
        LogFormat::Json => serde_json::json!({
            "level": "ERROR",
            "message": message,
            "target": "gcslock::watchdog",
        })
        .to_string(),
    }
    .into_bytes();
    line.push(b'\n');
    line
}

/// The forked helper. Async-signal-safe only; never returns.
fn helper(pipe: BorrowedFd<'_>, write_end: RawFd, target: Target<'_>, message: &[u8]) -> ! {
    // gcslock's signal handlers would only poke gcslock's runtime: the defaults
    // instead (SIGTTOU stays ignored).
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
    ] {
        // SAFETY: restoring a default disposition.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // Our copy of the write end would keep the pipe from ever reaching end of file.
    let _ = nix::unistd::close(write_end);
    let watched = match listen(pipe) {
        Heard::Done => exit_now(),
        Heard::Closed(watched) => watched,
    };
    let give_up_at = Instant::now().checked_add(GIVE_UP_AFTER);
    loop {
        let left = match target {
            Target::Cgroup(cgroup) => {
                let _ = cgroup.kill_all();
                let left = cgroup.populated().unwrap_or(true);
                if !left {
                    let _ = cgroup.remove();
                }
                left
            }
            Target::Members { proc, session } => {
                let Some(id) = watched else { exit_now() };
                let membership = if session {
                    Membership::Session(id)
                } else {
                    let _ = killpg(Pid::from_raw(id), Signal::SIGKILL);
                    Membership::ProcessGroup(id)
                };
                let mut left = false;
                let scanned = procfs::for_each_member(proc, membership, |pid, runs| {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    left |= runs;
                });
                left || scanned.is_err()
            }
        };
        if !left || give_up_at.is_none_or(|at| Instant::now() >= at) {
            // Only once the kill is done: stderr may be a pipe nobody drains, and a
            // blocked write must not hold up the kill.
            let _ = nix::unistd::write(std::io::stderr(), message);
            exit_now()
        }
        std::thread::sleep(KILL_ROUND);
    }
}

/// `_exit(0)`: no atexit handlers, no flushing of buffers that may be locked.
fn exit_now() -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(0) }
}

enum Heard {
    Done,
    /// End of file without `done`, with the pid the command sent, if any.
    Closed(Option<i32>),
}

/// Reads `watch PID` and `done` lines until `done` or end of file.
fn listen(pipe: BorrowedFd<'_>) -> Heard {
    let mut watched = None;
    let mut buffer = [0u8; 64];
    let mut line = [0u8; 32];
    let mut length = 0usize;
    loop {
        let read = match nix::unistd::read(pipe, &mut buffer) {
            Ok(0) => return Heard::Closed(watched),
            Ok(read) => read,
            Err(Errno::EINTR) => continue,
            Err(_) => return Heard::Closed(watched),
        };
        for &byte in buffer.get(..read).unwrap_or_default() {
            if byte != b'\n' {
                if let Some(slot) = line.get_mut(length) {
                    *slot = byte;
                }
                length = length.saturating_add(1);
                continue;
            }
            let text = line.get(..length).unwrap_or_default();
            if text == b"done" {
                return Heard::Done;
            }
            // Never 0, 1 or negative (`parse_id` refuses them): killpg would reach our
            // own group, init, or worse.
            if let Some(id) = text.strip_prefix(b"watch ").and_then(parse_id) {
                if id > 1 {
                    watched = Some(id);
                }
            }
            length = 0;
        }
    }
}
