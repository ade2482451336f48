//! Fenced writes (`gcslock::fence`): the storage refuses a writer whose token is
//! older than the one already on the object.
//!
//! * `memory::` — the strict [`MemoryBackend`] under tokio's paused clock, always.
//! * `strict::` — [`GcsBackend`] over HTTP against strict-gcs
//!   (`GCSLOCK_STRICT_EMULATOR_HOST`, bucket `GCSLOCK_TEST_BUCKET`, default
//!   `gcslock-test`). Unset: skipped loudly; a failure with `GCSLOCK_REQUIRE_STRICT=1`.
//!   Never fake-gcs-server: it ignores `ifGenerationMatch` on media uploads and
//!   `ifMetagenerationMatch` on multipart uploads, so fencing would pass for the
//!   wrong reason there.
//! * `cli::` — the `gcslock put` / `gcslock cat` binary as real processes against
//!   strict-gcs; skipped loudly while the binary has no `put` subcommand.
//!
//! The same cases run on memory and strict-gcs. Interleavings are forced, never
//! hoped for: an upload can be held at a gate until the test lets it go (the
//! writer has read and checked the object, and "is paused" before writing), and
//! the memory-only race test delays reads with the lock's own
//! [`FaultyBackend`] (`Fault::Delay`) and uploads with the wrapper below. No test
//! sleeps to wait for a condition.

mod harness;

use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use gcslock::backend::fault::{Fault, FaultError, Faults, FaultyBackend, Operation};
use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::intercept::{Call, Hook, Intercept, Outcome};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{
    Backend, BackendError, Download, Metadata, ObjectBodies, ObjectInfo, Stamped, UploadBody,
    WriteCondition,
};
use gcslock::fence::{
    BodySource, FenceError, FenceOptions, FenceState, FencedObject, Replaced, TOKEN_KEY,
};
use gcslock::{Error, FencingToken, Lock, LockOptions, Wait};
use harness::support::{loud, run_id};
use harness::{exits, Emulator, HANG_GUARD};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------
// A store whose uploads can be held, delayed, failed or preceded by another write
// ---------------------------------------------------------------------------

type Action = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// What happens to the next upload through a [`Scripted`] store.
enum Step {
    /// Tell the test the upload was reached (the writer has read and checked the
    /// object), then wait until it says go on: a writer paused between its check
    /// and its write.
    Pause {
        reached: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    },
    /// Wait this long on tokio's clock first.
    Delay(Duration),
    /// Run this first (a competing write).
    Run(Action),
    /// Fail with this error without uploading.
    Reject(FaultError),
    /// Upload, then lose the response and report a timeout.
    LoseResponse,
}

/// Bodies go to the real store through the script; `Backend` calls (the fenced
/// write's metadata reads) go through the lock's own fault injector, so
/// `Fault::Delay` applies to them.
type Scripted = Intercept<Script>;

#[derive(Clone, Default)]
struct Script {
    reads: Faults,
    uploads: Arc<Mutex<VecDeque<Step>>>,
    before_download: Arc<Mutex<VecDeque<Action>>>,
    /// Uploads that reached the real store.
    uploaded: Arc<AtomicUsize>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scripted<B: ObjectBodies>(store: B) -> Scripted {
    Intercept::wrap_bodies(Arc::new(store), Script::default())
}

impl Script {
    fn then(&self, step: Step) {
        locked(&self.uploads).push_back(step);
    }

    /// Holds the next upload; returns (reached, resume).
    fn pause_next_upload(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (resume_tx, resume_rx) = oneshot::channel();
        self.then(Step::Pause {
            reached: reached_tx,
            resume: resume_rx,
        });
        (reached_rx, resume_tx)
    }

    fn uploaded(&self) -> usize {
        self.uploaded.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Hook for Script {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        self.reads.around(call, proceed).await
    }

    async fn around_upload(
        &self,
        _name: &str,
        proceed: BoxFuture<'_, Result<Stamped<ObjectInfo>, BackendError>>,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        let step = locked(&self.uploads).pop_front();
        let mut lose = false;
        match step {
            None => {}
            Some(Step::Pause { reached, resume }) => {
                let _ = reached.send(());
                let _ = resume.await;
            }
            Some(Step::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(Step::Run(action)) => action().await,
            Some(Step::Reject(error)) => {
                return Err(match error {
                    FaultError::Unavailable => BackendError::Server {
                        status: 503,
                        message: "injected".into(),
                    },
                    FaultError::RateLimited => BackendError::RateLimited { retry_after: None },
                    other => panic!("not scripted here: {other:?}"),
                })
            }
            Some(Step::LoseResponse) => lose = true,
        }
        self.uploaded.fetch_add(1, Ordering::SeqCst);
        let result = proceed.await;
        if lose {
            let _applied = result;
            return Err(BackendError::Timeout(Duration::from_secs(10)));
        }
        result
    }

    async fn around_download(
        &self,
        _name: &str,
        proceed: BoxFuture<'_, Result<Download, BackendError>>,
    ) -> Result<Download, BackendError> {
        let action = locked(&self.before_download).pop_front();
        if let Some(action) = action {
            action().await;
        }
        proceed.await
    }
}

// ---------------------------------------------------------------------------
// Targets: the in-memory model, or strict-gcs over HTTP
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Target {
    Memory(MemoryBackend),
    Strict(GcsBackend),
}

/// Creates the test bucket on the emulator (200 created, 409 already there).
async fn ensure_bucket(endpoint: &str, bucket: &str) {
    let url = format!("{endpoint}/storage/v1/b");
    let response = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "name": bucket }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("cannot reach strict-gcs at {url}: {e}"));
    let status = response.status().as_u16();
    assert!(
        status == 200 || status == 409,
        "creating bucket {bucket}: HTTP {status}"
    );
}

impl Target {
    fn memory() -> Self {
        Self::Memory(MemoryBackend::new("fence-tests"))
    }

    async fn strict() -> Option<Self> {
        let emulator = Emulator::strict()?;
        let backend = GcsBackend::builder(&emulator.bucket)
            .endpoint(Some(emulator.endpoint))
            .build()
            .expect("GCS backend for strict-gcs");
        ensure_bucket(backend.endpoint(), backend.bucket()).await;
        Some(Self::Strict(backend))
    }

    fn name(&self, case: &str) -> String {
        format!("gcslock-fence-tests/{}/{case}", run_id())
    }

    fn plain(&self) -> Arc<dyn ObjectBodies> {
        match self {
            Self::Memory(memory) => Arc::new(memory.clone()),
            Self::Strict(gcs) => Arc::new(gcs.clone()),
        }
    }

    fn lock_backend(&self) -> Arc<dyn Backend> {
        match self {
            Self::Memory(memory) => Arc::new(memory.clone()),
            Self::Strict(gcs) => Arc::new(gcs.clone()),
        }
    }

    fn scripted(&self) -> Scripted {
        match self {
            Self::Memory(memory) => scripted(memory.clone()),
            Self::Strict(gcs) => scripted(gcs.clone()),
        }
    }

    /// A lease short enough for real time, long enough for virtual time.
    fn ttl(&self) -> Duration {
        match self {
            Self::Memory(_) => Duration::from_secs(80),
            Self::Strict(_) => Duration::from_secs(2),
        }
    }

    /// Retries quick enough for real time.
    fn options(&self) -> FenceOptions {
        FenceOptions::default().retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
    }

    fn object(&self, store: Arc<dyn ObjectBodies>, name: &str) -> FencedObject {
        FencedObject::new(store, name)
            .expect("valid name")
            .with_options(self.options())
    }

    /// Writes `name` outside the protocol, with this metadata and no check.
    async fn put_foreign(&self, name: &str, metadata: Metadata, body: &'static str) {
        let store = self.plain();
        let current = store.read(name).await.expect("read").value;
        let condition = current.map_or(WriteCondition::DoesNotExist, |info| {
            WriteCondition::Matches(info.version)
        });
        store
            .upload(
                name,
                condition,
                &metadata,
                UploadBody::from_bytes(Bytes::from_static(body.as_bytes())),
            )
            .await
            .expect("foreign write");
    }
}

async fn contents(object: &FencedObject) -> (Option<u64>, String) {
    let read = object.read().await.expect("read");
    let token = read.token.map(FencingToken::value);
    let bytes = read.bytes().await.expect("body");
    (token, String::from_utf8_lossy(&bytes).into_owned())
}

fn lock_options(ttl: Duration, identity: &str) -> LockOptions {
    LockOptions::default().ttl(ttl).identity(identity)
}

// ---------------------------------------------------------------------------
// Cases, run on every target
// ---------------------------------------------------------------------------

/// Holder A checks its lease, reads the object and is paused before its upload;
/// its refreshes stop (a paused process sends none). B takes the lock over once
/// A's lease has passed and writes. A wakes up and uploads: the storage refuses it.
async fn case_paused_holder_is_refused_by_the_storage(t: Target) {
    let name = t.name("paused-holder");
    let lock_name = format!("{name}.lock");
    let ttl = t.ttl();

    let frozen = FaultyBackend::new(t.lock_backend());
    frozen.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        100_000,
    );
    let a_lock = Lock::new(Arc::new(frozen), &lock_name, lock_options(ttl, "a")).expect("lock");
    let a_guard = a_lock.acquire(Wait::No).await.expect("A acquires");
    let a_store = t.scripted();
    let a_object = t.object(Arc::new(a_store.clone()), &name);
    let first = a_guard
        .fenced_write(&a_object, &BodySource::from("a: first"))
        .await
        .expect("A writes while it holds the lock");
    assert_eq!(first.token, a_guard.token());
    assert_eq!(first.replaced, Replaced::Nothing);

    let (reached, resume) = a_store.pause_next_upload();
    let a_late = tokio::spawn(async move {
        let result = a_guard
            .fenced_write(&a_object, &BodySource::from("a: late"))
            .await;
        (a_guard, a_object, result)
    });
    reached.await.expect("A reached its upload");

    let b_lock = Lock::new(t.lock_backend(), &lock_name, lock_options(ttl, "b")).expect("lock");
    let b_guard = b_lock
        .acquire(Wait::For(ttl * 10))
        .await
        .expect("B takes the lock over once A's lease passed");
    assert!(b_guard.token().value() > first.token.value());
    let b_object = t.object(t.plain(), &name);
    let b_write = b_guard
        .fenced_write(&b_object, &BodySource::from("b: newer"))
        .await
        .expect("B writes");
    assert_eq!(b_write.replaced, Replaced::Fenced(first.token));

    resume.send(()).expect("A still paused");
    let (a_guard, a_object, late) = a_late.await.expect("A's task");
    match late {
        Err(FenceError::Stale {
            seen, presented, ..
        }) => {
            assert_eq!(seen, b_guard.token());
            assert_eq!(presented, a_guard.token());
        }
        other => panic!("A's late write must be refused as stale, got {other:?}"),
    }
    assert_eq!(a_store.uploaded(), 2, "A's late upload reached the storage");

    // A bare-token writer from A's time (another process) is refused the same way,
    // and the message says which token was seen and which presented.
    let bare = a_object
        .write(a_guard.token(), &BodySource::from("a: bare"))
        .await
        .expect_err("stale");
    let message = bare.to_string();
    assert!(
        message.contains(&format!("token {}", b_guard.token()))
            && message.contains(&format!("presented token {}", a_guard.token())),
        "{message}"
    );

    assert_eq!(
        contents(&b_object).await,
        (Some(b_guard.token().value()), "b: newer".to_owned())
    );
    b_guard.release().await.expect("release");
    drop(a_guard);
}

/// Two races between a newer and an older token; the newer always ends on the object.
async fn case_newer_token_wins_races(t: Target) {
    // The newer writer reads first and is held; the older one writes meanwhile. The
    // newer one's upload fails its precondition, it reads again and wins.
    let name = t.name("race-newer-retries");
    let newer_store = t.scripted();
    let newer = t.object(Arc::new(newer_store.clone()), &name);
    let (reached, resume) = newer_store.pause_next_upload();
    let newer_write = tokio::spawn(async move {
        newer
            .write(FencingToken::new(2), &BodySource::from("two"))
            .await
    });
    reached.await.expect("newer writer reached its upload");
    let plain = t.object(t.plain(), &name);
    plain
        .write(FencingToken::new(1), &BodySource::from("one"))
        .await
        .expect("the older writer writes first");
    resume.send(()).expect("resume");
    let written = newer_write
        .await
        .expect("task")
        .expect("the newer write wins");
    assert_eq!(written.attempts, 2, "one 412, then a successful retry");
    assert_eq!(written.replaced, Replaced::Fenced(FencingToken::new(1)));
    assert_eq!(contents(&plain).await, (Some(2), "two".to_owned()));

    // The older writer reads first and is held; the newer one writes meanwhile. The
    // older one's upload fails its precondition and the re-read shows it is stale.
    let name = t.name("race-older-refused");
    let older_store = t.scripted();
    let older = t.object(Arc::new(older_store.clone()), &name);
    let (reached, resume) = older_store.pause_next_upload();
    let older_write = tokio::spawn(async move {
        older
            .write(FencingToken::new(1), &BodySource::from("one"))
            .await
    });
    reached.await.expect("older writer reached its upload");
    let plain = t.object(t.plain(), &name);
    plain
        .write(FencingToken::new(2), &BodySource::from("two"))
        .await
        .expect("newer writes");
    resume.send(()).expect("resume");
    match older_write.await.expect("task") {
        Err(FenceError::Stale {
            seen, presented, ..
        }) if seen == FencingToken::new(2) && presented == FencingToken::new(1) => {}
        other => panic!("expected Stale{{seen: 2, presented: 1}}, got {other:?}"),
    }
    assert_eq!(contents(&plain).await, (Some(2), "two".to_owned()));
}

async fn case_equal_tokens_may_rewrite(t: Target) {
    let name = t.name("equal");
    let object = t.object(t.plain(), &name);
    let first = object
        .write(FencingToken::new(3), &BodySource::from("first"))
        .await
        .expect("create");
    let second = object
        .write(FencingToken::new(3), &BodySource::from("second"))
        .await
        .expect("equal token rewrites");
    assert_eq!(second.replaced, Replaced::Fenced(FencingToken::new(3)));
    assert_ne!(first.info.version, second.info.version);
    assert_eq!(contents(&object).await, (Some(3), "second".to_owned()));
    let older = object
        .write(FencingToken::new(2), &BodySource::from("older"))
        .await;
    assert!(
        matches!(
            older,
            Err(FenceError::Stale { seen, presented, .. })
                if seen == FencingToken::new(3) && presented == FencingToken::new(2)
        ),
        "{older:?}"
    );
}

async fn case_unfenced_objects_are_refused_unless_adopted(t: Target) {
    let name = t.name("unfenced");
    t.put_foreign(&name, Metadata::new(), "written by another tool")
        .await;
    let object = t.object(t.plain(), &name);
    assert!(matches!(
        object.inspect().await.expect("inspect"),
        FenceState::Unfenced { is_lock: false, .. }
    ));
    match object
        .write(FencingToken::new(9), &BodySource::from("fenced"))
        .await
    {
        Err(error @ FenceError::Unfenced { .. }) => {
            assert!(error.to_string().contains(TOKEN_KEY), "{error}");
        }
        other => panic!("expected Unfenced, got {other:?}"),
    }
    // Reading it is harmless: no token.
    assert_eq!(
        contents(&object).await,
        (None, "written by another tool".to_owned())
    );

    // A malformed token is no token either.
    let malformed = t.name("unfenced-malformed");
    t.put_foreign(
        &malformed,
        Metadata::from([(TOKEN_KEY.to_owned(), "nine".to_owned())]),
        "x",
    )
    .await;
    let result = t
        .object(t.plain(), &malformed)
        .write(FencingToken::new(9), &BodySource::from("fenced"))
        .await;
    assert!(
        matches!(&result, Err(FenceError::Unfenced { why, .. }) if why.contains("not a fencing token")),
        "{result:?}"
    );

    // Adopting is explicit: the object counts as token 0, then carries a token.
    let adopting = FencedObject::new(t.plain(), &name)
        .expect("name")
        .with_options(t.options().adopt_unfenced(true));
    let written = adopting
        .write(FencingToken::new(0), &BodySource::from("adopted"))
        .await
        .expect("adopt");
    assert_eq!(written.replaced, Replaced::Unfenced);
    assert_eq!(contents(&object).await, (Some(0), "adopted".to_owned()));
    object
        .write(FencingToken::new(4), &BodySource::from("four"))
        .await
        .expect("fenced from now on");

    // A lock object is never adopted, whatever the option says.
    let lock_name = t.name("unfenced-lock");
    let lock = Lock::new(
        t.lock_backend(),
        &lock_name,
        lock_options(t.ttl(), "holder"),
    )
    .expect("lock");
    let guard = lock.acquire(Wait::No).await.expect("acquire");
    let on_lock = FencedObject::new(t.plain(), &lock_name)
        .expect("name")
        .with_options(t.options().adopt_unfenced(true));
    let result = guard
        .fenced_write(&on_lock, &BodySource::from("clobber"))
        .await;
    assert!(
        matches!(&result, Err(FenceError::Unfenced { why, .. }) if why.contains("lock object")),
        "{result:?}"
    );
    assert!(guard.is_valid(), "the lock object was left alone");
    guard.release().await.expect("release");
}

/// Every upload loses to a concurrent writer with the same token: bounded retries,
/// then `Contended`, and the object holds the other writer's data.
async fn case_contention_is_bounded_and_reported(t: Target) {
    let name = t.name("contended");
    let store = t.scripted();
    let attempts = 3;
    for round in 0..attempts {
        let rival = t.object(t.plain(), &name);
        store.then(Step::Run(Box::new(move || {
            Box::pin(async move {
                rival
                    .write(
                        FencingToken::new(5),
                        &BodySource::from(format!("rival {round}")),
                    )
                    .await
                    .expect("rival writes");
            })
        })));
    }
    let object = FencedObject::new(Arc::new(store.clone()), &name)
        .expect("name")
        .with_options(t.options().max_attempts(attempts));
    let result = object
        .write(FencingToken::new(5), &BodySource::from("mine"))
        .await;
    match result {
        Err(FenceError::Contended { attempts: n, .. }) => assert_eq!(n, attempts),
        other => panic!("expected Contended after {attempts} attempts, got {other:?}"),
    }
    assert_eq!(store.uploaded(), attempts as usize);
    assert_eq!(
        contents(&object).await,
        (Some(5), format!("rival {}", attempts - 1))
    );
}

/// A lost response is resolved by reading back the write's nonce, not by writing
/// again; transient failures are retried a bounded number of times.
async fn case_failures_are_resolved_and_bounded(t: Target) {
    let name = t.name("lost-response");
    let store = t.scripted();
    store.then(Step::LoseResponse);
    let object = t.object(Arc::new(store.clone()), &name);
    let written = object
        .write(FencingToken::new(1), &BodySource::from("once"))
        .await
        .expect("resolved as written");
    assert_eq!(
        (written.attempts, store.uploaded()),
        (1, 1),
        "not uploaded twice"
    );
    assert_eq!(contents(&object).await, (Some(1), "once".to_owned()));

    store.then(Step::Reject(FaultError::Unavailable));
    store.then(Step::Reject(FaultError::RateLimited));
    let written = object
        .write(FencingToken::new(1), &BodySource::from("third time"))
        .await
        .expect("retried");
    assert_eq!(written.attempts, 3);

    for _ in 0..5 {
        store.then(Step::Reject(FaultError::Unavailable));
    }
    let result = object
        .write(FencingToken::new(1), &BodySource::from("never"))
        .await;
    assert!(
        matches!(result, Err(FenceError::Lock(Error::Unavailable { .. }))),
        "{result:?}"
    );
    assert_eq!(contents(&object).await, (Some(1), "third time".to_owned()));
}

/// A read reports the token of the version whose body it returns, even when the
/// object is replaced between reading its metadata and downloading it.
async fn case_reads_are_pinned_to_one_version(t: Target) {
    let name = t.name("pinned-read");
    let plain = t.object(t.plain(), &name);
    plain
        .write(FencingToken::new(1), &BodySource::from("one"))
        .await
        .expect("write");
    let store = t.scripted();
    let replacer = t.object(t.plain(), &name);
    locked(&store.before_download).push_back(Box::new(move || {
        Box::pin(async move {
            replacer
                .write(FencingToken::new(3), &BodySource::from("three"))
                .await
                .expect("replace");
        })
    }));
    let object = t.object(Arc::new(store), &name);
    assert_eq!(contents(&object).await, (Some(3), "three".to_owned()));

    let missing = t.object(t.plain(), &t.name("pinned-read-missing"));
    assert!(matches!(
        missing.read().await,
        Err(FenceError::NotFound { .. })
    ));
}

macro_rules! on_every_target {
    ($($case:ident,)*) => {
        mod memory {
            $(#[tokio::test(start_paused = true)]
            async fn $case() {
                super::$case(super::Target::memory()).await;
            })*
        }
        mod strict {
            $(#[tokio::test]
            async fn $case() {
                let Some(target) = super::Target::strict().await else {
                    return;
                };
                tokio::time::timeout(super::HANG_GUARD, super::$case(target))
                    .await
                    .expect("hung");
            })*
        }
    };
}

on_every_target! {
    case_paused_holder_is_refused_by_the_storage,
    case_newer_token_wins_races,
    case_equal_tokens_may_rewrite,
    case_unfenced_objects_are_refused_unless_adopted,
    case_contention_is_bounded_and_reported,
    case_failures_are_resolved_and_bounded,
    case_reads_are_pinned_to_one_version,
}

// ---------------------------------------------------------------------------
// Memory only
// ---------------------------------------------------------------------------

/// Eight writers with tokens 1..=8 start together; reads are delayed with
/// `Fault::Delay` and uploads with scripted delays, in a different pattern each
/// round, so that checks and writes interleave. Every round ends with token 8's
/// data, every write is either applied or refused as stale, and the tokens of
/// the applied writes never go down.
#[tokio::test(start_paused = true)]
async fn interleaved_writers_end_with_the_highest_token() {
    let mut saw_stale = 0;
    let mut saw_retry = 0;
    for round in 0..6u64 {
        let memory = MemoryBackend::new("race");
        let name = format!("race/{round}");
        let mut tasks = Vec::new();
        for token in 1..=8u64 {
            let store = scripted(memory.clone());
            let read_delay = (token * 37 + round * 11) % 7;
            let upload_delay = (token * 53 + round * 29) % 5;
            store.reads.inject(
                Operation::Read,
                Fault::Delay(Duration::from_millis(100 * read_delay)),
            );
            store.then(Step::Delay(Duration::from_millis(150 * upload_delay)));
            let object = FencedObject::new(Arc::new(store), &name)
                .expect("name")
                .with_options(FenceOptions::default().max_attempts(20));
            tasks.push(tokio::spawn(async move {
                let body = BodySource::from(format!("data of token {token}"));
                (token, object.write(FencingToken::new(token), &body).await)
            }));
        }
        let mut applied = Vec::new();
        for task in tasks {
            match task.await.expect("writer") {
                (token, Ok(written)) => {
                    assert_eq!(written.token.value(), token);
                    if written.attempts > 1 {
                        saw_retry += 1;
                    }
                    applied.push((written.info.version.generation, token));
                }
                (
                    token,
                    Err(FenceError::Stale {
                        seen, presented, ..
                    }),
                ) => {
                    assert_eq!(presented.value(), token);
                    assert!(seen.value() > token);
                    saw_stale += 1;
                }
                (token, Err(other)) => panic!("token {token}: {other}"),
            }
        }
        applied.sort_unstable();
        assert!(
            applied.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "round {round}: tokens went down across generations: {applied:?}"
        );
        assert_eq!(applied.last().map(|&(_, token)| token), Some(8));
        let (info, body) = memory.get_object(&name).expect("object").value;
        assert_eq!(info.metadata.get(TOKEN_KEY).map(String::as_str), Some("8"));
        assert_eq!(body, Bytes::from_static(b"data of token 8"));
    }
    assert!(
        saw_stale > 0 && saw_retry > 0,
        "the delays must force both outcomes: {saw_stale} stale, {saw_retry} retried"
    );
}

/// A holder that knows its lease is gone does not write through its guard. If no
/// newer holder has written the object yet, a bare-token write from its time still
/// succeeds: fencing orders writes against writes, as the module docs say.
#[tokio::test(start_paused = true)]
async fn a_holder_that_knows_it_lost_does_not_write() {
    let memory = MemoryBackend::new("lost");
    let frozen = FaultyBackend::new(Arc::new(memory.clone()));
    frozen.inject_times(
        Operation::UpdateMetadata,
        Fault::Reject(FaultError::Unavailable),
        100_000,
    );
    let ttl = Duration::from_secs(80);
    let lock = Lock::new(Arc::new(frozen), "job.lock", lock_options(ttl, "a")).expect("lock");
    let guard = lock.acquire(Wait::No).await.expect("acquire");
    let object = FencedObject::new(Arc::new(memory.clone()), "job.out").expect("name");
    tokio::time::sleep(ttl * 2).await;
    assert!(!guard.is_valid());
    let result = guard.fenced_write(&object, &BodySource::from("late")).await;
    assert!(
        matches!(result, Err(FenceError::Lock(Error::LeaseLost { .. }))),
        "{result:?}"
    );
    assert!(matches!(
        object.inspect().await.expect("inspect"),
        FenceState::Absent
    ));
    object
        .write(guard.token(), &BodySource::from("bare"))
        .await
        .expect("nothing newer on the object: not refused");
}

#[tokio::test(start_paused = true)]
async fn file_bodies_are_streamed_again_for_each_attempt() {
    let memory = MemoryBackend::new("files");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("body");
    std::fs::write(&path, b"from a file").expect("write");
    let store = scripted(memory.clone());
    store.then(Step::Reject(FaultError::Unavailable));
    let object = FencedObject::new(Arc::new(store), "files/out").expect("name");
    let written = object
        .write(FencingToken::new(1), &BodySource::File(path))
        .await
        .expect("write");
    assert_eq!(written.attempts, 2);
    assert_eq!(
        memory.get_object("files/out").expect("object").value.1,
        Bytes::from_static(b"from a file")
    );

    let handle = Arc::new(tempfile::tempfile().expect("tempfile"));
    (&*handle).write_all(b"from a handle").expect("write");
    let written = object
        .write(
            FencingToken::new(2),
            &BodySource::Handle(Arc::clone(&handle)),
        )
        .await
        .expect("write");
    assert_eq!(written.attempts, 1);
    assert_eq!(
        memory.get_object("files/out").expect("object").value.1,
        Bytes::from_static(b"from a handle")
    );
}

// ---------------------------------------------------------------------------
// strict-gcs only: a large body through the streaming paths
// ---------------------------------------------------------------------------

const LARGE: u64 = 20 << 20;

/// Byte `i` of the generated large body.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Compares a stream with the pattern chunk by chunk, never holding it whole.
async fn check_pattern(
    mut stream: impl futures_util::Stream<Item = Result<Bytes, FenceError>> + Unpin,
) -> u64 {
    let mut offset = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("download chunk");
        for (i, byte) in chunk.iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(*byte, pattern(at), "byte {at} differs");
        }
        offset += chunk.len() as u64;
    }
    offset
}

#[tokio::test]
async fn strict_large_body_round_trips_streamed() {
    let Some(target) = Target::strict().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("large");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut chunk = vec![0u8; 1 << 16];
        let mut offset = 0u64;
        while offset < LARGE {
            for (i, byte) in chunk.iter_mut().enumerate() {
                *byte = pattern(offset + i as u64);
            }
            file.write_all(&chunk).expect("write");
            offset += chunk.len() as u64;
        }
        file.flush().expect("flush");
    }
    let object = target.object(target.plain(), &target.name("large"));
    let started = std::time::Instant::now();
    let written = object
        .write(FencingToken::new(7), &BodySource::File(path))
        .await
        .expect("large write");
    let put_time = started.elapsed();
    assert_eq!(written.attempts, 1);
    let started = std::time::Instant::now();
    let read = object.read().await.expect("read");
    assert_eq!(read.token, Some(FencingToken::new(7)));
    assert_eq!(read.len, Some(LARGE));
    let length = check_pattern(read.into_stream()).await;
    assert_eq!(length, LARGE);
    eprintln!(
        "measured: fenced write of {} MiB to strict-gcs in {put_time:?}, streamed read and \
         check in {:?}",
        LARGE >> 20,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// The binary: gcslock put / gcslock cat as real processes
// ---------------------------------------------------------------------------

mod cli {
    use super::*;
    use harness::{code, describe, gcslock, output, text, unique_url, Running, BIN, SHORT_TTL};
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::process::Command;

    /// Whether the binary has the `put` subcommand yet (it is wired separately).
    async fn put_supported(test: &str) -> bool {
        static SUPPORTED: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
        let supported = *SUPPORTED
            .get_or_init(|| async {
                output(gcslock(None, &["put", "--help"]))
                    .await
                    .status
                    .success()
            })
            .await;
        if !supported {
            loud(&format!(
                "SKIPPED {test}: `gcslock put --help` fails: the put/cat subcommands are not \
                 wired into the CLI yet"
            ));
        }
        supported
    }

    /// Runs `gcslock ARGS` with `input` on stdin.
    async fn with_input(mut command: Command, input: &[u8]) -> Output {
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let out = tokio::time::timeout(HANG_GUARD, child.wait_with_output())
            .await
            .expect("gcslock hung")
            .expect("gcslock");
        feed.await.expect("feeding stdin");
        out
    }

    fn stderr(out: &Output) -> String {
        text(&out.stderr)
    }

    /// strict-gcs, with the test bucket created, and a fresh object prefix on it.
    async fn strict_cli(test: &str) -> Option<(Emulator, String)> {
        if !put_supported(test).await {
            return None;
        }
        let emulator = Emulator::strict()?;
        ensure_bucket(emulator.endpoint.trim_end_matches('/'), &emulator.bucket).await;
        let prefix = unique_url(&format!("gs://{}/gcslock-fence-cli", emulator.bucket), test);
        Some((emulator, prefix))
    }

    #[tokio::test]
    async fn missing_or_bad_tokens_are_usage_errors() {
        if !put_supported("missing_or_bad_tokens_are_usage_errors").await {
            return;
        }
        // No storage is contacted and stdin is not read (it is never closed here).
        let url = "gs://gcslock-test/o";
        let endpoint = ["--endpoint", "http://127.0.0.1:1"];
        let mut cases: Vec<(Command, &str)> = Vec::new();
        cases.push((
            gcslock(None, &["put", endpoint[0], endpoint[1], url]),
            "--token",
        ));
        let mut empty = gcslock(None, &["put", endpoint[0], endpoint[1], url]);
        empty.env("GCSLOCK_TOKEN", "");
        cases.push((empty, "--token"));
        let mut non_numeric = gcslock(None, &["put", endpoint[0], endpoint[1], url]);
        non_numeric.env("GCSLOCK_TOKEN", "abc");
        cases.push((non_numeric, "GCSLOCK_TOKEN=\"abc\""));
        cases.push((
            gcslock(None, &["put", "--token", "abc", url]),
            "not a fencing token",
        ));
        cases.push((
            gcslock(None, &["put", "--token", "1", "gs://Bad_Bucket/o"]),
            "bucket",
        ));
        cases.push((gcslock(None, &["cat", "gs://gcslock-test/"]), "no object"));
        for (mut command, needle) in cases {
            command.stdin(Stdio::piped());
            let child = command.spawn().expect("spawn");
            let out = tokio::time::timeout(HANG_GUARD, child.wait_with_output())
                .await
                .expect("must not wait for stdin")
                .expect("gcslock");
            assert_eq!(code(&out), 64, "{}", describe(&out));
            let text = stderr(&out);
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.contains(needle), "{needle:?} in {text}");
            assert!(out.stdout.is_empty());
        }
    }

    #[tokio::test]
    async fn put_and_cat_with_documented_exit_codes() {
        let Some((host, prefix)) = strict_cli("put_and_cat_with_documented_exit_codes").await
        else {
            return;
        };
        let url = format!("{prefix}/data");

        let out = with_input(
            gcslock(Some(&host), &["put", "--token", "3", &url]),
            b"three",
        )
        .await;
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));

        // The token from the environment, as `gcslock run` passes it; equal is fine.
        let mut from_env = gcslock(Some(&host), &["put", &url]);
        from_env.env("GCSLOCK_TOKEN", "3");
        let out = with_input(from_env, b"three again").await;
        assert_eq!(code(&out), 0, "{}", describe(&out));

        let out = exits(Some(&host), &["cat", "--show-token", &url], 0).await;
        assert_eq!(out.stdout, b"three again", "stdout is the pure body");
        assert_eq!(stderr(&out).trim(), format!("gcslock: {url}: token 3"));

        // Stale: exit 78, the message names both tokens, nothing changes.
        let out = with_input(gcslock(Some(&host), &["put", "--token", "2", &url]), b"two").await;
        assert_eq!(code(&out), 78, "{}", describe(&out));
        let text = stderr(&out);
        assert!(
            text.contains("token 3") && text.contains("presented token 2"),
            "{text}"
        );
        let out = output(gcslock(Some(&host), &["cat", &url])).await;
        assert_eq!(out.stdout, b"three again");

        // Unfenced: 65 unless adopted.
        let foreign = format!("{prefix}/foreign");
        let (bucket, name) = foreign
            .strip_prefix("gs://")
            .and_then(|rest| rest.split_once('/'))
            .expect("url");
        let gcs = GcsBackend::builder(bucket)
            .endpoint(Some(host.endpoint.clone()))
            .build()
            .expect("backend");
        gcs.upload(
            name,
            WriteCondition::DoesNotExist,
            &Metadata::new(),
            UploadBody::from_bytes(Bytes::from_static(b"foreign")),
        )
        .await
        .expect("foreign upload");
        let out = with_input(
            gcslock(Some(&host), &["put", "--token", "1", &foreign]),
            b"x",
        )
        .await;
        assert_eq!(code(&out), 65, "{}", describe(&out));
        assert!(
            stderr(&out).contains("--adopt-unfenced"),
            "{}",
            describe(&out)
        );
        let out = exits(Some(&host), &["cat", "--show-token", &foreign], 0).await;
        assert_eq!(out.stdout, b"foreign");
        assert!(
            stderr(&out).contains("no fencing token"),
            "{}",
            describe(&out)
        );
        let out = with_input(
            gcslock(
                Some(&host),
                &["put", "--token", "1", "--adopt-unfenced", &foreign],
            ),
            b"adopted",
        )
        .await;
        assert_eq!(code(&out), 0, "{}", describe(&out));

        // Missing object and missing bucket: 66.
        let out = exits(Some(&host), &["cat", &format!("{prefix}/nothing")], 66).await;
        assert!(
            stderr(&out).contains("does not exist"),
            "{}",
            describe(&out)
        );
        let no_bucket = format!(
            "gs://gcslock-no-such-bucket-{:08x}/o",
            rand::random::<u32>()
        );
        let out = with_input(
            gcslock(Some(&host), &["put", "--token", "1", &no_bucket]),
            b"x",
        )
        .await;
        assert_eq!(code(&out), 66, "{}", describe(&out));
        exits(Some(&host), &["cat", &no_bucket], 66).await;
    }

    #[tokio::test]
    async fn a_large_body_is_streamed_through_put_and_cat() {
        let Some((host, prefix)) = strict_cli("a_large_body_is_streamed_through_put_and_cat").await
        else {
            return;
        };
        let url = format!("{prefix}/large");
        let started = std::time::Instant::now();
        let mut put = gcslock(Some(&host), &["put", "--token", "1", &url]);
        put.stdin(Stdio::piped());
        let mut child = put.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let feed = tokio::spawn(async move {
            let mut chunk = vec![0u8; 1 << 16];
            let mut offset = 0u64;
            while offset < LARGE {
                for (i, byte) in chunk.iter_mut().enumerate() {
                    *byte = pattern(offset + i as u64);
                }
                stdin.write_all(&chunk).await.expect("feeding put");
                offset += chunk.len() as u64;
            }
        });
        let out = tokio::time::timeout(HANG_GUARD, child.wait_with_output())
            .await
            .expect("put hung")
            .expect("put");
        feed.await.expect("feed");
        assert_eq!(code(&out), 0, "{}", describe(&out));
        let put_time = started.elapsed();

        let started = std::time::Instant::now();
        let mut cat = gcslock(Some(&host), &["cat", &url]).spawn().expect("cat");
        let mut stdout = cat.stdout.take().expect("stdout");
        let check = async {
            let mut buffer = vec![0u8; 1 << 16];
            let mut offset = 0u64;
            loop {
                let n = stdout.read(&mut buffer).await.expect("reading cat");
                if n == 0 {
                    break offset;
                }
                for (i, byte) in buffer[..n].iter().enumerate() {
                    assert_eq!(
                        *byte,
                        pattern(offset + i as u64),
                        "byte {}",
                        offset + i as u64
                    );
                }
                offset += n as u64;
            }
        };
        let length = tokio::time::timeout(HANG_GUARD, check)
            .await
            .expect("cat hung");
        let status = cat.wait().await.expect("cat");
        assert!(status.success(), "{status:?}");
        assert_eq!(length, LARGE);
        eprintln!(
            "measured: gcslock put of {} MiB from stdin in {put_time:?}; gcslock cat in {:?}",
            LARGE >> 20,
            started.elapsed()
        );
    }

    /// The scenario fencing exists for. Holder H1 (`gcslock run`, 2 s lease) runs a
    /// command that waits for a go signal, then writes with `gcslock put`. gcslock
    /// and its command are both stopped (SIGSTOP), as a whole machine pauses; H2
    /// takes the lock over once H1's lease has passed and writes with its token.
    /// H1's command is continued first and runs its put: the storage refuses it
    /// (exit 78). Then gcslock is continued, finds its lease lost and exits 76. The
    /// object holds H2's data.
    #[tokio::test]
    async fn a_stopped_holder_is_refused_after_a_takeover() {
        let Some((host, prefix)) = strict_cli("a_stopped_holder_is_refused_after_a_takeover").await
        else {
            return;
        };
        let lock_url = format!("{prefix}/job.lock");
        let data_url = format!("{prefix}/job.out");
        let mut args = vec!["run"];
        args.extend_from_slice(&SHORT_TTL);
        args.extend_from_slice(&[
            &lock_url,
            "--",
            "sh",
            "-c",
            r#"echo "ready $$ $GCSLOCK_TOKEN"; read _; printf 'old holder data' | "$GCSLOCK_BIN" put "$DATA_URL"; echo "put $?""#,
        ]);
        let mut h1 = gcslock(Some(&host), &args);
        h1.env("GCSLOCK_BIN", BIN).env("DATA_URL", &data_url);
        let mut h1 = Running::start(h1);
        let ready = h1.expect_line("ready").await;
        let mut fields = ready.split_whitespace();
        let child = Pid::from_raw(fields.next().and_then(|p| p.parse().ok()).expect("pid"));
        let h1_token: u64 = fields.next().and_then(|t| t.parse().ok()).expect("token");
        let gcslock_pid = h1.pid();

        // The whole holder pauses: gcslock (no more refreshes) and its command.
        kill(gcslock_pid, Signal::SIGSTOP).expect("stopping gcslock");
        killpg(child, Signal::SIGSTOP).expect("stopping the command's group");

        let mut h2_args = vec!["run"];
        h2_args.extend_from_slice(&SHORT_TTL);
        h2_args.extend_from_slice(&[
            "--wait",
            "60s",
            &lock_url,
            "--",
            "sh",
            "-c",
            r#"printf 'new holder data' | "$GCSLOCK_BIN" put "$DATA_URL" && echo "wrote $GCSLOCK_TOKEN""#,
        ]);
        let mut h2 = gcslock(Some(&host), &h2_args);
        h2.env("GCSLOCK_BIN", BIN).env("DATA_URL", &data_url);
        let h2 = output(h2).await;
        assert_eq!(code(&h2), 0, "H2: {}", describe(&h2));
        let h2_token: u64 = String::from_utf8_lossy(&h2.stdout)
            .trim()
            .strip_prefix("wrote ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("H2: {}", describe(&h2)));
        assert!(h2_token > h1_token);

        // H1's command wakes first and tries its write.
        h1.send_line().await;
        killpg(child, Signal::SIGCONT).expect("continuing the command");
        let put = h1.next_line().await;
        assert_eq!(
            put, "put 78",
            "the old holder's put must be refused as stale"
        );

        kill(gcslock_pid, Signal::SIGCONT).expect("continuing gcslock");
        let (status, _, errors) = h1.finish().await;
        assert_eq!(
            status.code(),
            Some(76),
            "H1 must report its lost lease: {errors}"
        );
        assert!(
            errors.contains(&format!("token {h2_token}"))
                && errors.contains(&format!("presented token {h1_token}")),
            "the refused put explains itself: {errors}"
        );

        let out = exits(Some(&host), &["cat", "--show-token", &data_url], 0).await;
        assert_eq!(out.stdout, b"new holder data");
        assert_eq!(
            stderr(&out).trim(),
            format!("gcslock: {data_url}: token {h2_token}")
        );
    }
}
