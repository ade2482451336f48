//! What a lock object's custom metadata says, and its encoding.
//!
//! The object is never deleted by gcslock: release and break mark it released, so
//! the fencing-token counter it carries survives from one holder to the next.

use std::time::Duration;

use crate::backend::Metadata;

pub(crate) const KEY_FORMAT: &str = "gcslock-format";
pub(crate) const KEY_STATE: &str = "gcslock-state";
pub(crate) const KEY_TOKEN: &str = "gcslock-token";
pub(crate) const KEY_HOLDER: &str = "gcslock-holder";
pub(crate) const KEY_NONCE: &str = "gcslock-nonce";
pub(crate) const KEY_TTL_MS: &str = "gcslock-ttl-ms";
pub(crate) const KEY_SEQ: &str = "gcslock-refresh-seq";

const FORMAT: &str = "1";

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
    pub fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
        let get = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| format!("metadata key {key} is missing"))
        };
        let number = |key: &str| -> Result<u64, String> {
            let value = get(key)?;
            value
                .parse()
                .map_err(|_| format!("metadata key {key} is not a number: {value:?}"))
        };
        let format = get(KEY_FORMAT)?;
        if format != FORMAT {
            return Err(format!(
                "unknown gcslock format {format:?} (this version understands {FORMAT})"
            ));
        }
        let state = match get(KEY_STATE)?.as_str() {
            "held" => LockState::Held,
            "released" => LockState::Released,
            other => return Err(format!("unknown lock state {other:?}")),
        };
        Ok(Self {
            state,
            token: number(KEY_TOKEN)?,
            holder: get(KEY_HOLDER)?.clone(),
            nonce: get(KEY_NONCE)?.clone(),
            ttl: Duration::from_millis(number(KEY_TTL_MS)?),
            refresh_seq: number(KEY_SEQ)?,
        })
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
}
