//! 7. The semaphore (`--holders N`, PROTOCOL.md §13): requests of an acquire with a
//!    free place, a refresh, a release and a waiter's poll, counted by the emulator
//!    and cross-checked with the counting wrapper.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use gcslock::backend::Backend;
use gcslock::semaphore::Semaphore;
use gcslock::{LockOptions, Wait};
use tokio::time::Instant;

use crate::counting::{Counter, Op};
use crate::counts::{counted, three_refreshes};
use crate::emulator::Emulator;
use crate::report::{table, Config, Report};

const HOLDERS: u32 = 3;

fn semaphore(backend: Arc<dyn Backend>, name: &str, identity: &str) -> Result<Semaphore> {
    let options = LockOptions::default()
        .ttl(Duration::from_secs(60))
        .identity(identity)
        .poll_backoff(Duration::from_millis(250), Duration::from_secs(1));
    Ok(Semaphore::new(backend, name, HOLDERS, options)?)
}

pub async fn run(emulator: &Emulator, config: &Config, report: &mut Report) -> Result<()> {
    eprintln!("== 7. semaphore (--holders {HOLDERS}): requests per operation");
    let gcs: Arc<dyn Backend> = Arc::new(emulator.backend()?);
    gcs.read("semaphore/warm-up").await?; // opens the connection
    let mut rows: Vec<Vec<String>> = Vec::new();

    // Acquire with a free place (a brand-new name), then with a released place.
    let sem = semaphore(Arc::clone(&gcs), "semaphore/acquire", "bench-sem")?;
    let (permit, new) = counted(emulator, sem.acquire(Wait::No)).await?;
    let ((), release) = counted(emulator, permit.release()).await?;
    let (permit, again) = counted(emulator, sem.acquire(Wait::No)).await?;
    permit.release().await?;
    for (what, stats) in [
        ("acquire, free place (new name)", &new),
        ("acquire, released place", &again),
    ] {
        rows.push(vec![
            what.into(),
            stats.breakdown(),
            stats.total().to_string(),
            "3: LIST + POST + LIST (lock's 2 + 1 listing)".into(),
        ]);
        report.check(
            format!("semaphore {what} = LIST + POST + LIST"),
            stats.method("GET") == 2 && stats.method("POST") == 1 && stats.total() == 3,
            stats.breakdown(),
        );
    }
    rows.push(vec![
        "release".into(),
        release.breakdown(),
        release.total().to_string(),
        "1 PATCH".into(),
    ]);
    report.check(
        "semaphore release = 1 PATCH",
        release.method("PATCH") == 1 && release.total() == 1,
        release.breakdown(),
    );

    // Refresh: one PATCH each, as a lock's (each place is a lock).
    let counting = Counter::wrap(Arc::clone(&gcs));
    let interval = Duration::from_millis(500);
    let sem = Semaphore::new(
        counting.clone(),
        "semaphore/refresh",
        HOLDERS,
        LockOptions::default()
            .ttl(Duration::from_secs(60))
            .identity("bench-sem-refresh")
            .refresh_interval(interval),
    )?;
    let permit = sem.acquire(Wait::No).await?;
    let (refresh, refreshes) = three_refreshes(emulator, &counting, interval).await?;
    permit.release().await?;
    rows.push(vec![
        format!("refresh x{refreshes}"),
        refresh.breakdown(),
        refresh.total().to_string(),
        "1 PATCH per refresh".into(),
    ]);
    report.check(
        "semaphore refresh = 1 PATCH",
        refreshes >= 1 && refresh.method("PATCH") == refreshes && refresh.total() == refreshes,
        format!("{} for {refreshes} refreshes", refresh.breakdown()),
    );

    // A waiter while all places are held: one listing per poll, no writes.
    let holders = semaphore(Arc::clone(&gcs), "semaphore/wait", "bench-sem-holder")?;
    let mut held = Vec::new();
    for _ in 0..HOLDERS {
        held.push(holders.acquire(Wait::No).await?);
    }
    let waiter_backend = Counter::wrap(Arc::clone(&gcs));
    let waiter = semaphore(waiter_backend.clone(), "semaphore/wait", "bench-sem-waiter")?;
    let start = emulator.stats().await?;
    let waiting_since = Instant::now();
    let outcome = waiter.acquire(Wait::For(config.wait_period)).await;
    let waited = waiting_since.elapsed();
    let during = emulator.stats().await?.since(&start);
    anyhow::ensure!(
        matches!(outcome, Err(gcslock::Error::Busy { .. })),
        "the waiter should find every place held: {outcome:?}"
    );
    let polls = waiter_backend.count(Op::List);
    let waiter_writes = waiter_backend.count(Op::Write)
        + waiter_backend.count(Op::UpdateMetadata)
        + waiter_backend.count(Op::Delete);
    for permit in held {
        permit.release().await.context("releasing a holder")?;
    }
    rows.push(vec![
        format!(
            "waiter, all {HOLDERS} places held, {:.1} s",
            waited.as_secs_f64()
        ),
        during.breakdown(),
        during.total().to_string(),
        format!(
            "1 LIST per poll, 0 writes: {polls} polls, {:.2} polls/s, {} reads (any PATCH: \
             the holders' own refreshes)",
            polls as f64 / waited.as_secs_f64(),
            waiter_backend.count(Op::Read)
        ),
    ]);
    report.check(
        "semaphore waiter: 1 LIST per poll, no writes while all places are held",
        waiter_writes == 0
            && waiter_backend.count(Op::Read) == 0
            && polls >= 1
            && during.method("POST") == 0,
        format!(
            "{polls} polls, {waiter_writes} writes, {}",
            during.breakdown()
        ),
    );
    report.section(
        format!("Semaphore (--holders {HOLDERS}): requests per operation"),
        format!(
            "Counted by strict-gcs (`/_strict/stats`); a listing is a GET.\n\n{}",
            table(&["operation", "requests", "total", "expected"], &rows)
        ),
    );
    Ok(())
}
