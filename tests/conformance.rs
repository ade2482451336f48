//! One conformance suite, run against every backend.
//!
//! The cases every backend must pass are published as `gcslock::conformance`
//! (feature `conformance`) and run here through that public API (`mod suite`);
//! `conformance/cases.rs` holds the few that only this project's targets run.
//! Each case is written once, as `case_*(ctx)`; `ctx` holds the backend, a way to
//! open another backend on the same store (another process), and the object prefix. Every case runs on every target below, except
//! where the target lacks something the case [`Needs`]: then it is skipped with the
//! reason printed, so that no case passes for the wrong reason.
//!
//! * `memory::` — [`MemoryBackend`](gcslock::backend::memory::MemoryBackend), always;
//! * `emulator::` — `GcsBackend` against `STORAGE_EMULATOR_HOST`, bucket
//!   `GCSLOCK_TEST_BUCKET` (default `gcslock-test`). Unset: skipped with a message,
//!   but a failure when `CI` is set, so CI never skips it silently.
//!   `GCSLOCK_EMULATOR_KIND=fake-gcs-server` marks that endpoint's known gaps
//!   (emulators/README.md);
//! * `strict::` — `GcsBackend` against `GCSLOCK_STRICT_EMULATOR_HOST`
//!   (emulators/strict-gcs). Unset: skipped with a message, a failure when
//!   `GCSLOCK_REQUIRE_STRICT=1`;
//! * with the `object-store` feature, `ObjectStoreBackend` on object_store's stores
//!   (emulators/README.md): `object_store_memory::` (`memory://`, always), `s3::`
//!   (`GCSLOCK_TEST_S3_URL`, such as `s3://gcslock-test` on moto, configured by the
//!   usual `AWS_*` variables) and `azure::` (`GCSLOCK_TEST_AZURE_URL`, such as
//!   `az://gcslock-test` on Azurite, configured by `AZURE_*`). Unset: skipped with a
//!   message, a failure when `GCSLOCK_REQUIRE_OBJECT_STORE=1`.
//!
//! Object names start with a random per-run prefix (`gcslock-conformance/RUN/CASE/`,
//! `gcslock-object-store-tests/RUN/CASE/` on object_store stores), so runs sharing a
//! bucket do not collide. `wire` tests GCS's HTTP mapping against canned responses.

#[macro_use]
#[path = "conformance/support.rs"]
mod support;

#[path = "conformance/cases.rs"]
mod cases;
#[path = "conformance/targets.rs"]
mod targets;
#[path = "conformance/wire.rs"]
mod wire;

use std::sync::Arc;

use cases::*;
#[cfg(feature = "object-store")]
use support::Store;
use targets::{run_case, run_suite_case, Needs, Which};

/// `MACRO! { [run: RUN;] targets: { TARGET => WHICH, .. } REST }`: the one list
/// of targets, handed to the macro that writes a test module per target.
macro_rules! for_every_target {
    ($macro:ident! { run: $run:path; $($rest:tt)* }) => {
        for_every_target!(@call $macro, { run: $run; }, { $($rest)* });
    };
    ($macro:ident! { $($rest:tt)* }) => {
        for_every_target!(@call $macro, {}, { $($rest)* });
    };
    (@call $macro:ident, { $($before:tt)* }, { $($rest:tt)* }) => {
        $macro! {
            $($before)*
            targets: {
                memory => Which::Memory,
                emulator => Which::Emulator,
                strict => Which::Strict,
                #[cfg(feature = "object-store")]
                object_store_memory => Which::ObjectStore(Store::Memory),
                #[cfg(feature = "object-store")]
                s3 => Which::ObjectStore(Store::S3),
                #[cfg(feature = "object-store")]
                azure => Which::ObjectStore(Store::Azure),
            }
            $($rest)*
        }
    };
}

/// `mod suite { mod TARGET { #[tokio::test] async fn CASE() .. } }`: each case of
/// the published suite on each target, through `gcslock::conformance`'s API.
macro_rules! suite_per_target {
    (targets: { $($(#[$attr:meta])* $target:ident => $which:expr,)* } cases: $cases:tt) => {
        $($(#[$attr])* suite_per_target!(@target $target, $which, $cases);)*

        /// Every case named below.
        const LISTED: &[&str] = &suite_per_target!(@names $cases);
    };
    (@target $target:ident, $which:expr, { $($case:ident,)* }) => {
        mod $target {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                run_suite_case($which, stringify!($case)).await;
            })*
        }
    };
    (@names { $($case:ident,)* }) => { [$(stringify!($case)),*] };
}

mod suite {
    use super::*;

    for_every_target!(suite_per_target! {
        cases: {
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
            case_delete_with_matching_version_removes,
            case_delete_with_stale_version_fails_and_keeps_object,
            case_delete_is_refused_and_changes_nothing,
            case_list_returns_prefix_matches_in_name_order,
            case_list_follows_pages,
            case_names_with_slashes_spaces_and_unicode_round_trip,
            case_names_with_empty_segments_round_trip,
            case_names_with_empty_segments_are_refused,
            case_objects_of_any_name_are_deleted,
            case_conditions_hold_for_a_backend_that_never_saw_the_object,
            case_concurrent_creates_have_one_winner,
            case_concurrent_updates_of_one_version_have_one_winner,
            case_foreign_objects_are_reported_and_never_taken,
        }
    });

    #[test]
    fn every_published_case_runs_on_every_target() {
        let published: Vec<&str> = gcslock::conformance::cases()
            .iter()
            .map(|case| case.name())
            .collect();
        assert_eq!(published, LISTED);
    }

    /// The suite as an implementer runs it: `run_all` on a target of their own.
    #[tokio::test]
    async fn run_all_proves_a_backend_and_reports_its_skips() {
        use gcslock::backend::memory::MemoryBackend;
        use gcslock::conformance::{run_all, Needs, Target};
        let memory = MemoryBackend::new("implementer");
        let reopen = memory.clone();
        let target = Target::new("implementer", Arc::new(memory), move || {
            Arc::new(reopen.clone())
        })
        .prefix("run-all/");
        let report = run_all(&target).await;
        let skipped: Vec<_> = report.skipped.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            skipped,
            [
                "case_delete_is_refused_and_changes_nothing",
                "case_list_follows_pages",
                "case_names_with_empty_segments_are_refused",
            ],
            "{report:?}"
        );
        assert_eq!(report.passed.len() + skipped.len(), LISTED.len());
        let _ = Needs::SmallListPages;
    }
}

// The cases only this project's targets run (tests/conformance/cases.rs).
for_every_target!(per_target! {
    run: run_case;
    cases: {
        #[cfg(feature = "object-store")]
        case_foreign_objects_are_never_rewritten => [Needs::ObjectStore],
        #[cfg(feature = "object-store")]
        case_store_enforces_conditional_puts => [Needs::ObjectStore],
        case_missing_bucket_is_reported_as_such => [Needs::OtherBuckets],
        case_fake_gcs_server_gaps_are_as_documented => [Needs::FakeGcsGaps],
    }
});
