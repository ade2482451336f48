//! The cases of the conformance suite, each written once as `case_*(target)`.
//! They assert by panicking, as tests do.

use std::future::Future;
use std::sync::Arc;

use crate::backend::WriteCondition::{DoesNotExist, Matches};
use crate::backend::{Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped};
use crate::record::LockRecord;
use crate::{Error, Lock, LockOptions};

use super::steps::{assert_missing, create, metadata, read_existing};
use super::Target;

// ---------------------------------------------------------------- helpers

fn assert_precondition_failed<T: std::fmt::Debug>(result: Result<T, BackendError>, what: &str) {
    assert!(
        matches!(result, Err(BackendError::PreconditionFailed)),
        "{what}: expected PreconditionFailed, got {result:?}"
    );
}

/// Creates `PREFIX/lock` with `holder=a`: the first version most cases start from.
async fn create_lock(ctx: &Target) -> (String, ObjectInfo) {
    let name = ctx.name("lock");
    let v1 = create(&*ctx.backend, &name, &metadata(&[("holder", "a")])).await;
    (name, v1)
}

/// A metadata update that must succeed.
async fn update(
    b: &dyn Backend,
    name: &str,
    expected: ObjectVersion,
    pairs: &[(&str, &str)],
) -> ObjectInfo {
    b.update_metadata(name, expected, &metadata(pairs))
        .await
        .unwrap_or_else(|e| panic!("update {name:?} at {expected}: {e}"))
        .value
}

/// A write replacing `expected` that must succeed.
async fn replace(
    b: &dyn Backend,
    name: &str,
    expected: ObjectVersion,
    pairs: &[(&str, &str)],
) -> ObjectInfo {
    b.write(name, Matches(expected), &metadata(pairs))
        .await
        .unwrap_or_else(|e| panic!("replace {name:?} at {expected}: {e}"))
        .value
}

/// A server clock reading consistent with an object's `updated` from the same server.
/// The objects of a listing, without their clock readings.
fn objects(listed: Vec<Stamped<ObjectInfo>>) -> Vec<ObjectInfo> {
    listed.into_iter().map(|object| object.value).collect()
}

fn assert_server_time(
    what: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    updated: chrono::DateTime<chrono::Utc>,
) {
    let time = time.unwrap_or_else(|| panic!("{what}: no server time (HTTP Date)"));
    // Date has whole seconds, `updated` finer (on object_store's HTTP stores it is
    // Last-Modified rounded up to the next second): allow one second below.
    assert!(
        time + chrono::Duration::seconds(1) >= updated,
        "{what}: {time} before {updated}"
    );
    assert!(
        time - updated < chrono::Duration::minutes(5),
        "{what}: {time} far after {updated}"
    );
}

/// Creates each `PREFIX/suffix` with its name as metadata, checks it reads back as
/// written, and that a list of the prefix returns exactly them, in name order.
async fn round_trip_names(ctx: &Target, suffixes: &[&str]) -> Vec<ObjectInfo> {
    let b = &*ctx.backend;
    let mut created = Vec::new();
    for suffix in suffixes {
        let name = ctx.name(suffix);
        let object = create(b, &name, &metadata(&[("name", &name)])).await;
        assert_eq!(object.name, name);
        assert_eq!(read_existing(b, &name).await, object, "{name:?}");
        created.push(object);
    }
    created.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(objects(b.list(&ctx.prefix).await.expect("list")), created);
    created
}

/// Names every backend stores as given.
const PLAIN_NAMES: [&str; 5] = [
    "dir/sub/object",
    "with space",
    "ünïcødé/✓ 锁",
    "percent%2F+plus",
    "question?hash#amp&eq=",
];

/// Names with empty segments: GCS keeps them; object_store would store them under
/// another key (`x/` as `x`), so that backend refuses them.
const EMPTY_SEGMENT_NAMES: [&str; 2] = ["trailing-slash/", "double//slash"];

// ---------------------------------------------------------------- create and read

pub(super) async fn case_create_if_absent_succeeds_once(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, first) = create_lock(ctx).await;
    let second = b
        .write(&name, DoesNotExist, &metadata(&[("holder", "b")]))
        .await;
    assert_precondition_failed(second, "second create-if-absent");
    let now = read_existing(b, &name).await;
    assert_eq!(
        now.version, first.version,
        "the loser must not replace the object"
    );
    assert_eq!(now.metadata, metadata(&[("holder", "a")]));
}

pub(super) async fn case_created_object_has_metadata_and_first_version(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("lock");
    // Non-ASCII values and '-' in keys: impossible in S3 metadata headers and Azure
    // metadata names, so the object_store backend keeps them in the object body.
    let metadata = metadata(&[
        ("gcslock-holder", "host-1 pid 42"),
        ("gcslock-nonce", "0123456789abcdef"),
        ("gcslock-ttl", "300s"),
        ("quoted", "é ✓ \"x\" & <y>"),
    ]);
    let created = create(b, &name, &metadata).await;
    assert_eq!(created.name, name);
    assert_eq!(created.metadata, metadata);
    assert!(created.version.generation > 0, "{:?}", created.version);
    assert_eq!(
        created.version.metageneration, 1,
        "a new object starts at metageneration 1"
    );
    assert_eq!(
        read_existing(b, &name).await,
        created,
        "read must return what the write returned"
    );
    assert_eq!(
        read_existing(&*ctx.fresh(), &name).await,
        created,
        "another process (a backend that never saw the object) reads the same"
    );
}

pub(super) async fn case_empty_metadata_reads_back_empty(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("bare");
    let created = create(b, &name, &Metadata::new()).await;
    assert!(created.metadata.is_empty(), "{:?}", created.metadata);
    assert!(read_existing(b, &name).await.metadata.is_empty());
}

pub(super) async fn case_read_of_missing_object_is_none(ctx: &Target) {
    assert_missing(&*ctx.backend, &ctx.name("never-written")).await;
    assert_missing(&*ctx.backend, &ctx.name("dir/never-written")).await;
}

pub(super) async fn case_responses_carry_server_time(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("lock");
    let created = b
        .write(&name, DoesNotExist, &metadata(&[("a", "1")]))
        .await
        .expect("create");
    let updated = created.value.updated;
    assert_server_time("write", created.server_time, updated);
    let read = b.read(&name).await.expect("read");
    assert_server_time("read", read.server_time, updated);
    let missing = b.read(&ctx.name("missing")).await.expect("read missing");
    assert_server_time("read of a missing object", missing.server_time, updated);
    let listed = b.list(&ctx.prefix).await.expect("list");
    assert!(!listed.is_empty(), "the object was not listed");
    for object in listed {
        assert_server_time("list", object.server_time, updated);
    }
    // The update's is checked by case_update_metadata_merges_and_bumps_metageneration
    // (fake-gcs-server's update responses are incomplete).
}

// ---------------------------------------------------------------- conditional writes

pub(super) async fn case_write_matching_version_replaces_with_new_generation(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("lock");
    let v1 = create(b, &name, &metadata(&[("holder", "a"), ("only-in-v1", "x")])).await;
    let v2 = replace(b, &name, v1.version, &[("holder", "b")]).await;
    assert_ne!(
        v2.version.generation, v1.version.generation,
        "a replaced object gets a new generation"
    );
    assert_eq!(v2.version.metageneration, 1);
    assert_eq!(
        v2.metadata,
        metadata(&[("holder", "b")]),
        "a write replaces metadata, it does not merge"
    );
    assert_eq!(read_existing(b, &name).await, v2);
}

pub(super) async fn case_write_with_stale_generation_fails(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
    let v2 = replace(b, &name, v1.version, &[("holder", "b")]).await;
    let stale = b
        .write(&name, Matches(v1.version), &metadata(&[("holder", "c")]))
        .await;
    assert_precondition_failed(stale, "write with the replaced generation");
    assert_eq!(read_existing(b, &name).await, v2);

    let missing = ctx.name("missing");
    let result = b
        .write(&missing, Matches(v1.version), &metadata(&[("holder", "c")]))
        .await;
    assert_precondition_failed(result, "write matching a version of a missing object");
    assert_missing(b, &missing).await;
}

pub(super) async fn case_write_with_stale_metageneration_fails(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
    let refreshed = update(b, &name, v1.version, &[("refreshed", "1")]).await;
    let stale = b
        .write(&name, Matches(v1.version), &metadata(&[("holder", "b")]))
        .await;
    assert_precondition_failed(
        stale,
        "write with the generation right but a stale metageneration",
    );
    assert_eq!(read_existing(b, &name).await.version, refreshed.version);
}

// ---------------------------------------------------------------- metadata updates

pub(super) async fn case_update_metadata_merges_and_bumps_metageneration(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("lock");
    let v1 = create(b, &name, &metadata(&[("holder", "a"), ("keep", "k")])).await;
    let up = b
        .update_metadata(
            &name,
            v1.version,
            &metadata(&[("holder", "a2"), ("added", "n")]),
        )
        .await
        .expect("update with the exact version");
    assert_server_time("update", up.server_time, v1.updated);
    let v2 = up.value;
    assert_eq!(
        v2.version.generation, v1.version.generation,
        "an update keeps the generation"
    );
    assert_eq!(v2.version.metageneration, v1.version.metageneration + 1);
    assert_eq!(
        v2.metadata,
        metadata(&[("holder", "a2"), ("keep", "k"), ("added", "n")])
    );
    assert!(
        v2.updated >= v1.updated,
        "updated went back: {} < {}",
        v2.updated,
        v1.updated
    );
    // A leader's term start (`Leader::since`) is its generation's creation.
    assert_eq!(v2.created, v1.created, "an update keeps the creation time");
    assert_eq!(read_existing(b, &name).await, v2);

    let v3 = update(b, &name, v2.version, &[("again", "1")]).await;
    assert_eq!(v3.version.metageneration, v1.version.metageneration + 2);
    assert!(v3.updated >= v2.updated);
}

pub(super) async fn case_update_metadata_with_stale_version_fails(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
    let v2 = update(b, &name, v1.version, &[("n", "1")]).await;
    let stale_meta = b
        .update_metadata(&name, v1.version, &metadata(&[("n", "x")]))
        .await;
    assert_precondition_failed(stale_meta, "update with a stale metageneration");

    let v3 = replace(b, &name, v2.version, &[("holder", "b")]).await;
    // Same metageneration (1), old generation: must not touch the new object.
    let stale_gen = ObjectVersion {
        generation: v1.version.generation,
        metageneration: v3.version.metageneration,
    };
    let result = b
        .update_metadata(&name, stale_gen, &metadata(&[("n", "x")]))
        .await;
    assert_precondition_failed(result, "update with a stale generation");
    assert_eq!(
        read_existing(b, &name).await,
        v3,
        "failed updates must change nothing"
    );
}

pub(super) async fn case_update_metadata_of_missing_object_is_not_found(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("missing");
    let version = ObjectVersion {
        generation: 1,
        metageneration: 1,
    };
    let result = b
        .update_metadata(&name, version, &metadata(&[("n", "1")]))
        .await;
    assert!(
        matches!(result, Err(BackendError::NotFound)),
        "update of a missing object: expected NotFound, got {result:?}"
    );
    assert_missing(b, &name).await;
}

// ---------------------------------------------------------------- deletes

pub(super) async fn case_delete_with_matching_version_removes(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
    b.delete(&name, v1.version)
        .await
        .expect("delete the exact version");
    assert_missing(b, &name).await;

    let again = b.delete(&name, v1.version).await;
    assert!(
        matches!(again, Err(BackendError::NotFound)),
        "delete of a deleted object: expected NotFound, got {again:?}"
    );
    let v2 = create(b, &name, &metadata(&[("holder", "b")])).await;
    assert_ne!(
        v2.version.generation, v1.version.generation,
        "a re-created object gets a new generation"
    );
    assert_eq!(v2.version.metageneration, 1);
}

pub(super) async fn case_delete_with_stale_version_fails_and_keeps_object(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
    let v2 = replace(b, &name, v1.version, &[("holder", "b")]).await;
    assert_precondition_failed(
        b.delete(&name, v1.version).await,
        "delete with a stale generation",
    );
    assert_eq!(read_existing(b, &name).await, v2);

    let v3 = update(b, &name, v2.version, &[("n", "1")]).await;
    assert_precondition_failed(
        b.delete(&name, v2.version).await,
        "delete with a stale metageneration",
    );
    assert_eq!(read_existing(b, &name).await, v3);

    b.delete(&name, v3.version)
        .await
        .expect("delete the current version");
    assert_missing(b, &name).await;
}

/// Where the two cases above cannot run: object_store has no conditional delete, and
/// an unconditional one could remove a lock acquired after the version was read, so
/// `delete` is refused, whatever the version.
pub(super) async fn case_delete_is_refused_and_changes_nothing(ctx: &Target) {
    let b = &*ctx.backend;
    let (name, v1) = create_lock(ctx).await;
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
    assert_eq!(read_existing(b, &name).await, v1);
}

// ---------------------------------------------------------------- lists and names

pub(super) async fn case_list_returns_prefix_matches_in_name_order(ctx: &Target) {
    let b = &*ctx.backend;
    let dir = ctx.name("list/");
    let mut created = Vec::new();
    for suffix in ["b", "a/2", "a/10", "a/1", "c d"] {
        let name = format!("{dir}{suffix}");
        created.push(create(b, &name, &metadata(&[("suffix", suffix)])).await);
    }
    // Siblings that share a shorter prefix must not be listed.
    create(b, &ctx.name("listx"), &Metadata::new()).await;
    create(b, &ctx.name("lis"), &Metadata::new()).await;

    let listed = objects(b.list(&dir).await.expect("list"));
    created.sort_by(|x, y| x.name.cmp(&y.name));
    let names: Vec<_> = listed.iter().map(|o| o.name.as_str()).collect();
    let expected: Vec<_> = created.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(
        listed, created,
        "listed objects must carry their versions and metadata"
    );

    // A prefix that ends inside a name segment (object_store lists whole segments).
    let partial = objects(b.list(&ctx.name("lis")).await.expect("list"));
    let mut partial_names: Vec<_> = partial.iter().map(|o| o.name.clone()).collect();
    partial_names.sort();
    assert_eq!(partial_names.len(), 7, "{partial_names:?}");

    let none = b
        .list(&ctx.name("nothing-here/"))
        .await
        .expect("empty list");
    assert!(none.is_empty(), "{none:?}");
}

pub(super) async fn case_list_follows_pages(ctx: &Target) {
    let b = &*ctx.backend;
    let dir = ctx.name("pages/");
    let mut expected = Vec::new();
    for i in 0..7 {
        expected.push(
            create(
                b,
                &format!("{dir}{i:02}"),
                &metadata(&[("i", &i.to_string())]),
            )
            .await,
        );
    }
    let listed = objects(b.list(&dir).await.expect("list"));
    assert_eq!(listed, expected, "all pages, in name order");
}

pub(super) async fn case_names_with_slashes_spaces_and_unicode_round_trip(ctx: &Target) {
    round_trip_names(ctx, &PLAIN_NAMES).await;
}

pub(super) async fn case_names_with_empty_segments_round_trip(ctx: &Target) {
    round_trip_names(ctx, &EMPTY_SEGMENT_NAMES).await;
}

/// object_store would store `x/` as `x` (and `a//b` as `a/b`): refused rather than
/// renamed, so two lock names never share one object.
pub(super) async fn case_names_with_empty_segments_are_refused(ctx: &Target) {
    for suffix in EMPTY_SEGMENT_NAMES {
        let name = ctx.name(suffix);
        let result = ctx
            .backend
            .write(&name, DoesNotExist, &Metadata::new())
            .await;
        assert!(
            matches!(&result, Err(BackendError::Rejected { status: 400, .. })),
            "{name:?}: {result:?}"
        );
    }
}

/// Deletes address objects by the same encoded name as reads and writes.
pub(super) async fn case_objects_of_any_name_are_deleted(ctx: &Target) {
    let b = &*ctx.backend;
    let names: Vec<&str> = PLAIN_NAMES.into_iter().chain(EMPTY_SEGMENT_NAMES).collect();
    for object in round_trip_names(ctx, &names).await {
        b.delete(&object.name, object.version)
            .await
            .unwrap_or_else(|e| panic!("delete {:?}: {e}", object.name));
        assert_missing(b, &object.name).await;
    }
}

// ---------------------------------------------------------------- other processes, races

/// Every condition is enforced by the store, not by this process's state: a second
/// backend that never saw the object (another process) gets the same answers.
pub(super) async fn case_conditions_hold_for_a_backend_that_never_saw_the_object(ctx: &Target) {
    let (a, other) = (&*ctx.backend, ctx.fresh());
    let (name, v1) = create_lock(ctx).await;
    // `other` conditions on v1 without ever having read it.
    let v2 = other
        .update_metadata(&name, v1.version, &metadata(&[("by", "other")]))
        .await
        .expect("update through a backend that never saw the object")
        .value;
    // `a` last saw v1 (object_store: v1's ETag is cached, so its If-Match carries
    // it): the store refuses.
    assert_precondition_failed(
        a.update_metadata(&name, v1.version, &metadata(&[("by", "a")]))
            .await,
        "update with a stale version this backend saw",
    );
    assert_precondition_failed(
        a.write(&name, Matches(v1.version), &metadata(&[("holder", "a2")]))
            .await,
        "write with a stale version this backend saw",
    );
    assert_eq!(read_existing(a, &name).await, v2);
    // Both now know v2; a takeover through a third backend wins, and the others lose.
    let third = ctx.fresh();
    let v3 = replace(&*third, &name, v2.version, &[("holder", "c")]).await;
    assert_precondition_failed(
        other
            .update_metadata(&name, v2.version, &metadata(&[("x", "1")]))
            .await,
        "refresh of a replaced version",
    );
    assert_eq!(read_existing(&*other, &name).await, v3);
}

/// Runs `attempt(backend, i)` for i in 0..8 at once, each through a backend of its
/// own (8 processes), and returns the winners. Each loser must fail with an error
/// that `lost` accepts.
async fn race<F, Fut>(ctx: &Target, lost: fn(&BackendError) -> bool, attempt: F) -> Vec<ObjectInfo>
where
    F: Fn(Arc<dyn Backend>, usize) -> Fut,
    Fut: Future<Output = Result<Stamped<ObjectInfo>, BackendError>> + Send + 'static,
{
    let attempts: Vec<_> = (0..8)
        .map(|i| tokio::spawn(attempt(ctx.fresh(), i)))
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(written) => winners.push(written.value),
            Err(error) if lost(&error) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    winners
}

pub(super) async fn case_concurrent_creates_have_one_winner(ctx: &Target) {
    let name = ctx.name("lock");
    let winners = race(
        ctx,
        |error| matches!(error, BackendError::PreconditionFailed),
        |backend, i| {
            let name = name.clone();
            async move {
                backend
                    .write(
                        &name,
                        DoesNotExist,
                        &metadata(&[("holder", &i.to_string())]),
                    )
                    .await
            }
        },
    )
    .await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(read_existing(&*ctx.backend, &name).await, winners[0]);
}

pub(super) async fn case_concurrent_updates_of_one_version_have_one_winner(ctx: &Target) {
    let (name, v1) = create_lock(ctx).await;
    let winners = race(
        ctx,
        |error| {
            matches!(
                error,
                BackendError::PreconditionFailed
                    // S3's answer while another conditional write of the key is in
                    // flight; nothing was applied (the final check below proves it).
                    | BackendError::Server { status: 409, .. }
            )
        },
        |backend, i| {
            let name = name.clone();
            async move {
                backend
                    .update_metadata(&name, v1.version, &metadata(&[("refresh", &i.to_string())]))
                    .await
            }
        },
    )
    .await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    let now = read_existing(&*ctx.backend, &name).await;
    assert_eq!(now, winners[0]);
    assert_eq!(now.version.metageneration, 2);
}

// ---------------------------------------------------------------- foreign objects

/// What someone else's object carries: metadata that is not a lock record.
fn foreign_metadata() -> Metadata {
    metadata(&[("owner", "someone")])
}

/// An object gcslock did not write: metadata that is not a lock record.
async fn create_foreign(ctx: &Target, name: &str) -> ObjectInfo {
    create(&*ctx.backend, name, &foreign_metadata()).await
}

pub(super) async fn case_foreign_objects_are_reported_and_never_taken(ctx: &Target) {
    let b = &*ctx.backend;
    let name = ctx.name("foreign");
    let info = create_foreign(ctx, &name).await;
    assert!(info.version.generation > 0);
    assert_eq!(info.metadata, foreign_metadata());
    assert_eq!(read_existing(b, &name).await, info);
    assert!(
        LockRecord::from_metadata(&info.metadata).is_err(),
        "{info:?}"
    );
    // The lock never overwrites it (Lock refuses NotALock objects).
    let lock = Lock::new(ctx.backend.clone(), &name, LockOptions::default()).expect("lock");
    let result = lock.acquire(crate::Wait::No).await;
    assert!(matches!(result, Err(Error::NotALock { .. })), "{result:?}");
    assert_eq!(read_existing(b, &name).await, info, "unchanged");
}
