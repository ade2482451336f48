//! The GCS JSON API subset: buckets, uploads, get, patch, delete, list.
//!
//! Every object request runs in three steps: decode and validate it (400s), suffer
//! the faults drawn for it, then run it against the bucket's model while holding
//! the bucket's lock, so its precondition check and its mutation are one atomic step.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::{Backend, BackendError, Metadata, ObjectInfo, WriteCondition};
use serde_json::{json, Value};

use crate::error::GcsError;
use crate::multipart;
use crate::precondition::{Preconditions, Query};
use crate::resource::{bucket_json, etag, http_date, object_json, Attrs};
use crate::server::ConnHandle;
use crate::state::{AppState, Bucket, BucketState};

pub type SharedState = Arc<AppState>;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
const MAX_LIST_RESULTS: usize = 1000;

/// List parameters GCS has and strict-gcs does not model: rejected, never ignored.
const UNMODELED_LIST_PARAMETERS: &[&str] = &[
    "delimiter",
    "endOffset",
    "includeFoldersAsPrefixes",
    "includeTrailingDelimiter",
    "matchGlob",
    "startOffset",
    "softDeleted",
];

type ApiResult = Result<Response, GcsError>;

// ---------------------------------------------------------------------------
// Validation helpers

fn path_error(rejection: PathRejection) -> GcsError {
    GcsError::invalid(format!("Invalid path: {}", rejection.body_text()))
}

pub(crate) fn validate_bucket_name(name: &str) -> Result<(), GcsError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let ok_ends = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(GcsError::invalid(format!("Invalid bucket name: '{name}'")))
    }
}

/// GCS's object naming rules.
fn validate_object_name(name: &str) -> Result<(), GcsError> {
    if name.is_empty() {
        return Err(GcsError::required("object name"));
    }
    if name.len() > 1024 {
        return Err(GcsError::invalid(
            "The object name is too long: at most 1024 bytes of UTF-8 are allowed.",
        ));
    }
    if name.contains(['\r', '\n']) {
        return Err(GcsError::invalid(
            "Object names must not contain carriage return or line feed characters.",
        ));
    }
    if name == "." || name == ".." || name.starts_with(".well-known/acme-challenge/") {
        return Err(GcsError::invalid(format!("Invalid object name: '{name}'")));
    }
    Ok(())
}

fn parse_json(body: &Bytes) -> Result<serde_json::Map<String, Value>, GcsError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(GcsError::parse_error("the body must be a JSON object")),
        Err(e) => Err(GcsError::parse_error(e)),
    }
}

/// Custom metadata from a JSON object: strings only; `null` values are dropped.
fn string_metadata(value: &Value) -> Result<Metadata, GcsError> {
    let Value::Object(fields) = value else {
        return Err(GcsError::invalid("metadata must be a JSON object"));
    };
    let mut metadata = Metadata::new();
    for (key, value) in fields {
        match value {
            Value::String(text) => {
                metadata.insert(key.clone(), text.clone());
            }
            Value::Null => {}
            _ => {
                return Err(GcsError::invalid(format!(
                    "metadata value for {key:?} must be a string"
                )))
            }
        }
    }
    Ok(metadata)
}

fn content_type_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------
// Buckets (never subject to faults)

pub async fn create_bucket(State(state): State<SharedState>, body: Bytes) -> ApiResult {
    let fields = parse_json(&body)?;
    let name = match fields.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(GcsError::invalid("name must be a string")),
        None => return Err(GcsError::required("name")),
    };
    validate_bucket_name(&name)?;
    let bucket = state
        .create_bucket(&name)
        .ok_or_else(GcsError::bucket_exists)?;
    Ok(Json(bucket_json(&bucket.name, bucket.created)).into_response())
}

pub async fn list_buckets(State(state): State<SharedState>) -> ApiResult {
    let items: Vec<Value> = state
        .all_buckets()
        .iter()
        .map(|b| bucket_json(&b.name, b.created))
        .collect();
    let mut list = json!({"kind": "storage#buckets"});
    if !items.is_empty() {
        list["items"] = Value::Array(items);
    }
    Ok(Json(list).into_response())
}

pub async fn get_bucket(
    State(state): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = path.map_err(path_error)?;
    let bucket = state.bucket(&name).ok_or_else(GcsError::no_such_bucket)?;
    Ok(Json(bucket_json(&bucket.name, bucket.created)).into_response())
}

// ---------------------------------------------------------------------------
// Object requests: decoding

/// What a PATCH does to the custom metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MetadataPatch {
    /// No `metadata` field.
    Keep,
    /// `"metadata": null`: remove every key.
    Clear,
    /// Per key: a new value, or `None` to remove it.
    Change(BTreeMap<String, Option<String>>),
}

#[derive(Debug)]
enum Op {
    Upload {
        bucket: String,
        name: String,
        pre: Preconditions,
        metadata: Metadata,
        content_type: String,
        body: Bytes,
    },
    Get {
        bucket: String,
        name: String,
        pre: Preconditions,
        generation: Option<i64>,
        media: bool,
    },
    Patch {
        bucket: String,
        name: String,
        pre: Preconditions,
        generation: Option<i64>,
        metadata: MetadataPatch,
        content_type: Option<String>,
    },
    Delete {
        bucket: String,
        name: String,
        pre: Preconditions,
        generation: Option<i64>,
    },
    List {
        bucket: String,
        prefix: String,
        max_results: usize,
        after: Option<String>,
    },
}

impl Op {
    fn is_mutation(&self) -> bool {
        matches!(
            self,
            Self::Upload { .. } | Self::Patch { .. } | Self::Delete { .. }
        )
    }

    fn bucket(&self) -> &str {
        match self {
            Self::Upload { bucket, .. }
            | Self::Get { bucket, .. }
            | Self::Patch { bucket, .. }
            | Self::Delete { bucket, .. }
            | Self::List { bucket, .. } => bucket,
        }
    }
}

pub async fn upload(
    State(state): State<SharedState>,
    conn: Option<Extension<ConnHandle>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let decoded = decode_upload(path, raw.as_deref(), &headers, body);
    run_decoded(state, conn, decoded).await
}

/// Runs a decoded object request, or answers why it could not be decoded.
async fn run_decoded(
    state: SharedState,
    conn: Option<Extension<ConnHandle>>,
    decoded: Result<Op, GcsError>,
) -> Response {
    match decoded {
        Ok(op) => run(state, conn.map(|Extension(c)| c), op).await,
        Err(e) => e.into_response(),
    }
}

fn decode_upload(
    path: Result<Path<String>, PathRejection>,
    raw: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Op, GcsError> {
    let Path(bucket) = path.map_err(path_error)?;
    let query = Query::parse(raw);
    let pre = Preconditions::from_query(&query)?;
    let query_name = query.get("name")?.map(str::to_owned);
    let (name, metadata, content_type, body) = match query.get("uploadType")? {
        None => {
            return Err(GcsError::invalid(
                "Upload requests must include an uploadType URL parameter and a URL-encoded object name.",
            ))
        }
        Some("media") => {
            let name = query_name.ok_or_else(|| GcsError::required("name"))?;
            let content_type =
                content_type_header(headers).unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
            (name, Metadata::new(), content_type, body)
        }
        Some("multipart") => {
            let content_type = content_type_header(headers).unwrap_or_default();
            let boundary = multipart::boundary(&content_type).map_err(GcsError::invalid)?;
            let parts = multipart::parse(&body, &boundary).map_err(|e| {
                GcsError::invalid(format!("Malformed multipart body: {e}"))
            })?;
            let [meta_part, media_part] = <[multipart::Part; 2]>::try_from(parts).map_err(|parts| {
                GcsError::invalid(format!(
                    "A multipart upload needs exactly two parts (metadata, media), not {}",
                    parts.len()
                ))
            })?;
            let fields = parse_json(&meta_part.body)?;
            let name = match (query_name, fields.get("name")) {
                (Some(name), _) => name,
                (None, Some(Value::String(name))) => name.clone(),
                (None, Some(_)) => return Err(GcsError::invalid("name must be a string")),
                (None, None) => return Err(GcsError::required("name")),
            };
            let metadata = match fields.get("metadata") {
                None | Some(Value::Null) => Metadata::new(),
                Some(value) => string_metadata(value)?,
            };
            let content_type = match fields.get("contentType") {
                Some(Value::String(ct)) if !ct.is_empty() => ct.clone(),
                Some(Value::String(_)) | None | Some(Value::Null) => media_part
                    .header("content-type")
                    .map(str::to_owned)
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
                Some(_) => return Err(GcsError::invalid("contentType must be a string")),
            };
            (name, metadata, content_type, media_part.body)
        }
        Some("resumable") => {
            return Err(GcsError::not_implemented(
                "strict-gcs does not model resumable uploads; use uploadType=multipart or media.",
            ))
        }
        Some(other) => {
            return Err(GcsError::invalid(format!(
                "Invalid upload type: '{other}'. Use media or multipart."
            )))
        }
    };
    validate_object_name(&name)?;
    Ok(Op::Upload {
        bucket,
        name,
        pre,
        metadata,
        content_type,
        body,
    })
}

type ObjectPath = Result<Path<(String, String)>, PathRejection>;

fn object_path(path: ObjectPath) -> Result<(String, String), GcsError> {
    let Path((bucket, name)) = path.map_err(path_error)?;
    validate_object_name(&name)?;
    Ok((bucket, name))
}

/// `GET /storage/v1/b/B/o/NAME` (`DOWNLOAD_URL` false) and its media-download
/// form `GET /download/storage/v1/b/B/o/NAME` (`DOWNLOAD_URL` true).
pub async fn get_object<const DOWNLOAD_URL: bool>(
    State(state): State<SharedState>,
    conn: Option<Extension<ConnHandle>>,
    path: ObjectPath,
    RawQuery(raw): RawQuery,
) -> Response {
    let decoded = decode_get(path, raw.as_deref(), DOWNLOAD_URL);
    run_decoded(state, conn, decoded).await
}

/// A metadata or media GET; the download URL form is always media.
fn decode_get(path: ObjectPath, raw: Option<&str>, download_url: bool) -> Result<Op, GcsError> {
    let (bucket, name) = object_path(path)?;
    let query = Query::parse(raw);
    let media = download_url
        || match query.get("alt")? {
            None | Some("json") => false,
            Some("media") => true,
            Some(other) => {
                return Err(GcsError::invalid(format!(
                    "Invalid value for alt: '{other}'. Use json or media."
                )))
            }
        };
    Ok(Op::Get {
        bucket,
        name,
        pre: Preconditions::from_query(&query)?,
        generation: query.get_i64("generation")?,
        media,
    })
}

pub async fn patch_object(
    State(state): State<SharedState>,
    conn: Option<Extension<ConnHandle>>,
    path: ObjectPath,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let decode = || -> Result<Op, GcsError> {
        let (bucket, name) = object_path(path)?;
        let query = Query::parse(raw.as_deref());
        let pre = Preconditions::from_query(&query)?;
        let generation = query.get_i64("generation")?;
        let fields = parse_json(&body)?;
        let metadata = match fields.get("metadata") {
            None => MetadataPatch::Keep,
            Some(Value::Null) => MetadataPatch::Clear,
            Some(Value::Object(changes)) => {
                let mut patch = BTreeMap::new();
                for (key, value) in changes {
                    let value = match value {
                        Value::String(text) => Some(text.clone()),
                        Value::Null => None,
                        _ => {
                            return Err(GcsError::invalid(format!(
                                "metadata value for {key:?} must be a string or null"
                            )))
                        }
                    };
                    patch.insert(key.clone(), value);
                }
                MetadataPatch::Change(patch)
            }
            Some(_) => return Err(GcsError::invalid("metadata must be a JSON object or null")),
        };
        let content_type = match fields.get("contentType") {
            None => None,
            Some(Value::String(ct)) if !ct.is_empty() => Some(ct.clone()),
            Some(Value::String(_)) | Some(Value::Null) => Some(DEFAULT_CONTENT_TYPE.to_owned()),
            Some(_) => return Err(GcsError::invalid("contentType must be a string")),
        };
        Ok(Op::Patch {
            bucket,
            name,
            pre,
            generation,
            metadata,
            content_type,
        })
    };
    run_decoded(state, conn, decode()).await
}

pub async fn delete_object(
    State(state): State<SharedState>,
    conn: Option<Extension<ConnHandle>>,
    path: ObjectPath,
    RawQuery(raw): RawQuery,
) -> Response {
    let decode = || -> Result<Op, GcsError> {
        let (bucket, name) = object_path(path)?;
        let query = Query::parse(raw.as_deref());
        Ok(Op::Delete {
            bucket,
            name,
            pre: Preconditions::from_query(&query)?,
            generation: query.get_i64("generation")?,
        })
    };
    run_decoded(state, conn, decode()).await
}

pub async fn list_objects(
    State(state): State<SharedState>,
    conn: Option<Extension<ConnHandle>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let decode = || -> Result<Op, GcsError> {
        let Path(bucket) = path.map_err(path_error)?;
        let query = Query::parse(raw.as_deref());
        for parameter in UNMODELED_LIST_PARAMETERS {
            if query.get(parameter)?.is_some() {
                return Err(GcsError::not_implemented(format!(
                    "strict-gcs does not model the {parameter} list parameter."
                )));
            }
        }
        if query.get_bool("versions")? == Some(true) {
            return Err(GcsError::not_implemented(
                "strict-gcs does not model object versioning (versions=true).",
            ));
        }
        let max_results = match query.get_i64("maxResults")? {
            None => MAX_LIST_RESULTS,
            Some(0) => return Err(GcsError::invalid("maxResults must be at least 1.")),
            Some(n) => usize::try_from(n)
                .unwrap_or(MAX_LIST_RESULTS)
                .min(MAX_LIST_RESULTS),
        };
        let after = query.get("pageToken")?.map(decode_page_token).transpose()?;
        Ok(Op::List {
            bucket,
            prefix: query.get("prefix")?.unwrap_or_default().to_owned(),
            max_results,
            after,
        })
    };
    run_decoded(state, conn, decode()).await
}

fn encode_page_token(last_name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_name)
}

fn decode_page_token(token: &str) -> Result<String, GcsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| GcsError::invalid(format!("Invalid page token: '{token}'")))
}

// ---------------------------------------------------------------------------
// Object requests: faults, then execution

enum Outcome {
    Respond(Response),
    /// Drop the connection without a response.
    Reset,
}

async fn run(state: SharedState, conn: Option<ConnHandle>, op: Op) -> Response {
    // The request runs in its own task, so once it has been received it completes
    // (and applies) even if the client goes away during a stall: as on GCS, a
    // request whose client timed out may still take effect.
    let task_state = state.clone();
    let outcome = tokio::spawn(async move { process(task_state, op).await }).await;
    match outcome {
        Ok(Outcome::Respond(response)) => response,
        Ok(Outcome::Reset) => match conn {
            Some(conn) => {
                conn.reset();
                // The connection task drops this future together with the connection.
                std::future::pending::<Response>().await
            }
            None => GcsError::internal("strict-gcs: cannot reset a connection it does not own")
                .into_response(),
        },
        Err(e) => {
            GcsError::internal(format!("strict-gcs: request task failed: {e}")).into_response()
        }
    }
}

async fn process(state: SharedState, op: Op) -> Outcome {
    let _in_flight = state.enter();
    let plan = state.draw_faults(op.is_mutation());
    if let Some(delay) = plan.latency {
        state.count_fault("latency");
        tokio::time::sleep(delay).await;
    }
    if let Some(duration) = plan.stall {
        state.count_fault("stall");
        state.stall(duration).await;
    }
    if plan.fail_503 {
        state.count_fault("fail_503");
        return Outcome::Respond(GcsError::unavailable().into_response());
    }
    if plan.fail_429 {
        state.count_fault("fail_429");
        return Outcome::Respond(
            GcsError::rate_limited(
                "The rate of requests is too high. Please reduce your request rate. (strict-gcs: injected 429)",
            )
            .into_response(),
        );
    }
    if plan.reset_before {
        state.count_fault("reset_before");
        return Outcome::Reset;
    }
    let response = execute(&state, op).await;
    if plan.reset_after {
        state.count_fault("reset_after");
        return Outcome::Reset;
    }
    Outcome::Respond(response)
}

async fn execute(state: &AppState, op: Op) -> Response {
    let Some(bucket) = state.bucket(op.bucket()) else {
        return GcsError::no_such_bucket().into_response();
    };
    let mut guard = bucket.state.lock().await;
    let result = match op {
        Op::Upload {
            name,
            pre,
            metadata,
            content_type,
            body,
            ..
        } => upload_object(
            state,
            &bucket,
            &mut guard,
            name,
            pre,
            metadata,
            content_type,
            body,
        ),
        Op::Get {
            name,
            pre,
            generation,
            media,
            ..
        } => read_object(&bucket, &guard, &name, pre, generation, media),
        Op::Patch {
            name,
            pre,
            generation,
            metadata,
            content_type,
            ..
        } => {
            patch(
                state,
                &bucket,
                &mut guard,
                &name,
                pre,
                generation,
                metadata,
                content_type,
            )
            .await
        }
        Op::Delete {
            name,
            pre,
            generation,
            ..
        } => delete(state, &bucket, &mut guard, &name, pre, generation).await,
        Op::List {
            prefix,
            max_results,
            after,
            ..
        } => list(&bucket, &guard, &prefix, max_results, after.as_deref()).await,
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    // Read the clock before releasing the bucket, so that `Date` is never earlier
    // than an `updated` this response or an earlier one reported.
    set_date(&mut response, &bucket.backend);
    drop(guard);
    response
}

pub fn set_date(response: &mut Response, clock: &MemoryBackend) {
    if let Ok(value) = HeaderValue::from_str(&http_date(clock.server_time())) {
        response.headers_mut().insert(header::DATE, value);
    }
}

fn from_backend(bucket: &str, name: &str, error: BackendError) -> GcsError {
    match error {
        BackendError::PreconditionFailed => GcsError::precondition_failed(),
        BackendError::NotFound => GcsError::no_such_object(bucket, name),
        BackendError::BucketNotFound(_) => GcsError::no_such_bucket(),
        other => GcsError::internal(format!("strict-gcs model error: {other}")),
    }
}

/// The live object and its body, `None` if there is none.
fn live(bucket: &Bucket, name: &str) -> Result<Option<(ObjectInfo, Bytes)>, GcsError> {
    match bucket.backend.get_object(name) {
        Ok(stamped) => Ok(Some(stamped.value)),
        Err(BackendError::NotFound) => Ok(None),
        Err(e) => Err(from_backend(&bucket.name, name, e)),
    }
}

/// The live object for a call on an existing object: 404 if missing, or if a
/// `generation` parameter names another generation (no versioning is modelled).
fn existing(
    bucket: &Bucket,
    name: &str,
    generation: Option<i64>,
) -> Result<(ObjectInfo, Bytes), GcsError> {
    match live(bucket, name)? {
        Some((info, body)) if generation.is_none_or(|g| g == info.version.generation) => {
            Ok((info, body))
        }
        _ => Err(GcsError::no_such_object(&bucket.name, name)),
    }
}

/// The live object `name` (of `generation`, if given) that a PATCH or DELETE may
/// change: the object's rate limit allows it and the preconditions hold.
fn mutable(
    state: &AppState,
    bucket: &Bucket,
    guard: &mut BucketState,
    name: &str,
    pre: Preconditions,
    generation: Option<i64>,
) -> Result<(ObjectInfo, Bytes), GcsError> {
    check_rate(state, bucket, guard, name)?;
    let (info, body) = existing(bucket, name, generation)?;
    pre.check(Some(info.version))?;
    Ok((info, body))
}

fn attrs_of(state: &BucketState, info: &ObjectInfo, size: u64) -> Attrs {
    match state.attrs.get(&info.name) {
        Some(attrs) if attrs.generation == info.version.generation => attrs.clone(),
        _ => Attrs {
            generation: info.version.generation,
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            time_created: info.updated,
            size,
        },
    }
}

fn check_rate(
    state: &AppState,
    bucket: &Bucket,
    guard: &mut BucketState,
    name: &str,
) -> Result<(), GcsError> {
    let limit = state.faults().object_rate_limit;
    if guard.within_rate_limit(name, limit) {
        return Ok(());
    }
    state.count_fault("rate_limit");
    let limit = limit.map(|l| l.to_string()).unwrap_or_default();
    Err(GcsError::rate_limited(format!(
        "The object {}/{name} exceeded the rate limit for object mutation operations \
         (create, update, and delete). Please reduce your request rate. \
         (strict-gcs: object rate limit {limit})",
        bucket.name
    )))
}

fn object_response(bucket: &Bucket, info: &ObjectInfo, attrs: &Attrs) -> Response {
    Json(object_json(&bucket.name, info, attrs)).into_response()
}

#[allow(clippy::too_many_arguments)]
fn upload_object(
    state: &AppState,
    bucket: &Bucket,
    guard: &mut BucketState,
    name: String,
    pre: Preconditions,
    metadata: Metadata,
    content_type: String,
    body: Bytes,
) -> ApiResult {
    check_rate(state, bucket, guard, &name)?;
    let current = live(bucket, &name)?.map(|(info, _)| info.version);
    pre.check(current)?;
    // The model re-checks the exact state just observed; with the bucket lock held
    // it cannot have changed, so this never fails, but it keeps the model the judge.
    let condition = match current {
        None => WriteCondition::DoesNotExist,
        Some(version) => WriteCondition::Matches(version),
    };
    let size = body.len() as u64;
    let info = bucket
        .backend
        .put_object(&name, Some(condition), &metadata, body)
        .map_err(|e| from_backend(&bucket.name, &name, e))?
        .value;
    let attrs = Attrs {
        generation: info.version.generation,
        content_type,
        time_created: info.updated,
        size,
    };
    guard.attrs.insert(name.clone(), attrs.clone());
    guard.record_mutation(&name);
    state.count_mutation("upload");
    Ok(object_response(bucket, &info, &attrs))
}

fn read_object(
    bucket: &Bucket,
    guard: &BucketState,
    name: &str,
    pre: Preconditions,
    generation: Option<i64>,
    media: bool,
) -> ApiResult {
    let (info, body) = existing(bucket, name, generation)?;
    pre.check(Some(info.version))?;
    let attrs = attrs_of(guard, &info, body.len() as u64);
    if !media {
        return Ok(object_response(bucket, &info, &attrs));
    }
    let version = info.version;
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    let pairs = [
        (header::CONTENT_TYPE.as_str(), attrs.content_type.clone()),
        ("x-goog-generation", version.generation.to_string()),
        ("x-goog-metageneration", version.metageneration.to_string()),
        ("x-goog-stored-content-length", attrs.size.to_string()),
        (
            header::ETAG.as_str(),
            format!("\"{}\"", etag(version.generation, version.metageneration)),
        ),
    ];
    for (key, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    }
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn patch(
    state: &AppState,
    bucket: &Bucket,
    guard: &mut BucketState,
    name: &str,
    pre: Preconditions,
    generation: Option<i64>,
    metadata: MetadataPatch,
    content_type: Option<String>,
) -> ApiResult {
    let (info, body) = mutable(state, bucket, guard, name, pre, generation)?;
    let (set, remove): (Metadata, Vec<String>) = match metadata {
        MetadataPatch::Keep => (Metadata::new(), Vec::new()),
        MetadataPatch::Clear => (Metadata::new(), info.metadata.keys().cloned().collect()),
        MetadataPatch::Change(changes) => {
            let mut set = Metadata::new();
            let mut remove = Vec::new();
            for (key, value) in changes {
                match value {
                    Some(value) => {
                        set.insert(key, value);
                    }
                    None if info.metadata.contains_key(&key) => remove.push(key),
                    None => {}
                }
            }
            (set, remove)
        }
    };
    if !remove.is_empty() {
        return Err(GcsError::not_implemented(format!(
            "strict-gcs cannot remove metadata keys yet (the library's MemoryBackend has no \
             primitive for it); keys asked to be removed: {}",
            remove.join(", ")
        )));
    }
    let info = bucket
        .backend
        .update_metadata(name, info.version, &set)
        .await
        .map_err(|e| from_backend(&bucket.name, name, e))?
        .value;
    let mut attrs = attrs_of(guard, &info, body.len() as u64);
    if let Some(content_type) = content_type {
        attrs.content_type = content_type;
    }
    guard.attrs.insert(name.to_owned(), attrs.clone());
    guard.record_mutation(name);
    state.count_mutation("patch");
    Ok(object_response(bucket, &info, &attrs))
}

async fn delete(
    state: &AppState,
    bucket: &Bucket,
    guard: &mut BucketState,
    name: &str,
    pre: Preconditions,
    generation: Option<i64>,
) -> ApiResult {
    let (info, _) = mutable(state, bucket, guard, name, pre, generation)?;
    bucket
        .backend
        .delete(name, info.version)
        .await
        .map_err(|e| from_backend(&bucket.name, name, e))?;
    guard.attrs.remove(name);
    guard.record_mutation(name);
    state.count_mutation("delete");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(
    bucket: &Bucket,
    guard: &BucketState,
    prefix: &str,
    max_results: usize,
    after: Option<&str>,
) -> ApiResult {
    let all = bucket
        .backend
        .list(prefix)
        .await
        .map_err(|e| from_backend(&bucket.name, prefix, e))?;
    let mut page: Vec<ObjectInfo> = all
        .into_iter()
        .map(|listed| listed.value)
        .filter(|info| after.is_none_or(|after| info.name.as_str() > after))
        .take(max_results + 1)
        .collect();
    let more = page.len() > max_results;
    page.truncate(max_results);
    let mut items = Vec::with_capacity(page.len());
    for info in &page {
        let size = match guard.attrs.get(&info.name) {
            Some(attrs) if attrs.generation == info.version.generation => attrs.size,
            _ => live(bucket, &info.name)?.map_or(0, |(_, body)| body.len() as u64),
        };
        items.push(object_json(
            &bucket.name,
            info,
            &attrs_of(guard, info, size),
        ));
    }
    let mut list = json!({"kind": "storage#objects"});
    if more {
        if let Some(last) = page.last() {
            list["nextPageToken"] = Value::String(encode_page_token(&last.name));
        }
    }
    if !items.is_empty() {
        list["items"] = Value::Array(items);
    }
    Ok(Json(list).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_bucket_name("my-bucket_1.x").is_ok());
        for bad in ["ab", "-ab", "ab-", "AB", "a b c", &"a".repeat(64)] {
            assert!(validate_bucket_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_object_name("a/b c").is_ok());
        for bad in ["", ".", "..", "a\nb", &"x".repeat(1025)] {
            assert!(validate_object_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = encode_page_token("a/b c/é");
        assert_eq!(decode_page_token(&token).ok().as_deref(), Some("a/b c/é"));
        assert!(decode_page_token("***").is_err());
    }
}
