//! Leader election ([`gcslock::election::Election`]) on the in-memory backend under tokio's
//! paused clock, and once on strict-gcs over the wire.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gcslock::backend::fault::{Fault, FaultError, Operation};
use gcslock::backend::intercept::{Intercept, NoDate};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::Backend;
use gcslock::election::{Election, Leadership, Observed, Observer};
use gcslock::{Error, LockOptions};
use support::{faulty_bucket, record_at};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(80);
const MARGIN: Duration = Duration::from_secs(8); // TTL/10
const NAME: &str = "elections/scheduler";
/// The steady poll (1 s) with its jitter (+20 %), and room for the acquiring write.
const ONE_POLL: Duration = Duration::from_millis(1300);

fn election(backend: Arc<dyn Backend>, identity: &str) -> Election {
    Election::new(
        backend,
        NAME,
        LockOptions::default().ttl(TTL).identity(identity),
    )
    .expect("valid election")
}

async fn lead(election: &Election, value: &str) -> Leadership {
    tokio::time::timeout(
        Duration::from_secs(3600),
        election.campaign(value, &CancellationToken::new()),
    )
    .await
    .expect("campaign hangs")
    .expect("campaign")
}

/// A candidate campaigning in the background.
fn candidate(
    election: &Election,
    value: &str,
) -> tokio::task::JoinHandle<Result<Leadership, Error>> {
    let election = election.clone();
    let value = value.to_owned();
    tokio::spawn(async move { election.campaign(&value, &CancellationToken::new()).await })
}

/// The next observation whose state is not the one given.
async fn next_state(observer: &mut Observer) -> (Observed, Instant) {
    let observation = tokio::time::timeout(Duration::from_secs(3600), observer.changed())
        .await
        .expect("observer hangs");
    (observation.state, Instant::now())
}

fn identity(state: &Observed) -> Option<&str> {
    match state {
        Observed::Leader(leader) => Some(&leader.identity),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn two_candidates_one_leads_and_resign_hands_over_within_one_poll() {
    let memory = MemoryBackend::new("b");
    let (a, b) = (
        election(Arc::new(memory.clone()), "a"),
        election(Arc::new(memory.clone()), "b"),
    );
    let leading = lead(&a, "10.0.0.1:80").await;
    let waiting = candidate(&b, "10.0.0.2:80");
    // Through many refreshes, b keeps waiting and reads only.
    tokio::time::sleep(TTL * 3).await;
    assert!(!waiting.is_finished(), "two leaders at once");
    assert!(leading.check().is_ok());
    let leader = b.leader().await.expect("read").expect("a leads");
    assert_eq!(
        (leader.identity.as_str(), leader.value.as_deref()),
        ("a", Some("10.0.0.1:80"))
    );
    assert_eq!(leader.token, leading.token());

    let resigned = Instant::now();
    leading.resign().await.expect("resign");
    let b_leads = waiting.await.expect("no panic").expect("b leads");
    assert!(
        resigned.elapsed() <= ONE_POLL,
        "handover took {:?}",
        resigned.elapsed()
    );
    assert!(b_leads.token() > leader.token);
    let now = a.leader().await.expect("read").expect("b leads");
    assert_eq!(now.identity, "b");
    assert_eq!(now.value.as_deref(), Some("10.0.0.2:80"));
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_resigned_does_not_win_back_its_own_release() {
    let memory = MemoryBackend::new("b");
    let (a, b) = (
        election(Arc::new(memory.clone()), "a"),
        election(Arc::new(memory.clone()), "b"),
    );
    for round in 0..20 {
        let leading = lead(&a, "a").await;
        let waiting = candidate(&b, "b");
        // Let b's poll phase land anywhere in the second.
        tokio::time::sleep(Duration::from_millis(5_000 + 137 * round)).await;
        leading.resign().await.expect("resign");
        // a campaigns again at once, as `gcslock elect` does after its command exits.
        let again = candidate(&a, "a");
        let b_leads = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .unwrap_or_else(|_| panic!("round {round}: a won its own release back"))
            .expect("no panic")
            .expect("b leads");
        assert!(!again.is_finished(), "round {round}: two leaders");
        b_leads.resign().await.expect("resign");
        let a_leads = again.await.expect("no panic").expect("a leads again");
        a_leads.resign().await.expect("resign");
        tokio::time::sleep(a.rejoin_delay()).await;
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_strictly_increase_across_terms_and_proclaim_keeps_the_token() {
    let memory = MemoryBackend::new("b");
    let candidates: Vec<Election> = ["a", "b", "c"]
        .iter()
        .map(|id| election(Arc::new(memory.clone()), id))
        .collect();
    let mut last = 0;
    for term in 0..9 {
        let leading = lead(&candidates[term % 3], "first").await;
        let token = leading.token();
        assert!(token.value() > last, "term {term}: {token:?} after {last}");
        last = token.value();
        tokio::time::sleep(Duration::from_secs(3)).await;
        leading.proclaim("second").await.expect("proclaim");
        assert_eq!(leading.token(), token, "proclaim started a new term");
        assert_eq!(leading.value(), "second");
        let seen = candidates[0].leader().await.expect("read").expect("leads");
        assert_eq!((seen.token, seen.value.as_deref()), (token, Some("second")));
        assert_eq!(record_at(&memory, NAME).await.token, token.value());
        leading.resign().await.expect("resign");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn proclaim_racing_the_keep_alive_keeps_the_lease() {
    let memory = MemoryBackend::new("b");
    let a = election(Arc::new(memory.clone()), "a");
    let leading = lead(&a, "v0").await;
    // Proclaim at and around every refresh for several TTLs.
    for i in 0..200u32 {
        tokio::time::sleep(Duration::from_millis(1_250)).await;
        leading.proclaim(&format!("v{i}")).await.expect("proclaim");
        assert!(leading.check().is_ok(), "lease lost at proclaim {i}");
    }
    let seen = a.leader().await.expect("read").expect("a leads");
    assert_eq!(seen.value.as_deref(), Some("v199"));
    assert_eq!(seen.token, leading.token());
}

#[tokio::test(start_paused = true)]
async fn proclaim_after_the_term_is_lost_fails_and_changes_nothing() {
    let (memory, faulty) = faulty_bucket();
    let faulty = Arc::new(faulty);
    let a = election(faulty.clone(), "a");
    let leading = lead(&a, "mine").await;
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    let _ = tokio::time::timeout(TTL * 2, leading.lost()).await;
    let b = election(Arc::new(memory.clone()), "b");
    let b_leads = lead(&b, "theirs").await;
    let error = leading.proclaim("late").await.expect_err("lost");
    assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
    let seen = b.leader().await.expect("read").expect("b leads");
    assert_eq!(seen.value.as_deref(), Some("theirs"));
    assert_eq!(seen.token, b_leads.token());
}

#[tokio::test(start_paused = true)]
async fn observe_reports_no_leader_after_release_and_after_staleness_by_server_time() {
    let (memory, faulty) = faulty_bucket();
    let faulty = Arc::new(faulty);
    let watcher = election(Arc::new(memory.clone()), "watcher");
    let mut observer = watcher.observe();
    assert_eq!(next_state(&mut observer).await.0, Observed::NoLeader);

    let a = election(Arc::new(memory.clone()), "a");
    let leading = lead(&a, "x").await;
    let (state, _) = next_state(&mut observer).await;
    assert_eq!(identity(&state), Some("a"));
    let Observed::Leader(leader) = &state else {
        unreachable!()
    };
    assert_eq!(leader.since, Some(leader.last_refresh), "first write");
    leading.proclaim("y").await.expect("proclaim");
    let (state, _) = next_state(&mut observer).await;
    assert!(matches!(&state, Observed::Leader(l) if l.value.as_deref() == Some("y")));

    let released = Instant::now();
    leading.resign().await.expect("resign");
    let (state, seen) = next_state(&mut observer).await;
    assert_eq!(state, Observed::NoLeader);
    assert!(
        seen - released <= Duration::from_secs(1),
        "{:?}",
        seen - released
    );

    // A leader that stops refreshing (crashed, cut off) is stale at its last
    // refresh + TTL + margin by the server's clock: never reported before.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = election(faulty.clone(), "b");
    let crashed = lead(&b, "z").await;
    let (state, _) = next_state(&mut observer).await;
    assert_eq!(identity(&state), Some("b"));
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    let last_refresh = memory
        .read(NAME)
        .await
        .expect("read")
        .value
        .expect("exists")
        .updated;
    let (state, _) = next_state(&mut observer).await;
    assert_eq!(state, Observed::NoLeader);
    let stale_at = last_refresh + chrono::Duration::from_std(TTL + MARGIN).expect("small");
    let server_now = memory.server_time();
    assert!(server_now >= stale_at, "reported {server_now} < {stale_at}");
    assert!(
        server_now - stale_at <= chrono::Duration::milliseconds(1100),
        "reported {} late",
        server_now - stale_at
    );
    drop(crashed);
}

#[tokio::test(start_paused = true)]
async fn observe_without_server_dates_waits_a_full_ttl_of_unchanged_version() {
    let (memory, faulty) = faulty_bucket();
    let no_date: Arc<dyn Backend> = Arc::new(Intercept::wrap(Arc::new(memory.clone()), NoDate));
    let mut observer = election(no_date, "watcher").observe();
    assert_eq!(next_state(&mut observer).await.0, Observed::NoLeader);
    let faulty = Arc::new(faulty);
    let crashed = lead(&election(faulty.clone(), "a"), "x").await;
    assert_eq!(identity(&next_state(&mut observer).await.0), Some("a"));
    tokio::time::sleep(TTL).await;
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    let stopped = Instant::now();
    let (state, seen) = next_state(&mut observer).await;
    assert_eq!(state, Observed::NoLeader);
    // The last refresh was at most one refresh interval (10 s) before `stopped`.
    let waited = seen - stopped;
    assert!(
        waited >= TTL + MARGIN - Duration::from_secs(10) && waited <= TTL + MARGIN + ONE_POLL,
        "{waited:?}"
    );
    drop(crashed);
}

/// Failed before: `since` was known only until the term's first refresh.
#[tokio::test(start_paused = true)]
async fn leader_since_is_the_term_start_through_refreshes_and_proclaims() {
    let memory = MemoryBackend::new("b");
    let watcher = election(Arc::new(memory.clone()), "watcher");
    let a = election(Arc::new(memory.clone()), "a");
    let leading = lead(&a, "x").await;
    let started = memory.server_time();
    // Three refreshes (every TTL/8 = 10 s) and a proclaim later.
    tokio::time::sleep(Duration::from_secs(35)).await;
    leading.proclaim("y").await.expect("proclaim");
    let leader = watcher.leader().await.expect("read").expect("a leads");
    assert_eq!(leader.since, Some(started), "the term's start");
    assert!(leader.last_refresh >= started + chrono::Duration::seconds(35));

    // A new term has a new start.
    leading.resign().await.expect("resign");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = election(Arc::new(memory.clone()), "b");
    let _leading = lead(&b, "z").await;
    let leader = watcher.leader().await.expect("read").expect("b leads");
    assert!(leader.since > Some(started + chrono::Duration::seconds(35)));
}

#[tokio::test(start_paused = true)]
async fn abandoned_leadership_writes_nothing_and_the_term_runs_out() {
    let memory = MemoryBackend::new("b");
    let a = election(Arc::new(memory.clone()), "a");
    let leading = lead(&a, "x").await;
    let before = memory.request_count();
    let lost = leading.lost();
    leading.abandon();
    assert_eq!(lost.await, gcslock::LossReason::Released);
    // Let a release spawned in the background (what dropping does) run.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(memory.request_count(), before, "no release, no refresh");
    let leader = a.leader().await.expect("read").expect("still the leader");
    assert_eq!(leader.identity, "a", "held until its TTL runs out");
}

#[tokio::test(start_paused = true)]
async fn leader_is_none_when_free_released_or_stale() {
    let (memory, faulty) = faulty_bucket();
    let faulty = Arc::new(faulty);
    let watcher = election(Arc::new(memory.clone()), "watcher");
    assert_eq!(watcher.leader().await.expect("read"), None, "free");
    let a = election(faulty.clone(), "a");
    lead(&a, "x").await.resign().await.expect("resign");
    assert_eq!(watcher.leader().await.expect("read"), None, "released");
    let crashed = lead(&a, "x").await;
    faulty.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        10_000,
    );
    assert!(watcher.leader().await.expect("read").is_some());
    tokio::time::sleep(TTL + MARGIN + Duration::from_secs(1)).await;
    assert_eq!(watcher.leader().await.expect("read"), None, "stale");
    drop(crashed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_campaign_leaves_no_lock_and_hostile_values_are_refused() {
    let memory = MemoryBackend::new("b");
    let (a, b) = (
        election(Arc::new(memory.clone()), "a"),
        election(Arc::new(memory.clone()), "b"),
    );
    let leading = lead(&a, "x").await;
    let cancel = CancellationToken::new();
    let waiting = {
        let (b, cancel) = (b.clone(), cancel.clone());
        tokio::spawn(async move { b.campaign("y", &cancel).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    cancel.cancel();
    let outcome = waiting.await.expect("no panic");
    assert!(
        matches!(outcome, Err(Error::Cancelled { .. })),
        "{outcome:?}"
    );
    leading.resign().await.expect("resign");
    assert_eq!(a.leader().await.expect("read"), None);

    for hostile in ["line\nbreak", "\u{1b}[2J", &"v".repeat(1025)] {
        let refused = b.campaign(hostile, &CancellationToken::new()).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "{refused:?}"
        );
    }
    let leading = lead(&b, "ok").await;
    let refused = leading.proclaim("a\0b").await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
    assert_eq!(leading.value(), "ok");
}

/// The shared poll schedule: whatever the hold, a waiter reads about once per
/// second and sees a release within one poll. (With the exponential backoff it
/// replaced, a waiter polled every 4 to 8 s after a long hold.)
#[tokio::test(start_paused = true)]
async fn waiters_poll_steadily_once_a_second_whatever_the_hold() {
    let memory = MemoryBackend::new("b");
    let (a, b) = (
        election(Arc::new(memory.clone()), "a"),
        election(Arc::new(memory.clone()), "b"),
    );
    let mut delays = Vec::new();
    for hold in [2u64, 15, 120, 600] {
        let leading = lead(&a, "x").await;
        let waiting = candidate(&b, "y");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = memory.request_count();
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let reads = memory.request_count() - before;
        // a's refreshes (every TTL/8 = 10 s) are in the count too.
        let refreshes = hold / 10 + 1;
        let polls = reads.saturating_sub(refreshes);
        let rate = polls as f64 / hold as f64;
        // One poll per 0.8 to 1.2 s: over a short hold the count varies by a poll or two.
        let expected = if hold >= 100 { 0.9..=1.05 } else { 0.75..=1.15 };
        assert!(
            expected.contains(&rate) || hold < 10,
            "hold {hold}s: {polls} polls"
        );
        let released = Instant::now();
        leading.resign().await.expect("resign");
        let b_leads = waiting.await.expect("no panic").expect("b leads");
        delays.push(released.elapsed());
        b_leads.resign().await.expect("resign");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(
        delays.iter().all(|d| *d <= Duration::from_millis(1200)),
        "{delays:?}"
    );
}

/// Over the wire, on an emulator that enforces GCS's preconditions.
#[tokio::test]
async fn strict_gcs_election_hands_over_and_observes() {
    let Some(host) = std::env::var("GCSLOCK_STRICT_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
    else {
        assert!(
            std::env::var("GCSLOCK_REQUIRE_STRICT").as_deref() != Ok("1"),
            "GCSLOCK_STRICT_EMULATOR_HOST is required (GCSLOCK_REQUIRE_STRICT=1)"
        );
        eprintln!("skipped: GCSLOCK_STRICT_EMULATOR_HOST is not set (emulators/README.md)");
        return;
    };
    let bucket = std::env::var("GCSLOCK_TEST_BUCKET").unwrap_or_else(|_| "gcslock-test".into());
    let name = format!("elections/lib-{:016x}", rand::random::<u64>());
    let backend = || -> Arc<dyn Backend> {
        Arc::new(
            gcslock::backend::gcs::GcsBackend::builder(&bucket)
                .endpoint(Some(host.clone()))
                .build()
                .expect("GCS backend"),
        )
    };
    let make = |id: &str| {
        Election::new(
            backend(),
            &name,
            LockOptions::default()
                .ttl(Duration::from_secs(10))
                .identity(id),
        )
        .expect("valid")
    };
    let (a, b, watcher) = (make("a"), make("b"), make("watcher"));
    let mut observer = watcher.observe();
    assert_eq!(next_state(&mut observer).await.0, Observed::NoLeader);
    let leading = lead(&a, "first").await;
    assert_eq!(identity(&next_state(&mut observer).await.0), Some("a"));
    let token = leading.token();
    leading.proclaim("second").await.expect("proclaim");
    let seen = b.leader().await.expect("read").expect("a leads");
    assert_eq!((seen.token, seen.value.as_deref()), (token, Some("second")));
    let waiting = candidate(&b, "b");
    let released = Instant::now();
    leading.resign().await.expect("resign");
    let b_leads = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b hangs")
        .expect("no panic")
        .expect("b leads");
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "{:?}",
        released.elapsed()
    );
    assert!(b_leads.token() > token);
    loop {
        let (state, _) = next_state(&mut observer).await;
        if identity(&state) == Some("b") {
            break;
        }
        assert!(
            matches!(state, Observed::NoLeader | Observed::Leader(_)),
            "{state:?}"
        );
    }
    b_leads.resign().await.expect("resign");
    assert_eq!(next_state(&mut observer).await.0, Observed::NoLeader);
}
