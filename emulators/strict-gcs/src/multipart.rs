//! `multipart/related` bodies, as GCS multipart uploads send them (RFC 2046,
//! CRLF line endings).

use bytes::Bytes;

/// One body part: its headers (names lower-cased) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The boundary parameter of a `multipart/related` content type.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/related") {
        return Err(format!(
            "a multipart upload needs Content-Type multipart/related, not {essence:?}"
        ));
    }
    for param in params {
        if let Some((key, value)) = param.split_once('=') {
            if key.trim().eq_ignore_ascii_case("boundary") {
                let value = value.trim().trim_matches('"');
                if value.is_empty() || value.len() > 70 {
                    return Err("the multipart boundary must be 1 to 70 characters".into());
                }
                return Ok(value.to_owned());
            }
        }
    }
    Err("the multipart Content-Type has no boundary parameter".into())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|i| i + from)
}

/// Splits a multipart body into its parts.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let next_delimiter = format!("\r\n--{boundary}").into_bytes();
    // The first delimiter may start the body, or follow a preamble and a CRLF.
    let mut pos = if body.starts_with(&delimiter) {
        0
    } else {
        find(body, &next_delimiter, 0)
            .map(|i| i + 2)
            .ok_or("the body does not contain the multipart boundary")?
    };
    let mut parts = Vec::new();
    loop {
        let after = pos + delimiter.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        let line_end =
            find(body, b"\r\n", after).ok_or("a multipart delimiter line has no CRLF")?;
        if !body[after..line_end]
            .iter()
            .all(|b| *b == b' ' || *b == b'\t')
        {
            return Err("unexpected text after a multipart delimiter".into());
        }
        let start = line_end + 2;
        let end = find(body, &next_delimiter, start)
            .ok_or("the multipart body has no closing boundary")?;
        parts.push(parse_part(body.slice(start..end))?);
        pos = end + 2;
        if parts.len() > 16 {
            return Err("too many multipart parts".into());
        }
    }
}

fn parse_part(raw: Bytes) -> Result<Part, String> {
    let (head, content_start) = if raw.starts_with(b"\r\n") {
        (&raw[..0], 2)
    } else {
        let end = find(&raw, b"\r\n\r\n", 0)
            .ok_or("a multipart part has no blank line after its headers")?;
        (&raw[..end], end + 4)
    };
    let head = std::str::from_utf8(head).map_err(|_| "multipart part headers are not UTF-8")?;
    let mut headers = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed multipart header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Part {
        headers,
        body: raw.slice(content_start..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_parts() {
        let body = Bytes::from_static(
            b"--xyz\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"a\"}\r\n\
              --xyz\r\nContent-Type: text/plain\r\n\r\nhello\r\nworld\r\n--xyz--\r\n",
        );
        let parts = parse(&body, "xyz").expect("valid multipart");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, Bytes::from_static(b"{\"name\":\"a\"}"));
        assert_eq!(
            parts[0].header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(parts[1].body, Bytes::from_static(b"hello\r\nworld"));
        assert_eq!(parts[1].header("Content-Type"), Some("text/plain"));
    }

    #[test]
    fn empty_media_and_no_headers() {
        let body = Bytes::from_static(b"preamble\r\n--b\r\n\r\n{}\r\n--b\r\n\r\n\r\n--b--");
        let parts = parse(&body, "b").expect("valid multipart");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, Bytes::from_static(b"{}"));
        assert!(parts[1].body.is_empty());
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse(&Bytes::from_static(b"no boundary here"), "b").is_err());
        assert!(parse(&Bytes::from_static(b"--b\r\n\r\n{}"), "b").is_err());
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/related").is_err());
        assert_eq!(
            boundary("multipart/related; boundary=\"a b\"").as_deref(),
            Ok("a b")
        );
    }
}
