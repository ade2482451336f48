//! The object_store backend (S3, Azure Blob, in-memory) beyond the backend
//! conformance suite: the lock on each store, and the CLI on S3.
//!
//! The backend's conformance cases (conditional writes, races between processes,
//! foreign objects, the stores' own conditional puts) are those of
//! `tests/conformance.rs`, which runs them on these same stores as its
//! `object_store_memory::`, `s3::` and `azure::` targets.
//!
//! Targets (shared with the conformance suite, `tests/conformance/support.rs`):
//!
//! * `memory::` — object_store's `InMemory`, always;
//! * `s3::` — `GCSLOCK_TEST_S3_URL` (such as `s3://gcslock-test`), configured by the
//!   usual `AWS_*` variables (moto: `emulators/moto.sh`);
//! * `azure::` — `GCSLOCK_TEST_AZURE_URL` (such as `az://gcslock-test`), configured by
//!   the usual `AZURE_*` variables (Azurite: `emulators/azurite.sh`).
//!
//! An unset target is skipped with a message, and fails instead when
//! `GCSLOCK_REQUIRE_OBJECT_STORE=1` (CI). Object names start with a random per-run
//! prefix. Nothing is deleted afterwards: the backend refuses deletes (there is no
//! conditional delete in object_store), so point real buckets at a prefix with a
//! lifecycle rule.
//!
//! No test sleeps to let something happen: each waits for an event under a bound.
#![cfg(feature = "object-store")]

#[macro_use]
mod harness;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::object_store::{path::Path, PutMode, PutOptions};
use gcslock::admin::LockStatus;
use gcslock::backend::object_store::ObjectStoreBackend;
use gcslock::backend::{Backend, BackendError, Metadata, WriteCondition::DoesNotExist};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Error, Lock, LockOptions, LossReason, Wait};
use harness::support::{configured, loud, test_prefix, Store, StoreTarget, OBJECT_STORE_ROOT};
use harness::{
    describe, gcslock, hold, output, status_json, text, unique_url, wait_for, SHORT_TTL,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- targets

/// What a lock test runs with: two handles on one store, as two processes have.
struct Ctx {
    target: StoreTarget,
    /// The first process's backend.
    backend: Arc<ObjectStoreBackend>,
    /// The lock's name (`ROOT/RUN/TEST/lock`).
    name: String,
}

impl Ctx {
    /// Another backend on the same store, with an empty ETag cache: another process.
    fn fresh(&self) -> Arc<ObjectStoreBackend> {
        self.target.open()
    }
}

type TestFn = fn(Ctx) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Lock tests need nothing beyond a store the backend accepts: every store runs all.
async fn run_lock_test(store: Store, test: &str, _needs: &[std::convert::Infallible], run: TestFn) {
    let Some(target) = StoreTarget::get(store) else {
        return;
    };
    let label = target.label();
    let ctx = Ctx {
        backend: target.open(),
        name: format!("{}lock", test_prefix(OBJECT_STORE_ROOT, test)),
        target,
    };
    tokio::time::timeout(TEST_TIMEOUT, run(ctx))
        .await
        .unwrap_or_else(|_| panic!("{test} on {label} took longer than {TEST_TIMEOUT:?}"));
}

per_target! {
    run: run_lock_test;
    targets: {
        memory => Store::Memory,
        s3 => Store::S3,
        azure => Store::Azure,
    }
    cases: {
        lock_acquire_busy_release_and_the_token_grows,
        lock_a_refreshing_holder_is_never_taken_over,
        lock_a_crashed_holder_is_taken_over_after_its_ttl,
        lock_a_broken_lease_is_noticed_by_its_holder,
    }
}

// ---------------------------------------------------------------- the lock on each store

/// A short lease so expiry shows within seconds (real time on the emulators).
fn short(identity: &str) -> LockOptions {
    LockOptions::default()
        .ttl(Duration::from_secs(2))
        .refresh_interval(Duration::from_millis(250))
        .poll_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .identity(identity)
}

async fn lock_acquire_busy_release_and_the_token_grows(t: &Ctx) {
    let name = t.name.as_str();
    let a = Lock::new(t.backend.clone(), name, short("a")).expect("lock a");
    let b = Lock::new(t.fresh(), name, short("b")).expect("lock b");
    let first = a.acquire(Wait::No).await.expect("free lock");
    assert_eq!(first.token().value(), 1);
    match b.acquire(Wait::No).await {
        Err(Error::Busy { holder, .. }) => {
            assert_eq!(holder.identity, "a");
            assert_eq!(holder.token.value(), 1);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let status = b.status().await.expect("status");
    assert!(
        matches!(&status, LockStatus::Held(held) if held.token.value() == 1),
        "{status:?}"
    );
    first.release().await.expect("release");
    let status = b.status().await.expect("status");
    assert!(
        matches!(status, LockStatus::Released { token, .. } if token.value() == 1),
        "{status:?}"
    );
    let second = b.acquire(Wait::No).await.expect("released lock");
    assert_eq!(second.token().value(), 2, "the token grows across holders");
    second.release().await.expect("release");
    let third = a.acquire(Wait::No).await.expect("again");
    assert_eq!(third.token().value(), 3);
    third.release().await.expect("release");
}

async fn lock_a_refreshing_holder_is_never_taken_over(t: &Ctx) {
    let name = t.name.as_str();
    let holder = Lock::new(t.backend.clone(), name, short("holder")).expect("lock");
    let guard = holder.acquire(Wait::No).await.expect("acquire");
    let waiter = Lock::new(t.fresh(), name, short("waiter")).expect("lock");
    let started = Instant::now();
    // Well past the TTL (2s) plus margin: refreshes keep it alive.
    let result = waiter.acquire(Wait::For(Duration::from_secs(5))).await;
    assert!(matches!(result, Err(Error::Busy { .. })), "{result:?}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(guard.check().is_ok(), "the holder's lease is intact");
    guard.release().await.expect("release");
}

async fn lock_a_crashed_holder_is_taken_over_after_its_ttl(t: &Ctx) {
    let name = t.name.as_str();
    let ttl = Duration::from_secs(2);
    // A holder that wrote its lock and died at once: no refresh, no release.
    let crashed = LockRecord {
        state: LockState::Held,
        token: 7,
        holder: "crashed".into(),
        nonce: "dead".into(),
        ttl: ttl.into(),
        refresh_seq: 0,
        completed: None,
    };
    let crashed_at = Instant::now();
    t.backend
        .write(name, DoesNotExist, &crashed.to_metadata())
        .await
        .expect("crashed holder's lock");
    let waiter = Lock::new(t.fresh(), name, short("waiter")).expect("lock");
    let guard = waiter
        .acquire(Wait::For(Duration::from_secs(30)))
        .await
        .expect("takeover");
    let after = crashed_at.elapsed();
    assert_eq!(guard.token().value(), 8, "the takeover gets the next token");
    // Never before the crashed holder's lease could have ended (TTL + margin 200ms).
    assert!(after >= ttl, "taken over after only {after:?}");
    assert!(after < Duration::from_secs(10), "takeover took {after:?}");
    loud(&format!(
        "measured on {}: crashed holder taken over after {after:?} (TTL 2s)",
        t.target.label()
    ));
    guard.release().await.expect("release");
}

async fn lock_a_broken_lease_is_noticed_by_its_holder(t: &Ctx) {
    let name = t.name.as_str();
    let holder = Lock::new(t.backend.clone(), name, short("holder")).expect("lock");
    let guard = holder.acquire(Wait::No).await.expect("acquire");
    let lost = guard.lost();
    let breaker = Lock::new(t.fresh(), name, short("breaker")).expect("lock");
    // At once (`--now`): the next acquire below must not wait out a revoked lease.
    let outcome = breaker
        .break_with(&gcslock::admin::BreakOptions::new().now(true))
        .await
        .expect("break");
    assert!(
        matches!(outcome, gcslock::admin::BreakOutcome::Broken { token, .. } if token.value() == 1),
        "{outcome:?}"
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("the holder notices within a refresh or two");
    assert!(
        matches!(reason, LossReason::Superseded { .. } | LossReason::Released),
        "{reason:?}"
    );
    assert!(guard.check().is_err());
    let result = guard.release().await;
    assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
    // The tombstone keeps the counter: the next holder gets token 2.
    let next = breaker
        .acquire(Wait::No)
        .await
        .expect("acquire after break");
    assert_eq!(next.token().value(), 2);
    next.release().await.expect("release");
}

/// A store with no server clock at all (an InMemory store wrapped like any custom
/// store): waiters take over only after watching one version stay unchanged for a
/// full TTL on their own monotonic clock. Paused time: the TTL is a minute.
#[tokio::test(start_paused = true)]
async fn without_a_server_clock_takeover_waits_a_full_ttl_on_the_local_clock() {
    let store = Arc::new(::object_store::memory::InMemory::new());
    let backend = Arc::new(ObjectStoreBackend::new(store.clone(), "memory://no-clock"));
    let read = backend.read("lock").await.expect("read");
    assert_eq!(read.server_time, None, "no Date header, no server time");

    let ttl = Duration::from_secs(60);
    let crashed = LockRecord {
        state: LockState::Held,
        token: 1,
        holder: "crashed".into(),
        nonce: "dead".into(),
        ttl: ttl.into(),
        refresh_seq: 0,
        completed: None,
    };
    backend
        .write("lock", DoesNotExist, &crashed.to_metadata())
        .await
        .expect("crashed holder's lock");
    let waiter_backend = Arc::new(ObjectStoreBackend::new(store, "memory://no-clock"));
    let options = LockOptions::default().ttl(ttl).identity("waiter");
    let waiter = Lock::new(waiter_backend, "lock", options).expect("lock");
    let started = Instant::now();
    let guard = waiter.acquire(Wait::Forever).await.expect("takeover");
    let waited = started.elapsed();
    let margin = waiter.safety_margin();
    assert!(waited >= ttl + margin, "took over after {waited:?}");
    assert!(
        waited < ttl + margin + Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(guard.token().value(), 2);
    guard.release().await.expect("release");
}

/// A store that cannot update conditionally is refused on first use, not used
/// unsafely: here a wrapper whose conditional puts answer NotImplemented, as
/// object_store does for an S3 store with conditional puts disabled.
#[tokio::test]
async fn a_store_without_conditional_puts_is_refused() {
    let backend = ObjectStoreBackend::new(Arc::new(NoConditionalPuts::default()), "s3://legacy");
    let result = backend.write("lock", DoesNotExist, &Metadata::new()).await;
    match result {
        Err(error @ BackendError::Rejected { status: 501, .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("does not support conditional writes"),
                "{message}"
            );
            assert!(message.contains("s3://legacy"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let lock = Lock::new(Arc::new(backend), "lock", LockOptions::default()).expect("lock");
    let result = lock.acquire(Wait::No).await;
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
}

#[derive(Debug, Default)]
struct NoConditionalPuts(::object_store::memory::InMemory);

impl std::fmt::Display for NoConditionalPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoConditionalPuts")
    }
}

#[async_trait::async_trait]
impl ::object_store::ObjectStore for NoConditionalPuts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: ::object_store::PutPayload,
        opts: PutOptions,
    ) -> ::object_store::Result<::object_store::PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) {
            return Err(::object_store::Error::NotImplemented {
                operation: "`put_opts` with a conditional mode".into(),
                implementer: self.to_string(),
            });
        }
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: ::object_store::PutMultipartOptions,
    ) -> ::object_store::Result<Box<dyn ::object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: ::object_store::GetOptions,
    ) -> ::object_store::Result<::object_store::GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, ::object_store::Result<Path>>,
    ) -> futures_util::stream::BoxStream<'static, ::object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures_util::stream::BoxStream<'static, ::object_store::Result<::object_store::ObjectMeta>>
    {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> ::object_store::Result<::object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: ::object_store::CopyOptions,
    ) -> ::object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

// ---------------------------------------------------------------- the CLI on S3

/// The base of the CLI tests' lock URLs on the S3 test bucket, if configured. The
/// binary is built with this test's features, `object-store` included, so it must
/// accept s3:// URLs.
async fn cli_s3() -> Option<String> {
    let url = configured("s3", "GCSLOCK_TEST_S3_URL")?;
    let bucket = url.trim_end_matches('/').to_owned();
    let probe = format!("{bucket}/cli-probe");
    let out = output(gcslock(None, &["status", &probe])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "gcslock status {probe} (a gcslock built with the object-store feature): {}",
        describe(&out)
    );
    Some(format!("{bucket}/cli-tests"))
}

#[tokio::test]
async fn cli_s3_busy_exits_75() {
    let Some(base) = cli_s3().await else {
        return;
    };
    let url = unique_url(&base, "busy");
    let (mut holder, _, token) = hold(None, &url, &[]).await;
    let busy = output(gcslock(None, &["run", &url, "--", "echo", "must not run"])).await;
    assert_eq!(busy.status.code(), Some(75), "{}", describe(&busy));
    assert!(busy.stdout.is_empty(), "{}", describe(&busy));
    let stderr = text(&busy.stderr);
    assert!(stderr.contains("is busy"), "{stderr}");
    assert!(stderr.contains(&format!("(token {token})")), "{stderr}");
    holder.send_line().await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let status = status_json(None, &url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn cli_s3_wait_acquires_once_the_holder_exits() {
    let Some(base) = cli_s3().await else {
        return;
    };
    let url = unique_url(&base, "wait");
    let (mut holder, _, first) = hold(None, &url, &[]).await;
    let mut waiter = wait_for(None, &url, &[]);
    waiter.expect_stderr("is busy").await;
    holder.send_line().await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let second: u64 = waiter.expect_line("got").await.parse().expect("token");
    assert!(second > first, "tokens grow: {first} then {second}");
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn cli_s3_lease_lost_to_break_exits_76() {
    let Some(base) = cli_s3().await else {
        return;
    };
    let url = unique_url(&base, "lost");
    let mut extra = SHORT_TTL.to_vec();
    extra.extend(["--kill-grace", "500ms"]);
    let (mut holder, _, _) = hold(None, &url, &extra).await;
    let broken = output(gcslock(None, &["break", &url])).await;
    assert_eq!(broken.status.code(), Some(0), "{}", describe(&broken));
    // Before closing its stdin: the command would end on EOF, maybe before the loss.
    holder.expect_stderr("lost while the command ran").await;
    let (status, _, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(76), "{stderr}");
    // A default break revokes: held by the breaker until the broken holder must have
    // stopped (PROTOCOL.md §8), not free at once.
    let status = status_json(None, &url).await;
    assert_eq!(status["state"], "held", "{status}");
    let holder = status["holder"].as_str().unwrap_or_default();
    assert!(holder.starts_with("revoked by "), "{status}");
}

#[tokio::test]
async fn cli_s3_a_crashed_holder_is_taken_over_after_its_ttl() {
    let Some(base) = cli_s3().await else {
        return;
    };
    let url = unique_url(&base, "crash");
    let (holder, child, first) = hold(None, &url, &SHORT_TTL).await;
    // Crash: SIGKILL gcslock and its command's process group; nobody releases.
    kill(holder.pid(), Signal::SIGKILL).expect("killing gcslock");
    let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
    let (status, _, _) = holder.finish().await;
    assert_eq!(status.code(), None, "gcslock died of SIGKILL");
    let mut waiter = wait_for(None, &url, &SHORT_TTL);
    let second: u64 = waiter.expect_line("got").await.parse().expect("token");
    assert_eq!(second, first + 1);
    let (status, _, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("taking over a stale lock"), "{stderr}");
}
