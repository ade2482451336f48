//! Error responses in the shape the GCS JSON API uses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// One failed request: status, GCS `reason` and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl GcsError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    /// 400 `invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 400 `required`.
    pub fn required(what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "required",
            format!("Required parameter: {what}"),
        )
    }

    /// 400 `parseError` (a body that is not the JSON the call expects).
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "parseError",
            format!("Parse Error: {detail}"),
        )
    }

    /// 412: an object exists but a precondition does not hold.
    pub fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "conditionNotMet",
            "At least one of the pre-conditions you specified did not hold.",
        )
    }

    /// 304: an `...NotMatch` precondition did not hold. Sent without a body.
    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, "notModified", "Not Modified")
    }

    pub fn no_such_object(bucket: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("No such object: {bucket}/{name}"),
        )
    }

    pub fn no_such_bucket() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            "The specified bucket does not exist.",
        )
    }

    pub fn bucket_exists() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            "Your previous request to create the named bucket succeeded and you already own it.",
        )
    }

    /// 501: part of the API that strict-gcs does not model.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "notImplemented", message)
    }

    /// Injected 503.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backendError",
            "We encountered an internal error. Please try again. (strict-gcs: injected 503)",
        )
    }

    /// 429, injected or from the per-object mutation rate limit.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rateLimitExceeded", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "backendError", message)
    }

    /// The JSON body GCS sends with an error.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.status.as_u16(),
                "message": self.message,
                "errors": [{
                    "domain": "global",
                    "reason": self.reason,
                    "message": self.message,
                }],
            }
        })
    }
}

impl IntoResponse for GcsError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_MODIFIED {
            return self.status.into_response();
        }
        (self.status, Json(self.body())).into_response()
    }
}

impl std::fmt::Display for GcsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for GcsError {}
