//! The conformance suite for [`Backend`] implementations (feature `conformance`),
//! as `object_store` publishes its `integration` tests: prove that your backend
//! has the semantics the lease protocol relies on (PROTOCOL.md §2) before you
//! put a lock on it.
//!
//! Describe the backend as a [`Target`]: the backend, a way to open another
//! backend on the same store (what another process sees), an object prefix, and
//! what it lacks of GCS's semantics ([`Needs`]). Then run every case with
//! [`run_all`], or one with [`Case::run`]. A case the target lacks something for
//! is skipped with the reason, so no case passes for the wrong reason. Cases
//! assert by panicking, as tests do; run them from a test. [`steps`] holds the
//! backend calls the cases make, for writing cases of your own.
//!
//! ```
//! use std::sync::Arc;
//! use gcslock::backend::memory::MemoryBackend;
//! use gcslock::conformance::{run_all, Needs, Target};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let memory = MemoryBackend::new("my-bucket");
//! let reopen = memory.clone(); // a clone shares the bucket, as another process would
//! let target = Target::new("memory", Arc::new(memory), move || Arc::new(reopen.clone()))
//!     .prefix("conformance/")
//!     .lacking(Needs::SmallListPages, "it answers a list in one call");
//! let report = run_all(&target).await; // panics on the first failing case
//! assert!(report.passed.len() > 20, "{report:?}");
//! # }
//! ```
//!
//! The project runs the same cases on its own targets (GCS emulators, S3 and
//! Azure emulators, the in-memory stores) in `tests/conformance.rs`.

mod cases;
pub mod steps;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::Backend;

/// What a case needs from a backend beyond plain create/read/list, which every
/// backend must do. A [`Target`] has the first three unless it says it lacks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Needs {
    /// Preconditions enforced on metadata updates and deletes (and on the
    /// metageneration of a replacing write), a metageneration that grows on every
    /// update, a full update response. (fake-gcs-server has none of these.)
    StrictConditions,
    /// `delete` removes the object if, and only if, it is at the given version.
    ConditionalDelete,
    /// Any name is stored as given, including a trailing `/` and empty segments.
    AnyNames,
    /// The opposite of `ConditionalDelete`: `delete` is refused (HTTP 501,
    /// `BackendError::Rejected`) and changes nothing, as on a store without a
    /// conditional delete.
    DeleteRefused,
    /// The opposite of `AnyNames`: names the store would keep under another key
    /// (a trailing `/`, empty segments) are refused rather than renamed.
    PathNamesOnly,
    /// The backend was built to list in small pages (two objects a page), so a few
    /// objects exercise paging.
    SmallListPages,
}

impl Needs {
    /// Whether a target has this unless it says otherwise.
    fn by_default(self) -> bool {
        matches!(
            self,
            Self::StrictConditions | Self::ConditionalDelete | Self::AnyNames
        )
    }
}

type Reopen = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;

/// A backend under test, and what the cases may ask of it.
#[derive(Clone)]
pub struct Target {
    label: String,
    backend: Arc<dyn Backend>,
    reopen: Reopen,
    prefix: String,
    /// Needs whose default is overridden: `Some(why)` lacks it, `None` has it.
    declared: BTreeMap<Needs, Option<String>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("label", &self.label)
            .field("backend", &self.backend)
            .field("prefix", &self.prefix)
            .field("declared", &self.declared)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// `backend`, named `label` in messages; `reopen` opens another backend on the
    /// same store that has never seen any object (another process: a backend that
    /// caches versions must start empty).
    pub fn new(
        label: impl Into<String>,
        backend: Arc<dyn Backend>,
        reopen: impl Fn() -> Arc<dyn Backend> + Send + Sync + 'static,
    ) -> Self {
        Self {
            label: label.into(),
            backend,
            reopen: Arc::new(reopen),
            prefix: String::new(),
            declared: BTreeMap::new(),
        }
    }

    /// Every object a case writes is named `PREFIX CASE/...` (default: no prefix).
    /// Give each run its own prefix on a shared bucket.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The backend lacks `need`, for the reason given (printed with each skip).
    pub fn lacking(mut self, need: Needs, why: impl Into<String>) -> Self {
        self.declared.insert(need, Some(why.into()));
        self
    }

    /// The backend has `need` (for those a target lacks by default).
    pub fn having(mut self, need: Needs) -> Self {
        self.declared.insert(need, None);
        self
    }

    /// Why the target cannot run a case that needs `need`; `None` if it can.
    pub fn lacks(&self, need: Needs) -> Option<String> {
        match self.declared.get(&need) {
            Some(why) => why.clone(),
            None if need.by_default() => None,
            None => Some(format!("it does not declare {need:?} (Target::having)")),
        }
    }

    /// The target's name in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The backend under test.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Another backend on the same store, as another process would open it.
    pub fn fresh(&self) -> Arc<dyn Backend> {
        (self.reopen)()
    }

    /// The prefix + `suffix`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn for_case(&self, case: &str) -> Self {
        Self {
            prefix: format!("{}{case}/", self.prefix),
            ..self.clone()
        }
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    name: &'static str,
    needs: &'static [Needs],
    run: for<'a> fn(&'a Target) -> CaseFuture<'a>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

/// How a case ended, unless it panicked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It ran and every assertion held.
    Passed,
    /// It did not run: the target lacks something it needs, for this reason.
    Skipped(String),
}

impl Case {
    /// The case's name, such as `case_concurrent_creates_have_one_winner`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the case needs beyond plain create/read/list.
    pub fn needs(&self) -> &'static [Needs] {
        self.needs
    }

    /// Runs the case on `target` under `TARGET-PREFIX CASE-NAME/`, or skips it
    /// with the reason. Panics if the backend fails it.
    pub async fn run(&self, target: &Target) -> Outcome {
        if let Some(why) = self.needs.iter().find_map(|need| target.lacks(*need)) {
            return Outcome::Skipped(why);
        }
        (self.run)(&target.for_case(self.name)).await;
        Outcome::Passed
    }
}

/// The cases run and skipped by [`run_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The names of the cases that passed.
    pub passed: Vec<&'static str>,
    /// The cases skipped, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

/// Runs every case on `target`, one after another. Panics on the first failure.
pub async fn run_all(target: &Target) -> Report {
    let mut report = Report::default();
    for case in cases() {
        match case.run(target).await {
            Outcome::Passed => report.passed.push(case.name),
            Outcome::Skipped(why) => report.skipped.push((case.name, why)),
        }
    }
    report
}

/// Every case of the suite.
pub fn cases() -> &'static [Case] {
    CASES
}

/// The case named `name`, if there is one.
pub fn case(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|case| case.name == name)
}

macro_rules! cases {
    ($($case:ident => [$($need:ident),*],)*) => {
        const CASES: &[Case] = &[$(Case {
            name: stringify!($case),
            needs: &[$(Needs::$need),*],
            run: |target| Box::pin(cases::$case(target)),
        },)*];
    };
}

cases! {
    case_create_if_absent_succeeds_once => [],
    case_created_object_has_metadata_and_first_version => [],
    case_empty_metadata_reads_back_empty => [],
    case_read_of_missing_object_is_none => [],
    case_responses_carry_server_time => [],
    case_write_matching_version_replaces_with_new_generation => [],
    case_write_with_stale_generation_fails => [],
    case_write_with_stale_metageneration_fails => [StrictConditions],
    case_update_metadata_merges_and_bumps_metageneration => [StrictConditions],
    case_update_metadata_with_stale_version_fails => [StrictConditions],
    case_update_metadata_of_missing_object_is_not_found => [],
    case_delete_with_matching_version_removes => [ConditionalDelete],
    case_delete_with_stale_version_fails_and_keeps_object => [StrictConditions, ConditionalDelete],
    case_delete_is_refused_and_changes_nothing => [DeleteRefused],
    case_list_returns_prefix_matches_in_name_order => [],
    case_list_follows_pages => [SmallListPages],
    case_names_with_slashes_spaces_and_unicode_round_trip => [],
    case_names_with_empty_segments_round_trip => [AnyNames],
    case_names_with_empty_segments_are_refused => [PathNamesOnly],
    case_objects_of_any_name_are_deleted => [ConditionalDelete, AnyNames],
    case_conditions_hold_for_a_backend_that_never_saw_the_object => [StrictConditions],
    case_concurrent_creates_have_one_winner => [],
    case_concurrent_updates_of_one_version_have_one_winner => [StrictConditions],
    case_foreign_objects_are_reported_and_never_taken => [],
}
