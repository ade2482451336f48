//! Lock settings: the options a caller sets, and the validated settings a lock
//! and its leases share.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::Metadata;
use crate::error::Error;
use crate::identity::{check_name, default_identity, MAX_IDENTITY_LEN};
use crate::record::{check_boundary, LockRecord, Ttl, KEY_BOUNDARY, KEY_HOLDERS};

/// TTLs outside this range are refused: below it no refresh can keep up with
/// request latency; above it a crashed holder blocks everyone for days.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);
/// The holder prefix of a revoked lock (PROTOCOL.md §8).
pub(crate) const REVOKED_PREFIX: &str = "revoked by ";
pub(crate) const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default safety margin for a TTL; what observers add to a holder's TTL.
/// Proportional with no cap, so the clock-rate tolerance (22 %, see
/// [`crate::clock`]) is the same for every TTL.
///
/// Mixed versions stay safe: earlier gcslock versions capped this at 30 s. An old
/// holder's deadline (`TTL − 30 s`) is later than a new one's, but new observers
/// wait longer (`TTL + TTL/10`), so they are safe with it; a new holder's deadline
/// (`TTL − TTL/10`) is earlier than an old one's, so old observers (`TTL + 30 s`)
/// are safe with it too. Only the tolerance with old peers stays the old one.
pub(crate) fn default_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(MIN_MARGIN)
}

/// A forever holder's lease length on its own clocks: far enough to never end,
/// near enough that deadline arithmetic on `Instant` cannot overflow.
pub(crate) const FOREVER_LEASE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How often a forever holder refreshes by default, so that status shows it is alive.
pub(crate) const FOREVER_REFRESH: Duration = Duration::from_secs(60);

/// The default margin's floor: request latency and the server's whole-second
/// `Date` dominate below it.
const MIN_MARGIN: Duration = Duration::from_millis(200);

/// Settings for a lock. Unset values get the defaults documented on each setter.
#[derive(Clone, Debug)]
pub struct LockOptions {
    ttl: Duration,
    forever: bool,
    refresh_interval: Option<Duration>,
    safety_margin: Option<Duration>,
    identity: Option<String>,
    poll_min: Duration,
    poll_max: Duration,
    unavailable_timeout: Duration,
    boundary: Option<String>,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            forever: false,
            refresh_interval: None,
            safety_margin: None,
            identity: None,
            poll_min: Duration::from_millis(250),
            poll_max: Duration::from_secs(8),
            unavailable_timeout: crate::retry::DEFAULT_TIMEOUT,
            boundary: None,
        }
    }
}

impl LockOptions {
    /// How long a lease lasts without a refresh: a `Duration` (default 5 minutes;
    /// 1 s to 7 days) or [`Ttl::Forever`].
    ///
    /// A forever lease never expires by time: no waiter ever takes it over, and only
    /// a break at once ([`crate::Lock::break_with`] with `BreakOptions::now`) frees it
    /// if the holder dies; a revoking break is refused, as it would never go stale. The holder still
    /// refreshes (every minute by default, never faster than the backend's write-rate
    /// floor) so that status shows when it was last heard from; refresh failures
    /// never end the lease. The safety margin is zero. Locks held this way are
    /// "not a lock" to gcslock versions from before forever TTLs, which therefore
    /// never touch them.
    pub fn ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        match ttl.into() {
            Ttl::Finite(ttl) => {
                self.ttl = ttl;
                self.forever = false;
            }
            Ttl::Forever => self.forever = true,
        }
        self
    }

    /// How often the holder refreshes (default TTL/8). Must leave room for
    /// retries before the lease deadline.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// How much earlier than the TTL this holder stops trusting its lease
    /// (default TTL/10, at least 200 ms; below half the TTL).
    ///
    /// It does not change when others judge the lock stale: waiters always use
    /// the TTL recorded in the lock plus the *default* margin for that TTL, so
    /// every observer agrees. A holder's lease is trusted until `send + TTL − m`
    /// by its own clock and judged stale at `updated + TTL + m(TTL)` by the
    /// server's, so the holder is safe while its clock's rate error `r` satisfies
    /// `(TTL − m)(1 + r) ≤ TTL + m(TTL)`, i.e. `r ≤ (m + m(TTL)) / (TTL − m)`:
    /// with the default, `r ≤ 2m / (TTL − m)` = 22 % (NTP slews at most 8.3 %
    /// with chrony's defaults). A larger margin tolerates more; a smaller one
    /// less, and a margin of zero tolerates only `m(TTL) / TTL` = 10 %.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// The holder name recorded in the lock (default `HOST:PID`).
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Bounds of the waiters' polling (default 250 ms to 8 s). A lock held by a live
    /// holder is polled at a steady interval: 1 s, or the nearer bound if 1 s is
    /// outside them, jittered by ±20 %; retries after storage errors back off
    /// exponentially from `min` to `max`.
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

    /// Names what contains the holder's work, recorded with every acquire so that
    /// [`crate::Lock::status`] shows it (`gcslock run` writes `cgroup`, `session` or
    /// `group`): 1 to 32 lowercase letters, digits or '-'. It only informs; no one
    /// acts on it. Default: none recorded.
    pub fn boundary(mut self, name: impl Into<String>) -> Self {
        self.boundary = Some(name.into());
        self
    }
}

/// Validated settings shared by a lock and its leases.
#[derive(Debug)]
pub(crate) struct LockSettings {
    pub backend: Arc<dyn Backend>,
    pub object: String,
    pub url: String,
    /// The lease length basis: the TTL, or [`FOREVER_LEASE`] for a forever lock.
    pub ttl: Duration,
    /// Never stale by time (`LockOptions::ttl(Ttl::Forever)`).
    pub forever: bool,
    pub refresh_interval: Duration,
    pub margin: Duration,
    pub identity: String,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub unavailable_timeout: Duration,
    /// A semaphore place's holder limit, written with every acquire; `None` for a
    /// plain lock, which writes no limit and counts as a limit of 1.
    pub holders: Option<u32>,
    /// What contains the holder's work ([`LockOptions::boundary`]).
    pub boundary: Option<String>,
}

impl LockSettings {
    /// Validates the object name and options without sending any request.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
    ) -> Result<Self, Error> {
        crate::validate_object_name(object)?;
        if options.forever {
            return Self::forever(backend, object, options);
        }
        let ttl = options.ttl;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(Error::InvalidInput(format!(
                "TTL {} is out of range: it must be between {} and {}",
                crate::duration_text::written(ttl),
                crate::duration_text::written(MIN_TTL),
                crate::duration_text::written(MAX_TTL)
            )));
        }
        let margin = options.safety_margin.unwrap_or_else(|| default_margin(ttl));
        if margin >= ttl / 2 {
            return Err(Error::InvalidInput(format!(
                "safety margin {} must be less than half the TTL {}",
                crate::duration_text::written(margin),
                crate::duration_text::written(ttl)
            )));
        }
        let refresh_interval = options.refresh_interval.unwrap_or(ttl / 8);
        if refresh_interval.is_zero() || refresh_interval >= ttl - margin {
            return Err(Error::InvalidInput(format!(
                "refresh interval {} must be above zero and below the TTL minus the safety margin ({})",
                crate::duration_text::written(refresh_interval),
                crate::duration_text::written(ttl - margin)
            )));
        }
        if let Some(floor) = backend.min_mutation_interval() {
            if refresh_interval < floor {
                return Err(Error::InvalidInput(format!(
                    "refresh interval {} is below {}: {} throttles faster writes to one object; \
                     use a TTL of at least {} (refreshed every TTL/8)",
                    crate::duration_text::written(refresh_interval),
                    crate::duration_text::written(floor),
                    backend.describe(),
                    crate::duration_text::written(floor * 8)
                )));
            }
        }
        if options.poll_min.is_zero() || options.poll_min > options.poll_max {
            return Err(Error::InvalidInput(
                "poll backoff must have 0 < min <= max".into(),
            ));
        }
        let identity = options.identity.unwrap_or_else(default_identity);
        check_name(&identity, MAX_IDENTITY_LEN)
            .map_err(|why| Error::InvalidInput(format!("identity {why}")))?;
        // A revoked lock is recognised by this prefix (PROTOCOL.md §8): a holder
        // named so could not be revoked.
        if identity.starts_with(REVOKED_PREFIX) {
            return Err(Error::InvalidInput(format!(
                "identity must not start with {REVOKED_PREFIX:?}, which marks a revoked lock"
            )));
        }
        if let Some(boundary) = &options.boundary {
            check_boundary(boundary).map_err(Error::InvalidInput)?;
        }
        let url = format!("{}/{}", backend.describe(), object);
        Ok(Self {
            backend,
            object: object.to_owned(),
            url,
            ttl,
            forever: false,
            refresh_interval,
            margin,
            identity,
            poll_min: options.poll_min,
            poll_max: options.poll_max,
            unavailable_timeout: options.unavailable_timeout,
            holders: None,
            boundary: options.boundary,
        })
    }

    /// A forever lock: validated as a long finite lock for the checks they share
    /// (identity, backoff), then given a lease that does not end and no margin.
    fn forever(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
    ) -> Result<Self, Error> {
        let floor = backend.min_mutation_interval().unwrap_or_default();
        let refresh_interval = options
            .refresh_interval
            .unwrap_or(FOREVER_REFRESH.max(floor));
        if refresh_interval.is_zero() || refresh_interval < floor || refresh_interval > MAX_TTL / 2
        {
            return Err(Error::InvalidInput(format!(
                "refresh interval {} of a forever lock must be at least {} and at most {}",
                crate::duration_text::written(refresh_interval),
                crate::duration_text::written(floor.max(Duration::from_millis(1))),
                crate::duration_text::written(MAX_TTL / 2),
            )));
        }
        let shared = LockOptions {
            forever: false,
            ttl: MAX_TTL,
            refresh_interval: Some(refresh_interval),
            safety_margin: None,
            ..options
        };
        Ok(Self {
            ttl: FOREVER_LEASE,
            forever: true,
            margin: Duration::ZERO,
            ..Self::new(backend, object, shared)?
        })
    }

    /// The holder limit this contender agrees to (1 for a plain lock).
    pub(crate) fn holder_limit(&self) -> u32 {
        self.holders.unwrap_or(1)
    }

    /// The metadata an acquire writes: the record, a semaphore place's limit, and
    /// the holder's boundary.
    pub(crate) fn metadata_of(&self, record: &LockRecord) -> Metadata {
        let mut metadata = record.to_metadata();
        if let Some(limit) = self.holders {
            metadata.insert(KEY_HOLDERS.to_owned(), limit.to_string());
        }
        if let Some(boundary) = &self.boundary {
            metadata.insert(KEY_BOUNDARY.to_owned(), boundary.clone());
        }
        metadata
    }

    /// The TTL as recorded in the lock.
    pub(crate) fn record_ttl(&self) -> Ttl {
        if self.forever {
            Ttl::Forever
        } else {
            Ttl::Finite(self.ttl)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented tolerance: a holder whose clock runs 22 % slow still reaches
    /// its default deadline (`TTL − m`) no later than observers judge it stale
    /// (`TTL + m`), for every TTL accepted.
    #[test]
    fn default_margin_tolerates_a_22_percent_clock_rate_error_at_every_ttl() {
        let ttls = [
            MIN_TTL,
            Duration::from_secs(2),
            Duration::from_secs(80),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
            MAX_TTL,
        ];
        for ttl in ttls {
            let margin = default_margin(ttl);
            let holder_deadline_in_real_time = (ttl - margin).mul_f64(1.22);
            assert!(
                holder_deadline_in_real_time <= ttl + margin,
                "TTL {ttl:?}: {holder_deadline_in_real_time:?} > {:?}",
                ttl + margin
            );
        }
    }
}
