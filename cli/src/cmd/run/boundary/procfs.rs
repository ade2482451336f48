//! The processes of a session or a process group, and whether each still runs,
//! read from /proc **without allocating or locking**: the watchdog, a forked copy of
//! gcslock that may run only async-signal-safe code, uses the same scan as gcslock.
//!
//! A process runs while any of its threads does: a process whose main thread called
//! `pthread_exit` shows as a zombie in `/proc/PID/stat` while its other threads go
//! on working, so a zombie-looking process is alive if `/proc/PID/task` has a task
//! that is not a zombie.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{openat, seek, Mode, OFlags, RawDir, SeekFrom, CWD};

/// What a boundary without a cgroup is made of: the command's session or its
/// process group, each named by the command's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Session(i32),
    ProcessGroup(i32),
}

/// The fields of `/proc/PID/stat` that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    state: u8,
    pgrp: i32,
    session: i32,
}

impl Stat {
    /// Zombies (Z) and dead tasks (X) run nothing.
    fn runs(self) -> bool {
        !matches!(self.state, b'Z' | b'X')
    }
}

impl Membership {
    fn includes(self, stat: Stat) -> bool {
        match self {
            Self::Session(id) => stat.session == id,
            Self::ProcessGroup(id) => stat.pgrp == id,
        }
    }
}

/// `/proc`, opened once so that the watchdog needs no path lookups of its own.
pub fn open_proc() -> io::Result<OwnedFd> {
    Ok(openat(
        CWD,
        c"/proc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Calls `visit(pid, runs)` for every process of `membership`, where `runs` says
/// whether any of its threads still runs. Processes that vanish during the scan, or
/// that we may not read, are skipped. Allocates nothing.
pub fn for_each_member(
    proc: BorrowedFd<'_>,
    membership: Membership,
    mut visit: impl FnMut(i32, bool),
) -> io::Result<()> {
    seek(proc, SeekFrom::Start(0))?;
    let mut buffer = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = RawDir::new(proc, &mut buffer);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let Some(pid) = parse_id(entry.file_name().to_bytes()) else {
            continue;
        };
        let Some(stat) = read_stat(proc, pid, None) else {
            continue;
        };
        if membership.includes(stat) {
            visit(pid, stat.runs() || a_thread_runs(proc, pid));
        }
    }
    Ok(())
}

/// Whether any process of `membership` runs (see the module's documentation).
pub fn any_member_runs(proc: BorrowedFd<'_>, membership: Membership) -> io::Result<bool> {
    let mut found = false;
    for_each_member(proc, membership, |_, runs| found |= runs)?;
    Ok(found)
}

/// Whether a thread of `pid` other than a zombie is left (its main thread may have
/// exited while the others work on).
fn a_thread_runs(proc: BorrowedFd<'_>, pid: i32) -> bool {
    let mut path = PathBuffer::new();
    path.push_id(pid);
    path.push(b"/task");
    let Some(tasks) = path
        .as_c_str()
        .and_then(|path| openat(proc, path, DIRECTORY_FLAGS, Mode::empty()).ok())
    else {
        return false;
    };
    let mut buffer = [MaybeUninit::<u8>::uninit(); 2048];
    let mut entries = RawDir::new(&tasks, &mut buffer);
    while let Some(Ok(entry)) = entries.next() {
        let Some(tid) = parse_id(entry.file_name().to_bytes()) else {
            continue;
        };
        if read_stat(proc, pid, Some(tid)).is_some_and(Stat::runs) {
            return true;
        }
    }
    false
}

const DIRECTORY_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// `/proc/PID/stat`, or `/proc/PID/task/TID/stat`, parsed.
fn read_stat(proc: BorrowedFd<'_>, pid: i32, tid: Option<i32>) -> Option<Stat> {
    let mut path = PathBuffer::new();
    path.push_id(pid);
    if let Some(tid) = tid {
        path.push(b"/task/");
        path.push_id(tid);
    }
    path.push(b"/stat");
    let file = openat(
        proc,
        path.as_c_str()?,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // The fields wanted come right after the command name (at most 64 bytes).
    let mut buffer = [0u8; 512];
    let length = loop {
        match rustix::io::read(&file, &mut buffer) {
            Ok(length) => break length,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    };
    parse_stat(buffer.get(..length)?)
}

/// "pid (comm) state ppid pgrp session ...": the name may contain anything, even
/// ')', so the fields start after the last ')'. A group or session whose leader is
/// outside our PID namespace reads as 0 (a container entered with `docker exec`,
/// say); such a process is still scanned, since it may belong to the other id.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&byte| byte == b')')?;
    let mut fields = stat
        .get(close.checked_add(1)?..)?
        .split(|&byte| byte == b' ')
        .filter(|field| !field.is_empty());
    let state = *fields.next()?.first()?;
    let _ppid = fields.next()?;
    let pgrp = parse_id_or_outside(fields.next()?)?;
    let session = parse_id_or_outside(fields.next()?)?;
    Some(Stat {
        state,
        pgrp,
        session,
    })
}

/// A positive decimal id (pid, tid, pgid, sid), as /proc and cgroup files write them.
pub fn parse_id(digits: &[u8]) -> Option<i32> {
    if digits.is_empty() {
        return None;
    }
    let mut value: i32 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(i32::from(digit.checked_sub(b'0')?))?;
    }
    (value > 0).then_some(value)
}

/// An id, or 0 for one outside our PID namespace. No membership is ever 0, so a 0
/// never matches.
fn parse_id_or_outside(digits: &[u8]) -> Option<i32> {
    match digits {
        b"0" => Some(0),
        _ => parse_id(digits),
    }
}

/// A NUL-terminated relative path built on the stack ("PID/task/TID/stat").
struct PathBuffer {
    bytes: [u8; 64],
    length: usize,
}

impl PathBuffer {
    fn new() -> Self {
        Self {
            bytes: [0; 64],
            length: 0,
        }
    }

    fn push(&mut self, part: &[u8]) {
        for &byte in part {
            // One byte is kept for the NUL; longer paths fail in `as_c_str`.
            if let Some(slot) = self.bytes.get_mut(self.length) {
                *slot = byte;
                self.length = self.length.saturating_add(1);
            }
        }
    }

    fn push_id(&mut self, id: i32) {
        let mut digits = [0u8; 12];
        self.push(format_id(id, &mut digits));
    }

    fn as_c_str(&mut self) -> Option<&CStr> {
        let end = self.length.checked_add(1)?;
        *self.bytes.get_mut(self.length)? = 0;
        CStr::from_bytes_with_nul(self.bytes.get(..end)?).ok()
    }
}

/// `id` in decimal into `digits`, without allocating; returns the digits used.
pub fn format_id(id: i32, digits: &mut [u8; 12]) -> &[u8] {
    let mut start = digits.len();
    let mut rest = id.unsigned_abs();
    while let Some(next) = start.checked_sub(1) {
        start = next;
        if let Some(slot) = digits.get_mut(start) {
            // `rest % 10` is below 10.
            *slot = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let stat = b"4242 (a) b) c) S 1 4240 4200 0 -1 4194560 117 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: b'S',
                pgrp: 4240,
                session: 4200
            })
        );
        // Leaders outside our PID namespace read as 0; the process still counts.
        assert_eq!(
            parse_stat(b"6 (sleep) S 2 6 0 0 -1"),
            Some(Stat {
                state: b'S',
                pgrp: 6,
                session: 0
            })
        );
        assert_eq!(parse_stat(b"4242 (sh"), None);
        assert_eq!(parse_stat(b"4242 (sh) Z 1 x 3"), None);
    }

    #[test]
    fn ids_are_positive_decimals() {
        assert_eq!(parse_id(b"4194304"), Some(4_194_304));
        assert_eq!(parse_id(b"0"), None);
        assert_eq!(parse_id(b"-1"), None);
        assert_eq!(parse_id(b"99999999999"), None);
        assert_eq!(parse_id(b""), None);
        let mut digits = [0u8; 12];
        assert_eq!(format_id(7, &mut digits), b"7");
        assert_eq!(format_id(i32::MAX, &mut digits), b"2147483647");
    }

    /// A child of its own in a new session, so that the test does not depend on
    /// where the test runner's session leader lives: inside a PID namespace whose
    /// session leader is outside it (as in CI), our own session id reads as 0.
    fn spawn_sleeper(new_session: bool) -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new("sleep");
        command.arg("60");
        if new_session {
            // SAFETY: setsid is a single system call; nothing is allocated or locked.
            unsafe {
                command.pre_exec(|| Ok(nix::unistd::setsid().map(drop)?));
            }
        } else {
            command.process_group(0);
        }
        command.spawn().expect("spawn sleep")
    }

    fn members_run(membership: Membership) -> bool {
        let proc = open_proc().expect("/proc");
        any_member_runs(proc.as_fd(), membership).expect("scan")
    }

    #[test]
    fn a_live_session_or_group_has_a_running_member_and_a_reaped_one_has_none() {
        for new_session in [true, false] {
            let mut child = spawn_sleeper(new_session);
            let id = i32::try_from(child.id()).expect("pid");
            let membership = if new_session {
                Membership::Session(id)
            } else {
                Membership::ProcessGroup(id)
            };
            assert!(members_run(membership), "{membership:?} while it sleeps");
            child.kill().expect("kill");
            child.wait().expect("wait");
            assert!(!members_run(membership), "{membership:?} once reaped");
        }
        assert!(!members_run(Membership::ProcessGroup(i32::MAX)));
    }
}
