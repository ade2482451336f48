//! The semaphore (at most N holders, PROTOCOL.md §13) on the in-memory backend with
//! tokio's paused clock, and on strict-gcs (`GCSLOCK_STRICT_EMULATOR_HOST`; skipped
//! loudly when unset, failed when `GCSLOCK_REQUIRE_STRICT=1`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use gcslock::admin::LockStatus;
use gcslock::backend::fault::{Fault, FaultError, FaultyBackend, Operation};
use gcslock::backend::intercept::{Call, Hook, Intercept, Outcome};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, BackendError};
use gcslock::semaphore::{place_name, Permit, Semaphore};
use gcslock::testing::LockState;
use gcslock::{Error, Lock, LockOptions, Wait};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(10);
/// The default margin of TTL: observers judge a place stale at TTL + this.
const MARGIN: Duration = Duration::from_secs(1);

fn options(identity: &str) -> LockOptions {
    LockOptions::default()
        .ttl(TTL)
        .identity(identity)
        .poll_backoff(Duration::from_millis(250), Duration::from_secs(1))
}

fn semaphore(backend: Arc<dyn Backend>, limit: u32, identity: &str) -> Semaphore {
    Semaphore::new(backend, "backups", limit, options(identity)).expect("valid semaphore")
}

/// Counts calls by operation, and fails every call while cut off (a partition, or
/// a crashed process's requests that never arrive).
#[derive(Debug, Default)]
struct Meter {
    calls: [AtomicU64; Operation::ALL.len()],
    cut_off: AtomicBool,
}

impl Meter {
    fn count(&self, operation: Operation) -> u64 {
        self.calls[operation as usize].load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Hook for Meter {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        let operation = call.operation();
        self.calls[operation as usize].fetch_add(1, Ordering::SeqCst);
        if self.cut_off.load(Ordering::SeqCst) {
            return Outcome::failed(
                operation,
                BackendError::Connect {
                    endpoint: "memory".into(),
                    message: "partitioned".into(),
                },
            );
        }
        proceed.await
    }
}

fn metered(memory: &MemoryBackend) -> Arc<Intercept<Meter>> {
    Arc::new(Intercept::new(Arc::new(memory.clone())))
}

/// A semaphore of 2 whose places are both held (keep the permits), and a waiter on
/// it whose requests are counted.
async fn both_places_held_and_a_metered_waiter() -> (Vec<Permit>, Arc<Intercept<Meter>>, Semaphore)
{
    let memory = MemoryBackend::new("b");
    let holders = semaphore(Arc::new(memory.clone()), 2, "holder");
    let a = holders.acquire(Wait::No).await.expect("a");
    let b = holders.acquire(Wait::No).await.expect("b");
    let meter = metered(&memory);
    let waiter = semaphore(meter.clone(), 2, "waiter");
    (vec![a, b], meter, waiter)
}

#[tokio::test(start_paused = true)]
async fn at_most_n_of_many_contenders_hold_at_once() {
    let memory = MemoryBackend::new("b");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for contender in 0..9 {
        let sem = semaphore(Arc::new(memory.clone()), 3, &format!("c{contender}"));
        let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire(Wait::Forever).await.expect("acquired");
            assert!(permit.place() < 3);
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(permit.is_valid());
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.release().await.expect("released");
        }));
    }
    for task in tasks {
        task.await.expect("contender");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "never more than 3, and 3 at once"
    );
    // Nine holders over three places: tokens grow per place, and add up.
    let mut tokens = 0;
    for place in 0..3 {
        let record = support::record_at(&memory, &place_name("backups", place)).await;
        assert_eq!(record.state, LockState::Released);
        assert_eq!(
            memory
                .read(&place_name("backups", place))
                .await
                .expect("read")
                .value
                .expect("place")
                .metadata
                .get("gcslock-holders")
                .map(String::as_str),
            Some("3")
        );
        tokens += record.token;
    }
    assert_eq!(tokens, 9);
    assert!(memory
        .read("backups/place-3")
        .await
        .expect("read")
        .value
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn the_n_plus_first_is_busy_and_each_holder_has_its_own_place() {
    let memory = MemoryBackend::new("b");
    let sem = semaphore(Arc::new(memory.clone()), 2, "me");
    let first = sem.acquire(Wait::No).await.expect("first place");
    let second = sem.acquire(Wait::No).await.expect("second place");
    assert_ne!(first.place(), second.place());
    assert_eq!((first.limit(), first.token().value()), (2, 1));
    match sem.acquire(Wait::No).await {
        Err(Error::Busy { holder, .. }) => {
            assert!(
                holder
                    .to_string()
                    .contains("and every other of the 2 places"),
                "{holder}"
            );
        }
        other => panic!("expected busy, got {other:?}"),
    }
    let freed = first.place();
    first.release().await.expect("release");
    let third = sem.acquire(Wait::No).await.expect("the freed place");
    assert_eq!(third.place(), freed);
    assert_eq!(third.token().value(), 2, "the place's token grew");
    let places = sem.status().await.expect("status");
    assert_eq!(places.len(), 2);
    assert!(places
        .iter()
        .all(|place| matches!(place.status, LockStatus::Held(_))));
}

#[tokio::test(start_paused = true)]
async fn waiters_send_no_writes_while_every_place_is_held() {
    let (_held, meter, waiter) = both_places_held_and_a_metered_waiter().await;
    let started = Instant::now();
    let outcome = waiter.acquire(Wait::For(Duration::from_secs(30))).await;
    assert!(matches!(outcome, Err(Error::Busy { .. })), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_secs(30));
    let lists = meter.count(Operation::List);
    assert!(lists >= 20, "polled by listing: {lists}");
    for operation in [
        Operation::Write,
        Operation::UpdateMetadata,
        Operation::Delete,
        Operation::Read,
    ] {
        assert_eq!(meter.count(operation), 0, "{operation:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holders_place_is_free_once_its_ttl_has_passed_by_the_servers_clock() {
    let memory = MemoryBackend::new("b");
    let crashing = metered(&memory);
    let dead = semaphore(crashing.clone(), 2, "dead");
    let alive = semaphore(Arc::new(memory.clone()), 2, "alive");
    let doomed = dead.acquire(Wait::No).await.expect("place");
    let _other = alive.acquire(Wait::No).await.expect("the other place");
    // The holder's machine dies: nothing it sends arrives any more.
    crashing.cut_off.store(true, Ordering::SeqCst);
    let crashed_at = memory.server_time();
    let waiter = semaphore(Arc::new(memory.clone()), 2, "waiter");
    let permit = waiter
        .acquire(Wait::For(Duration::from_secs(60)))
        .await
        .expect("the crashed place, after its TTL");
    let taken_at = memory.server_time();
    assert_eq!(permit.place(), doomed.place());
    assert_eq!(permit.token().value(), 2);
    assert!(
        taken_at - crashed_at >= chrono::Duration::from_std(TTL + MARGIN - TTL / 8).unwrap(),
        "taken over {} after the crash",
        taken_at - crashed_at
    );
    assert!(
        taken_at - crashed_at <= chrono::Duration::from_std(TTL + MARGIN * 3).unwrap(),
        "waiters look again just after the place turns stale: {}",
        taken_at - crashed_at
    );
    assert!(
        !doomed.is_valid(),
        "the crashed holder's own deadline passed before the takeover"
    );
}

#[tokio::test(start_paused = true)]
async fn a_contender_with_another_limit_is_refused_and_writes_nothing() {
    let memory = MemoryBackend::new("b");
    let two = semaphore(Arc::new(memory.clone()), 2, "two");
    let held = two.acquire(Wait::No).await.expect("place");
    let meter = metered(&memory);
    let three = semaphore(meter.clone(), 3, "three");
    match three.acquire(Wait::Forever).await {
        Err(Error::HoldersMismatch {
            ours,
            theirs,
            holder,
            ..
        }) => {
            assert_eq!((ours, theirs), (3, 2));
            assert!(holder.contains("two"), "{holder}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let message = three.acquire(Wait::No).await.unwrap_err().to_string();
    assert!(
        message.contains("at most 3 holder(s)") && message.contains("allowing 2"),
        "{message}"
    );
    assert_eq!(meter.count(Operation::Write), 0);
    // The plain lock (one holder, place 0 itself) meets a limit of 2 likewise.
    let plain = Lock::new(
        Arc::new(memory.clone()),
        &place_name("backups", held.place()),
        options("plain"),
    )
    .expect("lock");
    match plain.acquire(Wait::Forever).await {
        Err(Error::HoldersMismatch { ours, theirs, .. }) => assert_eq!((ours, theirs), (1, 2)),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // And a plain holder of the name refuses a semaphore.
    held.release().await.expect("release");
    let _plain = Lock::new(Arc::new(memory.clone()), "backups", options("plain"))
        .expect("lock")
        .acquire(Wait::No)
        .await
        .expect("plain lock");
    match two.acquire(Wait::No).await {
        Err(Error::HoldersMismatch { ours, theirs, .. }) => assert_eq!((ours, theirs), (2, 1)),
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn of_two_contenders_that_disagree_and_listed_before_either_wrote_one_gives_up() {
    let memory = MemoryBackend::new("b");
    // The 3-contender's listing answer is slow: by the time it arrives (showing
    // every place free), the 2-contender has acquired and checked.
    let slow = FaultyBackend::new(Arc::new(memory.clone()));
    slow.inject(
        Operation::List,
        Fault::DelayResponse(Duration::from_secs(2)),
    );
    let three = semaphore(Arc::new(slow), 3, "three");
    let two = semaphore(Arc::new(memory.clone()), 2, "two");
    let late = tokio::spawn(async move { three.acquire(Wait::No).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kept = two
        .acquire(Wait::No)
        .await
        .expect("the agreeing side's place");
    match late.await.expect("task") {
        Err(Error::HoldersMismatch { ours, theirs, .. }) => assert_eq!((ours, theirs), (3, 2)),
        other => panic!("the later contender must give up: {other:?}"),
    }
    // It gave its place back: only the 2-contender's place is held.
    let places = two.status().await.expect("status");
    let held: Vec<u32> = places
        .iter()
        .filter(|place| matches!(place.status, LockStatus::Held(_)))
        .map(|place| place.place)
        .collect();
    assert_eq!(held, vec![kept.place()]);
}

#[tokio::test(start_paused = true)]
async fn a_create_whose_response_was_lost_is_adopted_not_waited_out() {
    let (memory, faulty) = support::faulty_bucket();
    faulty.inject(Operation::Write, Fault::LoseResponse(FaultError::Timeout));
    let sem = semaphore(Arc::new(faulty), 2, "me");
    let started = Instant::now();
    let permit = sem
        .acquire(Wait::For(Duration::from_secs(5)))
        .await
        .expect("our own create, adopted");
    assert!(started.elapsed() < TTL, "not waited out");
    assert_eq!(permit.token().value(), 1);
    let held: Vec<_> = sem
        .status()
        .await
        .expect("status")
        .into_iter()
        .filter(|place| matches!(&place.status, LockStatus::Held(held) if held.holder == "me"))
        .collect();
    assert_eq!(held.len(), 1, "exactly one place is ours: {held:?}");
    assert_eq!(held[0].place, permit.place());
    let stored = support::record_at(&memory, &place_name("backups", permit.place())).await;
    assert_eq!((stored.holder.as_str(), stored.token), ("me", 1));
}

#[tokio::test(start_paused = true)]
async fn a_limit_of_one_is_the_plain_lock_request_for_request() {
    let memory = MemoryBackend::new("b");
    let meter = metered(&memory);
    let sem = semaphore(meter.clone(), 1, "me");
    let permit = sem.acquire(Wait::No).await.expect("place 0");
    assert_eq!(permit.place(), 0);
    assert_eq!(meter.count(Operation::List), 0);
    assert_eq!(meter.count(Operation::Read), 1);
    assert_eq!(meter.count(Operation::Write), 1);
    let metadata = memory
        .read("backups")
        .await
        .expect("read")
        .value
        .expect("the object at the name itself")
        .metadata;
    assert!(!metadata.contains_key("gcslock-holders"), "{metadata:?}");
    assert!(Semaphore::new(Arc::new(memory.clone()), "x", 0, LockOptions::default()).is_err());
    assert!(Semaphore::new(Arc::new(memory), "x", 1001, LockOptions::default()).is_err());
}

#[tokio::test(start_paused = true)]
async fn acquiring_a_free_place_costs_one_listing_one_write_and_one_check() {
    let memory = MemoryBackend::new("b");
    let meter = metered(&memory);
    let sem = semaphore(meter.clone(), 3, "me");
    let _permit = sem.acquire(Wait::No).await.expect("place");
    assert_eq!(
        (
            meter.count(Operation::List),
            meter.count(Operation::Write),
            meter.count(Operation::Read)
        ),
        (2, 1, 0)
    );
}

/// The same bounds on strict-gcs, with real HTTP and the server's own clock.
#[tokio::test]
async fn strict_gcs_at_most_n_and_a_mismatch_refused() {
    let Some(host) = std::env::var("GCSLOCK_STRICT_EMULATOR_HOST").ok() else {
        assert_ne!(
            std::env::var("GCSLOCK_REQUIRE_STRICT").as_deref(),
            Ok("1"),
            "GCSLOCK_STRICT_EMULATOR_HOST is required"
        );
        eprintln!("SKIPPED: GCSLOCK_STRICT_EMULATOR_HOST is not set (emulators/README.md)");
        return;
    };
    let bucket = std::env::var("GCSLOCK_TEST_BUCKET").unwrap_or_else(|_| "gcslock-test".to_owned());
    let backend = gcslock::backend::gcs::GcsBackend::builder(&bucket)
        .endpoint(Some(host.clone()))
        .build()
        .expect("backend");
    let _ = reqwest::Client::new()
        .post(format!("{}/storage/v1/b", backend.endpoint()))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await;
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let name = format!("semaphore-{}", std::process::id());
    let make = |limit, identity: &str| {
        Semaphore::new(Arc::clone(&backend), &name, limit, options(identity)).expect("semaphore")
    };
    let mut permits = Vec::new();
    for holder in 0..3 {
        permits.push(
            make(3, &format!("h{holder}"))
                .acquire(Wait::No)
                .await
                .expect("a place"),
        );
    }
    let mut places: Vec<u32> = permits.iter().map(|permit| permit.place()).collect();
    places.sort_unstable();
    assert_eq!(places, vec![0, 1, 2]);
    assert!(matches!(
        make(3, "fourth").acquire(Wait::No).await,
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        make(2, "other").acquire(Wait::No).await,
        Err(Error::HoldersMismatch {
            ours: 2,
            theirs: 3,
            ..
        })
    ));
    for permit in permits {
        permit.release().await.expect("release");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_can_be_cancelled_and_leaves_nothing_held() {
    let (_held, meter, waiter) = both_places_held_and_a_metered_waiter().await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let waiting = {
        let cancel = cancel.clone();
        tokio::spawn(async move { waiter.acquire(Wait::Forever).cancel_on(&cancel).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    cancel.cancel();
    let outcome = waiting.await.expect("task");
    assert!(
        matches!(outcome, Err(Error::Cancelled { .. })),
        "{outcome:?}"
    );
    assert_eq!(meter.count(Operation::Write), 0);
    assert!(meter.count(Operation::List) >= 2);
}

/// Failed before: the semaphore's acquire ran in the caller's future, so dropping
/// it while a place's create was in flight left that place held by nobody until
/// its TTL passed.
#[tokio::test(start_paused = true)]
async fn dropping_an_acquire_mid_create_leaves_no_place_held() {
    let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new("b")));
    // The create applies at once; its answer takes 5 s.
    faulty.inject(
        Operation::Write,
        Fault::DelayResponse(Duration::from_secs(5)),
    );
    let holders = semaphore(Arc::new(faulty), 3, "dropper");
    let dropped = tokio::time::timeout(Duration::from_secs(1), holders.acquire(Wait::No)).await;
    assert!(dropped.is_err(), "the caller gave up mid-create");
    let held = |places: Vec<gcslock::semaphore::PlaceStatus>| {
        places
            .iter()
            .filter(|place| matches!(place.status, LockStatus::Held(_)))
            .count()
    };
    assert_eq!(held(holders.status().await.expect("status")), 1);
    // The create's answer arrives at 5 s; the place would be stale only at 11 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        held(holders.status().await.expect("status")),
        0,
        "the place the dropped acquire got was released, not left for a TTL"
    );
}
