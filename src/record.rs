//! What a lock object's custom metadata says, and its encoding.
//!
//! The object is never deleted by gcslock: release and break mark it released, so
//! the fencing-token counter it carries survives from one holder to the next.
//!
//! Two optional parts (PROTOCOL.md §7 and §10):
//!
//! * **Forever TTL**: `gcslock-ttl-ms` = `forever`. The lease never expires by time;
//!   only a break frees it. Versions of gcslock from before forever TTLs fail to
//!   parse it as a number, so they judge the object "not a lock" and never
//!   overwrite it, rather than taking it over as stale.
//! * **The last completed slot** ([`crate::once_per::Slot`], `--once-per`): written by the
//!   release that follows a successful run, in the same conditional write that
//!   releases the lock, and carried over by every later write (acquire, takeover,
//!   refresh, release, break). Keys: `gcslock-done-period-s` (the period in whole
//!   seconds), `gcslock-done-slot` (the slot index: whole periods of the zone's wall
//!   clock since 1970-01-01T00:00), `gcslock-done-zone` (the IANA zone),
//!   `gcslock-done-start` (the slot's first instant, RFC 3339 with the zone's
//!   offset), `gcslock-done-by` (the completing holder's identity) and
//!   `gcslock-done-at`. A write cannot carry its own server time, so the
//!   completing release writes `gcslock-done-at` = `released`, meaning "the
//!   object's `updated` time"; the next acquire, which reads the released object
//!   anyway, writes that time as RFC 3339, and later writes copy it. Records of the
//!   previous format have no zone and start: their slots are UTC, epoch-aligned,
//!   which is what they meant. Done keys that cannot be read are ignored (a run
//!   proceeds, and its completion replaces them): they never make the lock unusable.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::Metadata;
use crate::identity::{check_name, MAX_IDENTITY_LEN};
use crate::options::{MAX_TTL, MIN_TTL};
use crate::slot::{CompletedSlot, Slot, SlotZone};
use crate::token::parse_decimal;

pub(crate) const KEY_FORMAT: &str = "gcslock-format";
pub(crate) const KEY_STATE: &str = "gcslock-state";
pub(crate) const KEY_TOKEN: &str = "gcslock-token";
pub(crate) const KEY_HOLDER: &str = "gcslock-holder";
pub(crate) const KEY_NONCE: &str = "gcslock-nonce";
pub(crate) const KEY_TTL_MS: &str = "gcslock-ttl-ms";
pub(crate) const KEY_SEQ: &str = "gcslock-refresh-seq";
pub(crate) const KEY_DONE_PERIOD: &str = "gcslock-done-period-s";
pub(crate) const KEY_DONE_SLOT: &str = "gcslock-done-slot";
pub(crate) const KEY_DONE_ZONE: &str = "gcslock-done-zone";
pub(crate) const KEY_DONE_START: &str = "gcslock-done-start";
pub(crate) const KEY_DONE_BY: &str = "gcslock-done-by";
pub(crate) const KEY_DONE_AT: &str = "gcslock-done-at";
/// The holder limit N of a semaphore place (PROTOCOL.md §13); absent means 1.
pub(crate) const KEY_HOLDERS: &str = "gcslock-holders";
/// The largest holder limit accepted: one listing page (GCS: 1000 objects) covers
/// every place, so an acquire stays one listing plus one write.
pub const MAX_HOLDERS: u32 = 1000;
/// The value an election's leader publishes (PROTOCOL.md, election); written only by
/// election terms, so a plain acquire (a full rewrite) drops it.
pub(crate) const KEY_VALUE: &str = "gcslock-value";
/// What contains the holder's work, as the holder declared it (`gcslock run` writes
/// `cgroup`, `session` or `group`); informational, for `status`. Written by the
/// acquiring write only.
pub(crate) const KEY_BOUNDARY: &str = "gcslock-boundary";
/// The longest boundary name accepted.
pub(crate) const MAX_BOUNDARY_LEN: usize = 32;
/// The longest leader value accepted: GCS allows 8 KiB of custom metadata in all.
pub(crate) const MAX_VALUE_LEN: usize = 1024;

const FORMAT: &str = "1";
/// `gcslock-ttl-ms` of a lease that never expires by time.
const TTL_FOREVER: &str = "forever";
/// `gcslock-done-at` of the release that completed the slot: the object's `updated`.
const DONE_AT_RELEASE: &str = "released";

/// How long a lease lasts without a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// Stale this long after the last refresh, by the server's clock.
    Finite(Duration),
    /// Never stale: only a break frees the lock.
    Forever,
}

impl From<Duration> for Ttl {
    fn from(ttl: Duration) -> Self {
        Self::Finite(ttl)
    }
}

impl std::fmt::Display for Ttl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finite(ttl) => write!(f, "{}", crate::duration_text::written(*ttl)),
            Self::Forever => f.write_str("forever"),
        }
    }
}

/// The last completed slot as a record carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedSlot {
    /// The completed slot.
    pub slot: Slot,
    /// The completing holder's identity.
    pub by: String,
    /// When it completed by the server's clock; `None` in the completing release
    /// itself, whose own `updated` time is the completion time.
    pub at: Option<DateTime<Utc>>,
}

impl RecordedSlot {
    /// The completion, given the `updated` time of the object this was read from.
    pub fn resolve(&self, updated: DateTime<Utc>) -> CompletedSlot {
        CompletedSlot {
            slot: self.slot,
            completed_at: self.at.unwrap_or(updated),
            completed_by: self.by.clone(),
        }
    }

    /// The same completion with its time fixed, for a write that carries it over.
    pub(crate) fn carried_from(&self, updated: DateTime<Utc>) -> Self {
        Self {
            at: Some(self.at.unwrap_or(updated)),
            ..self.clone()
        }
    }
}

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
    pub ttl: Ttl,
    /// Bumped by every refresh, so each PATCH changes the object and a lost
    /// response can be recognised by reading the value back.
    pub refresh_seq: u64,
    /// The last slot completed under this lock (`--once-per`), carried over by
    /// every write.
    pub completed: Option<RecordedSlot>,
}

impl LockRecord {
    /// Whether `shown`, read back from storage, is still the lease this record
    /// started: the same nonce, and the same token, holder and TTL. A record with
    /// our nonce but another token, holder or TTL was rewritten by someone else
    /// (by hand, or a tool copying our metadata): it is not ours to refresh. The
    /// state is for the caller to judge (a release expects its own tombstone).
    pub(crate) fn same_lease(&self, shown: &LockRecord) -> bool {
        shown.nonce == self.nonce
            && shown.token == self.token
            && shown.holder == self.holder
            && shown.ttl == self.ttl
    }

    /// The metadata encoding of this record.
    pub fn to_metadata(&self) -> Metadata {
        let state = match self.state {
            LockState::Held => "held",
            LockState::Released => "released",
        };
        let ttl = match self.ttl {
            Ttl::Finite(ttl) => ttl.as_millis().to_string(),
            Ttl::Forever => TTL_FOREVER.to_owned(),
        };
        let completed = self.completed.iter().flat_map(|done| {
            [
                (KEY_DONE_PERIOD, done.slot.period().as_secs().to_string()),
                (KEY_DONE_SLOT, done.slot.index().to_string()),
                (KEY_DONE_ZONE, done.slot.zone().name().to_owned()),
                (
                    KEY_DONE_START,
                    done.slot
                        .local_start()
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
                (KEY_DONE_BY, done.by.clone()),
                (
                    KEY_DONE_AT,
                    done.at.map_or_else(
                        || DONE_AT_RELEASE.to_owned(),
                        |at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    ),
                ),
            ]
        });
        [
            (KEY_FORMAT, FORMAT.to_owned()),
            (KEY_STATE, state.to_owned()),
            (KEY_TOKEN, self.token.to_string()),
            (KEY_HOLDER, self.holder.clone()),
            (KEY_NONCE, self.nonce.clone()),
            (KEY_TTL_MS, ttl),
            (KEY_SEQ, self.refresh_seq.to_string()),
        ]
        .into_iter()
        .chain(completed)
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
            check_name(value, max_len)
                .map_err(|why| format!("metadata key {key} {why}: {}", quoted(value)))?;
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
        let holder = text(KEY_HOLDER, MAX_IDENTITY_LEN)?;
        let nonce = text(KEY_NONCE, MAX_NONCE_LEN)?;
        let ttl = if get(KEY_TTL_MS)? == TTL_FOREVER {
            Ttl::Forever
        } else {
            let ttl = Duration::from_millis(number(KEY_TTL_MS)?);
            if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                return Err(format!(
                    "metadata key {KEY_TTL_MS} is out of range: {} ms (locks accept {} to {}, \
                     or {TTL_FOREVER})",
                    ttl.as_millis(),
                    crate::duration_text::written(MIN_TTL),
                    crate::duration_text::written(MAX_TTL)
                ));
            }
            Ttl::Finite(ttl)
        };
        Ok(Self {
            state,
            token,
            holder,
            nonce,
            ttl,
            refresh_seq: number(KEY_SEQ)?,
            // Unreadable done keys are ignored: see `completion_problem`.
            completed: decode_completed(metadata).unwrap_or(None),
        })
    }

    /// Why the completed-slot keys of `metadata` cannot be read, if they cannot:
    /// the record stays valid, and the keys count as absent.
    pub(crate) fn completion_problem(metadata: &Metadata) -> Option<String> {
        decode_completed(metadata).err()
    }
}

/// The `gcslock-done-*` keys: all absent, or all present and well-formed (the
/// zone and start may be absent together: the previous format, UTC slots).
fn decode_completed(metadata: &Metadata) -> Result<Option<RecordedSlot>, String> {
    let keys = [KEY_DONE_PERIOD, KEY_DONE_SLOT, KEY_DONE_BY, KEY_DONE_AT];
    let values = keys.map(|key| metadata.get(key));
    let calendar = [KEY_DONE_ZONE, KEY_DONE_START].map(|key| metadata.get(key));
    if values.iter().chain(&calendar).all(Option::is_none) {
        return Ok(None);
    }
    let [Some(period), Some(index), Some(by), Some(at)] = values else {
        return Err(format!(
            "the completed-slot keys {} must be all present or all absent",
            keys.join(", ")
        ));
    };
    let number = |key: &str, value: &str| -> Result<u64, String> {
        parse_decimal(value).ok_or_else(|| {
            format!(
                "metadata key {key} is not a number (plain decimal below 2^64): {}",
                quoted(value)
            )
        })
    };
    let period = number(KEY_DONE_PERIOD, period)?;
    let index = number(KEY_DONE_SLOT, index)?;
    let slot = match calendar {
        [None, None] => Slot::new(Duration::from_secs(period), index).map_err(|e| e.to_string()),
        [Some(zone), Some(start)] => {
            let zone = SlotZone::from_name(zone)
                .map_err(|why| format!("metadata key {KEY_DONE_ZONE}: {why}"))?;
            let start = DateTime::parse_from_rfc3339(start).map_err(|_| {
                format!(
                    "metadata key {KEY_DONE_START} is not an RFC 3339 time: {}",
                    quoted(start)
                )
            })?;
            Slot::recorded(period, index, zone, start)
        }
        _ => Err(format!(
            "the keys {KEY_DONE_ZONE} and {KEY_DONE_START} must be both present or both absent"
        )),
    }
    .map_err(|error| format!("metadata keys {KEY_DONE_PERIOD}/{KEY_DONE_SLOT}: {error}"))?;
    check_name(by, MAX_IDENTITY_LEN)
        .map_err(|why| format!("metadata key {KEY_DONE_BY} {why}: {}", quoted(by)))?;
    let at = match at.as_str() {
        DONE_AT_RELEASE => None,
        at => Some(
            DateTime::parse_from_rfc3339(at)
                .map_err(|_| {
                    format!(
                        "metadata key {KEY_DONE_AT} is not an RFC 3339 time: {}",
                        quoted(at)
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    Ok(Some(RecordedSlot {
        slot,
        by: by.clone(),
        at,
    }))
}

/// The holder limit a place's metadata records: 1 when the key is absent (a plain
/// lock), else a canonical decimal from 1 to [`MAX_HOLDERS`].
pub(crate) fn recorded_holders(metadata: &Metadata) -> Result<u32, String> {
    let Some(value) = metadata.get(KEY_HOLDERS) else {
        return Ok(1);
    };
    parse_decimal(value)
        .and_then(|limit| u32::try_from(limit).ok())
        .filter(|limit| (1..=MAX_HOLDERS).contains(limit))
        .ok_or_else(|| {
            format!(
                "metadata key {KEY_HOLDERS} must be a plain decimal from 1 to {MAX_HOLDERS}: {}",
                quoted(value)
            )
        })
}

/// Why `value` cannot be a leader's published value, if it cannot: at most
/// [`MAX_VALUE_LEN`] bytes, no control characters (it is printed, one line each).
pub(crate) fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "metadata key {KEY_VALUE} must be at most {MAX_VALUE_LEN} bytes long, not {}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "metadata key {KEY_VALUE} contains control characters: {}",
            quoted(value)
        ));
    }
    Ok(())
}

/// Whether `name` may be recorded as a boundary: 1 to [`MAX_BOUNDARY_LEN`] bytes of
/// lowercase letters, digits and '-', so that it prints the same everywhere.
pub(crate) fn check_boundary(name: &str) -> Result<(), String> {
    let allowed = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-';
    if name.is_empty() || name.len() > MAX_BOUNDARY_LEN || !name.bytes().all(allowed) {
        return Err(format!(
            "boundary must be 1 to {MAX_BOUNDARY_LEN} lowercase letters, digits or '-', not {}",
            quoted(name)
        ));
    }
    Ok(())
}

/// The boundary `metadata` declares. It only informs, so one that is not well-formed
/// (someone else wrote it) counts as absent rather than making the record unreadable.
pub(crate) fn decode_boundary(metadata: &Metadata) -> Option<String> {
    metadata
        .get(KEY_BOUNDARY)
        .filter(|name| check_boundary(name).is_ok())
        .cloned()
}

/// The leader value `metadata` carries, if any; untrusted, so checked as written.
pub(crate) fn decode_value(metadata: &Metadata) -> Result<Option<String>, String> {
    metadata
        .get(KEY_VALUE)
        .map(|value| check_value(value).map(|()| value.clone()))
        .transpose()
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
    fn the_holder_limit_is_one_when_absent_and_refused_when_absurd() {
        assert_eq!(recorded_holders(&valid()), Ok(1));
        assert_eq!(recorded_holders(&with(KEY_HOLDERS, "3")), Ok(3));
        assert_eq!(
            recorded_holders(&with(KEY_HOLDERS, "1000")),
            Ok(MAX_HOLDERS)
        );
        for hostile in ["0", "1001", "03", "+3", "", "3\n", "99999999999999999999"] {
            let why = recorded_holders(&with(KEY_HOLDERS, hostile)).unwrap_err();
            assert!(why.contains(KEY_HOLDERS), "{hostile:?}: {why}");
        }
    }

    #[test]
    fn round_trips_and_rejects_foreign_metadata() {
        let record = LockRecord {
            state: LockState::Held,
            token: 42,
            holder: "host:1".into(),
            nonce: "abc".into(),
            ttl: Ttl::Finite(Duration::from_secs(30)),
            refresh_seq: 3,
            completed: None,
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
            ttl: Duration::from_secs(60).into(),
            refresh_seq: 0,
            completed: None,
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
                Ttl::Finite(fine)
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
    fn leader_values_are_bounded_and_free_of_controls() {
        assert_eq!(decode_value(&valid()), Ok(None));
        for fine in [
            "",
            "10.0.0.7:8080",
            "名前 with spaces",
            &"v".repeat(MAX_VALUE_LEN),
        ] {
            assert_eq!(
                decode_value(&with(KEY_VALUE, fine)),
                Ok(Some(fine.to_owned()))
            );
        }
        let too_long = "v".repeat(MAX_VALUE_LEN + 1);
        for hostile in [too_long.as_str(), "a\nb", "\u{1b}[2J", "\0", "\u{85}"] {
            let why = decode_value(&with(KEY_VALUE, hostile)).unwrap_err();
            assert!(why.contains(KEY_VALUE) && why.len() < 300, "{why}");
        }
    }

    #[test]
    fn boundaries_are_short_plain_names_and_hostile_ones_count_as_absent() {
        assert_eq!(decode_boundary(&valid()), None);
        for fine in [
            "cgroup",
            "session",
            "group",
            "k8s-pod",
            &"b".repeat(MAX_BOUNDARY_LEN),
        ] {
            assert_eq!(check_boundary(fine), Ok(()));
            assert_eq!(
                decode_boundary(&with(KEY_BOUNDARY, fine)),
                Some(fine.to_owned())
            );
        }
        let too_long = "b".repeat(MAX_BOUNDARY_LEN + 1);
        for hostile in [
            "",
            "Cgroup",
            "a b",
            "cgroup\n",
            "\u{202e}group",
            too_long.as_str(),
        ] {
            let why = check_boundary(hostile).unwrap_err();
            assert!(why.len() < 200, "{why}");
            assert_eq!(
                decode_boundary(&with(KEY_BOUNDARY, hostile)),
                None,
                "{hostile:?}"
            );
            // The record itself stays readable.
            assert!(LockRecord::from_metadata(&with(KEY_BOUNDARY, hostile)).is_ok());
        }
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
