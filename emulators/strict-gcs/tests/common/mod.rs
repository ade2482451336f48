//! Shared test helpers: an in-process server and a reqwest client.

#![allow(dead_code)]

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use strict_gcs::{FaultConfig, Server, ServerConfig};

pub struct Harness {
    pub server: Server,
    pub client: Client,
    pub base: String,
}

/// Percent-encodes one path segment or query value (everything but unreserved).
pub fn enc(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client builds")
}

pub async fn start(buckets: &[&str]) -> Harness {
    start_with(buckets, FaultConfig::default()).await
}

pub async fn start_with(buckets: &[&str], faults: FaultConfig) -> Harness {
    let config = ServerConfig {
        buckets: buckets.iter().map(|b| b.to_string()).collect(),
        faults,
        seed: Some(1),
        verbose: false,
    };
    let server = Server::bind("127.0.0.1:0", config)
        .await
        .expect("the server binds a free port");
    let base = server.url();
    Harness {
        server,
        client: client(),
        base,
    }
}

pub const BOUNDARY: &str = "strict_gcs_test_boundary";

pub fn multipart_body(metadata: &Value, media: &[u8], media_type: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n\
             --{BOUNDARY}\r\nContent-Type: {media_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(media);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn object_request(
        &self,
        method: Method,
        bucket: &str,
        name: &str,
        query: &str,
    ) -> RequestBuilder {
        let url = self.url(&format!("/storage/v1/b/{bucket}/o/{}?{query}", enc(name)));
        self.client.request(method, url)
    }

    /// Sends a request to a control endpoint (`/_strict/...`); it must be answered.
    pub async fn control(&self, method: Method, path: &str) -> Response {
        self.client
            .request(method, self.url(path))
            .send()
            .await
            .expect("control endpoint answers")
    }

    pub async fn create_bucket(&self, name: &str) -> Response {
        self.client
            .post(self.url("/storage/v1/b?project=test"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("create bucket is answered")
    }

    pub async fn try_upload_media(
        &self,
        bucket: &str,
        name: &str,
        query: &str,
        body: &'static [u8],
    ) -> reqwest::Result<Response> {
        self.client
            .post(self.url(&format!(
                "/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}&{query}",
                enc(name)
            )))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
    }

    pub async fn upload_media(
        &self,
        bucket: &str,
        name: &str,
        query: &str,
        body: &'static [u8],
    ) -> Response {
        self.try_upload_media(bucket, name, query, body)
            .await
            .expect("media upload is answered")
    }

    pub async fn try_upload_multipart(
        &self,
        bucket: &str,
        query: &str,
        metadata: &Value,
        media: &[u8],
    ) -> reqwest::Result<Response> {
        self.client
            .post(self.url(&format!(
                "/upload/storage/v1/b/{bucket}/o?uploadType=multipart&{query}"
            )))
            .header(
                "content-type",
                format!("multipart/related; boundary={BOUNDARY}"),
            )
            .body(multipart_body(metadata, media, "text/plain"))
            .send()
            .await
    }

    pub async fn upload_multipart(
        &self,
        bucket: &str,
        query: &str,
        metadata: &Value,
        media: &[u8],
    ) -> Response {
        self.try_upload_multipart(bucket, query, metadata, media)
            .await
            .expect("multipart upload is answered")
    }

    /// Creates `name` with `ifGenerationMatch=0` and returns (generation, metageneration).
    pub async fn create(&self, bucket: &str, name: &str, metadata: Value) -> (i64, i64) {
        let response = self
            .upload_multipart(
                bucket,
                "ifGenerationMatch=0",
                &serde_json::json!({ "name": name, "metadata": metadata }),
                b"",
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "create {name}");
        version(&response.json().await.expect("object JSON"))
    }

    pub async fn try_get(
        &self,
        bucket: &str,
        name: &str,
        query: &str,
    ) -> reqwest::Result<Response> {
        self.object_request(Method::GET, bucket, name, query)
            .send()
            .await
    }

    pub async fn get(&self, bucket: &str, name: &str, query: &str) -> Response {
        self.try_get(bucket, name, query)
            .await
            .expect("get is answered")
    }

    /// The object resource, or `None` on 404.
    pub async fn stat(&self, bucket: &str, name: &str) -> Option<Value> {
        let response = self.get(bucket, name, "").await;
        match response.status() {
            StatusCode::OK => Some(response.json().await.expect("object JSON")),
            StatusCode::NOT_FOUND => None,
            other => panic!("unexpected status {other} reading {name}"),
        }
    }

    pub async fn try_patch(
        &self,
        bucket: &str,
        name: &str,
        query: &str,
        body: &Value,
    ) -> reqwest::Result<Response> {
        self.object_request(Method::PATCH, bucket, name, query)
            .json(body)
            .send()
            .await
    }

    pub async fn patch(&self, bucket: &str, name: &str, query: &str, body: &Value) -> Response {
        self.try_patch(bucket, name, query, body)
            .await
            .expect("patch is answered")
    }

    pub async fn try_delete(
        &self,
        bucket: &str,
        name: &str,
        query: &str,
    ) -> reqwest::Result<Response> {
        self.object_request(Method::DELETE, bucket, name, query)
            .send()
            .await
    }

    pub async fn delete(&self, bucket: &str, name: &str, query: &str) -> Response {
        self.try_delete(bucket, name, query)
            .await
            .expect("delete is answered")
    }

    pub async fn list(&self, bucket: &str, query: &str) -> Response {
        self.client
            .get(self.url(&format!("/storage/v1/b/{bucket}/o?{query}")))
            .send()
            .await
            .expect("list is answered")
    }

    pub async fn set_faults(&self, faults: Value) -> Value {
        let response = self
            .client
            .post(self.url("/_strict/faults"))
            .json(&faults)
            .send()
            .await
            .expect("control endpoint answers");
        assert_eq!(response.status(), StatusCode::OK, "fault settings accepted");
        response.json().await.expect("fault settings JSON")
    }

    pub async fn clear_faults(&self) {
        let response = self.control(Method::DELETE, "/_strict/faults").await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// The fault settings now in force.
    pub async fn faults(&self) -> Value {
        get_json(&self.client, self.url("/_strict/faults")).await
    }

    pub async fn stats(&self) -> Value {
        get_json(&self.client, self.url("/_strict/stats")).await
    }
}

/// GETs `url`, which must answer with JSON.
pub async fn get_json(client: &Client, url: String) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON")
}

/// The query of a request that applies only to generation `g`, metageneration `m`.
pub fn if_version(g: i64, m: i64) -> String {
    format!("ifGenerationMatch={g}&ifMetagenerationMatch={m}")
}

/// (generation, metageneration) of an object resource; both must be strings.
pub fn version(object: &Value) -> (i64, i64) {
    let field = |name: &str| -> i64 {
        object[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} must be a string in {object}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be numeric in {object}"))
    };
    (field("generation"), field("metageneration"))
}

/// Asserts GCS's error shape and returns the reason.
pub async fn error_reason(response: Response, status: StatusCode) -> (String, String) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert_eq!(error["code"], status.as_u16(), "code in {body}");
    let message = error["message"].as_str().expect("error.message").to_owned();
    let first = &error["errors"][0];
    assert_eq!(first["domain"], "global", "domain in {body}");
    assert_eq!(
        first["message"],
        message.as_str(),
        "errors[0].message in {body}"
    );
    let reason = first["reason"]
        .as_str()
        .expect("errors[0].reason")
        .to_owned();
    (reason, message)
}

pub fn status_of(result: &reqwest::Result<Response>) -> Option<StatusCode> {
    result.as_ref().ok().map(Response::status)
}
