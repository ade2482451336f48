//! The command's own cgroup v2: a child of the cgroup gcslock runs in, which no
//! process can leave by changing its session or process group. The command joins it
//! before it executes; `cgroup.kill` stops all of it at once and `cgroup.events`
//! says when nothing of it is left.
//!
//! The cgroup2 hierarchy is found in /proc/self/mountinfo (it need not be at
//! /sys/fs/cgroup: hybrid systems mount it at /sys/fs/cgroup/unified), gcslock's own
//! cgroup in the `0::` line of /proc/self/cgroup. Under systemd, gcslock uses its
//! cgroup only if the unit that owns it was delegated (`Delegate=yes`, which systemd
//! marks with the `trusted.delegate` or `user.delegate` attribute); otherwise the
//! cgroup is systemd's and the caller falls back to the session.
//!
//! Everything the watchdog calls after gcslock died (`kill_all`, `populated`,
//! `remove_at`) is async-signal-safe: system calls on descriptors opened beforehand,
//! buffers on the stack.

use std::ffi::{CStr, CString};
use std::fs::OpenOptions;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rustix::fs::{
    openat, seek, unlinkat, AtFlags, FileType, FlockOperation, Mode, OFlags, RawDir, SeekFrom,
};

use super::procfs::parse_id;

/// The command's cgroup, created and ready for the command to join.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// The cgroup gcslock runs in, and the name of ours in it, for `rmdir`.
    parent: OwnedFd,
    name: CString,
    /// The cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`.
    directory: OwnedFd,
    /// `cgroup.procs`, open for writing: the command writes `0` to it to join
    /// where it cannot be cloned into the cgroup.
    procs: OwnedFd,
    /// `cgroup.kill` (Linux 5.14 and later).
    kill: Option<OwnedFd>,
    /// `cgroup.procs` open for reading, to kill what it lists.
    listed: OwnedFd,
    events: OwnedFd,
}

impl Cgroup {
    /// Creates the command's cgroup under gcslock's own; the reason if there is no
    /// cgroup v2 gcslock may write to.
    pub fn create() -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
        let membership = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let own = own_cgroup(&membership).ok_or("gcslock is in no cgroup v2 (no 0:: line)")?;
        let parent_path = locate(&mountinfo, own).ok_or_else(|| {
            format!("no cgroup v2 hierarchy that holds gcslock's cgroup {own} is mounted")
        })?;
        if let Some(unit) = systemd_unit(&parent_path) {
            if !delegated(&unit) {
                return Err(format!(
                    "gcslock runs in the cgroup of systemd unit {}, which is not delegated to it \
                     (Delegate=yes)",
                    unit.display()
                ));
            }
        }
        // Moving a process needs write access to cgroup.procs of the common ancestor,
        // which is gcslock's own cgroup.
        rustix::fs::access(
            parent_path.join("cgroup.procs"),
            rustix::fs::Access::WRITE_OK,
        )
        .map_err(|error| {
            format!(
                "cannot move processes out of {}: {error}",
                parent_path.display()
            )
        })?;
        let parent = openat(rustix::fs::CWD, &parent_path, DIRECTORY, Mode::empty())
            .map_err(|error| format!("cannot open {}: {error}", parent_path.display()))?;
        let (name, path, directory) = make_child(&parent, &parent_path)?;
        let (procs, kill, listed, events) = match Self::open_files(&path) {
            Ok(files) => files,
            Err(error) => {
                let _ = unlinkat(&parent, name.as_c_str(), AtFlags::REMOVEDIR);
                return Err(format!(
                    "cannot open the files of {}: {error}",
                    path.display()
                ));
            }
        };
        Ok(Self {
            path,
            parent,
            name,
            directory,
            procs,
            kill,
            listed,
            events,
        })
    }

    #[allow(clippy::type_complexity)]
    fn open_files(path: &Path) -> io::Result<(OwnedFd, Option<OwnedFd>, OwnedFd, OwnedFd)> {
        let write = |file: &str| {
            OpenOptions::new()
                .write(true)
                .open(path.join(file))
                .map(OwnedFd::from)
        };
        let procs = write("cgroup.procs")?;
        let kill = match write("cgroup.kill") {
            Ok(kill) => Some(kill),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let listed = std::fs::File::open(path.join("cgroup.procs"))?.into();
        let events = std::fs::File::open(path.join("cgroup.events"))?.into();
        Ok((procs, kill, listed, events))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's directory, for the command to be cloned into.
    pub fn directory(&self) -> BorrowedFd<'_> {
        self.directory.as_fd()
    }

    /// `cgroup.procs`, for the command to join by writing `0` before it executes.
    pub fn procs(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// What the watchdog needs to stop and remove the cgroup on its own.
    pub fn handles(&self) -> Handles<'_> {
        Handles {
            parent: self.parent.as_fd(),
            name: &self.name,
            kill: self.kill.as_ref().map(AsFd::as_fd),
            listed: self.listed.as_fd(),
            events: self.events.as_fd(),
        }
    }

    /// Sends `signal` to every process in the cgroup (SIGKILL: see
    /// [`Handles::kill_all`]).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if signal == Signal::SIGKILL {
            return self.handles().kill_all();
        }
        signal_listed(self.listed.as_fd(), signal)
    }

    pub fn populated(&self) -> io::Result<bool> {
        self.handles().populated()
    }

    /// Removes the (empty) cgroup and any cgroups nested in it, such as those of a
    /// `gcslock run` inside the command that was killed before it could remove its own.
    pub fn remove(&self) -> io::Result<()> {
        self.handles().remove()
    }
}

const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// How deep `remove` follows cgroups nested in the command's.
const NESTING: u32 = 8;

/// The command's cgroup as descriptors (no path lookups, no allocation).
#[derive(Clone, Copy, Debug)]
pub struct Handles<'a> {
    pub parent: BorrowedFd<'a>,
    pub name: &'a CStr,
    /// `cgroup.kill`, on kernels that have it.
    pub kill: Option<BorrowedFd<'a>>,
    /// `cgroup.procs`, open for reading.
    pub listed: BorrowedFd<'a>,
    pub events: BorrowedFd<'a>,
}

impl Handles<'_> {
    /// SIGKILL to every process in the cgroup: `cgroup.kill` if the kernel has it,
    /// which also reaches a process in the middle of a fork, and to each pid that
    /// `cgroup.procs` lists, as `cgroup.kill` misses a process whose main thread has
    /// exited while its other threads run (measured on Linux 6.18). One round: call
    /// until the cgroup is empty.
    pub fn kill_all(&self) -> io::Result<()> {
        let killed = self.kill.map(|kill| write_all(kill, b"1"));
        signal_listed(self.listed, Signal::SIGKILL)?;
        killed.unwrap_or(Ok(()))
    }

    pub fn populated(&self) -> io::Result<bool> {
        populated(self.events)
    }

    /// See [`Cgroup::remove`].
    pub fn remove(&self) -> io::Result<()> {
        remove_at(self.parent, self.name, NESTING)
    }
}

/// `signal` to every pid a `cgroup.procs` lists.
fn signal_listed(procs: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    for_each_pid(procs, |pid| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    })
}

fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    loop {
        match rustix::io::write(fd, bytes) {
            Ok(written) if written == bytes.len() => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `cgroup.events` says `populated 1`: a live process in the cgroup or
/// below (zombies do not count).
pub fn populated(events: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buffer = [0u8; 256];
    let length = read_at_start(events, &mut buffer)?;
    let text = buffer.get(..length).unwrap_or_default();
    text.split(|&byte| byte == b'\n')
        .find_map(|line| line.strip_prefix(b"populated "))
        .map(|value| value != b"0")
        .ok_or_else(|| io::Error::other("cgroup.events has no populated line"))
}

fn read_at_start(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::pread(fd, &mut *buffer, 0) {
            Ok(length) => return Ok(length),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Calls `visit` with every pid listed in a `cgroup.procs` open for reading.
/// Allocates nothing.
pub fn for_each_pid(procs: BorrowedFd<'_>, mut visit: impl FnMut(i32)) -> io::Result<()> {
    seek(procs, SeekFrom::Start(0))?;
    let mut buffer = [0u8; 1024];
    // A pid cut at the end of one read continues in the next.
    let mut pending = [0u8; 12];
    let mut pending_length = 0usize;
    loop {
        let length = match rustix::io::read(procs, &mut buffer) {
            Ok(0) => break,
            Ok(length) => length,
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        };
        for &byte in buffer.get(..length).unwrap_or_default() {
            if byte == b'\n' {
                if let Some(pid) = pending.get(..pending_length).and_then(parse_id) {
                    visit(pid);
                }
                pending_length = 0;
            } else if let Some(slot) = pending.get_mut(pending_length) {
                *slot = byte;
                pending_length = pending_length.saturating_add(1);
            }
        }
    }
    if let Some(pid) = pending.get(..pending_length).and_then(parse_id) {
        visit(pid);
    }
    Ok(())
}

/// `rmdir` of `name` in `parent`, first of the cgroups nested in it (at most `depth`
/// levels down). Allocates nothing.
pub fn remove_at(parent: BorrowedFd<'_>, name: &CStr, depth: u32) -> io::Result<()> {
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::BUSY | rustix::io::Errno::NOTEMPTY) if depth > 0 => {}
        Err(error) => return Err(error.into()),
    }
    let directory = openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buffer = [MaybeUninit::<u8>::uninit(); 1024];
    let mut entries = RawDir::new(&directory, &mut buffer);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let child = entry.file_name();
        if entry.file_type() == FileType::Directory && !matches!(child.to_bytes(), b"." | b"..") {
            remove_at(directory.as_fd(), child, depth.saturating_sub(1))?;
        }
    }
    Ok(unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

/// Creates `gcslock-run-PID` (or `-PID-N` if taken) under `parent`, after removing
/// the empty ones whose gcslock is gone (killed together with its watchdog).
fn make_child(parent: &OwnedFd, parent_path: &Path) -> Result<(CString, PathBuf, OwnedFd), String> {
    remove_stale(parent, parent_path);
    let pid = std::process::id();
    let cannot = |error: rustix::io::Errno| {
        format!(
            "cannot create a cgroup in {}: {error}",
            parent_path.display()
        )
    };
    for attempt in 0..100u32 {
        let name = match attempt {
            0 => format!("gcslock-run-{pid}"),
            n => format!("gcslock-run-{pid}-{n}"),
        };
        let name = CString::new(name).map_err(|error| error.to_string())?;
        match rustix::fs::mkdirat(parent, name.as_c_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => continue,
            Err(error) => return Err(cannot(error)),
        }
        let directory =
            openat(parent, name.as_c_str(), DIRECTORY, Mode::empty()).map_err(cannot)?;
        // The lock says "in use" to every other gcslock, whatever PID namespace it
        // sees (`remove_stale`): the cgroup may stay empty while the lock is waited
        // for. Held while any copy of the descriptor is open (the watchdog's too).
        // Lost to a remover between mkdir and here: take another name.
        if rustix::fs::flock(&directory, FlockOperation::NonBlockingLockExclusive).is_err()
            || rustix::fs::statat(&directory, "cgroup.procs", AtFlags::empty()).is_err()
        {
            continue;
        }
        let path = parent_path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        return Ok((name, path, directory));
    }
    Err(format!(
        "cannot create a cgroup in {}: every name is taken",
        parent_path.display()
    ))
}

/// Removes `gcslock-run-PID[-N]` cgroups under `parent` whose gcslock (PID) no
/// longer exists and in which nothing runs.
fn remove_stale(parent: &OwnedFd, parent_path: &Path) {
    let Ok(entries) = std::fs::read_dir(parent_path) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix("gcslock-run-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| parse_id(pid.as_bytes()))
        else {
            continue;
        };
        // A PID seen from another PID namespace may look gone: the owner's lock
        // (`make_child`) is what tells, the PID only for versions without it.
        let owner_gone =
            nix::sys::signal::kill(Pid::from_raw(owner), None) == Err(nix::errno::Errno::ESRCH);
        let empty = std::fs::read(entry.path().join("cgroup.events"))
            .is_ok_and(|events| events.windows(11).any(|line| line == b"populated 0"));
        let Ok(name) = CString::new(name.as_bytes()) else {
            continue;
        };
        if owner_gone && empty {
            let unowned =
                openat(parent, name.as_c_str(), DIRECTORY, Mode::empty()).and_then(|directory| {
                    rustix::fs::flock(&directory, FlockOperation::NonBlockingLockExclusive)
                        .map(|()| directory)
                });
            // Removed while locked, so that no one takes it in between.
            if let Ok(_locked) = unowned {
                let _ = remove_at(parent.as_fd(), &name, NESTING);
            }
        }
    }
}

/// gcslock's cgroup v2 path, from the `0::` line of /proc/self/cgroup.
fn own_cgroup(membership: &str) -> Option<&str> {
    membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
}

/// The directory of `cgroup` (a path in the cgroup v2 hierarchy) in the first
/// cgroup2 mount that shows it.
fn locate(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = unescape(fields.nth(3)?);
        let mount_point = unescape(fields.next()?);
        let below = if root == "/" {
            cgroup.trim_start_matches('/')
        } else {
            let rest = cgroup.strip_prefix(root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest.trim_start_matches('/')
        };
        Some(Path::new(&mount_point).join(below))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let octal = bytes
            .get(index.saturating_add(1)..index.saturating_add(4))
            .filter(|digits| byte == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(value) => {
                out.push(value);
                index = index.saturating_add(4);
            }
            None => {
                out.push(byte);
                index = index.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup of the innermost systemd unit (service or scope) that `path` is in.
fn systemd_unit(path: &Path) -> Option<PathBuf> {
    let mut unit = None;
    let mut walked = PathBuf::new();
    for component in path.components() {
        walked.push(component);
        let name = component.as_os_str().as_bytes();
        if name.ends_with(b".service") || name.ends_with(b".scope") {
            unit = Some(walked.clone());
        }
    }
    unit
}

/// Whether systemd delegated this unit's cgroup (it sets the attribute for
/// `Delegate=yes` since version 251).
fn delegated(unit: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        rustix::fs::getxattr(unit, *name, &mut value)
            .is_ok_and(|length| value.get(..length) == Some(b"1".as_slice()))
    })
}

/// For tests that need a cgroup and got `error` instead: only a machine where we
/// are not root may lack one (CI runs as root on cgroup v2, and must test it).
#[cfg(test)]
pub fn skip_without_cgroup(error: &dyn std::fmt::Display) {
    // /proc/self belongs to our effective user.
    let owner = std::fs::metadata("/proc/self").expect("/proc/self");
    let root = std::os::unix::fs::MetadataExt::uid(&owner) == 0;
    assert!(!root, "running as root, yet no cgroup: {error}");
    eprintln!("no writable cgroup v2 here: {error}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";

    #[test]
    fn the_cgroup2_mount_is_found_wherever_it_is() {
        assert_eq!(
            locate(HYBRID, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/"))
        );
        assert_eq!(
            locate(HYBRID, "/jobs/a"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/jobs/a"))
        );
        assert_eq!(locate("42 31 0:39 / /x rw - cgroup cgroup rw", "/"), None);
    }

    #[test]
    fn a_mount_of_a_subtree_serves_only_cgroups_below_it() {
        let container = "50 40 0:30 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(
            locate(container, "/docker/abc/job"),
            Some(PathBuf::from("/sys/fs/cgroup/job"))
        );
        assert_eq!(locate(container, "/docker/abcdef"), None);
        assert_eq!(locate(container, "/other"), None);
        let spaced = r"50 40 0:30 / /mnt/my\040cgroups rw - cgroup2 none rw";
        assert_eq!(
            locate(spaced, "/a"),
            Some(PathBuf::from("/mnt/my cgroups/a"))
        );
    }

    #[test]
    fn the_v2_line_of_proc_self_cgroup_names_our_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/\n";
        assert_eq!(own_cgroup(hybrid), Some("/"));
        assert_eq!(
            own_cgroup("0::/system.slice/cron.service\n"),
            Some("/system.slice/cron.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn systemd_units_are_found_in_the_path() {
        let path = Path::new("/sys/fs/cgroup/system.slice/cron.service/jobs");
        assert_eq!(
            systemd_unit(path),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/cron.service"))
        );
        let session = Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(systemd_unit(session), Some(session.to_path_buf()));
        assert_eq!(systemd_unit(Path::new("/sys/fs/cgroup/unified/")), None);
    }

    /// Before, an empty cgroup whose owner's PID looked gone was removed: from
    /// another PID namespace (CI's), a live gcslock waiting for its lock with its
    /// cgroup made ready looks gone, and lost its cgroup (exit 126). The owner's
    /// lock keeps it now; once the owner lets go, it is stale and removed.
    #[test]
    fn an_empty_cgroup_is_removed_as_stale_only_when_no_one_holds_it() {
        let ours = match Cgroup::create() {
            Ok(cgroup) => cgroup,
            Err(error) => return skip_without_cgroup(&error),
        };
        let parent_path = ours.path().parent().expect("a parent").to_path_buf();
        // A PID that does not run here, as a live owner in another namespace looks.
        let name = CString::new(format!("gcslock-run-{}", i32::MAX - 7)).expect("name");
        let _ = unlinkat(&ours.parent, name.as_c_str(), AtFlags::REMOVEDIR);
        rustix::fs::mkdirat(&ours.parent, name.as_c_str(), Mode::from_raw_mode(0o755))
            .expect("mkdir");
        let path = parent_path.join(name.to_str().expect("utf-8"));
        let owner = openat(&ours.parent, name.as_c_str(), DIRECTORY, Mode::empty()).expect("open");
        rustix::fs::flock(&owner, FlockOperation::NonBlockingLockExclusive).expect("flock");
        remove_stale(&ours.parent, &parent_path);
        assert!(path.exists(), "a held cgroup was removed as stale");
        drop(owner);
        remove_stale(&ours.parent, &parent_path);
        assert!(
            !path.exists(),
            "an unheld, empty cgroup of a gone PID stays"
        );
        // Our own is held, and its PID runs.
        assert!(ours.path().exists());
        ours.remove().expect("remove");
    }
}
