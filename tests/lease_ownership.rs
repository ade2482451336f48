//! Letting go of a lease (release, abandon, drop) and knowing what is ours: a
//! create whose answer was lost, a record rewritten under our nonce. On the strict
//! in-memory backend under tokio's paused clock.

#[allow(dead_code)] // each test crate uses its part
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use gcslock::admin::LockStatus;
use gcslock::backend::fault::Fault;
use gcslock::backend::intercept::{Call, Hook, Intercept, Operation, Outcome};
use gcslock::backend::memory::{MemoryBackend, Mutation};
use gcslock::backend::{Backend, BackendError};
use gcslock::{Lock, LockOptions, LossReason, Ttl, Wait};
use support::record_at;
use tokio::time::Instant;

const OBJECT: &str = "jobs/nightly";
const TTL: Duration = Duration::from_secs(80);

/// Counts the calls that change storage.
#[derive(Debug, Default)]
struct Mutations(AtomicUsize);

#[async_trait]
impl Hook for Mutations {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        if matches!(
            call.operation(),
            Operation::Write | Operation::UpdateMetadata | Operation::Delete
        ) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        proceed.await
    }
}

fn lock_on(backend: Arc<dyn Backend>, options: LockOptions) -> Lock {
    Lock::new(backend, OBJECT, options.identity("me")).expect("valid lock")
}

#[tokio::test(start_paused = true)]
async fn abandon_writes_nothing_and_the_lock_goes_stale_by_its_ttl() {
    let memory = MemoryBackend::new("b");
    let counted = Arc::new(Intercept::wrap(
        Arc::new(memory.clone()),
        Mutations::default(),
    ));
    let lock = lock_on(counted.clone(), LockOptions::default().ttl(TTL));
    let guard = lock.acquire(Wait::No).await.expect("free");
    let lost = guard.lost();
    let before = counted.0.load(Ordering::SeqCst);

    guard.abandon();
    assert_eq!(
        lost.now_or_never(),
        Some(LossReason::Released),
        "lost() resolves as abandon returns"
    );
    // Held until the TTL passes, by the server's clock; then stale.
    assert!(matches!(lock.status().await, Ok(LockStatus::Held(_))));
    tokio::time::sleep(TTL * 2).await;
    assert!(
        matches!(lock.status().await, Ok(LockStatus::Stale(_))),
        "the abandoned lock expires by its TTL"
    );
    assert_eq!(
        counted.0.load(Ordering::SeqCst),
        before,
        "abandon sent no write: no release, no refresh"
    );
}

/// Failed before: the refresh task was stopped (and the lease marked lost) only
/// by a task spawned from `drop`, which a runtime shutting down may never run.
#[tokio::test(start_paused = true)]
async fn dropping_a_guard_stops_its_lease_before_drop_returns() {
    let memory = MemoryBackend::new("b");
    let lock = lock_on(Arc::new(memory.clone()), LockOptions::default().ttl(TTL));
    let guard = lock.acquire(Wait::No).await.expect("free");
    let lost = guard.lost();
    drop(guard);
    assert_eq!(lost.now_or_never(), Some(LossReason::Released));
    // The best-effort release still runs in the background.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(
        lock.status().await,
        Ok(LockStatus::Released { .. })
    ));
}

/// Loses the answer to the first create (it applies), then fails every read
/// for `outage` from that moment.
#[derive(Debug)]
struct LostCreateThenOutage {
    outage: Duration,
    until: Mutex<Option<Instant>>,
    create_lost: AtomicBool,
}

#[async_trait]
impl Hook for LostCreateThenOutage {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        let operation = call.operation();
        let until = *self.until.lock().expect("not poisoned");
        match operation {
            Operation::Write if !self.create_lost.swap(true, Ordering::SeqCst) => {
                let _applied = proceed.await;
                *self.until.lock().expect("not poisoned") = Some(Instant::now() + self.outage);
                Outcome::failed(operation, BackendError::Timeout(Duration::from_secs(10)))
            }
            Operation::Read if until.is_some_and(|until| Instant::now() < until) => {
                Outcome::failed(
                    operation,
                    BackendError::Server {
                        status: 503,
                        message: "outage".into(),
                    },
                )
            }
            _ => proceed.await,
        }
    }
}

/// Failed before: acquire gave up after its unavailable timeout with the create
/// unresolved, and the forever lock stayed held by nobody until broken.
#[tokio::test(start_paused = true)]
async fn a_forever_lock_whose_create_answer_was_lost_is_resolved_before_giving_up() {
    let memory = MemoryBackend::new("b");
    let unavailable = Duration::from_secs(30);
    let hook = LostCreateThenOutage {
        // Longer than acquire's own retrying (the read-back until a refresh
        // interval of 60 s, then 30 s of retries), shorter than that plus the
        // resolution of the pending create.
        outage: Duration::from_secs(100),
        until: Mutex::new(None),
        create_lost: AtomicBool::new(false),
    };
    let backend = Arc::new(Intercept::wrap(Arc::new(memory.clone()), hook));
    let lock = lock_on(
        backend,
        LockOptions::default()
            .ttl(Ttl::Forever)
            .unavailable_timeout(unavailable),
    );
    let guard = lock
        .acquire(Wait::No)
        .await
        .expect("the create applied: the lock is ours, not held by nobody");
    assert_eq!(guard.token().value(), 1);
    assert!(guard.is_valid());
    guard.release().await.expect("release");
    assert!(matches!(
        lock.status().await,
        Ok(LockStatus::Released { .. })
    ));
}

/// Failed before: a record showing our nonce was taken as ours whatever else it
/// said, so the holder refreshed over a rewritten TTL or token, and a tombstone
/// under our nonce read as our own release.
#[tokio::test(start_paused = true)]
async fn a_record_rewritten_under_our_nonce_is_not_ours() {
    for (key, value) in [
        ("gcslock-ttl-ms", "120000"),
        ("gcslock-token", "99"),
        ("gcslock-state", "released"),
        ("gcslock-holder", "someone-else"),
    ] {
        let memory = MemoryBackend::new("b");
        let lock = lock_on(Arc::new(memory.clone()), LockOptions::default().ttl(TTL));
        let guard = lock.acquire(Wait::No).await.expect("free");
        let ours = record_at(&memory, OBJECT).await;
        memory
            .mutate(OBJECT, |current| {
                let (info, _) = current.ok_or(BackendError::NotFound)?;
                let mut metadata = info.metadata.clone();
                metadata.insert(key.into(), value.into());
                Ok::<_, BackendError>(Mutation::SetMetadata(metadata))
            })
            .expect("rewrite");
        assert_eq!(record_at(&memory, OBJECT).await.nonce, ours.nonce);
        let reason = tokio::time::timeout(TTL, guard.lost())
            .await
            .unwrap_or_else(|_| panic!("{key}={value}: still refreshing a rewritten record"));
        assert!(
            matches!(reason, LossReason::Superseded { .. }),
            "{key}={value}: {reason:?}"
        );
        assert!(guard.check().is_err());
        assert_eq!(
            record_at(&memory, OBJECT).await.token,
            if key == "gcslock-token" {
                99
            } else {
                ours.token
            },
            "{key}: the rewritten record was left alone"
        );
        drop(guard);
    }
}

/// Failed before: dropping acquire's future while its create was in flight left
/// the lock held by nobody until its TTL passed.
#[tokio::test(start_paused = true)]
async fn dropping_an_acquire_mid_create_leaves_no_lock_behind() {
    let (memory, faulty) = support::faulty_bucket();
    // The create applies at once; its answer takes 5 s.
    faulty.inject(
        Operation::Write,
        Fault::DelayResponse(Duration::from_secs(5)),
    );
    let lock = lock_on(Arc::new(faulty), LockOptions::default().ttl(TTL));
    let dropped = tokio::time::timeout(Duration::from_secs(1), lock.acquire(Wait::No)).await;
    assert!(dropped.is_err(), "the caller gave up mid-create");
    assert!(matches!(lock.status().await, Ok(LockStatus::Held(_))));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        matches!(lock.status().await, Ok(LockStatus::Released { .. })),
        "the lock the dropped acquire got was released, not left for a TTL"
    );
    assert_eq!(record_at(&memory, OBJECT).await.token, 1);
}
