//! `gcslock break`: a forced release, conditional on the fencing token when given.

use std::sync::Arc;

use clap::Args;
use gcslock::backend::Backend;
use gcslock::{BreakOutcome, FencingToken, Lock, LockOptions};

use crate::global::GlobalArgs;
use crate::output::print_lines;
use crate::target::LockTarget;

pub const HELP: &str = "\
The lock is marked released (not deleted), so fencing tokens keep growing. With --token N
it is broken only if it still carries token N. Prints what was broken, on stdout.

Exit codes: 0 broken or already free; 75 not broken because the lock carries another
token or changed meanwhile; 65 not a gcslock lock; otherwise as for run.";

#[derive(Debug, Args)]
pub struct BreakArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Break it only if it still carries this fencing token
    #[arg(long, value_name = "N")]
    pub token: Option<u64>,

    /// Who is breaking it, recorded in the lock. Default: HOST:PID
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
}

pub async fn break_lock(global: &GlobalArgs, args: &BreakArgs) -> anyhow::Result<u8> {
    let backend: Arc<dyn Backend> = args.url.backend(global)?;
    let mut options = LockOptions::default();
    if let Some(identity) = &args.identity {
        options = options.identity(identity.clone());
    }
    let lock = Lock::new(backend, args.url.object(), options)?;
    let line = match lock.break_lock(args.token.map(FencingToken::new)).await {
        Ok(BreakOutcome::Broken {
            previous_holder,
            token,
        }) => format!(
            "{}: broken (it was held by {previous_holder}, token {token})",
            args.url
        ),
        Ok(BreakOutcome::AlreadyFree) => format!("{}: already free; nothing to break", args.url),
        Ok(_) => format!("{}: break finished", args.url),
        Err(error) => return Err(error.into()),
    };
    print_lines([line])?;
    Ok(0)
}
