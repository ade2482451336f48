//! Shared by the two test crates that run against external stores:
//! `tests/conformance.rs` (the backend conformance suite, every backend) and
//! `cli/tests/object_store.rs` (the lock and the CLI on the object_store stores).
//!
//! * the environment and loud (uncaptured) messages, the per-run id;
//! * the skip-or-fail rule for an unconfigured target;
//! * the object_store targets (`memory://`, `s3://` on moto, `az://` on Azurite);
//! * [`per_target!`], which writes one test module per target.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Printed past the test harness's output capture, so skips are always visible.
/// Prefixed with the test crate's name (`conformance`, `object_store`).
pub fn loud(message: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}: {message}",
        env!("CARGO_CRATE_NAME")
    );
}

/// Random per test binary: object names start with it, so runs sharing a bucket do
/// not collide.
pub fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// Where one test writes: `ROOT/RUN/TEST/`.
pub fn test_prefix(root: &str, test: &str) -> String {
    format!("{root}/{}/{test}/", run_id())
}

/// A target that is not configured: fails when `required_by` names what requires
/// it, and otherwise says once per test binary that its tests are skipped.
pub fn not_configured<T>(
    which: &str,
    variable: &str,
    readme: &str,
    required_by: Option<&str>,
) -> Option<T> {
    if let Some(required_by) = required_by {
        panic!(
            "{which} tests cannot run: {variable} is not set, and {required_by} requires them \
             (see {readme})"
        );
    }
    // Every test of the target would say the same.
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !said.iter().any(|w| w == which) {
        said.push(which.to_owned());
        loud(&format!(
            "SKIPPED all {which} tests: {variable} is not set (see {readme})"
        ));
    }
    None
}

/// One `mod TARGET { #[tokio::test] async fn CASE() .. }` per target, each test
/// calling `RUN(WHICH, "CASE", &[NEEDS..], |ctx| CASE(&ctx))`, where `RUN` builds
/// the context (or skips, saying why) and `CASE` is a function of the invoking
/// module.
///
/// ```ignore
/// per_target! {
///     run: run_case;
///     targets: { memory => Which::Memory, #[cfg(..)] s3 => Which::S3, }
///     cases: { case_a => [], case_b => [Needs::X, Needs::Y], #[cfg(..)] case_c => [], }
/// }
/// ```
macro_rules! per_target {
    (
        run: $run:path;
        targets: { $($(#[$attr:meta])* $target:ident => $which:expr,)* }
        cases: $cases:tt
    ) => {
        $($(#[$attr])* per_target!(@target $run, $target, $which, $cases);)*
    };
    (
        @target $run:path, $target:ident, $which:expr,
        { $($(#[$case_attr:meta])* $case:ident $(=> [$($needs:expr),* $(,)?])?,)* }
    ) => {
        mod $target {
            use super::*;
            $($(#[$case_attr])*
            #[tokio::test]
            async fn $case() {
                $run($which, stringify!($case), &[$($($needs),*)?], |ctx| {
                    Box::pin(async move { super::$case(&ctx).await })
                })
                .await;
            })*
        }
    };
}

// ---------------------------------------------------------------- object_store targets

#[cfg(feature = "object-store")]
pub use self::object_store_targets::*;

#[cfg(feature = "object-store")]
mod object_store_targets {
    use std::sync::Arc;

    use ::object_store::memory::InMemory;
    use gcslock::backend::object_store::{ObjectStoreBackend, DEFAULT_REQUEST_TIMEOUT};
    use gcslock::backend::StorageUrl;

    use super::{env, not_configured};

    /// Object names on these stores start here (emulators/README.md: give real
    /// buckets a lifecycle rule on it, as nothing is deleted there).
    pub const OBJECT_STORE_ROOT: &str = "gcslock-object-store-tests";

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Store {
        /// object_store's `InMemory`: always.
        Memory,
        /// `GCSLOCK_TEST_S3_URL` (such as `s3://gcslock-test`), configured by the
        /// usual `AWS_*` variables (moto: `emulators/moto.sh`).
        S3,
        /// `GCSLOCK_TEST_AZURE_URL` (such as `az://gcslock-test`), configured by the
        /// usual `AZURE_*` variables (Azurite: `emulators/azurite.sh`).
        Azure,
    }

    /// One bucket (or container, or in-memory store) of an object_store store.
    #[derive(Clone, Debug)]
    pub struct StoreTarget {
        pub store: Store,
        /// `s3://bucket`, `az://container` or `memory://name`.
        pub url: String,
        /// The in-memory store every `open` of a `Store::Memory` target shares.
        memory: Option<Arc<InMemory>>,
    }

    impl StoreTarget {
        /// `None` (after saying so) when the store is not configured; a failure
        /// instead when `GCSLOCK_REQUIRE_OBJECT_STORE=1`. `memory://` is a fresh
        /// store each time.
        pub fn get(store: Store) -> Option<StoreTarget> {
            let url = match store {
                Store::Memory => format!("memory://tests-{:016x}", rand::random::<u64>()),
                Store::S3 => configured("s3", "GCSLOCK_TEST_S3_URL")?,
                Store::Azure => configured("azure", "GCSLOCK_TEST_AZURE_URL")?,
            };
            let url = url.trim_end_matches('/').to_owned();
            let memory = (store == Store::Memory).then(|| Arc::new(InMemory::new()));
            Some(StoreTarget { store, url, memory })
        }

        /// A new backend on the store, with an empty ETag cache: what another
        /// process sees.
        pub fn open(&self) -> Arc<ObjectStoreBackend> {
            if let Some(memory) = &self.memory {
                return Arc::new(ObjectStoreBackend::in_memory(memory.clone(), &self.url));
            }
            let url = &self.url;
            let parsed =
                StorageUrl::parse_prefix(url).unwrap_or_else(|e| panic!("cannot parse {url}: {e}"));
            assert!(
                parsed.name().is_empty(),
                "{url}: the test URL must name only a bucket"
            );
            let backend = ObjectStoreBackend::for_bucket(
                parsed.scheme(),
                parsed.bucket(),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
            Arc::new(backend)
        }

        /// Another bucket of the same store (for memory, another, empty store).
        pub fn other_bucket(&self, bucket: &str) -> StoreTarget {
            let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
            StoreTarget {
                store: self.store,
                url: format!("{scheme}://{bucket}"),
                memory: self.memory.as_ref().map(|_| Arc::new(InMemory::new())),
            }
        }

        pub fn label(&self) -> String {
            format!("{:?} {}", self.store, self.url)
        }
    }

    /// The URL in `variable`; unset, skipped with a message, or a failure when
    /// `GCSLOCK_REQUIRE_OBJECT_STORE=1` (CI).
    pub fn configured(which: &str, variable: &str) -> Option<String> {
        if let Some(url) = env(variable) {
            return Some(url);
        }
        let required = (env("GCSLOCK_REQUIRE_OBJECT_STORE").as_deref() == Some("1"))
            .then_some("GCSLOCK_REQUIRE_OBJECT_STORE=1");
        not_configured(which, variable, "emulators/README.md", required)
    }
}
