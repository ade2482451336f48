//! Fault-injection settings: what the flags set at start-up and `POST /_strict/faults`
//! changes at run time.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A per-object mutation rate limit: at most `count` applied mutations of one object
/// name within any window of length `per` (GCS documents about one per second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for RateLimit {
    type Err = String;

    /// Parses `COUNT/PERIOD`: `1/s`, `5/10s`, `2/500ms`, `1/m`, `10/h`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (count, per) = text.split_once('/').ok_or_else(|| {
            format!("rate limit {text:?}: expected COUNT/PERIOD such as 1/s, 5/10s or 2/500ms")
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("rate limit {text:?}: {count:?} is not a whole number"))?;
        if count == 0 {
            return Err(format!("rate limit {text:?}: the count must be at least 1"));
        }
        let per = parse_period(per.trim()).map_err(|e| format!("rate limit {text:?}: {e}"))?;
        if per.is_zero() {
            return Err(format!("rate limit {text:?}: the period must be positive"));
        }
        Ok(Self { count, per })
    }
}

fn parse_period(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = if number.is_empty() {
        1
    } else {
        number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?
    };
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("period {text:?} is too long"))
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}/{}s", self.count, ms / 1000)
        } else {
            write!(f, "{}/{}ms", self.count, ms)
        }
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which requests the probabilistic faults (503, 429, resets, latency, stalls) hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// Every object request: uploads, gets, patches, deletes, lists.
    #[default]
    All,
    /// Only uploads, patches and deletes.
    Mutations,
}

/// Fault-injection settings. Probabilities are in `[0, 1]`; each request draws its
/// faults independently. The control endpoint accepts any subset of these fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Probability of answering 503 without applying anything.
    pub fail_503: f64,
    /// Probability of answering 429 without applying anything.
    pub fail_429: f64,
    /// Probability of resetting the connection before the request is applied.
    pub reset_before: f64,
    /// Probability of applying the request, then resetting the connection instead of
    /// answering (the lost-response case).
    pub reset_after: f64,
    /// Added latency before every request in scope, in milliseconds.
    pub latency_ms: u64,
    /// Uniform jitter on the added latency: `latency_ms ± jitter_ms`, never below 0.
    pub jitter_ms: u64,
    /// Probability of stalling a request for `stall_ms` before it is applied. The
    /// stalled request is applied afterwards even if the client has gone away.
    pub stall: f64,
    /// How long a stall lasts, in milliseconds (until released by
    /// `POST /_strict/stalls/release`).
    pub stall_ms: u64,
    /// Per-object mutation rate limit; `null` is off.
    pub object_rate_limit: Option<RateLimit>,
    /// Which requests the probabilistic faults apply to.
    pub scope: FaultScope,
    /// Server clock skew in milliseconds (positive: the server runs ahead).
    pub skew_ms: i64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            fail_503: 0.0,
            fail_429: 0.0,
            reset_before: 0.0,
            reset_after: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            stall: 0.0,
            stall_ms: 60_000,
            object_rate_limit: None,
            scope: FaultScope::All,
            skew_ms: 0,
        }
    }
}

impl FaultConfig {
    /// Checks that every probability is a number in `[0, 1]`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("fail_503", self.fail_503),
            ("fail_429", self.fail_429),
            ("reset_before", self.reset_before),
            ("reset_after", self.reset_after),
            ("stall", self.stall),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in [0, 1], not {p}"));
            }
        }
        Ok(())
    }

    /// This configuration with the fields present in `patch` replaced.
    pub fn merged(
        &self,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, String> {
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(fields) = &mut value {
            fields.extend(patch);
        }
        let merged: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        merged.validate()?;
        Ok(merged)
    }
}

/// Parses a probability flag value.
pub fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{text} is not a probability in [0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        let one: RateLimit = "1/s".parse().expect("1/s parses");
        assert_eq!(one.count, 1);
        assert_eq!(one.per, Duration::from_secs(1));
        let five: RateLimit = "5/10s".parse().expect("5/10s parses");
        assert_eq!((five.count, five.per), (5, Duration::from_secs(10)));
        let ms: RateLimit = "2/500ms".parse().expect("2/500ms parses");
        assert_eq!(ms.per, Duration::from_millis(500));
        assert_eq!(ms.to_string(), "2/500ms");
        assert_eq!(one.to_string(), "1/1s");
        assert_eq!("1/1s".parse::<RateLimit>(), Ok(one));
        for bad in ["", "1", "0/s", "x/s", "1/", "1/3d", "1/0s"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn merge_replaces_only_given_fields() {
        let base = FaultConfig {
            fail_503: 0.5,
            ..FaultConfig::default()
        };
        let patch = serde_json::json!({"reset_after": 1.0, "object_rate_limit": "1/s"});
        let serde_json::Value::Object(patch) = patch else {
            panic!("patch is an object")
        };
        let merged = base.merged(patch).expect("valid patch");
        assert_eq!(merged.fail_503, 0.5);
        assert_eq!(merged.reset_after, 1.0);
        assert_eq!(merged.object_rate_limit.map(|r| r.count), Some(1));

        let serde_json::Value::Object(bad) = serde_json::json!({"fail_503": 2.0}) else {
            panic!("patch is an object")
        };
        assert!(base.merged(bad).is_err());
        let serde_json::Value::Object(unknown) = serde_json::json!({"nope": 1}) else {
            panic!("patch is an object")
        };
        assert!(base.merged(unknown).is_err());
    }
}
