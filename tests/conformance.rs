//! One conformance suite, run against every backend.
//!
//! Each case is written once, as `case_*(backend, prefix)`, and runs against:
//!
//! * `memory::` — [`MemoryBackend`], always;
//! * `emulator::` — [`GcsBackend`] against `STORAGE_EMULATOR_HOST`, bucket
//!   `GCSLOCK_TEST_BUCKET` (default `gcslock-test`). Unset: skipped with a message,
//!   but a failure when `CI` is set, so CI never skips it silently.
//!   `GCSLOCK_EMULATOR_KIND=fake-gcs-server` marks that endpoint's known gaps
//!   (fake-gcs/README.md): cases that need them are skipped there, with the reason;
//! * `strict::` — [`GcsBackend`] against `GCSLOCK_STRICT_EMULATOR_HOST`
//!   (fake-gcs/strict-gcs). Unset: skipped with a message, a failure when
//!   `GCSLOCK_REQUIRE_STRICT=1`.
//!
//! Object names start with a random per-run prefix, so runs sharing a bucket do
//! not collide. `wire` tests the HTTP mapping against canned responses.

#[path = "conformance/wire.rs"]
mod wire;

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{
    Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, WriteCondition,
};

use WriteCondition::{DoesNotExist, Matches};

const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Small pages, so a handful of objects exercises pagination on GCS endpoints.
const LIST_PAGE_SIZE: u32 = 2;

/// What a case needs from the backend beyond plain wire compatibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// What every target, fake-gcs-server included, implements faithfully.
    Wire,
    /// Preconditions enforced on PATCH and DELETE (and `ifMetagenerationMatch` on
    /// uploads), a metageneration that grows on PATCH, a full PATCH response.
    StrictConditions,
    /// Only on fake-gcs-server: pins its measured gaps, so a change is noticed.
    FakeGcsGaps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Memory,
    Emulator,
    Strict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    /// fake-gcs-server: wire-compatible, conditional semantics partly missing.
    FakeGcs,
    /// Enforces GCS's semantics (strict-gcs, or any faithful endpoint).
    Strict,
}

/// Builds a backend on the same endpoint for a given bucket.
type MakeBackend = Box<dyn Fn(&str) -> GcsBackend + Send + Sync>;

struct Target {
    label: String,
    kind: Kind,
    backend: Arc<dyn Backend>,
    /// The same endpoint, another bucket (`None` for memory).
    endpoint_for: Option<MakeBackend>,
}

/// Printed past the test harness's output capture, so skips are always visible.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "conformance: {message}");
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn in_ci() -> bool {
    env("CI").is_some_and(|v| v != "false" && v != "0")
}

fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

fn test_bucket() -> String {
    env("GCSLOCK_TEST_BUCKET").unwrap_or_else(|| "gcslock-test".to_owned())
}

/// Skips (returns `None`) when the endpoint is not configured, or fails when it
/// is required.
fn not_configured(which: &str, variable: &str, required_by: Option<&str>) -> Option<Target> {
    if let Some(required_by) = required_by {
        panic!(
            "{which} conformance tests cannot run: {variable} is not set, and {required_by} \
             requires them (see fake-gcs/README.md)"
        );
    }
    // Once per test binary: every test of the target would say the same.
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !said.iter().any(|w| w == which) {
        said.push(which.to_owned());
        loud(&format!(
            "SKIPPED all {which} conformance tests: {variable} is not set (see fake-gcs/README.md)"
        ));
    }
    None
}

impl Target {
    async fn get(which: Which) -> Option<Target> {
        match which {
            Which::Memory => Some(Target {
                label: "memory".into(),
                kind: Kind::Memory,
                backend: Arc::new(MemoryBackend::new(test_bucket())),
                endpoint_for: None,
            }),
            Which::Emulator => {
                if env("STORAGE_EMULATOR_HOST").is_none() {
                    let required = in_ci().then_some("CI (the CI variable is set)");
                    return not_configured("emulator", "STORAGE_EMULATOR_HOST", required);
                }
                let kind = match env("GCSLOCK_EMULATOR_KIND").as_deref() {
                    Some("fake-gcs-server") => Kind::FakeGcs,
                    None | Some("strict") => Kind::Strict,
                    Some(other) => panic!(
                        "GCSLOCK_EMULATOR_KIND={other:?} is unknown: use fake-gcs-server or strict"
                    ),
                };
                // Through the environment, as users configure it.
                let make = |bucket: &str| {
                    GcsBackend::builder(bucket)
                        .list_page_size(LIST_PAGE_SIZE)
                        .build()
                        .expect("GCS backend for STORAGE_EMULATOR_HOST")
                };
                Some(Target::gcs(format!("emulator ({kind:?})"), kind, Box::new(make)).await)
            }
            Which::Strict => {
                let Some(host) = env("GCSLOCK_STRICT_EMULATOR_HOST") else {
                    let required = (env("GCSLOCK_REQUIRE_STRICT").as_deref() == Some("1"))
                        .then_some("GCSLOCK_REQUIRE_STRICT=1");
                    return not_configured("strict", "GCSLOCK_STRICT_EMULATOR_HOST", required);
                };
                let make = move |bucket: &str| {
                    GcsBackend::builder(bucket)
                        .endpoint(Some(host.clone()))
                        .list_page_size(LIST_PAGE_SIZE)
                        .build()
                        .expect("GCS backend for GCSLOCK_STRICT_EMULATOR_HOST")
                };
                Some(Target::gcs("strict".into(), Kind::Strict, Box::new(make)).await)
            }
        }
    }

    async fn gcs(label: String, kind: Kind, make: MakeBackend) -> Target {
        let backend = make(&test_bucket());
        assert!(
            !backend.sends_credentials(),
            "an emulator endpoint must not get credentials: {backend:?}"
        );
        ensure_bucket(&backend).await;
        Target {
            label: format!("{label} {}", backend.describe()),
            kind,
            backend: Arc::new(backend),
            endpoint_for: Some(make),
        }
    }

    fn skip_reason(&self, needs: Needs) -> Option<&'static str> {
        match (needs, self.kind) {
            (Needs::StrictConditions, Kind::FakeGcs) => Some(
                "fake-gcs-server ignores preconditions on PATCH and DELETE, never bumps the \
                 metageneration and omits it from PATCH responses (fake-gcs/README.md); \
                 this case runs on the memory and strict backends",
            ),
            (Needs::FakeGcsGaps, Kind::Memory | Kind::Strict) => {
                Some("it pins fake-gcs-server's gaps and only runs against fake-gcs-server")
            }
            _ => None,
        }
    }
}

/// Creates the test bucket on an emulator (200 created, 409 already there).
async fn ensure_bucket(backend: &GcsBackend) {
    let url = format!("{}/storage/v1/b", backend.endpoint());
    let response = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "name": backend.bucket() }))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {}
        // Not every emulator creates buckets over the API; the cases will tell.
        Ok(r) => loud(&format!("creating bucket via {url}: HTTP {}", r.status())),
        Err(e) => panic!("cannot reach the emulator at {url}: {e}"),
    }
}

type CaseFn = fn(Arc<dyn Backend>, String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run_case(which: Which, case: &str, needs: Needs, run: CaseFn) {
    let Some(target) = Target::get(which).await else {
        return;
    };
    if let Some(reason) = target.skip_reason(needs) {
        loud(&format!("SKIPPED {case} on {}: {reason}", target.label));
        return;
    }
    let prefix = format!("gcslock-conformance/{}/{case}/", run_id());
    tokio::time::timeout(CASE_TIMEOUT, run(target.backend.clone(), prefix.clone()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{case} on {} took longer than {CASE_TIMEOUT:?}",
                target.label
            )
        });
    // Best effort: leave a shared bucket as we found it.
    if let Ok(listed) = target.backend.list(&prefix).await {
        for object in listed.value {
            let _ = target.backend.delete(&object.name, object.version).await;
        }
    }
}

macro_rules! conformance {
    ($($case:ident => $needs:expr,)*) => {
        mod memory {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::Memory, stringify!($case), $needs, |b, p| {
                    Box::pin(async move { super::$case(b, &p).await })
                })
                .await;
            })*
        }
        mod emulator {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::Emulator, stringify!($case), $needs, |b, p| {
                    Box::pin(async move { super::$case(b, &p).await })
                })
                .await;
            })*
            #[tokio::test]
            async fn missing_bucket() {
                super::missing_bucket(Which::Emulator).await;
            }
        }
        mod strict {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_case(Which::Strict, stringify!($case), $needs, |b, p| {
                    Box::pin(async move { super::$case(b, &p).await })
                })
                .await;
            })*
            #[tokio::test]
            async fn missing_bucket() {
                super::missing_bucket(Which::Strict).await;
            }
        }
    };
}

conformance! {
    case_create_if_absent_succeeds_once => Needs::Wire,
    case_created_object_has_metadata_and_first_version => Needs::Wire,
    case_empty_metadata_reads_back_empty => Needs::Wire,
    case_read_of_missing_object_is_none => Needs::Wire,
    case_responses_carry_server_time => Needs::Wire,
    case_write_matching_version_replaces_with_new_generation => Needs::Wire,
    case_write_with_stale_generation_fails => Needs::Wire,
    case_write_with_stale_metageneration_fails => Needs::StrictConditions,
    case_update_metadata_merges_and_bumps_metageneration => Needs::StrictConditions,
    case_update_metadata_with_stale_version_fails => Needs::StrictConditions,
    case_update_metadata_of_missing_object_is_not_found => Needs::Wire,
    case_delete_with_matching_version_removes => Needs::Wire,
    case_delete_with_stale_version_fails_and_keeps_object => Needs::StrictConditions,
    case_list_returns_prefix_matches_in_name_order => Needs::Wire,
    case_list_follows_pages => Needs::Wire,
    case_names_with_slashes_spaces_and_unicode_round_trip => Needs::Wire,
    case_fake_gcs_server_gaps_are_as_documented => Needs::FakeGcsGaps,
}

// ---------------------------------------------------------------- helpers

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn create(b: &Arc<dyn Backend>, name: &str, metadata: &Metadata) -> ObjectInfo {
    b.write(name, DoesNotExist, metadata)
        .await
        .unwrap_or_else(|e| panic!("create {name:?}: {e}"))
        .value
}

async fn read_some(b: &Arc<dyn Backend>, name: &str) -> ObjectInfo {
    b.read(name)
        .await
        .unwrap_or_else(|e| panic!("read {name:?}: {e}"))
        .value
        .unwrap_or_else(|| panic!("{name:?} should exist"))
}

async fn read_none(b: &Arc<dyn Backend>, name: &str) {
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

// ---------------------------------------------------------------- cases

async fn case_create_if_absent_succeeds_once(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let first = create(&b, &name, &md(&[("holder", "a")])).await;
    let second = b.write(&name, DoesNotExist, &md(&[("holder", "b")])).await;
    assert_precondition_failed(second, "second create-if-absent");
    let now = read_some(&b, &name).await;
    assert_eq!(
        now.version, first.version,
        "the loser must not replace the object"
    );
    assert_eq!(now.metadata, md(&[("holder", "a")]));
}

async fn case_created_object_has_metadata_and_first_version(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let metadata = md(&[
        ("gcslock-holder", "host-1 pid 42"),
        ("gcslock-nonce", "0123456789abcdef"),
        ("gcslock-ttl", "300s"),
        ("quoted", "é ✓ \"x\" & <y>"),
    ]);
    let created = create(&b, &name, &metadata).await;
    assert_eq!(created.name, name);
    assert_eq!(created.metadata, metadata);
    assert!(created.version.generation > 0, "{:?}", created.version);
    assert_eq!(
        created.version.metageneration, 1,
        "a new object starts at metageneration 1"
    );
    assert_eq!(
        read_some(&b, &name).await,
        created,
        "read must return what the write returned"
    );
}

async fn case_empty_metadata_reads_back_empty(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}bare");
    let created = create(&b, &name, &Metadata::new()).await;
    assert!(created.metadata.is_empty(), "{:?}", created.metadata);
    assert!(read_some(&b, &name).await.metadata.is_empty());
}

async fn case_read_of_missing_object_is_none(b: Arc<dyn Backend>, prefix: &str) {
    read_none(&b, &format!("{prefix}never-written")).await;
    read_none(&b, &format!("{prefix}dir/never-written")).await;
}

async fn case_responses_carry_server_time(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let created = b
        .write(&name, DoesNotExist, &md(&[("a", "1")]))
        .await
        .expect("create");
    let updated = created.value.updated;
    let check = |what: &str, time: Option<chrono::DateTime<chrono::Utc>>| {
        let time = time.unwrap_or_else(|| panic!("{what}: no server time (HTTP Date)"));
        // Date has whole seconds, `updated` finer: allow one second below.
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
}

async fn case_write_matching_version_replaces_with_new_generation(
    b: Arc<dyn Backend>,
    prefix: &str,
) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a"), ("only-in-v1", "x")])).await;
    let v2 = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await
        .expect("replace the exact version")
        .value;
    assert_ne!(
        v2.version.generation, v1.version.generation,
        "a replaced object gets a new generation"
    );
    assert_eq!(v2.version.metageneration, 1);
    assert_eq!(
        v2.metadata,
        md(&[("holder", "b")]),
        "a write replaces metadata, it does not merge"
    );
    assert_eq!(read_some(&b, &name).await, v2);
}

async fn case_write_with_stale_generation_fails(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a")])).await;
    let v2 = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await
        .expect("replace")
        .value;
    let stale = b
        .write(&name, Matches(v1.version), &md(&[("holder", "c")]))
        .await;
    assert_precondition_failed(stale, "write with the replaced generation");
    assert_eq!(read_some(&b, &name).await, v2);

    let missing = format!("{prefix}missing");
    let result = b
        .write(&missing, Matches(v1.version), &md(&[("holder", "c")]))
        .await;
    assert_precondition_failed(result, "write matching a version of a missing object");
    read_none(&b, &missing).await;
}

async fn case_write_with_stale_metageneration_fails(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a")])).await;
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
        "write with the generation right but a stale metageneration",
    );
    assert_eq!(read_some(&b, &name).await.version, refreshed.version);
}

async fn case_update_metadata_merges_and_bumps_metageneration(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a"), ("keep", "k")])).await;
    let up = b
        .update_metadata(&name, v1.version, &md(&[("holder", "a2"), ("added", "n")]))
        .await
        .expect("update with the exact version");
    assert!(up.server_time.is_some(), "update: no server time");
    let v2 = up.value;
    assert_eq!(
        v2.version.generation, v1.version.generation,
        "an update keeps the generation"
    );
    assert_eq!(v2.version.metageneration, v1.version.metageneration + 1);
    assert_eq!(
        v2.metadata,
        md(&[("holder", "a2"), ("keep", "k"), ("added", "n")])
    );
    assert!(
        v2.updated >= v1.updated,
        "updated went back: {} < {}",
        v2.updated,
        v1.updated
    );
    assert_eq!(read_some(&b, &name).await, v2);

    let v3 = b
        .update_metadata(&name, v2.version, &md(&[("again", "1")]))
        .await
        .expect("second update")
        .value;
    assert_eq!(v3.version.metageneration, v1.version.metageneration + 2);
    assert!(v3.updated >= v2.updated);
}

async fn case_update_metadata_with_stale_version_fails(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a")])).await;
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
        read_some(&b, &name).await,
        v3,
        "failed updates must change nothing"
    );
}

async fn case_update_metadata_of_missing_object_is_not_found(b: Arc<dyn Backend>, prefix: &str) {
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
    read_none(&b, &name).await;
}

async fn case_delete_with_matching_version_removes(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a")])).await;
    b.delete(&name, v1.version)
        .await
        .expect("delete the exact version");
    read_none(&b, &name).await;

    let again = b.delete(&name, v1.version).await;
    assert!(
        matches!(again, Err(BackendError::NotFound)),
        "delete of a deleted object: expected NotFound, got {again:?}"
    );
    let v2 = create(&b, &name, &md(&[("holder", "b")])).await;
    assert_ne!(
        v2.version.generation, v1.version.generation,
        "a re-created object gets a new generation"
    );
    assert_eq!(v2.version.metageneration, 1);
}

async fn case_delete_with_stale_version_fails_and_keeps_object(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("holder", "a")])).await;
    let v2 = b
        .write(&name, Matches(v1.version), &md(&[("holder", "b")]))
        .await
        .expect("replace")
        .value;
    assert_precondition_failed(
        b.delete(&name, v1.version).await,
        "delete with a stale generation",
    );
    assert_eq!(read_some(&b, &name).await, v2);

    let v3 = b
        .update_metadata(&name, v2.version, &md(&[("n", "1")]))
        .await
        .expect("update")
        .value;
    assert_precondition_failed(
        b.delete(&name, v2.version).await,
        "delete with a stale metageneration",
    );
    assert_eq!(read_some(&b, &name).await, v3);

    b.delete(&name, v3.version)
        .await
        .expect("delete the current version");
    read_none(&b, &name).await;
}

async fn case_list_returns_prefix_matches_in_name_order(b: Arc<dyn Backend>, prefix: &str) {
    let dir = format!("{prefix}list/");
    let mut created = Vec::new();
    for suffix in ["b", "a/2", "a/10", "a/1", "c d"] {
        let name = format!("{dir}{suffix}");
        created.push(create(&b, &name, &md(&[("suffix", suffix)])).await);
    }
    // Siblings that share a shorter prefix must not be listed.
    create(&b, &format!("{prefix}listx"), &Metadata::new()).await;
    create(&b, &format!("{prefix}lis"), &Metadata::new()).await;

    let listed = b.list(&dir).await.expect("list").value;
    created.sort_by(|x, y| x.name.cmp(&y.name));
    let names: Vec<_> = listed.iter().map(|o| o.name.as_str()).collect();
    let expected: Vec<_> = created.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(
        listed, created,
        "listed objects must carry their versions and metadata"
    );

    let none = b
        .list(&format!("{prefix}nothing-here/"))
        .await
        .expect("empty list")
        .value;
    assert!(none.is_empty(), "{none:?}");
}

async fn case_list_follows_pages(b: Arc<dyn Backend>, prefix: &str) {
    let dir = format!("{prefix}pages/");
    let mut expected = Vec::new();
    for i in 0..7 {
        expected.push(create(&b, &format!("{dir}{i:02}"), &md(&[("i", &i.to_string())])).await);
    }
    let listed = b.list(&dir).await.expect("list").value;
    assert_eq!(listed, expected, "all pages, in name order");
}

async fn case_names_with_slashes_spaces_and_unicode_round_trip(b: Arc<dyn Backend>, prefix: &str) {
    let suffixes = [
        "dir/sub/object",
        "with space",
        "ünïcødé/✓ 锁",
        "percent%2F+plus",
        "question?hash#amp&eq=",
        "trailing-slash/",
    ];
    let mut created = Vec::new();
    for suffix in suffixes {
        let name = format!("{prefix}{suffix}");
        let object = create(&b, &name, &md(&[("name", &name)])).await;
        assert_eq!(object.name, name);
        assert_eq!(read_some(&b, &name).await, object, "{name:?}");
        created.push(object);
    }
    created.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(b.list(prefix).await.expect("list").value, created);
    for object in &created {
        b.delete(&object.name, object.version)
            .await
            .unwrap_or_else(|e| panic!("delete {:?}: {e}", object.name));
        read_none(&b, &object.name).await;
    }
}

/// fake-gcs-server 1.54's gaps, as measured (fake-gcs/README.md). If this fails,
/// fake-gcs-server changed: update the README and `Target::skip_reason`.
async fn case_fake_gcs_server_gaps_are_as_documented(b: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}lock");
    let v1 = create(&b, &name, &md(&[("a", "1")])).await;

    // PATCH applies, but its response has no metageneration.
    let patched = b
        .update_metadata(&name, v1.version, &md(&[("b", "2")]))
        .await;
    assert!(
        matches!(&patched, Err(BackendError::InvalidResponse(m)) if m.contains("metageneration")),
        "{patched:?}"
    );
    let after = read_some(&b, &name).await;
    assert_eq!(
        after.metadata,
        md(&[("a", "1"), ("b", "2")]),
        "the PATCH was applied"
    );
    assert_eq!(after.version, v1.version, "metageneration did not grow");
    assert_eq!(after.updated, v1.updated, "updated did not move");

    // PATCH ignores both preconditions.
    let wrong = ObjectVersion {
        generation: v1.version.generation + 1,
        metageneration: 7,
    };
    let _ = b.update_metadata(&name, wrong, &md(&[("c", "3")])).await;
    assert!(
        read_some(&b, &name).await.metadata.contains_key("c"),
        "stale PATCH applied"
    );

    // Uploads honour ifGenerationMatch but ignore ifMetagenerationMatch.
    let stale_meta = ObjectVersion {
        generation: v1.version.generation,
        metageneration: 7,
    };
    let v2 = b
        .write(&name, Matches(stale_meta), &md(&[("holder", "b")]))
        .await
        .expect("fake-gcs-server ignores ifMetagenerationMatch on uploads")
        .value;

    // DELETE ignores both preconditions.
    b.delete(&name, wrong)
        .await
        .expect("fake-gcs-server ignores DELETE preconditions");
    read_none(&b, &name).await;
    assert_ne!(v2.version.generation, wrong.generation);
}

// ---------------------------------------------------------------- per endpoint

/// A bucket that does not exist is reported as such, not as a missing object.
async fn missing_bucket(which: Which) {
    let Some(target) = Target::get(which).await else {
        return;
    };
    let make = target.endpoint_for.as_ref().expect("a GCS target");
    let bucket = format!("gcslock-missing-{}", run_id());
    let b = make(&bucket);
    let is_missing_bucket =
        |e: &BackendError| matches!(e, BackendError::BucketNotFound(name) if *name == bucket);
    let version = ObjectVersion {
        generation: 1,
        metageneration: 1,
    };

    let write = b.write("lock", DoesNotExist, &Metadata::new()).await;
    assert!(
        write.as_ref().is_err_and(is_missing_bucket),
        "write: {write:?}"
    );
    let list = b.list("").await;
    assert!(
        list.as_ref().is_err_and(is_missing_bucket),
        "list: {list:?}"
    );

    let read = b.read("lock").await;
    let update = b.update_metadata("lock", version, &Metadata::new()).await;
    let delete = b.delete("lock", version).await;
    if target.kind == Kind::FakeGcs {
        loud(&format!(
            "{}: fake-gcs-server answers a bare \"Not Found\" for a missing bucket on \
             GET/PATCH/DELETE of an object, so those report a missing object there",
            target.label
        ));
        assert!(
            matches!(read, Ok(ref s) if s.value.is_none()),
            "read: {read:?}"
        );
        assert!(
            matches!(update, Err(BackendError::NotFound)),
            "update: {update:?}"
        );
        assert!(
            matches!(delete, Err(BackendError::NotFound)),
            "delete: {delete:?}"
        );
    } else {
        assert!(
            read.as_ref().is_err_and(is_missing_bucket),
            "read: {read:?}"
        );
        assert!(
            update.as_ref().is_err_and(is_missing_bucket),
            "update: {update:?}"
        );
        assert!(
            delete.as_ref().is_err_and(is_missing_bucket),
            "delete: {delete:?}"
        );
    }
}
