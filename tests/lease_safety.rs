//! Safety of a lease against hanging requests, a dying keep-alive task, hostile
//! lock records, clock-rate error and creates that apply late, on the strict
//! in-memory backend under tokio's paused clock.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use gcslock::admin::list_locks;
use gcslock::admin::LockStatus;
use gcslock::backend::fault::{Fault, FaultError, Operation};
use gcslock::backend::intercept::{Call, Hook, Intercept, Outcome};
use gcslock::backend::memory::{MemoryBackend, Mutation};
use gcslock::backend::{Backend, BackendError, Metadata, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Error, LockOptions, LossReason, Wait};
use gcslock::{Guard, Lock};
use support::{faulty_bucket, record_at};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(80);
const MARGIN: Duration = Duration::from_secs(8); // TTL/10
const OBJECT: &str = "jobs/nightly";
/// Long enough to count as "never" next to any lease here.
const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn lock_on(backend: Arc<dyn Backend>, identity: &str) -> Lock {
    Lock::new(
        backend,
        OBJECT,
        LockOptions::default().ttl(TTL).identity(identity),
    )
    .expect("valid lock")
}

/// Takes the free lock through `backend` as `identity`.
async fn hold(backend: Arc<dyn Backend>, identity: &str) -> Guard {
    lock_on(backend, identity)
        .acquire(Wait::No)
        .await
        .expect("free")
}

async fn record(memory: &MemoryBackend) -> LockRecord {
    record_at(memory, OBJECT).await
}

/// Changes the lock object's version without changing what it says, so the
/// holder's next conditional write meets a 412 and has to read back.
fn bump_version(memory: &MemoryBackend) {
    memory
        .mutate(OBJECT, |current| {
            let (info, _) = current.ok_or(BackendError::NotFound)?;
            Ok::<_, BackendError>(Mutation::SetMetadata(info.metadata.clone()))
        })
        .expect("bump");
}

// 1. A read-back after a 412 is bounded by the lease deadline.

#[tokio::test(start_paused = true)]
async fn a_hanging_read_back_after_a_refresh_conflict_does_not_delay_the_loss() {
    let (memory, faulty) = faulty_bucket();
    let start = Instant::now();
    let guard = hold(Arc::new(faulty.clone()), "me").await;
    bump_version(&memory);
    faulty.inject(Operation::Read, Fault::Delay(A_YEAR));
    let reason = guard.lost().await;
    assert!(
        matches!(&reason, LossReason::Expired { last_error } if last_error.contains("read-back")),
        "{reason:?}"
    );
    assert!(
        start.elapsed() <= TTL - MARGIN,
        "lost only after {:?}",
        start.elapsed()
    );
    assert!(guard.check().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_read_back_during_release_does_not_delay_the_loss() {
    let (memory, faulty) = faulty_bucket();
    let start = Instant::now();
    let guard = hold(Arc::new(faulty.clone()), "me").await;
    let lost = guard.lost();
    bump_version(&memory);
    faulty.inject(Operation::Read, Fault::Delay(A_YEAR));
    let releasing = tokio::spawn(guard.release());
    let reason = lost.await;
    assert!(matches!(reason, LossReason::Expired { .. }), "{reason:?}");
    assert!(
        start.elapsed() <= TTL - MARGIN,
        "lost only after {:?}",
        start.elapsed()
    );
    let released = releasing.await.expect("task");
    assert!(released.is_err(), "the release could not be confirmed");
    assert!(
        start.elapsed() <= TTL + MARGIN,
        "release gave up only after {:?}, past the stale time",
        start.elapsed()
    );
}

// 2. A keep-alive task that panics or is dropped resolves `lost()`.

/// Panics inside `update_metadata` once armed.
#[derive(Debug, Default)]
struct PanickingRefresh {
    armed: AtomicBool,
}

#[async_trait]
impl Hook for PanickingRefresh {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        if call.operation() == Operation::UpdateMetadata && self.armed.load(Ordering::SeqCst) {
            panic!("injected: a bug inside the backend during a refresh");
        }
        proceed.await
    }
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_that_panics_resolves_lost_and_fails_check() {
    let backend = Arc::new(Intercept::<PanickingRefresh>::new(Arc::new(
        MemoryBackend::new("b"),
    )));
    let guard = hold(backend.clone(), "me").await;
    backend.armed.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let reason = tokio::time::timeout(TTL * 10, guard.lost())
        .await
        .expect("lost() resolves after the keep-alive task panicked");
    assert!(
        matches!(&reason, LossReason::KeepAliveStopped { why } if why.contains("panicked")),
        "{reason:?}"
    );
    assert!(
        start.elapsed() < TTL - MARGIN,
        "at the panic, not the deadline"
    );
    assert!(matches!(
        guard.check(),
        Err(LossReason::KeepAliveStopped { .. })
    ));
    assert!(!guard.is_valid());
}

#[test]
fn a_keep_alive_dropped_with_its_runtime_resolves_lost() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let guard = runtime
        .block_on(std::future::IntoFuture::into_future(
            lock_on(Arc::new(MemoryBackend::new("b")), "me").acquire(Wait::No),
        ))
        .expect("free");
    let lost = guard.lost();
    drop(runtime); // drops the keep-alive task mid-sleep
    let reason = futures_executor_block_on(lost);
    assert!(
        matches!(&reason, LossReason::KeepAliveStopped { why } if why.contains("aborted")),
        "{reason:?}"
    );
    assert!(guard.check().is_err());
}

/// Polls a future to completion on a fresh runtime (the original one is gone).
fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(A_YEAR, future)
                .await
                .expect("resolves, never hangs")
        })
}

// 3. Absurd durations never overflow.

#[tokio::test(start_paused = true)]
async fn absurd_waits_timeouts_and_retry_afters_do_not_overflow() {
    let (_, faulty) = faulty_bucket();
    faulty.inject(Operation::Read, Fault::Reject(FaultError::Unavailable));
    let lock = Lock::new(
        Arc::new(faulty.clone()),
        OBJECT,
        LockOptions::default()
            .ttl(TTL)
            .unavailable_timeout(Duration::MAX),
    )
    .expect("valid");
    let guard = lock
        .acquire(Wait::For(Duration::MAX))
        .await
        .expect("acquired after the storage hiccup");
    assert_eq!(guard.token().value(), 1);
    guard.release().await.expect("release");
}

// 4. Hostile lock records.

fn hostile_records() -> Vec<(&'static str, Metadata)> {
    let good = LockRecord {
        state: LockState::Held,
        token: 3,
        holder: "host:1".into(),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        ttl: TTL.into(),
        refresh_seq: 0,
        completed: None,
    }
    .to_metadata();
    let with = |key: &str, value: String| {
        let mut metadata = good.clone();
        metadata.insert(key.into(), value);
        metadata
    };
    let without = |key: &str| {
        let mut metadata = good.clone();
        metadata.remove(key);
        metadata
    };
    vec![
        // `updated + TTL` overflowed chrono's range here and panicked.
        ("ttl-ms", with("gcslock-ttl-ms", "10000000000000000".into())),
        ("ttl-ms", with("gcslock-ttl-ms", u64::MAX.to_string())),
        // A week and a millisecond: a crashed holder would block everyone for good.
        ("ttl-ms", with("gcslock-ttl-ms", "604800001".into())),
        ("ttl-ms", with("gcslock-ttl-ms", "0".into())),
        ("ttl-ms", with("gcslock-ttl-ms", "-1".into())),
        ("ttl-ms", with("gcslock-ttl-ms", "+80000".into())),
        ("ttl-ms", with("gcslock-ttl-ms", "080000".into())),
        (
            "token",
            with("gcslock-token", "18446744073709551616".into()),
        ),
        ("token", with("gcslock-token", String::new())),
        ("refresh-seq", with("gcslock-refresh-seq", "1 ".into())),
        ("holder", with("gcslock-holder", "evil\u{1b}[2J\0".into())),
        ("holder", with("gcslock-holder", "line\nbreak".into())),
        ("holder", with("gcslock-holder", "x".repeat(1 << 20))),
        ("nonce", with("gcslock-nonce", "n".repeat(1 << 20))),
        ("nonce", with("gcslock-nonce", String::new())),
        ("state", with("gcslock-state", "HELD".into())),
        ("state", with("gcslock-state", "s".repeat(1 << 20))),
        ("missing", without("gcslock-nonce")),
        ("missing", without("gcslock-ttl-ms")),
    ]
}

#[tokio::test(start_paused = true)]
async fn hostile_records_are_not_a_lock_everywhere_and_never_crash_or_wedge() {
    for (what, metadata) in hostile_records() {
        let memory = MemoryBackend::new("b");
        memory
            .write(OBJECT, WriteCondition::DoesNotExist, &metadata)
            .await
            .expect("plant");
        let lock = lock_on(Arc::new(memory.clone()), "me");
        let start = Instant::now();
        match lock.acquire(Wait::For(Duration::from_secs(30))).await {
            Err(Error::NotALock { why, .. }) => {
                assert!(why.contains(what), "{what}: {why}");
                assert!(why.len() < 300, "{what}: a {}-byte message", why.len());
            }
            other => panic!("{what}: expected NotALock, got {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "{what}: refused at once");
        match lock.status().await.expect("status") {
            LockStatus::NotALock { why } => assert!(why.contains(what), "{what}: {why}"),
            other => panic!("{what}: expected NotALock, got {other:?}"),
        }
        let listed = list_locks(&memory, "jobs/", Duration::from_secs(10))
            .await
            .expect("list");
        assert!(
            matches!(listed.as_slice(), [(_, LockStatus::NotALock { .. })]),
            "{what}: {listed:?}"
        );
        assert!(
            matches!(lock.break_lock(None).await, Err(Error::NotALock { .. })),
            "{what}"
        );
        // Never overwritten.
        let read = memory.read(OBJECT).await.expect("read");
        assert_eq!(
            read.value.expect("still there").metadata,
            metadata,
            "{what}"
        );
    }
}

// 5. Clock-rate tolerance.

#[tokio::test(start_paused = true)]
async fn a_holder_clock_22_percent_slow_still_stops_before_observers_judge_stale() {
    // A TTL of an hour: the old margin (capped at 30 s) tolerated only 1.6 %.
    let ttl = Duration::from_secs(3600);
    let memory = MemoryBackend::new("b");
    let lock = Lock::new(
        Arc::new(memory.clone()),
        OBJECT,
        LockOptions::default().ttl(ttl),
    )
    .expect("valid");
    let guard = lock.acquire(Wait::No).await.expect("free");
    // The holder's own view: how long it trusts the lease, by its clock.
    let holder_trusts = guard.time_left();
    // Observers' view, by the server's clock: when the lock turns stale.
    let stale_in = match lock.status().await.expect("status") {
        LockStatus::Held(held) => held.expires_in.expect("the server sent a Date"),
        other => panic!("expected Held, got {other:?}"),
    };
    // Holder clock 22 % slow: its deadline passes 22 % later in real time.
    let holder_stops_after = holder_trusts.mul_f64(1.22);
    assert!(
        holder_stops_after <= stale_in,
        "holder trusts its lease for {holder_stops_after:?} of real time, observers \
         judge it stale after {stale_in:?}"
    );
    // And with the observers' rule on the paused clock: stale only after that.
    tokio::time::sleep(holder_stops_after).await;
    assert!(matches!(
        lock.status().await.expect("status"),
        LockStatus::Held(_)
    ));
    drop(guard);
}

// 6. A create whose response was lost and that applies late.

/// Loses the response of the first create and holds the write back; it applies
/// (if its condition still holds) just before the read numbered `apply_before_read`
/// after it, `delay` later: a request stuck in the network.
#[derive(Debug)]
struct LateCreate {
    /// The store the held-back write finally reaches.
    memory: MemoryBackend,
    held_back: Mutex<Option<(WriteCondition, Metadata)>>,
    used: AtomicBool,
    reads_until_apply: Mutex<u32>,
    delay: Duration,
}

impl LateCreate {
    fn wrap(memory: MemoryBackend, apply_before_read: u32, delay: Duration) -> Intercept<Self> {
        let hook = Self {
            memory: memory.clone(),
            held_back: Mutex::new(None),
            used: AtomicBool::new(false),
            reads_until_apply: Mutex::new(apply_before_read),
            delay,
        };
        Intercept::wrap(Arc::new(memory), hook)
    }

    fn due(&self) -> Option<(WriteCondition, Metadata)> {
        let mut held = self.held_back.lock().expect("mutex");
        held.as_ref()?;
        let mut reads = self.reads_until_apply.lock().expect("mutex");
        *reads = reads.saturating_sub(1);
        if *reads == 0 {
            held.take()
        } else {
            None
        }
    }
}

#[async_trait]
impl Hook for LateCreate {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        match call {
            Call::Write {
                condition,
                metadata,
                ..
            } if !self.used.swap(true, Ordering::SeqCst) => {
                *self.held_back.lock().expect("mutex") = Some((condition, metadata.clone()));
                Outcome::failed(
                    Operation::Write,
                    BackendError::Timeout(Duration::from_secs(10)),
                )
            }
            Call::Read { name } => {
                if let Some((condition, metadata)) = self.due() {
                    tokio::time::sleep(self.delay).await;
                    let _applied_or_refused = self.memory.write(name, condition, &metadata).await;
                }
                proceed.await
            }
            _ => proceed.await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_that_applies_after_its_response_was_lost_is_adopted() {
    let memory = MemoryBackend::new("b");
    // The read that resolves the lost response sees nothing; the create applies
    // right after it, before the next inspect.
    let late = Arc::new(LateCreate::wrap(memory.clone(), 2, Duration::ZERO));
    let lock = lock_on(late, "me");
    let start = Instant::now();
    let guard = lock
        .acquire(Wait::For(Duration::from_secs(5)))
        .await
        .expect("our own late create is ours, not someone else's lock");
    assert_eq!(guard.token().value(), 1, "the late create itself");
    let lease_from_first_send = (TTL - MARGIN).saturating_sub(start.elapsed());
    assert!(
        guard.time_left() <= lease_from_first_send,
        "the lease runs from the original send: {:?} > {lease_from_first_send:?}",
        guard.time_left()
    );
    guard.release().await.expect("release");
    assert_eq!(record(&memory).await.state, LockState::Released);
}

#[tokio::test(start_paused = true)]
async fn a_late_create_whose_lease_already_ran_out_is_released_not_kept() {
    let memory = MemoryBackend::new("b");
    // The create applies a whole TTL after it was sent: its lease is over.
    let late = Arc::new(LateCreate::wrap(memory.clone(), 2, TTL));
    let lock = lock_on(late, "me");
    let guard = lock
        .acquire(Wait::For(Duration::from_secs(5)))
        .await
        .expect("acquired afresh");
    assert!(guard.is_valid());
    assert_eq!(
        guard.token().value(),
        2,
        "the late, expired create was released, then a new lease taken"
    );
    assert!(guard.time_left() > TTL - MARGIN - Duration::from_secs(1));
}
