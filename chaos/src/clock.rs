//! The one clock every process of a run shares: CLOCK_MONOTONIC, read directly
//! (all processes run on one machine, so their readings are comparable). The wall
//! clock is read only to show that `faketime` really skewed a process.

use anyhow::Context as _;
use nix::time::{clock_gettime, ClockId};

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> anyhow::Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).context("cannot read CLOCK_MONOTONIC")?;
    let secs = u64::try_from(now.tv_sec()).context("CLOCK_MONOTONIC is negative")?;
    let nanos = u64::try_from(now.tv_nsec()).context("CLOCK_MONOTONIC is negative")?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// CLOCK_REALTIME (the wall clock, as this process sees it: faked under faketime)
/// in nanoseconds since the Unix epoch.
pub fn wall_ns() -> anyhow::Result<i64> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME).context("cannot read CLOCK_REALTIME")?;
    Ok(now.tv_sec() * 1_000_000_000 + now.tv_nsec())
}

/// Milliseconds as nanoseconds.
pub const fn ms(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// `+12.345s` relative to `origin`; negative when before it.
pub fn rel(t: u64, origin: u64) -> String {
    if t == u64::MAX {
        return "+inf".to_owned();
    }
    if t >= origin {
        format!("+{:.3}s", (t - origin) as f64 / 1e9)
    } else {
        format!("-{:.3}s", (origin - t) as f64 / 1e9)
    }
}
