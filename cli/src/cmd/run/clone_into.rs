//! Starting the command straight inside its cgroup with `clone3(CLONE_INTO_CGROUP)`
//! (Linux 5.7 and later), instead of forking and then writing to `cgroup.procs`.
//!
//! Why: moving a process into a cgroup takes the kernel's cgroup threadgroup lock
//! for writing, which waits for an RCU grace period unless another move happened
//! moments before. Measured on Linux 6.18 here: 7 to 16 ms (median 12 ms) for a
//! single move after a pause, which is the ordinary case of a cron job, against
//! 0.2 ms for a clone straight into the cgroup. std's `Command` has no way to clone
//! into a cgroup, so this module does the fork and exec itself, as Go's `os/exec`
//! does for `UseCgroupFD`. Where the kernel or a seccomp filter refuses `clone3`
//! (ENOSYS, EINVAL, EPERM), the caller falls back to `Command` and a move.
//!
//! Everything the child needs (paths, arguments, environment) is built before the
//! clone: the child of a multi-threaded process may only make async-signal-safe
//! calls, so it allocates nothing and takes no lock.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// `CLONE_INTO_CGROUP` (linux/sched.h); libc declares it as a c_int, which it
/// overflows.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (linux/sched.h), the same on every
/// architecture: eleven 64-bit fields.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A program to execute, made ready before the clone.
pub struct Program {
    /// Where to look for it: the program itself if it names a path, else each
    /// directory of `PATH`, in order (as `execvp` does).
    candidates: Vec<CString>,
    /// `argv`, and the same arguments after `/bin/sh` for a script without a `#!`
    /// line (ENOEXEC; `execvp` does the same).
    arguments: Vec<CString>,
    environment: Vec<CString>,
}

impl Program {
    /// `command` with `environment` ("NAME=VALUE" pairs); `None` if any part holds a
    /// NUL byte, which no exec can carry.
    pub fn new(
        command: &[OsString],
        environment: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Option<Self> {
        let program = command.first()?;
        let arguments = command
            .iter()
            .map(|argument| CString::new(argument.as_bytes()).ok())
            .collect::<Option<Vec<_>>>()?;
        let environment = environment
            .into_iter()
            .map(|(name, value)| {
                let mut pair = name.into_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                CString::new(pair).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        let path = std::env::var_os("PATH");
        let candidates = candidates(program, path.as_deref())?;
        Some(Self {
            candidates,
            arguments,
            environment,
        })
    }
}

/// The paths `execvp` would try for `program`, in order.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Option<Vec<CString>> {
    if program.as_bytes().contains(&b'/') {
        return Some(vec![CString::new(program.as_bytes()).ok()?]);
    }
    // glibc's default when PATH is unset.
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStr::as_bytes);
    path.split(|&byte| byte == b':')
        .map(|directory| {
            // An empty entry is the current directory.
            let mut candidate = if directory.is_empty() {
                b".".to_vec()
            } else {
                directory.to_vec()
            };
            candidate.push(b'/');
            candidate.extend_from_slice(program.as_bytes());
            CString::new(candidate).ok()
        })
        .collect()
}

/// Why the command could not be started.
#[derive(Debug)]
pub enum Refused {
    /// The kernel or a seccomp filter does not allow `clone3` into a cgroup: use a
    /// fork and a move instead. Nothing was started.
    Unsupported(Errno),
    /// The command could not be executed (the child's `errno`), or the setup before
    /// it failed; the child was reaped.
    Failed(io::Error),
}

/// The command's process, started by [`spawn`]; waited for through its pidfd.
pub struct Cloned {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Cloned {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel-safe: the status is kept
    /// once read.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut ready = self.pidfd.readable().await?;
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
            match waitid(Id::PIDFd(self.pidfd.get_ref().as_fd()), flags)? {
                WaitStatus::StillAlive => ready.clear_ready(),
                status => self.status = Some(exit_status(status)?),
            }
        }
    }
}

/// The raw wait status of a process that ended, as `ExitStatus` holds it.
fn exit_status(status: WaitStatus) -> io::Result<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Ok(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core) => Ok(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        other => Err(io::Error::other(format!(
            "unexpected wait status {other:?}"
        ))),
    }
}

/// Starts `program` as a child inside the cgroup whose directory is `cgroup`, after
/// `setup` has run in the child (async-signal-safe only). The child also gets the
/// default SIGPIPE and an empty signal mask, as std's `Command` gives it.
pub fn spawn(
    program: &Program,
    cgroup: BorrowedFd<'_>,
    setup: &mut dyn FnMut() -> io::Result<()>,
) -> Result<Cloned, Refused> {
    let failed = |error: Errno| Refused::Failed(error.into());
    let argv = pointers(&program.arguments);
    let envp = pointers(&program.environment);
    // The same arguments after /bin/sh, for a script without a #! line.
    let shell = c"/bin/sh";
    let mut shell_argv = Vec::with_capacity(argv.len().saturating_add(2));
    shell_argv.push(shell.as_ptr());
    shell_argv.push(std::ptr::null());
    shell_argv.extend(argv.iter().skip(1));
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(failed)?;
    let mut pidfd: libc::c_int = -1;
    let arguments = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_PIDFD as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).map_err(|_| failed(Errno::EBADF))?,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a new stack behaves as fork: the child runs on a copy
    // of this stack. In the child only `child` runs, which makes async-signal-safe
    // system calls on memory built before the clone and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(arguments),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; `argv`, `envp` and `shell_argv` are NULL-terminated
        // arrays of pointers into CStrings that outlive this call.
        unsafe {
            child(
                program,
                &argv,
                &envp,
                &mut shell_argv,
                report_write.as_fd(),
                setup,
            )
        }
    }
    if pid < 0 {
        let error = Errno::last();
        return Err(match error {
            Errno::ENOSYS | Errno::EINVAL | Errno::EPERM | Errno::E2BIG => {
                Refused::Unsupported(error)
            }
            error => failed(error),
        });
    }
    let pid = Pid::from_raw(i32::try_from(pid).map_err(|_| failed(Errno::ERANGE))?);
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(report_write);
    // The pipe closes unread at exec (close-on-exec); the child writes its errno
    // if anything before or in exec failed.
    let mut reported = [0u8; 4];
    let length = read_all(report_read.as_fd(), &mut reported).map_err(failed)?;
    if length == reported.len() {
        let _ = waitpid(pid, None);
        return Err(Refused::Failed(io::Error::from_raw_os_error(
            i32::from_ne_bytes(reported),
        )));
    }
    // SAFETY: the AsyncFd owns the pidfd, which stays open as long as it does.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    let pidfd = match registered {
        Ok(pidfd) => pidfd,
        Err(error) => {
            // Nothing could wait for it: it must not run unsupervised.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(Refused::Failed(error.into()));
        }
    };
    Ok(Cloned {
        pid,
        pidfd,
        status: None,
    })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Reads until `buffer` is full or the writers are gone; returns the bytes read.
fn read_all(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> Result<usize, Errno> {
    let mut filled = 0;
    while let Some(rest) = buffer.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match nix::unistd::read(fd, rest) {
            Ok(0) => break,
            Ok(read) => filled = filled.saturating_add(read),
            Err(Errno::EINTR) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The child: setup, then exec; on failure its errno to the parent, exit 127.
///
/// # Safety
/// Only in the child of [`spawn`]'s clone, with `argv`, `envp` and `shell_argv`
/// NULL-terminated arrays of pointers to NUL-terminated strings.
unsafe fn child(
    program: &Program,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    shell_argv: &mut [*const libc::c_char],
    report: BorrowedFd<'_>,
    setup: &mut dyn FnMut() -> io::Result<()>,
) -> ! {
    let fail = |errno: i32| -> ! {
        let _ = nix::unistd::write(report, &errno.to_ne_bytes());
        // SAFETY: _exit is async-signal-safe and runs no destructors or handlers.
        unsafe { libc::_exit(127) }
    };
    // std's Command gives the command the default SIGPIPE (Rust ignores it) and no
    // blocked signals.
    // SAFETY: signal and sigprocmask are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    if let Err(error) = setup() {
        fail(error.raw_os_error().unwrap_or(libc::EIO));
    }
    let mut errno = libc::ENOENT;
    for candidate in &program.candidates {
        // SAFETY: see the function's contract.
        unsafe { libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match Errno::last_raw() {
            libc::ENOEXEC => {
                if let Some(slot) = shell_argv.get_mut(1) {
                    *slot = candidate.as_ptr();
                }
                // SAFETY: as above; shell_argv is NULL-terminated.
                unsafe { libc::execve(c"/bin/sh".as_ptr(), shell_argv.as_ptr(), envp.as_ptr()) };
                fail(Errno::last_raw());
            }
            // As execvp: a candidate that is not there, or not for us, lets the
            // search go on; EACCES is reported if nothing else is found.
            libc::EACCES => errno = libc::EACCES,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            other => fail(other),
        }
    }
    fail(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_looked_up_as_execvp_does() {
        let found = |program: &str, path: Option<&str>| -> Vec<String> {
            candidates(OsStr::new(program), path.map(OsStr::new))
                .expect("no NUL")
                .into_iter()
                .map(|path| path.into_string().expect("utf-8"))
                .collect()
        };
        assert_eq!(found("./job", Some("/bin")), ["./job"]);
        assert_eq!(found("/usr/bin/env", None), ["/usr/bin/env"]);
        assert_eq!(
            found("job", Some("/opt/bin::/usr/bin")),
            ["/opt/bin/job", "./job", "/usr/bin/job"]
        );
        assert_eq!(found("job", None), ["/bin/job", "/usr/bin/job"]);
        assert!(candidates(OsStr::new("a\0b"), None).is_none());
    }

    #[test]
    fn wait_statuses_become_exit_statuses() {
        let pid = Pid::from_raw(7);
        let exited = exit_status(WaitStatus::Exited(pid, 3)).expect("exited");
        assert_eq!(exited.code(), Some(3));
        let killed = exit_status(WaitStatus::Signaled(pid, nix::sys::signal::SIGKILL, false))
            .expect("signaled");
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
        assert!(exit_status(WaitStatus::StillAlive).is_err());
    }
}
