//! gcslock: a distributed lease lock whose only server is a cloud storage bucket.
//!
//! See the README for the protocol, its guarantees and its limits.

pub mod backend;
mod error;
mod lease;
mod location;
mod lock;
mod record;

pub use error::{Error, HolderSummary, LossReason};
pub use lease::Guard;
pub use location::{validate_bucket_name, validate_object_name, LockUrl, PrefixUrl};
pub use lock::{
    default_identity, list_locks, BreakOutcome, FencingToken, HeldStatus, Lock, LockOptions,
    LockStatus, Wait,
};
pub use record::{LockRecord, LockState};
