//! gcslock: a distributed lease lock whose only server is a cloud storage bucket.
//!
//! A lock is one object in a bucket. It is created only if absent, kept alive by
//! conditional metadata updates (every TTL/8 by default), judged stale only by the
//! storage server's own clock, and handed to each new holder with a larger
//! [`FencingToken`]. Work is split into a long, discardable *prepare* phase and a
//! short *commit* that runs only after a final validity check ([`Guard::commit`]).
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use gcslock::{backend::memory::MemoryBackend, Lock, LockOptions, Wait};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gcslock::Error> {
//! // On GCS: Arc::new(gcslock::backend::gcs::GcsBackend::builder("my-bucket").build()?)
//! let bucket = Arc::new(MemoryBackend::new("my-bucket"));
//! let lock = Lock::new(bucket, "jobs/nightly", LockOptions::default().ttl(Duration::from_secs(60)))?;
//!
//! let guard = lock.acquire(Wait::For(Duration::from_secs(30))).await?;
//! let report = tokio::select! {
//!     report = async { "prepared".to_string() } => report,      // long, discardable
//!     reason = guard.lost() => panic!("lease lost: {reason}"),
//! };
//! guard.commit(Duration::from_secs(5), |token| {
//!     // short; pass `token` to the system you write to so it can fence stale holders
//!     assert_eq!(token.value(), 1);
//!     drop(report);
//! })?;
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! The layout, lower modules first: [`backend`] holds the small storage trait and
//! one module per backend; `token`, `identity`, `backoff`, `clock`, `slot`,
//! `record` and `options` are the building blocks (`slot`: once per period, see
//! [`Lock::acquire_slot`]); `status` judges a lock by the server's clock;
//! `lease` is the keep-alive task and validity checks; `lock` the acquire/takeover
//! algorithm, `semaphore` at most N holders made of N lock places, and
//! `break_lock` the forced release. The README states what the lock
//! guarantees and what it cannot.

#![warn(missing_docs)]

pub mod backend;
mod backoff;
mod break_lock;
mod clock;
mod error;
pub mod fence;
mod identity;
mod lease;
mod location;
mod lock;
mod options;
mod record;
mod retry;
mod semaphore;
mod slot;
mod status;
mod token;

pub use break_lock::{BreakOptions, BreakOutcome};
pub use error::{Error, HolderSummary, LossReason};
pub use fence::{BodySource, FenceError, FencedObject};
pub use identity::default_identity;
pub use lease::Guard;
pub use location::{validate_bucket_name, validate_object_name, LockUrl, PrefixUrl};
pub use lock::{Lock, Wait};
pub use options::LockOptions;
pub use record::{LockRecord, LockState, RecordedSlot, Ttl, MAX_HOLDERS};
pub use semaphore::{place_name, place_of, Permit, PlaceStatus, Semaphore};
pub use slot::{CompletedSlot, Slot, SlotAcquire, MAX_PERIOD, MIN_PERIOD};
pub use status::{list_locks, list_locks_within, HeldStatus, LockStatus};
pub use token::FencingToken;

/// The README's Rust examples are compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
