//! `gs://BUCKET/OBJECT` URLs of fenced objects and GCS's naming rules, checked
//! before any request. (Lock URLs of every store are `backend::StorageUrl`.)

use std::fmt;
use std::str::FromStr;

use crate::backend::{Scheme, StorageUrl};
use crate::Error;

/// A GCS object's address, `gs://BUCKET/OBJECT`: where a fenced object lives
/// ([`crate::fence`] needs GCS's preconditions). Lock URLs of any store are
/// [`crate::backend::StorageUrl`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    bucket: String,
    object: String,
}

impl ObjectUrl {
    /// Builds a URL from parts, validating both.
    pub fn new(bucket: &str, object: &str) -> Result<Self, Error> {
        validate_bucket_name(bucket)?;
        validate_object_name(object)?;
        Ok(Self {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object name.
    pub fn object(&self) -> &str {
        &self.object
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.object)
    }
}

impl FromStr for ObjectUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let parsed = gcs_only(url, StorageUrl::parse_object)?;
        Ok(Self {
            bucket: parsed.bucket().to_owned(),
            object: parsed.name().to_owned(),
        })
    }
}

/// This type names GCS objects (fenced objects need GCS's preconditions):
/// another store's URL is refused by name.
fn gcs_only(url: &str, parse: fn(&str) -> Result<StorageUrl, Error>) -> Result<StorageUrl, Error> {
    match url.split_once("://") {
        Some((scheme, _)) if scheme != Scheme::Gcs.as_str() => Err(Error::InvalidInput(format!(
            "unsupported scheme {scheme:?} in {url:?}: expected gs://BUCKET/OBJECT"
        ))),
        _ => parse(url),
    }
}

/// GCS bucket naming rules (<https://cloud.google.com/storage/docs/buckets#naming>).
pub(crate) fn validate_bucket_name(bucket: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::InvalidInput(format!(
            "invalid bucket name {bucket:?}: {why}"
        )))
    };
    if bucket.is_empty() {
        return invalid("it is empty");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("only lowercase letters, digits, '-', '_' and '.' are allowed");
    }
    let max = if bucket.contains('.') { 222 } else { 63 };
    if bucket.len() < 3 || bucket.len() > max {
        return invalid(&format!("it must be 3 to {max} characters long"));
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(bucket.bytes().next()) || !alnum(bucket.bytes().last()) {
        return invalid("it must start and end with a letter or digit");
    }
    if bucket
        .split('.')
        .any(|part| part.is_empty() || part.len() > 63)
    {
        return invalid("each dot-separated part must be 1 to 63 characters long");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return invalid("it must not be an IP address");
    }
    if bucket.starts_with("goog") || bucket.contains("google") || bucket.contains("g00gle") {
        return invalid("it must not start with \"goog\" or contain \"google\"");
    }
    Ok(())
}

/// GCS object naming rules (<https://cloud.google.com/storage/docs/objects#naming>).
pub(crate) fn validate_object_name(object: &str) -> Result<(), Error> {
    if object.is_empty() {
        return Err(Error::InvalidInput("the object name is empty".into()));
    }
    if object == "." || object == ".." {
        return Err(Error::InvalidInput(format!(
            "invalid object name {object:?}: \".\" and \"..\" are not allowed"
        )));
    }
    if object.starts_with(".well-known/acme-challenge/") {
        return Err(Error::InvalidInput(format!(
            "invalid object name {object:?}: the .well-known/acme-challenge/ prefix is reserved"
        )));
    }
    check_object_characters(object)
}

pub(crate) fn check_object_characters(object: &str) -> Result<(), Error> {
    if object.len() > 1024 {
        return Err(Error::InvalidInput(format!(
            "invalid object name: {} bytes long, at most 1024 are allowed",
            object.len()
        )));
    }
    if object
        .chars()
        .any(|c| c == '\r' || c == '\n' || c.is_control())
    {
        return Err(Error::InvalidInput(format!(
            "invalid object name {object:?}: control characters (such as newlines) are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_urls() {
        let url: ObjectUrl = "gs://my-bucket/jobs/nightly".parse().expect("valid");
        assert_eq!(url.bucket(), "my-bucket");
        assert_eq!(url.object(), "jobs/nightly");
        assert_eq!(url.to_string(), "gs://my-bucket/jobs/nightly");
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        for (url, reason) in [
            ("s3://bucket/object", "unsupported scheme"),
            ("bucket/object", "not a gs:// URL"),
            ("gs://bucket", "names no object"),
            ("gs://bucket/", "names no object"),
            ("gs://Bucket/o", "lowercase"),
            ("gs://ab/o", "3 to 63"),
            ("gs://-abc/o", "start and end"),
            ("gs://192.168.1.1/o", "IP address"),
            ("gs://googlebucket/o", "goog"),
            ("gs://a..b/o", "dot-separated"),
            ("gs://bucket/a\nb", "control characters"),
            ("gs://bucket/..", "not allowed"),
            ("gs:///object", "empty"),
        ] {
            let err = url.parse::<ObjectUrl>().expect_err(url).to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
        let long = format!("gs://bucket/{}", "x".repeat(1025));
        assert!(long.parse::<ObjectUrl>().is_err());
    }
}
