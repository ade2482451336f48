//! Starting the command inside its boundary, and its exit status.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::Pid;

use super::boundary::procfs::format_id;
use super::boundary::{Boundary, Leader, Prepared};
use super::clone_into::{self, Refused};
use crate::exit::{self, Coded};

/// What the command finds in its environment besides gcslock's own.
pub struct Environment<'a> {
    pub token: u64,
    /// The semaphore place held (`--holders`); 0 for a lock.
    pub place: u32,
    pub url: &'a str,
    /// Variables that configured this run only (see `per_run_variables`).
    pub remove: &'a [String],
}

/// Starts the command in `prepared` with the lock's token and URL in its
/// environment, killed by the kernel if gcslock dies. With `watchdog`, the write
/// end of the watchdog's pipe, the child names itself to the watchdog before it
/// executes the command. Failures carry the shell's exit codes: 127 not found, 126
/// otherwise; a cgroup made for the command is removed again.
pub fn spawn(
    command: &[OsString],
    environment: &Environment<'_>,
    prepared: Prepared,
    watchdog: Option<RawFd>,
) -> Result<Boundary, Coded> {
    let spawned = start(command, environment, &prepared, watchdog, Entry::Clone);
    match spawned {
        Ok((child, pid)) => Ok(Boundary::new(child, pid, prepared)),
        Err(error) => {
            if let Prepared::Cgroup(cgroup) = &prepared {
                let _ = cgroup.remove();
            }
            Err(error)
        }
    }
}

/// How a command enters its cgroup: cloned straight into it where the kernel allows
/// (`clone_into`), or moved there by itself before it executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Clone,
    /// Where the kernel refuses the clone; tests also force it.
    #[cfg_attr(not(test), allow(dead_code))]
    Move,
}

fn start(
    command: &[OsString],
    environment: &Environment<'_>,
    prepared: &Prepared,
    watchdog: Option<RawFd>,
    entry: Entry,
) -> Result<(Leader, Pid), Coded> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| Coded::new(exit::USAGE, "no command given"))?;
    let cannot_run = |error: io::Error| {
        let code = match error.kind() {
            io::ErrorKind::NotFound => exit::NOT_FOUND,
            _ => exit::CANNOT_EXECUTE,
        };
        Coded::new(
            code,
            format!("cannot run {}: {error}", program.to_string_lossy()),
        )
    };
    let added = [
        ("GCSLOCK_TOKEN", environment.token.to_string()),
        ("GCSLOCK_PLACE", environment.place.to_string()),
        ("GCSLOCK_URL", environment.url.to_owned()),
    ];
    let parent = nix::unistd::getpid();
    // What the child does before it executes the command, in every boundary.
    let prepare_child = move || -> io::Result<()> {
        die_with_parent(parent)?;
        // gcslock ignores SIGTTOU (see `signals`); an ignored signal stays
        // ignored across exec, and the command must get the default.
        // SAFETY: setting a default disposition installs no handler.
        unsafe { nix::sys::signal::signal(Signal::SIGTTOU, SigHandler::SigDfl) }?;
        match watchdog {
            // SAFETY: the watchdog's pipe stays open until the command is started.
            Some(fd) => arm_watchdog(unsafe { BorrowedFd::borrow_raw(fd) }),
            None => Ok(()),
        }
    };
    if let (Prepared::Cgroup(cgroup), Entry::Clone) = (prepared, entry) {
        let kept = std::env::vars_os().filter(|(name, _)| {
            !environment
                .remove
                .iter()
                .any(|removed| name == removed.as_str())
                && !added.iter().any(|(added, _)| name == *added)
        });
        let variables = kept.chain(
            added
                .iter()
                .map(|(name, value)| (OsString::from(name), OsString::from(value))),
        );
        let program = clone_into::Program::new(command, variables).ok_or_else(|| {
            cannot_run(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the command or the environment",
            ))
        })?;
        let mut setup = || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            prepare_child()
        };
        match clone_into::spawn(&program, cgroup.directory(), &mut setup) {
            Ok(cloned) => {
                let pid = cloned.pid();
                return Ok((Leader::Cloned(cloned), pid));
            }
            Err(Refused::Failed(error)) => return Err(cannot_run(error)),
            Err(Refused::Unsupported(error)) => tracing::debug!(
                "cannot clone the command into its cgroup ({error}); it moves there itself"
            ),
        }
    }
    let mut process = tokio::process::Command::new(program);
    process.args(arguments);
    for name in environment.remove {
        process.env_remove(name);
    }
    for (name, value) in &added {
        process.env(name, value);
    }
    let (cgroup, new_session) = match prepared {
        Prepared::Cgroup(cgroup) => (Some(cgroup.procs().as_raw_fd()), false),
        Prepared::Session(_) => (None, true),
        Prepared::Group(_) => (None, false),
    };
    // setsid fails in a process group leader, so the session makes its own group.
    if !new_session {
        process.process_group(0);
    }
    // SAFETY: the closure runs between fork and exec and makes only system calls
    // (write, setsid, prctl, getppid, getpid, sigaction) on stack buffers; it
    // allocates nothing and takes no lock. The descriptors are open (close-on-exec)
    // in the child until exec.
    unsafe {
        process.pre_exec(move || {
            if let Some(procs) = cgroup {
                join_cgroup(BorrowedFd::borrow_raw(procs))?;
            }
            if new_session {
                nix::unistd::setsid()?;
            }
            prepare_child()
        });
    }
    let child = process.spawn().map_err(cannot_run)?;
    let Some(pid) = child
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
    Ok((Leader::Spawned(child), pid))
}

/// In the forked child: moves itself into the command's cgroup (`0` is "me").
fn join_cgroup(procs: BorrowedFd<'_>) -> io::Result<()> {
    if nix::unistd::write(procs, b"0")? != 1 {
        return Err(Errno::EIO.into());
    }
    Ok(())
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

/// In the forked child, before exec: `watch PID` to the watchdog, where PID is our
/// own pid (the id of the session or process group we lead). Had gcslock died
/// before it forked the watchdog, the spawn fails here, so no grandchild can have
/// escaped it. One write of at most 32 bytes to a pipe is atomic, so it never
/// interleaves.
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
pub fn watch_line(pid: i32, line: &mut [u8; 32]) -> usize {
    let mut digits = [0u8; 12];
    let mut length = 0;
    for &byte in b"watch "
        .iter()
        .chain(format_id(pid, &mut digits))
        .chain(b"\n")
    {
        if let Some(slot) = line.get_mut(length) {
            *slot = byte;
            length += 1;
        }
    }
    length
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
        use super::super::supervisor::Group as _;
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let environment = Environment {
            token: 1,
            place: 0,
            url: "gs://b/o",
            remove: &[],
        };
        let (prepared, _) =
            Prepared::new(Some(super::super::boundary::Kind::Group)).expect("prepared");
        let mut group = spawn(
            &["true".into()],
            &environment,
            prepared,
            Some(write.as_raw_fd()),
        )
        .expect("spawn");
        let pgid = group.pid();
        drop(write);
        group.wait().await.expect("wait");
        let mut said = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut said)
            .expect("read");
        assert_eq!(said, format!("watch {pgid}\n"));
    }

    /// Both ways into a cgroup (cloned into it, or moved there) start the command
    /// inside it, in a process group of its own, with its environment, and with the
    /// watchdog armed; a command that cannot run fails as the shell would.
    #[tokio::test]
    async fn both_ways_into_a_cgroup_start_the_command_inside_it() {
        use super::super::boundary::Kind;
        use super::super::supervisor::Group as _;
        for entry in [Entry::Clone, Entry::Move] {
            let prepared = match Prepared::new(Some(Kind::Cgroup)) {
                Ok((prepared, _)) => prepared,
                Err(error) => return super::super::boundary::cgroup::skip_without_cgroup(&error),
            };
            let Prepared::Cgroup(cgroup) = &prepared else {
                panic!("a cgroup was asked for");
            };
            let name = cgroup.path().file_name().expect("a name").to_owned();
            let report = std::env::temp_dir()
                .join(format!("gcslock-entry-{entry:?}-{}", std::process::id()));
            let script = format!(
                "{{ cat /proc/self/cgroup; echo \"pgid $(cut -d' ' -f5 /proc/self/stat) \
                 token $GCSLOCK_TOKEN place $GCSLOCK_PLACE home ${{HOME-unset}}\"; }} > {}; exit 5",
                report.display()
            );
            let (read, write) = nix::unistd::pipe().expect("pipe");
            let environment = Environment {
                token: 42,
                place: 3,
                url: "gs://b/o",
                remove: &["HOME".to_owned()],
            };
            let command = ["sh".into(), "-c".into(), script.into()];
            let (leader, pid) = start(
                &command,
                &environment,
                &prepared,
                Some(write.as_raw_fd()),
                entry,
            )
            .expect("start");
            drop(write);
            let mut group = Boundary::new(leader, pid, prepared);
            let status = group.wait().await.expect("wait");
            assert_eq!(status.code(), Some(5), "{entry:?}");
            let said = std::fs::read_to_string(&report).expect("report");
            let _ = std::fs::remove_file(&report);
            let cgroup_line = said
                .lines()
                .find(|line| line.starts_with("0::"))
                .expect("0::");
            assert!(
                cgroup_line.ends_with(&format!("/{}", name.to_string_lossy())),
                "{entry:?}: {said}"
            );
            assert!(
                said.contains(&format!("pgid {pid} token 42 place 3 home unset")),
                "{entry:?}: {said}"
            );
            let mut armed = String::new();
            std::fs::File::from(read)
                .read_to_string(&mut armed)
                .expect("read");
            assert_eq!(armed, format!("watch {pid}\n"), "{entry:?}");
            group.remove();

            let (prepared, _) = Prepared::new(Some(Kind::Cgroup)).expect("cgroup");
            let missing = ["gcslock-no-such-command".into()];
            let error = start(&missing, &environment, &prepared, None, entry)
                .err()
                .expect("a missing command fails");
            assert_eq!(error.code, exit::NOT_FOUND, "{entry:?}: {error}");
            let denied = ["/dev/null".into()];
            let error = start(&denied, &environment, &prepared, None, entry)
                .err()
                .expect("a file that is not executable fails");
            assert_eq!(error.code, exit::CANNOT_EXECUTE, "{entry:?}: {error}");
            if let Prepared::Cgroup(cgroup) = &prepared {
                cgroup.remove().expect("remove");
            }
        }
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
