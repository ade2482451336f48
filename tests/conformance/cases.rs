//! The conformance cases that only this project's targets run: object_store's
//! stores measured through the object_store API, a missing bucket (which needs
//! another bucket on the same endpoint and knows fake-gcs-server's answers), and
//! fake-gcs-server's gaps. Every other case is published as `gcslock::conformance`
//! and runs here through that API.

use gcslock::backend::WriteCondition::{DoesNotExist, Matches};
#[cfg(feature = "object-store")]
use gcslock::backend::{Backend as _, ObjectInfo};
use gcslock::backend::{BackendError, Metadata, ObjectVersion};
use gcslock::conformance::steps::{assert_missing, create, metadata, read_existing};

use crate::support::{loud, run_id};
use crate::targets::{Ctx, Needs};

/// What someone else's object carries: metadata that is not a lock record.
#[cfg(feature = "object-store")]
fn foreign_metadata() -> Metadata {
    metadata(&[("owner", "someone")])
}

/// An object gcslock did not write: on object_store a plain put of another body
/// with user metadata; elsewhere (where gcslock uses metadata only) an object whose
/// metadata is not a lock record.
#[cfg(feature = "object-store")]
async fn create_foreign(ctx: &Ctx, name: &str) -> ObjectInfo {
    #[cfg(feature = "object-store")]
    if let Some(backend) = ctx.object_store() {
        use ::object_store::{path::Path, Attribute, Attributes, PutMode, PutOptions};
        let mut attributes = Attributes::new();
        for (key, value) in foreign_metadata() {
            attributes.insert(Attribute::Metadata(key.into()), value.into());
        }
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        backend
            .store()
            .put_opts(&Path::from(name), "not a lock".into(), options)
            .await
            .expect("a plain object");
        return read_existing(&**backend, name).await;
    }
    create(&*ctx.backend, name, &foreign_metadata()).await
}

/// On object_store a metadata update rewrites the whole object: refused for an
/// object gcslock did not write, whose content would be lost.
#[cfg(feature = "object-store")]
pub async fn case_foreign_objects_are_never_rewritten(ctx: &Ctx) {
    use ::object_store::{path::Path, ObjectStoreExt};
    let backend = ctx.object_store().expect("Needs::ObjectStore");
    let name = ctx.name("foreign");
    let info = create_foreign(ctx, &name).await;
    let result = backend
        .update_metadata(&name, info.version, &metadata(&[("x", "1")]))
        .await;
    assert!(
        matches!(result, Err(BackendError::Rejected { .. })),
        "{result:?}"
    );
    let body = backend
        .store()
        .get(&Path::from(name.as_str()))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&body[..], b"not a lock");
    assert_eq!(read_existing(&**backend, &name).await, info, "unchanged");
}

// ---------------------------------------------------------------- the store itself

/// What the store itself enforces, through object_store directly. These hold on any
/// store the backend accepts; the facts that differ between stores are printed (and
/// recorded in emulators/README.md).
#[cfg(feature = "object-store")]
pub async fn case_store_enforces_conditional_puts(ctx: &Ctx) {
    use ::object_store::{path::Path, Error as E, ObjectStoreExt, PutMode, PutOptions};
    let store = ctx.object_store().expect("Needs::ObjectStore").store();
    let path = Path::from(ctx.name("raw").as_str());
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
        matches!(again, Err(E::AlreadyExists { .. })),
        "If-None-Match: * must be enforced: {again:?}"
    );
    // Same (empty) body again, conditioned on the current ETag.
    let same = put(PutMode::Update(first.clone().into()), "")
        .await
        .expect("update");
    // S3: the ETag is the body's MD5, so an identical body keeps it (and a stale
    // ETag of an identical body would still match): why the lock's version lives in
    // the body.
    let same_etag = same.e_tag == first.e_tag;
    let second = put(PutMode::Update(same.clone().into()), "v2")
        .await
        .expect("update");
    let stale = put(PutMode::Update(same.clone().into()), "v3").await;
    assert!(
        matches!(stale, Err(E::Precondition { .. })),
        "If-Match must be enforced: {stale:?}"
    );
    let missing = Path::from(ctx.name("raw-missing").as_str());
    let on_missing = store
        .put_opts(
            &missing,
            "x".into(),
            PutOptions::from(PutMode::Update(second.clone().into())),
        )
        .await;
    assert!(
        matches!(on_missing, Err(E::Precondition { .. } | E::NotFound { .. })),
        "If-Match on a missing object: {on_missing:?}"
    );
    assert!(matches!(
        store.head(&missing).await,
        Err(E::NotFound { .. })
    ));
    loud(&format!(
        "measured on {}: If-None-Match: * enforced; If-Match enforced; rewriting an identical \
         body keeps the ETag: {same_etag}; If-Match on a missing object: {}",
        ctx.label,
        match on_missing {
            Err(E::NotFound { .. }) => "NotFound",
            _ => "Precondition",
        }
    ));
}

// ---------------------------------------------------------------- buckets

/// A bucket that does not exist is reported as such, not as a missing object.
pub async fn case_missing_bucket_is_reported_as_such(ctx: &Ctx) {
    let bucket = format!("gcslock-missing-{}", run_id());
    let b = ctx.other_bucket(&bucket);
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
    if ctx.has(Needs::FakeGcsGaps) {
        loud(&format!(
            "{}: fake-gcs-server answers a bare \"Not Found\" for a missing bucket on \
             GET/PATCH/DELETE of an object, so those report a missing object there",
            ctx.label
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
        return;
    }
    assert!(
        read.as_ref().is_err_and(is_missing_bucket),
        "read: {read:?}"
    );
    assert!(
        update.as_ref().is_err_and(is_missing_bucket),
        "update: {update:?}"
    );
    if ctx.has(Needs::ConditionalDelete) {
        assert!(
            delete.as_ref().is_err_and(is_missing_bucket),
            "delete: {delete:?}"
        );
    } else {
        // Refused before any request, bucket or not (case_delete_is_refused_*).
        assert!(
            matches!(delete, Err(BackendError::Rejected { status: 501, .. })),
            "delete: {delete:?}"
        );
    }
}

// ---------------------------------------------------------------- fake-gcs-server

/// fake-gcs-server 1.54's gaps, as measured (emulators/README.md). If this fails,
/// fake-gcs-server changed: update the README and `Kind::lacks`.
pub async fn case_fake_gcs_server_gaps_are_as_documented(ctx: &Ctx) {
    let b = &*ctx.backend;
    let name = ctx.name("lock");
    let v1 = create(b, &name, &metadata(&[("a", "1")])).await;

    // PATCH applies, but its response has no metageneration.
    let patched = b
        .update_metadata(&name, v1.version, &metadata(&[("b", "2")]))
        .await;
    assert!(
        matches!(&patched, Err(BackendError::InvalidResponse(m)) if m.contains("metageneration")),
        "{patched:?}"
    );
    let after = read_existing(b, &name).await;
    assert_eq!(
        after.metadata,
        metadata(&[("a", "1"), ("b", "2")]),
        "the PATCH was applied"
    );
    assert_eq!(after.version, v1.version, "metageneration did not grow");
    assert_eq!(after.updated, v1.updated, "updated did not move");

    // PATCH ignores both preconditions.
    let wrong = ObjectVersion {
        generation: v1.version.generation + 1,
        metageneration: 7,
    };
    let _ = b
        .update_metadata(&name, wrong, &metadata(&[("c", "3")]))
        .await;
    assert!(
        read_existing(b, &name).await.metadata.contains_key("c"),
        "stale PATCH applied"
    );

    // Uploads honour ifGenerationMatch but ignore ifMetagenerationMatch.
    let stale_meta = ObjectVersion {
        generation: v1.version.generation,
        metageneration: 7,
    };
    let v2 = b
        .write(&name, Matches(stale_meta), &metadata(&[("holder", "b")]))
        .await
        .expect("fake-gcs-server ignores ifMetagenerationMatch on uploads")
        .value;

    // DELETE ignores both preconditions.
    b.delete(&name, wrong)
        .await
        .expect("fake-gcs-server ignores DELETE preconditions");
    assert_missing(b, &name).await;
    assert_ne!(v2.version.generation, wrong.generation);
}
