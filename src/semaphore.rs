//! At most N holders at once: a counting semaphore made of N places, each an
//! ordinary lock object (PROTOCOL.md §13).
//!
//! Place 0 is the object `NAME` itself, place k (1 ≤ k < N) the object
//! `NAME/place-k`, so a semaphore of one place is exactly the plain lock `NAME`.
//! Each place has a lock's guarantees (lease, keep-alive, loss notification,
//! fencing tokens of its own) because it *is* a lock: the acquire round below only
//! replaces a lock's inspecting read by one prefix listing that shows every place,
//! then hands each place's listing entry to the lock's own round
//! (`Lock::attempt_inspected`), which writes only to a free or stale place.
//!
//! Every place write records the limit N (`gcslock-holders`); a contender that
//! meets a live holder recording another limit is refused
//! ([`Error::HoldersMismatch`]), before its write and again after it (a second
//! listing), so two contenders that disagree never both keep a place.

use std::ops::Deref;
use std::sync::Arc;

use rand::Rng as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, ObjectInfo, Stamped};
use crate::error::{Error, HolderSummary};
use crate::lease::Guard;
use crate::lock::{detached, Attempt, Failure, Inspections, Lock, Round, Wait};
use crate::options::LockOptions;
pub use crate::record::MAX_HOLDERS;
use crate::record::{recorded_holders, LockRecord, LockState};
use crate::retry::Retry;
use crate::status::LockStatus;

/// What separates a semaphore's name from a place number in a place's object name.
const PLACE_INFIX: &str = "/place-";

/// At most `limit` holders of one name at once, across every machine.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use gcslock::semaphore::Semaphore;
/// use gcslock::{backend::memory::MemoryBackend, LockOptions, Wait};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), gcslock::Error> {
/// let bucket = Arc::new(MemoryBackend::new("my-bucket"));
/// let backups = Semaphore::new(bucket, "db-backups", 3, LockOptions::default())?;
/// let first = backups.acquire(Wait::No).await?;
/// let second = backups.acquire(Wait::No).await?;
/// let third = backups.acquire(Wait::No).await?;
/// assert!(matches!(backups.acquire(Wait::No).await, Err(gcslock::Error::Busy { .. })));
/// // Each holder has a place of its own, and that place's fencing token.
/// assert_ne!(first.place(), second.place());
/// assert_eq!(third.token().value(), 1);
/// first.release().await?;
/// let fourth = backups.acquire(Wait::For(Duration::from_secs(5))).await?;
/// # drop((second, third, fourth));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    places: Arc<[Lock]>,
    backend: Arc<dyn Backend>,
    name: String,
}

/// A held place of a [`Semaphore`]: a [`Guard`] (it dereferences to one: `lost()`,
/// `commit`, `token()`, `check()`) and which place it is.
#[derive(Debug)]
#[must_use = "a permit holds a place until released or dropped"]
pub struct Permit {
    guard: Guard,
    place: u32,
    limit: u32,
}

impl Permit {
    /// Which place this holder has, from 0 to the limit minus 1. Fencing tokens
    /// grow per place.
    pub fn place(&self) -> u32 {
        self.place
    }

    /// The semaphore's holder limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Releases the place, as [`Guard::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }

    /// The lease of the place, to keep or release as any lock's.
    pub fn into_guard(self) -> Guard {
        self.guard
    }
}

impl Deref for Permit {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        &self.guard
    }
}

/// One place as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlaceStatus {
    /// The place number.
    pub place: u32,
    /// Its object name.
    pub object: String,
    /// Its lock status, judged by the server's clock of the listing page.
    pub status: LockStatus,
    /// The holder limit its record carries (1 when it carries none).
    pub recorded_limit: Option<u32>,
}

impl Semaphore {
    /// At most `limit` holders (1 to 1000) of `name` in `backend`'s bucket, each
    /// place a lock with `options`. Validates without sending any request. A limit
    /// of 1 is the plain lock `name`, request for request.
    pub fn new(
        backend: Arc<dyn Backend>,
        name: &str,
        limit: u32,
        options: LockOptions,
    ) -> Result<Self, Error> {
        if !(1..=MAX_HOLDERS).contains(&limit) {
            return Err(Error::InvalidInput(format!(
                "the holder limit must be from 1 to {MAX_HOLDERS}, not {limit}"
            )));
        }
        let recorded = (limit > 1).then_some(limit);
        let places = (0..limit)
            .map(|place| {
                Lock::place(
                    Arc::clone(&backend),
                    &place_name(name, place),
                    options.clone(),
                    recorded,
                )
            })
            .collect::<Result<Arc<[Lock]>, Error>>()?;
        Ok(Self {
            places,
            backend,
            name: name.to_owned(),
        })
    }

    /// How many holders at once.
    pub fn limit(&self) -> u32 {
        // At most MAX_HOLDERS places, checked in `new`.
        u32::try_from(self.places.len()).unwrap_or(MAX_HOLDERS)
    }

    /// Where place 0 (the object `NAME`) lives, for messages.
    pub fn url(&self) -> &str {
        self.first().url()
    }

    /// The lock of place `place`, for its status or a break.
    pub fn place(&self, place: u32) -> Option<&Lock> {
        self.places.get(usize::try_from(place).ok()?)
    }

    fn first(&self) -> &Lock {
        // `new` makes at least one place.
        &self.places[0]
    }

    /// Acquires a free or stale place, waiting as `wait` says; `Error::Busy` when
    /// every place stays held by a live holder: `semaphore.acquire(Wait::No).await`.
    /// A cancellation token goes on the returned [`AcquirePermit`] before `.await`
    /// ([`AcquirePermit::cancel_on`]).
    ///
    /// **Cancel safety**, as for [`Lock::acquire`]: cancelled or dropped, the
    /// acquire leaves no place held. It runs in a task of its own, which resolves a
    /// create already sent (read back by nonce) and releases a place it acquired
    /// after all; only if the runtime shuts down first may that place stay held
    /// until its TTL passes.
    pub fn acquire(&self, wait: Wait) -> AcquirePermit {
        AcquirePermit {
            semaphore: self.clone(),
            wait,
            cancel: None,
        }
    }

    /// The acquire loop (in the task [`AcquirePermit`] runs it in).
    async fn acquire_for(&self, wait: Wait, cancel: &CancellationToken) -> Result<Permit, Error> {
        if self.places.len() == 1 {
            let guard = self.first().acquire_cancellable(wait, cancel).await?;
            return Ok(Permit {
                guard,
                place: 0,
                limit: 1,
            });
        }
        let mut round = SemaphoreRound {
            semaphore: self,
            inspections: self.places.iter().map(|_| Inspections::default()).collect(),
        };
        match self
            .first()
            .acquire_rounds(wait, cancel, &mut round)
            .await?
        {
            Ok(permit) => Ok(permit),
            // No slot was asked for, so no round reports one done.
            Err(done) => Err(Error::Conflict {
                lock: self.url().to_owned(),
                why: done.to_string(),
            }),
        }
    }

    /// Every place, judged by the server's clock (one listing, transient failures
    /// retried within the first place's `unavailable_timeout`): places 0 to the
    /// limit minus 1 (absent ones `Free`), then any place beyond the limit that
    /// exists (left by contenders with a larger limit).
    pub async fn status(&self) -> Result<Vec<PlaceStatus>, Error> {
        let settings = self.first().settings();
        let listing = Retry::new(settings.unavailable_timeout)
            .run(|| self.backend.list(&self.name))
            .await
            .map_err(|error| Error::from_backend(&settings.url, error))?;
        let listed = places_in(&self.name, &listing);
        let mut places: Vec<PlaceStatus> = (0..self.limit())
            .map(|place| PlaceStatus {
                place,
                object: place_name(&self.name, place),
                status: LockStatus::Free,
                recorded_limit: None,
            })
            .collect();
        for (place, entry) in listed {
            let status = PlaceStatus {
                place,
                object: entry.value.name.clone(),
                status: LockStatus::judge(Some(&entry.value), entry.server_time),
                recorded_limit: recorded_holders(&entry.value.metadata).ok(),
            };
            match places.get_mut(usize::try_from(place).unwrap_or(usize::MAX)) {
                Some(slot) => *slot = status,
                None => places.push(status),
            }
        }
        Ok(places)
    }
}

/// A semaphore acquire being set up: returned by [`Semaphore::acquire`], run by
/// `.await` (see there for its cancel safety).
#[derive(Debug)]
#[must_use = "an acquire does nothing until it is awaited"]
pub struct AcquirePermit {
    semaphore: Semaphore,
    wait: Wait,
    cancel: Option<CancellationToken>,
}

impl AcquirePermit {
    /// Stops waiting when `cancel` fires, with `Error::Cancelled`; no place is
    /// left held (a create of ours whose answer was lost is resolved first, and
    /// released if it applied).
    pub fn cancel_on(mut self, cancel: &CancellationToken) -> Self {
        self.cancel = Some(cancel.clone());
        self
    }
}

impl std::future::IntoFuture for AcquirePermit {
    type Output = Result<Permit, Error>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Result<Permit, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        let Self {
            semaphore,
            wait,
            cancel,
        } = self;
        Box::pin(async move {
            let url = semaphore.url().to_owned();
            detached(url, cancel.as_ref(), move |cancel| async move {
                semaphore.acquire_for(wait, &cancel).await
            })
            .await
        })
    }
}

/// The object name of place `place` of the semaphore `name`.
pub fn place_name(name: &str, place: u32) -> String {
    if place == 0 {
        name.to_owned()
    } else {
        format!("{name}{PLACE_INFIX}{place}")
    }
}

/// The place number `object` is of the semaphore `name`, if it is one: `name`
/// itself is place 0, `name/place-K` place K (canonical decimal, 1 to the limit's
/// maximum).
pub fn place_of(name: &str, object: &str) -> Option<u32> {
    let rest = object.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(PLACE_INFIX)?;
    let canonical = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && !digits.starts_with('0');
    let place: u32 = digits.parse().ok().filter(|_| canonical)?;
    (place < MAX_HOLDERS).then_some(place)
}

/// The places among a listing of the prefix `name`, with their entries.
fn places_in<'a>(
    name: &str,
    listing: &'a [Stamped<ObjectInfo>],
) -> impl Iterator<Item = (u32, &'a Stamped<ObjectInfo>)> {
    let name = name.to_owned();
    listing
        .iter()
        .filter_map(move |entry| Some((place_of(&name, &entry.value.name)?, entry)))
}

/// A semaphore's round: one listing, then each place's lock round on what the
/// listing showed of it, from a random place on, until one place is won. A place
/// held by a live holder costs no request, so waiters write nothing while every
/// place is held.
struct SemaphoreRound<'a> {
    semaphore: &'a Semaphore,
    /// One per place, kept across rounds: each place's local staleness clock and
    /// its creates of unknown outcome (adopted if a later listing shows them).
    inspections: Vec<Inspections>,
}

impl Round for SemaphoreRound<'_> {
    type Won = Permit;

    async fn attempt(&mut self, cancel: &CancellationToken) -> Result<Attempt<Permit>, Failure> {
        let semaphore = self.semaphore;
        let listing = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            listing = semaphore.backend.list(&semaphore.name) => listing.map_err(|error| semaphore.classify(error))?,
        };
        let received = Instant::now();
        semaphore.check_agreement(&listing, None)?;
        let limit = semaphore.places.len();
        let mut entries: Vec<Option<&Stamped<ObjectInfo>>> = vec![None; limit];
        for (place, entry) in places_in(&semaphore.name, &listing) {
            if let Some(slot) = entries.get_mut(usize::try_from(place).unwrap_or(usize::MAX)) {
                *slot = Some(entry);
            }
        }
        // An absent place is judged by the listing's clock like the others (its
        // write is a create, which needs no clock).
        let server_time = listing.first().and_then(|entry| entry.server_time);
        let first = rand::rng().random_range(0..limit);
        let mut busy: Option<(usize, HolderSummary)> = None;
        for offset in 0..limit {
            let index = (first + offset) % limit;
            let read = match entries[index] {
                Some(entry) => Stamped {
                    value: Some(entry.value.clone()),
                    server_time: entry.server_time,
                },
                None => Stamped {
                    value: None,
                    server_time,
                },
            };
            let attempt = semaphore.places[index]
                .attempt_inspected(read, received, &mut self.inspections[index], cancel, None)
                .await?;
            match attempt {
                Attempt::Acquired(guard) => {
                    let place = u32::try_from(index).unwrap_or(u32::MAX);
                    return semaphore.confirm(guard, place).await;
                }
                Attempt::Busy { holder, retry_in } => {
                    // Report the holder that may turn stale first.
                    let sooner = match &busy {
                        Some((_, known)) => match (retry_in, known.expires_in) {
                            (Some(new), Some(old)) => new < old,
                            (Some(_), None) => true,
                            _ => false,
                        },
                        None => true,
                    };
                    if sooner {
                        busy = Some((index, holder));
                    }
                }
                Attempt::Expired => return Ok(Attempt::Expired),
                Attempt::Done(done) => return Ok(Attempt::Done(done)),
            }
        }
        let (index, holder) = busy.unwrap_or_else(|| {
            (
                0,
                HolderSummary {
                    identity: "nobody".into(),
                    token: crate::token::FencingToken::new(0),
                    expires_in: None,
                },
            )
        });
        let retry_in = holder.expires_in;
        Ok(Attempt::Busy {
            holder: HolderSummary {
                identity: format!(
                    "{} at place {index} and every other of the {limit} places",
                    holder.identity
                ),
                ..holder
            },
            retry_in,
        })
    }

    async fn settle(&mut self, keep: bool) -> Option<Permit> {
        let semaphore = self.semaphore;
        let mut kept = None;
        for (index, inspections) in self.inspections.iter_mut().enumerate() {
            let want = keep && kept.is_none();
            let Some(guard) = semaphore.places[index].settle(inspections, want).await else {
                continue;
            };
            let place = u32::try_from(index).unwrap_or(u32::MAX);
            if let Ok(Attempt::Acquired(permit)) = semaphore.confirm(guard, place).await {
                kept = Some(permit);
            }
        }
        kept
    }
}

impl Semaphore {
    /// Refuses if a live holder of any place (whatever its number) records another
    /// limit than ours. `ours`: the place we hold, which is not compared.
    fn check_agreement(
        &self,
        listing: &[Stamped<ObjectInfo>],
        ours: Option<u32>,
    ) -> Result<(), Failure> {
        let limit = self.limit();
        for (place, entry) in places_in(&self.name, listing) {
            if Some(place) == ours {
                continue;
            }
            let Ok(record) = LockRecord::from_metadata(&entry.value.metadata) else {
                continue; // judged (and refused) by its own lock round if it is ours to use
            };
            let live = record.state == LockState::Held
                && matches!(
                    LockStatus::judge(Some(&entry.value), entry.server_time),
                    LockStatus::Held(_)
                );
            if !live {
                continue;
            }
            // An unreadable limit (0 here) is no agreement.
            let theirs = recorded_holders(&entry.value.metadata).unwrap_or_default();
            if theirs != limit {
                return Err(Failure::Fatal(Error::HoldersMismatch {
                    lock: self.url().to_owned(),
                    ours: limit,
                    theirs,
                    holder: format!(
                        "{} (token {}) at place {place}",
                        record.holder, record.token
                    ),
                }));
            }
        }
        Ok(())
    }

    /// After winning `place`: one more listing, so that of two contenders that
    /// disagree on the limit and listed before either wrote, the later to list sees
    /// the other and gives its place back before its holder starts any work.
    async fn confirm(&self, guard: Guard, place: u32) -> Result<Attempt<Permit>, Failure> {
        let checked = match self.backend.list(&self.name).await {
            Ok(listing) => self.check_agreement(&listing, Some(place)),
            Err(error) => Err(self.classify(error)),
        };
        match checked {
            Ok(()) => Ok(Attempt::Acquired(Permit {
                guard,
                place,
                limit: self.limit(),
            })),
            Err(failure) => {
                // Conditional on our version: a place already taken over stays so.
                if let Err(error) = guard.release().await {
                    tracing::debug!(lock = %self.url(), %error, "giving back a place");
                }
                Err(failure)
            }
        }
    }

    fn classify(&self, error: BackendError) -> Failure {
        if error.is_transient() {
            Failure::Transient(error)
        } else {
            Failure::Fatal(Error::from_backend(self.url(), error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_names_round_trip_and_strangers_are_no_places() {
        for place in [0, 1, 9, 10, 999] {
            assert_eq!(
                place_of("jobs/b", &place_name("jobs/b", place)),
                Some(place)
            );
        }
        for stranger in [
            "jobs/bx",
            "jobs/b/",
            "jobs/b/place-",
            "jobs/b/place-0",
            "jobs/b/place-01",
            "jobs/b/place-1000",
            "jobs/b/place-+1",
            "jobs/b/place-1/x",
            "jobs/b/other",
            "jobs",
        ] {
            assert_eq!(place_of("jobs/b", stranger), None, "{stranger}");
        }
    }
}
