//! Storage URLs (`gs://`, `s3://`, `az://`, `memory://`) and the one place that
//! turns them into backends: [`open`] for a lock, [`open_prefix`] for a listing.
//!
//! The scheme list lives here and nowhere else. Parsing checks the bucket and
//! object names by the store's rules and sends nothing; names are taken literally
//! (a `%` is a percent sign, not an escape).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::gcs::GcsBackend;
use super::memory::MemoryBackend;
use super::Backend;
use crate::location::{check_object_characters, validate_bucket_name, validate_object_name};
use crate::Error;

/// The stores a URL can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `gs://BUCKET/OBJECT`: Google Cloud Storage (or an emulator).
    Gcs,
    /// `s3://BUCKET/KEY` (or `s3a://`): S3 and compatible stores, through
    /// object_store (feature `object-store`).
    S3,
    /// `az://CONTAINER/BLOB` (or `azure://`): Azure Blob Storage, through
    /// object_store (feature `object-store`).
    Azure,
    /// `memory://NAME/OBJECT`: a [`MemoryBackend`] shared by every URL of the same
    /// NAME in this process (examples, tests).
    Memory,
}

/// Every accepted scheme spelling, canonical spelling first.
const SCHEMES: [(&str, Scheme); 6] = [
    ("gs", Scheme::Gcs),
    ("s3", Scheme::S3),
    ("az", Scheme::Azure),
    ("memory", Scheme::Memory),
    ("s3a", Scheme::S3),
    ("azure", Scheme::Azure),
];

const EXPECTED: &str = "expected gs://, s3://, az:// or memory://";

impl Scheme {
    /// The canonical spelling, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gcs => "gs",
            Self::S3 => "s3",
            Self::Azure => "az",
            Self::Memory => "memory",
        }
    }

    fn parse(scheme: &str, url: &str) -> Result<Self, Error> {
        if let Some((_, scheme)) = SCHEMES.iter().find(|(name, _)| *name == scheme) {
            return Ok(*scheme);
        }
        Err(Error::InvalidInput(if scheme == "file" {
            format!(
                "{url:?}: local files cannot hold a gcslock lock: object_store's \
                 LocalFileSystem has no conditional update (PutMode::Update), which the \
                 lease protocol needs"
            )
        } else {
            format!("unsupported scheme {scheme:?} in {url:?}: {EXPECTED}")
        }))
    }

    /// Whether this build can open the scheme.
    pub fn is_available(self) -> bool {
        match self {
            Self::Gcs | Self::Memory => true,
            Self::S3 | Self::Azure => cfg!(feature = "object-store"),
        }
    }

    fn check_bucket(self, bucket: &str) -> Result<(), Error> {
        match self {
            Self::Gcs => validate_bucket_name(bucket),
            Self::S3 => validate_s3_bucket(bucket),
            Self::Azure => validate_azure_container(bucket),
            Self::Memory => validate_memory_name(bucket),
        }
    }

    /// The store's own key rules, beyond the object-name rules all schemes share.
    fn check_key(self, key: &str) -> Result<(), Error> {
        match self {
            #[cfg(feature = "object-store")]
            Self::S3 | Self::Azure => super::object_store::check_key(key),
            _ => {
                let _ = key;
                Ok(())
            }
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed storage URL: a store, a bucket in it and an object name (or, for a
/// listing, a name prefix, possibly empty). Building one sends nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageUrl {
    scheme: Scheme,
    bucket: String,
    name: String,
}

impl StorageUrl {
    /// `SCHEME://BUCKET/OBJECT`, for a lock or a fenced object.
    pub fn parse_object(url: &str) -> Result<Self, Error> {
        let parsed = Self::parse_any(url)?;
        if parsed.name.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{url:?} names no object: expected {}://BUCKET/OBJECT",
                parsed.scheme
            )));
        }
        validate_object_name(&parsed.name)?;
        parsed.scheme.check_key(&parsed.name)?;
        Ok(parsed)
    }

    /// `SCHEME://BUCKET` or `SCHEME://BUCKET/PREFIX`, for a listing.
    pub fn parse_prefix(url: &str) -> Result<Self, Error> {
        let parsed = Self::parse_any(url)?;
        if !parsed.name.is_empty() {
            check_object_characters(&parsed.name)?;
        }
        Ok(parsed)
    }

    fn parse_any(url: &str) -> Result<Self, Error> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::InvalidInput(format!(
                "{url:?} is not a storage URL: not a gs:// URL, nor s3://, az:// or \
                 memory://; expected SCHEME://BUCKET/OBJECT"
            )));
        };
        let scheme = Scheme::parse(scheme, url)?;
        if !scheme.is_available() {
            return Err(Error::InvalidInput(format!(
                "{scheme}:// locks need gcslock built with the `object-store` feature \
                 (the command, from a checkout: cargo install --locked --path cli \
                 --features object-store; the library: gcslock = {{ features = \
                 [\"object-store\"] }})"
            )));
        }
        let (bucket, name) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{url:?} names no bucket: the bucket name is empty"
            )));
        }
        scheme.check_bucket(bucket)?;
        Ok(Self {
            scheme,
            bucket: bucket.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Which store the URL names.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The bucket (or container) name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object name, or the prefix of a listing (possibly empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of another object in the same bucket, such as one that was listed.
    pub fn object_url(&self, name: &str) -> String {
        format!("{}://{}/{name}", self.scheme, self.bucket)
    }

    /// The backend for this URL's bucket. No request is sent; credentials come
    /// from the environment (see [`open`]).
    pub fn open(&self, options: &OpenOptions) -> Result<Arc<dyn Backend>, Error> {
        match self.scheme {
            Scheme::Gcs => {
                let mut builder =
                    GcsBackend::builder(&self.bucket).endpoint(options.endpoint.clone());
                if let Some(timeout) = options.request_timeout {
                    builder = builder.request_timeout(timeout);
                }
                let backend = builder.build()?;
                tracing::debug!(
                    endpoint = backend.endpoint(),
                    credentials = backend.sends_credentials(),
                    "storage backend"
                );
                Ok(Arc::new(backend))
            }
            Scheme::Memory => Ok(Arc::new(shared_memory_backend(&self.bucket))),
            #[cfg(feature = "object-store")]
            Scheme::S3 | Scheme::Azure => {
                let timeout = options
                    .request_timeout
                    .unwrap_or(super::object_store::DEFAULT_REQUEST_TIMEOUT);
                let backend = super::object_store::ObjectStoreBackend::for_bucket(
                    self.scheme,
                    &self.bucket,
                    timeout,
                )?;
                Ok(Arc::new(backend))
            }
            #[cfg(not(feature = "object-store"))]
            Scheme::S3 | Scheme::Azure => Err(Error::InvalidInput(format!(
                "{}:// needs the `object-store` feature",
                self.scheme
            ))),
        }
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.bucket)?;
        if !self.name.is_empty() {
            write!(f, "/{}", self.name)?;
        }
        Ok(())
    }
}

/// How [`open`] builds a backend.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    endpoint: Option<String>,
    request_timeout: Option<Duration>,
}

impl OpenOptions {
    /// For `gs://` only: the endpoint to use instead of `STORAGE_EMULATOR_HOST` or
    /// production (see [`super::gcs::GcsBackendBuilder::endpoint`]). Other stores
    /// read their endpoints from their own variables (`AWS_ENDPOINT_URL`, ...).
    pub fn endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The longest one request may take (default: the backend's own, 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

/// The backend and object name of a lock URL: `gs://BUCKET/OBJECT` (GCS; endpoint
/// per [`OpenOptions::endpoint`], else `STORAGE_EMULATOR_HOST`, else production with
/// Application Default Credentials), `s3://BUCKET/KEY` and `az://CONTAINER/BLOB`
/// (feature `object-store`; configured from the environment as
/// `object_store::ObjectStoreBackend::for_bucket` describes), or
/// `memory://NAME/OBJECT` (a process-local [`MemoryBackend`], one per NAME). Sends
/// nothing. The one way from a URL to a backend: [`StorageUrl::open`] and
/// [`open_prefix`] end here too, so a URL means the same store through each.
///
/// ```
/// use gcslock::backend::{open, OpenOptions};
/// let (backend, name) = open("memory://demo/jobs/nightly.lock", &OpenOptions::default())?;
/// assert_eq!((backend.describe().as_str(), name.as_str()), ("memory://demo", "jobs/nightly.lock"));
/// # Ok::<(), gcslock::Error>(())
/// ```
pub fn open(url: &str, options: &OpenOptions) -> Result<(Arc<dyn Backend>, String), Error> {
    let url = StorageUrl::parse_object(url)?;
    Ok((url.open(options)?, url.name))
}

/// [`open`] for a listing: `SCHEME://BUCKET` or `SCHEME://BUCKET/PREFIX`; returns
/// the backend and the prefix (possibly empty).
pub fn open_prefix(url: &str, options: &OpenOptions) -> Result<(Arc<dyn Backend>, String), Error> {
    let url = StorageUrl::parse_prefix(url)?;
    Ok((url.open(options)?, url.name))
}

/// The process-wide `memory://NAME` bucket.
fn shared_memory_backend(name: &str) -> MemoryBackend {
    static BUCKETS: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
    BUCKETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(name.to_owned())
        .or_insert_with(|| MemoryBackend::new(name))
        .clone()
}

fn validate_memory_name(name: &str) -> Result<(), Error> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid memory:// name {name:?}: 1 to 63 letters, digits, '-', '_' and '.'"
        )))
    }
}

fn validate_s3_bucket(bucket: &str) -> Result<(), Error> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid S3 bucket name {bucket:?}: 3 to 63 lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        )))
    }
}

fn validate_azure_container(container: &str) -> Result<(), Error> {
    let valid = (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && container.starts_with(|c: char| c.is_ascii_alphanumeric())
        && container.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !container.contains("--");
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid Azure container name {container:?}: 3 to 63 lowercase letters, digits and \
             single '-', starting and ending with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_urls_share_one_bucket_per_name() {
        let options = OpenOptions::default();
        let (a, name) = open("memory://shared-unit/jobs/a", &options).expect("open");
        assert_eq!(name, "jobs/a");
        assert_eq!(a.describe(), "memory://shared-unit");
        let (b, prefix) = open_prefix("memory://shared-unit/jobs/", &options).expect("prefix");
        assert_eq!(prefix, "jobs/");
        a.write(
            &name,
            super::super::WriteCondition::DoesNotExist,
            &Default::default(),
        )
        .await
        .expect("write");
        let listed = b.list(&prefix).await.expect("list");
        assert_eq!(listed.len(), 1);
        let parsed = StorageUrl::parse_object("memory://shared-unit/jobs/a").expect("parse");
        let c = parsed.open(&options).expect("open");
        assert!(c.read(&name).await.expect("read").value.is_some());
        let (other, _) = open_prefix("memory://other-unit", &options).expect("other");
        assert!(other.list("").await.expect("list").is_empty());
    }

    #[test]
    fn urls_parse_into_scheme_bucket_and_name() {
        let url = StorageUrl::parse_object("gs://my-bucket/a/b%20c").expect("gs");
        assert_eq!(
            (url.scheme(), url.bucket(), url.name()),
            (Scheme::Gcs, "my-bucket", "a/b%20c")
        );
        assert_eq!(url.to_string(), "gs://my-bucket/a/b%20c");
        assert_eq!(url.object_url("x"), "gs://my-bucket/x");
        let prefix = StorageUrl::parse_prefix("memory://m").expect("bare bucket");
        assert_eq!(
            (prefix.name(), prefix.to_string().as_str()),
            ("", "memory://m")
        );
        let gcs = StorageUrl::parse_object("gs://bkt/o")
            .expect("gs")
            .open(&OpenOptions::default().endpoint(Some("127.0.0.1:1".into())))
            .expect("open");
        assert_eq!(gcs.describe(), "gs://bkt");
    }

    #[test]
    fn bad_urls_are_invalid_input_with_a_reason() {
        let long_bucket = format!("gs://{}/o", "b".repeat(300));
        let long_name = format!("gs://bkt/{}", "n".repeat(2000));
        let long_scheme = format!("{}://b/o", "x".repeat(5000));
        for (url, why) in [
            ("", "not a storage URL"),
            ("bucket/object", "not a gs:// URL"),
            ("gs://", "names no bucket"),
            ("gs:///x", "names no bucket"),
            ("gs://bkt", "names no object"),
            ("gs://bkt/", "names no object"),
            ("gs://bkt/a\u{0}b", "control characters"),
            ("gs://bkt/a\nb", "control characters"),
            ("gs://bk\tt/o", "invalid bucket name"),
            ("gs://Bkt/o", "lowercase"),
            ("gs://bkt/..", "not allowed"),
            ("gs://%41bc/o", "invalid bucket name"),
            (long_bucket.as_str(), "characters long"),
            (long_name.as_str(), "at most 1024"),
            (long_scheme.as_str(), "unsupported scheme"),
            ("ftp://x/y", "unsupported scheme"),
            ("GS://bkt/o", "unsupported scheme"),
            ("file:///tmp/lock", "LocalFileSystem"),
            ("memory://", "names no bucket"),
            ("memory://a b/o", "invalid memory:// name"),
            ("memory://m/", "names no object"),
            ("://b/o", "unsupported scheme"),
        ] {
            let error = StorageUrl::parse_object(url).expect_err(url);
            assert!(
                matches!(error, Error::InvalidInput(_)),
                "{url:?}: {error:?}"
            );
            let text = error.to_string();
            assert!(text.contains(why), "{url:?}: {text}");
            assert!(open(url, &OpenOptions::default()).is_err(), "{url:?}");
        }
        for url in ["gs://", "gs://bkt/a\nb", "ftp://x", "s3://"] {
            assert!(StorageUrl::parse_prefix(url).is_err(), "{url:?}");
        }
    }

    #[cfg(feature = "object-store")]
    #[test]
    fn object_store_schemes_check_their_names() {
        for (url, why) in [
            ("s3:///key", "names no bucket"),
            ("s3://Bad_Bucket/key", "invalid S3 bucket"),
            ("az://a--b/key", "invalid Azure container"),
            ("s3://bucket/a//b", "empty path segment"),
        ] {
            let error = StorageUrl::parse_object(url).expect_err(url).to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
        let url = StorageUrl::parse_object("s3a://bucket/k").expect("s3a");
        assert_eq!(url.to_string(), "s3://bucket/k");
        let url = StorageUrl::parse_object("azure://container/k").expect("azure");
        assert_eq!(url.scheme(), Scheme::Azure);
    }

    #[cfg(not(feature = "object-store"))]
    #[test]
    fn object_store_schemes_need_the_feature() {
        let error = StorageUrl::parse_object("s3://bucket/k")
            .expect_err("s3")
            .to_string();
        assert!(error.contains("object-store"), "{error}");
    }
}
