//! HTTP-level tests of the GCS semantics strict-gcs enforces.

mod common;

use chrono::{DateTime, Utc};
use common::{enc, error_reason, if_version, start, version};
use reqwest::StatusCode;
use serde_json::{json, Value};

const B: &str = "test-bucket";

/// Preconditions that the live object at generation `g`, metageneration `m` fails,
/// and what each is answered: 412, or 304 for the `NotMatch` ones.
fn conditions_failing_on(g: i64, m: i64) -> Vec<(String, StatusCode)> {
    vec![
        (
            format!("ifGenerationMatch={}", g + 1),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            "ifGenerationMatch=0".to_owned(),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            format!("ifGenerationMatch={g}&ifMetagenerationMatch={}", m + 1),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            format!("ifGenerationNotMatch={g}"),
            StatusCode::NOT_MODIFIED,
        ),
        (
            format!("ifMetagenerationNotMatch={m}"),
            StatusCode::NOT_MODIFIED,
        ),
    ]
}

#[tokio::test]
async fn multipart_upload_create_only_if_absent() {
    let h = start(&[B]).await;
    let meta = json!({"name": "lock", "metadata": {"holder": "a"}, "contentType": "text/x-lock"});
    let first = h
        .upload_multipart(B, "ifGenerationMatch=0", &meta, b"body")
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let object: Value = first.json().await.expect("object JSON");
    assert_eq!(object["kind"], "storage#object");
    assert_eq!(object["name"], "lock");
    assert_eq!(object["bucket"], B);
    assert_eq!(object["metageneration"], "1");
    assert_eq!(object["size"], "4");
    assert_eq!(object["contentType"], "text/x-lock");
    assert_eq!(object["metadata"], json!({"holder": "a"}));
    let (generation, _) = version(&object);
    assert_eq!(object["id"], format!("{B}/lock/{generation}"));
    assert!(object["etag"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(object["timeCreated"], object["updated"]);

    let second = h
        .upload_multipart(
            B,
            "ifGenerationMatch=0",
            &json!({"name": "lock", "metadata": {"holder": "b"}}),
            b"",
        )
        .await;
    let (reason, message) = error_reason(second, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(reason, "conditionNotMet");
    assert_eq!(
        message,
        "At least one of the pre-conditions you specified did not hold."
    );
    let after = h.stat(B, "lock").await.expect("still there");
    assert_eq!(
        after["metadata"]["holder"], "a",
        "the losing create changed nothing"
    );
    assert_eq!(version(&after), (generation, 1));
}

#[tokio::test]
async fn media_upload_create_only_if_absent() {
    let h = start(&[B]).await;
    let first = h.upload_media(B, "m", "ifGenerationMatch=0", b"one").await;
    assert_eq!(first.status(), StatusCode::OK);
    let object: Value = first.json().await.expect("object JSON");
    assert_eq!(object["contentType"], "text/plain");
    assert!(
        object.get("metadata").is_none(),
        "empty metadata is omitted"
    );
    let second = h.upload_media(B, "m", "ifGenerationMatch=0", b"two").await;
    assert_eq!(second.status(), StatusCode::PRECONDITION_FAILED);
    let body = h.get(B, "m", "alt=media").await;
    assert_eq!(body.status(), StatusCode::OK);
    assert_eq!(body.bytes().await.expect("media"), "one");
}

#[tokio::test]
async fn overwrite_changes_generation_and_resets_metageneration() {
    let h = start(&[B]).await;
    let (g1, _) = h.create(B, "o", json!({"v": "1"})).await;
    let patched = h
        .patch(
            B,
            "o",
            &format!("ifGenerationMatch={g1}&ifMetagenerationMatch=1"),
            &json!({"metadata": {"v": "2"}}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);

    // Overwrite with the exact current version as precondition (both kinds).
    for upload in ["media", "multipart"] {
        let (g, m) = version(&h.stat(B, "o").await.expect("exists"));
        let query = if_version(g, m);
        let response = if upload == "media" {
            h.upload_media(B, "o", &query, b"new").await
        } else {
            h.upload_multipart(
                B,
                &query,
                &json!({"name": "o", "metadata": {"v": "3"}}),
                b"new",
            )
            .await
        };
        assert_eq!(response.status(), StatusCode::OK, "{upload} overwrite");
        let (new_g, new_m) = version(&response.json().await.expect("object JSON"));
        assert_ne!(new_g, g, "{upload}: a new object gets a new generation");
        assert_eq!(new_m, 1, "{upload}: metageneration restarts at 1");
    }
    // An overwrite without preconditions always applies.
    let (g, _) = version(&h.stat(B, "o").await.expect("exists"));
    let response = h.upload_media(B, "o", "", b"x").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(version(&response.json().await.expect("object JSON")).0, g);
}

#[tokio::test]
async fn upload_preconditions_each_enforced() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "o", json!({})).await;
    let mut cases = conditions_failing_on(g, m);
    cases.push((
        format!("ifMetagenerationMatch={}", m + 1),
        StatusCode::PRECONDITION_FAILED,
    ));
    for (query, expected) in &cases {
        for kind in ["media", "multipart"] {
            let response = if kind == "media" {
                h.upload_media(B, "o", query, b"x").await
            } else {
                h.upload_multipart(B, query, &json!({"name": "o"}), b"x")
                    .await
            };
            assert_eq!(response.status(), *expected, "{kind} upload with {query}");
            assert_eq!(
                version(&h.stat(B, "o").await.expect("exists")),
                (g, m),
                "{kind} upload with {query} changed nothing"
            );
        }
    }
    // Each precondition that holds lets the upload through.
    let mut current = (g, m);
    for query in [
        "ifGenerationMatch={g}",
        "ifMetagenerationMatch={m}",
        "ifGenerationNotMatch=1",
        "ifMetagenerationNotMatch=9",
        "ifGenerationNotMatch=0",
    ] {
        let query = query
            .replace("{g}", &current.0.to_string())
            .replace("{m}", &current.1.to_string());
        let response = h.upload_media(B, "o", &query, b"x").await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "media upload with {query}"
        );
        let next = version(&response.json().await.expect("object JSON"));
        assert_ne!(next.0, current.0);
        current = next;
    }
}

#[tokio::test]
async fn upload_preconditions_on_a_missing_object() {
    let h = start(&[B]).await;
    for query in [
        "ifGenerationMatch=5",
        "ifGenerationNotMatch=5",
        "ifGenerationNotMatch=0",
        "ifMetagenerationMatch=1",
        "ifMetagenerationNotMatch=1",
        "ifGenerationMatch=0&ifMetagenerationMatch=1",
    ] {
        let response = h.upload_media(B, "absent", query, b"x").await;
        assert_eq!(
            response.status(),
            StatusCode::PRECONDITION_FAILED,
            "{query}"
        );
        assert!(
            h.stat(B, "absent").await.is_none(),
            "{query} created nothing"
        );
    }
    let response = h
        .upload_media(B, "absent", "ifGenerationMatch=0", b"x")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn get_preconditions_each_enforced() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "o", json!({"k": "v"})).await;
    for alt in ["", "alt=media&", "alt=json&"] {
        let mut cases = conditions_failing_on(g, m);
        cases.extend([
            (if_version(g, m), StatusCode::OK),
            (
                format!("ifMetagenerationMatch={}", m + 1),
                StatusCode::PRECONDITION_FAILED,
            ),
            (format!("ifGenerationNotMatch={}", g + 1), StatusCode::OK),
            (
                format!("ifMetagenerationNotMatch={}", m + 1),
                StatusCode::OK,
            ),
            (format!("generation={g}"), StatusCode::OK),
            (format!("generation={}", g + 1), StatusCode::NOT_FOUND),
        ]);
        for (query, expected) in cases {
            let response = h.get(B, "o", &format!("{alt}{query}")).await;
            assert_eq!(response.status(), expected, "GET ?{alt}{query}");
            if expected == StatusCode::NOT_MODIFIED {
                assert!(
                    response.bytes().await.expect("body").is_empty(),
                    "304 has no body"
                );
            }
        }
    }
    // A missing object is 404 whatever the preconditions say.
    for query in [
        "",
        "ifGenerationMatch=0",
        "ifGenerationMatch=1&ifMetagenerationMatch=1",
        "ifGenerationNotMatch=1",
    ] {
        let response = h.get(B, "missing", query).await;
        let (reason, message) = error_reason(response, StatusCode::NOT_FOUND).await;
        assert_eq!(reason, "notFound");
        assert_eq!(message, format!("No such object: {B}/missing"), "{query}");
    }
}

#[tokio::test]
async fn media_download_returns_the_body() {
    let h = start(&[B]).await;
    let response = h
        .upload_multipart(B, "", &json!({"name": "f"}), b"\x00\x01binary\xff")
        .await;
    let (g, m) = version(&response.json().await.expect("object JSON"));
    let media = h.get(B, "f", "alt=media").await;
    assert_eq!(media.status(), StatusCode::OK);
    assert_eq!(media.headers()["content-type"], "text/plain");
    assert_eq!(media.headers()["x-goog-generation"], g.to_string().as_str());
    assert_eq!(
        media.headers()["x-goog-metageneration"],
        m.to_string().as_str()
    );
    assert_eq!(
        media.bytes().await.expect("media").as_ref(),
        b"\x00\x01binary\xff"
    );
    let other = h
        .client
        .get(h.url(&format!("/download/storage/v1/b/{B}/o/f")))
        .send()
        .await
        .expect("download URL answers");
    assert_eq!(
        other.bytes().await.expect("media").as_ref(),
        b"\x00\x01binary\xff"
    );
}

fn updated(object: &Value) -> DateTime<Utc> {
    let text = object["updated"].as_str().expect("updated is a string");
    assert_eq!(
        text.len(),
        "2024-01-01T00:00:00.000Z".len(),
        "millisecond RFC 3339: {text}"
    );
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn patch_bumps_metageneration_and_enforces_preconditions() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "o", json!({"a": "1", "b": "1"})).await;
    let before = h.stat(B, "o").await.expect("exists");

    let ok = h
        .patch(
            B,
            "o",
            &if_version(g, m),
            &json!({"metadata": {"b": "2", "c": "3", "gone": null}}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let after: Value = ok.json().await.expect("object JSON");
    assert_eq!(
        version(&after),
        (g, m + 1),
        "generation stays, metageneration +1"
    );
    assert_eq!(after["metadata"], json!({"a": "1", "b": "2", "c": "3"}));
    assert!(updated(&after) >= updated(&before), "updated moves forward");
    assert_eq!(
        after["timeCreated"], before["timeCreated"],
        "timeCreated stays"
    );

    // The stale version no longer matches: 412, and nothing changes.
    let stale = h
        .patch(B, "o", &if_version(g, m), &json!({"metadata": {"x": "1"}}))
        .await;
    assert_eq!(
        error_reason(stale, StatusCode::PRECONDITION_FAILED).await.0,
        "conditionNotMet"
    );
    // The live object is now (g, m + 1).
    let mut cases = conditions_failing_on(g, m + 1);
    cases.push((
        format!("ifMetagenerationMatch={m}"),
        StatusCode::PRECONDITION_FAILED,
    ));
    cases.push((format!("generation={}", g + 1), StatusCode::NOT_FOUND));
    for (query, expected) in cases {
        let response = h
            .patch(B, "o", &query, &json!({"metadata": {"x": "1"}}))
            .await;
        assert_eq!(response.status(), expected, "PATCH ?{query}");
    }
    let unchanged = h.stat(B, "o").await.expect("exists");
    assert_eq!(version(&unchanged), (g, m + 1));
    assert!(unchanged["metadata"].get("x").is_none());

    // Each single precondition that holds lets it through; each PATCH bumps by one.
    let mut meta = m + 1;
    for kind in 0..5 {
        let query = match kind {
            0 => format!("ifGenerationMatch={g}"),
            1 => format!("ifMetagenerationMatch={meta}"),
            2 => format!("ifGenerationNotMatch={}", g + 1),
            3 => format!("ifMetagenerationNotMatch={}", meta + 5),
            _ => String::new(),
        };
        let response = h
            .patch(
                B,
                "o",
                &query,
                &json!({"metadata": {"n": meta.to_string()}}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "PATCH ?{query}");
        assert_eq!(
            version(&response.json().await.expect("object JSON")),
            (g, meta + 1)
        );
        meta += 1;
    }
    // A PATCH without any change still bumps the metageneration, as on GCS.
    let empty = h.patch(B, "o", "", &json!({})).await;
    assert_eq!(
        version(&empty.json().await.expect("object JSON")),
        (g, meta + 1)
    );
}

#[tokio::test]
async fn patch_and_delete_of_a_missing_object_are_404() {
    let h = start(&[B]).await;
    for query in [
        "",
        "ifGenerationMatch=1&ifMetagenerationMatch=1",
        "ifGenerationMatch=0",
        "ifMetagenerationNotMatch=1",
    ] {
        let patch = h
            .patch(B, "missing", query, &json!({"metadata": {"a": "b"}}))
            .await;
        assert_eq!(
            error_reason(patch, StatusCode::NOT_FOUND).await.1,
            format!("No such object: {B}/missing")
        );
        let delete = h.delete(B, "missing", query).await;
        assert_eq!(
            error_reason(delete, StatusCode::NOT_FOUND).await.0,
            "notFound"
        );
    }
}

#[tokio::test]
async fn patch_removing_an_existing_key_is_refused_until_the_model_supports_it() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "o", json!({"a": "1"})).await;
    let response = h.patch(B, "o", "", &json!({"metadata": {"a": null}})).await;
    assert_eq!(
        error_reason(response, StatusCode::NOT_IMPLEMENTED).await.0,
        "notImplemented"
    );
    assert_eq!(
        version(&h.stat(B, "o").await.expect("exists")),
        (g, m),
        "nothing applied"
    );
}

#[tokio::test]
async fn delete_enforces_preconditions() {
    let h = start(&[B]).await;
    let (g, m) = h.create(B, "o", json!({})).await;
    let mut cases = conditions_failing_on(g, m);
    cases.push((format!("generation={}", g + 1), StatusCode::NOT_FOUND));
    for (query, expected) in cases {
        let response = h.delete(B, "o", &query).await;
        assert_eq!(response.status(), expected, "DELETE ?{query}");
        assert!(
            h.stat(B, "o").await.is_some(),
            "DELETE ?{query} deleted nothing"
        );
    }
    let response = h.delete(B, "o", &if_version(g, m)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.expect("body").is_empty());
    assert!(h.stat(B, "o").await.is_none());
    // A recreated object is a new instance: the old version cannot delete it.
    let (g2, _) = h.create(B, "o", json!({})).await;
    assert_ne!(g2, g);
    let stale = h.delete(B, "o", &if_version(g, m)).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let current = h.delete(B, "o", &format!("ifGenerationMatch={g2}")).await;
    assert_eq!(current.status(), StatusCode::NO_CONTENT);
    // Without preconditions a delete always applies.
    h.create(B, "o", json!({})).await;
    assert_eq!(h.delete(B, "o", "").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn malformed_requests_are_400_in_gcs_shape() {
    let h = start(&[B]).await;
    h.create(B, "o", json!({})).await;
    let bad_json = h
        .client
        .patch(h.url(&format!("/storage/v1/b/{B}/o/o")))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        error_reason(bad_json, StatusCode::BAD_REQUEST).await.0,
        "parseError"
    );

    for query in [
        "ifGenerationMatch=abc",
        "ifMetagenerationMatch=",
        "ifGenerationNotMatch=-1",
        "ifMetagenerationNotMatch=1.5",
        "ifGenerationMatch=1&ifGenerationMatch=2",
    ] {
        let response = h.get(B, "o", query).await;
        assert_eq!(
            error_reason(response, StatusCode::BAD_REQUEST).await.0,
            "invalid",
            "{query}"
        );
        let response = h.delete(B, "o", query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "DELETE {query}");
    }
    assert!(
        h.stat(B, "o").await.is_some(),
        "bad deletes deleted nothing"
    );

    let unknown = h
        .client
        .post(h.url(&format!(
            "/upload/storage/v1/b/{B}/o?uploadType=weird&name=x"
        )))
        .body("x")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        error_reason(unknown, StatusCode::BAD_REQUEST).await.0,
        "invalid"
    );
    let missing = h
        .client
        .post(h.url(&format!("/upload/storage/v1/b/{B}/o?name=x")))
        .body("x")
        .send()
        .await
        .expect("answered");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let no_name = h
        .client
        .post(h.url(&format!("/upload/storage/v1/b/{B}/o?uploadType=media")))
        .body("x")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        error_reason(no_name, StatusCode::BAD_REQUEST).await.0,
        "required"
    );
    let not_multipart = h
        .client
        .post(h.url(&format!("/upload/storage/v1/b/{B}/o?uploadType=multipart")))
        .header("content-type", "application/json")
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .expect("answered");
    assert_eq!(not_multipart.status(), StatusCode::BAD_REQUEST);
    let bad_metadata = h
        .upload_multipart(B, "", &json!({"name": "x", "metadata": {"n": 1}}), b"")
        .await;
    assert_eq!(bad_metadata.status(), StatusCode::BAD_REQUEST);
    assert!(h.stat(B, "x").await.is_none());
}

#[tokio::test]
async fn buckets() {
    let h = start(&[]).await;
    let created = h.create_bucket("new-bucket").await;
    assert_eq!(created.status(), StatusCode::OK);
    let bucket: Value = created.json().await.expect("bucket JSON");
    assert_eq!(bucket["kind"], "storage#bucket");
    assert_eq!(bucket["name"], "new-bucket");
    let again = h.create_bucket("new-bucket").await;
    assert_eq!(
        error_reason(again, StatusCode::CONFLICT).await.0,
        "conflict"
    );
    let bad = h.create_bucket("X").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let get = h
        .client
        .get(h.url("/storage/v1/b/new-bucket"))
        .send()
        .await
        .expect("answered");
    assert_eq!(get.status(), StatusCode::OK);
    let missing = h
        .client
        .get(h.url("/storage/v1/b/no-such-bucket"))
        .send()
        .await
        .expect("answered");
    let (reason, message) = error_reason(missing, StatusCode::NOT_FOUND).await;
    assert_eq!(
        (reason.as_str(), message.as_str()),
        ("notFound", "The specified bucket does not exist.")
    );
    // Object calls on a missing bucket say so too.
    let upload = h
        .upload_media("no-such-bucket", "o", "ifGenerationMatch=0", b"x")
        .await;
    assert_eq!(
        error_reason(upload, StatusCode::NOT_FOUND).await.1,
        "The specified bucket does not exist."
    );
    let list = h.list("no-such-bucket", "").await;
    assert_eq!(list.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn date_header_on_every_response_from_the_server_clock() {
    let skew_ms: i64 = -3 * 3600 * 1000;
    let h = common::start_with(
        &[B],
        strict_gcs::FaultConfig {
            skew_ms,
            ..Default::default()
        },
    )
    .await;
    let date = |response: &reqwest::Response| -> DateTime<Utc> {
        let value = response.headers()["date"].to_str().expect("ASCII Date");
        assert!(value.ends_with(" GMT"), "HTTP-date: {value}");
        DateTime::parse_from_rfc2822(value)
            .expect("HTTP-date")
            .with_timezone(&Utc)
    };
    let local_before = Utc::now();
    let created = h.upload_media(B, "o", "ifGenerationMatch=0", b"x").await;
    let local_after = Utc::now();
    let created_date = date(&created);
    let object: Value = created.json().await.expect("object JSON");
    // Date and updated come from one (skewed) clock: Date is `updated` truncated to
    // the second or later.
    let updated = updated(&object);
    assert!(
        created_date > updated - chrono::Duration::seconds(1),
        "Date {created_date} is updated {updated} truncated to the second, or later"
    );
    assert!(created_date - updated < chrono::Duration::seconds(2));
    let skew = chrono::Duration::milliseconds(skew_ms);
    assert!(updated >= local_before + skew - chrono::Duration::seconds(1));
    assert!(updated <= local_after + skew + chrono::Duration::seconds(1));

    let responses = vec![
        h.get(B, "o", "").await,
        h.get(B, "missing", "").await,
        h.upload_media(B, "o", "ifGenerationMatch=0", b"x").await,
        h.get(B, "o", "ifGenerationMatch=abc").await,
        h.list(B, "").await,
        h.create_bucket(B).await,
        h.client
            .get(h.url("/_strict/stats"))
            .send()
            .await
            .expect("answered"),
        h.client
            .get(h.url("/no/such/route"))
            .send()
            .await
            .expect("answered"),
    ];
    for response in &responses {
        let d = date(response);
        assert!(
            (d - updated).num_seconds().abs() <= 60,
            "{} Date {d} on the skewed clock",
            response.url()
        );
    }
}

#[tokio::test]
async fn list_paginates_in_name_order() {
    let h = start(&[B]).await;
    let names = ["p/3", "p/1", "p/5", "p/2", "p/4", "q/1", "o"];
    for name in names {
        h.create(B, name, json!({"n": name})).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &token {
            Some(t) => format!("prefix=p%2F&maxResults=2&pageToken={}", enc(t)),
            None => "prefix=p%2F&maxResults=2".to_owned(),
        };
        let response = h.list(B, &query).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.expect("list JSON");
        assert_eq!(page["kind"], "storage#objects");
        pages += 1;
        let items = page["items"].as_array().expect("items on a non-empty page");
        assert!(items.len() <= 2);
        for item in items {
            assert_eq!(item["kind"], "storage#object");
            assert_eq!(item["metadata"]["n"], item["name"]);
            seen.push(item["name"].as_str().expect("name").to_owned());
        }
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["p/1", "p/2", "p/3", "p/4", "p/5"]);
    assert_eq!(pages, 3);

    let all: Value = h.list(B, "").await.json().await.expect("list JSON");
    assert_eq!(all["items"].as_array().map(Vec::len), Some(names.len()));
    assert!(all.get("nextPageToken").is_none());

    let empty: Value = h
        .list(B, "prefix=zzz")
        .await
        .json()
        .await
        .expect("list JSON");
    assert_eq!(
        empty,
        json!({"kind": "storage#objects"}),
        "no items key when empty"
    );

    assert_eq!(
        h.list(B, "pageToken=%2A%2A%2A").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.list(B, "delimiter=%2F").await.status(),
        StatusCode::NOT_IMPLEMENTED
    );
}

#[tokio::test]
async fn percent_encoded_names_with_slashes_and_spaces() {
    let h = start(&[B]).await;
    let name = "jobs/nightly run/lock+1 %20é.txt";
    let (g, m) = h.create(B, name, json!({"k": "v"})).await;
    let object = h.stat(B, name).await.expect("found by its encoded name");
    assert_eq!(object["name"], name);
    assert_eq!(object["id"], format!("{B}/{name}/{g}"));
    let patched = h
        .patch(B, name, &if_version(g, m), &json!({"metadata": {"k": "w"}}))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let listed: Value = h
        .list(B, &format!("prefix={}", enc("jobs/nightly run/")))
        .await
        .json()
        .await
        .expect("list JSON");
    assert_eq!(listed["items"][0]["name"], name);
    // An unencoded '/' is not an object name in one segment: GCS needs %2F.
    let raw = h
        .client
        .get(h.url(&format!("/storage/v1/b/{B}/o/jobs/x")))
        .send()
        .await
        .expect("answered");
    assert_eq!(raw.status(), StatusCode::NOT_FOUND);
    // Multipart with the name in the metadata, media with the name in the query.
    let media_name = "a/b c";
    let response = h
        .upload_media(B, media_name, "ifGenerationMatch=0", b"x")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("object JSON")["name"],
        media_name
    );
    assert_eq!(
        h.delete(B, media_name, "").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.delete(B, name, "").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_writes_have_exactly_one_winner() {
    let h = std::sync::Arc::new(start(&[B]).await);
    let creates: Vec<_> = (0..16)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                let meta = json!({"name": "contended", "metadata": {"who": i.to_string()}});
                h.upload_multipart(B, "ifGenerationMatch=0", &meta, b"")
                    .await
                    .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in creates {
        statuses.push(task.await.expect("create task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::PRECONDITION_FAILED));

    let (g, m) = version(&h.stat(B, "contended").await.expect("exists"));
    let patches: Vec<_> = (0..16)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                let query = if_version(g, m);
                h.patch(
                    B,
                    "contended",
                    &query,
                    &json!({"metadata": {"who": i.to_string()}}),
                )
                .await
                .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in patches {
        statuses.push(task.await.expect("patch task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        version(&h.stat(B, "contended").await.expect("exists")),
        (g, m + 1)
    );
}
