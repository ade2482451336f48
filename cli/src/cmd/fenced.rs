//! What `put` and `cat` share: the fenced object named by a URL, stdin spooling,
//! and the exit codes of `gcslock::fence`'s errors.

use std::io::{self, Write as _};
use std::sync::Arc;

use gcslock::fence::ObjectUrl;
use gcslock::fence::{FenceError, FencedObject};

use crate::exit::{self, Coded};
use crate::global::GlobalArgs;

pub fn parse_object_url(value: &str) -> Result<ObjectUrl, String> {
    value.parse().map_err(crate::target::message)
}

/// The object on GCS, per `--endpoint` / `STORAGE_EMULATOR_HOST`.
pub fn fenced_object(global: &GlobalArgs, url: &ObjectUrl) -> anyhow::Result<FencedObject> {
    let backend = crate::target::gcs_backend(global, url.bucket())?;
    FencedObject::new(Arc::new(backend), url.object()).map_err(fence_error)
}

/// Copies stdin to an unnamed temporary file (gone when gcslock exits, however it
/// exits), so that every attempt can stream it again.
pub async fn spool_stdin() -> Result<std::fs::File, Coded> {
    let spooled = tokio::task::spawn_blocking(|| -> io::Result<(std::fs::File, u64)> {
        let mut file = tempfile::tempfile()?;
        let copied = io::copy(&mut io::stdin().lock(), &mut file)?;
        file.flush()?;
        Ok((file, copied))
    })
    .await
    .map_err(|error| Coded::new(exit::INTERNAL, format!("spooling stdin: {error}")))?;
    let (file, copied) = spooled.map_err(|error| {
        Coded::new(
            exit::IO_ERROR,
            format!("cannot copy stdin to a temporary file (in $TMPDIR): {error}"),
        )
    })?;
    tracing::debug!("spooled {copied} bytes of stdin");
    Ok(file)
}

/// The exit code and message for a fenced write or read that failed.
pub fn fence_error(error: FenceError) -> anyhow::Error {
    let code = match &error {
        FenceError::Stale { .. } => exit::STALE_TOKEN,
        FenceError::Unfenced { .. } => exit::NOT_A_LOCK,
        FenceError::Contended { .. } => exit::BUSY,
        FenceError::NotFound { .. } => exit::NO_BUCKET,
        FenceError::Body { .. } => exit::IO_ERROR,
        // The library's own error carries its code (exit::for_lock_error).
        FenceError::Lock(_) => return unwrap_lock(error),
        // FenceError is non_exhaustive: a kind added later is a bug until mapped.
        _ => exit::INTERNAL,
    };
    let message = match &error {
        FenceError::Unfenced { .. } => format!(
            "{error}; pass --adopt-unfenced to overwrite it anyway (as token 0) if it \
             holds nothing that must be kept"
        ),
        _ => error.to_string(),
    };
    Coded::new(code, message).into()
}

/// The library error inside, so that its exit code applies.
pub fn unwrap_lock(error: FenceError) -> anyhow::Error {
    match error {
        FenceError::Lock(error) => anyhow::Error::new(error),
        other => fence_error(other),
    }
}

/// A closed stdout (`gcslock cat URL | head -c 10`) ends quietly, as `list` does;
/// any other write failure is an I/O error.
pub fn stdout_error(error: io::Error) -> anyhow::Result<u8> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        return Ok(0);
    }
    Err(Coded::new(exit::IO_ERROR, format!("cannot write to stdout: {error}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_errors_map_to_documented_codes() {
        let object = || "gs://b/o".to_owned();
        let code = |error| exit::for_error(&fence_error(error));
        assert_eq!(
            code(FenceError::Stale {
                object: object(),
                seen: gcslock::FencingToken::new(2),
                presented: gcslock::FencingToken::new(1)
            }),
            exit::STALE_TOKEN
        );
        assert_eq!(
            code(FenceError::Unfenced {
                object: object(),
                why: "x".into()
            }),
            exit::NOT_A_LOCK
        );
        assert_eq!(
            code(FenceError::Contended {
                object: object(),
                attempts: 5
            }),
            exit::BUSY
        );
        assert_eq!(
            code(FenceError::NotFound { object: object() }),
            exit::NO_BUCKET
        );
        assert_eq!(
            code(FenceError::Lock(gcslock::Error::BucketNotFound {
                lock: object()
            })),
            exit::NO_BUCKET
        );
        let used = [64, 65, 66, 69, 70, 75, 76, 77, 126, 127];
        assert!(!used.contains(&exit::STALE_TOKEN) && !used.contains(&exit::IO_ERROR));
    }
}
