//! The prepare/commit pattern: a long, discardable preparation under the lease,
//! then a short commit that runs only after a final validity check.
//!
//! Runs against GCS, or an emulator via STORAGE_EMULATOR_HOST:
//!
//! ```text
//! cargo run --example prepare_commit -- gs://BUCKET/jobs/report
//! ```
//!
//! Without an argument it runs on the in-memory backend, so it works anywhere.

use std::sync::Arc;
use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::Backend;
use gcslock::fence::ObjectUrl;
use gcslock::{Lock, LockOptions, Wait};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (backend, object): (Arc<dyn Backend>, String) = match std::env::args().nth(1) {
        Some(url) => {
            let url: ObjectUrl = url.parse()?;
            (
                Arc::new(GcsBackend::builder(url.bucket()).build()?),
                url.object().to_owned(),
            )
        }
        None => (
            Arc::new(MemoryBackend::new("example")),
            "jobs/report".into(),
        ),
    };
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
