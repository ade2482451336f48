//! `GcsBackend` against canned HTTP responses: request shapes, and the mapping of
//! statuses, bodies and transport failures to `BackendError`.

use std::time::Duration;

use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::{Backend, BackendError, Metadata, ObjectVersion, WriteCondition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use gcslock::conformance::steps::metadata;

/// Upper bound for anything that should fail fast; never a sleep.
const BOUND: Duration = Duration::from_secs(10);

const OBJECT: &str = r#"{"kind":"storage#object","name":"a/b c","bucket":"bkt",
  "generation":"1795576686794863","metageneration":"3","updated":"2026-11-25T03:18:06.794853Z",
  "metadata":{"holder":"h"}}"#;
const VERSION: ObjectVersion = ObjectVersion {
    generation: 1_795_576_686_794_863,
    metageneration: 3,
};

/// One request as the server saw it.
#[derive(Debug)]
struct Recorded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves `responses` in order, one per connection, and records the requests.
/// A `None` response reads the request and then never answers.
async fn serve(responses: Vec<Option<String>>) -> (String, mpsc::UnboundedReceiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for response in responses {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let Some(recorded) = read_request(&mut stream).await else {
                return;
            };
            let _ = tx.send(recorded);
            match response {
                Some(response) => {
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
                // Hold the connection open until the test ends.
                None => std::future::pending::<()>().await,
            }
        }
    });
    (endpoint, rx)
}

async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body: data[head_end..].to_vec(),
    })
}

fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Option<String> {
    let mut text = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(text)
}

fn json(status: &str, body: &str) -> Option<String> {
    response(
        status,
        &[
            ("Content-Type", "application/json"),
            ("Date", "Wed, 25 Nov 2026 03:18:07 GMT"),
        ],
        body,
    )
}

fn gcs_error(code: u16, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message,
        "errors": [{"domain": "global", "reason": "x", "message": message}]}})
    .to_string()
}

fn backend(endpoint: &str) -> GcsBackend {
    GcsBackend::builder("bkt")
        .endpoint(Some(endpoint.to_owned()))
        .request_timeout(Duration::from_secs(5))
        .build()
        .expect("backend")
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(BOUND, future).await.expect("bounded")
}

#[tokio::test]
async fn read_sends_one_encoded_segment_without_credentials() {
    let (endpoint, mut requests) = serve(vec![json("200 OK", OBJECT)]).await;
    let b = backend(&endpoint);
    assert!(!b.sends_credentials());
    let read = within(b.read("a/b c")).await.expect("read");
    let info = read.value.expect("object");
    assert_eq!(info.name, "a/b c");
    assert_eq!(info.version, VERSION);
    assert_eq!(info.metadata, metadata(&[("holder", "h")]));
    assert_eq!(
        read.server_time.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-11-25T03:18:07+00:00")
    );
    let request = requests.recv().await.expect("request");
    assert_eq!(request.method, "GET");
    assert_eq!(request.target, "/storage/v1/b/bkt/o/a%2Fb%20c");
    assert_eq!(
        request.header("authorization"),
        None,
        "no credentials over plain HTTP"
    );
}

#[tokio::test]
async fn write_is_one_multipart_upload_with_its_precondition() {
    let (endpoint, mut requests) =
        serve(vec![json("200 OK", OBJECT), json("200 OK", OBJECT)]).await;
    let b = backend(&endpoint);
    let metadata = metadata(&[("holder", "h"), ("nonce", "n1")]);
    within(b.write("a/b c", WriteCondition::DoesNotExist, &metadata))
        .await
        .expect("create");
    let request = requests.recv().await.expect("request");
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/upload/storage/v1/b/bkt/o?uploadType=multipart&ifGenerationMatch=0"
    );
    let content_type = request.header("content-type").expect("content type");
    assert!(
        content_type.starts_with("multipart/related; boundary="),
        "{content_type}"
    );
    let body = String::from_utf8(request.body).expect("utf-8 body");
    let start = body.find('{').expect("json part");
    let end = start + body[start..].find("\r\n--").expect("end of the json part");
    let resource: serde_json::Value = serde_json::from_str(&body[start..end]).expect("json");
    assert_eq!(resource["name"], "a/b c");
    assert_eq!(resource["metadata"]["nonce"], "n1");
    assert!(body.contains("application/octet-stream"), "{body}");

    within(b.write("x", WriteCondition::Matches(VERSION), &metadata))
        .await
        .expect("replace");
    let request = requests.recv().await.expect("request");
    assert!(
        request.target.ends_with(
            "uploadType=multipart&ifGenerationMatch=1795576686794863&ifMetagenerationMatch=3"
        ),
        "{}",
        request.target
    );
}

#[tokio::test]
async fn update_and_delete_send_both_preconditions() {
    let (endpoint, mut requests) = serve(vec![
        json("200 OK", OBJECT),
        response("204 No Content", &[], ""),
        // fake-gcs-server answers a delete with 200 and a body.
        json("200 OK", "null\n"),
    ])
    .await;
    let b = backend(&endpoint);
    let updated = within(b.update_metadata("a/b c", VERSION, &metadata(&[("k", "v")])))
        .await
        .expect("update");
    assert_eq!(updated.value.version, VERSION);
    let request = requests.recv().await.expect("request");
    assert_eq!(request.method, "PATCH");
    assert_eq!(
        request.target,
        "/storage/v1/b/bkt/o/a%2Fb%20c?ifGenerationMatch=1795576686794863&ifMetagenerationMatch=3"
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("json body");
    assert_eq!(body, serde_json::json!({"metadata": {"k": "v"}}));

    within(b.delete("a/b c", VERSION))
        .await
        .expect("delete 204");
    let request = requests.recv().await.expect("request");
    assert_eq!(request.method, "DELETE");
    assert!(request
        .target
        .ends_with("ifGenerationMatch=1795576686794863&ifMetagenerationMatch=3"));
    within(b.delete("a/b c", VERSION))
        .await
        .expect("delete 200");
}

#[tokio::test]
async fn list_follows_next_page_tokens() {
    let item = |name: &str| {
        format!(
            r#"{{"name":"{name}","generation":"7","metageneration":"1","updated":"2026-11-25T03:18:06Z"}}"#
        )
    };
    let (endpoint, mut requests) = serve(vec![
        json(
            "200 OK",
            &format!(
                r#"{{"items":[{},{}],"nextPageToken":"t+1/="}}"#,
                item("p/b"),
                item("p/a")
            ),
        ),
        json("200 OK", &format!(r#"{{"items":[{}]}}"#, item("p/c"))),
    ])
    .await;
    let listed = within(backend(&endpoint).list("p/")).await.expect("list");
    let names: Vec<_> = listed.iter().map(|o| o.value.name.as_str()).collect();
    assert_eq!(names, ["p/a", "p/b", "p/c"]);
    assert!(listed.iter().all(|o| o.server_time.is_some()));
    let first = requests.recv().await.expect("first page");
    assert_eq!(first.target, "/storage/v1/b/bkt/o?prefix=p%2F");
    let second = requests.recv().await.expect("second page");
    assert_eq!(
        second.target,
        "/storage/v1/b/bkt/o?prefix=p%2F&pageToken=t%2B1%2F%3D"
    );
}

/// A listing that spans pages judges each object by its own page's `Date`: a
/// later page's reading would make an object on an earlier page look older.
#[tokio::test]
async fn list_stamps_each_object_with_its_own_pages_date() {
    let page = |date: &str, body: &str| {
        response(
            "200 OK",
            &[("Content-Type", "application/json"), ("Date", date)],
            body,
        )
    };
    let item = |name: &str| {
        format!(
            r#"{{"name":"{name}","generation":"7","metageneration":"1","updated":"2026-11-25T03:18:06Z"}}"#
        )
    };
    let (endpoint, _requests) = serve(vec![
        page(
            "Wed, 25 Nov 2026 03:18:07 GMT",
            &format!(r#"{{"items":[{}],"nextPageToken":"t"}}"#, item("p/a")),
        ),
        page(
            "Wed, 25 Nov 2026 03:20:07 GMT",
            &format!(r#"{{"items":[{}]}}"#, item("p/b")),
        ),
    ])
    .await;
    let listed = within(backend(&endpoint).list("p/")).await.expect("list");
    let stamps: Vec<_> = listed
        .iter()
        .map(|o| {
            let time = o.server_time.map(|t| t.to_rfc3339());
            (o.value.name.as_str(), time)
        })
        .collect();
    assert_eq!(
        stamps,
        [
            ("p/a", Some("2026-11-25T03:18:07+00:00".to_owned())),
            ("p/b", Some("2026-11-25T03:20:07+00:00".to_owned())),
        ]
    );
}

/// The same, through `list_locks`: a lock on the first page of a long listing is
/// judged by that page's clock, not by a much later page's.
#[tokio::test]
async fn list_locks_judges_each_lock_by_its_own_pages_clock() {
    use gcslock::admin::{list_locks, LockStatus};
    use gcslock::backend::memory::MemoryBackend;
    use gcslock::{Lock, LockOptions, Wait};

    let memory = MemoryBackend::new("bkt");
    let lock = Lock::new(
        std::sync::Arc::new(memory.clone()),
        "p/a",
        LockOptions::default().ttl(Duration::from_secs(300)),
    )
    .expect("lock");
    let _guard = lock.acquire(Wait::No).await.expect("acquire");
    let held = memory
        .read("p/a")
        .await
        .expect("read")
        .value
        .expect("lock object");
    let item = |name: &str| {
        serde_json::json!({
            "name": name,
            "generation": held.version.generation.to_string(),
            "metageneration": held.version.metageneration.to_string(),
            "updated": held.updated.to_rfc3339(),
            "metadata": held.metadata,
        })
    };
    let date = |after: i64| {
        (held.updated + chrono::Duration::seconds(after))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    };
    let page = |date: &str, body: serde_json::Value| {
        response(
            "200 OK",
            &[("Content-Type", "application/json"), ("Date", date)],
            &body.to_string(),
        )
    };
    let (endpoint, _requests) = serve(vec![
        page(
            &date(10),
            serde_json::json!({"items": [item("p/a")], "nextPageToken": "t"}),
        ),
        // The last page answers an hour later: past the first lock's TTL.
        page(&date(3600), serde_json::json!({"items": [item("p/b")]})),
    ])
    .await;
    let locks = within(list_locks(
        &backend(&endpoint),
        "p/",
        Duration::from_secs(10),
    ))
    .await
    .expect("list");
    assert_eq!(locks.len(), 2, "{locks:?}");
    assert!(
        matches!(locks[0], (ref name, LockStatus::Held(_)) if name == "p/a"),
        "{locks:?}"
    );
    assert!(matches!(locks[1].1, LockStatus::Stale(_)), "{locks:?}");
}

#[tokio::test]
async fn list_page_size_is_sent_as_max_results() {
    let (endpoint, mut requests) =
        serve(vec![json("200 OK", r#"{"kind":"storage#objects"}"#)]).await;
    let b = GcsBackend::builder("bkt")
        .endpoint(Some(endpoint))
        .list_page_size(2)
        .build()
        .expect("backend");
    assert!(within(b.list("")).await.expect("list").is_empty());
    let request = requests.recv().await.expect("request");
    assert_eq!(request.target, "/storage/v1/b/bkt/o?prefix=&maxResults=2");
}

#[tokio::test]
async fn missing_date_header_gives_no_server_time() {
    let (endpoint, _requests) = serve(vec![response(
        "200 OK",
        &[("Content-Type", "application/json")],
        OBJECT,
    )])
    .await;
    let read = within(backend(&endpoint).read("x")).await.expect("read");
    assert!(read.value.is_some());
    assert_eq!(read.server_time, None);
}

#[tokio::test]
async fn non_json_success_is_invalid_response() {
    let (endpoint, _requests) = serve(vec![
        response(
            "200 OK",
            &[("Content-Type", "text/plain")],
            "hello, I am not GCS",
        ),
        json("200 OK", r#"{"kind":"storage#object","name":"x"}"#),
    ])
    .await;
    let b = backend(&endpoint);
    match within(b.read("x")).await {
        Err(BackendError::InvalidResponse(message)) => {
            assert!(message.contains("hello, I am not GCS"), "{message}")
        }
        other => panic!("expected InvalidResponse, got {other:?}"),
    }
    match within(b.write("x", WriteCondition::DoesNotExist, &Metadata::new())).await {
        Err(BackendError::InvalidResponse(message)) => {
            assert!(message.contains("generation"), "{message}")
        }
        other => panic!("expected InvalidResponse, got {other:?}"),
    }
}

#[tokio::test]
async fn html_server_error_is_server_with_a_short_message() {
    let html = format!(
        "<html><head><title>502 Bad Gateway</title></head><body>{}</body></html>",
        "x".repeat(5000)
    );
    let (endpoint, _requests) = serve(vec![response(
        "502 Bad Gateway",
        &[("Content-Type", "text/html")],
        &html,
    )])
    .await;
    match within(backend(&endpoint).read("x")).await {
        Err(err @ BackendError::Server { status: 502, .. }) => {
            let message = err.to_string();
            assert!(message.contains("502 Bad Gateway"), "{message}");
            assert!(
                message.len() < 600,
                "message not truncated: {} chars",
                message.len()
            );
            assert!(err.is_transient() && err.may_have_applied());
        }
        other => panic!("expected Server, got {other:?}"),
    }
}

#[tokio::test]
async fn statuses_map_to_their_errors() {
    let (endpoint, _requests) = serve(vec![
        json(
            "412 Precondition Failed",
            &gcs_error(412, "Precondition Failed"),
        ),
        response("429 Too Many Requests", &[("Retry-After", "7")], ""),
        json(
            "403 Forbidden",
            &gcs_error(403, "x@y.iam does not have storage.objects.get access"),
        ),
        json("400 Bad Request", &gcs_error(400, "Invalid argument.")),
        json("404 Not Found", &gcs_error(404, "No such object: bkt/x")),
        json(
            "404 Not Found",
            &gcs_error(404, "The specified bucket does not exist."),
        ),
        json("404 Not Found", &gcs_error(404, "Not Found")),
        json("404 Not Found", &gcs_error(404, "Not Found")),
    ])
    .await;
    let b = backend(&endpoint);
    let v = VERSION;
    let r = within(b.write("x", WriteCondition::DoesNotExist, &Metadata::new())).await;
    assert!(matches!(r, Err(BackendError::PreconditionFailed)), "{r:?}");
    let r = within(b.read("x")).await;
    assert!(
        matches!(r, Err(BackendError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(7)),
        "{r:?}"
    );
    match within(b.delete("x", v)).await {
        Err(BackendError::PermissionDenied(m)) => assert!(m.contains("storage.objects.get"), "{m}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let r = within(b.update_metadata("x", v, &Metadata::new())).await;
    assert!(
        matches!(&r, Err(BackendError::Rejected { status: 400, message }) if message == "Invalid argument."),
        "{r:?}"
    );
    let r = within(b.read("x"))
        .await
        .expect("a missing object is not an error");
    assert!(r.value.is_none());
    let r = within(b.read("x")).await;
    assert!(
        matches!(&r, Err(BackendError::BucketNotFound(name)) if name == "bkt"),
        "{r:?}"
    );
    // A 404 on an upload or a list can only be about the bucket.
    let r = within(b.write("x", WriteCondition::DoesNotExist, &Metadata::new())).await;
    assert!(matches!(r, Err(BackendError::BucketNotFound(_))), "{r:?}");
    let r = within(b.list("")).await;
    assert!(matches!(r, Err(BackendError::BucketNotFound(_))), "{r:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_a_connect_error_naming_it() {
    // Port 1 (tcpmux) is never served here, and no test server can bind it
    // (unlike a just-freed ephemeral port), so the connection is refused at once.
    let endpoint = "http://127.0.0.1:1".to_owned();
    let b = GcsBackend::builder("bkt")
        .endpoint(Some(endpoint.clone()))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("backend");
    match within(b.read("x")).await {
        Err(err @ BackendError::Connect { .. }) => {
            let message = err.to_string();
            assert!(message.contains(&endpoint), "{message}");
            assert!(err.is_transient() && !err.may_have_applied());
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (endpoint, _requests) = serve(vec![None]).await;
    let timeout = Duration::from_millis(300);
    let b = GcsBackend::builder("bkt")
        .endpoint(Some(endpoint))
        .request_timeout(timeout)
        .build()
        .expect("backend");
    let r = within(b.update_metadata("x", VERSION, &Metadata::new())).await;
    assert!(
        matches!(r, Err(BackendError::Timeout(t)) if t == timeout),
        "{r:?}"
    );
}

#[tokio::test]
async fn dot_names_never_reach_the_server() {
    let (endpoint, mut requests) = serve(vec![]).await;
    let b = backend(&endpoint);
    for name in ["", ".", ".."] {
        let r = within(b.delete(name, VERSION)).await;
        assert!(
            matches!(r, Err(BackendError::Rejected { .. })),
            "{name:?}: {r:?}"
        );
    }
    assert!(requests.try_recv().is_err(), "nothing was sent");
}
