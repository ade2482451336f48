//! strict-gcs: a small GCS JSON-API emulator that enforces GCS's documented
//! conditional-request semantics exactly, with fault injection.
//!
//! Each bucket is the `gcslock` library's own strict model
//! ([`gcslock::backend::memory::MemoryBackend`]); this crate puts the GCS JSON API
//! in front of it and adds the faults a real network and service produce: 503s,
//! 429s, connection resets before and after a request is applied, latency, stalls
//! and a per-object mutation rate limit. See the README for the details.

mod api;
pub mod config;
mod control;
mod error;
mod multipart;
mod precondition;
mod resource;
mod server;
mod state;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use config::{FaultConfig, FaultScope, RateLimit};
pub use error::GcsError;
pub use server::{Server, ServerConfig};

use crate::api::SharedState;
use crate::resource::http_date;
use crate::state::AppState;

/// Uploads larger than this are refused (413): lock objects are tiny.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/storage/v1/b",
            post(api::create_bucket).get(api::list_buckets),
        )
        .route("/storage/v1/b/{bucket}", get(api::get_bucket))
        .route("/storage/v1/b/{bucket}/o", get(api::list_objects))
        .route(
            "/storage/v1/b/{bucket}/o/{object}",
            get(api::get_object::<false>)
                .patch(api::patch_object)
                .delete(api::delete_object),
        )
        .route("/upload/storage/v1/b/{bucket}/o", post(api::upload))
        .route(
            "/download/storage/v1/b/{bucket}/o/{object}",
            get(api::get_object::<true>),
        )
        .route(
            "/_strict/faults",
            get(control::get_faults)
                .post(control::post_faults)
                .delete(control::delete_faults),
        )
        .route("/_strict/stats", get(control::stats))
        .route("/_strict/stalls/release", post(control::release_stalls))
        .route("/_strict/idle", get(control::idle))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), common))
        .with_state(state)
}

async fn not_found() -> Response {
    GcsError::new(StatusCode::NOT_FOUND, "notFound", "Not Found").into_response()
}

async fn method_not_allowed() -> Response {
    GcsError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "methodNotAllowed",
        "Method Not Allowed",
    )
    .into_response()
}

/// Counts storage requests and responses, adds `Date` from the server clock where
/// a handler did not, and logs when verbose.
async fn common(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let control = request.uri().path().starts_with("/_strict/");
    let method = request.method().clone();
    let uri = request.uri().clone();
    if !control {
        state.count_request(method.as_str());
    }
    let mut response = next.run(request).await;
    if !control {
        state.count_response(response.status().as_u16());
    }
    if !response.headers().contains_key(header::DATE) {
        if let Ok(value) = HeaderValue::from_str(&http_date(state.server_time())) {
            response.headers_mut().insert(header::DATE, value);
        }
    }
    if state.verbose {
        server::log(format_args!("{method} {uri} -> {}", response.status()));
    }
    response
}
