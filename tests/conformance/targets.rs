//! The targets of the conformance suite, what each can be asked to prove (`Needs`),
//! and the context a case runs with (`Ctx`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::memory::MemoryBackend;
#[cfg(feature = "object-store")]
use gcslock::backend::object_store::ObjectStoreBackend;
use gcslock::backend::Backend;
use gcslock::conformance::{self, Outcome, Target};

use crate::support::{env, loud, not_configured, run_id, test_prefix};
#[cfg(feature = "object-store")]
use crate::support::{Store, StoreTarget, OBJECT_STORE_ROOT};

const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Small pages, so a handful of objects exercises pagination on GCS endpoints.
const LIST_PAGE_SIZE: u32 = 2;
/// Object names of the GCS and memory targets start here.
const GCS_ROOT: &str = "gcslock-conformance";

/// What a case needs from a target beyond what every backend does (plain wire
/// compatibility: `[]`). A target that lacks one skips the case and says why, so
/// that no case passes for the wrong reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Preconditions enforced on metadata updates and deletes (and on the
    /// metageneration of a replacing write), a metageneration that grows on every
    /// update, a full update response. fake-gcs-server has none of these.
    StrictConditions,
    /// Only on fake-gcs-server: the case pins its measured gaps, so a change is noticed.
    FakeGcsGaps,
    /// `delete` removes the object if, and only if, it is at the given version.
    ConditionalDelete,
    /// The opposite: the backend refuses `delete` (object_store has no conditional
    /// delete, and an unconditional one could remove a lock acquired meanwhile).
    DeleteRefused,
    /// Lists can be made to come in small pages, so a few objects exercise paging.
    SmallListPages,
    /// Any name is stored as given, including a trailing `/` and empty segments (`a//b`).
    AnyNames,
    /// Names that object_store would store under another key (a trailing `/`,
    /// empty segments) are refused rather than renamed.
    PathNamesOnly,
    /// Other buckets can be named on the same endpoint, so one can be missing.
    OtherBuckets,
    /// The raw object_store store under the backend, to write foreign objects and
    /// measure the store's own conditional puts.
    #[cfg(feature = "object-store")]
    ObjectStore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `MemoryBackend`, always.
    Memory,
    /// `GcsBackend` on `STORAGE_EMULATOR_HOST`.
    Emulator,
    /// `GcsBackend` on `GCSLOCK_STRICT_EMULATOR_HOST`.
    Strict,
    #[cfg(feature = "object-store")]
    ObjectStore(Store),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `MemoryBackend`: GCS's semantics, one bucket, one list call.
    Memory,
    /// fake-gcs-server: wire-compatible, conditional semantics partly missing.
    FakeGcs,
    /// A GCS endpoint that enforces GCS's semantics (strict-gcs, or any faithful one).
    StrictGcs,
    /// `ObjectStoreBackend` on one of object_store's stores.
    #[cfg(feature = "object-store")]
    ObjectStore(Store),
}

impl Kind {
    /// Why this target cannot judge a case that needs `need`; `None` if it can.
    fn lacks(self, need: Needs) -> Option<&'static str> {
        let object_store = !matches!(self, Kind::Memory | Kind::FakeGcs | Kind::StrictGcs);
        match need {
            Needs::StrictConditions if self == Kind::FakeGcs => Some(
                "fake-gcs-server ignores preconditions on PATCH and DELETE, never bumps the \
                 metageneration and omits it from PATCH responses (emulators/README.md); \
                 this case runs on every other target",
            ),
            Needs::FakeGcsGaps if self != Kind::FakeGcs => {
                Some("it pins fake-gcs-server's gaps and only runs against fake-gcs-server")
            }
            Needs::ConditionalDelete if object_store => Some(
                "object_store has no conditional delete, so this backend refuses every delete \
                 (case_delete_is_refused_and_changes_nothing runs here instead)",
            ),
            Needs::DeleteRefused if !object_store => {
                Some("this backend deletes conditionally (the case_delete_with_* cases run here)")
            }
            Needs::SmallListPages if self == Kind::Memory => {
                Some("MemoryBackend answers a list in one call: there are no pages to follow")
            }
            Needs::SmallListPages if object_store => Some(
                "object_store offers no page size, so a few objects fit one page and paging \
                 would not be exercised (paging is object_store's own)",
            ),
            Needs::AnyNames if object_store => Some(
                "object_store would store such names under another key, so this backend \
                 refuses them (case_names_with_empty_segments_are_refused runs here instead)",
            ),
            Needs::PathNamesOnly if !object_store => {
                Some("this backend stores any name as given (case_names_with_empty_segments_round_trip runs here)")
            }
            Needs::OtherBuckets if self == Kind::Memory => {
                Some("MemoryBackend is one bucket: there is no other bucket to be missing")
            }
            #[cfg(feature = "object-store")]
            Needs::OtherBuckets if self == Kind::ObjectStore(Store::Memory) => {
                Some("a memory:// store comes into being when it is named: none is ever missing")
            }
            #[cfg(feature = "object-store")]
            Needs::ObjectStore if !object_store => {
                Some("it measures object_store's stores through the object_store API")
            }
            _ => None,
        }
    }
}

type OpenBackend = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;
type OpenBucket = Arc<dyn Fn(&str) -> Arc<dyn Backend> + Send + Sync>;
/// Builds a GCS backend on one endpoint for a given bucket.
type MakeGcs = Arc<dyn Fn(&str) -> GcsBackend + Send + Sync>;

/// One target, and what a case runs with there.
pub struct Ctx {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// Every object the case writes starts with it (`ROOT/RUN/CASE/`).
    pub prefix: String,
    /// The target, for messages.
    pub label: String,
    kind: Kind,
    root: &'static str,
    /// Another backend on the same store (for GCS: endpoint and bucket).
    reopen: OpenBackend,
    /// A backend on another bucket of the same endpoint.
    other_bucket: Option<OpenBucket>,
    #[cfg(feature = "object-store")]
    object_store: Option<Arc<ObjectStoreBackend>>,
}

impl Ctx {
    /// `PREFIX` + `suffix`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A backend on `bucket` at the same endpoint (only with `Needs::OtherBuckets`).
    pub fn other_bucket(&self, bucket: &str) -> Arc<dyn Backend> {
        let open = self
            .other_bucket
            .as_ref()
            .expect("a case that opens other buckets declares Needs::OtherBuckets");
        open(bucket)
    }

    /// Whether the target has what `need` asks for.
    pub fn has(&self, need: Needs) -> bool {
        self.kind.lacks(need).is_none()
    }

    /// The target as the published suite describes one, objects under `prefix`.
    fn target(&self, prefix: String) -> Target {
        let reopen = self.reopen.clone();
        let mut target =
            Target::new(self.label.clone(), self.backend.clone(), move || reopen()).prefix(prefix);
        for (published, need) in [
            (
                conformance::Needs::StrictConditions,
                Needs::StrictConditions,
            ),
            (
                conformance::Needs::ConditionalDelete,
                Needs::ConditionalDelete,
            ),
            (conformance::Needs::AnyNames, Needs::AnyNames),
            (conformance::Needs::DeleteRefused, Needs::DeleteRefused),
            (conformance::Needs::PathNamesOnly, Needs::PathNamesOnly),
            (conformance::Needs::SmallListPages, Needs::SmallListPages),
        ] {
            target = match self.kind.lacks(need) {
                Some(why) => target.lacking(published, why),
                None => target.having(published),
            };
        }
        target
    }

    /// The backend as the object_store backend it is, if it is one.
    #[cfg(feature = "object-store")]
    pub fn object_store(&self) -> Option<&Arc<ObjectStoreBackend>> {
        self.object_store.as_ref()
    }

    /// `None` when the target is not configured (after saying so, or failing when
    /// it is required).
    async fn get(which: Which) -> Option<Ctx> {
        match which {
            Which::Memory => {
                let memory = MemoryBackend::new(test_bucket());
                Some(Ctx {
                    backend: Arc::new(memory.clone()),
                    prefix: String::new(),
                    label: "memory".into(),
                    kind: Kind::Memory,
                    root: GCS_ROOT,
                    // A clone shares the bucket (MemoryBackend keeps no cache).
                    reopen: Arc::new(move || Arc::new(memory.clone())),
                    other_bucket: None,
                    #[cfg(feature = "object-store")]
                    object_store: None,
                })
            }
            Which::Emulator => {
                if env("STORAGE_EMULATOR_HOST").is_none() {
                    let required = in_ci().then_some("CI (the CI variable is set)");
                    return not_configured(
                        "emulator",
                        "STORAGE_EMULATOR_HOST",
                        "emulators/README.md",
                        required,
                    );
                }
                let kind = match env("GCSLOCK_EMULATOR_KIND").as_deref() {
                    Some("fake-gcs-server") => Kind::FakeGcs,
                    None | Some("strict") => Kind::StrictGcs,
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
                Some(Ctx::gcs(format!("emulator ({kind:?})"), kind, Arc::new(make)).await)
            }
            Which::Strict => {
                let Some(host) = env("GCSLOCK_STRICT_EMULATOR_HOST") else {
                    let required = (env("GCSLOCK_REQUIRE_STRICT").as_deref() == Some("1"))
                        .then_some("GCSLOCK_REQUIRE_STRICT=1");
                    return not_configured(
                        "strict",
                        "GCSLOCK_STRICT_EMULATOR_HOST",
                        "emulators/README.md",
                        required,
                    );
                };
                let make = move |bucket: &str| {
                    GcsBackend::builder(bucket)
                        .endpoint(Some(host.clone()))
                        .list_page_size(LIST_PAGE_SIZE)
                        .build()
                        .expect("GCS backend for GCSLOCK_STRICT_EMULATOR_HOST")
                };
                Some(Ctx::gcs("strict".into(), Kind::StrictGcs, Arc::new(make)).await)
            }
            #[cfg(feature = "object-store")]
            Which::ObjectStore(store) => {
                let target = StoreTarget::get(store)?;
                let backend = target.open();
                let label = target.label();
                let this = target.clone();
                let other =
                    move |bucket: &str| this.other_bucket(bucket).open() as Arc<dyn Backend>;
                Some(Ctx {
                    backend: backend.clone(),
                    prefix: String::new(),
                    label,
                    kind: Kind::ObjectStore(store),
                    root: OBJECT_STORE_ROOT,
                    reopen: Arc::new(move || target.open()),
                    other_bucket: Some(Arc::new(other)),
                    object_store: Some(backend),
                })
            }
        }
    }

    async fn gcs(label: String, kind: Kind, make: MakeGcs) -> Ctx {
        let bucket = test_bucket();
        let backend = make(&bucket);
        assert!(
            !backend.sends_credentials(),
            "an emulator endpoint must not get credentials: {backend:?}"
        );
        ensure_bucket(&backend).await;
        let same = make.clone();
        Ctx {
            label: format!("{label} {}", backend.describe()),
            backend: Arc::new(backend),
            prefix: String::new(),
            kind,
            root: GCS_ROOT,
            reopen: Arc::new(move || Arc::new(same(&bucket))),
            other_bucket: Some(Arc::new(move |bucket: &str| Arc::new(make(bucket)))),
            #[cfg(feature = "object-store")]
            object_store: None,
        }
    }
}

fn in_ci() -> bool {
    env("CI").is_some_and(|v| v != "false" && v != "0")
}

fn test_bucket() -> String {
    env("GCSLOCK_TEST_BUCKET").unwrap_or_else(|| "gcslock-test".to_owned())
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

/// Runs one case of the published suite (`gcslock::conformance`) on one target,
/// through its public API: skipped, with the reason, when the target is not
/// configured or lacks something the case needs.
pub async fn run_suite_case(which: Which, name: &str) {
    let case = conformance::case(name)
        .unwrap_or_else(|| panic!("{name} is not a case of gcslock::conformance"));
    let Some(ctx) = Ctx::get(which).await else {
        return;
    };
    // `ROOT/RUN/`; the case adds `CASE/`, as `test_prefix` names them.
    let target = ctx.target(format!("{}/{}/", ctx.root, run_id()));
    let label = ctx.label.clone();
    let outcome = tokio::time::timeout(CASE_TIMEOUT, case.run(&target))
        .await
        .unwrap_or_else(|_| panic!("{name} on {label} took longer than {CASE_TIMEOUT:?}"));
    match outcome {
        Outcome::Passed => clean_up(&ctx, &target.name(&format!("{name}/"))).await,
        Outcome::Skipped(reason) => loud(&format!("SKIPPED {name} on {label}: {reason}")),
        other => panic!("{name} on {label}: {other:?}"),
    }
}

/// Best effort: leave a shared bucket as we found it. (Where deletes are refused,
/// objects stay: emulators/README.md.)
async fn clean_up(ctx: &Ctx, prefix: &str) {
    if !ctx.has(Needs::ConditionalDelete) {
        return;
    }
    if let Ok(listed) = ctx.backend.list(prefix).await {
        for object in listed.into_iter().map(|listed| listed.value) {
            let _ = ctx.backend.delete(&object.name, object.version).await;
        }
    }
}

pub type CaseFn = fn(Ctx) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs one case on one target: skipped, with the reason, when the target is not
/// configured or lacks something the case needs.
pub async fn run_case(which: Which, case: &str, needs: &[Needs], run: CaseFn) {
    let Some(mut ctx) = Ctx::get(which).await else {
        return;
    };
    if let Some(reason) = needs.iter().find_map(|need| ctx.kind.lacks(*need)) {
        loud(&format!("SKIPPED {case} on {}: {reason}", ctx.label));
        return;
    }
    ctx.prefix = test_prefix(ctx.root, case);
    let (backend, prefix, label) = (ctx.backend.clone(), ctx.prefix.clone(), ctx.label.clone());
    let deletes = ctx.has(Needs::ConditionalDelete);
    tokio::time::timeout(CASE_TIMEOUT, run(ctx))
        .await
        .unwrap_or_else(|_| panic!("{case} on {label} took longer than {CASE_TIMEOUT:?}"));
    if deletes {
        if let Ok(listed) = backend.list(&prefix).await {
            for object in listed.into_iter().map(|listed| listed.value) {
                let _ = backend.delete(&object.name, object.version).await;
            }
        }
    }
}
