//! Process helpers: signalling process groups and telling when a process is dead.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid <= 1 {
        return; // never the caller's group or every process
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => eprintln!("gcslock-chaos: cannot send {signal} to group {pgid}: {error}"),
    }
}

/// Whether `pid` runs nothing any more: absent, or a zombie.
pub fn is_dead(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) state ...": comm may contain anything, even ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// (pid, state, ppid, pgrp) of every process in /proc.
fn processes() -> Vec<(i32, String, i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.to_owned();
            let ppid = fields.next()?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            Some((pid, state, ppid, pgrp))
        })
        .collect()
}

/// After SIGSTOP to group `pgid`: waits (at most `timeout`) until every member is
/// stopped, then returns the processes its members started outside the group
/// (`gcslock run`'s command runs in its own group). `None` if the group did not
/// stop in time.
pub fn stopped_group_children(pgid: i32, timeout: Duration) -> Option<Vec<i32>> {
    let until = Instant::now() + timeout;
    loop {
        let all = processes();
        let members: Vec<&(i32, String, i32, i32)> = all.iter().filter(|p| p.3 == pgid).collect();
        let stopped = members
            .iter()
            .all(|p| matches!(p.1.as_str(), "T" | "t" | "Z" | "X"));
        if stopped {
            let ids: Vec<i32> = members.iter().map(|p| p.0).collect();
            return Some(
                all.iter()
                    .filter(|p| p.3 != pgid && ids.contains(&p.2))
                    .map(|p| p.0)
                    .collect(),
            );
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until every pid is dead; false if some still runs after `timeout`.
pub fn wait_dead(pids: &[i32], timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&pid| is_dead(pid)) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_dead_from_alive() {
        let me = i32::try_from(std::process::id()).unwrap_or(1);
        assert!(!is_dead(me));
        assert!(is_dead(i32::MAX));
        assert!(wait_dead(&[i32::MAX], Duration::ZERO));
        assert!(!wait_dead(&[me], Duration::from_millis(5)));
    }
}
