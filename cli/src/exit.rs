//! Exit codes (sysexits.h where one fits) and the mapping from errors to them.

use std::fmt;

/// The one-paragraph summary under every `--help`.
pub const SUMMARY: &str = "\
Exit codes: the command's own (128+N if it died of signal N); 75 busy; 76 lease lost;
64 usage; 65 not a lock; 66 no such bucket; 68 endpoint is not GCS; 69 storage unavailable;
70 internal; 74 I/O error; 77 permission denied; 78 stale fencing token (put);
79 --holders disagrees with a live holder's; 124 --max-runtime passed; 126/127 command not executable/not found. See --help for details.";

/// The table under every long `--help` (and in the man page).
pub const HELP: &str = "\
Exit codes:
  0-255  gcslock run: the command's own exit code; 128+N if it died of signal N
  0      gcslock run --once-per: this period's slot was already completed, so the command
         did not run (--done-exit-code changes it)
  64     usage error: bad arguments, URL, duration or option (EX_USAGE)
  65     the object exists but is not a gcslock lock; it is never overwritten (EX_DATAERR).
         `gcslock put`: the object has no fencing token (see --adopt-unfenced)
  64     also `gcslock break` (without --now) of a lock whose TTL is forever or too long
         to revoke: nothing was broken; break it with --now
  66     the bucket does not exist (EX_NOINPUT); `gcslock cat`: no such object
  68     the endpoint does not answer like Google Cloud Storage (an HTTP server that is not
         GCS or a GCS emulator, e.g. a wrong --endpoint or $STORAGE_EMULATOR_HOST)
  69     storage unreachable or failing until the time allowed ran out (EX_UNAVAILABLE)
  70     internal error in gcslock itself (EX_SOFTWARE)
  74     `gcslock put`/`cat`: I/O error on stdin, the spool file or stdout (EX_IOERR)
  75     the lock is busy: held by someone else after any --wait (EX_TEMPFAIL);
         --busy-exit-code changes it. `gcslock break --token N`: the lock carries
         another token or changed meanwhile; nothing was broken. `gcslock put`:
         concurrent writers kept winning the race (contended)
  76     the lease was lost, or was about to run out unrefreshed, while the command ran;
         the command was stopped (or, if the lease ran out before it could start, e.g.
         gcslock was suspended, not started); processes of the command that survive
         SIGKILL keep the lease refreshed while it lasts; if it is lost before they are
         gone, the lock is not released and expires after its TTL
  77     permission denied by storage, or no credentials (EX_NOPERM)
  78     `gcslock put`: the fencing token is stale: the object was already written with
         a larger one, by a newer holder; nothing was written
  79     `gcslock run --holders N`: a live holder of URL allows another number of holders;
         every contender must give the same N. The command did not run and nothing is
         left held
  124    gcslock run --max-runtime: the command ran too long and was stopped (SIGTERM, then
         SIGKILL after --kill-grace); the lock was released, and the slot of --once-per
         was not recorded (as timeout(1) does)
  126    the command could not be executed (permission denied, not executable)
  127    the command was not found
  128+N  gcslock itself got signal N (INT, TERM, HUP, QUIT) while waiting for the lock;
         no lock is left behind";

/// Bad arguments, URL, duration or option.
pub const USAGE: u8 = 64;
/// The object exists but is not a gcslock lock.
pub const NOT_A_LOCK: u8 = 65;
/// The bucket does not exist.
pub const NO_BUCKET: u8 = 66;
/// The endpoint answers, but not as Google Cloud Storage does (EX_NOHOST: not the
/// storage host gcslock was pointed at).
pub const NOT_STORAGE: u8 = 68;
/// Storage unreachable or failing until the time allowed ran out.
pub const UNAVAILABLE: u8 = 69;
/// A bug or an unexpected failure of the operating system.
pub const INTERNAL: u8 = 70;
/// `gcslock put`/`cat`: reading stdin, spooling it or writing stdout failed (EX_IOERR).
pub const IO_ERROR: u8 = 74;
/// The lock is busy (and, for `break --token`, the lock is not in the expected state).
pub const BUSY: u8 = 75;
/// The lease was lost while the command ran.
pub const LEASE_LOST: u8 = 76;
/// Permission denied by storage, or no credentials.
pub const NO_PERMISSION: u8 = 77;
/// `gcslock put`: the fencing token is stale; a newer lock holder has written the
/// object (sysexits has no such meaning; 78 is the first code after those gcslock uses).
pub const STALE_TOKEN: u8 = 78;
/// `run --holders N` met a live holder that allows another number of holders.
pub const HOLDERS_MISMATCH: u8 = 79;
/// `run --max-runtime` passed and the command was stopped (as `timeout(1)` exits).
pub const TIMED_OUT: u8 = 124;
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
    use gcslock::backend::BackendError;
    use gcslock::Error;
    match error {
        Error::Busy { .. } | Error::Conflict { .. } => BUSY,
        Error::LeaseLost { .. } => LEASE_LOST,
        Error::InvalidInput(_) => USAGE,
        Error::NotALock { .. } => NOT_A_LOCK,
        Error::PermissionDenied { .. } => NO_PERMISSION,
        Error::BucketNotFound { .. } => NO_BUCKET,
        Error::Unavailable {
            cause: BackendError::InvalidResponse(_),
            ..
        } => NOT_STORAGE,
        Error::Unavailable { .. } => UNAVAILABLE,
        Error::HoldersMismatch { .. } => HOLDERS_MISMATCH,
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
        let not_gcs = gcslock::Error::Unavailable {
            lock: "gs://b/o".into(),
            cause: gcslock::backend::BackendError::InvalidResponse("HTML".into()),
        };
        assert_eq!(for_lock_error(&not_gcs), NOT_STORAGE);
    }
}
