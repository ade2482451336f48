//! 1. Requests per operation, counted by the emulator (diff of `/_strict/stats`
//!    around each operation) and cross-checked with the counting wrapper.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use gcslock::backend::{Backend, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Lock, LockOptions, Wait};
use tokio::time::Instant;

use crate::counting::{Counter, Op};
use crate::emulator::{Emulator, Stats};
use crate::report::{table, Config, Report};

/// Runs `operation` and returns its value and the requests the emulator saw meanwhile.
pub(crate) async fn counted<T, E>(
    emulator: &Emulator,
    operation: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<(T, Stats)>
where
    E: Into<anyhow::Error>,
{
    let before = emulator.stats().await?;
    let value = operation.await.map_err(Into::into)?;
    let after = emulator.stats().await?;
    Ok((value, after.since(&before)))
}

/// What a holder's keep-alive sends for (at least) three refreshes every `interval`
/// from now: the emulator's counts and the refreshes the wrapper saw.
pub(crate) async fn three_refreshes(
    emulator: &Emulator,
    counting: &Counter,
    interval: Duration,
) -> Result<(Stats, u64)> {
    let before = emulator.stats().await?;
    let updates_before = counting.count(Op::UpdateMetadata);
    let hang_guard = Instant::now() + Duration::from_secs(30);
    while counting.count(Op::UpdateMetadata) < updates_before + 3 && Instant::now() < hang_guard {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The third refresh has been sent; wait for its answer, well before the fourth.
    tokio::time::sleep(interval / 4).await;
    let refresh = emulator.stats().await?.since(&before);
    Ok((refresh, counting.count(Op::UpdateMetadata) - updates_before))
}

fn options(identity: &str) -> LockOptions {
    LockOptions::default()
        .ttl(Duration::from_secs(60))
        .identity(identity)
}

/// A lock record as a holder that crashed right after acquiring would leave it.
fn crashed_holder(ttl: Duration, token: u64) -> LockRecord {
    LockRecord {
        state: LockState::Held,
        token,
        holder: "crashed-holder:1".into(),
        nonce: "0".repeat(32),
        ttl: ttl.into(),
        refresh_seq: 0,
        completed: None,
    }
}

pub async fn run(emulator: &Emulator, config: &Config, report: &mut Report) -> Result<()> {
    eprintln!("== 1. requests per operation");
    let gcs: Arc<dyn Backend> = Arc::new(emulator.backend()?);
    gcs.read("counts/warm-up").await?; // opens the connection
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |op: &str, stats: &Stats, expected: &str, note: String| {
        rows.push(vec![
            op.to_owned(),
            stats.breakdown(),
            stats.total().to_string(),
            stats.mutations_applied.to_string(),
            expected.to_owned(),
            note,
        ]);
    };

    // Acquire a brand-new name, release it, acquire the released name.
    let lock = Lock::new(Arc::clone(&gcs), "counts/lock", options("bench-counts"))?;
    let (guard, new) = counted(emulator, lock.acquire(Wait::No)).await?;
    row(
        "acquire, brand-new name",
        &new,
        "2 (GET 404 + POST)",
        String::new(),
    );
    let ((), release) = counted(emulator, guard.release()).await?;
    row("release (tombstone PATCH)", &release, "1", String::new());
    let (guard, released) = counted(emulator, lock.acquire(Wait::No)).await?;
    let token = guard.token().value();
    row(
        "acquire, released name",
        &released,
        "2 (GET + POST)",
        format!("token {token}: the counter survived the release"),
    );
    guard.release().await?;
    report.check(
        "uncontended acquire (new name) = GET + POST",
        new.method("GET") == 1 && new.method("POST") == 1 && new.total() == 2,
        new.breakdown(),
    );
    report.check(
        "uncontended acquire (released name) = GET + POST",
        released.method("GET") == 1 && released.method("POST") == 1 && released.total() == 2,
        released.breakdown(),
    );
    report.check(
        "release = 1 PATCH",
        release.method("PATCH") == 1 && release.total() == 1,
        release.breakdown(),
    );
    report.check(
        "fencing token grows across a release",
        token == 2,
        format!("second holder's token {token}"),
    );

    // Refresh: a short interval; count requests against the refreshes the lease made.
    let counting = Counter::wrap(Arc::clone(&gcs));
    let interval = Duration::from_millis(500);
    let lock = Lock::new(
        counting.clone(),
        "counts/refresh",
        options("bench-refresh").refresh_interval(interval),
    )?;
    let guard = lock.acquire(Wait::No).await?;
    let (refresh, refreshes) = three_refreshes(emulator, &counting, interval).await?;
    guard.release().await?;
    row(
        &format!(
            "refresh x{refreshes} (interval {} ms, jittered early)",
            interval.as_millis()
        ),
        &refresh,
        "1 per refresh",
        format!("{refreshes} refreshes by the lease's own count"),
    );
    report.check(
        "refresh = 1 PATCH",
        refreshes >= 1 && refresh.method("PATCH") == refreshes && refresh.total() == refreshes,
        format!("{} for {refreshes} refreshes", refresh.breakdown()),
    );

    // Stale takeover of an already-stale lock (a holder that crashed).
    let stale_ttl = Duration::from_secs(1);
    let waiter_options = || {
        LockOptions::default()
            .ttl(Duration::from_secs(8)) // margin 800 ms
            .identity("bench-takeover")
    };
    gcs.write(
        "counts/stale",
        WriteCondition::DoesNotExist,
        &crashed_holder(stale_ttl, 7).to_metadata(),
    )
    .await?;
    // Stale by the server's clock: updated + TTL (1 s) + margin (0.8 s), with `Date`
    // in whole seconds.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let lock = Lock::new(Arc::clone(&gcs), "counts/stale", waiter_options())?;
    let (guard, takeover) = counted(emulator, lock.acquire(Wait::No)).await?;
    let token = guard.token().value();
    guard.release().await?;
    row(
        "stale takeover (lock already stale)",
        &takeover,
        "<= 3",
        format!("token 7 -> {token}"),
    );
    report.check(
        "stale takeover <= 3 requests",
        takeover.total() <= 3 && takeover.method("POST") == 1,
        takeover.breakdown(),
    );
    report.check(
        "takeover continues the token",
        token == 8,
        format!("token {token}"),
    );

    // A waiter that starts while the crashed holder's lease is still fresh.
    gcs.write(
        "counts/stale-wait",
        WriteCondition::DoesNotExist,
        &crashed_holder(stale_ttl, 1).to_metadata(),
    )
    .await?;
    let lock = Lock::new(Arc::clone(&gcs), "counts/stale-wait", waiter_options())?;
    let started = Instant::now();
    let (guard, waited) =
        counted(emulator, lock.acquire(Wait::For(Duration::from_secs(20)))).await?;
    let took = started.elapsed();
    guard.release().await?;
    row(
        "takeover after waiting out a crashed holder (TTL 1 s)",
        &waited,
        "GETs while fresh, 1 POST",
        format!("took {} ms from the crash", took.as_millis()),
    );
    report.check(
        "waiting out a crashed holder writes once",
        waited.method("POST") == 1 && waited.method("PATCH") == 0,
        waited.breakdown(),
    );

    // One waiter polling a live holder: no writes until the holder releases.
    let holder_backend = Counter::wrap(Arc::clone(&gcs));
    let waiter_backend = Counter::wrap(Arc::clone(&gcs));
    let holder = Lock::new(
        holder_backend.clone(),
        "counts/wait",
        options("bench-holder"),
    )?;
    let waiter = Lock::new(
        waiter_backend.clone(),
        "counts/wait",
        options("bench-waiter"),
    )?;
    let held = holder.acquire(Wait::No).await?;
    let start = emulator.stats().await?;
    let holder_updates = holder_backend.count(Op::UpdateMetadata);
    let waiting_since = Instant::now();
    let waiting = tokio::spawn(async move { waiter.acquire(Wait::Forever).await });
    tokio::time::sleep(config.wait_period).await;
    // The holder may refresh during the wait (its first refresh falls 3.75..7.5 s after
    // the acquire). Its count is read after the emulator's, so it covers every holder
    // PATCH the emulator saw; the waiter's own writes come from its counting wrapper.
    let during = emulator.stats().await?.since(&start);
    let waited_for = waiting_since.elapsed();
    let holder_refreshes = holder_backend.count(Op::UpdateMetadata) - holder_updates;
    let waiter_own_writes = waiter_backend.count(Op::Write)
        + waiter_backend.count(Op::UpdateMetadata)
        + waiter_backend.count(Op::Delete);
    let released_at = Instant::now();
    held.release().await?;
    let guard = waiting.await.context("waiter task")??;
    let handoff = released_at.elapsed();
    let total = emulator.stats().await?.since(&start);
    guard.release().await?;
    let waiter_writes_while_held = during.method("POST")
        + during.method("DELETE")
        + during.method("PATCH").saturating_sub(holder_refreshes);
    row(
        &format!(
            "waiter polling a live holder for {:.1} s",
            waited_for.as_secs_f64()
        ),
        &during,
        "GETs only, 0 writes",
        format!(
            "{:.2} GET/s; mutations applied {} (holder refreshes {holder_refreshes})",
            during.method("GET") as f64 / waited_for.as_secs_f64(),
            during.mutations_applied
        ),
    );
    row(
        "... then until it acquired after the release",
        &total,
        "GETs + 1 POST (+ holder's release PATCH)",
        format!(
            "waiter: {} GET, {} POST; acquired {} ms after release() began",
            waiter_backend.count(Op::Read),
            waiter_backend.count(Op::Write),
            handoff.as_millis()
        ),
    );
    report.check(
        "no writes while the holder is alive",
        waiter_writes_while_held == 0
            && waiter_own_writes == 0
            && during.mutations_applied <= holder_refreshes
            && waiter_backend.count(Op::Write) == 1,
        format!(
            "{} during the wait, holder refreshes {holder_refreshes}, waiter writes during the wait \
             {waiter_own_writes}, in total {}",
            during.breakdown(),
            waiter_backend.count(Op::Write)
        ),
    );

    report.headline(
        "1",
        "requests: uncontended acquire (new / released name)",
        format!("{} / {}", new.total(), released.total()),
        "issue target 1",
        "misses by design: inspect GET + conditional POST (tombstone keeps the token)",
    );
    report.headline(
        "1",
        "requests: release / refresh",
        format!(
            "{} / {:.0}",
            release.total(),
            refresh.total() as f64 / refreshes.max(1) as f64
        ),
        "1 / 1",
        "ok",
    );
    report.headline(
        "1",
        "requests: stale takeover",
        takeover.total().to_string(),
        "<= 3",
        "ok",
    );
    report.headline(
        "1",
        "waiter: writes while the holder is alive",
        format!(
            "{waiter_writes_while_held} writes, {} GETs in {:.1} s",
            during.method("GET"),
            waited_for.as_secs_f64()
        ),
        "0 writes",
        if waiter_writes_while_held == 0 {
            "ok"
        } else {
            "FAILED"
        },
    );

    report.section(
        "1. Requests per operation (counted by strict-gcs, `/_strict/stats` diff)",
        table(
            &[
                "operation",
                "requests",
                "total",
                "mutations applied",
                "expected",
                "note",
            ],
            &rows,
        ),
    );
    Ok(())
}
