//! A held lease: the keep-alive task, loss notification, the commit guard and
//! release. Its deadline is `send time of the last successful refresh + TTL - margin`
//! ([`crate::clock`]): network delay can only shorten the holder's belief.
//! (PROTOCOL.md §5.)

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, ObjectInfo, ObjectVersion};
use crate::backoff::Backoff;
use crate::clock::{instant_after, Deadline, SendTime};
use crate::error::{Error, LossReason};
use crate::options::LockSettings;
use crate::record::{LockRecord, LockState, RecordedSlot};
use crate::slot::Slot;
use crate::token::FencingToken;

/// Proof of holding a lock. Refreshes the lease in the background until released,
/// abandoned or dropped.
///
/// Three ways to let go:
/// * [`Guard::release`]: marks the lock released and says whether that happened.
/// * [`Guard::abandon`]: stops refreshing and writes nothing; the lock expires by
///   its TTL (as etcd's `Session.Orphan`). Use it where the lock must be left to
///   expire, e.g. while work that may still run under it is not known to be over.
/// * Dropping the guard: the refresh task is stopped before `drop` returns (no
///   refresh is sent after it, though one already in flight may still apply), and
///   [`Guard::lost`] resolves. Then, if a tokio runtime is current, a release is
///   spawned as best effort; if the runtime shuts down first, that release is
///   discarded and the lock expires by its TTL like an abandoned one (a forever
///   lock then stays held until broken). Call `release().await` to know the
///   release happened, or `abandon()` to be sure none is sent.
#[derive(Debug)]
pub struct Guard {
    lease: Arc<Lease>,
    keep_alive: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Lease {
    lock: Arc<LockSettings>,
    /// The record we wrote; refreshes rewrite it with a higher `refresh_seq`.
    record: LockRecord,
    state: Mutex<LeaseState>,
    lost: watch::Sender<Option<LossReason>>,
    /// Asks the keep-alive task to stop at its next pause (never mid-request).
    stop: CancellationToken,
}

#[derive(Debug)]
struct LeaseState {
    version: ObjectVersion,
    deadline: Deadline,
    refresh_seq: u64,
}

impl Guard {
    pub(crate) fn start(
        lock: Arc<LockSettings>,
        record: LockRecord,
        version: ObjectVersion,
        sent: SendTime,
    ) -> Self {
        let lease_length = lock.ttl - lock.margin;
        tracing::info!(lock = %lock.url, token = record.token, "lock acquired");
        let lease = Arc::new(Lease {
            state: Mutex::new(LeaseState {
                version,
                deadline: Deadline::after(sent, lease_length),
                refresh_seq: record.refresh_seq,
            }),
            lock,
            record,
            lost: watch::channel(None).0,
            stop: CancellationToken::new(),
        });
        let loss_on_exit = LossOnExit(Arc::clone(&lease));
        let keep_alive = tokio::spawn({
            let lease = Arc::clone(&lease);
            async move {
                let _loss_on_exit = loss_on_exit;
                keep_alive(lease, sent.at).await;
            }
        });
        Self {
            lease,
            keep_alive: Some(keep_alive),
        }
    }

    /// This holder's fencing token: larger than every earlier holder's.
    pub fn token(&self) -> FencingToken {
        FencingToken::new(self.lease.record.token)
    }

    /// Where the lock lives, for messages.
    pub fn url(&self) -> &str {
        &self.lease.lock.url
    }

    /// The holder identity written into the lock.
    pub fn identity(&self) -> &str {
        &self.lease.record.holder
    }

    /// Cheap and synchronous: the lease is not lost and its deadline has not passed.
    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    /// `Ok` while the lease is valid, or why it is not.
    pub fn check(&self) -> Result<(), LossReason> {
        if let Some(reason) = self.lease.lost.borrow().clone() {
            return Err(reason);
        }
        if self.time_left().is_zero() {
            return Err(LossReason::Expired {
                last_error: "the lease deadline passed before a refresh succeeded".into(),
            });
        }
        Ok(())
    }

    /// Time until the holder's own deadline (zero once lost).
    pub fn time_left(&self) -> Duration {
        if self.lease.lost.borrow().is_some() {
            return Duration::ZERO;
        }
        self.lease.state().deadline.left()
    }

    /// Resolves when the lease is lost, with the reason. Use it in `select!` to stop
    /// work the moment the lock is gone.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let mut receiver = self.lease.lost.subscribe();
        async move {
            match receiver.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or(LossReason::Released),
                // The sender lives in the lease, which outlives every guard; treat
                // its disappearance as a release all the same.
                Err(_) => LossReason::Released,
            }
        }
    }

    /// Runs a short commit step only after a final validity check that leaves at
    /// least `needed` of the lease. The closure gets the fencing token to pass on.
    pub fn commit<T>(
        &self,
        needed: Duration,
        commit: impl FnOnce(FencingToken) -> T,
    ) -> Result<T, Error> {
        self.check_time_for(needed)?;
        Ok(commit(self.token()))
    }

    /// Like [`Guard::commit`] for an async step, which is also abandoned (dropped)
    /// if the lease is lost or runs out while it runs.
    pub async fn commit_async<T, F>(
        &self,
        needed: Duration,
        commit: impl FnOnce(FencingToken) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = T>,
    {
        self.check_time_for(needed)?;
        // Refreshes may push the deadline out while the commit runs: re-read it.
        let expiry = async {
            loop {
                let left = self.time_left();
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left).await;
            }
        };
        tokio::select! {
            value = commit(self.token()) => Ok(value),
            reason = self.lost() => Err(self.lost_error(reason)),
            () = expiry => Err(self.lost_error(LossReason::Expired {
                last_error: "the lease ran out during the commit".into(),
            })),
        }
    }

    /// Releases the lock: stops refreshing and marks the object released, conditioned
    /// on our exact version. A lost response is resolved by reading back our nonce.
    /// Returns `Error::LeaseLost` if the lease had already been lost (someone else may
    /// have held the lock meanwhile).
    pub async fn release(mut self) -> Result<(), Error> {
        let task = self.keep_alive.take();
        let_go(&self.lease, task, None).await
    }

    /// Lets the lock expire: stops refreshing at once and writes nothing (as etcd's
    /// `Session.Orphan`). The lock stays held until its TTL passes, by the server's
    /// clock (a forever lock until it is broken); [`Guard::lost`] resolves with
    /// [`LossReason::Released`]. A refresh already in flight may still apply, which
    /// only moves the expiry to at most one TTL after it was sent.
    pub fn abandon(mut self) {
        if let Some(task) = self.keep_alive.take() {
            self.lease.stop.cancel();
            task.abort();
        }
        tracing::info!(lock = %self.lease.lock.url, token = self.lease.record.token, "lock abandoned; it expires by its TTL");
        self.lease.mark_lost(LossReason::Released);
    }

    /// Releases the lock and records `slot` as completed in the same conditional
    /// write, if the lease is still valid when the release is sent; otherwise
    /// releases it as [`Guard::release`] does and says why (`Error::LeaseLost`),
    /// leaving the slot open.
    async fn release_completing(mut self, slot: Slot) -> Result<(), Error> {
        let valid = self.check();
        let completion = valid.is_ok().then(|| RecordedSlot {
            slot,
            by: self.lease.record.holder.clone(),
            at: None,
        });
        let task = self.keep_alive.take();
        let result = let_go(&self.lease, task, completion).await;
        valid.map_err(|reason| self.lost_error(reason))?;
        result
    }

    /// [`Guard::check`] as the library's error (`Error::LeaseLost`).
    pub(crate) fn check_lease(&self) -> Result<(), Error> {
        self.check().map_err(|reason| self.lost_error(reason))
    }

    /// Merges `keys` into the lock object with one conditional PATCH on the version
    /// the keep-alive tracks, counting as a refresh (election's proclaim). A race
    /// with the keep-alive's own refresh (412, still ours) is retried on the new
    /// version; an answer lost in transit is resolved by reading the keys back.
    pub(crate) async fn write_keys(&self, keys: &crate::backend::Metadata) -> Result<(), Error> {
        let lease = &self.lease;
        let lock = &lease.lock;
        let mut retry = Backoff::new(Duration::from_millis(100), lock.refresh_interval);
        loop {
            self.check().map_err(|reason| self.lost_error(reason))?;
            let (version, seq, deadline) = {
                let state = lease.state();
                let seq = state.refresh_seq.saturating_add(1);
                (state.version, seq, state.deadline.monotonic)
            };
            let mut metadata = lease.record(LockState::Held, seq).to_metadata();
            metadata.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
            let sent = SendTime::now();
            let update = lock
                .backend
                .update_metadata(&lock.object, version, &metadata);
            let failure = match tokio::time::timeout_at(deadline, update).await {
                Err(_) => continue, // the lease deadline passed: `check` says so
                Ok(Ok(written)) => match lease.owns(&written.value) {
                    Some(record) if written.value.version.generation == version.generation => {
                        renewed(lease, written.value.version, record.refresh_seq, sent);
                        return Ok(());
                    }
                    _ => {
                        lease.mark_lost(LossReason::Superseded { holder: None });
                        continue;
                    }
                },
                Ok(Err(error)) => error,
            };
            let conflict = matches!(
                failure,
                BackendError::PreconditionFailed | BackendError::NotFound
            );
            if !conflict && !failure.is_transient() {
                return Err(Error::from_backend(&lock.url, failure));
            }
            // Without extending the deadline: a refresh of the keep-alive may be
            // what applied, sent earlier than ours.
            let read = lock.backend.read(&lock.object);
            let Ok(read) = tokio::time::timeout_at(deadline, read).await else {
                continue;
            };
            match read.map(|read| read.value) {
                Ok(Some(info)) => match lease.owns(&info) {
                    Some(record) if record.state == LockState::Held => {
                        {
                            let mut state = lease.state();
                            state.version = info.version;
                            state.refresh_seq = record.refresh_seq;
                        }
                        let applied = keys
                            .iter()
                            .all(|(key, value)| info.metadata.get(key) == Some(value));
                        if applied {
                            return Ok(());
                        }
                    }
                    Some(_) => lease.mark_lost(LossReason::Released),
                    None => lease.mark_lost(LossReason::Superseded { holder: None }),
                },
                Ok(None) => lease.mark_lost(LossReason::Deleted),
                Err(error) => tokio::time::sleep(retry.next_after(Some(&error))).await,
            }
            if !conflict {
                tokio::time::sleep(retry.next_after(Some(&failure))).await;
            }
        }
    }

    fn check_time_for(&self, needed: Duration) -> Result<(), Error> {
        self.check_lease()?;
        let left = self.time_left();
        if left < needed {
            return Err(Error::InsufficientTime {
                lock: self.lease.lock.url.clone(),
                left,
                needed,
            });
        }
        Ok(())
    }

    fn lost_error(&self, reason: LossReason) -> Error {
        Error::LeaseLost {
            lock: self.lease.lock.url.clone(),
            reason,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(task) = self.keep_alive.take() else {
            return; // released or abandoned
        };
        // Stop refreshing now, not in a task that may never run: after `drop`
        // returns no refresh is sent, whatever happens to the runtime.
        self.lease.stop.cancel();
        task.abort();
        let lease = Arc::clone(&self.lease);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Lost (as released) at once; the release itself is best effort.
                let lost_before = lease.lost.borrow().clone();
                lease.mark_lost(LossReason::Released);
                runtime.spawn(async move {
                    if let Err(error) = release(&lease, lost_before, None).await {
                        tracing::warn!(lock = %lease.lock.url, %error, "background release after drop failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(lock = %lease.lock.url, "guard dropped outside a runtime; the lock will expire after its TTL");
                lease.mark_lost(LossReason::Released);
            }
        }
    }
}

/// A lease held for one period of a once-per job ([`crate::once_per::SlotAcquire`]): a
/// [`Guard`] (which it dereferences to) that knows its period, so recording the
/// period as completed cannot fail for want of one.
#[derive(Debug)]
#[must_use = "release it: with `release_completed` once the work succeeded"]
pub struct PeriodGuard {
    guard: Guard,
    slot: Slot,
}

impl PeriodGuard {
    pub(crate) fn new(guard: Guard, slot: Slot) -> Self {
        Self { guard, slot }
    }

    /// The period this lease was acquired for.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The work succeeded: releases the lock and records the period as completed
    /// in the same conditional write, so no later run of the period does it again.
    /// Recorded only if the lease is still valid when the release is sent;
    /// otherwise the lock is released as by [`PeriodGuard::release`] and
    /// `Error::LeaseLost` says so, leaving the period open for a retry.
    pub async fn release_completed(self) -> Result<(), Error> {
        self.guard.release_completing(self.slot).await
    }

    /// The work failed (or was not done): releases the lock and leaves the period
    /// open for a retry. See [`Guard::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }

    /// Lets the lock expire, writing nothing and leaving the period open. See
    /// [`Guard::abandon`].
    pub fn abandon(self) {
        self.guard.abandon();
    }

    /// The plain guard, forgetting the period.
    pub fn into_guard(self) -> Guard {
        self.guard
    }
}

impl std::ops::Deref for PeriodGuard {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        &self.guard
    }
}

/// The one release sequence: stop the keep-alive (letting a refresh in flight
/// finish), mark the lock released on the server, then mark the lease lost as
/// released.
async fn let_go(
    lease: &Lease,
    task: Option<JoinHandle<()>>,
    completion: Option<RecordedSlot>,
) -> Result<(), Error> {
    if let Some(task) = task {
        stop_keep_alive(lease, task).await;
    }
    let lost_before = lease.lost.borrow().clone();
    let result = release(lease, lost_before, completion).await;
    lease.mark_lost(LossReason::Released);
    result
}

impl Lease {
    fn state(&self) -> MutexGuard<'_, LeaseState> {
        // Every critical section only assigns plain fields, so a poisoned lock
        // still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_lost(&self, reason: LossReason) {
        self.lost.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            if reason != LossReason::Released {
                tracing::warn!(lock = %self.lock.url, token = self.record.token, %reason, "lease lost");
            }
            *current = Some(reason);
            true
        });
    }

    /// Our record as of refresh `seq`, in the given state.
    fn record(&self, state: LockState, refresh_seq: u64) -> LockRecord {
        LockRecord {
            state,
            refresh_seq,
            ..self.record.clone()
        }
    }

    fn owns(&self, info: &ObjectInfo) -> Option<LockRecord> {
        LockRecord::from_metadata(&info.metadata)
            .ok()
            .filter(|record| self.record.same_lease(record))
    }
}

/// What a read-back after a 412/404 shows about our lease.
enum ReadBack {
    /// Still ours, at this version (one of our writes applied without our seeing it).
    Ours(ObjectVersion, LockRecord),
    Gone(LossReason),
}

async fn read_back(lease: &Lease) -> Result<ReadBack, BackendError> {
    let read = lease.lock.backend.read(&lease.lock.object).await?;
    Ok(match read.value {
        None => ReadBack::Gone(LossReason::Deleted),
        Some(info) => match lease.owns(&info) {
            Some(record) => ReadBack::Ours(info.version, record),
            None => ReadBack::Gone(LossReason::Superseded {
                holder: LockRecord::from_metadata(&info.metadata)
                    .ok()
                    .filter(|record| record.state == LockState::Held)
                    .map(|record| format!("{} (token {})", record.holder, record.token)),
            }),
        },
    })
}

/// How long release waits for a refresh in flight to finish before abandoning it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stops the keep-alive task so that no refresh races the release. A refresh in
/// flight is let finish (briefly): aborting it would still let it apply on the
/// server, and the release would then meet a 412 and need two more requests.
async fn stop_keep_alive(lease: &Lease, mut task: JoinHandle<()>) {
    lease.stop.cancel();
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// A refresh time slightly before `interval` is due, so that locks acquired in a
/// burst do not refresh in a burst forever. Refreshing early is always safe.
/// Never below `floor`, the backend's per-object write-rate limit, which the nominal
/// interval was checked against in `Lock::new`.
fn jittered(interval: Duration, earliest: f64, floor: Duration) -> Duration {
    interval
        .mul_f64(rand::rng().random_range(earliest..=1.0))
        .max(floor.min(interval))
}

/// Marks the lease lost if the keep-alive task ends without having decided its
/// fate (a panic, an abort, a runtime shutting down), so `lost()` never waits for
/// a task that is gone. A stop asked for by release or drop is no loss.
/// It is moved into the task's future, so it fires even if the task is dropped
/// before its first poll.
struct LossOnExit(Arc<Lease>);

impl Drop for LossOnExit {
    fn drop(&mut self) {
        if self.0.stop.is_cancelled() {
            return;
        }
        let why = if std::thread::panicking() {
            "it panicked"
        } else {
            "it was aborted, or its runtime shut down"
        };
        self.0
            .mark_lost(LossReason::KeepAliveStopped { why: why.into() });
    }
}

/// Refreshes every `refresh_interval` until lost; transient failures are retried
/// until the deadline, and the deadline itself ends the lease even if a request hangs.
async fn keep_alive(lease: Arc<Lease>, acquired_at: Instant) {
    let lock = &lease.lock;
    let interval = lock.refresh_interval;
    let floor = lock.backend.min_mutation_interval().unwrap_or_default();
    let mut next = instant_after(acquired_at, jittered(interval, 0.5, floor));
    let mut retry = Backoff::new(interval / 8, interval);
    let mut last_error = String::from("none");
    // Send time of a refresh whose response was lost: if it applied, the lease runs
    // from then.
    let mut unconfirmed: Option<SendTime> = None;
    loop {
        let deadline = lease.state().deadline.monotonic;
        tokio::select! {
            biased;
            () = lease.stop.cancelled() => return,
            () = tokio::time::sleep_until(next.min(deadline)) => {}
        }
        if lease.state().deadline.left().is_zero() {
            lease.mark_lost(LossReason::Expired { last_error });
            return;
        }
        let (version, seq) = {
            let state = lease.state();
            (state.version, state.refresh_seq.saturating_add(1))
        };
        let metadata = lease.record(LockState::Held, seq).to_metadata();
        let sent = SendTime::now();
        let outcome = tokio::time::timeout_at(
            deadline,
            lock.backend
                .update_metadata(&lock.object, version, &metadata),
        )
        .await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => {
                last_error = "refresh request still pending at the lease deadline".into();
                continue; // the loop top sees the deadline has passed
            }
        };
        match result {
            Ok(written) => match lease.owns(&written.value) {
                Some(record) if written.value.version.generation == version.generation => {
                    renewed(&lease, written.value.version, record.refresh_seq, sent);
                    unconfirmed = None;
                    retry = Backoff::new(interval / 8, interval);
                    next = instant_after(sent.at, jittered(interval, 0.9, floor));
                }
                _ => {
                    lease.mark_lost(LossReason::Superseded { holder: None });
                    return;
                }
            },
            Err(BackendError::PreconditionFailed | BackendError::NotFound) => {
                // A read-back that hangs must not outlive the lease either.
                let Ok(read) = tokio::time::timeout_at(deadline, read_back(&lease)).await else {
                    last_error =
                        "read-back after a conflict still pending at the lease deadline".into();
                    continue; // the loop top sees the deadline has passed
                };
                match read {
                    Ok(ReadBack::Ours(current, record)) if record.state == LockState::Held => {
                        // One of our refreshes applied unseen; it was sent no earlier
                        // than `unconfirmed`, so the lease runs at least from then.
                        let state_seq = record.refresh_seq;
                        match unconfirmed.take() {
                            Some(at) => renewed(&lease, current, state_seq, at),
                            None => {
                                let mut state = lease.state();
                                state.version = current;
                                state.refresh_seq = state_seq;
                            }
                        }
                        next = Instant::now();
                    }
                    Ok(ReadBack::Ours(..)) => {
                        // Our nonce in a tombstone: we never released, so someone
                        // else rewrote our record. Not ours any more.
                        lease.mark_lost(LossReason::Superseded { holder: None });
                        return;
                    }
                    Ok(ReadBack::Gone(reason)) => {
                        lease.mark_lost(reason);
                        return;
                    }
                    Err(error) => {
                        last_error = error.to_string();
                        next = instant_after(Instant::now(), retry.next_after(Some(&error)));
                    }
                }
            }
            Err(error) => {
                tracing::debug!(lock = %lock.url, %error, "refresh failed; retrying before the deadline");
                if error.may_have_applied() {
                    unconfirmed.get_or_insert(sent);
                }
                next = instant_after(Instant::now(), retry.next_after(Some(&error)));
                last_error = error.to_string();
            }
        }
    }
}

fn renewed(lease: &Lease, version: ObjectVersion, refresh_seq: u64, sent: SendTime) {
    let mut state = lease.state();
    state.version = version;
    state.refresh_seq = refresh_seq;
    state
        .deadline
        .extend(sent, lease.lock.ttl - lease.lock.margin);
}

/// Marks the object released if it is still ours. Retries transient failures until
/// the lease would have gone stale anyway. Should the release outlast the lease
/// deadline (a request that hangs), the lease is marked lost at the deadline.
/// `completion` is recorded in the same write (`PeriodGuard::release_completed`).
/// `lost_before`: why the lease was already lost when the release began, if it was.
async fn release(
    lease: &Lease,
    lost_before: Option<LossReason>,
    completion: Option<RecordedSlot>,
) -> Result<(), Error> {
    let lock = &lease.lock;
    let outcome = || match lost_before.clone() {
        // An expired lease may still be ours on the server: release it, but tell the
        // caller its critical section may not have been exclusive.
        Some(reason) => Err(Error::LeaseLost {
            lock: lock.url.clone(),
            reason,
        }),
        None => Ok(()),
    };
    if let Some(LossReason::Superseded { .. } | LossReason::Deleted | LossReason::Released) =
        lost_before
    {
        return outcome(); // nothing of ours left to release
    }
    let deadline = lease.state().deadline.monotonic;
    let give_up_at = if lock.forever {
        // A forever lease never goes stale by itself: give up as after an outage.
        instant_after(Instant::now(), lock.unavailable_timeout.max(lock.poll_min))
    } else {
        instant_after(deadline, lock.margin.saturating_mul(2))
            .max(instant_after(Instant::now(), lock.poll_min))
    };
    let releasing = release_until(lease, give_up_at, completion);
    tokio::pin!(releasing);
    tokio::select! {
        biased;
        result = &mut releasing => return result.and_then(|()| outcome()),
        () = tokio::time::sleep_until(deadline) => lease.mark_lost(LossReason::Expired {
            last_error: "the lease deadline passed while releasing".into(),
        }),
    }
    releasing.await.and_then(|()| outcome())
}

/// The release requests, each bounded by `give_up_at`: past it the lease is stale
/// to everyone, and a hanging request is abandoned.
async fn release_until(
    lease: &Lease,
    give_up_at: Instant,
    completion: Option<RecordedSlot>,
) -> Result<(), Error> {
    let lock = &lease.lock;
    let gave_up = || {
        Error::from_backend(
            &lock.url,
            BackendError::Transport("release still pending when the lease went stale".into()),
        )
    };
    let mut backoff = Backoff::new(
        lock.poll_min.min(Duration::from_millis(100)),
        lock.refresh_interval,
    );
    loop {
        if Instant::now() >= give_up_at {
            return Err(gave_up());
        }
        let (version, seq) = {
            let state = lease.state();
            (state.version, state.refresh_seq.saturating_add(1))
        };
        let mut tombstone = lease.record(LockState::Released, seq);
        if completion.is_some() {
            tombstone.completed.clone_from(&completion);
        }
        let tombstone = tombstone.to_metadata();
        let update = lock
            .backend
            .update_metadata(&lock.object, version, &tombstone);
        let Ok(updated) = tokio::time::timeout_at(give_up_at, update).await else {
            return Err(gave_up());
        };
        let error = match updated {
            Ok(_) => {
                tracing::info!(lock = %lock.url, token = lease.record.token, "lock released");
                return Ok(());
            }
            Err(BackendError::PreconditionFailed | BackendError::NotFound) => {
                let Ok(read) = tokio::time::timeout_at(give_up_at, read_back(lease)).await else {
                    return Err(gave_up());
                };
                match read {
                    Ok(ReadBack::Ours(_, record)) if record.state == LockState::Released => {
                        return Ok(()); // an earlier attempt applied unseen
                    }
                    Ok(ReadBack::Ours(current, record)) => {
                        // A refresh applied unseen; release that version instead.
                        let mut state = lease.state();
                        state.version = current;
                        state.refresh_seq = record.refresh_seq;
                        continue;
                    }
                    Ok(ReadBack::Gone(reason)) => {
                        return Err(Error::LeaseLost {
                            lock: lock.url.clone(),
                            reason,
                        })
                    }
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        if !error.is_transient() || Instant::now() >= give_up_at {
            return Err(Error::from_backend(&lock.url, error));
        }
        tokio::time::sleep_until(
            instant_after(Instant::now(), backoff.next_after(Some(&error))).min(give_up_at),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_refreshes_faster_than_the_write_rate_floor() {
        let second = Duration::from_secs(1);
        for _ in 0..1000 {
            // TTL 8 s on GCS: refresh every 1 s, which is the floor itself.
            assert!(jittered(second, 0.5, second) >= second);
            let early = jittered(Duration::from_secs(10), 0.5, second);
            assert!(early >= Duration::from_secs(5) && early <= Duration::from_secs(10));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_keep_alive_task_resolves_lost() {
        let backend = Arc::new(crate::backend::memory::MemoryBackend::new("b"));
        let lock =
            crate::Lock::new(backend, "l", crate::LockOptions::default()).expect("valid lock");
        let mut guard = lock.acquire(crate::Wait::No).await.expect("free");
        let lost = guard.lost();
        let task = guard.keep_alive.take().expect("a keep-alive task");
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        let reason = tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .expect("lost() resolves at once");
        assert!(
            matches!(&reason, LossReason::KeepAliveStopped { why } if why.contains("aborted")),
            "{reason:?}"
        );
        assert!(guard.check().is_err());
    }
}
