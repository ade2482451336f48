//! The containment boundary: what "the command and everything it started" is, how
//! to signal all of it, and how to know that nothing of it runs any more.
//!
//! From strongest to weakest:
//! * `cgroup`: a cgroup v2 of its own (`cgroup.rs`); nothing the command starts can
//!   leave it, whatever it does with sessions and process groups.
//! * `session`: the command calls `setsid`; its session is every process with its
//!   session id (`procfs.rs`). A process that calls `setsid` itself (a daemon)
//!   leaves it; one that only changes its process group (`timeout`, `set -m`) stays.
//! * `group`: the command's process group; anything that changes its process group
//!   leaves it.
//!
//! The strongest available is used unless `GCSLOCK_BOUNDARY` names one; a named
//! boundary that is not available is an error, never a silent downgrade.

pub mod cgroup;
pub mod procfs;

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::Child;

use self::cgroup::Cgroup;
use self::procfs::Membership;
use super::clone_into::Cloned;
use super::supervisor::Group;
use crate::exit::{self, Coded};

/// Forces a boundary: `cgroup`, `session` or `group` (for tests, and for jobs that
/// must not be confined more strictly). Not inherited by the command.
pub const VARIABLE: &str = "GCSLOCK_BOUNDARY";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cgroup,
    Session,
    Group,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Session => "session",
            Self::Group => "group",
        }
    }
}

/// The boundary `GCSLOCK_BOUNDARY` asks for; `None` for the strongest available.
pub fn requested() -> Result<Option<Kind>, Coded> {
    let Some(value) = std::env::var_os(VARIABLE) else {
        return Ok(None);
    };
    match value.to_str() {
        Some("") => Ok(None),
        Some("cgroup") => Ok(Some(Kind::Cgroup)),
        Some("session") => Ok(Some(Kind::Session)),
        Some("group") => Ok(Some(Kind::Group)),
        _ => Err(Coded::new(
            exit::USAGE,
            format!(
                "{VARIABLE}={} is not a boundary: cgroup, session or group",
                value.to_string_lossy()
            ),
        )),
    }
}

/// Who chose a boundary's kind, named when that kind is not available.
#[derive(Clone, Copy, Debug)]
enum Asker {
    Variable,
    FirstTerm,
}

/// The command cannot start: the boundary `asker` chose is not available.
fn unavailable(kind: Kind, asker: Asker, reason: &str) -> Coded {
    let chosen = match asker {
        Asker::Variable => format!("{VARIABLE}={} asks for", kind.name()),
        Asker::FirstTerm => format!(
            "every term uses its first term's boundary, {}, which is",
            kind.name()
        ),
    };
    Coded::new(
        exit::CANNOT_EXECUTE,
        format!("{chosen} a boundary that is not available: {reason}; the command was not started"),
    )
}

/// A boundary made ready before the command starts (and before the watchdog is
/// forked, which takes its descriptors along).
#[derive(Debug)]
pub enum Prepared {
    Cgroup(Cgroup),
    /// `/proc`, for the scans.
    Session(OwnedFd),
    Group(OwnedFd),
}

impl Prepared {
    /// The boundary asked for (`GCSLOCK_BOUNDARY`), or the strongest available; the
    /// reason when a stronger one was not.
    pub fn new(requested: Option<Kind>) -> Result<(Self, Option<String>), Coded> {
        Self::prepare(requested, Asker::Variable)
    }

    /// A boundary of `kind` again: `elect`'s later terms use the kind of its first,
    /// which the lock records.
    pub fn again(kind: Kind) -> Result<Self, Coded> {
        Self::prepare(Some(kind), Asker::FirstTerm).map(|(prepared, _)| prepared)
    }

    fn prepare(requested: Option<Kind>, asker: Asker) -> Result<(Self, Option<String>), Coded> {
        let proc = |kind: Kind| {
            procfs::open_proc()
                .map_err(|error| unavailable(kind, asker, &format!("cannot open /proc: {error}")))
        };
        match requested {
            Some(Kind::Cgroup) => Cgroup::create()
                .map(|cgroup| (Self::Cgroup(cgroup), None))
                .map_err(|reason| unavailable(Kind::Cgroup, asker, &reason)),
            Some(Kind::Session) => Ok((Self::Session(proc(Kind::Session)?), None)),
            Some(Kind::Group) => Ok((Self::Group(proc(Kind::Group)?), None)),
            None => match Cgroup::create() {
                Ok(cgroup) => Ok((Self::Cgroup(cgroup), None)),
                Err(reason) => match procfs::open_proc() {
                    Ok(proc) => Ok((Self::Session(proc), Some(reason))),
                    Err(error) => Err(Coded::new(
                        exit::CANNOT_EXECUTE,
                        format!(
                            "no boundary is available: no cgroup ({reason}), and cannot open \
                             /proc: {error}; the command was not started"
                        ),
                    )),
                },
            },
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Cgroup(_) => Kind::Cgroup,
            Self::Session(_) => Kind::Session,
            Self::Group(_) => Kind::Group,
        }
    }
}

/// The command's own process: spawned by std's `Command`, or cloned straight into
/// its cgroup (`clone_into`).
pub enum Leader {
    Spawned(Child),
    Cloned(Cloned),
}

impl Leader {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Self::Spawned(child) => child.wait().await,
            Self::Cloned(cloned) => cloned.wait().await,
        }
    }
}

/// The running command and its boundary.
pub struct Boundary {
    leader: Leader,
    pid: Pid,
    prepared: Prepared,
    name: String,
}

impl Boundary {
    pub fn new(leader: Leader, pid: Pid, prepared: Prepared) -> Self {
        let name = match &prepared {
            Prepared::Cgroup(cgroup) => format!("cgroup {}", cgroup.path().display()),
            Prepared::Session(_) => format!("session {pid}"),
            Prepared::Group(_) => format!("process group {pid}"),
        };
        Self {
            leader,
            pid,
            prepared,
            name,
        }
    }

    /// The command's pid (also its session or process group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn kind(&self) -> Kind {
        self.prepared.kind()
    }

    /// Removes what the boundary left on the system (the cgroup), once nothing of it
    /// runs.
    pub fn remove(&self) {
        if let Prepared::Cgroup(cgroup) = &self.prepared {
            if let Err(error) = cgroup.remove() {
                tracing::warn!("cannot remove {}: {error}", self.name);
            }
        }
    }

    fn membership(&self) -> Option<Membership> {
        match self.prepared {
            Prepared::Cgroup(_) => None,
            Prepared::Session(_) => Some(Membership::Session(self.pid.as_raw())),
            Prepared::Group(_) => Some(Membership::ProcessGroup(self.pid.as_raw())),
        }
    }
}

impl Group for Boundary {
    fn name(&self) -> &str {
        &self.name
    }

    fn signal(&self, signal: Signal) {
        let sent = match (&self.prepared, self.membership()) {
            (Prepared::Cgroup(cgroup), _) => cgroup.signal(signal),
            (Prepared::Group(_), _) => match killpg(self.pid, signal) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(error) => Err(error.into()),
            },
            (Prepared::Session(proc), Some(membership)) => {
                procfs::for_each_member(proc.as_fd(), membership, |pid, _| {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
                })
            }
            (Prepared::Session(_), None) => Ok(()),
        };
        if let Err(error) = sent {
            tracing::warn!(
                "cannot send {signal} to the command's {}: {error}",
                self.name
            );
        }
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.leader.wait().await
    }

    fn alive(&self) -> bool {
        let alive = match (&self.prepared, self.membership()) {
            (Prepared::Cgroup(cgroup), _) => cgroup.populated(),
            (Prepared::Group(proc), Some(membership)) => {
                reap_group(self.pid);
                // ESRCH: no member at all. EPERM: the id now names someone else's group.
                if killpg(self.pid, None).is_err() {
                    return false;
                }
                procfs::any_member_runs(proc.as_fd(), membership)
            }
            (Prepared::Session(proc), Some(membership)) => {
                procfs::any_member_runs(proc.as_fd(), membership)
            }
            (_, None) => Ok(false),
        };
        alive.unwrap_or_else(|error| {
            tracing::warn!(
                "cannot tell whether the command's {} still runs ({error}); assuming it does",
                self.name
            );
            true
        })
    }
}

/// Reaps the group's zombies that are our children: orphans re-parented to gcslock
/// when it runs as PID 1 (zombies never count as running, so this only tidies up).
fn reap_group(pgid: Pid) {
    while let Ok(status) = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before, a later term of `elect` whose boundary had become unavailable was
    /// blamed on GCSLOCK_BOUNDARY, even when the variable was unset.
    #[test]
    fn an_unavailable_boundary_names_who_chose_it() {
        let by_variable = unavailable(Kind::Cgroup, Asker::Variable, "gone").message;
        assert_eq!(
            by_variable,
            "GCSLOCK_BOUNDARY=cgroup asks for a boundary that is not available: gone; the \
             command was not started"
        );
        let by_first_term = unavailable(Kind::Cgroup, Asker::FirstTerm, "gone").message;
        assert!(!by_first_term.contains(VARIABLE), "{by_first_term}");
        assert!(
            by_first_term.starts_with("every term uses its first term's boundary, cgroup,"),
            "{by_first_term}"
        );
    }
}
