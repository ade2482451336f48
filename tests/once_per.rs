//! Once per period (`Acquire::once_per`, `PeriodGuard::release_completed`) and forever
//! TTLs, on the strict in-memory backend under tokio's paused clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gcslock::admin::{BreakOptions, BreakOutcome, LockStatus};
use gcslock::backend::fault::{Fault, FaultError, FaultyBackend, Operation};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, Metadata, ObjectVersion, WriteCondition};
use gcslock::once_per::{CompletedSlot, PeriodGuard, Slot, SlotAcquire, SlotZone, MAX_PERIOD};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Error, FencingToken, Lock, LockOptions, Ttl, Wait};

const NAME: &str = "jobs/hourly";
const TTL: Duration = Duration::from_secs(80);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn lock_on(backend: Arc<dyn Backend>, identity: &str) -> Lock {
    Lock::new(
        backend,
        NAME,
        LockOptions::default().ttl(TTL).identity(identity),
    )
    .expect("valid lock")
}

fn forever_lock(backend: Arc<dyn Backend>, identity: &str) -> Lock {
    Lock::new(
        backend,
        NAME,
        LockOptions::default().ttl(Ttl::Forever).identity(identity),
    )
    .expect("valid lock")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn hour_slot(index: u64) -> Slot {
    Slot::new(HOUR, index).expect("valid slot")
}

async fn metadata(memory: &MemoryBackend) -> Metadata {
    let read = memory.read(NAME).await.expect("read");
    read.value.expect("object exists").metadata
}

async fn record(memory: &MemoryBackend) -> LockRecord {
    LockRecord::from_metadata(&metadata(memory).await).expect("a lock")
}

fn acquired(outcome: SlotAcquire) -> PeriodGuard {
    match outcome {
        SlotAcquire::Acquired(guard) => guard,
        SlotAcquire::AlreadyDone(done) => panic!("expected to acquire, but {done}"),
    }
}

fn done(outcome: SlotAcquire) -> CompletedSlot {
    match outcome {
        SlotAcquire::AlreadyDone(done) => done,
        SlotAcquire::Acquired(guard) => panic!("expected done, but acquired {guard:?}"),
    }
}

/// Runs slot `slot` to success as `identity`.
async fn complete(memory: &MemoryBackend, identity: &str, slot: Slot) {
    let lock = lock_on(Arc::new(memory.clone()), identity);
    let guard = acquired(
        lock.acquire(Wait::No)
            .once_per(slot)
            .await
            .expect("acquire"),
    );
    guard.release_completed().await.expect("release completed");
}

/// Uses up the faults injected into `faulty`, so that its requests go through again.
async fn drain(faulty: &FaultyBackend) {
    let version = ObjectVersion {
        generation: 0,
        metageneration: 0,
    };
    while faulty.pending() > 0 {
        let _rejected = faulty
            .update_metadata("drain", version, &Metadata::new())
            .await;
    }
}

fn utc(time: SystemTime, period: Duration) -> Slot {
    Slot::containing_in(time, period, SlotZone::UTC).expect("valid slot")
}

/// The zone, or `None` (and the test is skipped, loudly) on a machine without a
/// zone database; CI has one.
fn zone(name: &str) -> Option<SlotZone> {
    match SlotZone::named(name) {
        Ok(zone) => Some(zone),
        Err(error) => {
            assert!(std::env::var_os("CI").is_none(), "{error}");
            eprintln!("once_per: SKIPPED: {error}");
            None
        }
    }
}

/// The instant of an RFC 3339 time.
fn instant(rfc3339: &str) -> SystemTime {
    let secs = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339")
        .timestamp();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
}

#[test]
fn utc_slots_are_whole_periods_since_the_epoch() {
    assert_eq!(utc(at(3599), HOUR).index(), 0);
    assert_eq!(utc(at(3600), HOUR).index(), 1);
    assert_eq!(utc(at(7199), HOUR).index(), 1);
    let slot = utc(at(7200), HOUR);
    assert_eq!(slot.start().timestamp(), 7200);
    assert_eq!(slot.period(), HOUR);
    assert_eq!(slot.zone(), SlotZone::UTC);
    // Crons firing at 02:00:00 on clocks 2 s and 9 s apart agree on the slot...
    assert_eq!(utc(at(7202), HOUR), utc(at(7209), HOUR));
    // ...but a clock 3 s behind that fires at 02:00:01 of true time names the previous
    // one: clocks must agree within the gap between the boundary and the firing.
    assert_eq!(utc(at(7201 - 3), HOUR).index(), 1);
    // A day slot in UTC starts at midnight UTC, as before zones were recorded.
    let day = utc(at(86_400 * 20_000 + 5), DAY);
    assert_eq!(day.start().to_rfc3339(), "2024-10-04T00:00:00+00:00");
    assert_eq!(day, Slot::new(DAY, 20_000).unwrap());
}

/// Issue 16, item 6: a daily job at 19:30 in New York ran on 2026-03-07 (00:30 UTC
/// on the 8th) and was skipped on 2026-03-08 (23:30 UTC on the 8th), one UTC day.
#[tokio::test(start_paused = true)]
async fn a_daily_job_runs_on_both_sides_of_a_dst_change() {
    let Some(new_york) = zone("America/New_York") else {
        return;
    };
    let saturday = Slot::containing_in(instant("2026-03-08T00:30:00Z"), DAY, new_york).unwrap();
    let sunday = Slot::containing_in(instant("2026-03-08T23:30:00Z"), DAY, new_york).unwrap();
    assert_ne!(saturday, sunday);
    assert_eq!(sunday.index(), saturday.index() + 1);
    assert_eq!(
        saturday.to_string(),
        "the 1d slot starting 2026-03-07T00:00:00-05:00 (America/New_York)"
    );
    assert_eq!(
        sunday.to_string(),
        "the 1d slot starting 2026-03-08T00:00:00-05:00 (America/New_York)"
    );
    // The change day is a local calendar day of 23 hours; the fall-back one of 25.
    let monday = Slot::in_zone(DAY, sunday.index() + 1, new_york).unwrap();
    assert_eq!(monday.start() - sunday.start(), chrono::Duration::hours(23));
    let november = Slot::containing_in(instant("2026-11-01T12:00:00Z"), DAY, new_york).unwrap();
    let after = Slot::in_zone(DAY, november.index() + 1, new_york).unwrap();
    assert_eq!(
        after.start() - november.start(),
        chrono::Duration::hours(25)
    );

    let memory = MemoryBackend::new("b");
    complete(&memory, "saturday", saturday).await;
    let lock = lock_on(Arc::new(memory.clone()), "sunday");
    acquired(lock.acquire(Wait::No).once_per(sunday).await.unwrap())
        .release_completed()
        .await
        .unwrap();
    done(lock.acquire(Wait::No).once_per(sunday).await.unwrap());
    let recorded = record(&memory).await.completed.expect("completed");
    assert_eq!(recorded.slot.zone().name(), "America/New_York");
    let keys = metadata(&memory).await;
    assert_eq!(
        keys.get("gcslock-done-zone").map(String::as_str),
        Some("America/New_York")
    );
    assert_eq!(
        keys.get("gcslock-done-start").map(String::as_str),
        Some("2026-03-08T00:00:00-05:00")
    );
}

/// Clocks go back at 02:00 EDT on 2026-11-01: 01:00-02:00 happens twice. A slot is
/// its wall-clock name, so the repeated hour is one hourly slot (two real hours).
#[test]
fn the_repeated_hour_is_one_slot() {
    let Some(new_york) = zone("America/New_York") else {
        return;
    };
    let slot = |rfc3339| Slot::containing_in(instant(rfc3339), HOUR, new_york).unwrap();
    let first = slot("2026-11-01T05:30:00Z"); // 01:30 EDT
    let second = slot("2026-11-01T06:30:00Z"); // 01:30 EST
    assert_eq!(first, second);
    assert_eq!(
        first.local_start().to_rfc3339(),
        "2026-11-01T01:00:00-04:00"
    );
    assert_ne!(slot("2026-11-01T04:30:00Z"), first); // 00:30 EDT
    let two = slot("2026-11-01T07:00:00Z"); // 02:00 EST
    assert_eq!(two.index(), first.index() + 1);
    assert_eq!(two.start() - first.start(), chrono::Duration::hours(2));
    // Ten-minute slots likewise: 01:10 EDT and 01:10 EST are one slot.
    let ten = Duration::from_secs(600);
    assert_eq!(
        Slot::containing_in(instant("2026-11-01T05:15:00Z"), ten, new_york).unwrap(),
        Slot::containing_in(instant("2026-11-01T06:15:00Z"), ten, new_york).unwrap()
    );
}

/// Clocks go forward at 02:00 EST on 2026-03-08: 02:00-03:00 never happens, so no
/// run can name its hourly slot, and nothing is owed for it.
#[test]
fn the_skipped_hour_names_no_slot() {
    let Some(new_york) = zone("America/New_York") else {
        return;
    };
    let slot = |rfc3339| Slot::containing_in(instant(rfc3339), HOUR, new_york).unwrap();
    let one = slot("2026-03-08T06:59:59Z"); // 01:59:59 EST
    let three = slot("2026-03-08T07:00:00Z"); // 03:00:00 EDT, a second later
    assert_eq!(three.index(), one.index() + 2, "slot 02:00 is skipped");
    assert_eq!(
        three.local_start().to_rfc3339(),
        "2026-03-08T03:00:00-04:00"
    );
    // Asked for by number, the skipped slot starts when its hour would have ended.
    let two = Slot::in_zone(HOUR, one.index() + 1, new_york).unwrap();
    assert_eq!(two.start(), three.start());
    // A completed 01:00 slot does not cover 03:00; a completed 03:00 covers 02:00.
    assert!(!one.covers(&three));
    assert!(three.covers(&two));
}

#[test]
fn periods_divide_the_local_day_or_are_whole_local_days() {
    let Some(paris) = zone("Europe/Paris") else {
        return;
    };
    let noon = instant("2026-07-14T10:00:00Z"); // 12:00 CEST
    for (period, start) in [
        (600, "2026-07-14T12:00:00+02:00"),
        (3 * 3600, "2026-07-14T12:00:00+02:00"),
        (8 * 3600, "2026-07-14T08:00:00+02:00"),
        (86_400, "2026-07-14T00:00:00+02:00"),
        // Several days count local days from 1970-01-01: day 20648 is the 14th.
        (2 * 86_400, "2026-07-14T00:00:00+02:00"),
        (7 * 86_400, "2026-07-09T00:00:00+02:00"),
    ] {
        let slot = Slot::containing_in(noon, Duration::from_secs(period), paris).unwrap();
        assert_eq!(slot.local_start().to_rfc3339(), start, "{period}s");
    }
    for period in [7 * 60, 25 * 3600, 36 * 3600, 86_400 + 1] {
        match Slot::containing_in(noon, Duration::from_secs(period), paris) {
            Err(Error::InvalidInput(why)) => assert!(why.contains("calendar"), "{why}"),
            other => panic!("period {period}s accepted: {other:?}"),
        }
    }
}

#[test]
fn absurd_periods_and_clocks_are_refused_cleanly() {
    let now = SystemTime::now();
    for period in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_millis(1500),
        MAX_PERIOD + Duration::from_secs(1),
        Duration::MAX,
    ] {
        match Slot::containing_in(now, period, SlotZone::UTC) {
            Err(Error::InvalidInput(why)) => assert!(why.contains("period"), "{why}"),
            other => panic!("period {period:?} accepted: {other:?}"),
        }
    }
    assert!(Slot::containing_in(now, MAX_PERIOD, SlotZone::UTC).is_ok());
    assert!(Slot::containing_in(now, Duration::from_secs(1), SlotZone::UTC).is_ok());
    match Slot::containing_in(UNIX_EPOCH - Duration::from_secs(1), HOUR, SlotZone::UTC) {
        Err(Error::InvalidInput(why)) => assert!(why.contains("before 1970"), "{why}"),
        other => panic!("a clock before 1970 named a slot: {other:?}"),
    }
    assert!(matches!(
        Slot::new(HOUR, u64::MAX),
        Err(Error::InvalidInput(_))
    ));
    // A clock far past the year 9999.
    assert!(Slot::containing_in(
        UNIX_EPOCH + Duration::from_secs(1 << 40),
        HOUR,
        SlotZone::UTC
    )
    .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_completed_slot_blocks_that_slot_but_not_the_next() {
    let memory = MemoryBackend::new("b");
    // The previous hour: completions of slots that start in the future do not count.
    let now = utc(SystemTime::from(memory.server_time()), HOUR).index();
    let this = hour_slot(now - 1);
    complete(&memory, "first", this).await;
    let released_at = match Lock::status(&lock_on(Arc::new(memory.clone()), "x")).await {
        Ok(LockStatus::Released {
            released_at,
            last_completed: Some(done),
            ..
        }) => {
            assert_eq!(done.slot, this);
            assert_eq!(done.completed_by, "first");
            assert_eq!(done.completed_at, released_at);
            released_at
        }
        other => panic!("not released with a completed slot: {other:?}"),
    };

    let second = lock_on(Arc::new(memory.clone()), "second");
    let before = memory.request_count();
    let seen = done(second.acquire(Wait::No).once_per(this).await.unwrap());
    assert_eq!(
        memory.request_count() - before,
        1,
        "a done slot costs one read"
    );
    assert_eq!(seen.slot, this);
    assert_eq!(seen.completed_by, "first");
    assert_eq!(seen.completed_at, released_at);
    assert_eq!(record(&memory).await.token, 1, "nothing was written");
    // An earlier slot of the same period is done too.
    done(
        second
            .acquire(Wait::No)
            .once_per(hour_slot(now - 2))
            .await
            .unwrap(),
    );
    // A completion for another period never counts.
    let other_period = Slot::new(Duration::from_secs(1800), 2 * now - 2).unwrap();
    acquired(
        second
            .acquire(Wait::No)
            .once_per(other_period)
            .await
            .unwrap(),
    )
    .release()
    .await
    .unwrap();
    // The next slot runs.
    let next = acquired(
        second
            .acquire(Wait::No)
            .once_per(hour_slot(now))
            .await
            .unwrap(),
    );
    assert_eq!(next.slot(), hour_slot(now));
    next.release_completed().await.unwrap();
    done(
        second
            .acquire(Wait::No)
            .once_per(hour_slot(now))
            .await
            .unwrap(),
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_leaves_the_slot_open() {
    let memory = MemoryBackend::new("b");
    let this = hour_slot(7);
    let lock = lock_on(Arc::new(memory.clone()), "a");

    // A plain release: the run failed.
    let guard = acquired(lock.acquire(Wait::No).once_per(this).await.unwrap());
    guard.release().await.unwrap();
    assert_eq!(record(&memory).await.completed, None);

    // A dropped guard (the process gave up): released in the background, not completed.
    let guard = acquired(lock.acquire(Wait::No).once_per(this).await.unwrap());
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(record(&memory).await.state, LockState::Released);
    assert_eq!(record(&memory).await.completed, None);

    // A lease that ran out unrefreshed: release_completed reports the loss and does
    // not record the slot.
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    let cut_off = lock_on(Arc::new(faulty.clone()), "cut-off");
    let guard = acquired(cut_off.acquire(Wait::No).once_per(this).await.unwrap());
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        1000,
    );
    tokio::time::sleep(TTL).await;
    assert!(!guard.is_valid());
    drain(&faulty).await;
    assert!(matches!(
        guard.release_completed().await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(record(&memory).await.completed, None);

    // A run that lost its lock to a break records nothing either.
    let guard = acquired(lock.acquire(Wait::No).once_per(this).await.unwrap());
    lock.break_with(&BreakOptions::new().now(true))
        .await
        .unwrap();
    tokio::time::sleep(TTL).await; // the next refresh sees the break
    assert!(guard.release_completed().await.is_err());
    assert_eq!(record(&memory).await.completed, None);

    // So the slot is still open.
    acquired(lock.acquire(Wait::No).once_per(this).await.unwrap())
        .release_completed()
        .await
        .unwrap();
    done(lock.acquire(Wait::No).once_per(this).await.unwrap());
}

// A guard acquired without a period cannot record one: `release_completed` is a
// method of `PeriodGuard` only, which only `Acquire::once_per` returns.

#[tokio::test(start_paused = true)]
async fn a_waiter_stops_at_once_when_the_slot_completes() {
    let memory = MemoryBackend::new("b");
    let this = hour_slot(42);
    let runner = lock_on(Arc::new(memory.clone()), "runner");
    let guard = acquired(runner.acquire(Wait::No).once_per(this).await.unwrap());

    let waiter = lock_on(Arc::new(memory.clone()), "waiter");
    let waiting = tokio::spawn(async move { waiter.acquire(Wait::Forever).once_per(this).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!waiting.is_finished(), "the lock is held: the waiter waits");
    guard.release_completed().await.unwrap();
    let released = tokio::time::Instant::now();
    let seen = done(waiting.await.unwrap().unwrap());
    assert_eq!(seen.completed_by, "runner");
    // One poll interval at most (poll backoff tops out at 8 s), not a lease's worth.
    assert!(released.elapsed() <= Duration::from_secs(8));
    assert_eq!(record(&memory).await.token, 1, "the waiter never wrote");

    // A waiter for a slot that is not completed takes the lock as today.
    let guard = acquired(
        runner
            .acquire(Wait::No)
            .once_per(hour_slot(43))
            .await
            .unwrap(),
    );
    let waiter = lock_on(Arc::new(memory.clone()), "waiter");
    let waiting =
        tokio::spawn(async move { waiter.acquire(Wait::Forever).once_per(hour_slot(43)).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    guard.release().await.unwrap(); // the run failed
    let retry = acquired(waiting.await.unwrap().unwrap());
    assert_eq!(retry.identity(), "waiter");
    retry.release_completed().await.unwrap();
    assert_eq!(
        record(&memory).await.completed.map(|done| done.by),
        Some("waiter".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_lock_with_an_open_slot_is_busy() {
    let memory = MemoryBackend::new("b");
    let holder = lock_on(Arc::new(memory.clone()), "holder");
    let _guard = holder.acquire(Wait::No).await.unwrap();
    let other = lock_on(Arc::new(memory.clone()), "other");
    assert!(matches!(
        other.acquire(Wait::No).once_per(hour_slot(1)).await,
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        other
            .acquire(Wait::For(Duration::from_secs(20)))
            .once_per(hour_slot(1))
            .await,
        Err(Error::Busy { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_completed_slot_carries_over_every_write() {
    let memory = MemoryBackend::new("b");
    let this = hour_slot(9);
    complete(&memory, "first", this).await;
    let completed_at = record(&memory)
        .await
        .completed
        .unwrap()
        .resolve(memory.read(NAME).await.unwrap().value.unwrap().updated);
    let expect_carried = |record: LockRecord| {
        let carried = record.completed.expect("completed slot carried over");
        assert_eq!(carried.slot, this);
        assert_eq!(carried.by, "first");
        assert_eq!(carried.at, Some(completed_at.completed_at), "time fixed");
    };
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Acquire (a plain holder, not using slots) and refresh.
    let plain = lock_on(Arc::new(memory.clone()), "plain");
    let guard = plain.acquire(Wait::No).await.unwrap();
    expect_carried(record(&memory).await);
    tokio::time::sleep(TTL).await; // several refreshes
    let carried = record(&memory).await;
    assert!(carried.refresh_seq >= 2, "refreshed");
    expect_carried(carried);
    // Release.
    guard.release().await.unwrap();
    expect_carried(record(&memory).await);
    // Takeover of a crashed holder.
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    let crashed = lock_on(Arc::new(faulty.clone()), "crashed");
    let crashed_guard = crashed.acquire(Wait::No).await.unwrap();
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        1000,
    );
    let taker = lock_on(Arc::new(memory.clone()), "taker");
    let guard = taker.acquire(Wait::Forever).await.unwrap();
    assert_eq!(guard.token(), FencingToken::new(4));
    expect_carried(record(&memory).await);
    drop(crashed_guard);
    // Break: a revoke, then a break at once.
    assert!(matches!(
        taker.break_lock(None).await.unwrap(),
        BreakOutcome::RevokedUntil { .. }
    ));
    expect_carried(record(&memory).await);
    assert!(matches!(
        taker
            .break_with(&BreakOptions::new().now(true))
            .await
            .unwrap(),
        BreakOutcome::Broken { .. }
    ));
    expect_carried(record(&memory).await);
    drop(guard);
    // And status shows it throughout.
    let status = taker.status().await.unwrap();
    assert_eq!(status.last_completed(), Some(&completed_at));
    // The slot stays done through all of it.
    done(taker.acquire(Wait::No).once_per(this).await.unwrap());
}

/// A lock object whose completed-slot keys are `overrides` on top of a valid record.
async fn hostile(memory: &MemoryBackend, overrides: &[(&str, &str)]) {
    let mut metadata = LockRecord {
        state: LockState::Released,
        token: 3,
        holder: "h".into(),
        nonce: "n".into(),
        ttl: TTL.into(),
        refresh_seq: 0,
        completed: None,
    }
    .to_metadata();
    for (key, value) in overrides {
        metadata.insert((*key).into(), (*value).into());
    }
    memory
        .write(NAME, WriteCondition::DoesNotExist, &metadata)
        .await
        .unwrap();
}

/// Done keys from storage are untrusted. Unreadable ones are ignored: the lock
/// stays usable, the run proceeds (never skips), and its completion replaces them.
/// Before, they made the whole object "not a lock", so the lock stayed blocked
/// until an operator repaired it.
#[tokio::test(start_paused = true)]
async fn hostile_slot_fields_are_ignored_never_blocking_the_lock() {
    let valid = [
        ("gcslock-done-period-s", "3600"),
        ("gcslock-done-slot", "9"),
        ("gcslock-done-zone", "UTC"),
        ("gcslock-done-start", "1970-01-01T09:00:00Z"),
        ("gcslock-done-by", "h"),
        ("gcslock-done-at", "released"),
    ];
    let megabyte = "9".repeat(1 << 20);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("gcslock-done-slot", "9")],        // partial
        vec![("gcslock-done-period-s", "3600")], // partial
        vec![("gcslock-done-zone", "UTC")],      // partial
        [&valid[..], &[("gcslock-done-slot", "18446744073709551615")]].concat(),
        [&valid[..], &[("gcslock-done-slot", "-1")]].concat(),
        [&valid[..], &[("gcslock-done-slot", "1e9")]].concat(),
        [&valid[..], &[("gcslock-done-slot", megabyte.as_str())]].concat(),
        [&valid[..], &[("gcslock-done-period-s", "0")]].concat(),
        [&valid[..], &[("gcslock-done-period-s", "99999999999999")]].concat(),
        [&valid[..], &[("gcslock-done-period-s", "")]].concat(),
        [&valid[..], &[("gcslock-done-by", "evil\u{1b}[2J")]].concat(),
        [&valid[..], &[("gcslock-done-by", "line\nbreak")]].concat(),
        [&valid[..], &[("gcslock-done-by", "")]].concat(),
        [&valid[..], &[("gcslock-done-at", "yesterday")]].concat(),
        [
            &valid[..],
            &[("gcslock-done-at", "+999999-01-01T00:00:00Z")],
        ]
        .concat(),
        // The calendar keys: unknown shapes, a start outside its slot, one without the other.
        [&valid[..], &[("gcslock-done-zone", "Mars/Olympus\nMons")]].concat(),
        [&valid[..], &[("gcslock-done-zone", "\u{202e}UTC")]].concat(),
        [&valid[..], &[("gcslock-done-zone", megabyte.as_str())]].concat(),
        [&valid[..], &[("gcslock-done-start", "yesterday")]].concat(),
        [
            &valid[..],
            &[("gcslock-done-start", "1970-01-01T10:00:00Z")],
        ]
        .concat(),
        [
            &valid[..],
            &[("gcslock-done-start", "9999-12-31T23:59:59-23:59")],
        ]
        .concat(),
        valid
            .iter()
            .filter(|(key, _)| *key != "gcslock-done-start")
            .copied()
            .collect(),
    ];
    for case in &cases {
        let memory = MemoryBackend::new("b");
        hostile(&memory, case).await;
        let lock = lock_on(Arc::new(memory.clone()), "a");
        match lock.status().await {
            Ok(
                status @ LockStatus::Released {
                    last_completed: None,
                    ..
                },
            ) => {
                let why = status.unreadable_completion().expect("reported");
                assert!(why.contains("gcslock-done"), "{case:?}: {why}");
                assert!(why.len() < 400, "{case:?}: quotes too much: {why}");
            }
            other => panic!("{case:?}: {other:?}"),
        }
        // The run proceeds, and its completion replaces the unreadable keys.
        acquired(lock.acquire(Wait::No).once_per(hour_slot(9)).await.unwrap())
            .release_completed()
            .await
            .unwrap();
        let after = record(&memory).await;
        assert_eq!(after.token, 4, "{case:?}");
        assert_eq!(after.completed.map(|done| done.slot), Some(hour_slot(9)));
        done(lock.acquire(Wait::No).once_per(hour_slot(9)).await.unwrap());
    }
    // The valid form decodes.
    let memory = MemoryBackend::new("b");
    hostile(&memory, &valid).await;
    let lock = lock_on(Arc::new(memory.clone()), "a");
    done(lock.acquire(Wait::No).once_per(hour_slot(9)).await.unwrap());
    // A bad lease field still makes the object "not a lock", never overwritten.
    let memory = MemoryBackend::new("b");
    hostile(
        &memory,
        &[&valid[..], &[("gcslock-ttl-ms", "forever ")]].concat(),
    )
    .await;
    let lock = lock_on(Arc::new(memory.clone()), "a");
    assert!(matches!(
        lock.status().await,
        Ok(LockStatus::NotALock { .. })
    ));
    assert!(matches!(
        lock.acquire(Wait::No).once_per(hour_slot(9)).await,
        Err(Error::NotALock { .. })
    ));
    assert_eq!(record_token(&memory).await, Some("3".into()));
}

async fn record_token(memory: &MemoryBackend) -> Option<String> {
    metadata(memory).await.get("gcslock-token").cloned()
}

/// A record of the previous format (UTC-aligned slots, no zone or start keys) reads
/// as a UTC completion: done for UTC runs of that slot, not counted elsewhere.
#[tokio::test(start_paused = true)]
async fn records_of_the_previous_format_are_utc_slots() {
    let memory = MemoryBackend::new("b");
    let index = 20_520 * 24 + 19; // 2026-03-08T19:00Z
    let index_text = index.to_string();
    hostile(
        &memory,
        &[
            ("gcslock-done-period-s", "3600"),
            ("gcslock-done-slot", index_text.as_str()),
            ("gcslock-done-by", "old:1"),
            ("gcslock-done-at", "2026-03-08T19:00:05Z"),
        ],
    )
    .await;
    let lock = lock_on(Arc::new(memory.clone()), "new");
    let status = lock.status().await.unwrap();
    let recorded = status.last_completed().expect("read").slot;
    assert_eq!(recorded, hour_slot(index));
    assert_eq!(recorded.zone(), SlotZone::UTC);
    assert_eq!(
        recorded.local_start().to_rfc3339(),
        "2026-03-08T19:00:00+00:00"
    );
    done(
        lock.acquire(Wait::No)
            .once_per(hour_slot(index))
            .await
            .unwrap(),
    );
    let Some(new_york) = zone("America/New_York") else {
        return;
    };
    // A machine in another zone runs (never skips), and records its zone.
    let theirs = Slot::in_zone(HOUR, index, new_york).unwrap();
    acquired(lock.acquire(Wait::No).once_per(theirs).await.unwrap())
        .release_completed()
        .await
        .unwrap();
    let keys = metadata(&memory).await;
    assert_eq!(
        keys.get("gcslock-done-zone").map(String::as_str),
        Some("America/New_York")
    );
}

/// A completion recorded in another zone never counts: the run proceeds.
#[tokio::test(start_paused = true)]
async fn a_completion_in_another_zone_does_not_count() {
    let (Some(paris), Some(tokyo)) = (zone("Europe/Paris"), zone("Asia/Tokyo")) else {
        return;
    };
    let memory = MemoryBackend::new("b");
    let noon = SystemTime::now();
    let in_paris = Slot::containing_in(noon, HOUR, paris).unwrap();
    let in_tokyo = Slot::containing_in(noon, HOUR, tokyo).unwrap();
    assert!(
        in_tokyo.index() > in_paris.index(),
        "Tokyo's wall clock is ahead"
    );
    complete(&memory, "tokyo", in_tokyo).await;
    let lock = lock_on(Arc::new(memory.clone()), "paris");
    acquired(lock.acquire(Wait::No).once_per(in_paris).await.unwrap())
        .release_completed()
        .await
        .unwrap();
    done(lock.acquire(Wait::No).once_per(in_paris).await.unwrap());
}

/// Issue 16, item 7: a machine whose clock is a day fast recorded tomorrow's slot as
/// done, and every machine with a correct clock then skipped today's. A completion
/// whose slot starts more than 5 minutes after the server's `Date` does not count.
#[tokio::test(start_paused = true)]
async fn a_completion_from_a_fast_clock_does_not_silence_the_fleet() {
    let memory = MemoryBackend::new("b");
    let now = SystemTime::from(memory.server_time());
    let today = utc(now, DAY);
    let tomorrow = utc(now + DAY, DAY);
    complete(&memory, "fast:1", tomorrow).await;
    let lock = lock_on(Arc::new(memory.clone()), "correct");
    let guard = acquired(lock.acquire(Wait::No).once_per(today).await.unwrap());
    guard.release_completed().await.unwrap();
    assert_eq!(record(&memory).await.completed.unwrap().slot, today);
    done(lock.acquire(Wait::No).once_per(today).await.unwrap());

    // A slot starting within the tolerance after the server's clock counts: a
    // machine a minute fast that fired just past the boundary is ordinary.
    let memory = MemoryBackend::new("b");
    let next_hour = utc(now, HOUR).index() + 1;
    let boundary = next_hour * 3600;
    let server_now = u64::try_from(memory.server_time().timestamp()).unwrap();
    memory.set_server_skew(chrono::Duration::seconds(
        i64::try_from(boundary - server_now).unwrap() - 60,
    ));
    complete(&memory, "a-minute-fast", hour_slot(next_hour)).await;
    done(
        lock_on(Arc::new(memory.clone()), "correct")
            .acquire(Wait::No)
            .once_per(hour_slot(next_hour - 1))
            .await
            .unwrap(),
    );

    // The server's clock, not ours, is the reference: with the server a day behind,
    // today's completion lies ahead of it and does not count.
    let memory = MemoryBackend::new("b");
    complete(&memory, "a", today).await;
    memory.set_server_skew(chrono::Duration::days(-2));
    acquired(
        lock_on(Arc::new(memory.clone()), "b")
            .acquire(Wait::No)
            .once_per(today)
            .await
            .unwrap(),
    )
    .release()
    .await
    .unwrap();
}

/// Issue 19: two schedules on one lock (`--once-per 2h` after `1h`): the other
/// period's completion never counts, and the run proceeds.
#[tokio::test(start_paused = true)]
async fn mixing_periods_on_one_lock_runs() {
    let memory = MemoryBackend::new("b");
    let now = SystemTime::from(memory.server_time());
    complete(&memory, "hourly", utc(now, HOUR)).await;
    let two_hours = utc(now, 2 * HOUR);
    let lock = lock_on(Arc::new(memory.clone()), "two-hourly");
    acquired(lock.acquire(Wait::No).once_per(two_hours).await.unwrap())
        .release_completed()
        .await
        .unwrap();
    assert_eq!(record(&memory).await.completed.unwrap().slot, two_hours);
}

#[tokio::test(start_paused = true)]
async fn a_forever_lease_is_never_stale() {
    let memory = MemoryBackend::new("b");
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    let holder = forever_lock(Arc::new(faulty.clone()), "holder");
    assert_eq!(holder.ttl(), Ttl::Forever);
    assert_eq!(holder.refresh_interval(), Duration::from_secs(60));
    let guard = holder.acquire(Wait::No).await.unwrap();
    // Old gcslock versions fail to parse this as a number: "not a lock", never touched.
    assert_eq!(
        metadata(&memory)
            .await
            .get("gcslock-ttl-ms")
            .map(String::as_str),
        Some("forever")
    );
    assert!("forever".parse::<u64>().is_err());

    // Refreshes keep going: status shows when the holder was last heard from.
    tokio::time::sleep(Duration::from_secs(3 * 60 + 1)).await;
    assert!(record(&memory).await.refresh_seq >= 3);

    // Every refresh now fails for three days: the holder keeps its lease and retrying.
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        100_000,
    );
    tokio::time::sleep(Duration::from_secs(3 * 86_400)).await;
    assert!(guard.is_valid());
    assert!(faulty.pending() < 100_000, "still retrying");
    match holder.status().await.unwrap() {
        LockStatus::Held(held) => {
            assert_eq!(held.ttl, Ttl::Forever);
            assert_eq!(held.expires_in, None);
            let heard = held.last_heard.expect("server time");
            assert!(heard >= Duration::from_secs(3 * 86_400), "{heard:?}");
        }
        other => panic!("a forever lock must stay held: {other:?}"),
    }

    // Waiters never take it over, however long they watch one version.
    let waiter = lock_on(Arc::new(memory.clone()), "waiter");
    match waiter.acquire(Wait::For(Duration::from_secs(86_400))).await {
        Err(Error::Busy { holder, .. }) => {
            assert_eq!(holder.identity, "holder");
            assert_eq!(holder.expires_in, None);
        }
        other => panic!("a waiter took a forever lock: {other:?}"),
    }
    assert!(matches!(
        waiter.acquire(Wait::No).once_per(hour_slot(1)).await,
        Err(Error::Busy { .. })
    ));

    // Only a break at once frees it: a revoked forever lease would never go stale.
    // The holder notices at its next refresh.
    drain(&faulty).await;
    assert!(matches!(
        waiter.break_lock(None).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(record(&memory).await.holder, "holder", "untouched");
    assert!(matches!(
        waiter
            .break_with(&BreakOptions::new().now(true))
            .await
            .unwrap(),
        BreakOutcome::Broken { .. }
    ));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!guard.is_valid());
    let next = waiter.acquire(Wait::No).await.unwrap();
    assert_eq!(next.token(), FencingToken::new(2));
}

#[tokio::test(start_paused = true)]
async fn forever_options_are_checked() {
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new("b"));
    assert!(matches!(
        Lock::new(
            Arc::clone(&memory),
            NAME,
            LockOptions::default()
                .ttl(Ttl::Forever)
                .refresh_interval(Duration::ZERO)
        ),
        Err(Error::InvalidInput(_))
    ));
    let lock = Lock::new(
        Arc::clone(&memory),
        NAME,
        LockOptions::default()
            .ttl(Ttl::Forever)
            .refresh_interval(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(lock.refresh_interval(), Duration::from_secs(5));
    assert_eq!(lock.safety_margin(), Duration::ZERO);
    // A later `ttl` replaces `ttl_forever`.
    let finite = Lock::new(
        memory,
        NAME,
        LockOptions::default().ttl(Ttl::Forever).ttl(TTL),
    )
    .unwrap();
    assert_eq!(finite.ttl(), Ttl::Finite(TTL));
}

/// The requests a lock makes for one acquire-release cycle, with and without a slot.
#[tokio::test(start_paused = true)]
async fn a_once_per_run_costs_what_a_plain_run_costs() {
    async fn plain(memory: &MemoryBackend) -> u64 {
        let before = memory.request_count();
        let guard = lock_on(Arc::new(memory.clone()), "a")
            .acquire(Wait::No)
            .await
            .unwrap();
        guard.release().await.unwrap();
        memory.request_count() - before
    }
    async fn once(memory: &MemoryBackend, slot: Slot) -> u64 {
        let before = memory.request_count();
        let lock = lock_on(Arc::new(memory.clone()), "a");
        acquired(lock.acquire(Wait::No).once_per(slot).await.unwrap())
            .release_completed()
            .await
            .unwrap();
        memory.request_count() - before
    }
    // First run on a new lock (create), then on a released one (replace).
    let (plain_memory, once_memory) = (MemoryBackend::new("p"), MemoryBackend::new("o"));
    let plain_first = plain(&plain_memory).await;
    let once_first = once(&once_memory, hour_slot(1)).await;
    assert_eq!(once_first, plain_first);
    let plain_again = plain(&plain_memory).await;
    let once_again = once(&once_memory, hour_slot(2)).await;
    assert_eq!(once_again, plain_again);
    assert_eq!((plain_first, plain_again), (3, 3), "read, write, release");
    // A busy lock: one read either way.
    let holder = lock_on(Arc::new(plain_memory.clone()), "holder")
        .acquire(Wait::No)
        .await
        .unwrap();
    let before = plain_memory.request_count();
    let other = lock_on(Arc::new(plain_memory.clone()), "other");
    assert!(other.acquire(Wait::No).await.is_err());
    let plain_busy = plain_memory.request_count() - before;
    let before = plain_memory.request_count();
    assert!(other
        .acquire(Wait::No)
        .once_per(hour_slot(3))
        .await
        .is_err());
    assert_eq!(plain_memory.request_count() - before, plain_busy);
    holder.release().await.unwrap();
}

/// A forever lease never goes stale by itself, so its release cannot retry "until
/// the lease would be stale anyway": it gives up as after an outage.
#[tokio::test(start_paused = true)]
async fn a_forever_release_gives_up_after_the_storage_timeout() {
    let memory = MemoryBackend::new("b");
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    let lock = Lock::new(
        Arc::new(faulty.clone()),
        NAME,
        LockOptions::default()
            .ttl(Ttl::Forever)
            .unavailable_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let guard = lock.acquire(Wait::No).await.unwrap();
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        100_000,
    );
    let started = tokio::time::Instant::now();
    let released = tokio::time::timeout(Duration::from_secs(3600), guard.release())
        .await
        .expect("release gave up");
    assert!(
        matches!(released, Err(Error::Unavailable { .. })),
        "{released:?}"
    );
    assert!(started.elapsed() <= Duration::from_secs(15));
    assert_eq!(record(&memory).await.state, LockState::Held);
}
