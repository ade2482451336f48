//! The prepare/commit pattern: a long, discardable preparation under the lease,
//! then a short commit that runs only after a final validity check.
//!
//! Runs against any lock URL (GCS, or an emulator via STORAGE_EMULATOR_HOST):
//!
//! ```text
//! cargo run --example prepare_commit -- gs://BUCKET/jobs/report
//! ```
//!
//! Without an argument it runs on the in-memory backend (`memory://example/...`), so
//! it works anywhere. Any lock URL works: `gcslock::backend::open` is the one way
//! from a URL to a backend, for the command line too.

use std::time::Duration;

use gcslock::backend::{open, OpenOptions};
use gcslock::{Lock, LockOptions, Wait};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://example/jobs/report".to_owned());
    let (backend, object) = open(&url, &OpenOptions::default())?;
    let lock = Lock::new(
        backend,
        &object,
        LockOptions::default().ttl(Duration::from_secs(60)),
    )?;

    let guard = lock.acquire(Wait::For(Duration::from_secs(30))).await?;
    println!(
        "acquired {} with fencing token {}",
        lock.url(),
        guard.token()
    );

    // Prepare: long and discardable. Stop as soon as the lease is lost.
    let prepared = tokio::select! {
        report = prepare() => report,
        reason = guard.lost() => anyhow::bail!("lease lost while preparing: {reason}"),
    };

    // Commit: short, and only with at least 10 s of lease left. Pass the token to
    // whatever the commit writes to, so it can reject a stale holder.
    guard.commit(Duration::from_secs(10), |token| {
        println!("committing {} bytes with token {token}", prepared.len());
    })?;

    guard.release().await?;
    println!("released");
    Ok(())
}

async fn prepare() -> String {
    tokio::time::sleep(Duration::from_millis(200)).await;
    "report contents".repeat(10)
}
