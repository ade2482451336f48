//! `gcslock list`: the locks under a prefix, one line (or JSON line) each.

use clap::Args;

use crate::cmd::status::StorageTimeout;
use crate::global::GlobalArgs;
use crate::output::print_lines;
use crate::target::ListTarget;

pub const HELP: &str = "\
--json prints JSON lines: one object per lock, in name order, with the fields of
`gcslock status --json`. Nothing is printed when no object matches. Text output shows
control and bidi characters in object names and holders escaped as \\u{..}.

The places of a semaphore (`run --holders N`), objects named NAME/place-K, end with \"; place K
of the semaphore NAME\" (JSON: \"semaphore\", \"place\"); place 0 is NAME itself.

Exit codes: 0 when the listing succeeded; otherwise as for run.";

#[derive(Debug, Args)]
pub struct ListArgs {
    /// gs://BUCKET or gs://BUCKET/PREFIX
    #[arg(value_name = "URL", value_parser = ListTarget::parse)]
    pub url: ListTarget,

    /// Print JSON lines (one object per lock) instead of text
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub storage_timeout: StorageTimeout,
}

pub async fn list(global: &GlobalArgs, args: &ListArgs) -> anyhow::Result<u8> {
    let backend = args.url.backend(global)?;
    let locks =
        gcslock::admin::list_locks(&*backend, args.url.prefix(), args.storage_timeout.duration)
            .await?;
    let mut lines = Vec::with_capacity(locks.len());
    for (name, status) in &locks {
        let url = args.url.object_url(name);
        lines.push(crate::cmd::places::list_line(
            &url, name, status, args.json,
        )?);
    }
    print_lines(lines)?;
    Ok(0)
}
