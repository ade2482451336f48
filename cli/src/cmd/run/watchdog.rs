//! If gcslock dies, its command dies: a watchdog process that kills the command's
//! whole process group when gcslock's end of a pipe closes without a "done".
//!
//! The kernel's parent-death signal (see `child.rs`) kills only the command itself,
//! not what it started. So before starting the command, gcslock re-executes itself as
//! `gcslock __watchdog` in a process group of its own (out of reach of the signals
//! sent to gcslock's group), with a pipe as its stdin. gcslock writes `watch PGID`
//! once the command runs and `done` once the group is known to be gone. On end of
//! file without `done` (gcslock died, even of SIGKILL), the watchdog SIGKILLs the
//! group until no process of it runs, then exits. Because gcslock says `done` only
//! after the group is gone, a process group id reused later is never signalled.

use std::io::BufRead as _;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, ChildStdin};

use super::child::running_member;
use crate::exit::{self, Coded};
use crate::global::{GlobalArgs, LogFormat};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__watchdog";
/// How long the watchdog keeps killing a group that will not die.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// The pause between kill rounds (processes in the middle of a fork may escape one).
const KILL_ROUND: Duration = Duration::from_millis(10);

/// `gcslock __watchdog`: used by `gcslock run` only.
#[derive(Debug, Args)]
pub struct WatchdogArgs {}

/// gcslock's side: the watchdog process and the write end of its pipe.
pub struct Watchdog {
    process: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog, disarmed until [`Watchdog::watch`].
    pub fn start(global: &GlobalArgs) -> Result<Self, Coded> {
        // /proc/self/exe still works if the binary was replaced since gcslock started.
        let program = std::path::Path::new("/proc/self/exe");
        let program = if program.exists() {
            program.to_path_buf()
        } else {
            std::env::current_exe().map_err(|error| {
                Coded::new(
                    exit::INTERNAL,
                    format!("cannot find gcslock's own executable for its watchdog: {error}"),
                )
            })?
        };
        let mut command = tokio::process::Command::new(program);
        if global.quiet {
            command.arg("--quiet");
        }
        if global.log_format == LogFormat::Json {
            command.args(["--log-format", "json"]);
        }
        command
            .arg0("gcslock")
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        let mut process = command.spawn().map_err(|error| {
            Coded::new(
                exit::INTERNAL,
                format!("cannot start gcslock's watchdog: {error}"),
            )
        })?;
        let pipe = process.stdin.take();
        Ok(Self { process, pipe })
    }

    /// The write end of the pipe, for the command to arm the watchdog itself before it
    /// executes (see `child::spawn`).
    pub fn pipe_fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Arms the watchdog for the command's process group.
    pub async fn watch(&mut self, pgid: Pid) {
        self.say(&format!("watch {pgid}\n")).await;
    }

    /// Disarms the watchdog (it exits), once the group is known to be gone.
    pub async fn done(mut self) {
        self.say("done\n").await;
        self.pipe = None;
        // Reaped in the background by tokio; its exit needs no waiting for.
        drop(self.process);
    }

    async fn say(&mut self, message: &str) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        if let Err(error) = pipe.write_all(message.as_bytes()).await {
            tracing::warn!(
                "gcslock's watchdog (pid {}) is gone ({error}); if gcslock dies, processes the \
                 command started may outlive it",
                self.process.id().unwrap_or_default()
            );
            self.pipe = None;
        }
    }
}

/// The watchdog process. Returns its exit code.
pub fn watchdog() -> u8 {
    let mut watched: Option<Pid> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            break;
        };
        if line == "done" {
            return 0;
        }
        match line
            .strip_prefix("watch ")
            .and_then(|pgid| pgid.parse::<i32>().ok())
        {
            // Never 0, 1 or negative: killpg would reach our own group, init, or worse.
            Some(pgid) if pgid > 1 => watched = Some(Pid::from_raw(pgid)),
            _ => tracing::warn!("watchdog: ignoring unexpected input {line:?}"),
        }
    }
    if let Some(pgid) = watched {
        tracing::error!(
            "gcslock ended without stopping its command; killing the command's process group \
             {pgid} so that it does not run without the lock"
        );
        kill_group(pgid);
    }
    0
}

/// SIGKILL to the group until no process of it runs (zombies aside).
fn kill_group(pgid: Pid) {
    let give_up_at = Instant::now().checked_add(GIVE_UP_AFTER);
    loop {
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return,
            Err(error) => {
                tracing::error!("watchdog: cannot kill process group {pgid}: {error}");
                return;
            }
        }
        if running_member(pgid) == Some(false) {
            return;
        }
        if give_up_at.is_none_or(|at| Instant::now() >= at) {
            tracing::error!(
                "watchdog: process group {pgid} survived SIGKILL for {}s; giving up",
                GIVE_UP_AFTER.as_secs()
            );
            return;
        }
        std::thread::sleep(KILL_ROUND);
    }
}
