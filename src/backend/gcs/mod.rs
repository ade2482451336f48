//! The GCS JSON API (v1) over reqwest: each [`Backend`] call is exactly one request
//! (`list` is one per page).
//!
//! Endpoint choice follows the Google client libraries: an explicit endpoint wins,
//! then `STORAGE_EMULATOR_HOST` (an emulator: no credentials), then
//! `https://storage.googleapis.com` with Application Default Credentials. A bearer
//! token is only ever sent over HTTPS.
//!
//! Layout: `builder` (endpoint choice, client), `credentials` (Google
//! credentials), `client` (requests, the in-flight cap, status mapping), `model`
//! (the JSON object model), `multipart` (upload bodies).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;

use super::{
    Backend, BackendError, Download, Metadata, ObjectBodies, ObjectInfo, ObjectVersion, Stamped,
    UploadBody, WriteCondition,
};

mod builder;
mod client;
mod credentials;
mod model;
mod multipart;

use builder::Endpoint;
pub use builder::GcsBackendBuilder;
use client::{is_success, parse_retry_after, status_error, NotFoundMeans};
use credentials::Auth;
use model::{condition_query, invalid_body, parse_object, ListPage};
use multipart::multipart_frame;

/// The production endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The Google client libraries' convention for pointing at an emulator.
pub const EMULATOR_HOST_VAR: &str = "STORAGE_EMULATOR_HOST";

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

impl GcsBackend {
    /// The bucket this backend reads and writes.
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
}

/// Refuses names GCS forbids before they reach a URL: "." or ".." would be
/// resolved as dot segments and address the bucket instead of an object.
fn check_name(name: &str) -> Result<(), BackendError> {
    crate::validate_object_name(name).map_err(|e| BackendError::Rejected {
        status: 400,
        message: format!("{e} (refused before sending)"),
    })
}

impl GcsBackend {
    /// One multipart upload (`uploadType=multipart`) of `body` with exactly
    /// `metadata`, only if `condition` holds. An in-memory body goes out as one
    /// buffer; a streamed one is streamed, its length announced up front so GCS
    /// knows the size. `timeout` replaces the request timeout (long bodies).
    async fn upload_object(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
        body: UploadBody,
        timeout: Option<Duration>,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        check_name(name)?;
        let mut query = vec![("uploadType", "multipart".to_owned())];
        query.extend(condition_query(condition));
        let frame = multipart_frame(name, metadata)?;
        let length = (frame.head.len() as u64)
            .checked_add(body.len())
            .and_then(|n| n.checked_add(frame.tail.len() as u64))
            .ok_or_else(|| BackendError::Rejected {
                status: 400,
                message: "the upload is too large".into(),
            })?;
        let (head, tail) = (Bytes::from(frame.head), Bytes::from(frame.tail));
        let payload = match body.into_memory() {
            Ok(bytes) => reqwest::Body::from([head, bytes, tail].concat()),
            Err(body) => reqwest::Body::wrap_stream(
                stream::once(async move { Ok(head) })
                    .chain(body.into_stream())
                    .chain(stream::once(async move { Ok(tail) })),
            ),
        };
        let reply = self
            .execute(Method::POST, self.upload_url(), name, |r| {
                let r = r
                    .query(&query)
                    .header(CONTENT_TYPE, frame.content_type)
                    .header(CONTENT_LENGTH, length)
                    .body(payload);
                match timeout {
                    Some(timeout) => r.timeout(timeout),
                    None => r,
                }
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
}

#[async_trait]
impl Backend for GcsBackend {
    /// The lock's metadata-only create: an upload with an empty body.
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        let empty = UploadBody::from_bytes(Bytes::new());
        self.upload_object(name, condition, metadata, empty, None)
            .await
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

    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError> {
        let mut objects = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
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
            // Each object is judged by the clock reading of its own page: a later
            // page's reading would make it look older than it was when listed.
            objects.extend(page.items.into_iter().map(|raw| Stamped {
                value: raw.into_info(),
                server_time: reply.date,
            }));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                // A server repeating a token would otherwise loop forever.
                Some(token) if page_token.as_ref() == Some(&token) => {
                    return Err(BackendError::InvalidResponse(format!(
                        "list of prefix {prefix:?}: the server returned the same page token twice"
                    )));
                }
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        // The API lists in name order; sort anyway so the contract never depends on it.
        objects.sort_by(|a, b| a.value.name.cmp(&b.value.name));
        Ok(objects)
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
        let timeout = self.inner.body_timeout;
        self.upload_object(name, condition, metadata, body, Some(timeout))
            .await
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

#[cfg(test)]
mod tests {
    use super::client::encode_segment;
    use super::*;

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
}
