//! `put` and `cat`: fenced writes and reads of ordinary objects (`gcslock::fence`),
//! so that a command run under the lock can have the storage itself refuse its
//! writes once a newer holder has written.
//!
//! Wiring (in `cli.rs` and `main.rs`):
//!
//! ```text
//! // cli.rs, enum Command:
//! /// Write stdin to an object, refused if the fencing token is stale
//! #[command(long_about = fence_cmd::PUT_LONG_ABOUT, after_long_help = fence_cmd::PUT_HELP)]
//! Put(fence_cmd::PutArgs),
//! /// Write an object's body to stdout (and, with --show-token, its token to stderr)
//! #[command(long_about = fence_cmd::CAT_LONG_ABOUT, after_long_help = fence_cmd::CAT_HELP)]
//! Cat(fence_cmd::CatArgs),
//! // main.rs, dispatch:
//! Command::Put(args) => fence_cmd::put(&cli.global, &args).await,
//! Command::Cat(args) => fence_cmd::cat(&cli.global, &args).await,
//! ```

use std::io::{self, Write as _};
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt as _;
use gcslock::fence::{BodySource, FenceError, FenceOptions, FencedObject, Replaced};
use gcslock::{FencingToken, LockUrl};
use tokio::io::AsyncWriteExt as _;

use crate::cli::GlobalArgs;
use crate::exit::{self, Coded};

/// Exit code: the fencing token is stale; a newer lock holder has written the object.
/// (sysexits has no such meaning; 78 is the first code after those gcslock uses.)
pub const STALE_TOKEN: u8 = 78;
/// Exit code: reading stdin, spooling it or writing stdout failed (EX_IOERR).
pub const IO_ERROR: u8 = 74;
/// The environment variable `gcslock run` gives its command the token in.
pub const TOKEN_VAR: &str = "GCSLOCK_TOKEN";

pub const PUT_LONG_ABOUT: &str = "\
Write stdin to gs://BUCKET/OBJECT, only if the fencing token is at least the one the object
was last written with.

Run it from a command under `gcslock run`, which sets GCSLOCK_TOKEN: if the holder was paused
(GC, VM migration, SIGSTOP) and its lease passed to a newer holder that has written the object,
the storage refuses the write (exit 78) instead of letting old data overwrite new.

The token is recorded in the object's metadata (gcslock-fence-token). The check and the
upload are pinned to the object's exact version (ifGenerationMatch), so no other write can
come in between; a write that loses a race to an equal or older token is retried a few times,
then reported (exit 75). stdin is first copied to an unnamed temporary file in $TMPDIR (so that
a retry can send it again), then streamed; it is never held in memory whole.

An existing object without a fencing token was written outside fenced writes and is refused
(exit 65) unless --adopt-unfenced is given. Fencing orders writes to this object only: deletes,
other tools' uploads and readers that ignore the metadata are not fenced.";

pub const PUT_HELP: &str = "\
Exit codes: 0 written; 78 stale token (a newer holder wrote the object; nothing was written);
65 the object exists without a fencing token (use --adopt-unfenced) or is a lock object;
75 concurrent writers kept winning the race, nothing was written; 64 no or non-numeric token,
bad URL; 74 reading stdin or the temporary file failed; 66 no such bucket; 69 storage
unavailable; 77 permission denied.";

pub const CAT_LONG_ABOUT: &str = "\
Write the body of gs://BUCKET/OBJECT to stdout, streamed; stdout carries nothing else.

With --show-token, one line `gcslock: gs://BUCKET/OBJECT: token N` (or `...: no fencing token`
for an object not written by a fenced write) goes to stderr before the body. The token and the
body come from the same version of the object.";

pub const CAT_HELP: &str = "\
Exit codes: 0 the whole body was written (or stdout was closed early); 66 no such object or
bucket; 74 writing stdout failed; 69 storage unavailable, also when the download broke off
(stdout then holds only part of the body); 77 permission denied; 64 bad URL.";

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The object to write: gs://BUCKET/OBJECT
    #[arg(value_name = "URL", value_parser = parse_object_url)]
    pub url: LockUrl,

    /// The fencing token to write with. Default: $GCSLOCK_TOKEN, which `gcslock run` sets
    #[arg(long, value_name = "N", value_parser = parse_token)]
    pub token: Option<u64>,

    /// Overwrite an existing object that has no fencing token, treating it as token 0
    #[arg(long)]
    pub adopt_unfenced: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The object to read: gs://BUCKET/OBJECT
    #[arg(value_name = "URL", value_parser = parse_object_url)]
    pub url: LockUrl,

    /// Also print the token that wrote the object, on stderr:
    /// `gcslock: URL: token N` (or `gcslock: URL: no fencing token`)
    #[arg(long)]
    pub show_token: bool,
}

/// `gcslock put URL [--token N] [--adopt-unfenced] < data`
pub async fn put(global: &GlobalArgs, args: &PutArgs) -> anyhow::Result<u8> {
    // Before anything is read from stdin: a usage error must not swallow the data.
    let token = resolve_token(args.token, std::env::var_os(TOKEN_VAR))?;
    let object = fenced_object(global, &args.url)?
        .with_options(FenceOptions::default().adopt_unfenced(args.adopt_unfenced));
    let spool = spool_stdin().await?;
    let written = object
        .write(token, &BodySource::Handle(Arc::new(spool)))
        .await
        .map_err(fence_error)?;
    let replaced = match written.replaced {
        Replaced::Nothing => "created it".to_owned(),
        Replaced::Fenced(previous) => format!("replaced token {previous}"),
        Replaced::Unfenced => "adopted an unfenced object".to_owned(),
    };
    tracing::info!(
        attempts = written.attempts,
        generation = written.info.version.generation,
        "{}: written with token {token} ({replaced})",
        args.url
    );
    Ok(0)
}

/// `gcslock cat URL [--show-token]`
pub async fn cat(global: &GlobalArgs, args: &CatArgs) -> anyhow::Result<u8> {
    let object = fenced_object(global, &args.url)?;
    let read = object.read().await.map_err(fence_error)?;
    if args.show_token {
        let line = match read.token {
            Some(token) => format!("gcslock: {}: token {token}", args.url),
            None => format!("gcslock: {}: no fencing token", args.url),
        };
        // Straight to stderr, whatever the log settings: it was asked for.
        let _ = writeln!(io::stderr().lock(), "{line}");
    }
    let mut body = read.into_stream();
    let mut stdout = tokio::io::stdout();
    let mut written: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            unwrap_lock(error).context(format!(
                "the download of {} broke off after {written} bytes; stdout holds only part \
                 of the body",
                args.url
            ))
        })?;
        if let Err(error) = stdout.write_all(&chunk).await {
            return stdout_error(error);
        }
        written += chunk.len() as u64;
    }
    if let Err(error) = stdout.flush().await {
        return stdout_error(error);
    }
    tracing::debug!("{}: {written} bytes written to stdout", args.url);
    Ok(0)
}

/// `--token` wins; otherwise `$GCSLOCK_TOKEN`; neither is a usage error.
fn resolve_token(
    flag: Option<u64>,
    env: Option<std::ffi::OsString>,
) -> Result<FencingToken, Coded> {
    if let Some(token) = flag {
        return Ok(FencingToken(token));
    }
    let Some(raw) = env.filter(|value| !value.is_empty()) else {
        return Err(Coded::new(
            exit::USAGE,
            format!(
                "no fencing token: pass --token N, or run under `gcslock run`, which sets \
                 {TOKEN_VAR} for its command"
            ),
        ));
    };
    let text = raw.to_string_lossy();
    parse_token(&text)
        .map(FencingToken)
        .map_err(|why| Coded::new(exit::USAGE, format!("{TOKEN_VAR}={text:?}: {why}")))
}

fn parse_token(value: &str) -> Result<u64, String> {
    value.trim().parse().map_err(|_| {
        format!(
            "{value:?} is not a fencing token (expected a whole number such as 42, the \
             {TOKEN_VAR} that `gcslock run` gives its command)"
        )
    })
}

fn parse_object_url(value: &str) -> Result<LockUrl, String> {
    value.parse().map_err(crate::target::message)
}

/// The object on GCS, per `--endpoint` / `STORAGE_EMULATOR_HOST`.
fn fenced_object(global: &GlobalArgs, url: &LockUrl) -> anyhow::Result<FencedObject> {
    let backend = crate::target::gcs_backend(global, url.bucket())?;
    FencedObject::new(Arc::new(backend), url.object()).map_err(fence_error)
}

/// Copies stdin to an unnamed temporary file (gone when gcslock exits, however it
/// exits), so that every attempt can stream it again.
async fn spool_stdin() -> Result<std::fs::File, Coded> {
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
            IO_ERROR,
            format!("cannot copy stdin to a temporary file (in $TMPDIR): {error}"),
        )
    })?;
    tracing::debug!("spooled {copied} bytes of stdin");
    Ok(file)
}

/// The exit code and message for a fenced write or read that failed.
fn fence_error(error: FenceError) -> anyhow::Error {
    let code = match &error {
        FenceError::Stale { .. } => STALE_TOKEN,
        FenceError::Unfenced { .. } => exit::NOT_A_LOCK,
        FenceError::Contended { .. } => exit::BUSY,
        FenceError::NotFound { .. } => exit::NO_BUCKET,
        FenceError::Body { .. } => IO_ERROR,
        // The library's own error carries its code (exit::for_lock_error).
        FenceError::Lock(_) => return unwrap_lock(error),
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
fn unwrap_lock(error: FenceError) -> anyhow::Error {
    match error {
        FenceError::Lock(error) => anyhow::Error::new(error),
        other => fence_error(other),
    }
}

/// A closed stdout (`gcslock cat URL | head -c 10`) ends quietly, as `list` does;
/// any other write failure is an I/O error.
fn stdout_error(error: io::Error) -> anyhow::Result<u8> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        return Ok(0);
    }
    Err(Coded::new(IO_ERROR, format!("cannot write to stdout: {error}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_flag_then_the_environment() {
        assert_eq!(
            resolve_token(Some(3), Some("9".into())).ok(),
            Some(FencingToken(3))
        );
        assert_eq!(
            resolve_token(None, Some(" 9 ".into())).ok(),
            Some(FencingToken(9))
        );
        for env in [None, Some("".into())] {
            let error = resolve_token(None, env).expect_err("missing");
            assert_eq!(error.code, exit::USAGE);
            assert!(error.message.contains("--token"), "{}", error.message);
            assert!(error.message.contains(TOKEN_VAR), "{}", error.message);
        }
        let error = resolve_token(None, Some("abc".into())).expect_err("non-numeric");
        assert_eq!(error.code, exit::USAGE);
        assert!(
            error.message.contains("GCSLOCK_TOKEN=\"abc\""),
            "{}",
            error.message
        );
        assert!(parse_token("-1").is_err());
        assert!(parse_token("1.5").is_err());
    }

    #[test]
    fn fence_errors_map_to_documented_codes() {
        let object = || "gs://b/o".to_owned();
        let code = |error| exit::for_error(&fence_error(error));
        assert_eq!(
            code(FenceError::Stale {
                object: object(),
                seen: 2,
                presented: 1
            }),
            STALE_TOKEN
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
        assert!(!used.contains(&STALE_TOKEN) && !used.contains(&IO_ERROR));
    }
}
