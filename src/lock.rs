//! The algorithm: acquire, stale takeover, status and break. Transport-free: it
//! speaks only to the [`Backend`] trait.
//!
//! Rules it keeps (see DESIGN.md §2):
//! * expiry is judged by the server's clock (`Date` vs `updated` + TTL), or by the
//!   waiter watching one version stay unchanged for a TTL on its monotonic clock,
//!   never by comparing two machines' wall clocks;
//! * every write is conditioned on the exact version inspected;
//! * waiters poll with reads, and write only when the lock is free or stale;
//! * an ambiguous write is resolved by reading the nonce back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, ObjectInfo, ObjectVersion, WriteCondition};
use crate::error::{Error, HolderSummary, LossReason};
use crate::lease::{Guard, SendTime};
use crate::record::{LockRecord, LockState};

/// TTLs outside this range are refused: below it no refresh can keep up with
/// request latency; above it a crashed holder blocks everyone for days.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A number that grows with every new holder of a lock: hand it to the systems
/// your critical section writes to, and have them reject writes carrying a token
/// smaller than one they have already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl FencingToken {
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How long `acquire` waits for a lock someone else holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// One attempt, like `flock -n`.
    No,
    /// Up to this long.
    For(Duration),
    /// Until acquired or cancelled.
    Forever,
}

/// Settings for a lock. Unset values get the defaults documented on each setter.
#[derive(Clone, Debug)]
pub struct LockOptions {
    ttl: Duration,
    refresh_interval: Option<Duration>,
    safety_margin: Option<Duration>,
    identity: Option<String>,
    poll_min: Duration,
    poll_max: Duration,
    unavailable_timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            refresh_interval: None,
            safety_margin: None,
            identity: None,
            poll_min: Duration::from_millis(250),
            poll_max: Duration::from_secs(8),
            unavailable_timeout: Duration::from_secs(10),
        }
    }
}

impl LockOptions {
    /// How long a lease lasts without a refresh (default 5 minutes; 1 s to 7 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the holder refreshes (default TTL/8). Must leave room for
    /// retries before the lease deadline.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// How much earlier than TTL the holder stops trusting its lease, and how much
    /// later than TTL a waiter considers it stale (default TTL/10, within 200 ms..30 s).
    /// It absorbs clock-rate drift and the spread between GCS front ends' clocks.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// The holder name recorded in the lock (default `HOST:PID`).
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Bounds of the waiters' jittered exponential poll backoff (default 250 ms to 8 s).
    pub fn poll_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max;
        self
    }

    /// How long `acquire` keeps retrying when storage fails transiently, beyond
    /// the wait it was given (default 10 s).
    pub fn unavailable_timeout(mut self, timeout: Duration) -> Self {
        self.unavailable_timeout = timeout;
        self
    }
}

/// Validated settings shared by a lock and its leases.
#[derive(Debug)]
pub(crate) struct LockInner {
    pub backend: Arc<dyn Backend>,
    pub object: String,
    pub url: String,
    pub ttl: Duration,
    pub refresh_interval: Duration,
    pub margin: Duration,
    pub identity: String,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub unavailable_timeout: Duration,
}

/// A named lock in a bucket. Cheap to clone; holds no lease by itself.
#[derive(Clone, Debug)]
pub struct Lock {
    inner: Arc<LockInner>,
}

/// What a read of the lock object shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockStatus {
    /// No lock object exists.
    Free,
    /// Released by its last holder (or broken); `token` is the last one issued.
    Released {
        token: u64,
        released_at: DateTime<Utc>,
    },
    /// Held and refreshed recently enough.
    Held(HeldStatus),
    /// Held, but not refreshed within its TTL by the server's clock: may be taken over.
    Stale(HeldStatus),
    /// The object exists but is not a gcslock lock.
    NotALock { why: String },
}

/// Details of a held (or stale) lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldStatus {
    pub holder: String,
    pub token: u64,
    pub ttl: Duration,
    /// The last acquire or refresh, by the server's clock.
    pub last_refresh: DateTime<Utc>,
    /// Server-judged time until the lock counts as stale (zero once stale);
    /// `None` if the server sent no `Date`.
    pub expires_in: Option<Duration>,
    pub version: ObjectVersion,
}

impl LockStatus {
    /// Judges an object by the server's clock reading taken with it. The margin
    /// comes from the holder's recorded TTL, so every observer agrees on it.
    pub fn judge(info: Option<&ObjectInfo>, server_time: Option<DateTime<Utc>>) -> Self {
        let Some(info) = info else {
            return Self::Free;
        };
        let record = match LockRecord::from_metadata(&info.metadata) {
            Ok(record) => record,
            Err(why) => return Self::NotALock { why },
        };
        if record.state == LockState::Released {
            return Self::Released {
                token: record.token,
                released_at: info.updated,
            };
        }
        let stale_at = chrono::Duration::from_std(record.ttl + default_margin(record.ttl))
            .ok()
            .map(|lease| info.updated + lease);
        let expires_in = match (stale_at, server_time) {
            (Some(stale_at), Some(now)) => Some((stale_at - now).to_std().unwrap_or_default()),
            // A TTL too large for chrono never expires within any usable horizon.
            (None, Some(_)) => None,
            (_, None) => None,
        };
        let held = HeldStatus {
            holder: record.holder,
            token: record.token,
            ttl: record.ttl,
            last_refresh: info.updated,
            expires_in,
            version: info.version,
        };
        if expires_in == Some(Duration::ZERO) {
            Self::Stale(held)
        } else {
            Self::Held(held)
        }
    }

    /// The default safety margin for a TTL; what observers add to a holder's TTL.
    pub fn default_margin(ttl: Duration) -> Duration {
        default_margin(ttl)
    }
}

/// The outcome of [`Lock::break_lock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakOutcome {
    /// The lock was held (or stale) and is now released.
    Broken { previous_holder: String, token: u64 },
    /// Nothing to break: the lock was free or already released.
    AlreadyFree,
}

fn default_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// `HOST:PID`, the default holder identity.
pub fn default_identity() -> String {
    let host = gethostname::gethostname();
    format!("{}:{}", host.to_string_lossy(), std::process::id())
}

pub(crate) fn new_nonce() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

enum Attempt {
    Acquired(Guard),
    /// The write succeeded, but the lease had already run out by the time its answer
    /// arrived (the process was suspended, or requests were very slow). The lock was
    /// released again; a guard that is invalid from birth is never returned.
    Expired,
    Busy {
        holder: HolderSummary,
        /// When the lock may next be free (stale), if known.
        retry_in: Option<Duration>,
    },
}

/// A failure of one attempt: retry it (transient), give up (fatal), or stop
/// because the caller cancelled before anything was written.
enum Failure {
    Transient(BackendError),
    Fatal(Error),
    Cancelled,
}

impl Lock {
    /// A lock on `object` in `backend`'s bucket. Validates the name and options
    /// without sending any request.
    pub fn new(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
    ) -> Result<Self, Error> {
        crate::validate_object_name(object)?;
        let ttl = options.ttl;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(Error::InvalidInput(format!(
                "TTL {} is out of range: it must be between {} and {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MIN_TTL),
                humantime::format_duration(MAX_TTL)
            )));
        }
        let margin = options.safety_margin.unwrap_or_else(|| default_margin(ttl));
        if margin >= ttl / 2 {
            return Err(Error::InvalidInput(format!(
                "safety margin {} must be less than half the TTL {}",
                humantime::format_duration(margin),
                humantime::format_duration(ttl)
            )));
        }
        let refresh_interval = options.refresh_interval.unwrap_or(ttl / 8);
        if refresh_interval.is_zero() || refresh_interval >= ttl - margin {
            return Err(Error::InvalidInput(format!(
                "refresh interval {} must be above zero and below the TTL minus the safety margin ({})",
                humantime::format_duration(refresh_interval),
                humantime::format_duration(ttl - margin)
            )));
        }
        if let Some(floor) = backend.min_mutation_interval() {
            if refresh_interval < floor {
                return Err(Error::InvalidInput(format!(
                    "refresh interval {} is below {}: {} throttles faster writes to one object; \
                     use a TTL of at least {} (refreshed every TTL/8)",
                    humantime::format_duration(refresh_interval),
                    humantime::format_duration(floor),
                    backend.describe(),
                    humantime::format_duration(floor * 8)
                )));
            }
        }
        if options.poll_min.is_zero() || options.poll_min > options.poll_max {
            return Err(Error::InvalidInput(
                "poll backoff must have 0 < min <= max".into(),
            ));
        }
        let identity = options.identity.unwrap_or_else(default_identity);
        if identity.is_empty() || identity.len() > 512 || identity.chars().any(char::is_control) {
            return Err(Error::InvalidInput(
                "identity must be 1 to 512 characters without control characters".into(),
            ));
        }
        let url = format!("{}/{}", backend.describe(), object);
        Ok(Self {
            inner: Arc::new(LockInner {
                backend,
                object: object.to_owned(),
                url,
                ttl,
                refresh_interval,
                margin,
                identity,
                poll_min: options.poll_min,
                poll_max: options.poll_max,
                unavailable_timeout: options.unavailable_timeout,
            }),
        })
    }

    /// Where the lock lives, for messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn refresh_interval(&self) -> Duration {
        self.inner.refresh_interval
    }

    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// One attempt: the lock if it is free or stale, `Error::Busy` if it is held.
    pub async fn try_acquire(&self) -> Result<Guard, Error> {
        self.acquire(Wait::No).await
    }

    /// Acquires the lock, waiting as `wait` says.
    ///
    /// Dropping this future while it runs may leave a freshly written lock object
    /// behind until its TTL passes; to stop waiting cleanly use
    /// [`Lock::acquire_cancellable`].
    pub async fn acquire(&self, wait: Wait) -> Result<Guard, Error> {
        self.acquire_cancellable(wait, &CancellationToken::new())
            .await
    }

    /// Like [`Lock::acquire`], and stops waiting when `cancel` fires. Cancellation
    /// is honoured only between requests that could create the lock, so no lock is
    /// left behind: it returns either a guard or `Error::Cancelled`.
    pub async fn acquire_cancellable(
        &self,
        wait: Wait,
        cancel: &CancellationToken,
    ) -> Result<Guard, Error> {
        let lock = &self.inner;
        let start = Instant::now();
        let wait_until = match wait {
            Wait::No => Some(start),
            Wait::For(duration) => Some(start + duration),
            Wait::Forever => None,
        };
        let mut backoff = Backoff::new(lock.poll_min, lock.poll_max);
        let mut seen: Option<(ObjectVersion, Instant)> = None;
        let mut failing_since: Option<Instant> = None;
        let mut last_busy: Option<HolderSummary> = None;
        let mut expired_in_a_row = 0;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    lock: lock.url.clone(),
                });
            }
            let attempt = self.attempt(&mut seen, cancel).await;
            let now = Instant::now();
            let wake = match attempt {
                Ok(Attempt::Acquired(guard)) => return Ok(guard),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Cancelled) => {
                    return Err(Error::Cancelled {
                        lock: lock.url.clone(),
                    })
                }
                // Look again at once, even if the wait is over: the outcome must
                // reflect the lock's state now, not the stale lease we let go.
                Ok(Attempt::Expired) if expired_in_a_row < 3 => {
                    expired_in_a_row += 1;
                    now
                }
                Ok(Attempt::Expired) => {
                    return Err(Error::LeaseLost {
                        lock: lock.url.clone(),
                        reason: LossReason::Expired {
                            last_error: "every lease acquired ran out before acquire could \
                                         return it (is the process being suspended?)"
                                .into(),
                        },
                    })
                }
                Ok(Attempt::Busy { holder, retry_in }) => {
                    failing_since = None;
                    expired_in_a_row = 0;
                    last_busy = Some(holder.clone());
                    if wait_until.is_some_and(|until| now >= until) {
                        return Err(Error::Busy {
                            lock: lock.url.clone(),
                            holder,
                        });
                    }
                    let delay = backoff.next();
                    // Look again just after the lock turns stale, not a full backoff later.
                    let wake =
                        now + retry_in.map_or(delay, |stale| delay.min(stale + lock.poll_min));
                    // Make a last attempt at the end of the wait rather than sleeping past it.
                    wait_until.map_or(wake, |until| wake.min(until))
                }
                Err(Failure::Transient(error)) => {
                    // The wait is over and the last clear answer was "busy": say so,
                    // rather than blame a storage hiccup at the very end.
                    if let (Some(holder), Some(until)) = (&last_busy, wait_until) {
                        if now >= until && until > start {
                            return Err(Error::Busy {
                                lock: lock.url.clone(),
                                holder: holder.clone(),
                            });
                        }
                    }
                    let since = *failing_since.get_or_insert(now);
                    let give_up_at =
                        (since + lock.unavailable_timeout).max(wait_until.unwrap_or(since));
                    if wait_until.is_some() && now >= give_up_at {
                        return Err(Error::from_backend(&lock.url, error));
                    }
                    tracing::debug!(lock = %lock.url, %error, "transient error while acquiring; retrying");
                    if let BackendError::RateLimited { retry_after } = error {
                        backoff.slow_down(retry_after);
                    }
                    let wake = now + backoff.next();
                    if wait_until.is_some() {
                        wake.min(give_up_at)
                    } else {
                        wake
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = cancel.cancelled() => return Err(Error::Cancelled { lock: lock.url.clone() }),
            }
        }
    }

    /// Reads the lock and judges it by the server's clock.
    pub async fn status(&self) -> Result<LockStatus, Error> {
        let read = self
            .inner
            .backend
            .read(&self.inner.object)
            .await
            .map_err(|error| Error::from_backend(&self.inner.url, error))?;
        Ok(LockStatus::judge(read.value.as_ref(), read.server_time))
    }

    /// Force-releases the lock, like `terraform force-unlock`. With `expected_token`,
    /// only if the lock still carries that token. The holder notices at its next
    /// refresh. The object is marked released, not deleted, so the token keeps growing.
    pub async fn break_lock(&self, expected_token: Option<u64>) -> Result<BreakOutcome, Error> {
        let lock = &self.inner;
        let fail = |error| Error::from_backend(&lock.url, error);
        let read = lock.backend.read(&lock.object).await.map_err(fail)?;
        let Some(info) = read.value else {
            return Ok(BreakOutcome::AlreadyFree);
        };
        let record = LockRecord::from_metadata(&info.metadata).map_err(|why| Error::NotALock {
            lock: lock.url.clone(),
            why,
        })?;
        if let Some(expected) = expected_token {
            if record.token != expected {
                return Err(Error::Conflict {
                    lock: lock.url.clone(),
                    why: format!(
                        "it carries token {}, not {expected}; not broken",
                        record.token
                    ),
                });
            }
        }
        if record.state == LockState::Released {
            return Ok(BreakOutcome::AlreadyFree);
        }
        let tombstone = LockRecord {
            state: LockState::Released,
            holder: format!("broken by {}", lock.identity),
            nonce: new_nonce(),
            refresh_seq: record.refresh_seq.saturating_add(1),
            ..record.clone()
        };
        match lock
            .backend
            .update_metadata(&lock.object, info.version, &tombstone.to_metadata())
            .await
        {
            Ok(_) => Ok(BreakOutcome::Broken {
                previous_holder: record.holder,
                token: record.token,
            }),
            Err(BackendError::PreconditionFailed | BackendError::NotFound) => {
                Err(Error::Conflict {
                    lock: lock.url.clone(),
                    why: "it changed while it was being broken (a refresh or a new holder); \
                      check its status and try again"
                        .into(),
                })
            }
            Err(error) => Err(fail(error)),
        }
    }

    /// One inspect-then-write round. Only the inspect can be cancelled: once a write
    /// is sent it runs to completion, so cancellation never leaves a lock behind.
    async fn attempt(
        &self,
        seen: &mut Option<(ObjectVersion, Instant)>,
        cancel: &CancellationToken,
    ) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        let read = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            read = lock.backend.read(&lock.object) => read.map_err(|e| self.classify(e))?,
        };
        let received = Instant::now();
        let (condition, token) = match &read.value {
            None => (WriteCondition::DoesNotExist, 1),
            Some(info) => {
                let record = self.decode(info)?;
                let next_token = record.token.checked_add(1).ok_or_else(|| {
                    Failure::Fatal(Error::NotALock {
                        lock: lock.url.clone(),
                        why: "its fencing token is exhausted".into(),
                    })
                })?;
                if record.state == LockState::Released {
                    (WriteCondition::Matches(info.version), next_token)
                } else {
                    match self.staleness(info, &record, read.server_time, received, seen) {
                        Staleness::Stale { by } => {
                            tracing::info!(
                                lock = %lock.url, holder = %record.holder, token = record.token, by,
                                "taking over a stale lock"
                            );
                            (WriteCondition::Matches(info.version), next_token)
                        }
                        Staleness::Fresh { retry_in } => {
                            return Ok(Attempt::Busy {
                                holder: summary(&record, retry_in),
                                retry_in,
                            })
                        }
                    }
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        let record = LockRecord {
            state: LockState::Held,
            token,
            holder: lock.identity.clone(),
            nonce: new_nonce(),
            ttl: lock.ttl,
            refresh_seq: 0,
        };
        let sent = SendTime::now();
        match lock
            .backend
            .write(&lock.object, condition, &record.to_metadata())
            .await
        {
            Ok(written) => Ok(self.started(record, written.value.version, sent).await),
            // Someone else wrote first; report who holds it now.
            Err(BackendError::PreconditionFailed) => self.after_lost_race(&record, sent).await,
            Err(error) if error.may_have_applied() => {
                tracing::debug!(lock = %lock.url, %error, "create outcome unknown; resolving by nonce");
                self.resolve_ambiguous_write(record, sent, error).await
            }
            Err(error) => Err(self.classify(error)),
        }
    }

    async fn after_lost_race(&self, ours: &LockRecord, sent: SendTime) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        let read = lock
            .backend
            .read(&lock.object)
            .await
            .map_err(|e| self.classify(e))?;
        match &read.value {
            // A retry inside the transport may have applied our write before the 412.
            Some(info) if self.is_ours(info, ours) => {
                Ok(self.started(ours.clone(), info.version, sent).await)
            }
            Some(info) => {
                let record = self.decode(info)?;
                let status = LockStatus::judge(Some(info), read.server_time);
                let retry_in = match status {
                    LockStatus::Held(held) => held.expires_in,
                    _ => Some(Duration::ZERO),
                };
                Ok(Attempt::Busy {
                    holder: summary(&record, retry_in),
                    retry_in,
                })
            }
            None => Ok(Attempt::Busy {
                holder: HolderSummary {
                    identity: "nobody (the lock changed hands during the attempt)".into(),
                    token: 0,
                    expires_in: None,
                },
                retry_in: Some(Duration::ZERO),
            }),
        }
    }

    /// A create whose response was lost may have applied: read until we know. If we
    /// cannot tell before the lease we might hold would end, giving up is safe: that
    /// lease, if it exists, expires unrefreshed.
    async fn resolve_ambiguous_write(
        &self,
        ours: LockRecord,
        sent: SendTime,
        first_error: BackendError,
    ) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        let give_up_at = sent.at + lock.ttl - lock.margin;
        let mut backoff = Backoff::new(
            lock.poll_min.min(Duration::from_millis(100)),
            lock.refresh_interval,
        );
        let mut last_error = first_error;
        while Instant::now() < give_up_at {
            match lock.backend.read(&lock.object).await {
                Ok(read) => {
                    return match &read.value {
                        Some(info) if self.is_ours(info, &ours) => {
                            Ok(self.started(ours, info.version, sent).await)
                        }
                        // Not applied (or applied and already superseded): judge afresh.
                        _ => Err(Failure::Transient(last_error)),
                    };
                }
                Err(error) if error.is_transient() => last_error = error,
                Err(error) => return Err(self.classify(error)),
            }
            tokio::time::sleep_until((Instant::now() + backoff.next()).min(give_up_at)).await;
        }
        Err(Failure::Transient(last_error))
    }

    /// Starts the lease for a write of ours that applied. Its deadline runs from
    /// when the write was *sent*; if that has already passed (the process was
    /// suspended meanwhile), the lock may already be someone else's by staleness:
    /// release ours (conditionally, so a newer holder is untouched) and report it.
    async fn started(&self, record: LockRecord, version: ObjectVersion, sent: SendTime) -> Attempt {
        let guard = Guard::start(Arc::clone(&self.inner), record, version, sent);
        if guard.is_valid() {
            return Attempt::Acquired(guard);
        }
        tracing::warn!(
            lock = %self.inner.url,
            "the lock was acquired, but the lease ran out before the answer arrived \
             (was the process suspended?); releasing it and trying again"
        );
        let _released_or_already_taken = guard.release().await;
        Attempt::Expired
    }

    fn is_ours(&self, info: &ObjectInfo, ours: &LockRecord) -> bool {
        LockRecord::from_metadata(&info.metadata)
            .is_ok_and(|record| record.nonce == ours.nonce && record.state == LockState::Held)
    }

    fn decode(&self, info: &ObjectInfo) -> Result<LockRecord, Failure> {
        LockRecord::from_metadata(&info.metadata).map_err(|why| {
            Failure::Fatal(Error::NotALock {
                lock: self.inner.url.clone(),
                why,
            })
        })
    }

    fn staleness(
        &self,
        info: &ObjectInfo,
        record: &LockRecord,
        server_time: Option<DateTime<Utc>>,
        received: Instant,
        seen: &mut Option<(ObjectVersion, Instant)>,
    ) -> Staleness {
        let margin = default_margin(record.ttl);
        // Local rule: the holder must change the version within its TTL to keep the
        // lease; one version unchanged for TTL + margin on our monotonic clock means
        // its holder's deadline has passed.
        let first_seen = match *seen {
            Some((version, at)) if version == info.version => at,
            _ => {
                *seen = Some((info.version, received));
                received
            }
        };
        let local_left = (record.ttl + margin).saturating_sub(received - first_seen);
        if local_left.is_zero() {
            return Staleness::Stale {
                by: "version unchanged for a full TTL on the local clock",
            };
        }
        match LockStatus::judge(Some(info), server_time) {
            LockStatus::Stale(_) => Staleness::Stale { by: "server clock" },
            LockStatus::Held(held) => Staleness::Fresh {
                retry_in: Some(
                    held.expires_in
                        .map_or(local_left, |left| left.min(local_left)),
                ),
            },
            // `decode` already accepted the record as held.
            _ => Staleness::Fresh {
                retry_in: Some(local_left),
            },
        }
    }

    fn classify(&self, error: BackendError) -> Failure {
        if error.is_transient() {
            Failure::Transient(error)
        } else {
            Failure::Fatal(Error::from_backend(&self.inner.url, error))
        }
    }
}

enum Staleness {
    Stale { by: &'static str },
    Fresh { retry_in: Option<Duration> },
}

fn summary(record: &LockRecord, expires_in: Option<Duration>) -> HolderSummary {
    HolderSummary {
        identity: record.holder.clone(),
        token: record.token,
        expires_in,
    }
}

/// Lists the locks under `prefix`, each judged by the server's clock at listing time.
pub async fn list_locks(
    backend: &dyn Backend,
    prefix: &str,
) -> Result<Vec<(String, LockStatus)>, Error> {
    let location = format!("{}/{prefix}", backend.describe());
    let listing = backend
        .list(prefix)
        .await
        .map_err(|error| Error::from_backend(&location, error))?;
    Ok(listing
        .iter()
        .map(|s| {
            (
                s.value.name.clone(),
                LockStatus::judge(Some(&s.value), s.server_time),
            )
        })
        .collect())
}

/// Jittered exponential backoff ("equal jitter": half fixed, half random), so
/// waiters that started together spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            current: min,
            max: max.max(min),
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let half = self.current / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=half);
        self.current = (self.current * 2).min(self.max);
        half + jitter
    }

    /// 429: back off harder, and at least as long as the server asked.
    pub(crate) fn slow_down(&mut self, retry_after: Option<Duration>) {
        self.current = (self.current * 2).min(self.max);
        if let Some(after) = retry_after {
            self.current = self.current.max(after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let delay = backoff.next();
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
        }
        assert!(backoff.next() >= Duration::from_millis(500));
        backoff.slow_down(Some(Duration::from_secs(5)));
        assert!(backoff.next() >= Duration::from_millis(2500));
    }
}
