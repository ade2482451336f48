//! `gcslock put`: a fenced write of stdin to an object (`gcslock::fence`), so that a
//! command run under the lock can have the storage itself refuse its writes once a
//! newer holder has written.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use gcslock::fence::ObjectUrl;
use gcslock::fence::{BodySource, FenceOptions, FencedWrite, Replaced};
use gcslock::FencingToken;
use serde::Serialize;

use crate::cmd::fenced::{fence_error, fenced_object, parse_object_url, spool_stdin};
use crate::exit::{self, Coded};
use crate::global::GlobalArgs;
use crate::output::{print_lines, timestamp};

/// The environment variable `gcslock run` gives its command the token in.
pub const TOKEN_VAR: &str = "GCSLOCK_TOKEN";

pub const LONG_ABOUT: &str = "\
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

pub const HELP: &str = "\
Prints nothing on stdout, unless --json: then one object {\"url\", \"outcome\": \"written\",
\"token\", \"replaced\": \"nothing\"|\"fenced\"|\"unfenced\", \"previous_token\" (replaced a fenced
object), \"generation\", \"metageneration\", \"updated\" (RFC 3339), \"attempts\"}; absent fields
are omitted.

--storage-timeout bounds the whole write, the upload included: raise it for large bodies.

Exit codes: 0 written; 78 stale token (a newer holder wrote the object; nothing was written);
65 the object exists without a fencing token (use --adopt-unfenced) or is a lock object;
75 concurrent writers kept winning the race, nothing was written; 64 no or non-numeric token,
bad URL; 74 reading stdin or the temporary file failed; 66 no such bucket; 69 storage
unavailable; 77 permission denied.";

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The object to write: gs://BUCKET/OBJECT
    #[arg(value_name = "URL", value_parser = parse_object_url)]
    pub url: ObjectUrl,

    /// The fencing token to write with. Default: $GCSLOCK_TOKEN, which `gcslock run` sets
    #[arg(long, value_name = "N", value_parser = parse_token)]
    pub token: Option<u64>,

    /// Overwrite an existing object that has no fencing token, treating it as token 0
    #[arg(long)]
    pub adopt_unfenced: bool,

    /// Print one JSON object describing the write on stdout
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub storage_timeout: crate::cmd::status::StorageTimeout,
}

/// `gcslock put URL [--token N] [--adopt-unfenced] < data`
pub async fn put(global: &GlobalArgs, args: &PutArgs) -> anyhow::Result<u8> {
    // Before anything is read from stdin: a usage error must not swallow the data.
    let token = resolve_token(args.token, std::env::var_os(TOKEN_VAR))?;
    let object = fenced_object(global, &args.url)?
        .with_options(FenceOptions::default().adopt_unfenced(args.adopt_unfenced));
    let spool = spool_stdin().await?;
    // The budget covers the whole write, upload included (stdin is read before).
    let written = crate::within(global.storage_budget, async {
        object
            .write(token, &BodySource::Handle(Arc::new(spool)))
            .await
            .map_err(fence_error)
    })
    .await?;
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
    if args.json {
        let url = args.url.to_string();
        let line = serde_json::to_string(&PutView::new(&url, &written))
            .context("cannot encode the outcome as JSON")?;
        print_lines([line])?;
    }
    Ok(0)
}

/// The JSON form of a fenced write (`put --json`).
#[derive(Debug, Serialize)]
struct PutView<'a> {
    url: &'a str,
    outcome: &'static str,
    token: u64,
    replaced: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_token: Option<u64>,
    generation: i64,
    metageneration: i64,
    updated: String,
    attempts: u32,
}

impl<'a> PutView<'a> {
    fn new(url: &'a str, written: &FencedWrite) -> Self {
        let (replaced, previous_token) = match written.replaced {
            Replaced::Nothing => ("nothing", None),
            Replaced::Fenced(previous) => ("fenced", Some(previous.value())),
            Replaced::Unfenced => ("unfenced", None),
        };
        Self {
            url,
            outcome: "written",
            token: written.token.value(),
            replaced,
            previous_token,
            generation: written.info.version.generation,
            metageneration: written.info.version.metageneration,
            updated: timestamp(&written.info.updated),
            attempts: written.attempts,
        }
    }
}

/// `--token` wins; otherwise `$GCSLOCK_TOKEN`; neither is a usage error.
fn resolve_token(
    flag: Option<u64>,
    env: Option<std::ffi::OsString>,
) -> Result<FencingToken, Coded> {
    if let Some(token) = flag {
        return Ok(FencingToken::new(token));
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
        .map(FencingToken::new)
        .map_err(|why| Coded::new(exit::USAGE, format!("{TOKEN_VAR}={text:?}: {why}")))
}

pub(crate) fn parse_token(value: &str) -> Result<u64, String> {
    value
        .parse::<FencingToken>()
        .map(FencingToken::value)
        .map_err(|_| {
            format!(
                "{value:?} is not a fencing token (expected a whole number such as 42, the \
             {TOKEN_VAR} that `gcslock run` gives its command)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_flag_then_the_environment() {
        assert_eq!(
            resolve_token(Some(3), Some("9".into())).ok(),
            Some(FencingToken::new(3))
        );
        assert_eq!(
            resolve_token(None, Some("9".into())).ok(),
            Some(FencingToken::new(9))
        );
        // The one token form, as `gcslock run` writes it: no spaces, no sign.
        assert!(resolve_token(None, Some(" 9 ".into())).is_err());
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
        for bad in ["-1", "1.5", "+1", " 1", "1 ", "01"] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
    }
}
