//! gcslock: a distributed lease lock whose only server is a cloud storage bucket.
//!
//! A lock is one object in a bucket. It is created only if absent, kept alive by
//! conditional metadata updates (every TTL/8 by default), judged stale only by the
//! storage server's own clock, and handed to each new holder with a larger
//! [`FencingToken`]. Work is split into a long, discardable *prepare* phase and a
//! short *commit* that runs only after a final validity check ([`Guard::commit`]).
//!
//! # Getting started
//!
//! ```toml
//! [dependencies]
//! gcslock = { git = "<this repository>" }   # gs:// (GCS) and memory://
//! # gcslock = { git = "<this repository>", features = ["object-store"] }   # also s3:// and az://
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! Open the bucket from a lock URL with [`backend::open`]: `gs://BUCKET/OBJECT`
//! (GCS, Application Default Credentials; `STORAGE_EMULATOR_HOST` for an emulator),
//! `s3://` and `az://` (feature `object-store`, configured by the usual `AWS_*` and
//! `AZURE_*` variables), or `memory://NAME/OBJECT` (in this process, for tests).
//!
//! ```
//! use std::time::Duration;
//! use gcslock::backend::{open, OpenOptions};
//! use gcslock::{Lock, LockOptions, Wait};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> gcslock::Result<()> {
//! // "gs://my-bucket/jobs/nightly" in production; nothing is sent until acquire.
//! let (bucket, object) = open("memory://my-bucket/jobs/nightly", &OpenOptions::default())?;
//! let lock = Lock::new(bucket, &object, LockOptions::default().ttl(Duration::from_secs(60)))?;
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
//! [`once_per`]); `status` judges a lock by the server's clock;
//! `lease` is the keep-alive task and validity checks; `lock` the acquire/takeover
//! algorithm, [`election`] leader election on a lock, [`semaphore`] at most N
//! holders made of N lock places, and `break_lock` the forced release ([`admin`]
//! gathers status, listing and break). What the lock guarantees and what it cannot
//! is in docs/guarantees.md; PROTOCOL.md specifies every request.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(rustdoc::broken_intra_doc_links)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod backend;
mod backoff;
mod break_lock;
mod clock;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
#[doc(hidden)] // shared with gcslock-cli, which prints durations the same way; no API
pub mod duration_text;
pub mod election;
mod error;
pub mod fence;
mod identity;
mod lease;
mod location;
mod lock;
mod options;
mod record;
mod retry;
pub mod semaphore;
mod slot;
mod status;
mod token;

pub use error::{Error, HolderSummary, LossReason, Result};
pub use lease::Guard;
pub use lock::{Acquire, Lock, Wait};
pub use options::LockOptions;
pub use record::Ttl;
pub use token::FencingToken;
// For the modules that check names before any request.
pub(crate) use location::{validate_bucket_name, validate_object_name};

/// Once per period (`gcslock run --once-per`): acquire the lock for a period
/// ([`Acquire::once_per`]) unless a run already completed it, and record the
/// period as completed in the release that follows a successful run.
pub mod once_per {
    pub use crate::lease::PeriodGuard;
    pub use crate::lock::AcquirePeriod;
    pub use crate::slot::{CompletedSlot, Slot, SlotAcquire, SlotZone, MAX_PERIOD, MIN_PERIOD};
}

/// What operators do: a lock's status ([`Lock::status`]), every lock under a
/// prefix ([`admin::list_locks`]), and breaking a lock ([`Lock::break_lock`]).
pub mod admin {
    pub use crate::break_lock::{BreakOptions, BreakOutcome};
    pub use crate::status::{list_locks, HeldStatus, LockStatus};
}

/// The lock object's wire format (PROTOCOL.md), for tests and tools that write or
/// inspect lock objects directly. Not needed to use a lock.
pub mod testing {
    pub use crate::record::{LockRecord, LockState, RecordedSlot};
}

// The Rust examples of the README and of the `docs/` pages are compiled as doctests so
// they cannot rot: a page with Rust code gets a struct here.

/// The README.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/semaphore.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/semaphore.md")]
pub struct SemaphoreDoctests;

/// docs/once-per.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/once-per.md")]
pub struct OncePerDoctests;

/// docs/election.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/election.md")]
pub struct ElectionDoctests;
