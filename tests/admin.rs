//! The admin operations (status, list, break, repair) under storage faults and
//! hostile records, on the strict in-memory backend and tokio's paused clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gcslock::admin::{BreakOptions, BreakOutcome, LockStatus};
use gcslock::backend::fault::{Fault, FaultError, FaultyBackend, Operation};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, Metadata, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Error, FencingToken, Guard, Lock, LockOptions, LossReason, Wait};
use support::{faulty_bucket, record_at};
use tokio::time::Instant;

const NAME: &str = "jobs/nightly";
const TTL: Duration = Duration::from_secs(80);
const REFRESH: Duration = Duration::from_secs(10); // TTL/8
const MARGIN: Duration = Duration::from_secs(8); // TTL/10
const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

fn lock_on(backend: Arc<dyn Backend>, identity: &str) -> Lock {
    let options = LockOptions::default()
        .ttl(TTL)
        .identity(identity)
        .unavailable_timeout(STORAGE_TIMEOUT);
    Lock::new(backend, NAME, options).expect("valid lock")
}

/// Takes the free lock through `backend` as `identity`.
async fn hold(backend: Arc<dyn Backend>, identity: &str) -> Guard {
    lock_on(backend, identity)
        .acquire(Wait::No)
        .await
        .expect("free")
}

/// A bucket whose lock "holder" holds.
async fn held() -> (MemoryBackend, Guard) {
    let memory = MemoryBackend::new("b");
    let holder = hold(Arc::new(memory.clone()), "holder").await;
    (memory, holder)
}

/// The lock as the administrator "admin" sees it.
fn admin_on(memory: &MemoryBackend) -> Lock {
    lock_on(Arc::new(memory.clone()), "admin")
}

async fn record(memory: &MemoryBackend) -> LockRecord {
    record_at(memory, NAME).await
}

async fn metadata(memory: &MemoryBackend) -> Metadata {
    memory
        .read(NAME)
        .await
        .expect("read")
        .value
        .expect("object exists")
        .metadata
}

fn faulty(memory: &MemoryBackend) -> FaultyBackend {
    FaultyBackend::new(Arc::new(memory.clone()))
}

fn metadata_of(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts that `operation` gave up as unavailable once the storage timeout ran
/// out, and not much later.
async fn gives_up_after_the_storage_timeout<T: std::fmt::Debug>(
    operation: impl std::future::Future<Output = Result<T, Error>>,
) {
    let started = Instant::now();
    let result = operation.await;
    let took = Instant::now() - started;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    let grace = Duration::from_secs(1);
    assert!(
        took >= STORAGE_TIMEOUT && took < STORAGE_TIMEOUT + grace,
        "{took:?}"
    );
}

// ---------------------------------------------------------------- retries

#[tokio::test(start_paused = true)]
async fn status_and_list_retry_transient_errors_then_succeed() {
    let (memory, holder) = held().await;
    let faults = faulty(&memory);
    for fault in [
        FaultError::Unavailable,
        FaultError::RateLimited,
        FaultError::Reset,
        FaultError::Timeout,
    ] {
        faults.inject(Operation::Read, Fault::Reject(fault));
        faults.inject(Operation::List, Fault::Reject(fault));
    }
    let admin = lock_on(Arc::new(faults.clone()), "admin");
    match admin.status().await.expect("status after retries") {
        LockStatus::Held(held) => assert_eq!(held.token, holder.token()),
        other => panic!("expected held, got {other:?}"),
    }
    let listed = gcslock::admin::list_locks(&faults, "jobs/", STORAGE_TIMEOUT)
        .await
        .expect("list after retries");
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].1, LockStatus::Held(_)), "{listed:?}");
    assert_eq!(faults.pending(), 0, "every injected fault was met");
}

#[tokio::test(start_paused = true)]
async fn persistent_failure_is_unavailable_after_the_timeout_not_before() {
    let (_, faults) = faulty_bucket();
    faults.inject_times(
        Operation::Read,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    faults.inject_times(
        Operation::List,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    let admin = lock_on(Arc::new(faults.clone()), "admin");
    gives_up_after_the_storage_timeout(admin.status()).await;

    gives_up_after_the_storage_timeout(admin.break_lock(None)).await;

    gives_up_after_the_storage_timeout(gcslock::admin::list_locks(
        &faults,
        "jobs/",
        STORAGE_TIMEOUT,
    ))
    .await;
}

#[tokio::test(start_paused = true)]
async fn permission_denied_is_not_retried_by_admin_operations() {
    let (_, faults) = faulty_bucket();
    faults.inject(Operation::Read, Fault::Reject(FaultError::PermissionDenied));
    faults.inject(Operation::Read, Fault::Reject(FaultError::Unavailable));
    let admin = lock_on(Arc::new(faults.clone()), "admin");
    let started = Instant::now();
    assert!(matches!(
        admin.status().await,
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(Instant::now(), started, "no pause before a permanent error");
    assert_eq!(faults.pending(), 1);
}

#[tokio::test(start_paused = true)]
async fn break_retries_and_resolves_a_lost_response_by_reading_back() {
    let (memory, holder) = held().await;
    let seq_before = record(&memory).await.refresh_seq;
    let faults = faulty(&memory);
    faults.inject(Operation::Read, Fault::Reject(FaultError::Unavailable));
    faults.inject(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::RateLimited),
    );
    // The revoke applies, but its answer is lost: resolved by the nonce read back,
    // not sent a third time (which would meet a 412 and report a conflict).
    faults.inject(
        Operation::UpdateMetadata,
        Fault::LoseResponse(FaultError::Reset),
    );
    faults.inject(Operation::Read, Fault::Reject(FaultError::Timeout));
    let admin = lock_on(Arc::new(faults.clone()), "admin");
    let outcome = admin.break_lock(None).await.expect("break after retries");
    match outcome {
        BreakOutcome::RevokedUntil {
            previous_holder,
            token,
            ..
        } => {
            assert_eq!(previous_holder, "holder");
            assert_eq!(token, holder.token());
        }
        other => panic!("expected revoked, got {other:?}"),
    }
    assert_eq!(faults.pending(), 0);
    let now = record(&memory).await;
    assert_eq!(now.holder, "revoked by admin");
    assert_eq!(now.refresh_seq, seq_before + 1, "written exactly once");
}

// ---------------------------------------------------------------- revoke and --now

#[tokio::test(start_paused = true)]
async fn default_break_revokes_until_the_broken_holder_must_have_stopped() {
    let (memory, holder) = held().await;
    let lost = holder.lost();
    // Break mid-interval, so the holder's last refresh is well before the break.
    tokio::time::sleep(REFRESH / 2).await;
    let broken_at = Instant::now();
    let admin = admin_on(&memory);
    let outcome = admin.break_lock(None).await.expect("break");
    let BreakOutcome::RevokedUntil {
        token, stale_in, ..
    } = outcome
    else {
        panic!("expected revoked, got {outcome:?}");
    };
    assert_eq!(token, holder.token(), "the token is kept");
    assert_eq!(stale_in, Some(TTL + MARGIN));
    let revoked = record(&memory).await;
    assert_eq!(revoked.state, LockState::Held);
    assert_eq!(revoked.token, holder.token().value());

    let waiter_lock = lock_on(Arc::new(memory.clone()), "waiter");
    let waiter = tokio::spawn(async move { waiter_lock.acquire(Wait::Forever).await });

    let reason = lost.await;
    assert!(
        matches!(reason, LossReason::Superseded { .. }),
        "{reason:?}"
    );
    assert!(
        Instant::now() - broken_at <= REFRESH,
        "noticed at the next refresh"
    );
    assert!(
        !waiter.is_finished(),
        "nobody acquires while the holder may run"
    );

    let next = waiter.await.expect("task").expect("acquired once stale");
    let acquired_after = Instant::now() - broken_at;
    assert!(acquired_after >= TTL + MARGIN, "{acquired_after:?}");
    assert!(
        holder.time_left().is_zero(),
        "the broken holder's deadline passed"
    );
    assert_eq!(next.token().value(), holder.token().value() + 1);
    // And the holder's refreshes never resurrected it.
    assert_eq!(record(&memory).await.holder, "waiter");
}

#[tokio::test(start_paused = true)]
async fn break_now_releases_at_once() {
    let (memory, holder) = held().await;
    let lost = holder.lost();
    let admin = admin_on(&memory);
    let outcome = admin
        .break_with(&BreakOptions::new().now(true))
        .await
        .expect("break");
    assert!(
        matches!(&outcome, BreakOutcome::Broken { previous_holder, .. } if previous_holder == "holder"),
        "{outcome:?}"
    );
    let next = lock_on(Arc::new(memory.clone()), "next")
        .acquire(Wait::No)
        .await
        .expect("free at once");
    assert_eq!(next.token().value(), holder.token().value() + 1);
    assert!(matches!(lost.await, LossReason::Superseded { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_stale_lock_is_simply_released() {
    let memory = MemoryBackend::new("b");
    let crashed = faulty(&memory);
    crashed.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        1000,
    );
    let holder = hold(Arc::new(crashed), "holder").await;
    tokio::time::sleep(TTL + MARGIN).await;
    let admin = admin_on(&memory);
    let outcome = admin.break_lock(None).await.expect("break");
    assert!(
        matches!(outcome, BreakOutcome::Broken { .. }),
        "{outcome:?}"
    );
    assert_eq!(record(&memory).await.state, LockState::Released);
    drop(holder);
}

#[tokio::test(start_paused = true)]
async fn breaking_a_revoked_lock_again_does_not_extend_it() {
    let (memory, holder) = held().await;
    let admin = admin_on(&memory);
    let first = admin.break_lock(None).await.expect("break");
    let version = memory
        .read(NAME)
        .await
        .expect("read")
        .value
        .expect("lock")
        .version;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let second = admin.break_lock(None).await.expect("break again");
    match (first, second) {
        (
            BreakOutcome::RevokedUntil { stale_at: a, .. },
            BreakOutcome::RevokedUntil {
                stale_at: b,
                stale_in,
                previous_holder,
                ..
            },
        ) => {
            assert_eq!(a, b, "the stale moment did not move");
            assert_eq!(stale_in, Some(TTL + MARGIN - Duration::from_secs(30)));
            assert_eq!(previous_holder, "revoked by admin");
        }
        other => panic!("expected two revocations, got {other:?}"),
    }
    let now = memory
        .read(NAME)
        .await
        .expect("read")
        .value
        .expect("lock")
        .version;
    assert_eq!(now, version, "nothing written the second time");
    drop(holder);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_beyond_the_maximum_needs_now() {
    let memory = MemoryBackend::new("b");
    let forever = LockRecord {
        state: LockState::Held,
        token: 3,
        holder: "forever".into(),
        nonce: "n".into(),
        // Beyond every finite TTL: a record with a longer one is not a lock at all.
        ttl: gcslock::Ttl::Forever,
        refresh_seq: 0,
        completed: None,
    };
    memory
        .write(NAME, WriteCondition::DoesNotExist, &forever.to_metadata())
        .await
        .expect("write");
    let admin = admin_on(&memory);
    let refused = admin.break_lock(None).await;
    match &refused {
        Err(Error::Conflict { why, .. }) => assert!(why.contains("--now"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(record(&memory).await, forever, "untouched");
    let outcome = admin
        .break_with(&BreakOptions::new().now(true))
        .await
        .expect("break --now");
    assert!(matches!(outcome, BreakOutcome::Broken { token, .. } if token.value() == 3));
}

#[tokio::test(start_paused = true)]
async fn break_with_the_wrong_token_changes_nothing() {
    let (memory, holder) = held().await;
    let admin = admin_on(&memory);
    let wrong = admin.break_lock(Some(FencingToken::new(9))).await;
    assert!(matches!(wrong, Err(Error::Conflict { .. })), "{wrong:?}");
    assert_eq!(record(&memory).await.holder, "holder");
    let right = admin.break_lock(Some(holder.token())).await;
    assert!(
        matches!(right, Ok(BreakOutcome::RevokedUntil { .. })),
        "{right:?}"
    );
}

// ---------------------------------------------------------------- repair

#[tokio::test(start_paused = true)]
async fn an_invalid_record_is_refused_then_repaired_above_every_token() {
    let memory = MemoryBackend::new("b");
    let hostile = metadata_of(&[
        ("gcslock-format", "1"),
        ("gcslock-state", "held"),
        ("gcslock-token", "41"),
        ("gcslock-fence-token", "50"),
        ("gcslock-holder", "\u{1b}[2Jevil\n"),
        ("gcslock-ttl-ms", "99999999999999999999999"),
        ("other", "kept"),
    ]);
    memory
        .write(NAME, WriteCondition::DoesNotExist, &hostile)
        .await
        .expect("write");
    let admin = admin_on(&memory);
    let refused = admin.break_lock(None).await;
    assert!(
        matches!(refused, Err(Error::NotALock { .. })),
        "{refused:?}"
    );
    assert_eq!(metadata(&memory).await, hostile, "untouched without repair");

    let wrong = admin
        .break_with(
            &BreakOptions::new()
                .repair(true)
                .expected_token(Some(FencingToken::new(40))),
        )
        .await;
    assert!(matches!(wrong, Err(Error::Conflict { .. })), "{wrong:?}");

    let outcome = admin
        .break_with(
            &BreakOptions::new()
                .repair(true)
                .expected_token(Some(FencingToken::new(41))),
        )
        .await
        .expect("repair");
    match outcome {
        BreakOutcome::Repaired { token, why, .. } => {
            assert_eq!(token.value(), 51);
            assert!(why.contains("gcslock-"), "{why}");
        }
        other => panic!("expected repaired, got {other:?}"),
    }
    let repaired = record(&memory).await;
    assert_eq!(repaired.state, LockState::Released);
    assert_eq!(repaired.token, 51);
    assert_eq!(
        metadata(&memory).await.get("other").map(String::as_str),
        Some("kept")
    );
    let next = lock_on(Arc::new(memory.clone()), "next")
        .acquire(Wait::No)
        .await
        .expect("free after repair");
    assert_eq!(next.token().value(), 52);
}

#[tokio::test(start_paused = true)]
async fn repair_without_any_token_starts_above_zero() {
    let memory = MemoryBackend::new("b");
    memory
        .write(
            NAME,
            WriteCondition::DoesNotExist,
            &metadata_of(&[("gcslock-state", "bogus"), ("gcslock-token", "x")]),
        )
        .await
        .expect("write");
    let admin = admin_on(&memory);
    let outcome = admin
        .break_with(&BreakOptions::new().repair(true))
        .await
        .expect("repair");
    assert!(
        matches!(outcome, BreakOutcome::Repaired { token, .. } if token.value() == 1),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn repair_never_touches_foreign_objects_or_exhausted_tokens() {
    let memory = MemoryBackend::new("b");
    let foreign = metadata_of(&[("owner", "someone else")]);
    memory
        .write(NAME, WriteCondition::DoesNotExist, &foreign)
        .await
        .expect("write");
    let admin = admin_on(&memory);
    let repair = BreakOptions::new().repair(true);
    let refused = admin.break_with(&repair).await;
    assert!(
        matches!(refused, Err(Error::NotALock { .. })),
        "{refused:?}"
    );
    assert_eq!(metadata(&memory).await, foreign);

    let exhausted = metadata_of(&[("gcslock-token", &u64::MAX.to_string())]);
    let other = "jobs/exhausted";
    memory
        .write(other, WriteCondition::DoesNotExist, &exhausted)
        .await
        .expect("write");
    let options = LockOptions::default().identity("admin");
    let admin = Lock::new(Arc::new(memory.clone()), other, options).expect("lock");
    let refused = admin.break_with(&repair).await;
    assert!(
        matches!(refused, Err(Error::NotALock { .. })),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn repair_on_a_valid_record_breaks_it() {
    let (memory, holder) = held().await;
    let admin = admin_on(&memory);
    let outcome = admin
        .break_with(&BreakOptions::new().repair(true))
        .await
        .expect("break");
    assert!(
        matches!(outcome, BreakOutcome::RevokedUntil { token, .. } if token == holder.token()),
        "{outcome:?}"
    );
}
