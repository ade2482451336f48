//! `gcslock cat`: an object's body to stdout, with the fencing token it was written
//! with on request.

use std::io::{self, Write as _};

use clap::Args;
use futures_util::StreamExt as _;
use gcslock::fence::ObjectUrl;
use tokio::io::AsyncWriteExt as _;

use crate::cmd::fenced::{fence_error, fenced_object, parse_object_url, stdout_error, unwrap_lock};
use crate::global::GlobalArgs;
use crate::output::escape;

pub const LONG_ABOUT: &str = "\
Write the body of gs://BUCKET/OBJECT to stdout, streamed; stdout carries nothing else.

With --show-token, one line `gcslock: gs://BUCKET/OBJECT: token N` (or `...: no fencing token`
for an object not written by a fenced write) goes to stderr before the body. The token and the
body come from the same version of the object.";

pub const HELP: &str = "\
Exit codes: 0 the whole body was written (or stdout was closed early); 66 no such object or
bucket; 74 writing stdout failed; 69 storage unavailable, also when the download broke off
(stdout then holds only part of the body); 77 permission denied; 64 bad URL.";

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The object to read: gs://BUCKET/OBJECT
    #[arg(value_name = "URL", value_parser = parse_object_url)]
    pub url: ObjectUrl,

    /// Also print the token that wrote the object, on stderr:
    /// `gcslock: URL: token N` (or `gcslock: URL: no fencing token`)
    #[arg(long)]
    pub show_token: bool,

    #[command(flatten)]
    pub storage_timeout: crate::cmd::status::StorageTimeout,
}

/// `gcslock cat URL [--show-token]`
pub async fn cat(global: &GlobalArgs, args: &CatArgs) -> anyhow::Result<u8> {
    let object = fenced_object(global, &args.url)?;
    // The budget covers finding the object; the body then streams as long as it flows.
    let read = crate::within(global.storage_budget, async {
        object.read().await.map_err(fence_error)
    })
    .await?;
    if args.show_token {
        let url = escape(&args.url.to_string());
        let line = match read.token {
            Some(token) => format!("gcslock: {url}: token {token}"),
            None => format!("gcslock: {url}: no fencing token"),
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
