//! The HTTP core: one request per call under a cap on requests in flight,
//! reading responses whole (bounded), and mapping statuses and transport failures
//! to [`BackendError`]s with short, credential-free messages.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{DATE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder};

use super::GcsBackend;
use crate::backend::BackendError;

/// Lock objects and list pages are small; anything bigger is not the API talking.
const MAX_BODY_BYTES: usize = 32 << 20;
/// How much of an unexpected body goes into an error message.
const SNIPPET_CHARS: usize = 200;

/// Everything but RFC 3986 unreserved characters, so a name is one path segment
/// ('/' becomes %2F).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Requests in flight per backend, and idle connections kept per host.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// What a 404 means for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotFoundMeans {
    /// The request names an object: a 404 is about the object unless the
    /// server says the bucket is missing.
    Object,
    /// Uploads and lists need only the bucket: a 404 is about the bucket.
    Bucket,
}

/// A response, read completely.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) date: Option<DateTime<Utc>>,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Vec<u8>,
}

impl GcsBackend {
    pub(super) fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket),
            encode_segment(name)
        )
    }

    pub(super) fn objects_url(&self) -> String {
        format!(
            "{}/storage/v1/b/{}/o",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket)
        )
    }

    pub(super) fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.inner.endpoint.base,
            encode_segment(&self.inner.bucket)
        )
    }

    /// One of the `MAX_IN_FLIGHT` request slots; hold it until the response is read.
    pub(super) async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BackendError> {
        self.inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| BackendError::Transport("the HTTP client was shut down".into()))
    }

    /// Sends one request and returns the response once its headers arrived.
    /// Transport failures become errors here; HTTP statuses are left to the caller.
    pub(super) async fn send(
        &self,
        method: &Method,
        url: String,
        object: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let mut request = build(self.inner.client.request(method.clone(), url));
        if let Some(auth) = &self.inner.auth {
            request = request.headers(auth.headers(self.inner.request_timeout).await?);
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
    pub(super) async fn execute(
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

    pub(super) async fn read_body(
        &self,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, BackendError> {
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

    pub(super) fn classify_transport(&self, err: &reqwest::Error) -> BackendError {
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

    /// The error for a non-2xx reply.
    pub(super) fn status_error(&self, reply: &Reply, not_found: NotFoundMeans) -> BackendError {
        status_error(
            reply.status,
            reply.retry_after,
            &reply.body,
            not_found,
            &self.inner.bucket,
        )
    }
}

pub(super) fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

pub(super) fn encode_segment(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// Maps a non-2xx status to the error the trait documents.
pub(super) fn status_error(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    not_found: NotFoundMeans,
    bucket: &str,
) -> BackendError {
    let message = error_message(body);
    match status {
        412 => BackendError::PreconditionFailed,
        404 if !is_gcs_not_found(body) => BackendError::InvalidResponse(format!(
            "this endpoint does not answer like Google Cloud Storage (HTTP 404: {message}); \
             is the endpoint right?"
        )),
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

/// Whether a 404's body is one GCS (or an emulator of it) sends: its JSON error
/// (`{"error":{"code":404,"message":...}}`), the plain text of a media download
/// ("No such object: b/o"), or nothing. Any other server's 404 (an HTML page, "404
/// page not found") means the endpoint is not GCS: calling it "no such bucket" or
/// "free" would mislead.
fn is_gcs_not_found(body: &[u8]) -> bool {
    if body.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &value["error"];
        return error["code"].is_u64() || error["message"].is_string();
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.starts_with("no such object") || is_bucket_missing(&text)
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
pub(super) fn error_message(body: &[u8]) -> String {
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
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        "(empty)".to_owned()
    } else {
        truncate(&collapsed, SNIPPET_CHARS)
    }
}

pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// An HTTP `Date` (IMF-fixdate, "Wed, 25 Nov 2026 03:12:47 GMT").
pub(super) fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// `Retry-After` in seconds; the HTTP-date form is not used by GCS.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) fn root_cause(err: &dyn std::error::Error) -> String {
    let mut root = err;
    while let Some(source) = root.source() {
        root = source;
    }
    truncate(&root.to_string(), 2 * SNIPPET_CHARS)
}

/// An error's own message and, when it adds something, its root cause
/// (the credentials library nests long, repetitive messages).
pub(super) fn outer_and_root(err: &dyn std::error::Error) -> String {
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
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    if let Some(sources) = source_chain(err) {
        text.push_str(": ");
        text.push_str(&sources);
    }
    text
}

/// Only the sources of an error (reqwest's top level repeats the URL).
pub(super) fn source_chain(err: &dyn std::error::Error) -> Option<String> {
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
    fn http_dates() {
        let date = parse_http_date("Wed, 25 Nov 2026 03:12:47 GMT").expect("imf-fixdate");
        assert_eq!(date.to_rfc3339(), "2026-11-25T03:12:47+00:00");
        assert!(parse_http_date("yesterday").is_none());
        assert!(parse_http_date("").is_none());
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 25 Nov 2026 03:12:47 GMT"), None);
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
    fn a_404_that_is_not_from_gcs_says_so() {
        let map = |body: &[u8], nf| status_error(404, None, body, nf, "bkt");
        for body in [
            &b"<html><body><h1>404 Not Found</h1></body></html>"[..],
            b"404 page not found\n",
            br#"{"detail": "Not Found"}"#,
        ] {
            for means in [NotFoundMeans::Object, NotFoundMeans::Bucket] {
                match map(body, means) {
                    BackendError::InvalidResponse(message) => assert!(
                        message.contains("does not answer like Google Cloud Storage"),
                        "{message}"
                    ),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(matches!(
            map(b"No such object: bkt/x", NotFoundMeans::Object),
            BackendError::NotFound
        ));
        assert!(matches!(
            map(
                br#"{"error":{"code":404,"message":"Not Found"}}"#,
                NotFoundMeans::Bucket
            ),
            BackendError::BucketNotFound(_)
        ));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
