//! Breaking a lock by force ([`Lock::break_lock`], [`Lock::break_with`]) and what it
//! found (PROTOCOL.md §8).
//!
//! A held lock is *revoked* by default rather than released: its version and nonce
//! change (so its holder's next refresh fails and it stops), but it stays held, by
//! `revoked by IDENTITY`, with the broken holder's TTL and token. It turns stale, and
//! free for the next contender, only once the broken holder's own deadline (at most
//! TTL − margin after its last refresh, which was before the revoke) has passed. No
//! new record format is needed: a revoked lock is an ordinary held record whose
//! holder never refreshes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped, WriteCondition};
use crate::error::Error;
use crate::identity::new_nonce;
use crate::lock::Lock;
use crate::options::{default_margin, LockSettings, MAX_TTL};
use crate::record::{LockRecord, LockState, Ttl, KEY_TOKEN};
use crate::retry::Retry;
use crate::status::LockStatus;
use crate::token::FencingToken;

/// The holder name of a revoked lock starts with this.
use crate::options::REVOKED_PREFIX as REVOKED_BY;

/// The outcome of [`Lock::break_lock`] and [`Lock::break_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakOutcome {
    /// The lock was stale (or `now` was asked for) and is released: the next
    /// contender acquires it at once, with the next token.
    Broken {
        /// Who held it.
        previous_holder: String,
        /// The token it carried.
        token: FencingToken,
        /// The version written.
        version: ObjectVersion,
    },
    /// The held lock was revoked: its holder loses the lease at its next refresh,
    /// and the lock turns stale (free for the next contender) at `stale_at`, by
    /// which time the holder's own deadline has passed.
    RevokedUntil {
        /// Who held it (for a lock already revoked: `revoked by …`).
        previous_holder: String,
        /// The token it carries; the next holder gets a larger one.
        token: FencingToken,
        /// When it turns stale, by the storage server's clock.
        stale_at: DateTime<Utc>,
        /// Time until then by the server's clock; `None` if it sent no `Date`.
        stale_in: Option<Duration>,
        /// The version read or written.
        version: ObjectVersion,
    },
    /// The object's gcslock record was invalid and was replaced by a released one
    /// whose token is above every token it carried (see [`BreakOptions::repair`]).
    Repaired {
        /// What was wrong with the record.
        why: String,
        /// The token the released record carries; the next holder gets a larger one.
        token: FencingToken,
        /// The version written.
        version: ObjectVersion,
    },
    /// Nothing to break: the lock was free or already released.
    AlreadyFree,
}

/// How [`Lock::break_with`] breaks a lock. The default revokes a held lock (safe:
/// no overlap with the broken holder) and refuses an invalid record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakOptions {
    expected: Option<FencingToken>,
    now: bool,
    repair: bool,
}

impl BreakOptions {
    /// The defaults: revoke, any token, no repair.
    pub fn new() -> Self {
        Self::default()
    }

    /// Break only if the lock carries this token (`Error::Conflict` otherwise).
    pub fn expected_token(mut self, token: Option<FencingToken>) -> Self {
        self.expected = token;
        self
    }

    /// Release a held lock at once instead of revoking it. The next contender can
    /// acquire immediately, while the broken holder only notices at its next
    /// refresh: its work may overlap the next holder's for up to a refresh
    /// interval (plus whatever it takes to stop). Needed for a lock whose TTL is
    /// above the longest TTL gcslock accepts, which revoking would block that long.
    pub fn now(mut self, now: bool) -> Self {
        self.now = now;
        self
    }

    /// Also repair an object whose gcslock record is invalid (written by someone
    /// else: a missing field, an unparsable number, an unknown state): it is marked
    /// released, conditional on the exact version read, with a token above every
    /// `gcslock-*token*` number it carries (at least 1), so fencing tokens keep
    /// growing. An object without any `gcslock-*` metadata is not a lock and is never
    /// touched. A valid record is broken as without `repair`.
    pub fn repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }
}

/// Turns the version written (and the server's clock then) into the outcome.
type Outcome = Box<dyn Fn(&Stamped<ObjectInfo>) -> Result<BreakOutcome, Error> + Send + Sync>;

/// What a break writes, decided from one read.
enum Plan {
    Done(BreakOutcome),
    Write {
        record: LockRecord,
        /// `Some(kept)`: replace the whole metadata (an upload) with the record and
        /// `kept`, rather than merge the record into it (a PATCH), so that a repair
        /// leaves none of the invalid record's stray `gcslock-*` keys behind.
        replace: Option<Metadata>,
        outcome: Outcome,
    },
}

impl Lock {
    /// Breaks the lock the safe way, like `terraform force-unlock` but without
    /// overlap: [`Lock::break_with`] with default options and, with `expected`,
    /// only if the lock still carries that token.
    pub async fn break_lock(&self, expected: Option<FencingToken>) -> Result<BreakOutcome, Error> {
        self.break_with(&BreakOptions::new().expected_token(expected))
            .await
    }

    /// Breaks the lock as `options` say:
    ///
    /// * free or released: nothing to do ([`BreakOutcome::AlreadyFree`]);
    /// * stale (by the server's clock): released ([`BreakOutcome::Broken`]);
    /// * held: revoked ([`BreakOutcome::RevokedUntil`]), or released with
    ///   [`BreakOptions::now`]; a lock already revoked is left as it is;
    /// * an invalid record: `Error::NotALock`, or repaired with
    ///   [`BreakOptions::repair`] ([`BreakOutcome::Repaired`]).
    ///
    /// The object is never deleted, so the token keeps growing. Every write is
    /// conditional on the version read; a lost response is resolved by reading the
    /// lock back. Transient storage failures are retried for up to
    /// [`LockOptions::unavailable_timeout`](crate::LockOptions::unavailable_timeout).
    pub async fn break_with(&self, options: &BreakOptions) -> Result<BreakOutcome, Error> {
        let lock = self.settings();
        let fail = |error| Error::from_backend(&lock.url, error);
        let mut retry = Retry::new(lock.unavailable_timeout);
        let read = retry
            .run(|| lock.backend.read(&lock.object))
            .await
            .map_err(fail)?;
        let Some(info) = read.value else {
            return Ok(BreakOutcome::AlreadyFree);
        };
        let (record, replace, outcome) = match plan(lock, options, &info, read.server_time)? {
            Plan::Done(outcome) => return Ok(outcome),
            Plan::Write {
                record,
                replace,
                outcome,
            } => (record, replace, outcome),
        };
        let mut metadata = record.to_metadata();
        if let Some(kept) = &replace {
            for (key, value) in kept {
                metadata.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        loop {
            let written = if replace.is_some() {
                let condition = WriteCondition::Matches(info.version);
                lock.backend.write(&lock.object, condition, &metadata).await
            } else {
                lock.backend
                    .update_metadata(&lock.object, info.version, &metadata)
                    .await
            };
            match written {
                Ok(written) => return outcome(&written),
                Err(BackendError::PreconditionFailed | BackendError::NotFound) => {}
                Err(error) => retry.pause_or_give_up(error).await.map_err(fail)?,
            }
            // The write failed or its answer was lost: did it apply after all?
            let current = retry
                .run(|| lock.backend.read(&lock.object))
                .await
                .map_err(fail)?;
            match &current.value {
                Some(now) if carries_nonce(&now.metadata, &record.nonce) => {
                    let written = Stamped {
                        value: now.clone(),
                        server_time: current.server_time,
                    };
                    return outcome(&written);
                }
                // Unchanged: the write did not apply; send it again.
                Some(now) if now.version == info.version => {}
                _ => {
                    return Err(Error::Conflict {
                        lock: lock.url.clone(),
                        why: "it changed while it was being broken (a refresh or a new \
                              holder); check its status and try again"
                            .into(),
                    })
                }
            }
        }
    }
}

fn plan(
    lock: &LockSettings,
    options: &BreakOptions,
    info: &ObjectInfo,
    server_time: Option<DateTime<Utc>>,
) -> Result<Plan, Error> {
    let record = match LockRecord::from_metadata(&info.metadata) {
        Ok(record) => record,
        Err(why) if options.repair => return repair_plan(lock, options, info, why),
        Err(why) => {
            return Err(Error::NotALock {
                lock: lock.url.clone(),
                why,
            })
        }
    };
    check_expected(lock, options, Some(record.token))?;
    let previous_holder = record.holder.clone();
    let token = FencingToken::new(record.token);
    let released = |record: &LockRecord| -> Plan {
        let previous_holder = previous_holder.clone();
        Plan::Write {
            record: LockRecord {
                state: LockState::Released,
                holder: format!("broken by {}", lock.identity),
                nonce: new_nonce(),
                refresh_seq: record.refresh_seq.saturating_add(1),
                ..record.clone()
            },
            replace: None,
            outcome: Box::new(move |written| {
                Ok(BreakOutcome::Broken {
                    previous_holder: previous_holder.clone(),
                    token,
                    version: written.value.version,
                })
            }),
        }
    };
    let held = match LockStatus::judge(Some(info), server_time) {
        LockStatus::Released { .. } => return Ok(Plan::Done(BreakOutcome::AlreadyFree)),
        // Its holder's deadline has passed already: nothing can overlap.
        LockStatus::Stale(_) => return Ok(released(&record)),
        LockStatus::Held(held) => held,
        // `from_metadata` accepted it, so `judge` cannot call it anything else.
        _ => return Ok(released(&record)),
    };
    if options.now {
        return Ok(released(&record));
    }
    let Ttl::Finite(ttl) = record.ttl else {
        return Err(Error::Conflict {
            lock: lock.url.clone(),
            why: "its TTL is forever, so a revoked lease would never go stale; break it at \
                  once instead (`--now`, BreakOptions::now), after making sure its holder has \
                  stopped"
                .into(),
        });
    };
    if ttl > MAX_TTL {
        return Err(Error::Conflict {
            lock: lock.url.clone(),
            why: format!(
                "its TTL ({}) is above the longest TTL gcslock accepts ({}), so revoking it \
                 would keep it blocked that long; break it at once instead (`--now`, \
                 BreakOptions::now), after making sure its holder has stopped",
                crate::duration_text::written(ttl),
                crate::duration_text::written(MAX_TTL)
            ),
        });
    }
    if record.holder.starts_with(REVOKED_BY) {
        // Revoking again would only push the stale moment further out.
        let stale_at = stale_after(&lock.url, &record, info)?;
        return Ok(Plan::Done(BreakOutcome::RevokedUntil {
            previous_holder,
            token,
            stale_at,
            stale_in: held.expires_in,
            version: info.version,
        }));
    }
    let revoked = LockRecord {
        state: LockState::Held,
        holder: format!("{REVOKED_BY}{}", lock.identity),
        nonce: new_nonce(),
        refresh_seq: record.refresh_seq.saturating_add(1),
        ..record.clone()
    };
    let url = lock.url.clone();
    let judged_record = revoked.clone();
    Ok(Plan::Write {
        record: revoked,
        replace: None,
        outcome: Box::new(move |written| {
            let stale_in = match LockStatus::judge(Some(&written.value), written.server_time) {
                LockStatus::Held(held) | LockStatus::Stale(held) => held.expires_in,
                _ => None,
            };
            Ok(BreakOutcome::RevokedUntil {
                previous_holder: previous_holder.clone(),
                token,
                stale_at: stale_after(&url, &judged_record, &written.value)?,
                stale_in,
                version: written.value.version,
            })
        }),
    })
}

/// A released record over an invalid one, with a token above every token found.
fn repair_plan(
    lock: &LockSettings,
    options: &BreakOptions,
    info: &ObjectInfo,
    why: String,
) -> Result<Plan, Error> {
    if !info.metadata.keys().any(|key| key.starts_with("gcslock-")) {
        // No gcslock metadata at all: someone else's object, never overwritten.
        return Err(Error::NotALock {
            lock: lock.url.clone(),
            why,
        });
    }
    let own_token = info
        .metadata
        .get(KEY_TOKEN)
        .and_then(|value| value.parse::<FencingToken>().ok())
        .map(FencingToken::value);
    check_expected(lock, options, own_token)?;
    let token = highest_token(&info.metadata)
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| Error::NotALock {
            lock: lock.url.clone(),
            why: format!(
                "{why}; it cannot be repaired: it carries the largest possible token, so no \
                 released record can carry a larger one"
            ),
        })?;
    let record = LockRecord {
        state: LockState::Released,
        token,
        holder: format!("repaired by {}", lock.identity),
        nonce: new_nonce(),
        ttl: lock.record_ttl(),
        refresh_seq: 0,
        // The invalid record's completed slot, if any, cannot be trusted.
        completed: None,
    };
    // Keys of others (labels, tooling) stay; gcslock's own are all rewritten.
    let kept: Metadata = info
        .metadata
        .iter()
        .filter(|(key, _)| !key.starts_with("gcslock-"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(Plan::Write {
        record,
        replace: Some(kept),
        outcome: Box::new(move |written| {
            Ok(BreakOutcome::Repaired {
                why: why.clone(),
                token: FencingToken::new(token),
                version: written.value.version,
            })
        }),
    })
}

fn check_expected(
    lock: &LockSettings,
    options: &BreakOptions,
    found: Option<u64>,
) -> Result<(), Error> {
    let Some(expected) = options.expected else {
        return Ok(());
    };
    if found == Some(expected.value()) {
        return Ok(());
    }
    let carries = found.map_or_else(|| "no valid token".to_owned(), |t| format!("token {t}"));
    Err(Error::Conflict {
        lock: lock.url.clone(),
        why: format!("it carries {carries}, not {expected}; not broken"),
    })
}

/// The largest number in any `gcslock-*` field named like a token. Storage content
/// is untrusted: values that are not plain `u64`s are ignored.
fn highest_token(metadata: &Metadata) -> Option<u64> {
    metadata
        .iter()
        .filter(|(key, _)| key.starts_with("gcslock-") && key.contains("token"))
        .filter_map(|(_, value)| value.parse::<FencingToken>().ok())
        .map(FencingToken::value)
        .max()
}

fn carries_nonce(metadata: &Metadata, nonce: &str) -> bool {
    LockRecord::from_metadata(metadata).is_ok_and(|record| record.nonce == nonce)
}

/// When a held `record` last written at `info.updated` turns stale, as
/// [`LockStatus::judge`] sees it.
fn stale_after(url: &str, record: &LockRecord, info: &ObjectInfo) -> Result<DateTime<Utc>, Error> {
    let Ttl::Finite(ttl) = record.ttl else {
        return Err(Error::Conflict {
            lock: url.to_owned(),
            why: "its TTL is forever: it never turns stale".into(),
        });
    };
    chrono::Duration::from_std(ttl.saturating_add(default_margin(ttl)))
        .ok()
        .and_then(|lease| info.updated.checked_add_signed(lease))
        .ok_or_else(|| Error::Conflict {
            lock: url.to_owned(),
            why: format!(
                "its TTL ({}) is too large to compute when it turns stale",
                crate::duration_text::written(ttl)
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_token_reads_only_numeric_gcslock_token_fields() {
        let metadata: Metadata = [
            ("gcslock-token", "7"),
            ("gcslock-fence-token", "12"),
            ("gcslock-spaced-token", " 13 "),
            ("gcslock-signed-token", "+14"),
            ("gcslock-other-token", "-3"),
            ("gcslock-refresh-seq", "99"),
            ("token", "1000"),
            ("gcslock-bad-token", "1e30"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(highest_token(&metadata), Some(12));
        assert_eq!(highest_token(&Metadata::new()), None);
    }
}
