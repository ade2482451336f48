//! The JSON resources and header values GCS sends.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use gcslock::backend::ObjectInfo;
use serde_json::{json, Value};

/// Attributes GCS keeps that the library's model does not: they belong to one
/// generation of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub generation: i64,
    pub content_type: String,
    pub time_created: DateTime<Utc>,
    pub size: u64,
}

/// RFC 3339 with millisecond precision and a `Z`, as GCS writes timestamps.
pub fn rfc3339_ms(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An HTTP-date (RFC 9110 IMF-fixdate) for the `Date` header.
pub fn http_date(time: DateTime<Utc>) -> String {
    time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The object's etag. GCS's JSON-API etag is an opaque base64 string; in practice a
/// small protobuf of (generation, metageneration), which is what this produces.
pub fn etag(generation: i64, metageneration: i64) -> String {
    let mut bytes = vec![0x08];
    push_varint(&mut bytes, generation as u64);
    bytes.push(0x10);
    push_varint(&mut bytes, metageneration as u64);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The object resource (`storage#object`).
pub fn object_json(bucket: &str, info: &ObjectInfo, attrs: &Attrs) -> Value {
    let version = info.version;
    let mut object = json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{}/{}", info.name, version.generation),
        "name": info.name,
        "bucket": bucket,
        "generation": version.generation.to_string(),
        "metageneration": version.metageneration.to_string(),
        "contentType": attrs.content_type,
        "storageClass": "STANDARD",
        "size": attrs.size.to_string(),
        "timeCreated": rfc3339_ms(attrs.time_created),
        "updated": rfc3339_ms(info.updated),
        "timeStorageClassUpdated": rfc3339_ms(attrs.time_created),
        "etag": etag(version.generation, version.metageneration),
    });
    if !info.metadata.is_empty() {
        object["metadata"] = json!(info.metadata);
    }
    object
}

/// The bucket resource (`storage#bucket`).
pub fn bucket_json(name: &str, created: DateTime<Utc>) -> Value {
    json!({
        "kind": "storage#bucket",
        "id": name,
        "name": name,
        "projectNumber": "0",
        "metageneration": "1",
        "location": "US",
        "locationType": "multi-region",
        "storageClass": "STANDARD",
        "etag": "CAE=",
        "timeCreated": rfc3339_ms(created),
        "updated": rfc3339_ms(created),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats() {
        let t = Utc
            .with_ymd_and_hms(2024, 3, 5, 7, 8, 9)
            .single()
            .expect("valid date")
            + chrono::Duration::microseconds(123_456);
        assert_eq!(rfc3339_ms(t), "2024-03-05T07:08:09.123Z");
        assert_eq!(http_date(t), "Tue, 05 Mar 2024 07:08:09 GMT");
        // A GCS-style etag: protobuf {1: generation, 2: metageneration}, base64.
        assert_eq!(etag(1_418_688_703_353_000, 1), "CKih16GjycICEAE=");
    }
}
