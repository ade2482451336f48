//! Query parameters, and the four generation preconditions with GCS's rules.

use gcslock::backend::ObjectVersion;

use crate::error::GcsError;

/// Decoded query parameters, in order.
#[derive(Clone, Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a raw query string (`+` is a space, as in every Google API).
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `name`; a parameter given twice is rejected.
    pub fn get(&self, name: &str) -> Result<Option<&str>, GcsError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(GcsError::invalid(format!(
                "Parameter {name} was given more than once."
            )));
        }
        Ok(first.map(String::as_str))
    }

    /// A non-negative int64 parameter.
    pub fn get_i64(&self, name: &str) -> Result<Option<i64>, GcsError> {
        let Some(text) = self.get(name)? else {
            return Ok(None);
        };
        match text.parse::<i64>() {
            Ok(value) if value >= 0 => Ok(Some(value)),
            _ => Err(GcsError::invalid(format!(
                "Invalid value for {name}: {text:?} is not a non-negative 64-bit integer."
            ))),
        }
    }

    /// A boolean parameter (`true`/`false`).
    pub fn get_bool(&self, name: &str) -> Result<Option<bool>, GcsError> {
        match self.get(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(GcsError::invalid(format!(
                "Invalid value for {name}: {other:?} is not a boolean."
            ))),
        }
    }
}

/// `ifGenerationMatch`, `ifGenerationNotMatch`, `ifMetagenerationMatch`,
/// `ifMetagenerationNotMatch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_generation_match: Option<i64>,
    pub if_generation_not_match: Option<i64>,
    pub if_metageneration_match: Option<i64>,
    pub if_metageneration_not_match: Option<i64>,
}

impl Preconditions {
    pub fn from_query(query: &Query) -> Result<Self, GcsError> {
        Ok(Self {
            if_generation_match: query.get_i64("ifGenerationMatch")?,
            if_generation_not_match: query.get_i64("ifGenerationNotMatch")?,
            if_metageneration_match: query.get_i64("ifMetagenerationMatch")?,
            if_metageneration_not_match: query.get_i64("ifMetagenerationNotMatch")?,
        })
    }

    /// Checks the preconditions against the live object, `None` when there is none.
    ///
    /// * A failed `...Match` gives 412; it is checked first and wins.
    /// * A failed `...NotMatch` gives 304 Not Modified, as GCS documents for these two.
    /// * With no live object (only reachable for uploads; the other calls answer 404
    ///   first) every precondition fails with 412 except `ifGenerationMatch=0`, which
    ///   is exactly "must not exist". GCS documents this for `ifGenerationNotMatch`
    ///   ("If no live object exists, the precondition fails") and strict-gcs applies
    ///   it to the metageneration conditions too.
    pub fn check(&self, current: Option<ObjectVersion>) -> Result<(), GcsError> {
        let Some(version) = current else {
            let only_must_not_exist = matches!(self.if_generation_match, None | Some(0))
                && self.if_generation_not_match.is_none()
                && self.if_metageneration_match.is_none()
                && self.if_metageneration_not_match.is_none();
            return if only_must_not_exist {
                Ok(())
            } else {
                Err(GcsError::precondition_failed())
            };
        };
        let generation_fails = self
            .if_generation_match
            .is_some_and(|g| g != version.generation);
        let metageneration_fails = self
            .if_metageneration_match
            .is_some_and(|m| m != version.metageneration);
        if generation_fails || metageneration_fails {
            return Err(GcsError::precondition_failed());
        }
        let not_modified = self.if_generation_not_match == Some(version.generation)
            || self.if_metageneration_not_match == Some(version.metageneration);
        if not_modified {
            return Err(GcsError::not_modified());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const V: ObjectVersion = ObjectVersion {
        generation: 7,
        metageneration: 3,
    };

    fn status(p: Preconditions, current: Option<ObjectVersion>) -> Option<StatusCode> {
        p.check(current).err().map(|e| e.status)
    }

    #[test]
    fn rules() {
        let none = Preconditions::default();
        assert_eq!(status(none, None), None);
        assert_eq!(status(none, Some(V)), None);

        let gm = |g| Preconditions {
            if_generation_match: Some(g),
            ..none
        };
        assert_eq!(status(gm(0), None), None);
        assert_eq!(
            status(gm(0), Some(V)),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(status(gm(7), Some(V)), None);
        assert_eq!(
            status(gm(8), Some(V)),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(status(gm(7), None), Some(StatusCode::PRECONDITION_FAILED));

        let mgm = Preconditions {
            if_metageneration_match: Some(3),
            ..none
        };
        assert_eq!(status(mgm, Some(V)), None);
        assert_eq!(
            status(
                mgm,
                Some(ObjectVersion {
                    metageneration: 4,
                    ..V
                })
            ),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(status(mgm, None), Some(StatusCode::PRECONDITION_FAILED));

        let gnm = |g| Preconditions {
            if_generation_not_match: Some(g),
            ..none
        };
        assert_eq!(status(gnm(7), Some(V)), Some(StatusCode::NOT_MODIFIED));
        assert_eq!(status(gnm(6), Some(V)), None);
        assert_eq!(status(gnm(0), Some(V)), None);
        assert_eq!(status(gnm(0), None), Some(StatusCode::PRECONDITION_FAILED));

        let mgnm = Preconditions {
            if_metageneration_not_match: Some(3),
            ..none
        };
        assert_eq!(status(mgnm, Some(V)), Some(StatusCode::NOT_MODIFIED));

        // A failed Match wins over a failed NotMatch.
        let both = Preconditions {
            if_generation_match: Some(8),
            if_generation_not_match: Some(7),
            ..none
        };
        assert_eq!(status(both, Some(V)), Some(StatusCode::PRECONDITION_FAILED));
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "ifGenerationMatch=0&name=a+b%2Fc&x=1&x=2&bad=-1&nan=abc",
        ));
        assert_eq!(q.get_i64("ifGenerationMatch").ok().flatten(), Some(0));
        assert_eq!(q.get("name").ok().flatten(), Some("a b/c"));
        assert!(q.get("x").is_err());
        assert!(q.get_i64("bad").is_err());
        assert!(q.get_i64("nan").is_err());
        assert_eq!(q.get("missing").ok().flatten(), None);
    }
}
