//! Leader election on one lock object: candidates campaign with the lock's own
//! acquire, a leader is a [`Guard`] (keep-alive, loss notification, fencing token)
//! that also publishes a value, and anyone can ask or watch who leads, with reads
//! only. PROTOCOL.md §12.
//!
//! Candidates wait with the lock's steady poll (one read per second, jittered, no
//! writes while a leader is alive). A leader that resigns waits
//! [`Election::rejoin_delay`] (two polls) before it campaigns again, so another
//! waiting candidate sees the release first and wins it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Metadata, ObjectInfo, ObjectVersion, Stamped};
use crate::backoff::{jittered_below, steady_poll, STEADY_POLL};
use crate::clock::instant_after;
use crate::error::Error;
use crate::lease::Guard;
use crate::lock::{Lock, Wait};
use crate::options::{default_margin, LockOptions};
use crate::record::{check_value, LockRecord, Ttl, KEY_VALUE};
use crate::retry::Retry;
use crate::status::LockStatus;
use crate::token::FencingToken;

/// An election on one lock object. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Election {
    lock: Lock,
    /// When this candidate may campaign again after resigning.
    rejoin_at: Arc<Mutex<Option<Instant>>>,
}

/// Who leads, as one read showed it (never a term the server's clock says is stale).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's identity (the lock's holder).
    pub identity: String,
    /// The value it published; `None` for a holder that is no election candidate
    /// (`gcslock run` on the same object).
    pub value: Option<String>,
    /// The term's fencing token: larger than every earlier term's.
    pub token: FencingToken,
    /// When the term began, by the server's clock: the creation of the object
    /// version the term wrote (GCS's `timeCreated`, which refreshes keep). On a
    /// store that does not report creation times, known only until the term's first
    /// refresh; see [`Observation::at`].
    pub since: Option<DateTime<Utc>>,
    /// The leader's last write (acquire, refresh or proclaim), by the server's clock.
    pub last_refresh: DateTime<Utc>,
}

impl Leader {
    /// The same term with the same published value.
    fn same_as(&self, other: &Self) -> bool {
        self.identity == other.identity && self.token == other.token && self.value == other.value
    }
}

/// What an observer saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// This candidate leads.
    Leader(Leader),
    /// Nobody leads: the lock is free, released, or its last leader is stale by the
    /// server's clock.
    NoLeader,
    /// Storage cannot tell: reads fail (for longer than the last leader's lease could
    /// last), or the object is not a lock.
    Unknown {
        /// Why.
        why: String,
    },
}

impl Observed {
    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Leader(a), Self::Leader(b)) => a.same_as(b),
            (Self::NoLeader, Self::NoLeader) | (Self::Unknown { .. }, Self::Unknown { .. }) => true,
            _ => false,
        }
    }
}

/// One change seen by [`Election::observe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observation {
    /// The state from this change on.
    pub state: Observed,
    /// When the read that first showed it was answered, by the server's clock
    /// (this machine's clock if the server sent no `Date`): at most one poll after
    /// the change itself.
    pub at: DateTime<Utc>,
}

/// A stream of leader changes ([`Election::observe`]). Only the latest state is
/// kept: a consumer that falls behind skips to it, never through a backlog.
/// Dropping the observer stops its polling.
#[derive(Debug)]
pub struct Observer {
    receiver: watch::Receiver<Option<Observation>>,
    task: JoinHandle<()>,
}

impl Observer {
    /// The next change not yet returned (the first call returns the state at
    /// start, after the first read). Cancel safe.
    pub async fn changed(&mut self) -> Observation {
        loop {
            // The channel starts with `None`, already seen; the sender lives in the
            // polling task, which runs until the observer is dropped.
            if self.receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if let Some(observation) = self.receiver.borrow_and_update().clone() {
                return observation;
            }
        }
    }

    /// The latest state seen, if the first read has completed.
    pub fn latest(&self) -> Option<Observation> {
        self.receiver.borrow().clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This candidate's leadership: the [`Guard`] of its term (dereference it for
/// `lost()`, `check()`, `commit`, `token()`), the value it publishes, and
/// [`Leadership::resign`]. Dropping it releases the lock in the background, as
/// dropping a guard does.
#[derive(Debug)]
pub struct Leadership {
    guard: Guard,
    value: Mutex<String>,
    rejoin_at: Arc<Mutex<Option<Instant>>>,
    rejoin_delay: Duration,
}

impl std::ops::Deref for Leadership {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        &self.guard
    }
}

impl Leadership {
    /// The term's guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The value this leader publishes now.
    pub fn value(&self) -> String {
        locked(&self.value).clone()
    }

    /// Publishes a new value with one conditional write (it also counts as a
    /// refresh): the same term and fencing token. Fails with `Error::LeaseLost` if
    /// leadership was lost. Not cancel safe: dropped midway, the new value may or
    /// may not be published.
    pub async fn proclaim(&self, value: &str) -> Result<(), Error> {
        check_value(value).map_err(Error::InvalidInput)?;
        let keys = Metadata::from([(KEY_VALUE.to_owned(), value.to_owned())]);
        self.guard.write_keys(&keys).await?;
        *locked(&self.value) = value.to_owned();
        Ok(())
    }

    /// Ends the term at once (releases the lock): another candidate takes over
    /// within about one poll. This candidate's next campaign on the same
    /// [`Election`] first waits [`Election::rejoin_delay`].
    pub async fn resign(self) -> Result<(), Error> {
        let Self {
            guard,
            rejoin_at,
            rejoin_delay,
            ..
        } = self;
        let released = guard.release().await;
        *locked(&rejoin_at) = Some(instant_after(Instant::now(), rejoin_delay));
        released
    }

    /// Ends this candidate's part in the term without a write: the keep-alive stops
    /// at once and the lock expires by its TTL ([`Guard::abandon`]). For a leader
    /// whose work may still be writing, so that no other term starts before the
    /// lease runs out.
    pub fn abandon(self) {
        self.guard.abandon();
    }

    /// The guard alone, for code that takes a [`Guard`]; resigning is then a release
    /// (without the rejoin delay).
    pub fn into_guard(self) -> Guard {
        self.guard
    }
}

impl Election {
    /// An election on `object` in `backend`'s bucket; `options` as for a [`Lock`]
    /// (TTL, identity, poll bounds).
    pub fn new(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
    ) -> Result<Self, Error> {
        Ok(Self::from_lock(Lock::new(backend, object, options)?))
    }

    /// An election on an existing lock's object, with its settings.
    pub fn from_lock(lock: Lock) -> Self {
        Self {
            lock,
            rejoin_at: Arc::new(Mutex::new(None)),
        }
    }

    /// The lock the election runs on.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// How often candidates and observers read the lock: 1 s unless the lock's poll
    /// bounds exclude it.
    pub fn poll_interval(&self) -> Duration {
        let settings = self.lock.settings();
        steady_poll(settings.poll_min, settings.poll_max)
    }

    /// How long a candidate that resigned waits before it campaigns again: two poll
    /// intervals, longer than any other waiting candidate's poll (at most 1.2
    /// intervals), so one of them wins the release.
    pub fn rejoin_delay(&self) -> Duration {
        self.poll_interval().saturating_mul(2)
    }

    /// Waits until this candidate leads, publishing `value` (at most 1024 bytes, no
    /// control characters) with the acquiring write, and returns the leadership.
    /// Reads once per poll interval while another leader is alive, and never writes
    /// then. Transient storage failures are retried for as long as it waits.
    ///
    /// Cancel safe: when `cancel` fires, campaign returns `Error::Cancelled`, and
    /// dropping the future stops it too; either way no lock is left behind (the
    /// acquire resolves a create already sent and releases what it acquired; see
    /// [`Lock::acquire`]).
    pub async fn campaign(
        &self,
        value: &str,
        cancel: &CancellationToken,
    ) -> Result<Leadership, Error> {
        check_value(value).map_err(Error::InvalidInput)?;
        let rejoin_at = *locked(&self.rejoin_at);
        if let Some(at) = rejoin_at {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = cancel.cancelled() => {
                    return Err(Error::Cancelled { lock: self.lock.url().to_owned() })
                }
            }
        }
        let guard = self
            .lock
            .with_leader_value(value.to_owned())
            .acquire_cancellable(Wait::Forever, cancel)
            .await?;
        *locked(&self.rejoin_at) = None;
        Ok(Leadership {
            guard,
            value: Mutex::new(value.to_owned()),
            rejoin_at: Arc::clone(&self.rejoin_at),
            rejoin_delay: self.rejoin_delay(),
        })
    }

    /// Who leads now, by one read judged by the server's clock: `None` when the
    /// lock is free, released or stale. Transient failures are retried for the
    /// lock's `unavailable_timeout`.
    pub async fn leader(&self) -> Result<Option<Leader>, Error> {
        let settings = self.lock.settings();
        let read = Retry::new(settings.unavailable_timeout)
            .run(|| settings.backend.read(&settings.object))
            .await
            .map_err(|error| Error::from_backend(&settings.url, error))?;
        match judge(&read) {
            Observed::Leader(leader) => Ok(Some(leader)),
            Observed::NoLeader => Ok(None),
            Observed::Unknown { why } => Err(Error::NotALock {
                lock: settings.url.clone(),
                why,
            }),
        }
    }

    /// Watches who leads, polling with reads only every [`Election::poll_interval`]
    /// (jittered down to 80 %, so at most that far apart while storage answers), and
    /// also when the leader's lease would run out. Reports a change of leader,
    /// token or published value, "no leader" once the lock is released or stale by
    /// the server's clock (or, on servers without a `Date`, once its version stayed
    /// unchanged for TTL plus margin), and "unknown" when reads fail for longer
    /// than the last leader's lease could have lasted (or the lock's
    /// `unavailable_timeout` when nobody led). Needs a tokio runtime.
    pub fn observe(&self) -> Observer {
        let (sender, receiver) = watch::channel(None);
        let settings = self.lock.settings();
        let task = tokio::spawn(observe(
            Arc::clone(&settings.backend),
            settings.object.clone(),
            self.poll_interval(),
            settings.unavailable_timeout,
            sender,
        ));
        Observer { receiver, task }
    }
}

/// The observer's polling loop.
async fn observe(
    backend: Arc<dyn Backend>,
    object: String,
    poll: Duration,
    unavailable_timeout: Duration,
    sender: watch::Sender<Option<Observation>>,
) {
    let mut unchanged = UnchangedVersion::default();
    // Until when the state last reported can be trusted without a fresh read.
    let mut trusted_until = Instant::now();
    loop {
        let mut wake = instant_after(Instant::now(), jittered_below(poll));
        match backend.read(&object).await {
            Ok(read) => {
                let received = Instant::now();
                let mut state = judge(&read);
                if let Observed::Leader(_) = state {
                    if unchanged.is_stale(&read, received) {
                        state = Observed::NoLeader;
                    }
                }
                let lease_left = lease_left(&read, &state);
                trusted_until = instant_after(received, lease_left.unwrap_or(unavailable_timeout));
                // Look again when the leader would be stale, not up to a poll later.
                if let Some(left) = lease_left {
                    wake = wake.min(instant_after(
                        received,
                        left.saturating_add(Duration::from_millis(50)),
                    ));
                }
                publish(&sender, state, read.server_time);
            }
            Err(error) => {
                tracing::debug!(%object, %error, "observer read failed");
                if Instant::now() >= trusted_until {
                    publish(
                        &sender,
                        Observed::Unknown {
                            why: format!("cannot read the lock: {error}"),
                        },
                        None,
                    );
                }
            }
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// Sends `state` if it differs from the last one sent.
fn publish(
    sender: &watch::Sender<Option<Observation>>,
    state: Observed,
    server_time: Option<DateTime<Utc>>,
) {
    sender.send_if_modified(|current| {
        if current
            .as_ref()
            .is_some_and(|seen| seen.state.same_as(&state))
        {
            return false;
        }
        *current = Some(Observation {
            state,
            at: server_time.unwrap_or_else(Utc::now),
        });
        true
    });
}

/// The leader a read shows, judged by the server's clock.
fn judge(read: &Stamped<Option<ObjectInfo>>) -> Observed {
    let info = read.value.as_ref();
    match LockStatus::judge(info, read.server_time) {
        LockStatus::Held(held) => {
            let first_write = info
                .and_then(|info| LockRecord::from_metadata(&info.metadata).ok())
                .is_some_and(|record| record.refresh_seq == 0);
            Observed::Leader(Leader {
                identity: held.holder,
                value: held.value,
                token: held.token,
                since: info
                    .and_then(|info| info.created)
                    .or(first_write.then_some(held.last_refresh)),
                last_refresh: held.last_refresh,
            })
        }
        LockStatus::NotALock { why } => Observed::Unknown { why },
        // Free, released, stale, and any state added later: nobody leads.
        _ => Observed::NoLeader,
    }
}

/// How long the leader `state` shows may still lead, by the server's clock, or by
/// its TTL plus margin where the server sent no `Date`; `None` without a leader.
fn lease_left(read: &Stamped<Option<ObjectInfo>>, state: &Observed) -> Option<Duration> {
    let Observed::Leader(_) = state else {
        return None;
    };
    match LockStatus::judge(read.value.as_ref(), read.server_time) {
        LockStatus::Held(held) => held.expires_in.or(match held.ttl {
            Ttl::Finite(ttl) => Some(ttl.saturating_add(default_margin(ttl))),
            Ttl::Forever => None,
        }),
        _ => None,
    }
}

/// The local staleness rule for servers without a `Date`: one version unchanged
/// for the recorded TTL plus margin on this machine's monotonic clock.
#[derive(Default)]
struct UnchangedVersion(Option<(ObjectVersion, Instant)>);

impl UnchangedVersion {
    fn is_stale(&mut self, read: &Stamped<Option<ObjectInfo>>, received: Instant) -> bool {
        let Some(info) = &read.value else {
            self.0 = None;
            return false;
        };
        let first_seen = match self.0 {
            Some((version, at)) if version == info.version => at,
            _ => {
                self.0 = Some((info.version, received));
                received
            }
        };
        if read.server_time.is_some() {
            return false; // the server's clock judges
        }
        let Ok(record) = LockRecord::from_metadata(&info.metadata) else {
            return false;
        };
        match record.ttl {
            Ttl::Finite(ttl) => {
                received.saturating_duration_since(first_seen)
                    >= ttl.saturating_add(default_margin(ttl))
            }
            Ttl::Forever => false,
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only assign plain values: a poisoned lock is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The default poll interval, for documentation and the CLI's help.
pub const DEFAULT_POLL_INTERVAL: Duration = STEADY_POLL;
