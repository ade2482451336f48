//! Where a lock lives: `gs://` through the GCS backend, or (with the `object-store`
//! feature) `s3://`, `az://` and `memory://` through object_store.

use std::fmt;
use std::sync::Arc;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::Backend;
use gcslock::{LockUrl, PrefixUrl};

use crate::global::GlobalArgs;
use crate::REQUEST_TIMEOUT;

/// A lock's address as the user wrote it, validated before any request.
#[derive(Clone, Debug)]
pub enum LockTarget {
    Gcs(LockUrl),
    #[cfg(feature = "object-store")]
    ObjectStore {
        url: String,
        key: String,
    },
}

/// A bucket and a name prefix, for `list`.
#[derive(Clone, Debug)]
pub enum ListTarget {
    Gcs(PrefixUrl),
    #[cfg(feature = "object-store")]
    ObjectStore {
        url: String,
        prefix: String,
    },
}

impl LockTarget {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("gs://") || !value.contains("://") {
            return value.parse().map(Self::Gcs).map_err(message);
        }
        #[cfg(feature = "object-store")]
        {
            let key = object_store_key(value)?;
            if key.is_empty() {
                return Err(format!(
                    "{value:?} names no object: expected SCHEME://BUCKET/OBJECT"
                ));
            }
            gcslock::validate_object_name(&key).map_err(message)?;
            Ok(Self::ObjectStore {
                url: value.to_owned(),
                key,
            })
        }
        #[cfg(not(feature = "object-store"))]
        Err(unsupported(value))
    }

    /// The object name inside the bucket.
    pub fn object(&self) -> &str {
        match self {
            Self::Gcs(url) => url.object(),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { key, .. } => key,
        }
    }

    /// The backend for this lock's bucket.
    pub fn backend(&self, global: &GlobalArgs) -> anyhow::Result<Arc<dyn Backend>> {
        match self {
            Self::Gcs(url) => Ok(Arc::new(gcs_backend(global, url.bucket())?)),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { url, .. } => object_store_backend(url),
        }
    }
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gcs(url) => url.fmt(f),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { url, .. } => f.write_str(url),
        }
    }
}

impl ListTarget {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("gs://") || !value.contains("://") {
            return value.parse().map(Self::Gcs).map_err(message);
        }
        #[cfg(feature = "object-store")]
        {
            let prefix = object_store_key(value)?;
            Ok(Self::ObjectStore {
                url: value.to_owned(),
                prefix,
            })
        }
        #[cfg(not(feature = "object-store"))]
        Err(unsupported(value))
    }

    pub fn prefix(&self) -> &str {
        match self {
            Self::Gcs(url) => &url.prefix,
            #[cfg(feature = "object-store")]
            Self::ObjectStore { prefix, .. } => prefix,
        }
    }

    pub fn backend(&self, global: &GlobalArgs) -> anyhow::Result<Arc<dyn Backend>> {
        match self {
            Self::Gcs(url) => Ok(Arc::new(gcs_backend(global, &url.bucket)?)),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { url, .. } => object_store_backend(url),
        }
    }

    /// The URL of one listed object.
    pub fn object_url(&self, name: &str) -> String {
        match self {
            Self::Gcs(url) => format!("gs://{}/{name}", url.bucket),
            #[cfg(feature = "object-store")]
            Self::ObjectStore { url, prefix } => {
                let base = url.strip_suffix(prefix.as_str()).unwrap_or(url);
                format!("{}/{name}", base.trim_end_matches('/'))
            }
        }
    }
}

/// A library input error as a plain message, for clap's value parsers.
pub fn message(error: gcslock::Error) -> String {
    match error {
        gcslock::Error::InvalidInput(message) => message,
        other => other.to_string(),
    }
}

/// The key in an object_store URL. Parsing builds no client and sends nothing.
#[cfg(feature = "object-store")]
fn object_store_key(value: &str) -> Result<String, String> {
    let scheme = value.split("://").next().unwrap_or_default();
    if !matches!(scheme, "s3" | "s3a" | "az" | "azure" | "memory") {
        return Err(format!(
            "unsupported scheme {scheme:?} in {value:?}: expected gs://, s3://, az:// or memory://"
        ));
    }
    gcslock::backend::object_store::ObjectStoreBackend::from_url(value)
        .map(|(_, key)| key)
        .map_err(message)
}

#[cfg(not(feature = "object-store"))]
fn unsupported(value: &str) -> String {
    let scheme = value.split("://").next().unwrap_or_default();
    match scheme {
        "s3" | "s3a" | "az" | "azure" | "memory" => format!(
            "{scheme}:// locks need gcslock built with the `object-store` feature \
             (cargo install gcslock --features object-store)"
        ),
        _ => format!("unsupported scheme {scheme:?} in {value:?}: expected gs://BUCKET/OBJECT"),
    }
}

/// The GCS backend for `bucket`, per `--endpoint` / `STORAGE_EMULATOR_HOST`.
pub fn gcs_backend(global: &GlobalArgs, bucket: &str) -> anyhow::Result<GcsBackend> {
    let backend = GcsBackend::builder(bucket)
        .endpoint(global.endpoint.clone())
        .request_timeout(REQUEST_TIMEOUT)
        .build()?;
    tracing::debug!(
        endpoint = backend.endpoint(),
        credentials = backend.sends_credentials(),
        "storage backend"
    );
    Ok(backend)
}

#[cfg(feature = "object-store")]
fn object_store_backend(url: &str) -> anyhow::Result<Arc<dyn Backend>> {
    let (backend, _) = gcslock::backend::object_store::ObjectStoreBackend::from_url_with_timeout(
        url,
        REQUEST_TIMEOUT,
    )?;
    Ok(Arc::new(backend))
}
