//! Fault injection: each fault does what it says, and only that.

mod common;

use std::error::Error as _;
use std::time::Duration;

use common::{error_reason, if_version, start, version, Harness};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

const B: &str = "fault-bucket";

/// The error's source chain, for diagnostics and assertions.
fn chain(error: &reqwest::Error) -> String {
    let mut text = format!("{error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(" <- {cause}"));
        source = cause.source();
    }
    text
}

/// PATCHes `lock` to `metadata` if it is still version `(g, m)`.
async fn try_patch_lock(
    h: &Harness,
    (g, m): (i64, i64),
    metadata: Value,
) -> reqwest::Result<Response> {
    h.try_patch(B, "lock", &if_version(g, m), &metadata).await
}

async fn patch_lock(h: &Harness, version: (i64, i64), metadata: Value) -> Response {
    try_patch_lock(h, version, metadata)
        .await
        .expect("patch is answered")
}

fn assert_transport_error(result: reqwest::Result<reqwest::Response>, what: &str) -> String {
    let error = match result {
        Ok(response) => panic!(
            "{what}: expected a transport error, got HTTP {}",
            response.status()
        ),
        Err(error) => error,
    };
    assert!(error.status().is_none(), "{what}: no HTTP status");
    assert!(!error.is_timeout(), "{what}: not a timeout");
    assert!(!error.is_connect(), "{what}: the connection was made");
    assert!(error.is_request(), "{what}: a request error: {error:?}");
    let text = chain(&error);
    // hyper reports the RST as a connection reset (or, if it raced the read, as a
    // message that closed early); both are "the response was lost".
    assert!(
        text.contains("reset") || text.contains("closed"),
        "{what}: {text}"
    );
    text
}

#[tokio::test]
async fn reset_after_apply_loses_the_response_but_applies_the_patch() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "lock", json!({"seq": "0"})).await;
    h.set_faults(json!({"reset_after": 1.0})).await;
    let result = try_patch_lock(&h, (g, m), json!({"metadata": {"seq": "1"}})).await;
    let text = assert_transport_error(result, "PATCH with reset_after=1");
    eprintln!("reqwest sees a reset-after-apply PATCH as: {text}");
    h.clear_faults().await;
    let object = h.stat(B, "lock").await.expect("exists");
    assert_eq!(version(&object), (g, m + 1), "the PATCH was applied");
    assert_eq!(object["metadata"]["seq"], "1");
    // Its retry now fails its precondition: the ambiguous outcome the lock must resolve.
    let retry = patch_lock(&h, (g, m), json!({"metadata": {"seq": "1"}})).await;
    assert_eq!(retry.status(), StatusCode::PRECONDITION_FAILED);
    let stats = h.stats().await;
    assert_eq!(stats["faults"]["reset_after"], 1);
    assert_eq!(stats["mutations"]["patch"], 1);
    assert_eq!(
        stats["requests"]["PATCH"], 2,
        "reqwest did not retry the reset request by itself"
    );
}

#[tokio::test]
async fn reset_after_apply_on_create_and_delete() {
    let h = start(&[B]).await;
    h.set_faults(json!({"reset_after": 1.0})).await;
    let created = h
        .try_upload_media(B, "o", "ifGenerationMatch=0", b"x")
        .await;
    assert_transport_error(created, "create with reset_after=1");
    let deleted = h.try_delete(B, "o", "").await;
    assert_transport_error(deleted, "delete with reset_after=1");
    let read = h.try_get(B, "o", "").await;
    assert_transport_error(read, "get with reset_after=1");
    h.clear_faults().await;
    assert!(
        h.stat(B, "o").await.is_none(),
        "created, then deleted, both applied"
    );
    let stats = h.stats().await;
    assert_eq!(stats["mutations"]["upload"], 1);
    assert_eq!(stats["mutations"]["delete"], 1);
    assert_eq!(stats["faults"]["reset_after"], 3);
}

#[tokio::test]
async fn reset_before_apply_changes_nothing() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "lock", json!({"seq": "0"})).await;
    h.set_faults(json!({"reset_before": 1.0})).await;
    let result = try_patch_lock(&h, (g, m), json!({"metadata": {"seq": "1"}})).await;
    assert_transport_error(result, "PATCH with reset_before=1");
    let result = h
        .try_upload_media(B, "new", "ifGenerationMatch=0", b"x")
        .await;
    assert_transport_error(result, "create with reset_before=1");
    h.clear_faults().await;
    let object = h.stat(B, "lock").await.expect("exists");
    assert_eq!(version(&object), (g, m), "nothing applied");
    assert!(h.stat(B, "new").await.is_none());
    assert_eq!(h.stats().await["faults"]["reset_before"], 2);
}

#[tokio::test]
async fn injected_503_and_429_apply_nothing() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "lock", json!({})).await;
    for (field, status, reason) in [
        ("fail_503", StatusCode::SERVICE_UNAVAILABLE, "backendError"),
        (
            "fail_429",
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimitExceeded",
        ),
    ] {
        h.set_faults(json!({ field: 1.0 })).await;
        let create = h.upload_media(B, "new", "ifGenerationMatch=0", b"x").await;
        assert_eq!(
            error_reason(create, status).await.0,
            reason,
            "{field} create"
        );
        let patch = patch_lock(&h, (g, m), json!({"metadata": {"a": "b"}})).await;
        assert_eq!(patch.status(), status, "{field} patch");
        assert!(patch.headers().contains_key("date"));
        let delete = h.delete(B, "lock", "").await;
        assert_eq!(delete.status(), status, "{field} delete");
        let get = h.get(B, "lock", "").await;
        assert_eq!(get.status(), status, "{field} get (scope all)");
        h.clear_faults().await;
        assert!(h.stat(B, "new").await.is_none(), "{field}: nothing created");
        assert_eq!(
            version(&h.stat(B, "lock").await.expect("not deleted")),
            (g, m),
            "{field}: nothing changed"
        );
        assert_eq!(h.stats().await["faults"][field], 4);
    }
    assert_eq!(
        h.stats().await["mutations"]["upload"],
        1,
        "only the first create applied"
    );
}

#[tokio::test]
async fn fault_scope_mutations_spares_reads() {
    let h = start(&[B]).await;
    h.create(B, "o", json!({})).await;
    h.set_faults(json!({"fail_503": 1.0, "scope": "mutations"}))
        .await;
    assert_eq!(h.get(B, "o", "").await.status(), StatusCode::OK);
    assert_eq!(h.list(B, "").await.status(), StatusCode::OK);
    assert_eq!(
        h.patch(B, "o", "", &json!({})).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn per_object_rate_limit_gives_429() {
    let h = start(&[B]).await;
    // One mutation per hour per object: the second is refused however slow the machine.
    h.set_faults(json!({"object_rate_limit": "1/1h"})).await;
    let (g, m) = h.create(B, "lock", json!({})).await;
    let patch = patch_lock(&h, (g, m), json!({"metadata": {"a": "b"}})).await;
    let (reason, message) = error_reason(patch, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(reason, "rateLimitExceeded");
    assert!(message.contains(&format!("{B}/lock")), "{message}");
    assert_eq!(
        h.delete(B, "lock", "").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Reads are not limited, other objects are not affected, nothing was applied.
    assert_eq!(version(&h.stat(B, "lock").await.expect("exists")), (g, m));
    h.create(B, "other", json!({})).await;
    assert_eq!(h.stats().await["faults"]["rate_limit"], 2);
    // Turning the limit off lets the next mutation through.
    h.set_faults(json!({"object_rate_limit": null})).await;
    let patch = h.patch(B, "lock", &if_version(g, m), &json!({})).await;
    assert_eq!(patch.status(), StatusCode::OK);
}

#[tokio::test]
async fn failed_mutations_do_not_count_against_the_rate_limit() {
    let h = start(&[B]).await;
    h.set_faults(json!({"object_rate_limit": "1/1h"})).await;
    let refused = h.upload_media(B, "o", "ifGenerationMatch=7", b"x").await;
    assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
    let created = h.upload_media(B, "o", "ifGenerationMatch=0", b"x").await;
    assert_eq!(
        created.status(),
        StatusCode::OK,
        "the 412 did not use up the budget"
    );
}

#[tokio::test]
async fn a_stalled_request_times_out_then_applies() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "lock", json!({"seq": "0"})).await;
    // Stall for ten minutes: far beyond the client's timeout whatever the machine's speed.
    h.set_faults(json!({"stall": 1.0, "stall_ms": 600_000, "scope": "mutations"}))
        .await;
    let result = h
        .client
        .patch(h.url(&format!(
            "/storage/v1/b/{B}/o/lock?ifGenerationMatch={g}&ifMetagenerationMatch={m}"
        )))
        .json(&json!({"metadata": {"seq": "1"}}))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    let error = result.expect_err("the stalled PATCH times out");
    assert!(error.is_timeout(), "{error:?}");
    let held = h
        .control(Method::GET, "/_strict/idle?in_flight=1&timeout_ms=30000")
        .await;
    assert_eq!(
        held.status(),
        StatusCode::OK,
        "the request arrived and is held"
    );
    assert_eq!(
        version(&h.stat(B, "lock").await.expect("exists")),
        (g, m),
        "not applied yet"
    );

    h.clear_faults().await;
    let released = h.control(Method::POST, "/_strict/stalls/release").await;
    assert_eq!(released.status(), StatusCode::OK);
    let idle = h
        .control(Method::GET, "/_strict/idle?timeout_ms=30000")
        .await;
    assert_eq!(idle.status(), StatusCode::OK);
    let object = h.stat(B, "lock").await.expect("exists");
    assert_eq!(
        version(&object),
        (g, m + 1),
        "applied after the client gave up"
    );
    assert_eq!(object["metadata"]["seq"], "1");
    assert_eq!(h.stats().await["faults"]["stall"], 1);
}

#[tokio::test]
async fn latency_is_counted_and_requests_still_succeed() {
    let h = start(&[B]).await;
    h.set_faults(json!({"latency_ms": 5, "jitter_ms": 5})).await;
    h.create(B, "o", json!({})).await;
    assert_eq!(h.get(B, "o", "").await.status(), StatusCode::OK);
    assert_eq!(h.stats().await["faults"]["latency"], 2);
}

async fn statuses(h: &Harness, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(h.get(B, "o", "").await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn a_seed_replays_the_same_faults() {
    let h = start(&[B]).await;
    h.create(B, "o", json!({})).await;
    h.set_faults(json!({"fail_503": 0.5, "seed": 42})).await;
    let first = statuses(&h, 40).await;
    assert!(first.contains(&200) && first.contains(&503), "{first:?}");
    let settings = h.set_faults(json!({"seed": 42})).await;
    assert_eq!(settings["seed"], 42);
    assert_eq!(settings["fail_503"], 0.5);
    let second = statuses(&h, 40).await;
    assert_eq!(first, second);
}

#[tokio::test]
async fn control_endpoint_validates_and_reports() {
    let h = start(&[B]).await;
    for bad in [
        json!({"fail_503": 1.5}),
        json!({"nope": 1}),
        json!({"object_rate_limit": "fast"}),
        json!({"scope": "some"}),
        json!([1]),
    ] {
        let response = h
            .client
            .post(h.url("/_strict/faults"))
            .json(&bad)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let settings = h
        .set_faults(json!({"fail_429": 0.25, "skew_ms": -1000}))
        .await;
    assert_eq!(settings["fail_429"], 0.25);
    assert_eq!(settings["skew_ms"], -1000);
    let reset = h
        .set_faults(json!({"reset": true, "reset_after": 0.5}))
        .await;
    assert_eq!(reset["fail_429"], 0.0);
    assert_eq!(reset["reset_after"], 0.5);
    assert_eq!(h.faults().await, reset);
    // Control requests are not counted as storage requests.
    let stats = h.stats().await;
    assert!(stats["requests"].get("GET").is_none(), "{stats}");
    assert_eq!(stats["mutations"]["bucket_create"], 1);
}
