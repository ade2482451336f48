//! What a lock object's custom metadata says, and its encoding.
//!
//! The object is never deleted by gcslock: release and break mark it released, so
//! the fencing-token counter it carries survives from one holder to the next.

use std::time::Duration;

use crate::backend::Metadata;
use crate::options::{MAX_TTL, MIN_TTL};

pub(crate) const KEY_FORMAT: &str = "gcslock-format";
pub(crate) const KEY_STATE: &str = "gcslock-state";
pub(crate) const KEY_TOKEN: &str = "gcslock-token";
pub(crate) const KEY_HOLDER: &str = "gcslock-holder";
pub(crate) const KEY_NONCE: &str = "gcslock-nonce";
pub(crate) const KEY_TTL_MS: &str = "gcslock-ttl-ms";
pub(crate) const KEY_SEQ: &str = "gcslock-refresh-seq";

const FORMAT: &str = "1";

/// The longest holder name accepted (the same bound `LockOptions::identity` has).
const MAX_HOLDER_LEN: usize = 512;
/// The longest nonce accepted; ours are 32 hex digits.
const MAX_NONCE_LEN: usize = 128;
/// How much of a rejected value an error message quotes.
const QUOTED_LEN: usize = 64;

/// Whether the lock is held or has been released (a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Held by the holder named in the record.
    Held,
    /// Released or broken: free to acquire.
    Released,
}

/// The decoded gcslock metadata of a lock object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    /// Held or released.
    pub state: LockState,
    /// The fencing token of the holder that last acquired the lock.
    pub token: u64,
    /// Human-readable holder identity (host and pid by default).
    pub holder: String,
    /// Random per-acquisition value: tells our own lock instance from anyone else's.
    pub nonce: String,
    /// The TTL the holder acquired the lock with.
    pub ttl: Duration,
    /// Bumped by every refresh, so each PATCH changes the object and a lost
    /// response can be recognised by reading the value back.
    pub refresh_seq: u64,
}

impl LockRecord {
    /// The metadata encoding of this record.
    pub fn to_metadata(&self) -> Metadata {
        let state = match self.state {
            LockState::Held => "held",
            LockState::Released => "released",
        };
        [
            (KEY_FORMAT, FORMAT.to_owned()),
            (KEY_STATE, state.to_owned()),
            (KEY_TOKEN, self.token.to_string()),
            (KEY_HOLDER, self.holder.clone()),
            (KEY_NONCE, self.nonce.clone()),
            (KEY_TTL_MS, self.ttl.as_millis().to_string()),
            (KEY_SEQ, self.refresh_seq.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Decodes the record, or says why the metadata is not a gcslock lock.
    ///
    /// The metadata is untrusted: anyone with write access to the bucket can put
    /// anything there. Only the canonical encoding is accepted (plain decimal
    /// numbers without sign or leading zeros, a TTL within the range locks accept,
    /// a holder and nonce of sane length without control characters), so nothing
    /// downstream meets a value it cannot compute with.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
        let get = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| format!("metadata key {key} is missing"))
        };
        let number = |key: &str| -> Result<u64, String> {
            let value = get(key)?;
            parse_decimal(value).ok_or_else(|| {
                format!(
                    "metadata key {key} is not a number (plain decimal below 2^64): {}",
                    quoted(value)
                )
            })
        };
        let text = |key: &str, max_len: usize| -> Result<String, String> {
            let value = get(key)?;
            if value.is_empty() || value.len() > max_len {
                return Err(format!(
                    "metadata key {key} must be 1 to {max_len} bytes long, not {}",
                    value.len()
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(format!(
                    "metadata key {key} contains control characters: {}",
                    quoted(value)
                ));
            }
            Ok(value.clone())
        };
        let format = get(KEY_FORMAT)?;
        if format != FORMAT {
            return Err(format!(
                "unknown gcslock format {} (this version understands {FORMAT})",
                quoted(format)
            ));
        }
        let state = match get(KEY_STATE)?.as_str() {
            "held" => LockState::Held,
            "released" => LockState::Released,
            other => return Err(format!("unknown lock state {}", quoted(other))),
        };
        let token = number(KEY_TOKEN)?;
        let holder = text(KEY_HOLDER, MAX_HOLDER_LEN)?;
        let nonce = text(KEY_NONCE, MAX_NONCE_LEN)?;
        let ttl = Duration::from_millis(number(KEY_TTL_MS)?);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(format!(
                "metadata key {KEY_TTL_MS} is out of range: {} ms (locks accept {} to {})",
                ttl.as_millis(),
                humantime::format_duration(MIN_TTL),
                humantime::format_duration(MAX_TTL)
            ));
        }
        Ok(Self {
            state,
            token,
            holder,
            nonce,
            ttl,
            refresh_seq: number(KEY_SEQ)?,
        })
    }
}

/// A `u64` in canonical decimal: ASCII digits only, no sign, no leading zero
/// (`u64::from_str` would also take `+1`).
fn parse_decimal(value: &str) -> Option<u64> {
    let canonical = !value.is_empty()
        && value.bytes().all(|byte| byte.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if canonical {
        value.parse().ok()
    } else {
        None
    }
}

/// A value for an error message: escaped, and cut short if long.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_LEN) {
        Some((end, _)) => format!("{:?}... ({} bytes)", &value[..end], value.len()),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_metadata() {
        let record = LockRecord {
            state: LockState::Held,
            token: 42,
            holder: "host:1".into(),
            nonce: "abc".into(),
            ttl: Duration::from_secs(30),
            refresh_seq: 3,
        };
        assert_eq!(LockRecord::from_metadata(&record.to_metadata()), Ok(record));

        let mut metadata = Metadata::new();
        assert!(LockRecord::from_metadata(&metadata)
            .unwrap_err()
            .contains("missing"));
        metadata.insert(KEY_FORMAT.into(), "1".into());
        metadata.insert(KEY_STATE.into(), "held".into());
        metadata.insert(KEY_TOKEN.into(), "x".into());
        assert!(LockRecord::from_metadata(&metadata)
            .unwrap_err()
            .contains("not a number"));
    }

    fn valid() -> Metadata {
        LockRecord {
            state: LockState::Held,
            token: 7,
            holder: "host:1".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
            ttl: Duration::from_secs(60),
            refresh_seq: 0,
        }
        .to_metadata()
    }

    fn with(key: &str, value: &str) -> Metadata {
        let mut metadata = valid();
        metadata.insert(key.into(), value.into());
        metadata
    }

    #[test]
    fn hostile_numbers_are_rejected_with_the_reason() {
        let megabyte_of_digits = "9".repeat(1 << 20);
        for key in [KEY_TOKEN, KEY_TTL_MS, KEY_SEQ] {
            for hostile in [
                "",
                "+1",
                "-1",
                "01",
                "1.0",
                "1e3",
                " 1",
                "1\n",
                "0x10",
                "18446744073709551616", // u64::MAX + 1
                "99999999999999999999999999999999",
                "\u{0}",
                megabyte_of_digits.as_str(),
            ] {
                let why = LockRecord::from_metadata(&with(key, hostile)).unwrap_err();
                assert!(why.contains(key), "{key}={hostile:?}: {why}");
                assert!(
                    why.len() < 300,
                    "the message quotes too much: {} bytes",
                    why.len()
                );
            }
        }
        // The canonical extremes of the counters are fine.
        let record = LockRecord::from_metadata(&with(KEY_TOKEN, &u64::MAX.to_string())).unwrap();
        assert_eq!(record.token, u64::MAX);
        assert_eq!(
            LockRecord::from_metadata(&with(KEY_SEQ, "0"))
                .unwrap()
                .refresh_seq,
            0
        );
    }

    #[test]
    fn a_ttl_outside_what_locks_accept_makes_the_record_invalid() {
        for hostile in [
            0,
            999,
            MAX_TTL.as_millis() as u64 + 1,
            10_000_000_000_000_000, // the DateTime + TTL overflow
            u64::MAX,
        ] {
            let why =
                LockRecord::from_metadata(&with(KEY_TTL_MS, &hostile.to_string())).unwrap_err();
            assert!(why.contains("out of range"), "{hostile}: {why}");
        }
        for fine in [MIN_TTL, MAX_TTL] {
            let ttl = fine.as_millis().to_string();
            assert_eq!(
                LockRecord::from_metadata(&with(KEY_TTL_MS, &ttl))
                    .unwrap()
                    .ttl,
                fine
            );
        }
    }

    #[test]
    fn hostile_holders_and_nonces_are_rejected() {
        let megabyte = "a".repeat(1 << 20);
        for key in [KEY_HOLDER, KEY_NONCE] {
            for hostile in [
                "",
                "a\0b",
                "a\u{1b}[2Jb",
                "line\nbreak",
                "\r",
                "\u{7f}",
                "\u{85}",
                &megabyte,
            ] {
                let why = LockRecord::from_metadata(&with(key, hostile)).unwrap_err();
                assert!(why.contains(key), "{key}: {why}");
                assert!(
                    why.len() < 300,
                    "the message quotes too much: {} bytes",
                    why.len()
                );
            }
        }
        let unicode = LockRecord::from_metadata(&with(KEY_HOLDER, "höst-名前:1")).unwrap();
        assert_eq!(unicode.holder, "höst-名前:1");
    }

    #[test]
    fn unknown_states_formats_and_missing_fields_are_rejected() {
        let megabyte = "h".repeat(1 << 20);
        for (key, value) in [
            (KEY_STATE, "HELD"),
            (KEY_STATE, ""),
            (KEY_STATE, megabyte.as_str()),
            (KEY_FORMAT, "2"),
            (KEY_FORMAT, megabyte.as_str()),
        ] {
            let why = LockRecord::from_metadata(&with(key, value)).unwrap_err();
            assert!(why.starts_with("unknown"), "{why}");
            assert!(
                why.len() < 300,
                "the message quotes too much: {} bytes",
                why.len()
            );
        }
        for key in [
            KEY_FORMAT, KEY_STATE, KEY_TOKEN, KEY_HOLDER, KEY_NONCE, KEY_TTL_MS, KEY_SEQ,
        ] {
            let mut metadata = valid();
            metadata.remove(key);
            let why = LockRecord::from_metadata(&metadata).unwrap_err();
            assert!(why.contains(key) && why.contains("missing"), "{why}");
        }
        // Keys of later versions (or of other tools) are no reason to refuse.
        let mut extra = valid();
        extra.insert("gcslock-something-new".into(), "\u{0}".into());
        assert!(LockRecord::from_metadata(&extra).is_ok());
    }
}
