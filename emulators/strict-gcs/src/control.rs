//! `/_strict/...`: the control endpoint tests use to change faults at run time, read
//! counters, release stalls and wait for quiescence. Never subject to faults.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::api::SharedState;
use crate::config::FaultConfig;
use crate::error::GcsError;
use crate::precondition::Query;

fn faults_body(state: &SharedState) -> Response {
    let mut body = serde_json::to_value(state.faults()).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut body {
        fields.insert("seed".into(), Value::from(state.seed()));
    }
    Json(body).into_response()
}

/// `GET /_strict/faults`: the current settings and seed.
pub async fn get_faults(State(state): State<SharedState>) -> Response {
    faults_body(&state)
}

/// `POST /_strict/faults`: changes the fields given, keeps the others. Two extra
/// fields: `"reset": true` starts from all-off before applying the rest, and
/// `"seed": N` restarts the random source.
pub async fn post_faults(State(state): State<SharedState>, body: Bytes) -> Response {
    let mut patch = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return GcsError::parse_error("the body must be a JSON object").into_response(),
        Err(e) => return GcsError::parse_error(e).into_response(),
    };
    let reset = match patch.remove("reset") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return GcsError::invalid("reset must be a boolean").into_response(),
    };
    let seed = match patch.remove("seed") {
        None => None,
        Some(value) => match value.as_u64() {
            Some(seed) => Some(seed),
            None => {
                return GcsError::invalid("seed must be a non-negative integer").into_response()
            }
        },
    };
    let base = if reset {
        FaultConfig::default()
    } else {
        state.faults()
    };
    match base.merged(patch) {
        Ok(faults) => state.set_faults(faults),
        Err(e) => return GcsError::invalid(format!("Invalid fault settings: {e}")).into_response(),
    }
    if let Some(seed) = seed {
        state.reseed(seed);
    }
    faults_body(&state)
}

/// `DELETE /_strict/faults`: every fault off, no skew.
pub async fn delete_faults(State(state): State<SharedState>) -> Response {
    state.set_faults(FaultConfig::default());
    faults_body(&state)
}

/// `GET /_strict/stats`.
pub async fn stats(State(state): State<SharedState>) -> Response {
    Json(state.stats()).into_response()
}

/// `POST /_strict/stalls/release`: ends every stall in progress; the stalled
/// requests then proceed (and apply).
pub async fn release_stalls(State(state): State<SharedState>) -> Response {
    state.release_stalls();
    (StatusCode::OK, Json(serde_json::json!({"released": true}))).into_response()
}

/// `GET /_strict/idle?timeout_ms=T&in_flight=N`: answers 200 once exactly `N`
/// (default 0) object requests are in flight, or 504 after `T` ms (default 10000).
/// `in_flight=1` waits until a stalled request has arrived; the default waits until
/// everything received has been applied and answered.
pub async fn idle(State(state): State<SharedState>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw.as_deref());
    let (timeout_ms, count) = match (query.get_i64("timeout_ms"), query.get_i64("in_flight")) {
        (Ok(timeout), Ok(count)) => (timeout.unwrap_or(10_000), count.unwrap_or(0)),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let count = count.unsigned_abs();
    let timeout = Duration::from_millis(timeout_ms.unsigned_abs());
    match tokio::time::timeout(timeout, state.in_flight_reaches(count)).await {
        Ok(()) => Json(serde_json::json!({ "in_flight": count })).into_response(),
        Err(_) => GcsError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "{} object requests in flight, not {count}, after {timeout_ms} ms",
                state.stats().in_flight
            ),
        )
        .into_response(),
    }
}
