//! The lock algorithm on the strict in-memory backend, under tokio's paused clock:
//! virtual time makes TTLs of minutes run in milliseconds, deterministically.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gcslock::admin::{BreakOptions, LockStatus};
use gcslock::backend::fault::{Fault, FaultError, FaultyBackend, Operation};
use gcslock::backend::intercept::{Intercept, NoDate};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, Metadata, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Error, FencingToken, Guard, Lock, LockOptions, LossReason, Wait};
use support::{faulty_bucket, record_at};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(80);
const REFRESH: Duration = Duration::from_secs(10); // TTL/8
const MARGIN: Duration = Duration::from_secs(8); // TTL/10

fn options(identity: &str) -> LockOptions {
    LockOptions::default().ttl(TTL).identity(identity)
}

fn lock_on(backend: Arc<dyn Backend>, identity: &str) -> Lock {
    Lock::new(backend, "jobs/nightly", options(identity)).expect("valid lock")
}

/// Takes the free lock through `backend` as `identity`.
async fn hold(backend: Arc<dyn Backend>, identity: &str) -> Guard {
    lock_on(backend, identity)
        .acquire(Wait::No)
        .await
        .expect("free")
}

/// Makes every later refresh through `backend` fail, as if its holder had crashed
/// or been cut off: the lease then runs out unrefreshed.
fn stop_refreshing(backend: &FaultyBackend) {
    backend.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        1000,
    );
}

async fn record(memory: &MemoryBackend) -> LockRecord {
    record_at(memory, "jobs/nightly").await
}

#[tokio::test(start_paused = true)]
async fn acquire_release_and_tokens_grow_across_holders() {
    let memory = MemoryBackend::new("b");
    let lock = lock_on(Arc::new(memory.clone()), "a");
    let mut last = 0;
    for _ in 0..3 {
        let guard = lock.acquire(Wait::No).await.expect("free lock");
        assert!(guard.token().value() > last, "token must grow");
        last = guard.token().value();
        assert!(guard.is_valid());
        assert_eq!(record(&memory).await.state, LockState::Held);
        guard.release().await.expect("release");
        assert_eq!(record(&memory).await.state, LockState::Released);
    }
    assert_eq!(last, 3);
    // Break keeps the counter: the next holder still gets a larger token.
    let guard = lock.acquire(Wait::No).await.expect("free");
    lock.break_with(
        &BreakOptions::new()
            .expected_token(Some(FencingToken::new(4)))
            .now(true),
    )
    .await
    .expect("break");
    let next = lock.acquire(Wait::No).await.expect("broken lock is free");
    assert_eq!(next.token().value(), 5);
    drop(guard);
}

#[tokio::test(start_paused = true)]
async fn second_holder_is_busy_and_reads_only() {
    let memory = MemoryBackend::new("b");
    let first = lock_on(Arc::new(memory.clone()), "first");
    let second = lock_on(Arc::new(memory.clone()), "second");
    let guard = first.acquire(Wait::No).await.expect("free");
    let before = memory.request_count();
    match second.acquire(Wait::No).await {
        Err(Error::Busy { holder, .. }) => {
            assert_eq!(holder.identity, "first");
            assert_eq!(holder.token, FencingToken::new(1));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(
        memory.request_count() - before,
        1,
        "a busy attempt is one read"
    );
    // Waiting while the holder stays alive polls with reads only.
    let waited = second.acquire(Wait::For(Duration::from_secs(120))).await;
    assert!(matches!(waited, Err(Error::Busy { .. })), "{waited:?}");
    assert!(guard.is_valid());
    assert_eq!(record(&memory).await.holder, "first");
}

#[tokio::test(start_paused = true)]
async fn contention_never_has_two_holders() {
    let memory = MemoryBackend::new("b");
    let holders = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..12 {
        let lock = lock_on(Arc::new(memory.clone()), &format!("worker-{worker}"));
        let holders = Arc::clone(&holders);
        let acquisitions = Arc::clone(&acquisitions);
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for round in 0..4u64 {
                let guard = lock.acquire(Wait::Forever).await.expect("acquire");
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                acquisitions.fetch_add(1, Ordering::SeqCst);
                tokens.push(guard.token().value());
                tokio::time::sleep(Duration::from_millis(300 + 700 * ((worker + round) % 3))).await;
                assert!(guard.is_valid());
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
            tokens
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("worker"));
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=48).collect();
    assert_eq!(
        all, expected,
        "every acquisition got a distinct, growing token"
    );
    assert_eq!(acquisitions.load(Ordering::SeqCst), 48);
}

#[tokio::test(start_paused = true)]
async fn crashed_holder_is_taken_over_only_after_its_deadline() {
    let memory = MemoryBackend::new("b");
    // The crashed holder: every refresh fails from now on, as if it were gone.
    let crashed_backend = FaultyBackend::new(Arc::new(memory.clone()));
    stop_refreshing(&crashed_backend);
    let crashed = lock_on(Arc::new(crashed_backend), "crashed");
    let guard = crashed.acquire(Wait::No).await.expect("free");
    let acquired_at = Instant::now();

    let waiter = lock_on(Arc::new(memory.clone()), "waiter");
    let taken = waiter.acquire(Wait::Forever).await.expect("takeover");
    let took_at = Instant::now();
    assert!(
        !guard.is_valid(),
        "old holder must have stopped trusting its lease first"
    );
    assert!(matches!(guard.lost().await, LossReason::Expired { .. }));
    assert!(
        took_at - acquired_at >= TTL + MARGIN,
        "taken over {:?} after acquire",
        took_at - acquired_at
    );
    assert!(
        took_at - acquired_at <= TTL + MARGIN + Duration::from_secs(10),
        "takeover should follow staleness promptly"
    );
    assert_eq!(taken.token().value(), 2);
    assert_eq!(record(&memory).await.holder, "waiter");
}

#[tokio::test(start_paused = true)]
async fn takeover_racing_a_fresh_lock_never_removes_it() {
    let memory = MemoryBackend::new("b");
    let stale = {
        let failing = FaultyBackend::new(Arc::new(memory.clone()));
        stop_refreshing(&failing);
        lock_on(Arc::new(failing), "stale")
    };
    let _old = stale.acquire(Wait::No).await.expect("free");
    tokio::time::sleep(TTL + MARGIN + Duration::from_secs(1)).await;

    // B inspects the stale version, then its write is delayed...
    let slow = FaultyBackend::new(Arc::new(memory.clone()));
    slow.inject(Operation::Write, Fault::Delay(Duration::from_secs(5)));
    let b = lock_on(Arc::new(slow), "b");
    let b_attempt = tokio::spawn(async move { b.acquire(Wait::No).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ...while C takes the stale lock over first.
    let c = lock_on(Arc::new(memory.clone()), "c");
    let c_guard = c.acquire(Wait::No).await.expect("C takes over");
    let b_result = b_attempt.await.expect("task");
    match b_result {
        Err(Error::Busy { holder, .. }) => assert_eq!(holder.identity, "c"),
        other => panic!("B must lose the race, got {other:?}"),
    }
    assert!(c_guard.is_valid());
    let now = record(&memory).await;
    assert_eq!(
        (now.holder.as_str(), now.token, now.state),
        ("c", 2, LockState::Held)
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_that_finds_the_lock_broken_fires_the_loss() {
    let memory = MemoryBackend::new("b");
    let holder = lock_on(Arc::new(memory.clone()), "holder");
    let guard = holder.acquire(Wait::No).await.expect("free");
    let lost = guard.lost();
    let admin = lock_on(Arc::new(memory.clone()), "admin");
    admin.break_lock(None).await.expect("break");
    let broken_at = Instant::now();
    let reason = lost.await;
    assert!(
        matches!(reason, LossReason::Superseded { .. }),
        "{reason:?}"
    );
    assert!(
        Instant::now() - broken_at <= REFRESH,
        "noticed at the next refresh"
    );
    assert!(!guard.is_valid());
    assert!(matches!(guard.check(), Err(LossReason::Superseded { .. })));
    // The holder's refresh did not resurrect the lock: it stays revoked.
    assert_eq!(record(&memory).await.holder, "revoked by admin");
    assert!(matches!(
        guard.release().await,
        Err(Error::LeaseLost { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn refresh_that_finds_the_lock_stolen_fires_the_loss() {
    let memory = MemoryBackend::new("b");
    let guard = hold(Arc::new(memory.clone()), "holder").await;
    let current = memory
        .read("jobs/nightly")
        .await
        .expect("read")
        .value
        .expect("exists");
    let mut thief = LockRecord::from_metadata(&current.metadata).expect("lock");
    thief.holder = "thief".into();
    thief.nonce = "other".into();
    thief.token += 1;
    memory
        .write(
            "jobs/nightly",
            WriteCondition::Matches(current.version),
            &thief.to_metadata(),
        )
        .await
        .expect("overwrite");
    match guard.lost().await {
        LossReason::Superseded {
            holder: Some(holder),
        } => assert!(holder.contains("thief"), "{holder}"),
        other => panic!("expected Superseded by thief, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn transient_refresh_errors_recover_before_the_deadline() {
    let (memory, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "holder").await;
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        3,
    );
    faulty.inject(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::RateLimited),
    );
    faulty.inject(
        Operation::UpdateMetadata,
        Fault::LoseResponse(FaultError::Timeout),
    );
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(faulty.pending(), 0, "all faults fired");
    assert!(guard.is_valid(), "lease survived transient errors");
    assert!(guard.time_left() > TTL - MARGIN - REFRESH * 2);
    assert!(record(&memory).await.refresh_seq > 5);
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn refresh_errors_until_the_deadline_lose_the_lease_in_time() {
    let (_, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "holder").await;
    let acquired = Instant::now();
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Reset),
        10_000,
    );
    let reason = guard.lost().await;
    assert!(
        matches!(&reason, LossReason::Expired { last_error } if last_error.contains("reset")),
        "{reason:?}"
    );
    let held_for = Instant::now() - acquired;
    assert!(
        held_for <= TTL - MARGIN,
        "loss fired at {held_for:?}, after the deadline"
    );
    assert!(held_for >= TTL - MARGIN - Duration::from_secs(1));
    assert!(!guard.is_valid());
}

#[tokio::test(start_paused = true)]
async fn hanging_refresh_loses_the_lease_at_the_deadline() {
    let (_, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "holder").await;
    let acquired = Instant::now();
    faulty.inject(
        Operation::UpdateMetadata,
        Fault::Delay(Duration::from_secs(3600)),
    );
    guard.lost().await;
    assert!(Instant::now() - acquired <= TTL - MARGIN);
}

#[tokio::test(start_paused = true)]
async fn lost_create_response_is_resolved_by_nonce() {
    let (memory, faulty) = faulty_bucket();
    faulty.inject(Operation::Write, Fault::LoseResponse(FaultError::Timeout));
    // The inspect fails transiently first: a single attempt still retries it.
    faulty.inject(Operation::Read, Fault::Reject(FaultError::Unavailable));
    let guard = lock_on(Arc::new(faulty.clone()), "me")
        .acquire(Wait::No)
        .await
        .expect("acquired via nonce");
    assert_eq!(guard.token().value(), 1);
    assert_eq!(record(&memory).await.holder, "me");
    guard.release().await.expect("release");
    assert_eq!(record(&memory).await.state, LockState::Released);
}

#[tokio::test(start_paused = true)]
async fn create_that_did_not_apply_is_not_mistaken_for_ours() {
    let (_, faulty) = faulty_bucket();
    faulty.inject(Operation::Write, Fault::Reject(FaultError::Unavailable));
    let lock = lock_on(Arc::new(faulty.clone()), "me");
    // The 503 was before applying; a retry acquires normally.
    let guard = lock
        .acquire(Wait::For(Duration::from_secs(5)))
        .await
        .expect("acquired on retry");
    assert_eq!(guard.token().value(), 1);
}

#[tokio::test(start_paused = true)]
async fn lost_release_response_is_resolved_and_not_repeated() {
    let (memory, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "me").await;
    faulty.inject(
        Operation::UpdateMetadata,
        Fault::LoseResponse(FaultError::Reset),
    );
    guard
        .release()
        .await
        .expect("released despite the lost response");
    assert_eq!(record(&memory).await.state, LockState::Released);
}

#[tokio::test(start_paused = true)]
async fn waiters_treat_429_as_backpressure() {
    let memory = MemoryBackend::new("b");
    let holder = hold(Arc::new(memory.clone()), "holder").await;
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    faulty.inject_times(Operation::Read, Fault::Reject(FaultError::RateLimited), 20);
    let waiter = lock_on(Arc::new(faulty.clone()), "waiter");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        holder.release().await
    });
    let guard = waiter
        .acquire(Wait::For(Duration::from_secs(600)))
        .await
        .expect("acquired after 429s");
    assert_eq!(faulty.pending(), 0);
    assert_eq!(guard.token().value(), 2);
    release.await.expect("task").expect("release");
}

#[tokio::test(start_paused = true)]
async fn unavailable_storage_fails_in_bounded_time() {
    let (_, faulty) = faulty_bucket();
    faulty.inject_times(
        Operation::Read,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    let lock = lock_on(Arc::new(faulty), "me");
    let started = Instant::now();
    let result = lock.acquire(Wait::No).await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(Instant::now() - started <= Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn permission_denied_is_not_retried() {
    let (_, faulty) = faulty_bucket();
    faulty.inject(Operation::Read, Fault::Reject(FaultError::PermissionDenied));
    let result = lock_on(Arc::new(faulty.clone()), "me")
        .acquire(Wait::Forever)
        .await;
    assert!(
        matches!(result, Err(Error::PermissionDenied { .. })),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn skewed_clocks_stay_safe() {
    for skew_hours in [-1i64, 1] {
        let memory = MemoryBackend::new("b");
        // GCS's clock and this host's disagree by an hour; nothing may depend on it.
        memory.set_server_skew(chrono::Duration::hours(skew_hours));
        let failing = FaultyBackend::new(Arc::new(memory.clone()));
        let holder = lock_on(Arc::new(failing.clone()), "holder");
        let guard = holder.acquire(Wait::No).await.expect("free");
        let waiter = lock_on(Arc::new(memory.clone()), "waiter");
        assert!(
            matches!(waiter.acquire(Wait::No).await, Err(Error::Busy { .. })),
            "fresh lock is not stale (skew {skew_hours}h)"
        );
        tokio::time::sleep(TTL * 2).await;
        assert!(
            guard.is_valid(),
            "refreshing holder stays valid (skew {skew_hours}h)"
        );
        assert!(matches!(
            waiter.acquire(Wait::No).await,
            Err(Error::Busy { .. })
        ));
        // Now the holder stops refreshing; the waiter takes over only after its deadline.
        stop_refreshing(&failing);
        let taken = waiter.acquire(Wait::Forever).await.expect("takeover");
        assert!(!guard.is_valid());
        assert_eq!(taken.token().value(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_server_date_waiters_fall_back_to_their_own_clock() {
    // A backend that strips the Date header: staleness must come from watching the
    // version stay unchanged for a TTL on the waiter's monotonic clock.
    let (memory, failing) = faulty_bucket();
    stop_refreshing(&failing);
    let guard = hold(Arc::new(failing), "crashed").await;
    let start = Instant::now();
    let waiter = lock_on(
        Arc::new(Intercept::wrap(Arc::new(memory.clone()), NoDate)),
        "waiter",
    );
    let taken = waiter
        .acquire(Wait::Forever)
        .await
        .expect("takeover by local observation");
    assert!(!guard.is_valid());
    assert!(Instant::now() - start >= TTL + MARGIN);
    assert_eq!(taken.token().value(), 2);
}

#[tokio::test(start_paused = true)]
async fn commit_runs_only_with_enough_lease_left() {
    let (_, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "me").await;
    let token = guard
        .commit(Duration::from_secs(5), |token| token)
        .expect("enough time");
    assert_eq!(token, guard.token());
    assert!(matches!(
        guard.commit(TTL, |_| ()),
        Err(Error::InsufficientTime { .. })
    ));
    // Once refreshes fail, the time left shrinks until commits are refused.
    stop_refreshing(&faulty);
    tokio::time::sleep(TTL - MARGIN - Duration::from_secs(3)).await;
    assert!(matches!(
        guard.commit(Duration::from_secs(5), |_| ()),
        Err(Error::InsufficientTime { .. })
    ));
    // An async commit that outlives the lease is abandoned.
    let slow = guard
        .commit_async(Duration::from_secs(1), |_| {
            tokio::time::sleep(Duration::from_secs(60))
        })
        .await;
    assert!(matches!(slow, Err(Error::LeaseLost { .. })), "{slow:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_releases_in_the_background() {
    let memory = MemoryBackend::new("b");
    let lock = lock_on(Arc::new(memory.clone()), "me");
    let guard = lock.acquire(Wait::No).await.expect("free");
    drop(guard);
    let other = lock_on(Arc::new(memory.clone()), "other");
    let next = other
        .acquire(Wait::For(Duration::from_secs(5)))
        .await
        .expect("released by drop");
    assert_eq!(next.token().value(), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_wait_leaves_no_lock_behind() {
    let memory = MemoryBackend::new("b");
    let holder = hold(Arc::new(memory.clone()), "holder").await;
    let cancel = CancellationToken::new();
    let waiter = lock_on(Arc::new(memory.clone()), "waiter");
    let wait = {
        let cancel = cancel.clone();
        tokio::spawn(async move { waiter.acquire(Wait::Forever).cancel_on(&cancel).await })
    };
    tokio::time::sleep(Duration::from_secs(20)).await;
    cancel.cancel();
    assert!(matches!(
        wait.await.expect("task"),
        Err(Error::Cancelled { .. })
    ));
    holder.release().await.expect("release");
    assert_eq!(record(&memory).await.state, LockState::Released);
}

#[tokio::test(start_paused = true)]
async fn foreign_objects_are_never_overwritten() {
    let memory = MemoryBackend::new("b");
    let mut metadata = Metadata::new();
    metadata.insert("owner".into(), "someone else".into());
    memory
        .write("jobs/nightly", WriteCondition::DoesNotExist, &metadata)
        .await
        .expect("write");
    let lock = lock_on(Arc::new(memory.clone()), "me");
    assert!(matches!(
        lock.acquire(Wait::No).await,
        Err(Error::NotALock { .. })
    ));
    assert!(matches!(
        lock.status().await,
        Ok(LockStatus::NotALock { .. })
    ));
    assert!(matches!(
        lock.break_lock(None).await,
        Err(Error::NotALock { .. })
    ));
    let still = memory
        .read("jobs/nightly")
        .await
        .expect("read")
        .value
        .expect("exists");
    assert_eq!(still.metadata, metadata);
}

#[tokio::test(start_paused = true)]
async fn status_reports_server_judged_state() {
    let memory = MemoryBackend::new("b");
    let lock = lock_on(Arc::new(memory.clone()), "me");
    assert_eq!(lock.status().await.expect("status"), LockStatus::Free);
    let failing = FaultyBackend::new(Arc::new(memory.clone()));
    stop_refreshing(&failing);
    let guard = hold(Arc::new(failing), "holder").await;
    match lock.status().await.expect("status") {
        LockStatus::Held(held) => {
            assert_eq!(held.holder, "holder");
            assert_eq!(held.token, guard.token());
            assert_eq!(held.expires_in, Some(TTL + MARGIN));
        }
        other => panic!("expected held, got {other:?}"),
    }
    tokio::time::sleep(TTL + MARGIN).await;
    assert!(matches!(
        lock.status().await.expect("status"),
        LockStatus::Stale(_)
    ));
    let listed = gcslock::admin::list_locks(&memory, "jobs/", Duration::from_secs(10))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].1, LockStatus::Stale(_)));
}

#[test]
fn bad_options_are_refused_before_any_request() {
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new("b"));
    let refuse = |options: LockOptions, needle: &str| {
        let error = Lock::new(Arc::clone(&memory), "o", options)
            .expect_err(needle)
            .to_string();
        assert!(error.contains(needle), "{error}");
    };
    refuse(LockOptions::default().ttl(Duration::ZERO), "out of range");
    refuse(
        LockOptions::default().ttl(Duration::from_secs(86400 * 365)),
        "out of range",
    );
    refuse(
        LockOptions::default()
            .ttl(Duration::from_secs(60))
            .refresh_interval(Duration::from_secs(60)),
        "refresh interval",
    );
    refuse(
        LockOptions::default().refresh_interval(Duration::ZERO),
        "refresh interval",
    );
    refuse(LockOptions::default().identity(""), "identity");
    let error = Lock::new(Arc::clone(&memory), "", LockOptions::default()).expect_err("empty name");
    assert!(matches!(error, Error::InvalidInput(_)));
    assert_eq!(memory.describe(), "memory://b");
}

#[tokio::test(start_paused = true)]
async fn waiters_judge_a_lock_by_its_holders_ttl_not_their_own() {
    let (memory, crashed_backend) = faulty_bucket();
    stop_refreshing(&crashed_backend);
    let short = Lock::new(
        Arc::new(crashed_backend),
        "jobs/nightly",
        LockOptions::default()
            .ttl(Duration::from_secs(10))
            .identity("short"),
    )
    .expect("valid");
    let guard = short.acquire(Wait::No).await.expect("free");
    let acquired = Instant::now();
    // The waiter's own TTL (5 min) and margin (30 s) must not delay the takeover.
    let waiter = Lock::new(
        Arc::new(memory.clone()),
        "jobs/nightly",
        LockOptions::default().identity("long"),
    )
    .expect("valid");
    let taken = waiter.acquire(Wait::Forever).await.expect("takeover");
    let after = Instant::now() - acquired;
    assert!(!guard.is_valid());
    assert!(
        after >= Duration::from_secs(11),
        "{after:?}: before the holder's TTL + margin"
    );
    assert!(
        after <= Duration::from_secs(13),
        "{after:?}: waited on its own, longer margin"
    );
    assert_eq!(taken.token().value(), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelling_while_a_create_is_in_flight_never_leaves_a_lock_behind() {
    let (memory, slow) = faulty_bucket();
    // The create applies at once, but its response takes 5 s to arrive.
    slow.inject(
        Operation::Write,
        Fault::DelayResponse(Duration::from_secs(5)),
    );
    let lock = lock_on(Arc::new(slow), "me");
    let cancel = CancellationToken::new();
    let attempt = {
        let cancel = cancel.clone();
        tokio::spawn(async move { lock.acquire(Wait::Forever).cancel_on(&cancel).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    match attempt.await.expect("task") {
        // The write was sent, so it runs to completion and the caller owns the lock.
        Ok(guard) => guard.release().await.expect("release"),
        Err(error) => panic!("a sent create must not be abandoned: {error}"),
    }
    assert_eq!(
        record(&memory).await.state,
        LockState::Released,
        "nothing left held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_ran_out_before_acquire_returned_is_never_handed_out() {
    let memory = MemoryBackend::new("b");
    // A's create applies at once, but its answer arrives after A's whole lease (as if
    // A were suspended while the request was in flight).
    let suspended = FaultyBackend::new(Arc::new(memory.clone()));
    suspended.inject(Operation::Write, Fault::DelayResponse(TTL * 2));
    let a = lock_on(Arc::new(suspended), "a");
    let a_attempt = tokio::spawn(async move { a.acquire(Wait::No).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(record(&memory).await.holder, "a", "A's create has applied");
    // Meanwhile B takes the unrefreshed lock over once it is stale.
    let b = lock_on(Arc::new(memory.clone()), "b")
        .acquire(Wait::Forever)
        .await
        .expect("B takes over");
    match a_attempt.await.expect("task") {
        Err(Error::Busy { holder, .. }) => assert_eq!(holder.identity, "b"),
        Ok(guard) => panic!(
            "A got a guard while B holds the lock (valid: {})",
            guard.is_valid()
        ),
        Err(other) => panic!("expected Busy, got {other}"),
    }
    assert!(b.is_valid());
    assert_eq!(
        record(&memory).await.holder,
        "b",
        "A's late release left B alone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_with_no_contender_is_released_and_retried() {
    let (_, suspended) = faulty_bucket();
    suspended.inject(Operation::Write, Fault::DelayResponse(TTL));
    let guard = lock_on(Arc::new(suspended), "a")
        .acquire(Wait::No)
        .await
        .expect("acquired afresh");
    assert!(guard.is_valid());
    assert_eq!(
        guard.token().value(),
        2,
        "the expired lease was released, then a new one taken"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_ends_during_a_storage_hiccup_reports_busy() {
    let memory = MemoryBackend::new("b");
    let _holder = hold(Arc::new(memory.clone()), "holder").await;
    let flaky = FaultyBackend::new(Arc::new(memory.clone()));
    let waiter = lock_on(Arc::new(flaky.clone()), "waiter");
    let wait =
        tokio::spawn(async move { waiter.acquire(Wait::For(Duration::from_secs(20))).await });
    // Busy answers first; then storage fails from just before the wait ends.
    tokio::time::sleep(Duration::from_secs(18)).await;
    flaky.inject_times(
        Operation::Read,
        Fault::Reject(FaultError::Unavailable),
        1000,
    );
    match wait.await.expect("task") {
        Err(Error::Busy { holder, .. }) => assert_eq!(holder.identity, "holder"),
        other => panic!("expected Busy, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn release_lets_a_refresh_in_flight_finish_instead_of_racing_it() {
    let (memory, faulty) = faulty_bucket();
    let guard = hold(Arc::new(faulty.clone()), "me").await;
    // The first refresh applies on the server, but its answer takes a second.
    faulty.inject(
        Operation::UpdateMetadata,
        Fault::DelayResponse(Duration::from_secs(1)),
    );
    for _ in 0..(REFRESH * 2).as_millis() / 50 {
        if record(&memory).await.refresh_seq > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(faulty.pending(), 0, "the refresh is in flight");
    let before = memory.request_count();
    guard.release().await.expect("release");
    assert_eq!(
        memory.request_count() - before,
        1,
        "one PATCH: no 412, read-back and second PATCH"
    );
    assert_eq!(record(&memory).await.state, LockState::Released);
}

#[test]
fn production_gcs_refuses_refreshes_faster_than_its_write_rate() {
    use gcslock::backend::gcs::GcsBackend;
    let production = GcsBackend::builder("my-bucket")
        .endpoint(Some("https://storage.googleapis.com".into()))
        .build()
        .expect("no request is sent to build it");
    let error = Lock::new(
        Arc::new(production),
        "o",
        LockOptions::default().ttl(Duration::from_secs(2)),
    )
    .expect_err("a 250 ms refresh exceeds one write per second");
    assert!(error.to_string().contains("at least 8s"), "{error}");
    // An emulator has no such limit: short TTLs keep tests fast.
    let emulator = GcsBackend::builder("my-bucket")
        .endpoint(Some("http://127.0.0.1:1".into()))
        .build()
        .expect("emulator");
    Lock::new(
        Arc::new(emulator),
        "o",
        LockOptions::default().ttl(Duration::from_secs(2)),
    )
    .expect("allowed on an emulator");
}
