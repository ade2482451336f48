//! What the kernel says about this process: CPU time, memory, threads, sockets.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

/// User + system CPU time of this whole process (`getrusage(RUSAGE_SELF)`).
pub fn cpu_time() -> Result<Duration> {
    rusage(UsageWho::RUSAGE_SELF)
}

/// User + system CPU time of the calling thread (`getrusage(RUSAGE_THREAD)`).
pub fn thread_cpu_time() -> Result<Duration> {
    rusage(UsageWho::RUSAGE_THREAD)
}

fn rusage(who: UsageWho) -> Result<Duration> {
    let usage = getrusage(who).context("getrusage")?;
    let to_duration = |t: TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(to_duration(usage.user_time()) + to_duration(usage.system_time()))
}

/// A numeric field of `/proc/self/status`, such as `VmRSS` (kB) or `Threads`.
pub fn proc_status(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if name != field {
                return None;
            }
            value.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// TCP sockets that involve the emulator's port.
#[derive(Clone, Debug, Default)]
pub struct TcpSnapshot {
    /// Local ports of ESTABLISHED connections this process owns to the port.
    pub owned_established: Vec<u16>,
    /// TIME_WAIT sockets whose remote port is the emulator's: connections a
    /// client closed within the last minute (any process; the port is ours alone).
    pub client_time_wait: usize,
    /// TIME_WAIT sockets on the emulator's side: connections the server closed.
    pub server_time_wait: usize,
}

fn socket_inodes() -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

fn port_of(address: &str) -> Option<u16> {
    u16::from_str_radix(address.rsplit(':').next()?, 16).ok()
}

/// Reads `/proc/net/tcp{,6}` for sockets involving `port`; `exclude` lists local
/// ports to leave out of `owned_established`.
pub fn tcp_snapshot(port: u16, exclude: &[u16]) -> Result<TcpSnapshot> {
    const ESTABLISHED: &str = "01";
    const TIME_WAIT: &str = "06";
    let inodes = socket_inodes()?;
    let mut snapshot = TcpSnapshot::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote)) = (port_of(fields[1]), port_of(fields[2])) else {
                continue;
            };
            let state = fields[3];
            let inode: u64 = fields[9].parse().unwrap_or(0);
            if remote == port && state == ESTABLISHED && inodes.contains(&inode) {
                if !exclude.contains(&local) {
                    snapshot.owned_established.push(local);
                }
            } else if remote == port && state == TIME_WAIT {
                snapshot.client_time_wait += 1;
            } else if local == port && state == TIME_WAIT {
                snapshot.server_time_wait += 1;
            }
        }
    }
    snapshot.owned_established.sort_unstable();
    Ok(snapshot)
}

/// `nproc` and the CPU model, for the report header.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}

/// The 1-minute load average, for the report header.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
