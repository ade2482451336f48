//! `gcslock`: run a command under a distributed lease lock held in a GCS bucket,
//! and inspect or break such locks. A thin layer over the `gcslock` library: all
//! lock logic lives there.

mod cli;
mod cmd;
mod exit;
mod global;
mod logging;
mod output;
mod parse;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

/// The longest one storage request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(error) => return ExitCode::from(usage_error(&error)),
    };
    logging::init(&cli.global);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{}", describe_error(&error));
            exit::for_error(&error)
        }
    };
    // Do not wait for background tasks (signal listeners, a dropped guard's cleanup).
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// The parsed command line; also refuses -q with -v (see `quiet_and_verbose_conflict`).
fn parse_command_line() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let mut matches = command.try_get_matches_from_mut(std::env::args_os())?;
    if global::quiet_and_verbose_conflict(&matches) {
        return Err(command.error(
            ErrorKind::ArgumentConflict,
            "the argument '--quiet' cannot be used with '--verbose'",
        ));
    }
    Cli::from_arg_matches_mut(&mut matches)
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => cmd::run::run(&cli.global, args).await,
        Command::Elect(args) => cmd::elect::elect(&cli.global, args).await,
        Command::Observe(args) => cmd::observe::observe(&cli.global, &args).await,
        Command::Status(args) => cmd::status::status(&cli.global, &args).await,
        Command::List(args) => cmd::list::list(&cli.global, &args).await,
        Command::Break(args) => cmd::break_lock::break_lock(&cli.global, &args).await,
        Command::Put(args) => cmd::put::put(&cli.global, &args).await,
        Command::Cat(args) => cmd::cat::cat(&cli.global, &args).await,
        // Blocks on stdin; nothing else runs in this process.
        Command::Watchdog(_) => Ok(cmd::run::watchdog::watchdog()),
        Command::Generate(args) => cmd::generate::generate(&args),
    }
}

/// The error and its causes on one line, skipping a cause whose text the message
/// already contains (the library's errors include their source in their message).
fn describe_error(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Prints a clap error and returns its exit code: 0 for `--help` and `--version`,
/// 64 (not clap's 2) for usage errors, reported on one line.
fn usage_error(error: &clap::Error) -> u8 {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            exit::USAGE
        }
        _ => {
            eprintln!("gcslock: error: {}", one_line(&error.render().to_string()));
            exit::USAGE
        }
    }
}

/// Clap's multi-line message as one line: the error, then the usage.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty());
    let message = lines
        .next()
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .unwrap_or("invalid arguments");
    match rendered
        .lines()
        .find_map(|line| line.trim().strip_prefix("Usage: "))
    {
        Some(usage) => format!("{message} (usage: {usage}; see --help)"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn repeated_causes_are_printed_once() {
        let error = anyhow::Error::new(gcslock::Error::Unavailable {
            lock: "gs://b/o".into(),
            cause: gcslock::backend::BackendError::Timeout(Duration::from_secs(1)),
        })
        .context("reading the lock");
        assert_eq!(
            describe_error(&error),
            "reading the lock: storage unavailable for gs://b/o: request timed out after 1s"
        );
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let Err(error) = Cli::try_parse_from(["gcslock", "run", "gs://bucket/o", "--bogus"]) else {
            panic!("--bogus should not parse");
        };
        let line = one_line(&error.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("unexpected argument '--bogus' found"),
            "{line}"
        );
        assert!(line.contains("usage: gcslock run"), "{line}");
    }
}
