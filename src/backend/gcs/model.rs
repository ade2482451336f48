//! The JSON object model of the GCS API and its checked conversions: GCS sends
//! int64 as strings, and every response is untrusted input.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

use super::client::snippet;
use crate::backend::{BackendError, ObjectInfo, ObjectVersion, WriteCondition};

pub(super) fn condition_query(condition: WriteCondition) -> Vec<(&'static str, String)> {
    match condition {
        WriteCondition::DoesNotExist => vec![("ifGenerationMatch", "0".to_owned())],
        WriteCondition::Matches(version) => vec![
            ("ifGenerationMatch", version.generation.to_string()),
            ("ifMetagenerationMatch", version.metageneration.to_string()),
        ],
    }
}

/// The object resource fields the lock needs.
#[derive(Deserialize)]
pub(super) struct RawObject {
    name: String,
    #[serde(deserialize_with = "int64")]
    generation: i64,
    #[serde(deserialize_with = "int64")]
    metageneration: i64,
    updated: DateTime<Utc>,
    #[serde(default, rename = "timeCreated")]
    time_created: Option<DateTime<Utc>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

impl RawObject {
    pub(super) fn into_info(self) -> ObjectInfo {
        ObjectInfo {
            name: self.name,
            version: ObjectVersion {
                generation: self.generation,
                metageneration: self.metageneration,
            },
            updated: self.updated,
            created: self.time_created,
            metadata: self.metadata.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ListPage {
    #[serde(default)]
    pub(super) items: Vec<RawObject>,
    #[serde(default, rename = "nextPageToken")]
    pub(super) next_page_token: Option<String>,
}

/// GCS sends int64 as JSON strings; accept numbers too.
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Number(i64),
        Text(String),
    }
    match Int64::deserialize(deserializer)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an int64"))),
    }
}

pub(super) fn parse_object(
    body: &[u8],
    operation: &str,
    name: &str,
) -> Result<ObjectInfo, BackendError> {
    serde_json::from_slice::<RawObject>(body)
        .map(RawObject::into_info)
        .map_err(|e| {
            let mut why = format!("not an object resource ({e})");
            if e.to_string().contains("metageneration") {
                // fake-gcs-server's PATCH response lacks it; say so instead of puzzling users.
                why.push_str("; fake-gcs-server omits metageneration in PATCH responses, see emulators/README.md");
            }
            invalid_body(operation, name, &why, body)
        })
}

pub(super) fn invalid_body(operation: &str, name: &str, why: &str, body: &[u8]) -> BackendError {
    BackendError::InvalidResponse(format!(
        "{operation} of {name:?}: {why}; body: {}",
        snippet(body)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_resources_parse_with_string_or_number_ints() {
        let body = br#"{"name":"a/b","generation":"1795576686794863","metageneration":"2",
            "updated":"2026-11-25T03:18:06.794853Z","metadata":{"k":"v"},"size":"0"}"#;
        let info = parse_object(body, "get", "a/b").expect("parse");
        assert_eq!(info.name, "a/b");
        assert_eq!(info.version.generation, 1_795_576_686_794_863);
        assert_eq!(info.version.metageneration, 2);
        assert_eq!(info.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            info.updated.to_rfc3339(),
            "2026-11-25T03:18:06.794853+00:00"
        );

        let body =
            br#"{"name":"x","generation":5,"metageneration":1,"updated":"2026-11-25T03:18:06Z"}"#;
        let info = parse_object(body, "get", "x").expect("numbers, no metadata");
        assert_eq!(
            info.version,
            ObjectVersion {
                generation: 5,
                metageneration: 1
            }
        );
        assert!(info.metadata.is_empty());
    }

    #[test]
    fn wrong_shapes_are_invalid_responses_with_a_snippet() {
        let err = parse_object(b"<html>\n  hello </html>", "get", "x").expect_err("html");
        let text = err.to_string();
        assert!(matches!(err, BackendError::InvalidResponse(_)));
        assert!(text.contains("<html> hello </html>"), "{text}");

        // fake-gcs-server's PATCH response: no metageneration.
        let body =
            br#"{"name":"x","generation":"5","updated":"2026-11-25T03:18:06Z","metadata":{}}"#;
        let text = parse_object(body, "metadata update", "x")
            .expect_err("shape")
            .to_string();
        assert!(text.contains("metageneration"), "{text}");

        let big = "x".repeat(10_000);
        let text = parse_object(big.as_bytes(), "get", "x")
            .expect_err("big")
            .to_string();
        assert!(text.len() < 1_000, "{}", text.len());

        let body = br#"{"name":"x","generation":"five","metageneration":"1","updated":"2026-11-25T03:18:06Z"}"#;
        assert!(parse_object(body, "get", "x").is_err());
    }
}
