//! 6. Refresh intervals against GCS's per-object mutation rate (about 1 write/s),
//!    reproduced by strict-gcs's `object_rate_limit` of 1/s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use gcslock::backend::gcs::{GcsBackend, DEFAULT_ENDPOINT};
use gcslock::backend::Backend;
use gcslock::{Lock, LockOptions, Wait};
use tokio::time::Instant;

use crate::counting::{Counter, Op};
use crate::emulator::Emulator;
use crate::report::{table, Config, Report};
use crate::summary::ms;

pub async fn run(emulator: &Emulator, config: &Config, report: &mut Report) -> Result<()> {
    eprintln!("== 6. refresh intervals under 1 mutation/s/object");
    emulator
        .set_faults(serde_json::json!({ "object_rate_limit": "1/s" }))
        .await?;
    let outcome = measure(emulator, config, report).await;
    emulator.clear_faults().await?;
    outcome
}

async fn measure(emulator: &Emulator, config: &Config, report: &mut Report) -> Result<()> {
    let mut rows = Vec::new();
    let gcs = Arc::new(emulator.backend()?);
    // The same options against the production endpoint (through the counting wrapper,
    // as above): `Lock::new` only, no request is sent.
    let production: Arc<dyn Backend> = Counter::wrap(Arc::new(
        GcsBackend::builder("gcslock-bench")
            .endpoint(Some(DEFAULT_ENDPOINT.into()))
            .build()?,
    ));
    let mut refused_as_expected = true;
    let mut refusals = Vec::new();
    for (ttl, name) in [
        (Duration::from_secs(2), "rl/ttl-2s"),
        (Duration::from_secs(8), "rl/ttl-8s"),
        (Duration::from_secs(16), "rl/ttl-16s"),
    ] {
        let counting = Counter::wrap(gcs.clone());
        let lock = Lock::new(
            counting.clone(),
            name,
            LockOptions::default().ttl(ttl).identity("bench-rl"),
        )?;
        let on_production = Lock::new(
            Arc::clone(&production),
            name,
            LockOptions::default().ttl(ttl).identity("bench-rl"),
        );
        let floor = Duration::from_secs(1);
        refused_as_expected &= on_production.is_err() == (lock.refresh_interval() < floor);
        let on_production = match on_production {
            Ok(_) => "accepted".to_owned(),
            Err(e) => {
                refusals.push(format!("TTL {} s: {e}", ttl.as_secs()));
                "**refused**".to_owned()
            }
        };
        let _ = counting.take_calls();
        let guard = lock.acquire(Wait::No).await?;
        let before = emulator.stats().await?;
        let updates = counting.count(Op::UpdateMetadata);
        tokio::time::sleep(config.rl_hold).await;
        let seen = emulator.stats().await?.since(&before);
        let sent = counting.count(Op::UpdateMetadata) - updates;
        // The schedule's own gaps: from a successful write of this lease (the acquiring
        // POST included) to its next write, so retries after a 429 are left out.
        let mut writes: Vec<(Instant, bool)> = counting
            .take_calls()
            .iter()
            .filter(|c| matches!(c.op, Op::Write | Op::UpdateMetadata))
            .map(|c| (c.start, c.ok))
            .collect();
        writes.sort_unstable_by_key(|w| w.0);
        let gaps: Vec<Duration> = writes
            .windows(2)
            .filter(|w| w[0].1)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        let first_gap = gaps.first().copied();
        let shortest_gap = gaps.iter().min().copied();
        let valid = guard.is_valid();
        let left = guard.time_left();
        let released = guard.release().await;
        rows.push(vec![
            format!("{} s", ttl.as_secs()),
            ms(lock.refresh_interval()),
            ms(config.rl_hold),
            sent.to_string(),
            seen.mutations_applied.to_string(),
            seen.status(429).to_string(),
            if valid {
                format!("yes ({} left)", ms(left))
            } else {
                "**no**".into()
            },
            match released {
                Ok(()) => "ok".into(),
                Err(e) => format!("{e}"),
            },
            format!(
                "{} / {}",
                first_gap.map_or("–".into(), ms),
                shortest_gap.map_or("–".into(), ms)
            ),
            on_production,
        ]);
    }
    report.check(
        "production GCS: `Lock::new` refuses a refresh interval under 1 s, and only that",
        refused_as_expected,
        if refusals.is_empty() {
            "nothing refused".to_owned()
        } else {
            refusals.join("; ")
        },
    );
    // Release then immediate re-acquire of the same object by another client.
    let mut waits = Vec::new();
    let mut limited = 0;
    for i in 0..config.rl_handoffs.max(1) {
        let name = format!("rl/reacquire-{i}");
        let first = Lock::new(
            gcs.clone(),
            &name,
            LockOptions::default()
                .ttl(Duration::from_secs(60))
                .identity("bench-rl-a"),
        )?;
        let second = Lock::new(
            Arc::new(emulator.backend()?),
            &name,
            LockOptions::default()
                .ttl(Duration::from_secs(60))
                .identity("bench-rl-b"),
        )?;
        let guard = first.acquire(Wait::No).await?;
        tokio::time::sleep(Duration::from_millis(1100)).await; // let the acquire's window pass
        let before = emulator.stats().await?;
        guard.release().await?;
        let start = Instant::now();
        let next = second.acquire(Wait::For(Duration::from_secs(20))).await?;
        waits.push(start.elapsed());
        limited += emulator.stats().await?.since(&before).status(429);
        next.release().await?;
    }
    let waits_text = waits.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    report.headline(
        "6",
        "re-acquire right after a release, limit 1 mutation/s/object",
        format!("{waits_text} ({limited} x 429)"),
        "0 without the limit",
        "a handoff on real GCS takes >= 1 s",
    );
    report.section(
        "6. Refresh interval vs GCS's ~1 mutation/s per object (strict-gcs `object_rate_limit` 1/s)",
        table(
            &[
                "TTL",
                "refresh interval (TTL/8)",
                "held for",
                "refreshes sent",
                "mutations applied",
                "429s",
                "lease still valid",
                "release",
                "scheduled gap: acquire to first refresh / shortest (send times)",
                "same options, production endpoint",
            ],
            &rows,
        ) + &format!(
            "\nScheduled gap: send time of a successful write of the lease (its acquiring POST \
             included) to the send time of its next write, as the refresh schedule set it \
             (retries after a 429 left out); the emulator refuses a write within 1 s of the \
             last applied one. The last column is `Lock::new` with the same options on a `GcsBackend` for \
             `{DEFAULT_ENDPOINT}` (behind the counting wrapper; no request sent): {}.\n",
            if refusals.is_empty() {
                "nothing refused".to_owned()
            } else {
                refusals.join("; ")
            }
        ) + &format!(
            "\nRelease, then another client's `acquire(Wait::For(20s))` at once: acquired after {waits_text}, \
             {limited} x 429 on the way (the tombstone PATCH and the acquiring POST are two \
             mutations of one object).\n"
        ),
    );
    Ok(())
}
