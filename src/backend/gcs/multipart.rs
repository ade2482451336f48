//! multipart/related upload bodies: the object resource (name and metadata, so
//! both are set atomically with the media) and the media, streamed between a
//! head and a tail.

use crate::backend::{BackendError, Metadata};

/// What surrounds the media of a multipart/related upload.
pub(super) struct MultipartFrame {
    pub(super) content_type: String,
    /// The JSON part and the media part's headers.
    pub(super) head: String,
    /// The closing delimiter.
    pub(super) tail: String,
}

/// The frame of a multipart upload whose media is streamed between `head` and
/// `tail`. The boundary is random (128 bits), so media bytes cannot realistically
/// contain it; the JSON part, which is known, is checked.
pub(super) fn multipart_frame(
    name: &str,
    metadata: &Metadata,
) -> Result<MultipartFrame, BackendError> {
    let resource = serde_json::json!({ "name": name, "metadata": metadata });
    let json = serde_json::to_string(&resource)
        .map_err(|e| BackendError::InvalidResponse(format!("cannot encode metadata: {e}")))?;
    let mut boundary = format!("gcslock-{:032x}", rand::random::<u128>());
    while json.contains(&boundary) {
        boundary = format!("gcslock-{:032x}", rand::random::<u128>());
    }
    Ok(MultipartFrame {
        content_type: format!("multipart/related; boundary={boundary}"),
        head: format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ),
        tail: format!("\r\n--{boundary}--\r\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_body_carries_name_and_metadata() {
        let metadata = Metadata::from([("holder".to_owned(), "h \"1\"".to_owned())]);
        let frame = multipart_frame("a/b", &metadata).expect("frame");
        let content_type = frame.content_type;
        let body = [frame.head, frame.tail].concat();
        let boundary = content_type
            .strip_prefix("multipart/related; boundary=")
            .expect("boundary");
        assert!(body.starts_with(&format!("--{boundary}\r\n")), "{body}");
        assert!(body.ends_with(&format!("\r\n--{boundary}--\r\n")), "{body}");
        let json_start = body.find('{').expect("json");
        let json_end = body.rfind('}').expect("json") + 1;
        let resource: serde_json::Value =
            serde_json::from_str(&body[json_start..json_end]).expect("json part");
        assert_eq!(resource["name"], "a/b");
        assert_eq!(resource["metadata"]["holder"], "h \"1\"");
        assert!(body.contains("Content-Type: application/octet-stream\r\n\r\n\r\n--"));
    }
}
