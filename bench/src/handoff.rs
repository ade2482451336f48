//! 3. Handoff: from a holder calling `release()` to the next waiter's `acquire()`
//!    returning, with 1, 8 and 64 waiters, for two poll-backoff configurations.
//!
//! Every participant (N waiters + the holder) has its own `GcsBackend`, as separate
//! machines would. A holder holds for `hold`, releases, and waits again only after
//! someone else has acquired, so each release finds exactly N waiters that have
//! been polling for at least `hold`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use gcslock::{Error, Guard, Lock, LockOptions, Wait};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::emulator::Emulator;
use crate::summary::{ms, summarize, Summary};

struct Shared {
    /// When the current holder began `release()`.
    released_at: Mutex<Option<Instant>>,
    samples: Mutex<Vec<Duration>>,
    target: usize,
    hold: Duration,
    acquisitions: watch::Sender<u64>,
    stop: CancellationToken,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn participant(lock: Lock, shared: Arc<Shared>, mut first: Option<Guard>) -> Result<()> {
    let mut acquisitions = shared.acquisitions.subscribe();
    loop {
        let guard = match first.take() {
            Some(guard) => guard,
            None => match lock.acquire(Wait::Forever).cancel_on(&shared.stop).await {
                Ok(guard) => {
                    let now = Instant::now();
                    if let Some(released) = locked(&shared.released_at).take() {
                        locked(&shared.samples).push(now - released);
                    }
                    guard
                }
                Err(Error::Cancelled { .. }) => return Ok(()),
                Err(error) => return Err(error.into()),
            },
        };
        shared.acquisitions.send_modify(|n| *n += 1);
        acquisitions.borrow_and_update();
        if locked(&shared.samples).len() >= shared.target {
            shared.stop.cancel();
            guard.release().await?;
            return Ok(());
        }
        tokio::time::sleep(shared.hold).await;
        *locked(&shared.released_at) = Some(Instant::now());
        guard.release().await?;
        // Wait again only once someone else holds the lock.
        tokio::select! {
            changed = acquisitions.changed() => changed.context("acquisition counter")?,
            () = shared.stop.cancelled() => return Ok(()),
        }
    }
}

/// One handoff configuration's outcome.
pub struct Handoff {
    pub waiters: usize,
    pub handoffs: Summary,
    /// Every handoff time measured, in order.
    pub samples: Vec<Duration>,
    pub seconds: f64,
    pub gets: u64,
    pub writes: u64,
    pub total: u64,
    pub rate_limited: u64,
    pub posts: u64,
    pub precondition_failed: u64,
}

impl Handoff {
    pub fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.seconds
    }
}

/// Runs handoffs until `handoffs` samples, with `waiters` waiters polling with
/// `backoff` (min, max) on lock `name`.
pub async fn measure(
    emulator: &Emulator,
    name: &str,
    waiters: usize,
    backoff: (Duration, Duration),
    hold: Duration,
    handoffs: usize,
) -> Result<Handoff> {
    let options = |i: usize| {
        LockOptions::default()
            .ttl(Duration::from_secs(60))
            .poll_backoff(backoff.0, backoff.1)
            .identity(format!("bench-handoff-{i}"))
    };
    let mut locks = Vec::with_capacity(waiters + 1);
    for i in 0..=waiters {
        locks.push(Lock::new(Arc::new(emulator.backend()?), name, options(i))?);
    }
    let shared = Arc::new(Shared {
        released_at: Mutex::new(None),
        samples: Mutex::new(Vec::with_capacity(handoffs + 1)),
        target: handoffs,
        hold,
        acquisitions: watch::Sender::new(0),
        stop: CancellationToken::new(),
    });
    let mut locks = locks.into_iter();
    let first_lock = locks.next().context("no holder")?;
    let first = first_lock
        .acquire(Wait::For(Duration::from_secs(30)))
        .await?;
    let before = emulator.stats().await?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(waiters + 1);
    tasks.push(tokio::spawn(participant(
        first_lock,
        Arc::clone(&shared),
        Some(first),
    )));
    for lock in locks {
        tasks.push(tokio::spawn(participant(lock, Arc::clone(&shared), None)));
    }
    let mut failure = None;
    for task in tasks {
        match task.await.context("handoff participant panicked") {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                shared.stop.cancel();
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = emulator.stats().await?.since(&before);
    let mut samples = std::mem::take(&mut *locked(&shared.samples));
    samples.truncate(handoffs);
    Ok(Handoff {
        waiters,
        handoffs: summarize(&samples),
        samples,
        seconds,
        gets: stats.method("GET"),
        writes: stats.writes(),
        total: stats.total(),
        rate_limited: stats.status(429),
        posts: stats.method("POST"),
        precondition_failed: stats.status(412),
    })
}

pub fn row(label: &str, hold: Duration, h: &Handoff) -> Vec<String> {
    vec![
        label.to_owned(),
        h.waiters.to_string(),
        ms(hold),
        h.handoffs.n.to_string(),
        ms(h.handoffs.p50),
        ms(h.handoffs.p99),
        ms(h.handoffs.max),
        format!("{:.1}", h.per_second(h.total)),
        format!("{:.1}", h.per_second(h.gets)),
        format!("{:.2}", h.per_second(h.gets) / h.waiters as f64),
        format!("{:.2}", h.per_second(h.writes)),
        format!("{:.2}", h.posts as f64 / h.handoffs.n.max(1) as f64),
        h.precondition_failed.to_string(),
        h.rate_limited.to_string(),
    ]
}

pub const HEADER: [&str; 14] = [
    "poll backoff",
    "waiters",
    "hold",
    "handoffs",
    "p50",
    "p99",
    "max",
    "requests/s (all)",
    "GET/s (polls)",
    "GET/s per waiter",
    "writes/s",
    "POSTs per acquisition",
    "412s",
    "429s",
];

/// The handoff section: both backoff configurations, every waiter count, and one
/// run under GCS's per-object mutation rate limit (1/s).
pub async fn run(
    emulator: &Emulator,
    config: &crate::report::Config,
    report: &mut crate::report::Report,
) -> Result<()> {
    eprintln!("== 3. handoff");
    let configurations = [
        (
            "library default 250 ms..8 s",
            "default",
            (Duration::from_millis(250), Duration::from_secs(8)),
        ),
        (
            "Ruby gem defaults 1 s..30 s",
            "ruby",
            (Duration::from_secs(1), Duration::from_secs(30)),
        ),
    ];
    let mut rows = Vec::new();
    for (label, short, backoff) in configurations {
        let mut results = Vec::new();
        for &waiters in &config.waiters {
            eprintln!("  {label}, {waiters} waiters");
            let h = measure(
                emulator,
                &format!("handoff/{short}/{waiters}"),
                waiters,
                backoff,
                config.hold,
                config.handoffs,
            )
            .await?;
            rows.push(row(label, config.hold, &h));
            results.push(h);
        }
        let list =
            |f: &dyn Fn(&Handoff) -> String| results.iter().map(f).collect::<Vec<_>>().join(" / ");
        let counts = config
            .waiters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" / ");
        report.headline(
            "3",
            format!("handoff p50 / p99, {label}, {counts} waiters"),
            format!(
                "p50 {} ; p99 {}",
                list(&|h| ms(h.handoffs.p50)),
                list(&|h| ms(h.handoffs.p99))
            ),
            format!("holder holds {} per turn", ms(config.hold)),
            format!(
                "waiters poll {} GET/s in total",
                list(&|h| format!("{:.1}", h.per_second(h.gets)))
            ),
        );
    }
    // Under GCS's per-object mutation limit: the release PATCH and the next acquire's
    // POST are two mutations of one object.
    emulator
        .set_faults(serde_json::json!({ "object_rate_limit": "1/s" }))
        .await?;
    let waiters = 8;
    eprintln!("  rate limit 1/s, {waiters} waiters");
    let limited = measure(
        emulator,
        "handoff/rate-limited",
        waiters,
        configurations[0].2,
        config.hold,
        config.rl_handoffs,
    )
    .await;
    emulator.clear_faults().await?;
    let limited = limited?;
    rows.push(row(
        "library default, emulator limit 1 mutation/s/object",
        config.hold,
        &limited,
    ));
    report.headline(
        "3",
        "handoff p50 under 1 mutation/s/object (8 waiters)",
        format!(
            "p50 {} p99 {}, {} x 429",
            ms(limited.handoffs.p50),
            ms(limited.handoffs.p99),
            limited.rate_limited
        ),
        "release PATCH and next POST hit one object",
        "see rate-limit table",
    );
    report.section(
        "3. Handoff: holder's `release()` call to next holder's `acquire()` return",
        crate::report::table(&HEADER, &rows)
            + &format!(
                "\nEach participant has its own `GcsBackend` (connection pool). A holder holds for {}, \
                 so at each release every waiter has been polling for at least that long; \
                 percentiles are nearest-rank over the handoffs listed (with fewer than 100, \
                 p99 is the maximum). requests/s counts every request the emulator saw \
                 during the run (waiters' polls, the acquiring POSTs, the release PATCHes). \
                 \"POSTs per acquisition\" above 1 means several waiters saw the release and \
                 raced to write; the losers got 412.\n",
                ms(config.hold)
            ),
    );
    Ok(())
}
