//! The command as a process group: starting it, signalling it, knowing when all of
//! it is gone, and its exit status.

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::Child;

use super::supervisor::Group;
use crate::exit::{self, Coded};

/// The running command: its leader (reaped through tokio) and its process group.
pub struct ProcessGroup {
    child: Child,
    pgid: Pid,
}

/// Starts the command in a new process group with the lock's token and URL in its
/// environment, killed by the kernel if gcslock dies. With `watchdog`, the write end
/// of the watchdog's pipe, the child names its group to the watchdog itself before
/// it executes the command. Failures carry the shell's exit codes: 127 not found,
/// 126 otherwise.
pub fn spawn(
    command: &[OsString],
    token: u64,
    place: u32,
    url: &str,
    watchdog: Option<RawFd>,
) -> Result<ProcessGroup, Coded> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| Coded::new(exit::USAGE, "no command given"))?;
    let mut process = tokio::process::Command::new(program);
    process
        .args(arguments)
        .env("GCSLOCK_TOKEN", token.to_string())
        .env("GCSLOCK_PLACE", place.to_string())
        .env("GCSLOCK_URL", url)
        .process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and makes only system calls
    // (prctl, getppid, getpid, write) on a stack buffer; it allocates nothing and
    // takes no lock. `watchdog` is a pipe descriptor that stays open in the child
    // until exec (it is close-on-exec).
    unsafe {
        process.pre_exec(move || {
            die_with_parent(parent)?;
            match watchdog {
                Some(fd) => arm_watchdog(BorrowedFd::borrow_raw(fd)),
                None => Ok(()),
            }
        });
    }
    let child = process.spawn().map_err(|error| {
        let code = match error.kind() {
            io::ErrorKind::NotFound => exit::NOT_FOUND,
            _ => exit::CANNOT_EXECUTE,
        };
        Coded::new(
            code,
            format!("cannot run {}: {error}", program.to_string_lossy()),
        )
    })?;
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // Only possible if the child was already reaped, which nothing here does.
        return Err(Coded::new(
            exit::INTERNAL,
            "the command's process id is unknown",
        ));
    };
    Ok(ProcessGroup { child, pgid })
}

/// In the forked child: SIGKILL when gcslock dies. The kernel sends it when the
/// *thread* that forked exits; gcslock spawns the command from the thread that runs
/// its single-threaded runtime, which is the main thread and lives as long as the
/// process. The command's own children are not covered: the watchdog kills those.
fn die_with_parent(parent: Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // gcslock died before the prctl: nobody would send the signal any more.
    if nix::unistd::getppid() != parent {
        return Err(Errno::ESRCH.into());
    }
    Ok(())
}

/// In the forked child, before exec: `watch PGID` to the watchdog, where PGID is our
/// own pid (we lead the new group). gcslock says the same once `spawn` returns; had it
/// died in between, a grandchild started at once would have escaped the watchdog.
/// One write of at most 32 bytes to a pipe is atomic, so it never interleaves.
fn arm_watchdog(pipe: BorrowedFd<'_>) -> io::Result<()> {
    let mut line = [0u8; 32];
    let length = watch_line(nix::unistd::getpid().as_raw(), &mut line);
    let slice = line.get(..length).ok_or(Errno::EINVAL)?;
    if nix::unistd::write(pipe, slice)? != length {
        return Err(Errno::EIO.into());
    }
    Ok(())
}

/// `watch PID\n` into `line` without allocating; returns its length.
fn watch_line(pid: i32, line: &mut [u8; 32]) -> usize {
    const PREFIX: &[u8] = b"watch ";
    let mut digits = [0u8; 12];
    let mut count = 0;
    let mut rest = pid.unsigned_abs();
    loop {
        if let Some(slot) = digits.get_mut(count) {
            // `rest % 10` is below 10.
            *slot = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        }
        count += 1;
        rest /= 10;
        if rest == 0 || count == digits.len() {
            break;
        }
    }
    let mut length = 0;
    for &byte in PREFIX
        .iter()
        .chain(digits.iter().take(count).rev())
        .chain(b"\n")
    {
        if let Some(slot) = line.get_mut(length) {
            *slot = byte;
            length += 1;
        }
    }
    length
}

impl ProcessGroup {
    pub fn pgid(&self) -> Pid {
        self.pgid
    }
}

impl Group for ProcessGroup {
    fn id(&self) -> i32 {
        self.pgid.as_raw()
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(
                "cannot send {signal} to process group {}: {error}",
                self.pgid
            ),
        }
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    fn alive(&self) -> bool {
        group_alive(self.pgid)
    }
}

/// Whether any process of the group is still running (zombies do not count: they
/// run nothing, and an init that reaps slowly must not delay us). Reaps the group's
/// zombies that are our children (possible only after the command itself has been
/// reaped: orphans re-parented to gcslock when it runs as PID 1).
pub fn group_alive(pgid: Pid) -> bool {
    while let Ok(status) = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
    // ESRCH: no member at all. EPERM: the id now names someone else's group.
    if killpg(pgid, None).is_err() {
        return false;
    }
    running_member(pgid).unwrap_or(true)
}

/// Whether /proc shows a member of the group that is not a zombie; `None` without
/// a readable /proc.
pub fn running_member(pgid: Pid) -> Option<bool> {
    let wanted = pgid.as_raw().to_string();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Gone since the listing, or not ours to read: either way not a member we
        // can wait for.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may contain anything, even ')'.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = fields.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1);
        if pgrp == Some(wanted.as_str()) && !matches!(state, Some("Z" | "X")) {
            return Some(true);
        }
    }
    Some(false)
}

/// The command's exit code, or 128+N if signal N killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::INTERNAL),
        (None, Some(signal)) => exit::signal(signal),
        (None, None) => exit::INTERNAL,
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("signal {signal}"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn watch_lines_are_formatted_without_allocating() {
        let mut line = [0u8; 32];
        let length = watch_line(4_194_304, &mut line);
        assert_eq!(&line[..length], b"watch 4194304\n");
        let length = watch_line(i32::MAX, &mut line);
        assert_eq!(&line[..length], b"watch 2147483647\n");
        let length = watch_line(7, &mut line);
        assert_eq!(&line[..length], b"watch 7\n");
    }

    /// Before this, only gcslock named the group to the watchdog, after `spawn`
    /// returned: a gcslock killed in between left a fast grandchild unguarded.
    #[tokio::test]
    async fn the_command_arms_the_watchdog_before_it_executes() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let mut group =
            spawn(&["true".into()], 1, 0, "gs://b/o", Some(write.as_raw_fd())).expect("spawn");
        let pgid = group.pgid();
        drop(write);
        group.child.wait().await.expect("wait");
        let mut said = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut said)
            .expect("read");
        assert_eq!(said, format!("watch {pgid}\n"));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
