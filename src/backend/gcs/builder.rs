//! Building a [`GcsBackend`]: endpoint choice (explicit, then
//! `STORAGE_EMULATOR_HOST`, then production), timeouts and the HTTP client. TLS
//! by default; plain HTTP only toward an endpoint chosen on purpose, and then
//! without credentials.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;

use super::client::{error_chain, MAX_IN_FLIGHT};
use super::credentials::Auth;
use super::{GcsBackend, Inner, DEFAULT_ENDPOINT, EMULATOR_HOST_VAR};
use crate::backend::{BackendError, DEFAULT_REQUEST_TIMEOUT};
use crate::Error;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Object bodies may be large: an upload or download may take this long in all.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where requests go and whether they carry credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// Scheme, host, port and optional path, without a trailing '/'.
    pub(super) base: String,
    /// True only for HTTPS endpoints that are not `STORAGE_EMULATOR_HOST`.
    pub(super) authenticated: bool,
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

    /// The longest one upload or download of an object body ([`crate::backend::ObjectBodies`]) may
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

    pub(super) fn build_with(self, emulator_host: Option<&str>) -> Result<GcsBackend, Error> {
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
        let auth = endpoint.authenticated.then(|| Auth::new(self.credentials));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend as _;

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
}
