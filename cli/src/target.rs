//! Where a lock lives, as the user wrote it: the library's storage URLs
//! (`gs://`, `memory://`, and with the `object-store` feature `s3://` and `az://`),
//! validated by clap's value parsers before any request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::{Backend, OpenOptions, StorageUrl};

use crate::global::GlobalArgs;

/// A lock's address: `SCHEME://BUCKET/OBJECT`.
#[derive(Clone, Debug)]
pub struct LockTarget(StorageUrl);

/// A bucket and a name prefix, for `list`: `SCHEME://BUCKET[/PREFIX]`.
#[derive(Clone, Debug)]
pub struct ListTarget(StorageUrl);

impl LockTarget {
    pub fn parse(value: &str) -> Result<Self, String> {
        StorageUrl::parse_object(value).map(Self).map_err(message)
    }

    /// The object name inside the bucket.
    pub fn object(&self) -> &str {
        self.0.name()
    }

    /// The backend for this lock's bucket.
    pub fn backend(&self, global: &GlobalArgs) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(self.0.open(&open_options(global))?)
    }
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ListTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ListTarget {
    pub fn parse(value: &str) -> Result<Self, String> {
        StorageUrl::parse_prefix(value).map(Self).map_err(message)
    }

    pub fn prefix(&self) -> &str {
        self.0.name()
    }

    pub fn backend(&self, global: &GlobalArgs) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(self.0.open(&open_options(global))?)
    }

    /// The URL of one listed object.
    pub fn object_url(&self, name: &str) -> String {
        self.0.object_url(name)
    }
}

fn open_options(global: &GlobalArgs) -> OpenOptions {
    OpenOptions::default()
        .endpoint(global.endpoint.clone())
        .request_timeout(request_timeout(global))
}

/// No request may outlive the command's storage budget: the library's default
/// request timeout, or the budget if that is shorter.
fn request_timeout(global: &GlobalArgs) -> Duration {
    let default = gcslock::backend::DEFAULT_REQUEST_TIMEOUT;
    global
        .storage_budget
        .filter(|budget| !budget.is_zero())
        .map_or(default, |budget| budget.min(default))
}

/// A library input error as a plain message, for clap's value parsers.
pub fn message(error: gcslock::Error) -> String {
    match error {
        gcslock::Error::InvalidInput(message) => message,
        other => other.to_string(),
    }
}

/// The GCS backend for `bucket`, per `--endpoint` / `STORAGE_EMULATOR_HOST` (fenced
/// objects live on GCS).
pub fn gcs_backend(global: &GlobalArgs, bucket: &str) -> anyhow::Result<GcsBackend> {
    let backend = GcsBackend::builder(bucket)
        .endpoint(global.endpoint.clone())
        .request_timeout(request_timeout(global))
        .build()?;
    tracing::debug!(
        endpoint = backend.endpoint(),
        credentials = backend.sends_credentials(),
        "storage backend"
    );
    Ok(backend)
}
