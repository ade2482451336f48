//! Exit codes (sysexits.h where one fits) and the mapping from errors to them.

use std::fmt;

/// Bad arguments, URL, duration or option.
pub const USAGE: u8 = 64;
/// The object exists but is not a gcslock lock.
pub const NOT_A_LOCK: u8 = 65;
/// The bucket does not exist.
pub const NO_BUCKET: u8 = 66;
/// Storage unreachable or failing until the time allowed ran out.
pub const UNAVAILABLE: u8 = 69;
/// A bug or an unexpected failure of the operating system.
pub const INTERNAL: u8 = 70;
/// The lock is busy (and, for `break --token`, the lock is not in the expected state).
pub const BUSY: u8 = 75;
/// The lease was lost while the command ran.
pub const LEASE_LOST: u8 = 76;
/// Permission denied by storage, or no credentials.
pub const NO_PERMISSION: u8 = 77;
/// The command could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// 128 + N for signal N, as shells report a death by signal.
pub fn signal(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// An error that carries its own exit code, for failures not described by
/// `gcslock::Error`.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl Coded {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// The exit code for a library error.
pub fn for_lock_error(error: &gcslock::Error) -> u8 {
    use gcslock::Error;
    match error {
        Error::Busy { .. } | Error::Conflict { .. } => BUSY,
        Error::LeaseLost { .. } => LEASE_LOST,
        Error::InvalidInput(_) => USAGE,
        Error::NotALock { .. } => NOT_A_LOCK,
        Error::PermissionDenied { .. } => NO_PERMISSION,
        Error::BucketNotFound { .. } => NO_BUCKET,
        Error::Unavailable { .. } => UNAVAILABLE,
        // `Cancelled` is handled where the signal is known; `InsufficientTime` is not
        // used by the binary.
        _ => INTERNAL,
    }
}

/// The exit code for any error the binary reports: the first `Coded` or library
/// error found in its chain decides.
pub fn for_error(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.code;
        }
        if let Some(lock_error) = cause.downcast_ref::<gcslock::Error>() {
            return for_lock_error(lock_error);
        }
    }
    INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_chain() {
        let error = anyhow::Error::new(gcslock::Error::BucketNotFound {
            lock: "gs://b/o".into(),
        })
        .context("reading status");
        assert_eq!(for_error(&error), NO_BUCKET);
        let error = anyhow::Error::new(Coded::new(NOT_FOUND, "nope")).context("running");
        assert_eq!(for_error(&error), NOT_FOUND);
        assert_eq!(for_error(&anyhow::anyhow!("other")), INTERNAL);
        assert_eq!(signal(15), 143);
    }
}
