//! Lock records stay valid and options stay sane: a repair rewrites the whole
//! record, an identity cannot pose as a revocation, an absurd storage timeout
//! cannot panic.

#[allow(dead_code)] // each test crate uses its part
mod support;

use std::sync::Arc;
use std::time::Duration;

use gcslock::admin::{BreakOptions, BreakOutcome, LockStatus};
use gcslock::backend::fault::{Fault, FaultError, Operation};
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, Metadata, WriteCondition};
use gcslock::{Error, Lock, LockOptions, Wait};

const NAME: &str = "jobs/review";

fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A repair used to PATCH, which merges metadata: stray once-per keys that made the
/// record invalid stayed, and the "repaired" lock was still not a lock.
#[tokio::test(start_paused = true)]
async fn repair_replaces_the_whole_record_so_stray_keys_cannot_keep_it_invalid() {
    let memory = MemoryBackend::new("b");
    let invalid = metadata(&[
        ("gcslock-format", "1"),
        // Invalid: an unknown state.
        ("gcslock-state", "HELD"),
        ("gcslock-token", "7"),
        ("gcslock-holder", "host:1"),
        ("gcslock-nonce", "abc"),
        ("gcslock-ttl-ms", "30000"),
        ("gcslock-refresh-seq", "0"),
        // A stray key (unreadable done keys are ignored, PROTOCOL.md §10): a merging
        // PATCH would keep it, the full upload of a repair must not.
        ("gcslock-done-slot", "12"),
    ]);
    memory
        .write(NAME, WriteCondition::DoesNotExist, &invalid)
        .await
        .expect("write");
    let lock = Lock::new(Arc::new(memory.clone()), NAME, LockOptions::default()).expect("lock");
    assert!(matches!(
        lock.status().await,
        Ok(LockStatus::NotALock { .. })
    ));

    let outcome = lock
        .break_with(&BreakOptions::new().repair(true))
        .await
        .expect("repair");
    assert!(
        matches!(&outcome, BreakOutcome::Repaired { token, .. } if token.value() == 8),
        "{outcome:?}"
    );
    assert!(
        matches!(lock.status().await, Ok(LockStatus::Released { .. })),
        "the repaired record is valid"
    );
    let stored = memory
        .read(NAME)
        .await
        .expect("read")
        .value
        .expect("object");
    assert!(
        !stored.metadata.contains_key("gcslock-done-slot"),
        "{:?}",
        stored.metadata
    );
    let guard = lock
        .acquire(Wait::No)
        .await
        .expect("acquirable after repair");
    assert_eq!(guard.token().value(), 9, "tokens keep growing");
}

/// A holder named like a revoked lock could never be revoked.
#[test]
fn an_identity_that_looks_revoked_is_refused() {
    let memory = Arc::new(MemoryBackend::new("b"));
    let refused = Lock::new(
        memory,
        NAME,
        LockOptions::default().identity("revoked by ops"),
    );
    assert!(
        matches!(&refused, Err(Error::InvalidInput(why)) if why.contains("revoked by")),
        "{refused:?}"
    );
}

/// `Instant::now() + timeout` used to panic for a timeout too long for the clock.
#[tokio::test(start_paused = true)]
async fn an_absurd_storage_timeout_retries_instead_of_panicking() {
    let (_memory, faulty) = support::faulty_bucket();
    faulty.inject_times(Operation::Read, Fault::Reject(FaultError::Unavailable), 2);
    let lock = Lock::new(
        Arc::new(faulty),
        NAME,
        LockOptions::default().unavailable_timeout(Duration::MAX),
    )
    .expect("lock");
    assert!(matches!(lock.status().await, Ok(LockStatus::Free)));
}

#[cfg(feature = "object-store")]
mod object_store_body {
    use std::sync::Arc;

    use ::object_store::memory::InMemory;
    use ::object_store::path::Path;
    use ::object_store::ObjectStoreExt as _;
    use gcslock::backend::object_store::ObjectStoreBackend;
    use gcslock::backend::{Backend, ObjectVersion};

    use super::{metadata, NAME};

    /// The metageneration in an S3/Azure lock body is stored data: `+ 1` on `i64::MAX`
    /// used to overflow (a panic in debug builds).
    #[tokio::test]
    async fn an_absurd_stored_metageneration_is_an_error_not_an_overflow() {
        let store = Arc::new(InMemory::new());
        let body = serde_json::json!({
            "gcslock-object": 1,
            "generation": 5,
            "metageneration": i64::MAX,
            "metadata": {},
        });
        store
            .put(&Path::from(NAME), body.to_string().into())
            .await
            .expect("put");
        let backend = ObjectStoreBackend::new(store, "memory://review");
        let expected = ObjectVersion {
            generation: 5,
            metageneration: i64::MAX,
        };
        let known = backend
            .read(NAME)
            .await
            .expect("read")
            .value
            .expect("object");
        assert_eq!(known.version, expected);
        let patched = backend
            .update_metadata(NAME, expected, &metadata(&[("k", "v")]))
            .await;
        assert!(patched.is_err(), "{patched:?}");
    }
}

/// The boundary a holder declares goes with its acquiring write and shows in status;
/// one that could print as something else is refused before any request.
#[tokio::test(start_paused = true)]
async fn a_declared_boundary_is_recorded_with_the_acquire_and_shown_by_status() {
    let memory = MemoryBackend::new("b");
    let options = || LockOptions::default().ttl(Duration::from_secs(30));
    let lock =
        Lock::new(Arc::new(memory.clone()), NAME, options().boundary("cgroup")).expect("lock");
    let guard = lock.acquire(Wait::No).await.expect("acquire");
    let first = lock.status().await.expect("status");
    // Refreshes (every 3.75 s) merge their keys into the record and keep it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let refreshed = lock.status().await.expect("status");
    let versions = [first, refreshed].map(|status| match status {
        LockStatus::Held(held) => {
            assert_eq!(held.boundary.as_deref(), Some("cgroup"));
            held.version
        }
        other => panic!("{other:?}"),
    });
    assert_ne!(versions[0], versions[1], "no refresh happened");
    guard.release().await.expect("release");

    let plain = Lock::new(Arc::new(memory.clone()), NAME, options()).expect("lock");
    let guard = plain.acquire(Wait::No).await.expect("acquire");
    match plain.status().await.expect("status") {
        LockStatus::Held(held) => assert_eq!(held.boundary, None, "a full write drops it"),
        other => panic!("{other:?}"),
    }
    guard.release().await.expect("release");

    for bad in ["", "CGroup", "cgroup\u{1b}[2J", "\u{202e}puorgc"] {
        let refused = Lock::new(Arc::new(memory.clone()), NAME, options().boundary(bad));
        assert!(
            matches!(&refused, Err(Error::InvalidInput(why)) if why.contains("boundary")),
            "{bad:?}: {refused:?}"
        );
    }
}
