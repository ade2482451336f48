//! `run --holders N`: at most N commands hold the URL at once (a semaphore of N
//! places, PROTOCOL.md §13). `--holders 1` is the plain lock, request for request.

use std::sync::Arc;
use std::time::Duration;

use gcslock::backend::Backend;
use gcslock::once_per::{Slot, SlotAcquire};
use gcslock::semaphore::Semaphore;
use gcslock::{Guard, Lock, LockOptions, Wait};
use tokio_util::sync::CancellationToken;

use super::{Acquired, Held};
use crate::exit::{self, Coded};

/// What `run` contends for: the lock at the URL, or one of the N places of a
/// semaphore, whose place 0 is that same lock.
pub struct Contender {
    lock: Lock,
    semaphore: Option<Semaphore>,
}

impl Contender {
    /// Refuses `--once-per` with more than one holder (exit 64): once per period is
    /// a one-holder promise.
    pub fn new(
        backend: Arc<dyn Backend>,
        object: &str,
        options: LockOptions,
        holders: u32,
        once_per: Option<Duration>,
    ) -> anyhow::Result<Self> {
        if holders == 1 {
            return Ok(Self {
                lock: Lock::new(backend, object, options)?,
                semaphore: None,
            });
        }
        if once_per.is_some() {
            return Err(Coded::new(
                exit::USAGE,
                format!(
                    "--once-per cannot be used with --holders {holders}: once per period is a \
                     one-holder promise (use --holders 1, the default)"
                ),
            )
            .into());
        }
        let semaphore = Semaphore::new(backend, object, holders, options)?;
        let lock = semaphore
            .place(0)
            .cloned()
            .ok_or_else(|| Coded::new(exit::INTERNAL, "a semaphore without places"))?;
        Ok(Self {
            lock,
            semaphore: Some(semaphore),
        })
    }

    /// The lock at the URL (place 0): every place has its settings.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Acquires the lock (for `slot`, if given) or a place, as `wait` says.
    pub(super) async fn acquire(
        &self,
        slot: Option<Slot>,
        wait: Wait,
        cancel: &CancellationToken,
    ) -> Result<Acquired, gcslock::Error> {
        Ok(match (&self.semaphore, slot) {
            (Some(semaphore), _) => {
                let permit = semaphore.acquire(wait).cancel_on(cancel).await?;
                Acquired::Held(Held::Plain(permit.into_guard()))
            }
            (None, Some(slot)) => {
                match self
                    .lock
                    .acquire(wait)
                    .once_per(slot)
                    .cancel_on(cancel)
                    .await?
                {
                    SlotAcquire::Acquired(guard) => Acquired::Held(Held::Period(guard)),
                    SlotAcquire::AlreadyDone(done) => Acquired::Done(done),
                }
            }
            (None, None) => Acquired::Held(Held::Plain(
                self.lock.acquire(wait).cancel_on(cancel).await?,
            )),
        })
    }

    /// Which place `guard` holds (0 for the plain lock), for `GCSLOCK_PLACE`.
    pub fn place_of(&self, guard: &Guard) -> u32 {
        gcslock::semaphore::place_of(self.lock.url(), guard.url()).unwrap_or(0)
    }
}
