//! The GCS JSON API (v1) over reqwest: each [`Backend`] call is exactly one request
//! (`list` is one per page).
//!
//! Endpoint choice follows the Google client libraries: an explicit endpoint wins,
//! then `STORAGE_EMULATOR_HOST` (an emulator: no credentials), then
//! `https://storage.googleapis.com` with Application Default Credentials. A bearer
//! token is only ever sent over HTTPS.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt as _};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Deserializer};

use super::{
    Backend, BackendError, Download, Metadata, ObjectBodies, ObjectInfo, ObjectVersion, Stamped,
    UploadBody, WriteCondition,
};
use crate::Error;

/// The production endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The Google client libraries' convention for pointing at an emulator.
pub const EMULATOR_HOST_VAR: &str = "STORAGE_EMULATOR_HOST";

const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Object bodies may be large: an upload or download may take this long in all.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Lock objects and list pages are small; anything bigger is not the API talking.
const MAX_BODY_BYTES: usize = 32 << 20;
/// How much of an unexpected body goes into an error message.
const SNIPPET_CHARS: usize = 200;
const CREDENTIALS_HINT: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a credentials file or run \
     `gcloud auth application-default login` (on GCE, Cloud Run or GKE the metadata server \
     provides them); to use an emulator instead, set STORAGE_EMULATOR_HOST";

/// Everything but RFC 3986 unreserved characters, so a name is one path segment
/// ('/' becomes %2F).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where requests go and whether they carry credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// Scheme, host, port and optional path, without a trailing '/'.
    base: String,
    /// True only for HTTPS endpoints that are not `STORAGE_EMULATOR_HOST`.
    authenticated: bool,
}

/// Picks the endpoint: `explicit` wins, then the emulator host, then production.
/// Pure (the caller reads the environment) so it can be tested without races.
fn resolve_endpoint(
    explicit: Option<&str>,
    emulator_host: Option<&str>,
) -> Result<Endpoint, Error> {
    fn given(value: Option<&str>) -> Option<&str> {
        value.map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(raw) = given(explicit) {
        let base = normalize_endpoint(raw, "endpoint")?;
        // An explicit http:// endpoint is an emulator the user chose on purpose:
        // allowed, but without credentials.
        let authenticated = base.starts_with("https://");
        return Ok(Endpoint {
            base,
            authenticated,
        });
    }
    if let Some(raw) = given(emulator_host) {
        return Ok(Endpoint {
            base: normalize_endpoint(raw, EMULATOR_HOST_VAR)?,
            authenticated: false,
        });
    }
    Ok(Endpoint {
        base: DEFAULT_ENDPOINT.to_owned(),
        authenticated: true,
    })
}

/// Accepts `host:port` (meaning http), `http://...` and `https://...`.
fn normalize_endpoint(raw: &str, what: &str) -> Result<String, Error> {
    let invalid = |why: String| Error::InvalidInput(format!("invalid {what} {raw:?}: {why}"));
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "unsupported scheme {:?}, expected http:// or https://",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "user names and passwords in the URL are not supported".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment".into()));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Builds a [`GcsBackend`].
#[derive(Clone)]
pub struct GcsBackendBuilder {
    bucket: String,
    endpoint: Option<String>,
    request_timeout: Duration,
    connect_timeout: Duration,
    body_timeout: Duration,
    list_page_size: Option<u32>,
    credentials: Option<Credentials>,
}

impl fmt::Debug for GcsBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsBackendBuilder")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("list_page_size", &self.list_page_size)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<elided>"),
            )
            .finish()
    }
}

impl GcsBackendBuilder {
    /// The endpoint to use instead of `STORAGE_EMULATOR_HOST` or production:
    /// `https://...` (credentials sent), `http://...` or `host:port` (an emulator:
    /// no credentials). `None` keeps the default choice.
    pub fn endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The longest one request may take, connection and body included (default 10s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest establishing a connection may take (default 5s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest one upload or download of an object body ([`ObjectBodies`]) may
    /// take in all (default 1 hour). A download also fails when no byte arrives for
    /// the request timeout. Lock requests keep the request timeout.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Asks for at most `size` objects per list page (`maxResults`); the server's
    /// default otherwise. Small pages exercise pagination in tests.
    pub fn list_page_size(mut self, size: u32) -> Self {
        self.list_page_size = Some(size.max(1));
        self
    }

    /// Uses these credentials instead of Application Default Credentials. Only
    /// valid with an HTTPS endpoint.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Builds the backend, reading `STORAGE_EMULATOR_HOST` when no endpoint was set.
    /// Credentials are loaded on the first request, so building never blocks.
    pub fn build(self) -> Result<GcsBackend, Error> {
        let emulator_host = std::env::var(EMULATOR_HOST_VAR).ok();
        self.build_with(emulator_host.as_deref())
    }

    fn build_with(self, emulator_host: Option<&str>) -> Result<GcsBackend, Error> {
        crate::validate_bucket_name(&self.bucket)?;
        let endpoint = resolve_endpoint(self.endpoint.as_deref(), emulator_host)?;
        if self.credentials.is_some() && !endpoint.authenticated {
            return Err(Error::InvalidInput(format!(
                "credentials were given but the endpoint {} is an emulator or plain HTTP; \
                 credentials are only sent over HTTPS",
                endpoint.base
            )));
        }
        if self.request_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(Error::InvalidInput(
                "the request and body timeouts must not be zero".into(),
            ));
        }
        let mut client = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .connect_timeout(self.connect_timeout.min(self.request_timeout))
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .user_agent(concat!("gcslock/", env!("CARGO_PKG_VERSION")));
        if endpoint.base.starts_with("http://") {
            // Plain HTTP never uses them, and loading the system's root certificates
            // is most of a CLI run's start-up (measured in BENCHMARKS.md).
            client = client.tls_certs_only(std::iter::empty());
        }
        let client = client.build().map_err(|e| {
            Error::from_backend(
                &format!("gs://{}", self.bucket),
                BackendError::Transport(format!(
                    "cannot initialise the HTTP client: {}",
                    error_chain(&e)
                )),
            )
        })?;
        let auth = endpoint.authenticated.then(|| Auth {
            credentials: tokio::sync::OnceCell::new_with(self.credentials.map(|credentials| {
                LoadedCredentials {
                    credentials,
                    metadata_server_only: false,
                }
            })),
            obtained_once: AtomicBool::new(false),
        });
        Ok(GcsBackend {
            inner: Arc::new(Inner {
                bucket: self.bucket,
                endpoint,
                client,
                request_timeout: self.request_timeout,
                body_timeout: self.body_timeout,
                list_page_size: self.list_page_size,
                auth,
                in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            }),
        })
    }
}

/// A GCS bucket over the JSON API. Cloning shares the connection pool and credentials.
#[derive(Clone)]
pub struct GcsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: String,
    endpoint: Endpoint,
    client: reqwest::Client,
    request_timeout: Duration,
    body_timeout: Duration,
    list_page_size: Option<u32>,
    /// `None` for emulators: nothing is ever attached to their requests.
    auth: Option<Auth>,
    /// Caps requests in flight: with thousands of leases, refreshes that fall due
    /// together would otherwise each open a connection (7,035 for 10,000 locks).
    in_flight: tokio::sync::Semaphore,
}

/// Requests in flight per backend, and idle connections kept per host.
const MAX_IN_FLIGHT: usize = 64;

struct Auth {
    credentials: tokio::sync::OnceCell<LoadedCredentials>,
    /// Whether a token was ever obtained; after that, a transient failure is an
    /// outage rather than missing configuration.
    obtained_once: AtomicBool,
}

impl fmt::Debug for GcsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match &self.inner.auth {
            None => "none (emulator)",
            Some(_) => "<elided>",
        };
        f.debug_struct("GcsBackend")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint.base)
            .field("credentials", &credentials)
            .field("request_timeout", &self.inner.request_timeout)
            .finish()
    }
}

struct LoadedCredentials {
    credentials: Credentials,
    /// No credentials file is configured: the library falls back to the GCE
    /// metadata server, which off Google Cloud means "no credentials at all".
    metadata_server_only: bool,
}

/// Whether Application Default Credentials will only try the metadata server
/// (the same search as google-cloud-auth: the variable, then gcloud's file).
fn adc_is_metadata_server_only() -> bool {
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
        return false;
    }
    let well_known = if cfg!(windows) {
        std::env::var_os("APPDATA").map(|d| std::path::PathBuf::from(d).join("gcloud"))
    } else {
        std::env::var_os("HOME").map(|d| std::path::PathBuf::from(d).join(".config/gcloud"))
    };
    !well_known.is_some_and(|dir| dir.join("application_default_credentials.json").exists())
}

/// What a 404 means for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NotFoundMeans {
    /// The request names an object: a 404 is about the object unless the
    /// server says the bucket is missing.
    Object,
    /// Uploads and lists need only the bucket: a 404 is about the bucket.
    Bucket,
}

/// A response, read completely.
struct Reply {
    status: u16,
    date: Option<DateTime<Utc>>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl GcsBackend {
    /// A builder for a backend on `bucket`.
    pub fn builder(bucket: &str) -> GcsBackendBuilder {
        GcsBackendBuilder {
            bucket: bucket.to_owned(),
            endpoint: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            list_page_size: None,
            credentials: None,
        }
    }

    /// The default configuration: `STORAGE_EMULATOR_HOST` if set, else production
    /// GCS with Application Default Credentials.
    pub fn from_env(bucket: &str) -> Result<Self, Error> {
        Self::builder(bucket).build()
    }

    /// The bucket locks live in.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The base URL requests go to, such as `https://storage.googleapis.com`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint.base
    }

    /// Whether requests carry Google credentials (never over plain HTTP).
    pub fn sends_credentials(&self) -> bool {
        self.inner.auth.is_some()
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket),
            encode_segment(name)
        )
    }

    fn objects_url(&self) -> String {
        format!(
            "{}/storage/v1/b/{}/o",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket)
        )
    }

    fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket)
        )
    }

    /// One of the `MAX_IN_FLIGHT` request slots; hold it until the response is read.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BackendError> {
        self.inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| BackendError::Transport("the HTTP client was shut down".into()))
    }

    /// Sends one request and returns the response once its headers arrived.
    /// Transport failures become errors here; HTTP statuses are left to the caller.
    async fn send(
        &self,
        method: &Method,
        url: String,
        object: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let mut request = build(self.inner.client.request(method.clone(), url));
        if let Some(headers) = self.auth_headers().await? {
            request = request.headers(headers);
        }
        match request.send().await {
            Ok(response) => Ok(response),
            Err(err) => {
                let err = self.classify_transport(&err);
                tracing::debug!(%method, object, error = %err, "GCS request failed");
                Err(err)
            }
        }
    }

    /// Sends one request and reads the whole response. Transport failures become
    /// errors here; HTTP statuses are left to the caller.
    async fn execute(
        &self,
        method: Method,
        url: String,
        object: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Reply, BackendError> {
        let started = Instant::now();
        // The slot spans the body read too: a connection is busy until then.
        let _slot = self.slot().await?;
        let response = self.send(&method, url, object, build).await?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let date = headers
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = self.read_body(response).await;
        tracing::debug!(
            %method,
            object,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "GCS request"
        );
        Ok(Reply {
            status,
            date,
            retry_after,
            body: body?,
        })
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, BackendError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.classify_transport(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(BackendError::InvalidResponse(format!(
                    "response body larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn classify_transport(&self, err: &reqwest::Error) -> BackendError {
        if err.is_connect() {
            // Checked before is_timeout: a connect timeout means nothing was sent.
            BackendError::Connect {
                endpoint: self.inner.endpoint.base.clone(),
                message: source_chain(err).unwrap_or_else(|| err.to_string()),
            }
        } else if err.is_timeout() {
            BackendError::Timeout(self.inner.request_timeout)
        } else {
            BackendError::Transport(error_chain(err))
        }
    }

    /// The credential headers for one request; `None` for emulators.
    async fn auth_headers(&self) -> Result<Option<HeaderMap>, BackendError> {
        let Some(auth) = &self.inner.auth else {
            return Ok(None);
        };
        let loaded = auth
            .credentials
            .get_or_try_init(|| async {
                let metadata_server_only = adc_is_metadata_server_only();
                google_cloud_auth::credentials::Builder::default()
                    .with_scopes([SCOPE])
                    .build()
                    .map(|credentials| LoadedCredentials {
                        credentials,
                        metadata_server_only,
                    })
                    .map_err(|e| {
                        BackendError::PermissionDenied(format!(
                            "cannot load Google credentials ({}): {CREDENTIALS_HINT}",
                            outer_and_root(&e)
                        ))
                    })
            })
            .await?;
        let timeout = self.inner.request_timeout;
        let fetching = loaded.credentials.headers(http::Extensions::new());
        let fetched =
            tokio::time::timeout(timeout, fetching)
                .await
                .map_err(|_| BackendError::Connect {
                    endpoint: "the Google token service".into(),
                    message: format!("no access token within {timeout:?}"),
                })?;
        match fetched {
            // The library caches headers; without an entity tag it always answers New.
            Ok(CacheableResource::New { data, .. }) => {
                auth.obtained_once.store(true, Ordering::Relaxed);
                Ok(Some(data))
            }
            Ok(CacheableResource::NotModified) => Err(BackendError::PermissionDenied(
                "the credentials library returned no headers".into(),
            )),
            // Off Google Cloud with nothing configured, the metadata server cannot be
            // reached: that is missing credentials, not an outage. Once a token was
            // obtained, the same failure is an outage.
            Err(e)
                if e.is_transient()
                    && loaded.metadata_server_only
                    && !auth.obtained_once.load(Ordering::Relaxed) =>
            {
                Err(BackendError::PermissionDenied(format!(
                    "no Google credentials found: {CREDENTIALS_HINT} (the metadata server \
                     fallback failed: {})",
                    root_cause(&e)
                )))
            }
            Err(e) if e.is_transient() => Err(BackendError::Connect {
                endpoint: "the Google token service".into(),
                message: outer_and_root(&e),
            }),
            Err(e) => Err(BackendError::PermissionDenied(format!(
                "cannot obtain a Google access token ({}): {CREDENTIALS_HINT}",
                outer_and_root(&e)
            ))),
        }
    }

    /// The error for a non-2xx reply.
    fn status_error(&self, reply: &Reply, not_found: NotFoundMeans) -> BackendError {
        status_error(
            reply.status,
            reply.retry_after,
            &reply.body,
            not_found,
            &self.inner.bucket,
        )
    }
}

/// Refuses names GCS forbids before they reach a URL: "." or ".." would be
/// resolved as dot segments and address the bucket instead of an object.
fn check_name(name: &str) -> Result<(), BackendError> {
    crate::validate_object_name(name).map_err(|e| BackendError::Rejected {
        status: 400,
        message: format!("{e} (refused before sending)"),
    })
}

#[async_trait]
impl Backend for GcsBackend {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        check_name(name)?;
        let mut query = vec![("uploadType", "multipart".to_owned())];
        query.extend(condition_query(condition));
        let (content_type, body) = multipart_body(name, metadata)?;
        let reply = self
            .execute(Method::POST, self.upload_url(), name, |r| {
                r.query(&query)
                    .header(CONTENT_TYPE, content_type)
                    .body(body)
            })
            .await?;
        if !is_success(reply.status) {
            return Err(self.status_error(&reply, NotFoundMeans::Bucket));
        }
        Ok(Stamped {
            value: parse_object(&reply.body, "upload", name)?,
            server_time: reply.date,
        })
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        check_name(name)?;
        let reply = self
            .execute(Method::GET, self.object_url(name), name, |r| r)
            .await?;
        let value = if is_success(reply.status) {
            Some(parse_object(&reply.body, "get", name)?)
        } else {
            match self.status_error(&reply, NotFoundMeans::Object) {
                BackendError::NotFound => None,
                err => return Err(err),
            }
        };
        Ok(Stamped {
            value,
            server_time: reply.date,
        })
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        check_name(name)?;
        let query = condition_query(WriteCondition::Matches(expected));
        let body = serde_json::json!({ "metadata": metadata });
        let reply = self
            .execute(Method::PATCH, self.object_url(name), name, |r| {
                r.query(&query).json(&body)
            })
            .await?;
        if !is_success(reply.status) {
            return Err(self.status_error(&reply, NotFoundMeans::Object));
        }
        Ok(Stamped {
            value: parse_object(&reply.body, "metadata update", name)?,
            server_time: reply.date,
        })
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        check_name(name)?;
        let query = condition_query(WriteCondition::Matches(expected));
        let reply = self
            .execute(Method::DELETE, self.object_url(name), name, |r| {
                r.query(&query)
            })
            .await?;
        // GCS answers 204; some emulators 200 with a body. Either way it is gone.
        if is_success(reply.status) {
            Ok(())
        } else {
            Err(self.status_error(&reply, NotFoundMeans::Object))
        }
    }

    async fn list(&self, prefix: &str) -> Result<Stamped<Vec<ObjectInfo>>, BackendError> {
        let mut objects = Vec::new();
        let mut page_token: Option<String> = None;
        let server_time = loop {
            let mut query = vec![("prefix", prefix.to_owned())];
            if let Some(size) = self.inner.list_page_size {
                query.push(("maxResults", size.to_string()));
            }
            if let Some(token) = &page_token {
                query.push(("pageToken", token.clone()));
            }
            let reply = self
                .execute(Method::GET, self.objects_url(), prefix, |r| r.query(&query))
                .await?;
            if !is_success(reply.status) {
                return Err(self.status_error(&reply, NotFoundMeans::Bucket));
            }
            let page: ListPage = serde_json::from_slice(&reply.body).map_err(|e| {
                invalid_body(
                    "list",
                    prefix,
                    &format!("not an object list ({e})"),
                    &reply.body,
                )
            })?;
            for raw in page.items {
                objects.push(raw.into_info());
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                // A server repeating a token would otherwise loop forever.
                Some(token) if page_token.as_ref() == Some(&token) => {
                    return Err(BackendError::InvalidResponse(format!(
                        "list of prefix {prefix:?}: the server returned the same page token twice"
                    )));
                }
                Some(token) => page_token = Some(token),
                None => break reply.date,
            }
        };
        // The API lists in name order; sort anyway so the contract never depends on it.
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Stamped {
            value: objects,
            server_time,
        })
    }

    /// `gs://BUCKET` whatever the endpoint: lock URLs in messages stay the ones users
    /// wrote (connection errors name the endpoint themselves).
    fn describe(&self) -> String {
        format!("gs://{}", self.inner.bucket)
    }

    /// GCS sustains about one mutation per second per object name; emulators have
    /// no such limit, so only the production endpoint declares it.
    fn min_mutation_interval(&self) -> Option<Duration> {
        (self.inner.endpoint.base == DEFAULT_ENDPOINT).then_some(Duration::from_secs(1))
    }
}

/// Bodies of ordinary objects, for fenced writes: a multipart upload whose media
/// part is streamed (never buffered whole), and a streamed `alt=media` download.
#[async_trait]
impl ObjectBodies for GcsBackend {
    async fn upload(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
        body: UploadBody,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        check_name(name)?;
        let mut query = vec![("uploadType", "multipart".to_owned())];
        query.extend(condition_query(condition));
        let frame = multipart_frame(name, metadata)?;
        // Announced up front, so the request is not chunked and GCS knows the size.
        let length = frame.head.len() as u64 + body.len() + frame.tail.len() as u64;
        let head = bytes::Bytes::from(frame.head);
        let tail = bytes::Bytes::from(frame.tail);
        let stream = stream::once(async move { Ok(head) })
            .chain(body.into_stream())
            .chain(stream::once(async move { Ok(tail) }));
        let timeout = self.inner.body_timeout;
        let reply = self
            .execute(Method::POST, self.upload_url(), name, |r| {
                r.query(&query)
                    .header(CONTENT_TYPE, frame.content_type)
                    .header(CONTENT_LENGTH, length)
                    .body(reqwest::Body::wrap_stream(stream))
                    .timeout(timeout)
            })
            .await?;
        if !is_success(reply.status) {
            return Err(self.status_error(&reply, NotFoundMeans::Bucket));
        }
        Ok(Stamped {
            value: parse_object(&reply.body, "upload", name)?,
            server_time: reply.date,
        })
    }

    async fn download(
        &self,
        name: &str,
        expected: ObjectVersion,
    ) -> Result<Download, BackendError> {
        check_name(name)?;
        let mut query = condition_query(WriteCondition::Matches(expected));
        query.push(("alt", "media".to_owned()));
        let method = Method::GET;
        let timeout = self.inner.body_timeout;
        // Only until the headers arrive: a long streamed download must not hold a
        // slot that lease refreshes need.
        let slot = self.slot().await?;
        let response = self
            .send(&method, self.object_url(name), name, |r| {
                r.query(&query).timeout(timeout)
            })
            .await?;
        drop(slot);
        let status = response.status().as_u16();
        if !is_success(status) {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = self.read_body(response).await?;
            tracing::debug!(%method, object = name, status, "GCS download refused");
            return Err(status_error(
                status,
                retry_after,
                &body,
                NotFoundMeans::Object,
                &self.inner.bucket,
            ));
        }
        // An endpoint that ignores the preconditions still says what it sent.
        let header = |key: &str| {
            response
                .headers()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let served = (header("x-goog-generation"), header("x-goog-metageneration"));
        if served.0.is_some_and(|g| g != expected.generation)
            || served.1.is_some_and(|m| m != expected.metageneration)
        {
            return Err(BackendError::PreconditionFailed);
        }
        let len = response.content_length();
        let idle = self.inner.request_timeout;
        let backend = self.clone();
        let stream = stream::try_unfold(
            (response, backend),
            move |(mut response, backend)| async move {
                match tokio::time::timeout(idle, response.chunk()).await {
                    Err(_) => Err(BackendError::Timeout(idle)),
                    Ok(Err(e)) => Err(backend.classify_transport(&e)),
                    Ok(Ok(None)) => Ok(None),
                    Ok(Ok(Some(chunk))) => Ok(Some((chunk, (response, backend)))),
                }
            },
        );
        Ok(Download {
            version: expected,
            len,
            stream: stream.boxed(),
        })
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn condition_query(condition: WriteCondition) -> Vec<(&'static str, String)> {
    match condition {
        WriteCondition::DoesNotExist => vec![("ifGenerationMatch", "0".to_owned())],
        WriteCondition::Matches(version) => vec![
            ("ifGenerationMatch", version.generation.to_string()),
            ("ifMetagenerationMatch", version.metageneration.to_string()),
        ],
    }
}

fn encode_segment(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// A multipart/related body: the object resource (name and metadata, so both are
/// set atomically) and an empty media part.
fn multipart_body(name: &str, metadata: &Metadata) -> Result<(String, Vec<u8>), BackendError> {
    let frame = multipart_frame(name, metadata)?;
    let body = [frame.head.as_bytes(), frame.tail.as_bytes()].concat();
    Ok((frame.content_type, body))
}

/// What surrounds the media of a multipart/related upload.
struct MultipartFrame {
    content_type: String,
    /// The JSON part and the media part's headers.
    head: String,
    /// The closing delimiter.
    tail: String,
}

/// The frame of a multipart upload whose media is streamed between `head` and
/// `tail`. The boundary is random (128 bits), so media bytes cannot realistically
/// contain it; the JSON part, which is known, is checked.
fn multipart_frame(name: &str, metadata: &Metadata) -> Result<MultipartFrame, BackendError> {
    let resource = serde_json::json!({ "name": name, "metadata": metadata });
    let json = serde_json::to_string(&resource)
        .map_err(|e| BackendError::InvalidResponse(format!("cannot encode metadata: {e}")))?;
    let mut boundary = format!("gcslock-{:032x}", rand::random::<u128>());
    while json.contains(&boundary) {
        boundary = format!("gcslock-{:032x}", rand::random::<u128>());
    }
    Ok(MultipartFrame {
        content_type: format!("multipart/related; boundary={boundary}"),
        head: format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ),
        tail: format!("\r\n--{boundary}--\r\n"),
    })
}

/// The object resource fields the lock needs.
#[derive(Deserialize)]
struct RawObject {
    name: String,
    #[serde(deserialize_with = "int64")]
    generation: i64,
    #[serde(deserialize_with = "int64")]
    metageneration: i64,
    updated: DateTime<Utc>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

impl RawObject {
    fn into_info(self) -> ObjectInfo {
        ObjectInfo {
            name: self.name,
            version: ObjectVersion {
                generation: self.generation,
                metageneration: self.metageneration,
            },
            updated: self.updated,
            metadata: self.metadata.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    items: Vec<RawObject>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

/// GCS sends int64 as JSON strings; accept numbers too.
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Number(i64),
        Text(String),
    }
    match Int64::deserialize(deserializer)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an int64"))),
    }
}

fn parse_object(body: &[u8], operation: &str, name: &str) -> Result<ObjectInfo, BackendError> {
    serde_json::from_slice::<RawObject>(body)
        .map(RawObject::into_info)
        .map_err(|e| {
            let mut why = format!("not an object resource ({e})");
            if e.to_string().contains("metageneration") {
                // fake-gcs-server's PATCH response lacks it; say so instead of puzzling users.
                why.push_str("; fake-gcs-server omits metageneration in PATCH responses, see fake-gcs/README.md");
            }
            invalid_body(operation, name, &why, body)
        })
}

fn invalid_body(operation: &str, name: &str, why: &str, body: &[u8]) -> BackendError {
    BackendError::InvalidResponse(format!(
        "{operation} of {name:?}: {why}; body: {}",
        snippet(body)
    ))
}

/// Maps a non-2xx status to the error the trait documents.
fn status_error(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    not_found: NotFoundMeans,
    bucket: &str,
) -> BackendError {
    let message = error_message(body);
    match status {
        412 => BackendError::PreconditionFailed,
        404 => {
            if not_found == NotFoundMeans::Bucket || is_bucket_missing(&message) {
                BackendError::BucketNotFound(bucket.to_owned())
            } else {
                BackendError::NotFound
            }
        }
        429 => BackendError::RateLimited { retry_after },
        401 | 403 => BackendError::PermissionDenied(format!("HTTP {status}: {message}")),
        500..=599 => BackendError::Server { status, message },
        _ => BackendError::Rejected { status, message },
    }
}

/// GCS says "The specified bucket does not exist." for buckets and
/// "No such object: ..." for objects, with the same status and reason.
fn is_bucket_missing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("bucket does not exist")
        || message.contains("no such bucket")
        || message.contains("nosuchbucket")
}

/// The message of a JSON error body (`{"error":{"message":...}}`, or OAuth's
/// `{"error":"...","error_description":"..."}`), else a snippet of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &value["error"];
        let message = error["message"]
            .as_str()
            .or_else(|| error["errors"][0]["message"].as_str())
            .map(str::to_owned)
            .or_else(|| {
                error
                    .as_str()
                    .map(|e| match value["error_description"].as_str() {
                        Some(description) => format!("{e}: {description}"),
                        None => e.to_owned(),
                    })
            });
        if let Some(message) = message {
            return truncate(&message, 2 * SNIPPET_CHARS);
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        "(empty response body)".to_owned()
    } else {
        snippet(body)
    }
}

/// A short, single-line excerpt of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        "(empty)".to_owned()
    } else {
        truncate(&collapsed, SNIPPET_CHARS)
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// An HTTP `Date` (IMF-fixdate, "Wed, 25 Nov 2026 03:12:47 GMT").
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// `Retry-After` in seconds; the HTTP-date form is not used by GCS.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut root = err;
    while let Some(source) = root.source() {
        root = source;
    }
    truncate(&root.to_string(), 2 * SNIPPET_CHARS)
}

/// An error's own message and, when it adds something, its root cause
/// (the credentials library nests long, repetitive messages).
fn outer_and_root(err: &dyn std::error::Error) -> String {
    let outer = err.to_string();
    let root = root_cause(err);
    let text = if root.is_empty() || outer.contains(&root) {
        outer
    } else {
        format!("{outer}: {root}")
    };
    truncate(&text, 2 * SNIPPET_CHARS)
}

/// An error and its sources, joined with ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    if let Some(sources) = source_chain(err) {
        text.push_str(": ");
        text.push_str(&sources);
    }
    text
}

/// Only the sources of an error (reqwest's top level repeats the URL).
fn source_chain(err: &dyn std::error::Error) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(err) = source {
        let text = err.to_string();
        // Wrappers often repeat their source's message.
        if parts.last() != Some(&text) && !text.is_empty() {
            parts.push(text);
        }
        source = err.source();
    }
    (!parts.is_empty()).then(|| truncate(&parts.join(": "), 4 * SNIPPET_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution_order_and_credentials() {
        let default = resolve_endpoint(None, None).expect("default");
        assert_eq!(default.base, DEFAULT_ENDPOINT);
        assert!(default.authenticated);

        // The emulator host never gets credentials, whatever its scheme.
        for (raw, base) in [
            ("127.0.0.1:4443", "http://127.0.0.1:4443"),
            ("http://127.0.0.1:4443/", "http://127.0.0.1:4443"),
            ("https://emulator.local:8443", "https://emulator.local:8443"),
            ("localhost:9000", "http://localhost:9000"),
        ] {
            let e = resolve_endpoint(None, Some(raw)).expect(raw);
            assert_eq!(e.base, base, "{raw}");
            assert!(!e.authenticated, "{raw}");
        }
        // Empty values count as unset, like the Google client libraries.
        assert_eq!(
            resolve_endpoint(Some(" "), Some("")).expect("empty").base,
            DEFAULT_ENDPOINT
        );

        // The explicit endpoint wins; only https carries credentials.
        let e =
            resolve_endpoint(Some("http://127.0.0.1:1"), Some("127.0.0.1:2")).expect("explicit");
        assert_eq!(e.base, "http://127.0.0.1:1");
        assert!(!e.authenticated);
        let e = resolve_endpoint(Some("https://proxy.example/gcs/"), Some("127.0.0.1:2"))
            .expect("https");
        assert_eq!(e.base, "https://proxy.example/gcs");
        assert!(e.authenticated);
        let e = resolve_endpoint(Some("https://storage.googleapis.com/"), None).expect("prod");
        assert!(e.base == DEFAULT_ENDPOINT && e.authenticated);
    }

    #[test]
    fn bad_endpoints_are_invalid_input() {
        for (raw, why) in [
            ("ftp://host:21", "unsupported scheme"),
            ("http://user:pw@host:1", "user names"),
            ("http://host:1/?x=1", "query"),
            ("http://", "http://"),
            ("http://host:99999", "invalid"),
        ] {
            let err = resolve_endpoint(Some(raw), None).expect_err(raw);
            assert!(matches!(err, Error::InvalidInput(_)), "{raw}: {err:?}");
            assert!(err.to_string().contains(why), "{raw}: {err}");
        }
        let err = resolve_endpoint(None, Some("gopher://x")).expect_err("scheme");
        assert!(err.to_string().contains(EMULATOR_HOST_VAR), "{err}");
    }

    #[test]
    fn builder_validates_and_describes() {
        let err = GcsBackend::builder("Bad_Bucket")
            .build_with(None)
            .expect_err("bucket");
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");

        let b = GcsBackend::builder("my-bucket")
            .build_with(None)
            .expect("prod");
        assert_eq!(b.describe(), "gs://my-bucket");
        assert!(b.sends_credentials());

        let b = GcsBackend::builder("my-bucket")
            .build_with(Some("127.0.0.1:4443"))
            .expect("emulator");
        assert_eq!(b.describe(), "gs://my-bucket");
        assert_eq!(b.endpoint(), "http://127.0.0.1:4443");
        assert!(!b.sends_credentials());
        let debug = format!("{b:?}");
        assert!(debug.contains("none (emulator)"), "{debug}");

        let b = GcsBackend::builder("my-bucket")
            .endpoint(Some("https://proxy.example".into()))
            .build_with(Some("127.0.0.1:4443"))
            .expect("explicit");
        assert!(b.sends_credentials());
        assert!(format!("{b:?}").contains("<elided>"));
    }

    #[test]
    fn object_names_are_one_path_segment() {
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            encode_segment("jobs/nightly-1.lock_~"),
            "jobs%2Fnightly-1.lock_~"
        );
        assert_eq!(encode_segment("é✓"), "%C3%A9%E2%9C%93");
        assert_eq!(encode_segment("a+b?c#d%e&f"), "a%2Bb%3Fc%23d%25e%26f");
        let b = GcsBackend::builder("bkt")
            .build_with(Some("h:1"))
            .expect("backend");
        assert_eq!(
            b.object_url("a/b c"),
            "http://h:1/storage/v1/b/bkt/o/a%2Fb%20c"
        );
    }

    #[test]
    fn dot_names_are_refused_before_sending() {
        for name in ["", ".", ".."] {
            assert!(
                matches!(check_name(name), Err(BackendError::Rejected { .. })),
                "{name:?}"
            );
        }
        assert!(check_name("a/./b").is_ok());
    }

    #[test]
    fn http_dates() {
        let date = parse_http_date("Wed, 25 Nov 2026 03:12:47 GMT").expect("imf-fixdate");
        assert_eq!(date.to_rfc3339(), "2026-11-25T03:12:47+00:00");
        assert!(parse_http_date("yesterday").is_none());
        assert!(parse_http_date("").is_none());
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 25 Nov 2026 03:12:47 GMT"), None);
    }

    #[test]
    fn object_resources_parse_with_string_or_number_ints() {
        let body = br#"{"name":"a/b","generation":"1795576686794863","metageneration":"2",
            "updated":"2026-11-25T03:18:06.794853Z","metadata":{"k":"v"},"size":"0"}"#;
        let info = parse_object(body, "get", "a/b").expect("parse");
        assert_eq!(info.name, "a/b");
        assert_eq!(info.version.generation, 1_795_576_686_794_863);
        assert_eq!(info.version.metageneration, 2);
        assert_eq!(info.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            info.updated.to_rfc3339(),
            "2026-11-25T03:18:06.794853+00:00"
        );

        let body =
            br#"{"name":"x","generation":5,"metageneration":1,"updated":"2026-11-25T03:18:06Z"}"#;
        let info = parse_object(body, "get", "x").expect("numbers, no metadata");
        assert_eq!(
            info.version,
            ObjectVersion {
                generation: 5,
                metageneration: 1
            }
        );
        assert!(info.metadata.is_empty());
    }

    #[test]
    fn wrong_shapes_are_invalid_responses_with_a_snippet() {
        let err = parse_object(b"<html>\n  hello </html>", "get", "x").expect_err("html");
        let text = err.to_string();
        assert!(matches!(err, BackendError::InvalidResponse(_)));
        assert!(text.contains("<html> hello </html>"), "{text}");

        // fake-gcs-server's PATCH response: no metageneration.
        let body =
            br#"{"name":"x","generation":"5","updated":"2026-11-25T03:18:06Z","metadata":{}}"#;
        let text = parse_object(body, "metadata update", "x")
            .expect_err("shape")
            .to_string();
        assert!(text.contains("metageneration"), "{text}");

        let big = "x".repeat(10_000);
        let text = parse_object(big.as_bytes(), "get", "x")
            .expect_err("big")
            .to_string();
        assert!(text.len() < 1_000, "{}", text.len());

        let body = br#"{"name":"x","generation":"five","metageneration":"1","updated":"2026-11-25T03:18:06Z"}"#;
        assert!(parse_object(body, "get", "x").is_err());
    }

    #[test]
    fn statuses_map_to_backend_errors() {
        let gcs_error = |code: u16, message: &str| {
            serde_json::json!({"error": {"code": code, "message": message,
                "errors": [{"domain": "global", "reason": "x", "message": message}]}})
            .to_string()
            .into_bytes()
        };
        let map = |status, body: &[u8], nf| status_error(status, None, body, nf, "bkt");

        assert!(matches!(
            map(
                412,
                &gcs_error(412, "Precondition Failed"),
                NotFoundMeans::Object
            ),
            BackendError::PreconditionFailed
        ));
        assert!(matches!(
            map(
                404,
                &gcs_error(404, "No such object: bkt/x"),
                NotFoundMeans::Object
            ),
            BackendError::NotFound
        ));
        assert!(matches!(
            map(404, b"", NotFoundMeans::Object),
            BackendError::NotFound
        ));
        assert!(matches!(
            map(404, &gcs_error(404, "The specified bucket does not exist."), NotFoundMeans::Object),
            BackendError::BucketNotFound(b) if b == "bkt"
        ));
        assert!(matches!(
            map(404, &gcs_error(404, "Not Found"), NotFoundMeans::Bucket),
            BackendError::BucketNotFound(_)
        ));
        assert!(matches!(
            status_error(429, Some(Duration::from_secs(3)), b"", NotFoundMeans::Object, "bkt"),
            BackendError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)
        ));
        match map(
            503,
            b"<html><body>\n<h1>Service Unavailable</h1></body></html>",
            NotFoundMeans::Object,
        ) {
            BackendError::Server {
                status: 503,
                message,
            } => {
                assert!(message.contains("Service Unavailable"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match map(
            403,
            &gcs_error(403, "x@y does not have storage.objects.get access"),
            NotFoundMeans::Object,
        ) {
            BackendError::PermissionDenied(message) => {
                assert!(message.contains("storage.objects.get"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match map(
            401,
            br#"{"error":"invalid_token","error_description":"expired"}"#,
            NotFoundMeans::Object,
        ) {
            BackendError::PermissionDenied(message) => {
                assert!(message.contains("invalid_token: expired"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map(400, &gcs_error(400, "Invalid argument."), NotFoundMeans::Object),
            BackendError::Rejected { status: 400, message } if message == "Invalid argument."
        ));
        assert!(matches!(
            map(500, b"  ", NotFoundMeans::Object),
            BackendError::Server { status: 500, message } if message == "(empty response body)"
        ));
    }

    #[test]
    fn multipart_body_carries_name_and_metadata() {
        let metadata = Metadata::from([("holder".to_owned(), "h \"1\"".to_owned())]);
        let (content_type, body) = multipart_body("a/b", &metadata).expect("body");
        let boundary = content_type
            .strip_prefix("multipart/related; boundary=")
            .expect("boundary");
        let body = String::from_utf8(body).expect("utf-8");
        assert!(body.starts_with(&format!("--{boundary}\r\n")), "{body}");
        assert!(body.ends_with(&format!("\r\n--{boundary}--\r\n")), "{body}");
        let json_start = body.find('{').expect("json");
        let json_end = body.rfind('}').expect("json") + 1;
        let resource: serde_json::Value =
            serde_json::from_str(&body[json_start..json_end]).expect("json part");
        assert_eq!(resource["name"], "a/b");
        assert_eq!(resource["metadata"]["holder"], "h \"1\"");
        assert!(body.contains("Content-Type: application/octet-stream\r\n\r\n\r\n--"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
