//! S3, Azure Blob and in-memory stores through the [`object_store`]
//! crate (cargo feature `object-store`).
//!
//! The lease protocol conditions every write on an [`ObjectVersion`] (GCS's
//! generation and metageneration). These stores have neither; they have an ETag and
//! conditional puts (`If-None-Match: *`, `If-Match: ETAG`). The mapping:
//!
//! * **The object body is the lock.** Each object gcslock writes is a small JSON
//!   document, `{"gcslock-object":1,"generation":G,"metageneration":M,"metadata":{..}}`.
//!   The version lives in the body, not in user metadata, because S3's ETag is the
//!   MD5 of the body: with an empty body every version of the object would have the
//!   same ETag and `If-Match` could not tell them apart (measured on moto, see
//!   `emulators/README.md`). The body also carries the metadata, which avoids S3's
//!   ASCII-only metadata headers and Azure's rule that metadata names be C#
//!   identifiers (no `-`, while every gcslock key has one).
//! * `write(DoesNotExist)` is `PutMode::Create` (`If-None-Match: *`); the new object
//!   gets a random positive generation and metageneration 1.
//! * `write(Matches(v))` and `update_metadata(v, ..)` are `PutMode::Update` with the
//!   ETag of the body that carries `v`. That ETag comes from a small cache filled by
//!   this backend's own reads and writes; on a miss the object is read first and its
//!   version compared with `v`. Either way the put is atomic: `If-Match` fails if the
//!   object changed after it was read. A refresh rewrites the body with the same
//!   generation and metageneration + 1 (these stores have no metadata-only update).
//! * `delete` is refused: `object_store` has no conditional delete, and an
//!   unconditional one could remove a lock someone else just acquired. The lock never
//!   deletes (release and break write a tombstone), so nothing needs it.
//! * `list` lists the names, then reads each object (admin commands only).
//! * Server time: the HTTP `Date` header of the store's own response, captured by
//!   an [`HttpConnector`] wrapped around
//!   `object_store`'s reqwest client, and compared only with the same store's
//!   `Last-Modified`. HTTP dates have whole seconds, so `updated` is reported as
//!   `Last-Modified + 1s` (an upper bound: staleness is never judged early). The
//!   in-memory store lives in this process, so its clock is this process's clock.
//!   Where no `Date` is available, `server_time` is `None` and waiters fall back to
//!   "version unchanged for a full TTL on the waiter's monotonic clock".
//!
//! Objects that gcslock did not write (any other body) are reported with their user
//! metadata and a version derived from their ETag, so they read as "not a lock";
//! `update_metadata` refuses to rewrite them.
//!
//! Stores that cannot do conditional updates are refused instead of used unsafely:
//! `file://` (`LocalFileSystem` has no `PutMode::Update`) at construction, and a
//! store that answers a conditional put with "not implemented" on first use.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use ::object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use ::object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use ::object_store::memory::InMemory;
use ::object_store::path::Path;
use ::object_store::{
    Attribute, AttributeValue, Attributes, ClientConfigKey, ClientOptions, GetOptions, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::address::Scheme;
use super::{Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped, WriteCondition};
use crate::Error;

/// The longest one storage request may take unless the URL's store is configured
/// otherwise (`AWS_TIMEOUT`-style options are not read; see [`ObjectStoreBackend::for_bucket`]).
pub use super::DEFAULT_REQUEST_TIMEOUT;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Marker and version of the JSON body format.
const BODY_FORMAT: u32 = 1;
/// Error bodies longer than this are cut in messages.
const MAX_MESSAGE: usize = 400;
/// The ETag cache forgets everything beyond this many names (it refills on demand).
const CACHE_LIMIT: usize = 4096;

/// One bucket (S3), container (Azure) or in-memory store that holds lock objects.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, `az://container`, `memory://name`: for messages.
    location: String,
    /// The bucket or container name, for `BucketNotFound`.
    bucket: String,
    clock: Clock,
    request_timeout: Duration,
    /// The ETag of the latest version of each object this backend has seen.
    cache: Mutex<HashMap<String, Known>>,
}

/// Which clock `server_time` and `updated` come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    /// A remote store: `Date` and `Last-Modified` headers, whole seconds.
    HttpDate,
    /// A store inside this process (object_store's `InMemory`): its timestamps come
    /// from this process's wall clock, so that clock is the server's clock.
    InProcess,
}

/// A version of an object together with what a conditional put needs to replace it.
#[derive(Clone, Debug)]
struct Known {
    info: ObjectInfo,
    put_version: UpdateVersion,
    /// Written by gcslock (a JSON body), not some other object.
    ours: bool,
}

/// The body of every object gcslock writes.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    #[serde(rename = "gcslock-object")]
    format: u32,
    generation: i64,
    metageneration: i64,
    metadata: Metadata,
}

/// The bucket part of a location such as `s3://bucket`, for `BucketNotFound`.
fn bucket_of(location: &str) -> String {
    location
        .split_once("://")
        .map_or(location, |(_, rest)| rest)
        .to_owned()
}

impl fmt::Debug for ObjectStoreBackend {
    /// Only the location: a store's own `Debug` may print its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("location", &self.location)
            .field("clock", &self.clock)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    /// The S3 bucket or Azure container `bucket`, configured from the environment
    /// the way each store's own tools are. Open a URL with
    /// [`crate::backend::open`], which calls this for `s3://` and `az://`; this is
    /// for a caller that already holds a parsed
    /// [`StorageUrl`](super::StorageUrl).
    ///
    /// * [`Scheme::S3`]: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (S3-compatible stores,
    ///   emulators), `AWS_ALLOW_HTTP=true` (plain HTTP, only when set on purpose), and
    ///   the instance/container/web-identity credential providers;
    /// * [`Scheme::Azure`]: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
    ///   `AZURE_STORAGE_SAS_KEY`, `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID`,
    ///   managed identity, workload identity; `AZURE_STORAGE_USE_EMULATOR=true` (with
    ///   `AZURITE_BLOB_STORAGE_URL`) for Azurite over plain HTTP.
    ///
    /// Other schemes are refused: `gs://` is [`crate::backend::gcs::GcsBackend`], and
    /// `memory://` is always [`crate::backend::memory::MemoryBackend`] (one store per
    /// name per process, whichever way it is opened). No request is sent.
    /// Credentials never appear in errors or in `Debug` output.
    ///
    /// ```
    /// # #[cfg(feature = "object-store")] {
    /// use gcslock::backend::{object_store::ObjectStoreBackend, Scheme};
    /// let error = ObjectStoreBackend::for_bucket(Scheme::Memory, "m", Default::default());
    /// assert!(error.is_err(), "memory:// is MemoryBackend");
    /// # }
    /// ```
    pub fn for_bucket(
        scheme: Scheme,
        bucket: &str,
        request_timeout: Duration,
    ) -> Result<Self, Error> {
        let invalid = |why: String| Error::InvalidInput(why);
        let connector = DateCapturingConnector;
        let no_retries = RetryConfig {
            max_retries: 0,
            retry_timeout: Duration::ZERO,
            ..RetryConfig::default()
        };
        let timeout = humantime::format_duration(request_timeout).to_string();
        let connect_timeout = humantime::format_duration(CONNECT_TIMEOUT).to_string();
        let build_error = |e: ::object_store::Error| {
            invalid(format!(
                "cannot configure {scheme}://{bucket}: {}",
                redact(&e.to_string())
            ))
        };
        let mut backend = match scheme {
            Scheme::S3 => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // The protocol needs If-None-Match / If-Match; never let the
                    // environment (AWS_CONDITIONAL_PUT) turn them off.
                    .with_conditional_put(S3ConditionalPut::ETagMatch)
                    .with_retry(no_retries)
                    .with_http_connector(connector);
                for (key, value) in [
                    (ClientConfigKey::Timeout, &timeout),
                    (ClientConfigKey::ConnectTimeout, &connect_timeout),
                ] {
                    let key = AmazonS3ConfigKey::Client(key);
                    if builder.get_config_value(&key).is_none() {
                        builder = builder.with_config(key, value.as_str());
                    }
                }
                let store = builder.build().map_err(build_error)?;
                Self::with_clock(
                    Arc::new(store),
                    format!("s3://{bucket}"),
                    bucket,
                    Clock::HttpDate,
                )
            }
            Scheme::Azure => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(no_retries)
                    .with_http_connector(connector);
                for (key, value) in [
                    (ClientConfigKey::Timeout, &timeout),
                    (ClientConfigKey::ConnectTimeout, &connect_timeout),
                ] {
                    let key = AzureConfigKey::Client(key);
                    if builder.get_config_value(&key).is_none() {
                        builder = builder.with_config(key, value.as_str());
                    }
                }
                let store = builder.build().map_err(build_error)?;
                Self::with_clock(
                    Arc::new(store),
                    format!("az://{bucket}"),
                    bucket,
                    Clock::HttpDate,
                )
            }
            Scheme::Gcs | Scheme::Memory => {
                return Err(invalid(format!(
                    "{scheme}:// is not an object_store store: open {scheme}://{bucket} with \
                     gcslock::backend::open"
                )))
            }
        };
        backend.request_timeout = request_timeout;
        Ok(backend)
    }

    /// object_store's `InMemory` `store`, named `location` in messages (such as
    /// `memory://tests`). Backends made from one `store` share its objects; each
    /// has its own ETag cache, as another process would. Its clock is this
    /// process's, which is the store's own. (A `memory://` URL opens a
    /// [`crate::backend::memory::MemoryBackend`] instead.)
    pub fn in_memory(store: Arc<InMemory>, location: impl Into<String>) -> Self {
        let location = location.into();
        let bucket = bucket_of(&location);
        Self::with_clock(store, location, &bucket, Clock::InProcess)
    }

    /// Any other `object_store` store. `location` names it in messages (such as
    /// `s3://bucket`). Server time comes from HTTP `Date` headers only when the store
    /// was built with a connector that captures them (as [`ObjectStoreBackend::for_bucket`]
    /// does); otherwise it is `None` and waiters judge staleness by their own
    /// monotonic clock. A store without conditional puts is refused on first use.
    pub fn new(store: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        let location = location.into();
        let bucket = bucket_of(&location);
        Self::with_clock(store, location, &bucket, Clock::HttpDate)
    }

    fn with_clock(
        store: Arc<dyn ObjectStore>,
        location: String,
        bucket: &str,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            location,
            bucket: bucket.to_owned(),
            clock,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying store (for tests and tools; writes through it bypass the cache).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // Every critical section is a single insert or lookup.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, known: &Known) {
        let mut cache = self.cache();
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(&known.info.name) {
            cache.clear();
        }
        cache.insert(known.info.name.clone(), known.clone());
    }

    fn server_time(&self) -> Option<DateTime<Utc>> {
        match self.clock {
            Clock::InProcess => Some(Utc::now()),
            Clock::HttpDate => exchange().date,
        }
    }

    /// `updated` from a `Last-Modified` reading: HTTP dates are whole seconds, so the
    /// modification happened within the second after it; report the end of that second.
    fn updated(&self, last_modified: DateTime<Utc>) -> DateTime<Utc> {
        match self.clock {
            Clock::HttpDate if last_modified.timestamp_subsec_nanos() == 0 => {
                last_modified + chrono::Duration::seconds(1)
            }
            _ => last_modified,
        }
    }

    /// Runs one trait call with its own record of HTTP exchanges, and stamps it.
    async fn stamped<T, F>(&self, call: F) -> Result<Stamped<T>, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        EXCHANGE
            .scope(RefCell::new(Exchange::default()), async {
                let value = call.await?;
                Ok(Stamped {
                    value,
                    server_time: self.server_time(),
                })
            })
            .await
    }

    /// Reads an object: `None` if it does not exist.
    async fn fetch(&self, name: &str) -> Result<Option<Known>, BackendError> {
        let path = to_path(name)?;
        let result = match self.store.get_opts(&path, GetOptions::default()).await {
            Ok(result) => result,
            Err(error) => {
                return match self.classify(error, Op::Read) {
                    BackendError::NotFound => Ok(None),
                    other => Err(other),
                }
            }
        };
        let meta = result.meta.clone();
        let attributes = result.attributes.clone();
        let body = match result.bytes().await {
            Ok(body) => body,
            // Deleted between the headers and the body.
            Err(error) => {
                return match self.classify(error, Op::Read) {
                    BackendError::NotFound => Ok(None),
                    other => Err(other),
                }
            }
        };
        let known = self.decode(name, &meta, &attributes, &body);
        self.remember(&known);
        Ok(Some(known))
    }

    fn decode(
        &self,
        name: &str,
        meta: &ObjectMeta,
        attributes: &Attributes,
        body: &Bytes,
    ) -> Known {
        let put_version = UpdateVersion {
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
        };
        let updated = self.updated(meta.last_modified);
        match serde_json::from_slice::<Body>(body) {
            Ok(body)
                if body.format == BODY_FORMAT && body.generation > 0 && body.metageneration > 0 =>
            {
                Known {
                    info: ObjectInfo {
                        name: name.to_owned(),
                        version: ObjectVersion {
                            generation: body.generation,
                            metageneration: body.metageneration,
                        },
                        updated,
                        created: None,
                        metadata: body.metadata,
                    },
                    put_version,
                    ours: true,
                }
            }
            // Not written by gcslock: its user metadata, and a version that changes
            // whenever its ETag does.
            _ => Known {
                info: ObjectInfo {
                    name: name.to_owned(),
                    version: ObjectVersion {
                        generation: foreign_generation(meta),
                        metageneration: 1,
                    },
                    updated,
                    created: None,
                    metadata: attributes
                        .iter()
                        .filter_map(|(attribute, value)| match attribute {
                            Attribute::Metadata(key) => {
                                Some((key.to_string(), value.as_ref().to_owned()))
                            }
                            _ => None,
                        })
                        .collect::<BTreeMap<_, _>>(),
                },
                put_version,
                ours: false,
            },
        }
    }

    /// The object exactly at `expected`, from the cache or a read. `missing` is the
    /// error when there is no object.
    async fn at_version(
        &self,
        name: &str,
        expected: ObjectVersion,
        missing: BackendError,
    ) -> Result<Known, BackendError> {
        let cached = self
            .cache()
            .get(name)
            .filter(|known| known.info.version == expected)
            .cloned();
        if let Some(known) = cached {
            return Ok(known);
        }
        match self.fetch(name).await? {
            None => Err(missing),
            Some(known) if known.info.version == expected => Ok(known),
            Some(_) => Err(BackendError::PreconditionFailed),
        }
    }

    /// One conditional put of a gcslock body.
    async fn put(&self, name: &str, mode: PutMode, body: Body) -> Result<ObjectInfo, BackendError> {
        let path = to_path(name)?;
        let payload = serde_json::to_vec(&body).map_err(|e| BackendError::Rejected {
            status: 400,
            message: format!("cannot encode the lock body: {e}"),
        })?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from("application/json"),
        );
        let op = match mode {
            PutMode::Update(_) => Op::Update,
            _ => Op::Create,
        };
        let options = PutOptions {
            mode,
            attributes,
            ..PutOptions::default()
        };
        let result = self
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(payload)), options)
            .await
            .map_err(|error| self.classify(error, op))?;
        let written = exchange();
        let last_modified = match written.last_modified {
            Some(last_modified) => last_modified,
            // S3 does not send Last-Modified with a PUT: ask for it, and keep it only if
            // the object is still the version we wrote.
            None => match self.store.head(&path).await {
                Ok(meta) if meta.e_tag.is_some() && meta.e_tag == result.e_tag => {
                    meta.last_modified
                }
                // Superseded already (or unreadable): no later read returns this version,
                // so `updated` only needs to be a plausible reading of the server's clock.
                _ => written.date.unwrap_or_else(Utc::now),
            },
        };
        let known = Known {
            info: ObjectInfo {
                name: name.to_owned(),
                version: ObjectVersion {
                    generation: body.generation,
                    metageneration: body.metageneration,
                },
                updated: self.updated(last_modified),
                created: None,
                metadata: body.metadata,
            },
            put_version: UpdateVersion {
                e_tag: result.e_tag,
                version: result.version,
            },
            ours: true,
        };
        if known.put_version.e_tag.is_some() {
            self.remember(&known);
        }
        Ok(known.info)
    }

    /// Maps an object_store error, using the status and body of the last response.
    fn classify(&self, error: ::object_store::Error, op: Op) -> BackendError {
        use ::object_store::Error as E;
        let seen = exchange();
        let status = seen.status;
        let body = seen.error_body.unwrap_or_default();
        let detail = || {
            let text = if body.is_empty() {
                error.to_string()
            } else {
                format!("HTTP {}: {}", status.unwrap_or(0), error_summary(&body))
            };
            truncate(&redact(&text))
        };
        if body.contains("NoSuchBucket") || body.contains("ContainerNotFound") {
            return BackendError::BucketNotFound(self.bucket.clone());
        }
        match &error {
            E::NotFound { .. } => {
                return match op {
                    // GCS answers a write conditioned on a version of a missing
                    // object with 412.
                    Op::Update => BackendError::PreconditionFailed,
                    Op::Read | Op::Create | Op::List => BackendError::NotFound,
                };
            }
            // S3 answers 409 ConditionalRequestConflict while another conditional
            // write of the same key is in flight: nothing was applied by this one,
            // but treat it as possibly applied so it is resolved by reading back.
            E::AlreadyExists { .. } if body.contains("ConditionalRequestConflict") => {
                return BackendError::Server {
                    status: 409,
                    message: detail(),
                }
            }
            E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => {
                return BackendError::PreconditionFailed
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                return BackendError::PermissionDenied(detail())
            }
            E::NotImplemented { .. } | E::NotSupported { .. } => {
                return self.refusal(&detail());
            }
            _ => {}
        }
        match status {
            Some(501) => return self.refusal(&detail()),
            Some(400)
                if matches!(op, Op::Create | Op::Update) && body.contains("NotImplemented") =>
            {
                return self.refusal(&detail())
            }
            Some(429) => {
                return BackendError::RateLimited {
                    retry_after: seen.retry_after,
                }
            }
            Some(503) if body.contains("SlowDown") || body.contains("ServerBusy") => {
                return BackendError::RateLimited {
                    retry_after: seen.retry_after,
                }
            }
            Some(408) => return BackendError::Timeout(self.request_timeout),
            Some(status) if status >= 500 => {
                return BackendError::Server {
                    status,
                    message: detail(),
                }
            }
            Some(401 | 403) => return BackendError::PermissionDenied(detail()),
            Some(status) if status >= 400 => {
                return BackendError::Rejected {
                    status,
                    message: detail(),
                }
            }
            _ => {}
        }
        match http_error_kind(&error) {
            Some(HttpErrorKind::Connect) => BackendError::Connect {
                endpoint: self.location.clone(),
                message: detail(),
            },
            Some(HttpErrorKind::Timeout) => BackendError::Timeout(self.request_timeout),
            Some(HttpErrorKind::Decode) => BackendError::InvalidResponse(detail()),
            Some(_) => BackendError::Transport(detail()),
            None => match error {
                E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => {
                    BackendError::Rejected {
                        status: 400,
                        message: detail(),
                    }
                }
                // Credentials that cannot be obtained, unparsable headers, ...
                _ => BackendError::InvalidResponse(detail()),
            },
        }
    }

    fn refusal(&self, detail: &str) -> BackendError {
        BackendError::Rejected {
            status: 501,
            message: format!(
                "{} does not support conditional writes (If-None-Match / If-Match), which the \
                 lease protocol needs; gcslock refuses to use it ({detail})",
                self.location
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Create,
    Update,
    List,
}

#[async_trait]
impl Backend for ObjectStoreBackend {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.stamped(async {
            let (mode, replaced) = match condition {
                WriteCondition::DoesNotExist => (PutMode::Create, None),
                WriteCondition::Matches(expected) => {
                    let known = self
                        .at_version(name, expected, BackendError::PreconditionFailed)
                        .await?;
                    (
                        PutMode::Update(known.put_version),
                        Some(expected.generation),
                    )
                }
            };
            let body = Body {
                format: BODY_FORMAT,
                generation: new_generation(replaced),
                metageneration: 1,
                metadata: metadata.clone(),
            };
            self.put(name, mode, body).await
        })
        .await
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        self.stamped(async { Ok(self.fetch(name).await?.map(|known| known.info)) })
            .await
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.stamped(async {
            let known = self
                .at_version(name, expected, BackendError::NotFound)
                .await?;
            if !known.ours {
                return Err(BackendError::Rejected {
                    status: 400,
                    message: format!(
                        "{}/{name} was not written by gcslock; its content is not rewritten",
                        self.location
                    ),
                });
            }
            let mut merged = known.info.metadata.clone();
            merged.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            // The stored metageneration is untrusted: an absurd one is refused, not wrapped.
            let Some(metageneration) = expected.metageneration.checked_add(1) else {
                return Err(BackendError::InvalidResponse(format!(
                    "{name}: metageneration {} cannot grow",
                    expected.metageneration
                )));
            };
            let body = Body {
                format: BODY_FORMAT,
                generation: expected.generation,
                metageneration,
                metadata: merged,
            };
            match self
                .put(name, PutMode::Update(known.put_version), body)
                .await
            {
                // Like GCS: 404 for a missing object, 412 for another version.
                Err(BackendError::PreconditionFailed) => match self.fetch(name).await {
                    Ok(None) => Err(BackendError::NotFound),
                    _ => Err(BackendError::PreconditionFailed),
                },
                other => other,
            }
        })
        .await
    }

    /// Refused: object_store has no conditional delete, and an unconditional one
    /// could remove a lock that someone acquired after `expected` was read. gcslock
    /// itself never deletes a lock (release and break write a tombstone).
    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        Err(BackendError::Rejected {
            status: 501,
            message: format!(
                "cannot delete {}/{name} at version {expected}: object_store offers no \
                 conditional delete, and gcslock never deletes unconditionally (locks are \
                 released by marking them released)",
                self.location
            ),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError> {
        EXCHANGE
            .scope(RefCell::new(Exchange::default()), async {
                // object_store lists whole path segments: list the deepest directory that
                // contains the prefix, and keep the names that start with it.
                let directory = prefix
                    .rsplit_once('/')
                    .map(|(directory, _)| directory)
                    .filter(|directory| !directory.is_empty())
                    .and_then(|directory| to_path(directory).ok());
                let mut listing = self.store.list(directory.as_ref());
                let mut names = Vec::new();
                while let Some(item) = listing.next().await {
                    let meta = item.map_err(|error| self.classify(error, Op::List))?;
                    let name = meta.location.as_ref();
                    if name.starts_with(prefix) {
                        names.push(name.to_owned());
                    }
                }
                drop(listing);
                // The clock reading of the last page, taken before any object is read, so
                // that it is never later than an object's `updated`: never judged stale early.
                let server_time = self.server_time();
                names.sort();
                let mut objects = Vec::with_capacity(names.len());
                for name in names {
                    if let Some(known) = self.fetch(&name).await? {
                        objects.push(Stamped {
                            value: known.info,
                            server_time,
                        });
                    }
                }
                Ok(objects)
            })
            .await
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

/// Refuses keys that object_store would store under another name.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    to_path(key)
        .map(drop)
        .map_err(|e| Error::InvalidInput(e.to_string()))
}

/// The object key for a lock name, refusing names that object_store would change
/// (leading or trailing `/`, empty segments, `.` or `..` segments, control characters).
fn to_path(name: &str) -> Result<Path, BackendError> {
    let rejected = |why: String| BackendError::Rejected {
        status: 400,
        message: format!("invalid object name {name:?} for object_store: {why}"),
    };
    let path = Path::parse(name).map_err(|e| rejected(e.to_string()))?;
    if path.as_ref() != name {
        return Err(rejected(
            "it would be stored as a different key (leading or trailing '/')".into(),
        ));
    }
    if name.is_empty() {
        return Err(rejected("it is empty".into()));
    }
    Ok(path)
}

/// A random positive generation, different from the one it replaces.
fn new_generation(replaced: Option<i64>) -> i64 {
    loop {
        let generation = rand::rng().random_range(1..=i64::MAX);
        if Some(generation) != replaced {
            return generation;
        }
    }
}

/// A stable positive "generation" for an object gcslock did not write: FNV-1a of
/// its ETag (or size and modification time when the store has no ETag).
fn foreign_generation(meta: &ObjectMeta) -> i64 {
    let identity = meta.e_tag.clone().unwrap_or_else(|| {
        format!(
            "{}@{}",
            meta.size,
            meta.last_modified.timestamp_nanos_opt().unwrap_or(0)
        )
    });
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ((hash >> 1) as i64).max(1)
}

fn http_error_kind(error: &::object_store::Error) -> Option<HttpErrorKind> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(http) = current.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        source = current.source();
    }
    None
}

/// S3 and Azure error bodies are XML: keep `Code` and `Message`, else the start.
fn error_summary(body: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].trim().to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => body.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Drops query strings from URLs in a message: a SAS token or a presigned request
/// must never reach a log.
fn redact(message: &str) -> String {
    let next_url = |text: &str| {
        [text.find("http://"), text.find("https://")]
            .into_iter()
            .flatten()
            .min()
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = next_url(rest) {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '>' | ')'))
            .map_or(rest.len(), |end| start + end);
        match rest[start..end].split_once('?') {
            Some((base, _)) => {
                out.push_str(base);
                out.push_str("?<redacted>");
            }
            None => out.push_str(&rest[start..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

// ---------------------------------------------------------------- HTTP capture

/// What the last HTTP response of the current trait call said, beyond what
/// object_store returns: the server's clock, and the status and body of an error.
#[derive(Clone, Debug, Default)]
struct Exchange {
    date: Option<DateTime<Utc>>,
    last_modified: Option<DateTime<Utc>>,
    status: Option<u16>,
    error_body: Option<String>,
    retry_after: Option<Duration>,
}

tokio::task_local! {
    /// One per trait call (see `ObjectStoreBackend::stamped`); object_store's
    /// requests run inside the caller's task, so the connector below can fill it.
    static EXCHANGE: RefCell<Exchange>;
}

fn exchange() -> Exchange {
    EXCHANGE
        .try_with(|exchange| exchange.borrow().clone())
        .unwrap_or_default()
}

fn record(update: impl FnOnce(&mut Exchange)) {
    let _ = EXCHANGE.try_with(|exchange| update(&mut exchange.borrow_mut()));
}

/// object_store's reqwest client, wrapped so each response's `Date`,
/// `Last-Modified`, status and error body are recorded for the current call.
#[derive(Debug, Default, Clone, Copy)]
struct DateCapturingConnector;

impl HttpConnector for DateCapturingConnector {
    fn connect(&self, options: &ClientOptions) -> ::object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(DateCapturingService { inner }))
    }
}

#[derive(Debug)]
struct DateCapturingService {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for DateCapturingService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        // A request that gets no response leaves nothing behind from earlier ones.
        record(|exchange| *exchange = Exchange::default());
        let response = self.inner.execute(request).await?;
        let (parts, body) = response.into_parts();
        let header_time = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| DateTime::parse_from_rfc2822(value).ok())
                .map(|time| time.with_timezone(&Utc))
        };
        let date = header_time(http::header::DATE);
        let last_modified = header_time(http::header::LAST_MODIFIED);
        let retry_after = parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let status = parts.status;
        let (body, error_body) = if status.is_success() || status.is_redirection() {
            (body, None)
        } else {
            // Error bodies are small XML documents; keep a copy for classification.
            let bytes = body.bytes().await?;
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
            (HttpResponseBody::from(bytes), Some(text))
        };
        record(|exchange| {
            *exchange = Exchange {
                date,
                last_modified,
                status: Some(status.as_u16()),
                error_body,
                retry_after,
            }
        });
        Ok(HttpResponse::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s3_and_azure_are_object_store_schemes() {
        for scheme in [Scheme::Gcs, Scheme::Memory] {
            let error = ObjectStoreBackend::for_bucket(scheme, "bucket", DEFAULT_REQUEST_TIMEOUT)
                .expect_err("not object_store")
                .to_string();
            assert!(error.contains("gcslock::backend::open"), "{error}");
        }
    }

    #[test]
    fn messages_never_carry_query_strings() {
        let message = "Error performing PUT https://acct.blob.core.windows.net/c/o?sv=2022&sig=SECRET in 1s; \
                       see http://x/y and (http://h/p?X-Amz-Signature=abc)";
        let redacted = redact(message);
        assert!(
            !redacted.contains("SECRET") && !redacted.contains("abc"),
            "{redacted}"
        );
        assert!(
            redacted.contains("https://acct.blob.core.windows.net/c/o?<redacted>"),
            "{redacted}"
        );
        assert!(redacted.contains("see http://x/y and"), "{redacted}");
    }

    #[test]
    fn error_bodies_are_summarised() {
        let body = r#"<?xml version="1.0"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>"#;
        assert_eq!(
            error_summary(body),
            "PreconditionFailed: At least one of the pre-conditions you specified did not hold"
        );
        assert_eq!(truncate(&"é".repeat(400)).chars().count(), 201);
    }

    #[test]
    fn whole_second_modification_times_are_rounded_up() {
        let backend = ObjectStoreBackend::new(Arc::new(InMemory::new()), "s3://b");
        let second = DateTime::parse_from_rfc3339("2026-11-25T03:45:01Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            backend.updated(second),
            second + chrono::Duration::seconds(1)
        );
        let precise = second + chrono::Duration::milliseconds(5);
        assert_eq!(backend.updated(precise), precise);
        assert_eq!(
            ObjectStoreBackend::in_memory(Arc::new(InMemory::new()), "memory://unit-clock")
                .updated(second),
            second
        );
    }

    #[test]
    fn generations_are_positive_and_change() {
        for _ in 0..1000 {
            let g = new_generation(Some(5));
            assert!(g > 0 && g != 5);
        }
    }
}
