//! A named lock and the acquire/takeover algorithm. Transport-free: it speaks
//! only to the [`Backend`] trait.
//!
//! Rules it keeps (PROTOCOL.md §3-§4):
//! * expiry is judged by the server's clock (`Date` vs `updated` + TTL), or by the
//!   waiter watching one version stay unchanged for a TTL on its monotonic clock,
//!   never by comparing two machines' wall clocks;
//! * every write is conditioned on the exact version inspected;
//! * waiters poll with reads, and write only when the lock is free or stale;
//! * an ambiguous write is resolved by reading the nonce back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, ObjectInfo, ObjectVersion, Stamped, WriteCondition};
use crate::backoff::{jittered_poll, steady_poll, Backoff};
use crate::clock::{instant_after, SendTime};
use crate::error::{Error, HolderSummary, LossReason};
use crate::identity::new_nonce;
use crate::lease::{Guard, PeriodGuard};
use crate::options::{default_margin, LockOptions, LockSettings};
use crate::record::{recorded_holders, LockRecord, LockState, RecordedSlot, Ttl, KEY_VALUE};
use crate::slot::{CompletedSlot, Slot, SlotAcquire, SlotCheck};
use crate::status::LockStatus;
use crate::token::FencingToken;

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

/// A named lock in a bucket. Cheap to clone; holds no lease by itself.
#[derive(Clone, Debug)]
pub struct Lock {
    inner: Arc<LockSettings>,
    /// The value an election term publishes, written with the acquiring write.
    leader_value: Option<String>,
}

/// The outcome of one inspect-then-write round; `T` is what winning yields (a
/// guard, or a semaphore's permit).
pub(crate) enum Attempt<T = Guard> {
    Acquired(T),
    /// The slot asked for is already completed: nothing was written.
    Done(CompletedSlot),
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

/// Creates sent by one `acquire` whose outcome stayed unknown (the response was
/// lost and a read did not show them applied). Any of them may still apply late;
/// a later inspect that shows one must adopt it as ours, or we would wait out our
/// own lock (and make everyone else wait) for a whole TTL.
#[derive(Default)]
struct PendingCreates(Vec<(LockRecord, SendTime)>);

impl PendingCreates {
    /// Bounds the memory of an acquire that meets ambiguous failures for hours.
    /// Only the create conditioned on the current version can still apply, and it
    /// is the newest, so forgetting the oldest loses nothing in practice.
    const MAX: usize = 32;

    fn remember(&mut self, record: LockRecord, sent: SendTime) {
        if self.0.len() >= Self::MAX {
            self.0.remove(0);
        }
        self.0.push((record, sent));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pending create that `info` shows applied, taken off the list.
    fn take_applied(&mut self, info: &ObjectInfo) -> Option<(LockRecord, SendTime)> {
        let shown = LockRecord::from_metadata(&info.metadata)
            .ok()
            .filter(|record| record.state == LockState::Held)?;
        let index = self
            .0
            .iter()
            .position(|(ours, _)| ours.same_lease(&shown))?;
        Some(self.0.remove(index))
    }
}

/// A failure of one attempt: retry it (transient), give up (fatal), or stop
/// because the caller cancelled before anything was written.
pub(crate) enum Failure {
    Transient(BackendError),
    Fatal(Error),
    Cancelled,
}

/// What one acquire remembers about one lock object between its rounds: the
/// version first seen and when (the local staleness rule), and its creates whose
/// outcome is unknown.
#[derive(Default)]
pub(crate) struct Inspections {
    seen: Option<(ObjectVersion, Instant)>,
    pending: PendingCreates,
}

/// One round of an acquire: inspect, and write if free or stale. The wait loop
/// ([`Lock::acquire_rounds`]) is shared by a lock and a semaphore.
pub(crate) trait Round: Send {
    /// What winning a round yields.
    type Won: Send;

    fn attempt(
        &mut self,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Attempt<Self::Won>, Failure>> + Send;

    /// Before acquire gives up: resolves creates of ours whose outcome stayed
    /// unknown. One that applied is returned with `keep`, else released.
    fn settle(&mut self, keep: bool) -> impl Future<Output = Option<Self::Won>> + Send;
}

/// A plain lock's round: read the object, then write.
struct LockRound<'a> {
    lock: &'a Lock,
    inspections: Inspections,
    check: Option<SlotCheck>,
}

impl Round for LockRound<'_> {
    type Won = Guard;

    async fn attempt(&mut self, cancel: &CancellationToken) -> Result<Attempt, Failure> {
        self.lock
            .attempt(&mut self.inspections, cancel, self.check.as_ref())
            .await
    }

    async fn settle(&mut self, keep: bool) -> Option<Guard> {
        self.lock.settle(&mut self.inspections, keep).await
    }
}

impl Lock {
    /// A lock on `object` in `backend`'s bucket. Validates the name and options
    /// without sending any request.
    pub fn new(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
    ) -> Result<Self, Error> {
        Ok(Self {
            inner: Arc::new(LockSettings::new(backend, object, options)?),
            leader_value: None,
        })
    }

    /// One place of a semaphore of `holders` places (PROTOCOL.md §13): a lock
    /// that records the limit with every acquire and refuses a live holder that
    /// records another. `None`: a plain lock.
    pub(crate) fn place(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
        holders: Option<u32>,
    ) -> Result<Self, Error> {
        let mut settings = LockSettings::new(backend, object, options)?;
        settings.holders = holders;
        Ok(Self {
            inner: Arc::new(settings),
            leader_value: None,
        })
    }

    /// The same lock, whose acquiring writes also publish `value` as the leader's
    /// (`gcslock-value`, already checked by the caller).
    pub(crate) fn with_leader_value(&self, value: String) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            leader_value: Some(value),
        }
    }

    /// Where the lock lives, for messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How long a lease lasts without a refresh.
    pub fn ttl(&self) -> Ttl {
        self.inner.record_ttl()
    }

    /// How often the holder refreshes.
    pub fn refresh_interval(&self) -> Duration {
        self.inner.refresh_interval
    }

    /// How much earlier than the TTL the holder stops trusting its lease.
    pub fn safety_margin(&self) -> Duration {
        self.inner.margin
    }

    /// The holder name this lock writes when it acquires.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The validated settings, for the operations defined in sibling modules.
    pub(crate) fn settings(&self) -> &LockSettings {
        &self.inner
    }

    /// Acquires the lock, waiting as `wait` says: `lock.acquire(Wait::No).await`.
    /// Options go on the returned [`Acquire`] before `.await`: a cancellation
    /// token ([`Acquire::cancel_on`]) and a period ([`Acquire::once_per`]).
    ///
    /// A builder rather than an options struct: the plain call stays one line, and
    /// a period changes what the acquire returns (a [`PeriodGuard`] that can record
    /// the period as completed), which a type can say and an options field cannot.
    ///
    /// **Cancel safety.** Dropping the future leaves nothing behind: the attempt
    /// runs in a task of its own, which dropping the future cancels. A create
    /// already sent is resolved (read back by nonce), and a lock it acquired is
    /// released, in that task; only if the runtime shuts down first may a lock
    /// whose create was in flight stay until its TTL passes.
    pub fn acquire(&self, wait: Wait) -> Acquire {
        Acquire {
            lock: self.clone(),
            wait,
            cancel: None,
        }
    }

    /// [`Lock::acquire`] with `cancel`, for election and the semaphore, which build on `Lock`.
    pub(crate) async fn acquire_cancellable(
        &self,
        wait: Wait,
        cancel: &CancellationToken,
    ) -> Result<Guard, Error> {
        self.acquire(wait).cancel_on(cancel).await
    }

    async fn acquire_for(
        &self,
        wait: Wait,
        cancel: &CancellationToken,
        slot: Option<Slot>,
    ) -> Result<Acquired, Error> {
        let mut round = LockRound {
            lock: self,
            inspections: Inspections::default(),
            check: slot.map(SlotCheck::new),
        };
        Ok(match self.acquire_rounds(wait, cancel, &mut round).await? {
            Ok(guard) => Acquired::Guard(guard),
            Err(done) => Acquired::Done(done),
        })
    }

    /// Runs `round` until it wins, finds its slot done, fails for good, is cancelled,
    /// or the wait is over (`Error::Busy`). Waiters sleep between rounds with jittered
    /// backoff, waking just after the holder could turn stale; transient failures are
    /// retried for `unavailable_timeout` beyond the wait. Errors name this lock.
    pub(crate) async fn acquire_rounds<R: Round>(
        &self,
        wait: Wait,
        cancel: &CancellationToken,
        round: &mut R,
    ) -> Result<Result<R::Won, CompletedSlot>, Error> {
        let lock = &self.inner;
        let start = Instant::now();
        let wait_until = match wait {
            Wait::No => Some(start),
            // A wait too long for the clock is a wait forever.
            Wait::For(duration) => start.checked_add(duration),
            Wait::Forever => None,
        };
        // Transient failures back off exponentially; a live holder is polled steadily.
        let mut backoff = Backoff::new(lock.poll_min, lock.poll_max);
        let poll = steady_poll(lock.poll_min, lock.poll_max);
        let mut failing_since: Option<Instant> = None;
        let mut last_busy: Option<HolderSummary> = None;
        let mut expired_in_a_row = 0;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    lock: lock.url.clone(),
                });
            }
            let attempt_started = Instant::now();
            let attempt = round.attempt(cancel).await;
            let now = Instant::now();
            let wake = match attempt {
                Ok(Attempt::Acquired(won)) => return Ok(Ok(won)),
                Ok(Attempt::Done(done)) => return Ok(Err(done)),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Cancelled) => {
                    // Cancelled: the caller no longer wants a lock we got unseen.
                    round.settle(false).await;
                    return Err(Error::Cancelled {
                        lock: lock.url.clone(),
                    });
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
                    let delay = jittered_poll(poll);
                    // Look again just after the lock turns stale, not a full backoff later.
                    let wake = instant_after(
                        now,
                        retry_in.map_or(delay, |stale| {
                            delay.min(stale.saturating_add(lock.poll_min))
                        }),
                    );
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
                    // From the start of the first failed attempt: a request that hung
                    // until its timeout counts against the time allowed.
                    let since = *failing_since.get_or_insert(attempt_started);
                    // `None`: a timeout too long for the clock, which never ends.
                    let give_up_at = since
                        .checked_add(lock.unavailable_timeout)
                        .map(|at| at.max(wait_until.unwrap_or(since)));
                    if wait_until.is_some() && give_up_at.is_some_and(|at| now >= at) {
                        // A create of ours may have applied unseen: it is ours (a
                        // forever lock would otherwise stay held by nobody).
                        if let Some(won) = round.settle(true).await {
                            return Ok(Ok(won));
                        }
                        return Err(Error::from_backend(&lock.url, error));
                    }
                    tracing::debug!(lock = %lock.url, %error, "transient error while acquiring; retrying");
                    let wake = instant_after(now, backoff.next_after(Some(&error)));
                    match give_up_at {
                        Some(at) if wait_until.is_some() => wake.min(at),
                        _ => wake,
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = cancel.cancelled() => {
                    round.settle(false).await;
                    return Err(Error::Cancelled { lock: lock.url.clone() });
                }
            }
        }
    }

    /// Reads the lock and judges it by the server's clock. Transient storage
    /// failures are retried with jittered backoff for up to
    /// [`LockOptions::unavailable_timeout`]; then `Error::Unavailable`.
    pub async fn status(&self) -> Result<LockStatus, Error> {
        let lock = &self.inner;
        let read = crate::retry::Retry::new(lock.unavailable_timeout)
            .run(|| lock.backend.read(&lock.object))
            .await
            .map_err(|error| Error::from_backend(&lock.url, error))?;
        Ok(LockStatus::judge(read.value.as_ref(), read.server_time))
    }

    /// One inspect-then-write round. Only the inspect can be cancelled: once a write
    /// is sent it runs to completion, so cancellation never leaves a lock behind.
    async fn attempt(
        &self,
        inspections: &mut Inspections,
        cancel: &CancellationToken,
        slot: Option<&SlotCheck>,
    ) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        let read = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            read = lock.backend.read(&lock.object) => read.map_err(|e| self.classify(e))?,
        };
        self.attempt_inspected(read, Instant::now(), inspections, cancel, slot)
            .await
    }

    /// The rest of a round, given what an inspect (a read, or a semaphore's listing)
    /// showed of the object and when its answer was `received`.
    pub(crate) async fn attempt_inspected(
        &self,
        read: Stamped<Option<ObjectInfo>>,
        received: Instant,
        inspections: &mut Inspections,
        cancel: &CancellationToken,
        slot: Option<&SlotCheck>,
    ) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        let Inspections { seen, pending } = inspections;
        if let Some(slot) = slot {
            slot.check_clock(&lock.url, read.server_time);
        }
        if let Some(info) = &read.value {
            if let Some((ours, sent)) = pending.take_applied(info) {
                tracing::debug!(lock = %lock.url, "an earlier create of ours applied late; adopting it");
                return Ok(self.started(ours, info.version, sent).await);
            }
        }
        let (condition, token) = match &read.value {
            None => (WriteCondition::DoesNotExist, 1),
            Some(info) => {
                let record = self.decode(info)?;
                if let Some(done) = slot_done(slot, &record, info, read.server_time, &lock.url) {
                    return Ok(Attempt::Done(done));
                }
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
                            self.check_holders(info, &record)?;
                            return Ok(Attempt::Busy {
                                holder: summary(&record, retry_in),
                                retry_in,
                            });
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
            ttl: lock.record_ttl(),
            refresh_seq: 0,
            completed: carried_completion(read.value.as_ref()),
        };
        let mut metadata = lock.metadata_of(&record);
        if let Some(value) = &self.leader_value {
            metadata.insert(KEY_VALUE.to_owned(), value.clone());
        }
        let sent = SendTime::now();
        match lock.backend.write(&lock.object, condition, &metadata).await {
            Ok(written) => Ok(self.started(record, written.value.version, sent).await),
            // Someone else wrote first; report who holds it now.
            Err(BackendError::PreconditionFailed) => {
                self.after_lost_race(&record, sent, pending, slot).await
            }
            Err(error) if error.may_have_applied() => {
                tracing::debug!(lock = %lock.url, %error, "create outcome unknown; resolving by nonce");
                self.resolve_ambiguous_write(record, sent, error, pending)
                    .await
            }
            Err(error) => Err(self.classify(error)),
        }
    }

    async fn after_lost_race(
        &self,
        ours: &LockRecord,
        sent: SendTime,
        pending: &mut PendingCreates,
        slot: Option<&SlotCheck>,
    ) -> Result<Attempt, Failure> {
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
                // Or the race was lost to an earlier create of ours, applied late.
                if let Some((earlier, earlier_sent)) = pending.take_applied(info) {
                    return Ok(self.started(earlier, info.version, earlier_sent).await);
                }
                let record = self.decode(info)?;
                if let Some(done) = slot_done(slot, &record, info, read.server_time, &lock.url) {
                    return Ok(Attempt::Done(done));
                }
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
                    token: FencingToken::new(0),
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
        pending: &mut PendingCreates,
    ) -> Result<Attempt, Failure> {
        let lock = &self.inner;
        // A forever lease never ends by itself: bound the reading as for an outage.
        let give_up_at = if lock.forever {
            instant_after(sent.at, lock.unavailable_timeout.max(lock.refresh_interval))
        } else {
            instant_after(sent.at, lock.ttl.saturating_sub(lock.margin))
        };
        let mut backoff = Backoff::new(
            lock.poll_min.min(Duration::from_millis(100)),
            lock.refresh_interval,
        );
        let mut last_error = first_error;
        while Instant::now() < give_up_at {
            match lock.backend.read(&lock.object).await {
                Ok(read) => {
                    if let Some(info) = &read.value {
                        if self.is_ours(info, &ours) {
                            return Ok(self.started(ours, info.version, sent).await);
                        }
                        if let Some((earlier, earlier_sent)) = pending.take_applied(info) {
                            return Ok(self.started(earlier, info.version, earlier_sent).await);
                        }
                    }
                    // Not applied yet (it may still, late), or applied and already
                    // superseded: remember it, and judge the lock afresh.
                    pending.remember(ours, sent);
                    return Err(Failure::Transient(last_error));
                }
                Err(error) if error.is_transient() => last_error = error,
                Err(error) => return Err(self.classify(error)),
            }
            tokio::time::sleep_until(instant_after(Instant::now(), backoff.next()).min(give_up_at))
                .await;
        }
        pending.remember(ours, sent);
        Err(Failure::Transient(last_error))
    }

    /// Settles an acquire's pending creates ([`Lock::settle_pending`]): the lease
    /// of one that applied is returned with `keep`, else released.
    pub(crate) async fn settle(&self, inspections: &mut Inspections, keep: bool) -> Option<Guard> {
        let guard = self.settle_pending(&mut inspections.pending).await?;
        if keep {
            return Some(guard);
        }
        let _released_or_lost = guard.release().await;
        None
    }

    /// Before acquire gives up (time out, cancellation): a create of ours whose
    /// outcome stayed unknown may have applied. Read until the object shows one
    /// (it is ours: its lease is returned, started from when it was sent) or shows
    /// none. A finite lease left unresolved expires unrefreshed, so one round of
    /// reading (a refresh interval) suffices; a forever lease never expires, so
    /// reading goes on through an outage for up to `unavailable_timeout` more.
    async fn settle_pending(&self, pending: &mut PendingCreates) -> Option<Guard> {
        if pending.is_empty() {
            return None;
        }
        let lock = &self.inner;
        let bound = if lock.forever {
            lock.unavailable_timeout.max(lock.refresh_interval)
        } else {
            lock.refresh_interval
        };
        let give_up_at = instant_after(Instant::now(), bound);
        let mut backoff = Backoff::new(
            lock.poll_min.min(Duration::from_millis(100)),
            lock.refresh_interval,
        );
        loop {
            let read = tokio::time::timeout_at(give_up_at, lock.backend.read(&lock.object)).await;
            let error = match read {
                Ok(Ok(read)) => {
                    let info = read.value?;
                    let (ours, sent) = pending.take_applied(&info)?;
                    return match self.started(ours, info.version, sent).await {
                        Attempt::Acquired(guard) => Some(guard),
                        _ => None,
                    };
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "read still pending".to_owned(),
            };
            if Instant::now() >= give_up_at {
                if lock.forever {
                    tracing::warn!(
                        lock = %lock.url, %error,
                        "a create of this forever lock may have applied unseen; if `status` \
                         shows this holder, break it"
                    );
                }
                return None;
            }
            tokio::time::sleep_until(instant_after(Instant::now(), backoff.next()).min(give_up_at))
                .await;
        }
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
            .is_ok_and(|record| ours.same_lease(&record) && record.state == LockState::Held)
    }

    /// A live holder must agree on the holder limit (PROTOCOL.md §13): one that
    /// allows another number is refused, never waited for.
    fn check_holders(&self, info: &ObjectInfo, record: &LockRecord) -> Result<(), Failure> {
        let lock = &self.inner;
        let theirs = recorded_holders(&info.metadata).map_err(|why| {
            Failure::Fatal(Error::NotALock {
                lock: lock.url.clone(),
                why,
            })
        })?;
        let ours = lock.holder_limit();
        if theirs == ours {
            return Ok(());
        }
        Err(Failure::Fatal(Error::HoldersMismatch {
            lock: lock.url.clone(),
            ours,
            theirs,
            holder: format!("{} (token {}) at {}", record.holder, record.token, lock.url),
        }))
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
        // A forever lease is never stale: only a break frees it.
        let Ttl::Finite(ttl) = record.ttl else {
            return Staleness::Fresh { retry_in: None };
        };
        let margin = default_margin(ttl);
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
        let local_left = ttl
            .saturating_add(margin)
            .saturating_sub(received.saturating_duration_since(first_seen));
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

/// The completion recorded in `record` if it makes the slot asked for done,
/// judged by the server's clock reading taken with it (PROTOCOL.md §10).
fn slot_done(
    slot: Option<&SlotCheck>,
    record: &LockRecord,
    info: &ObjectInfo,
    server_time: Option<DateTime<Utc>>,
    lock: &str,
) -> Option<CompletedSlot> {
    slot?.done(
        lock,
        record
            .completed
            .as_ref()
            .map(|done| done.resolve(info.updated)),
        LockRecord::completion_problem(&info.metadata),
        server_time,
    )
}

/// The completed slot an acquire carries over from the object it replaces.
fn carried_completion(inspected: Option<&ObjectInfo>) -> Option<RecordedSlot> {
    let info = inspected?;
    let record = LockRecord::from_metadata(&info.metadata).ok()?;
    record.completed.map(|done| done.carried_from(info.updated))
}

fn summary(record: &LockRecord, expires_in: Option<Duration>) -> HolderSummary {
    HolderSummary {
        identity: record.holder.clone(),
        token: FencingToken::new(record.token),
        expires_in,
    }
}

/// What one run of the acquire loop ended with.
enum Acquired {
    Guard(Guard),
    Done(CompletedSlot),
}

/// An acquire being set up: returned by [`Lock::acquire`], run by `.await`
/// (see there for its cancel safety).
#[derive(Debug)]
#[must_use = "an acquire does nothing until it is awaited"]
pub struct Acquire {
    lock: Lock,
    wait: Wait,
    cancel: Option<CancellationToken>,
}

impl Acquire {
    /// Stops waiting when `cancel` fires, with `Error::Cancelled`. Cancellation
    /// is honoured only between requests that could create the lock, and a create
    /// of ours whose answer was lost is resolved (and released if it applied)
    /// first, so no lock is left behind.
    pub fn cancel_on(mut self, cancel: &CancellationToken) -> Self {
        self.cancel = Some(cancel.clone());
        self
    }

    /// Once per period: acquires the lock for `slot` unless the lock records that
    /// slot (or a later one of the same period) as completed. A waiter stops
    /// waiting as soon as it sees the slot completed. The check rides on the read
    /// every acquire makes: it costs no extra request.
    ///
    /// Record the slot as completed with [`PeriodGuard::release_completed`] once
    /// the work succeeded; a plain release (or a lost lease) leaves it open.
    ///
    /// ```
    /// use std::{sync::Arc, time::{Duration, SystemTime}};
    /// use gcslock::once_per::{Slot, SlotAcquire};
    /// use gcslock::{backend::memory::MemoryBackend, Lock, LockOptions, Wait};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> gcslock::Result<()> {
    /// let bucket = Arc::new(MemoryBackend::new("my-bucket"));
    /// let lock = Lock::new(bucket, "jobs/hourly", LockOptions::default())?;
    /// // Name the slot by this machine's wall clock when the job starts.
    /// let slot = Slot::containing(SystemTime::now(), Duration::from_secs(3600))?;
    ///
    /// match lock.acquire(Wait::No).once_per(slot).await? {
    ///     SlotAcquire::Acquired(guard) => {
    ///         // ... the hourly work; on failure `guard.release()` leaves the slot open
    ///         guard.release_completed().await?;
    ///     }
    ///     SlotAcquire::AlreadyDone(done) => unreachable!("first run: {done}"),
    /// }
    /// // The same hour again: another machine (or a later cron tick) skips it.
    /// let again = lock.acquire(Wait::No).once_per(slot).await?;
    /// assert!(matches!(again, SlotAcquire::AlreadyDone(_)));
    /// # Ok(()) }
    /// ```
    pub fn once_per(self, slot: Slot) -> AcquirePeriod {
        AcquirePeriod {
            acquire: self,
            slot,
        }
    }

    /// Runs the acquire loop in a task of its own ([`detached`]).
    async fn run(self, slot: Option<Slot>) -> Result<Acquired, Error> {
        let url = self.lock.inner.url.clone();
        let lock = self.lock;
        let wait = self.wait;
        detached(url, self.cancel.as_ref(), move |cancel| async move {
            lock.acquire_for(wait, &cancel, slot).await
        })
        .await
    }
}

/// Runs an acquire loop in a task of its own, which dropping the returned future
/// cancels (through a child of the caller's `cancel`, which stays untouched): a
/// create in flight is resolved, and a lock acquired after all is released, by that
/// task, so a dropped acquire leaves nothing behind.
pub(crate) async fn detached<T, F, Fut>(
    url: String,
    cancel: Option<&CancellationToken>,
    attempt: F,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
{
    let cancel = cancel.map_or_else(CancellationToken::new, CancellationToken::child_token);
    let cancel_on_drop = cancel.clone().drop_guard();
    let joined = tokio::spawn(attempt(cancel)).await;
    cancel_on_drop.disarm();
    match joined {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(Error::Cancelled { lock: url }),
    }
}

impl std::future::IntoFuture for Acquire {
    type Output = Result<Guard, Error>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Result<Guard, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let url = self.lock.inner.url.clone();
            match self.run(None).await? {
                Acquired::Guard(guard) => Ok(guard),
                // Only a slot can be done, and none was asked for.
                Acquired::Done(done) => Err(Error::Conflict {
                    lock: url,
                    why: done.to_string(),
                }),
            }
        })
    }
}

/// An acquire for one period: returned by [`Acquire::once_per`], run by `.await`.
#[derive(Debug)]
#[must_use = "an acquire does nothing until it is awaited"]
pub struct AcquirePeriod {
    acquire: Acquire,
    slot: Slot,
}

impl AcquirePeriod {
    /// See [`Acquire::cancel_on`].
    pub fn cancel_on(mut self, cancel: &CancellationToken) -> Self {
        self.acquire = self.acquire.cancel_on(cancel);
        self
    }
}

impl std::future::IntoFuture for AcquirePeriod {
    type Output = Result<SlotAcquire, Error>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Result<SlotAcquire, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        let slot = self.slot;
        Box::pin(async move {
            Ok(match self.acquire.run(Some(slot)).await? {
                Acquired::Guard(guard) => SlotAcquire::Acquired(PeriodGuard::new(guard, slot)),
                Acquired::Done(done) => SlotAcquire::AlreadyDone(done),
            })
        })
    }
}
