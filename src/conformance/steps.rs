//! Backend calls that must succeed, for writing conformance cases: the suite's own
//! cases use them, and so can the cases a backend's implementer adds. Each panics
//! with the object's name when the backend fails it, as a test assertion does.

use crate::backend::WriteCondition::DoesNotExist;
use crate::backend::{Backend, Metadata, ObjectInfo};

/// Metadata from `(key, value)` pairs.
pub fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Creates `name` (which must not exist) with `metadata`.
pub async fn create(backend: &dyn Backend, name: &str, metadata: &Metadata) -> ObjectInfo {
    backend
        .write(name, DoesNotExist, metadata)
        .await
        .unwrap_or_else(|e| panic!("create {name:?}: {e}"))
        .value
}

/// Reads `name`, which must exist.
pub async fn read_existing(backend: &dyn Backend, name: &str) -> ObjectInfo {
    backend
        .read(name)
        .await
        .unwrap_or_else(|e| panic!("read {name:?}: {e}"))
        .value
        .unwrap_or_else(|| panic!("{name:?} should exist"))
}

/// Reads `name`, which must not exist.
pub async fn assert_missing(backend: &dyn Backend, name: &str) {
    let found = backend
        .read(name)
        .await
        .unwrap_or_else(|e| panic!("read {name:?}: {e}"));
    assert!(
        found.value.is_none(),
        "{name:?} should not exist: {:?}",
        found.value
    );
}
