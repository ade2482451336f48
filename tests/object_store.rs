//! The object_store backend (S3, Azure Blob, in-memory): the conformance cases, the
//! stores' measured conditional semantics, the lock on each store, and the CLI on S3.
//!
//! Targets:
//!
//! * `memory::` — object_store's `InMemory`, always;
//! * `s3::` — `GCSLOCK_TEST_S3_URL` (such as `s3://gcslock-test`), configured by the
//!   usual `AWS_*` variables (moto: `emulators/start-moto.sh`);
//! * `azure::` — `GCSLOCK_TEST_AZURE_URL` (such as `az://gcslock-test`), configured by
//!   the usual `AZURE_*` variables (Azurite: `emulators/start-azurite.sh`).
//!
//! An unset target is skipped with a message, and fails instead when
//! `GCSLOCK_REQUIRE_OBJECT_STORE=1` (CI). Object names start with a random per-run
//! prefix. Nothing is deleted afterwards: the backend refuses deletes (there is no
//! conditional delete in object_store), so point real buckets at a prefix with a
//! lifecycle rule.
//!
//! The conformance cases are those of `tests/conformance.rs`, duplicated here (they
//! are private items of that test crate, which would also re-run its own targets if
//! included). Differences, each for a reason stated at the case: deletes are refused;
//! names object_store would store under another key (`trailing-slash/`) are refused;
//! list pages cannot be made small, so paging is not forced.
//!
//! No test sleeps to let something happen: each waits for an event under a bound.
#![cfg(feature = "object-store")]

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::object_store::{path::Path, Attribute, Attributes, ObjectStoreExt, PutMode, PutOptions};
use gcslock::backend::object_store::ObjectStoreBackend;
use gcslock::backend::{
    Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, WriteCondition,
};
use gcslock::{Error, Lock, LockOptions, LockRecord, LockState, LockStatus, LossReason, Wait};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use WriteCondition::{DoesNotExist, Matches};

const CASE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- targets

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Memory,
    S3,
    Azure,
}

struct Target {
    which: Which,
    /// `s3://bucket`, `az://container` or `memory://name`.
    url: String,
    backend: Arc<ObjectStoreBackend>,
}

impl Target {
    fn get(which: Which) -> Option<Target> {
        let url = match which {
            Which::Memory => format!("memory://tests-{:016x}", rand::random::<u64>()),
            Which::S3 => configured("s3", "GCSLOCK_TEST_S3_URL")?,
            Which::Azure => configured("azure", "GCSLOCK_TEST_AZURE_URL")?,
        };
        let url = url.trim_end_matches('/').to_owned();
        let backend = Arc::new(open(&url));
        Some(Target {
            which,
            url,
            backend,
        })
    }

    /// Another backend on the same store, with an empty ETag cache: what another
    /// process sees.
    fn fresh(&self) -> Arc<ObjectStoreBackend> {
        Arc::new(open(&self.url))
    }

    fn label(&self) -> String {
        format!("{:?} {}", self.which, self.url)
    }
}

fn open(url: &str) -> ObjectStoreBackend {
    let (backend, key) =
        ObjectStoreBackend::from_url(url).unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    assert!(
        key.is_empty(),
        "{url}: the test URL must name only a bucket"
    );
    backend
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Printed past the harness's output capture, so skips always show.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "object_store tests: {message}");
}

fn configured(which: &str, variable: &str) -> Option<String> {
    if let Some(url) = env(variable) {
        return Some(url);
    }
    if env("GCSLOCK_REQUIRE_OBJECT_STORE").as_deref() == Some("1") {
        panic!(
            "{which} tests cannot run: {variable} is not set, and GCSLOCK_REQUIRE_OBJECT_STORE=1 \
             requires them (see emulators/README.md)"
        );
    }
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !said.iter().any(|w| w == which) {
        said.push(which.to_owned());
        loud(&format!(
            "SKIPPED all {which} tests: {variable} is not set (see emulators/README.md)"
        ));
    }
    None
}

fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

type CaseFn = fn(Arc<Target>, String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run_case(which: Which, case: &str, run: CaseFn) {
    let Some(target) = Target::get(which) else {
        return;
    };
    let label = target.label();
    let prefix = format!("gcslock-object-store-tests/{}/{case}/", run_id());
    tokio::time::timeout(CASE_TIMEOUT, run(Arc::new(target), prefix))
        .await
        .unwrap_or_else(|_| panic!("{case} on {label} took longer than {CASE_TIMEOUT:?}"));
}

macro_rules! cases {
    ($($case:ident,)*) => {
        mod memory {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::Memory, stringify!($case), |t, p| {
                    Box::pin(async move { super::$case(t, &p).await })
                })
                .await;
            })*
        }
        mod s3 {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::S3, stringify!($case), |t, p| {
                    Box::pin(async move { super::$case(t, &p).await })
                })
                .await;
            })*
        }
        mod azure {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::Azure, stringify!($case), |t, p| {
                    Box::pin(async move { super::$case(t, &p).await })
                })
                .await;
            })*
        }
    };
}

cases! {
    // The conformance suite (tests/conformance.rs), as it applies.
    case_create_if_absent_succeeds_once,
    case_created_object_has_metadata_and_first_version,
    case_empty_metadata_reads_back_empty,
    case_read_of_missing_object_is_none,
    case_responses_carry_server_time,
    case_write_matching_version_replaces_with_new_generation,
    case_write_with_stale_generation_fails,
    case_write_with_stale_metageneration_fails,
    case_update_metadata_merges_and_bumps_metageneration,
    case_update_metadata_with_stale_version_fails,
    case_update_metadata_of_missing_object_is_not_found,
    case_delete_is_refused_and_changes_nothing,
    case_list_returns_prefix_matches_in_name_order,
    case_list_follows_pages,
    case_names_with_slashes_spaces_and_unicode_round_trip,
    // What this backend adds: the ETag cache, races, foreign objects.
    case_conditions_hold_for_a_backend_that_never_saw_the_object,
    case_concurrent_creates_have_one_winner,
    case_concurrent_updates_of_one_version_have_one_winner,
    case_foreign_objects_are_reported_and_never_rewritten,
    // The store's own conditional semantics, measured through object_store.
    case_store_enforces_conditional_puts,
    // The lock on this store.
    lock_acquire_busy_release_and_the_token_grows,
    lock_a_refreshing_holder_is_never_taken_over,
    lock_a_crashed_holder_is_taken_over_after_its_ttl,
    lock_a_broken_lease_is_noticed_by_its_holder,
}

// ---------------------------------------------------------------- helpers

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn create(b: &dyn Backend, name: &str, metadata: &Metadata) -> ObjectInfo {
    b.write(name, DoesNotExist, metadata)
        .await
        .unwrap_or_else(|e| panic!("create {name:?}: {e}"))
        .value
}

async fn read_some(b: &dyn Backend, name: &str) -> ObjectInfo {
    b.read(name)
        .await
        .unwrap_or_else(|e| panic!("read {name:?}: {e}"))
        .value
        .unwrap_or_else(|| panic!("{name:?} should exist"))
}

async fn read_none(b: &dyn Backend, name: &str) {
    let found = b
        .read(name)
        .await
        .unwrap_or_else(|e| panic!("read {name:?}: {e}"));
    assert!(
        found.value.is_none(),
        "{name:?} should not exist: {:?}",
        found.value
    );
}

fn assert_precondition_failed<T: std::fmt::Debug>(result: Result<T, BackendError>, what: &str) {
    assert!(
        matches!(result, Err(BackendError::PreconditionFailed)),
        "{what}: expected PreconditionFailed, got {result:?}"
    );
}

// ---------------------------------------------------------------- conformance cases

async fn case_create_if_absent_succeeds_once(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let first = create(b, &name, &md(&[("holder", "a")])).await;
    let second = b.write(&name, DoesNotExist, &md(&[("holder", "b")])).await;
    assert_precondition_failed(second, "second create-if-absent");
    let now = read_some(b, &name).await;
    assert_eq!(
        now.version, first.version,
        "the loser must not replace the object"
    );
    assert_eq!(now.metadata, md(&[("holder", "a")]));
}

async fn case_created_object_has_metadata_and_first_version(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    // Non-ASCII values and '-' in keys: impossible in S3 metadata headers and Azure
    // metadata names, fine in the JSON body that carries them.
    let metadata = md(&[
        ("gcslock-holder", "host-1 pid 42"),
        ("gcslock-nonce", "0123456789abcdef"),
        ("gcslock-ttl", "300s"),
        ("quoted", "é ✓ \"x\" & <y>"),
    ]);
    let created = create(b, &name, &metadata).await;
    assert_eq!(created.name, name);
    assert_eq!(created.metadata, metadata);
    assert!(created.version.generation > 0, "{:?}", created.version);
    assert_eq!(created.version.metageneration, 1);
    assert_eq!(
        read_some(b, &name).await,
        created,
        "read must return what the write returned"
    );
    // Another process (empty cache) reads the same.
    assert_eq!(read_some(&*t.fresh(), &name).await, created);
}

async fn case_empty_metadata_reads_back_empty(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}bare");
    let created = create(b, &name, &Metadata::new()).await;
    assert!(created.metadata.is_empty(), "{:?}", created.metadata);
    assert!(read_some(b, &name).await.metadata.is_empty());
}

async fn case_read_of_missing_object_is_none(t: Arc<Target>, prefix: &str) {
    read_none(&*t.backend, &format!("{prefix}never-written")).await;
    read_none(&*t.backend, &format!("{prefix}dir/never-written")).await;
}

async fn case_responses_carry_server_time(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let created = b
        .write(&name, DoesNotExist, &md(&[("a", "1")]))
        .await
        .expect("create");
    let updated = created.value.updated;
    let check = |what: &str, time: Option<chrono::DateTime<chrono::Utc>>| {
        let time = time.unwrap_or_else(|| panic!("{what}: no server time (HTTP Date)"));
        // Date has whole seconds; `updated` is Last-Modified rounded up to the next
        // second, so it may be up to a second after the Date of the same response.
        assert!(
            time + chrono::Duration::seconds(1) >= updated,
            "{what}: {time} before {updated}"
        );
        assert!(
            time - updated < chrono::Duration::minutes(5),
            "{what}: {time} far after {updated}"
        );
    };
    check("write", created.server_time);
    check("read", b.read(&name).await.expect("read").server_time);
    let missing = b
        .read(&format!("{prefix}missing"))
        .await
        .expect("read missing");
    check("read of a missing object", missing.server_time);
    check("list", b.list(prefix).await.expect("list").server_time);
    let up = b
        .update_metadata(&name, created.value.version, &md(&[("b", "2")]))
        .await
        .expect("update");
    check("update", up.server_time);
}

async fn case_write_matching_version_replaces_with_new_generation(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a"), ("only-in-v1", "x")])).await;
    let v2 = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await
        .expect("replace the exact version")
        .value;
    assert_ne!(v2.version.generation, v1.version.generation);
    assert_eq!(v2.version.metageneration, 1);
    assert_eq!(
        v2.metadata,
        md(&[("holder", "b")]),
        "a write replaces metadata, it does not merge"
    );
    assert_eq!(read_some(b, &name).await, v2);
}

async fn case_write_with_stale_generation_fails(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a")])).await;
    let v2 = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await
        .expect("replace")
        .value;
    let stale = b
        .write(&name, Matches(v1.version), &md(&[("holder", "c")]))
        .await;
    assert_precondition_failed(stale, "write with the replaced generation");
    assert_eq!(read_some(b, &name).await, v2);

    let missing = format!("{prefix}missing");
    let result = b
        .write(&missing, Matches(v1.version), &md(&[("holder", "c")]))
        .await;
    assert_precondition_failed(result, "write matching a version of a missing object");
    read_none(b, &missing).await;
}

async fn case_write_with_stale_metageneration_fails(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a")])).await;
    let refreshed = b
        .update_metadata(&name, v1.version, &md(&[("refreshed", "1")]))
        .await
        .expect("update")
        .value;
    let stale = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await;
    assert_precondition_failed(
        stale,
        "write with the right generation, stale metageneration",
    );
    assert_eq!(read_some(b, &name).await.version, refreshed.version);
}

async fn case_update_metadata_merges_and_bumps_metageneration(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a"), ("keep", "k")])).await;
    let up = b
        .update_metadata(&name, v1.version, &md(&[("holder", "a2"), ("added", "n")]))
        .await
        .expect("update with the exact version");
    assert!(up.server_time.is_some(), "update: no server time");
    let v2 = up.value;
    assert_eq!(v2.version.generation, v1.version.generation);
    assert_eq!(v2.version.metageneration, v1.version.metageneration + 1);
    assert_eq!(
        v2.metadata,
        md(&[("holder", "a2"), ("keep", "k"), ("added", "n")])
    );
    assert!(v2.updated >= v1.updated, "{} < {}", v2.updated, v1.updated);
    assert_eq!(read_some(b, &name).await, v2);

    let v3 = b
        .update_metadata(&name, v2.version, &md(&[("again", "1")]))
        .await
        .expect("second update")
        .value;
    assert_eq!(v3.version.metageneration, v1.version.metageneration + 2);
    assert!(v3.updated >= v2.updated);
}

async fn case_update_metadata_with_stale_version_fails(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a")])).await;
    let v2 = b
        .update_metadata(&name, v1.version, &md(&[("n", "1")]))
        .await
        .expect("update")
        .value;
    let stale_meta = b
        .update_metadata(&name, v1.version, &md(&[("n", "x")]))
        .await;
    assert_precondition_failed(stale_meta, "update with a stale metageneration");

    let v3 = b
        .write(&name, Matches(v2.version), &md(&[("holder", "b")]))
        .await
        .expect("replace")
        .value;
    // Same metageneration (1), old generation: must not touch the new object.
    let stale_gen = ObjectVersion {
        generation: v1.version.generation,
        metageneration: v3.version.metageneration,
    };
    let result = b
        .update_metadata(&name, stale_gen, &md(&[("n", "x")]))
        .await;
    assert_precondition_failed(result, "update with a stale generation");
    assert_eq!(
        read_some(b, &name).await,
        v3,
        "failed updates change nothing"
    );
}

async fn case_update_metadata_of_missing_object_is_not_found(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}missing");
    let version = ObjectVersion {
        generation: 1,
        metageneration: 1,
    };
    let result = b.update_metadata(&name, version, &md(&[("n", "1")])).await;
    assert!(
        matches!(result, Err(BackendError::NotFound)),
        "update of a missing object: expected NotFound, got {result:?}"
    );
    read_none(b, &name).await;
}

/// Replaces the conformance suite's two delete cases: object_store has no
/// conditional delete, and an unconditional one could remove a lock acquired after
/// the version was read, so `delete` is refused, whatever the version.
async fn case_delete_is_refused_and_changes_nothing(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}lock");
    let v1 = create(b, &name, &md(&[("holder", "a")])).await;
    for version in [
        v1.version,
        ObjectVersion {
            generation: v1.version.generation + 1,
            metageneration: 1,
        },
    ] {
        match b.delete(&name, version).await {
            Err(error @ BackendError::Rejected { .. }) => {
                assert!(error.to_string().contains("conditional delete"), "{error}");
                assert!(!error.is_transient() && !error.may_have_applied());
            }
            other => panic!("delete must be refused, got {other:?}"),
        }
    }
    assert_eq!(read_some(b, &name).await, v1);
}

async fn case_list_returns_prefix_matches_in_name_order(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let dir = format!("{prefix}list/");
    let mut created = Vec::new();
    for suffix in ["b", "a/2", "a/10", "a/1", "c d"] {
        let name = format!("{dir}{suffix}");
        created.push(create(b, &name, &md(&[("suffix", suffix)])).await);
    }
    // Siblings that share a shorter prefix must not be listed.
    create(b, &format!("{prefix}listx"), &Metadata::new()).await;
    create(b, &format!("{prefix}lis"), &Metadata::new()).await;

    let listed = b.list(&dir).await.expect("list").value;
    created.sort_by(|x, y| x.name.cmp(&y.name));
    let names: Vec<_> = listed.iter().map(|o| o.name.as_str()).collect();
    let expected: Vec<_> = created.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(
        listed, created,
        "listed objects carry their versions and metadata"
    );

    // A prefix that ends inside a name segment (object_store lists whole segments).
    let partial = b.list(&format!("{prefix}lis")).await.expect("list").value;
    let mut partial_names: Vec<_> = partial.iter().map(|o| o.name.clone()).collect();
    partial_names.sort();
    assert_eq!(partial_names.len(), 7, "{partial_names:?}");

    let none = b
        .list(&format!("{prefix}nothing-here/"))
        .await
        .expect("empty list")
        .value;
    assert!(none.is_empty(), "{none:?}");
}

/// object_store offers no page size, so 7 objects fit one page here; paging itself
/// is object_store's (and its own test suite's) business.
async fn case_list_follows_pages(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let dir = format!("{prefix}pages/");
    let mut expected = Vec::new();
    for i in 0..7 {
        expected.push(create(b, &format!("{dir}{i:02}"), &md(&[("i", &i.to_string())])).await);
    }
    let listed = b.list(&dir).await.expect("list").value;
    assert_eq!(listed, expected, "all objects, in name order");
}

async fn case_names_with_slashes_spaces_and_unicode_round_trip(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let suffixes = [
        "dir/sub/object",
        "with space",
        "ünïcødé/✓ 锁",
        "percent%2F+plus",
        "question?hash#amp&eq=",
    ];
    let mut created = Vec::new();
    for suffix in suffixes {
        let name = format!("{prefix}{suffix}");
        let object = create(b, &name, &md(&[("name", &name)])).await;
        assert_eq!(object.name, name);
        assert_eq!(read_some(b, &name).await, object, "{name:?}");
        created.push(object);
    }
    created.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(b.list(prefix).await.expect("list").value, created);

    // object_store would store "x/" as "x": refused rather than renamed.
    for suffix in ["trailing-slash/", "double//slash"] {
        let name = format!("{prefix}{suffix}");
        let result = b.write(&name, DoesNotExist, &Metadata::new()).await;
        assert!(
            matches!(&result, Err(BackendError::Rejected { status: 400, .. })),
            "{name:?}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------- backend-specific cases

/// Every condition is enforced by the store, not by this process's cache: a second
/// backend that never saw the object (another process) gets the same answers.
async fn case_conditions_hold_for_a_backend_that_never_saw_the_object(
    t: Arc<Target>,
    prefix: &str,
) {
    let (a, other) = (&*t.backend, t.fresh());
    let name = format!("{prefix}lock");
    let v1 = create(a, &name, &md(&[("holder", "a")])).await;
    // `other` conditions on v1 without ever having read it: it reads first.
    let v2 = other
        .update_metadata(&name, v1.version, &md(&[("by", "other")]))
        .await
        .expect("update through a backend with an empty cache")
        .value;
    // `a` still has v1 cached: its If-Match carries v1's ETag and the store refuses.
    assert_precondition_failed(
        a.update_metadata(&name, v1.version, &md(&[("by", "a")]))
            .await,
        "update with a cached, stale version",
    );
    assert_precondition_failed(
        a.write(&name, Matches(v1.version), &md(&[("holder", "a2")]))
            .await,
        "write with a cached, stale version",
    );
    assert_eq!(read_some(a, &name).await, v2);
    // Both now know v2; a takeover through a third backend wins, and the others lose.
    let third = t.fresh();
    let v3 = third
        .write(&name, Matches(v2.version), &md(&[("holder", "c")]))
        .await
        .expect("replace")
        .value;
    assert_precondition_failed(
        other
            .update_metadata(&name, v2.version, &md(&[("x", "1")]))
            .await,
        "refresh of a replaced version",
    );
    assert_eq!(read_some(&*other, &name).await, v3);
}

async fn case_concurrent_creates_have_one_winner(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let backend = t.fresh();
            let name = name.clone();
            tokio::spawn(async move {
                backend
                    .write(&name, DoesNotExist, &md(&[("holder", &i.to_string())]))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(written) => winners.push(written.value),
            Err(BackendError::PreconditionFailed) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(read_some(&*t.backend, &name).await, winners[0]);
}

async fn case_concurrent_updates_of_one_version_have_one_winner(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&*t.backend, &name, &md(&[("holder", "a")])).await;
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let backend = t.fresh();
            let name = name.clone();
            tokio::spawn(async move {
                backend
                    .update_metadata(&name, v1.version, &md(&[("refresh", &i.to_string())]))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(written) => winners.push(written.value),
            Err(BackendError::PreconditionFailed) => {}
            // S3's answer while another conditional write of the key is in flight;
            // nothing was applied (the final check below proves it).
            Err(BackendError::Server { status: 409, .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let now = read_some(&*t.backend, &name).await;
    assert_eq!(now, winners[0]);
    assert_eq!(now.version.metageneration, 2);
}

async fn case_foreign_objects_are_reported_and_never_rewritten(t: Arc<Target>, prefix: &str) {
    let b = &*t.backend;
    let name = format!("{prefix}foreign");
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata("owner".into()), "someone".into());
    let options = PutOptions {
        mode: PutMode::Create,
        attributes,
        ..PutOptions::default()
    };
    b.store()
        .put_opts(&Path::from(name.as_str()), "not a lock".into(), options)
        .await
        .expect("a plain object");
    let info = read_some(b, &name).await;
    assert!(info.version.generation > 0);
    assert_eq!(info.metadata, md(&[("owner", "someone")]));
    assert!(
        LockRecord::from_metadata(&info.metadata).is_err(),
        "{info:?}"
    );
    // Refused: a metadata update would have to rewrite its content.
    let result = b
        .update_metadata(&name, info.version, &md(&[("x", "1")]))
        .await;
    assert!(
        matches!(result, Err(BackendError::Rejected { .. })),
        "{result:?}"
    );
    let body = b
        .store()
        .get(&Path::from(name.as_str()))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&body[..], b"not a lock");
    assert_eq!(read_some(b, &name).await, info, "unchanged");
    // The lock itself never overwrites it (Lock refuses NotALock objects).
    let lock = Lock::new(t.backend.clone(), &name, LockOptions::default()).expect("lock");
    let result = lock.try_acquire().await;
    assert!(matches!(result, Err(Error::NotALock { .. })), "{result:?}");
}

/// What the store itself enforces, through object_store directly. These hold on any
/// store the backend accepts; the facts that differ between stores are printed (and
/// recorded in emulators/README.md).
async fn case_store_enforces_conditional_puts(t: Arc<Target>, prefix: &str) {
    let store = t.backend.store();
    let path = Path::from(format!("{prefix}raw").as_str());
    let put = |mode: PutMode, body: &'static str| {
        let path = path.clone();
        async move {
            store
                .put_opts(&path, body.into(), PutOptions::from(mode))
                .await
        }
    };
    let first = put(PutMode::Create, "").await.expect("create");
    let again = put(PutMode::Create, "").await;
    assert!(
        matches!(again, Err(::object_store::Error::AlreadyExists { .. })),
        "If-None-Match: * must be enforced: {again:?}"
    );
    // Same (empty) body again, conditioned on the current ETag.
    let same = put(PutMode::Update(first.clone().into()), "")
        .await
        .expect("update");
    let same_etag = same.e_tag == first.e_tag;
    let second = put(PutMode::Update(same.clone().into()), "v2")
        .await
        .expect("update");
    let stale = put(PutMode::Update(same.clone().into()), "v3").await;
    if same_etag {
        // S3: the ETag is the body's MD5, so a stale ETag of an identical body would
        // still match: why the lock's version lives in the body.
        assert!(
            matches!(stale, Err(::object_store::Error::Precondition { .. })),
            "{stale:?}"
        );
    } else {
        assert!(
            matches!(stale, Err(::object_store::Error::Precondition { .. })),
            "If-Match must be enforced: {stale:?}"
        );
    }
    let missing = Path::from(format!("{prefix}raw-missing").as_str());
    let on_missing = store
        .put_opts(
            &missing,
            "x".into(),
            PutOptions::from(PutMode::Update(second.clone().into())),
        )
        .await;
    assert!(
        matches!(
            on_missing,
            Err(::object_store::Error::Precondition { .. } | ::object_store::Error::NotFound { .. })
        ),
        "If-Match on a missing object: {on_missing:?}"
    );
    assert!(matches!(
        store.head(&missing).await,
        Err(::object_store::Error::NotFound { .. })
    ));
    loud(&format!(
        "measured on {}: If-None-Match: * enforced; If-Match enforced; rewriting an identical \
         body keeps the ETag: {same_etag}; If-Match on a missing object: {}",
        t.label(),
        match on_missing {
            Err(::object_store::Error::NotFound { .. }) => "NotFound",
            _ => "Precondition",
        }
    ));
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

async fn lock_acquire_busy_release_and_the_token_grows(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let a = Lock::new(t.backend.clone(), &name, short("a")).expect("lock a");
    let b = Lock::new(t.fresh(), &name, short("b")).expect("lock b");
    let first = a.try_acquire().await.expect("free lock");
    assert_eq!(first.token().value(), 1);
    match b.try_acquire().await {
        Err(Error::Busy { holder, .. }) => {
            assert_eq!(holder.identity, "a");
            assert_eq!(holder.token, 1);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let status = b.status().await.expect("status");
    assert!(
        matches!(&status, LockStatus::Held(held) if held.token == 1),
        "{status:?}"
    );
    first.release().await.expect("release");
    let status = b.status().await.expect("status");
    assert!(
        matches!(status, LockStatus::Released { token: 1, .. }),
        "{status:?}"
    );
    let second = b.try_acquire().await.expect("released lock");
    assert_eq!(second.token().value(), 2, "the token grows across holders");
    second.release().await.expect("release");
    let third = a.try_acquire().await.expect("again");
    assert_eq!(third.token().value(), 3);
    third.release().await.expect("release");
}

async fn lock_a_refreshing_holder_is_never_taken_over(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let holder = Lock::new(t.backend.clone(), &name, short("holder")).expect("lock");
    let guard = holder.try_acquire().await.expect("acquire");
    let waiter = Lock::new(t.fresh(), &name, short("waiter")).expect("lock");
    let started = Instant::now();
    // Well past the TTL (2s) plus margin: refreshes keep it alive.
    let result = waiter.acquire(Wait::For(Duration::from_secs(5))).await;
    assert!(matches!(result, Err(Error::Busy { .. })), "{result:?}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(guard.check().is_ok(), "the holder's lease is intact");
    guard.release().await.expect("release");
}

async fn lock_a_crashed_holder_is_taken_over_after_its_ttl(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let ttl = Duration::from_secs(2);
    // A holder that wrote its lock and died at once: no refresh, no release.
    let crashed = LockRecord {
        state: LockState::Held,
        token: 7,
        holder: "crashed".into(),
        nonce: "dead".into(),
        ttl,
        refresh_seq: 0,
    };
    let crashed_at = Instant::now();
    t.backend
        .write(&name, DoesNotExist, &crashed.to_metadata())
        .await
        .expect("crashed holder's lock");
    let waiter = Lock::new(t.fresh(), &name, short("waiter")).expect("lock");
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
        t.label()
    ));
    guard.release().await.expect("release");
}

async fn lock_a_broken_lease_is_noticed_by_its_holder(t: Arc<Target>, prefix: &str) {
    let name = format!("{prefix}lock");
    let holder = Lock::new(t.backend.clone(), &name, short("holder")).expect("lock");
    let guard = holder.try_acquire().await.expect("acquire");
    let lost = guard.lost();
    let breaker = Lock::new(t.fresh(), &name, short("breaker")).expect("lock");
    let outcome = breaker.break_lock(None).await.expect("break");
    assert!(
        matches!(outcome, gcslock::BreakOutcome::Broken { token: 1, .. }),
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
    let next = breaker.try_acquire().await.expect("acquire after break");
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
        ttl,
        refresh_seq: 0,
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
    let margin = LockStatus::default_margin(ttl);
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
    let result = lock.try_acquire().await;
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

/// Upper bound for any single wait; only a hang ever reaches it.
const HANG_GUARD: Duration = Duration::from_secs(90);
const SHORT_TTL: [&str; 4] = ["--ttl", "2s", "--refresh-interval", "250ms"];

/// The S3 test bucket, if configured and the binary accepts s3:// URLs.
async fn cli_s3(test: &str) -> Option<String> {
    let url = configured("s3", "GCSLOCK_TEST_S3_URL")?;
    let bucket = url.trim_end_matches('/').to_owned();
    let probe = format!("{bucket}/cli-probe");
    let out = output(gcslock(&["status", &probe])).await;
    let stderr = text(&out.stderr);
    if out.status.code() == Some(64)
        && (stderr.contains("unsupported scheme") || stderr.contains("gs://"))
    {
        loud(&format!(
            "SKIPPED {test}: the gcslock binary does not accept s3:// URLs yet: {}",
            stderr.trim()
        ));
        return None;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "gcslock status {probe}: {}",
        describe(&out)
    );
    Some(bucket)
}

fn lock_url(bucket: &str, test: &str) -> String {
    format!(
        "{bucket}/cli-tests/{}/{test}-{:016x}",
        run_id(),
        rand::random::<u64>()
    )
}

fn gcslock(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gcslock"));
    command
        .args(args)
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("GCSLOCK_TOKEN")
        .env_remove("GCSLOCK_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn output(mut command: Command) -> Output {
    tokio::time::timeout(HANG_GUARD, command.output())
        .await
        .expect("gcslock hung")
        .expect("cannot start gcslock")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

async fn status_json(url: &str) -> serde_json::Value {
    let out = output(gcslock(&["status", "--json", url])).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// A running gcslock: its stdout lines, its stderr collected as it comes.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("cannot start gcslock");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            stdout,
            stderr: receiver,
            seen: Vec::new(),
        }
    }

    async fn expect_line(&mut self, prefix: &str) -> String {
        let line = tokio::time::timeout(HANG_GUARD, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no stdout line {prefix:?} in time"))
            .expect("reading stdout")
            .unwrap_or_else(|| panic!("stdout closed before {prefix:?}; stderr: {:?}", self.seen));
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected a line starting {prefix:?}, got {line:?}"))
            .trim()
            .to_owned()
    }

    async fn expect_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}; saw {:?}", self.seen))
                .unwrap_or_else(|| panic!("stderr closed before {needle:?}; saw {:?}", self.seen));
            let found = line.contains(needle);
            self.seen.push(line);
            if found {
                return;
            }
        }
    }

    async fn send_line(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"\n").await.expect("writing stdin");
        stdin.flush().await.expect("flushing stdin");
    }

    async fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(HANG_GUARD, self.child.wait())
            .await
            .expect("gcslock did not exit")
            .expect("waiting for gcslock");
        while let Ok(Some(line)) = tokio::time::timeout(HANG_GUARD, self.stderr.recv()).await {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

/// `gcslock run` of a command that prints `ready TOKEN` and waits for a line.
async fn hold(url: &str, extra: &[&str]) -> (Running, i32, u64) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        url,
        "--",
        "sh",
        "-c",
        r#"echo "ready $$ $GCSLOCK_TOKEN"; read _"#,
    ]);
    let mut holder = Running::start(gcslock(&args));
    let ready = holder.expect_line("ready").await;
    let (child, token) = ready
        .split_once(' ')
        .and_then(|(child, token)| Some((child.parse().ok()?, token.parse().ok()?)))
        .unwrap_or_else(|| panic!("pid and token: {ready:?}"));
    (holder, child, token)
}

#[tokio::test]
async fn cli_s3_busy_exits_75() {
    let Some(bucket) = cli_s3("cli_s3_busy_exits_75").await else {
        return;
    };
    let url = lock_url(&bucket, "busy");
    let (mut holder, _, token) = hold(&url, &[]).await;
    let busy = output(gcslock(&["run", &url, "--", "echo", "must not run"])).await;
    assert_eq!(busy.status.code(), Some(75), "{}", describe(&busy));
    assert!(busy.stdout.is_empty(), "{}", describe(&busy));
    let stderr = text(&busy.stderr);
    assert!(stderr.contains("is busy"), "{stderr}");
    assert!(stderr.contains(&format!("(token {token})")), "{stderr}");
    holder.send_line().await;
    let (status, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let status = status_json(&url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn cli_s3_wait_acquires_once_the_holder_exits() {
    let Some(bucket) = cli_s3("cli_s3_wait_acquires_once_the_holder_exits").await else {
        return;
    };
    let url = lock_url(&bucket, "wait");
    let (mut holder, _, first) = hold(&url, &[]).await;
    let mut waiter = Running::start(gcslock(&[
        "-v",
        "run",
        "--wait",
        "60s",
        &url,
        "--",
        "sh",
        "-c",
        r#"echo "got $GCSLOCK_TOKEN""#,
    ]));
    waiter.expect_stderr("is busy").await;
    holder.send_line().await;
    let (status, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let second: u64 = waiter.expect_line("got").await.parse().expect("token");
    assert!(second > first, "tokens grow: {first} then {second}");
    let (status, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn cli_s3_lease_lost_to_break_exits_76() {
    let Some(bucket) = cli_s3("cli_s3_lease_lost_to_break_exits_76").await else {
        return;
    };
    let url = lock_url(&bucket, "lost");
    let mut extra = SHORT_TTL.to_vec();
    extra.extend(["--kill-grace", "5s"]);
    let (holder, _, _) = hold(&url, &extra).await;
    let broken = output(gcslock(&["break", &url])).await;
    assert_eq!(broken.status.code(), Some(0), "{}", describe(&broken));
    let (status, stderr) = holder.finish().await;
    assert_eq!(status.code(), Some(76), "{stderr}");
    let status = status_json(&url).await;
    assert_eq!(status["state"], "released", "{status}");
}

#[tokio::test]
async fn cli_s3_a_crashed_holder_is_taken_over_after_its_ttl() {
    let Some(bucket) = cli_s3("cli_s3_a_crashed_holder_is_taken_over_after_its_ttl").await else {
        return;
    };
    let url = lock_url(&bucket, "crash");
    let (holder, child, first) = hold(&url, &SHORT_TTL).await;
    // Crash: SIGKILL gcslock and its command's process group; nobody releases.
    let pid = Pid::from_raw(holder.child.id().expect("running") as i32);
    kill(pid, Signal::SIGKILL).expect("killing gcslock");
    let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
    let (status, _) = holder.finish().await;
    assert_eq!(status.code(), None, "gcslock died of SIGKILL");
    let mut args = vec!["-v", "run"];
    args.extend_from_slice(&SHORT_TTL);
    args.extend_from_slice(&[
        "--wait",
        "60s",
        &url,
        "--",
        "sh",
        "-c",
        r#"echo "got $GCSLOCK_TOKEN""#,
    ]);
    let mut waiter = Running::start(gcslock(&args));
    let second: u64 = waiter.expect_line("got").await.parse().expect("token");
    assert_eq!(second, first + 1);
    let (status, stderr) = waiter.finish().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("taking over a stale lock"), "{stderr}");
}
