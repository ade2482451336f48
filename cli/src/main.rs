//! `gcslock`: run a command under a distributed lease lock held in a GCS bucket,
//! and inspect or break such locks. A thin layer over the `gcslock` library: all
//! lock logic lives there.

mod cli;
mod cmd;
mod exit;
mod global;
mod log_queue;
mod logging;
mod output;
mod parse;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let mut cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(error) => return ExitCode::from(usage_error(&error)),
    };
    cli.global.storage_budget = cli.command.storage_timeout();
    logging::init(&cli.global);
    let code = run_in_span(cli);
    // Bounded: a blocked stderr loses what is left rather than hold the exit.
    logging::finish();
    ExitCode::from(code)
}

/// Runs the command inside its span (see `logging`), which every event, the
/// library's and the runtime's tasks' included, is logged in.
fn run_in_span(cli: Cli) -> u8 {
    let period = cli.command.period().map(output::duration);
    let span = logging::command_span(cli.command.url().as_deref(), period.as_deref());
    let _entered = span.enter();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            span.record("exit_code", exit::INTERNAL);
            tracing::error!("cannot start the async runtime: {error}");
            return exit::INTERNAL;
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => {
            span.record("exit_code", code);
            tracing::debug!("exiting with {code}");
            code
        }
        Err(error) => {
            let code = exit::for_error(&error);
            span.record("exit_code", code);
            tracing::error!("{}", describe_error(&error));
            code
        }
    };
    // Do not wait for background tasks (signal listeners, a dropped guard's cleanup).
    runtime.shutdown_background();
    code
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
    let budget = cli.global.storage_budget;
    match cli.command {
        Command::Run(args) => cmd::run::run(&cli.global, args).await,
        Command::Elect(args) => cmd::elect::elect(&cli.global, args).await,
        Command::Observe(args) => cmd::observe::observe(&cli.global, &args).await,
        // Storage only: --storage-timeout bounds the whole command.
        Command::Status(args) => within(budget, cmd::status::status(&cli.global, &args)).await,
        Command::List(args) => within(budget, cmd::list::list(&cli.global, &args)).await,
        Command::Break(args) => {
            within(budget, cmd::break_lock::break_lock(&cli.global, &args)).await
        }
        Command::Put(args) => cmd::put::put(&cli.global, &args).await,
        Command::Cat(args) => cmd::cat::cat(&cli.global, &args).await,
        Command::Generate(args) => cmd::generate::generate(&args),
    }
}

/// The longest a command made of storage requests only may outlive its
/// --storage-timeout: time to report what the last request said.
const BUDGET_SLACK: Duration = Duration::from_secs(1);

/// `command`, ended with exit 69 if it outlasts the storage budget. The requests and
/// retries already stop at the budget (the library bounds each request by what is
/// left of it); this is the backstop for whatever else might wait on storage.
pub(crate) async fn within<T>(
    budget: Option<Duration>,
    command: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let Some(limit) = budget.and_then(|budget| budget.checked_add(BUDGET_SLACK)) else {
        return command.await;
    };
    match tokio::time::timeout(limit, command).await {
        Ok(result) => result,
        Err(_) => Err(exit::Coded::new(
            exit::UNAVAILABLE,
            format!(
                "storage did not answer within --storage-timeout {}",
                output::duration(budget.unwrap_or_default())
            ),
        )
        .into()),
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
/// 64 (not clap's 2) for usage errors, reported on one line that keeps every detail
/// clap gives (the missing names, the possible values), as JSON with
/// `--log-format json`. Logging is not set up yet: this is the only message.
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
            let mut message = one_line(&error.render().to_string());
            if let Some(variable) = variable_behind(error) {
                message.push_str(&format!(" (the value came from ${variable})"));
            }
            if json_requested(std::env::args_os(), std::env::var_os("GCSLOCK_LOG_FORMAT")) {
                let line = serde_json::json!({
                    "level": "ERROR",
                    "message": message,
                    "exit_code": exit::USAGE,
                    "target": "gcslock",
                });
                eprintln!("{line}");
            } else {
                eprintln!("gcslock: error: {message}");
            }
            exit::USAGE
        }
    }
}

/// Clap's multi-line message as one line: the error and every detail line (the
/// missing arguments, `[possible values: ...]`, tips), then the usage.
fn one_line(rendered: &str) -> String {
    let mut message = String::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        if let Some(text) = line.strip_prefix("Usage: ") {
            usage = Some(text);
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(line);
    }
    if message.is_empty() {
        message.push_str("invalid arguments");
    }
    match usage {
        Some(usage) => format!("{message} (usage: {usage}; see --help)"),
        None => message,
    }
}

/// The environment variable a rejected value came from, if it did: clap names the
/// option only, and a `GCSLOCK_TTL=5` in a unit file is not on the command line.
fn variable_behind(error: &clap::Error) -> Option<String> {
    let (Some(ContextValue::String(option)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let command = Cli::command();
    let found = std::iter::once(&command)
        .chain(command.get_subcommands())
        .flat_map(|command| command.get_arguments())
        .filter(|arg| {
            arg.get_long().is_some_and(|long| {
                option.starts_with(&format!("--{long} ")) || option == &format!("--{long}")
            })
        })
        .filter_map(|arg| arg.get_env())
        .find(|variable| std::env::var_os(variable).is_some_and(|set| set == value.as_str()))
        .map(|variable| variable.to_string_lossy().into_owned());
    found
}

/// Whether the (unparsed) command line or $GCSLOCK_LOG_FORMAT asks for JSON.
fn json_requested(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    variable: Option<std::ffi::OsString>,
) -> bool {
    let mut from_args = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--log-format" {
            from_args = args.next();
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--log-format=")) {
            from_args = Some(value.into());
        }
    }
    from_args
        .or(variable)
        .is_some_and(|format| format == "json")
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
    fn usage_errors_keep_every_detail_clap_gives() {
        let missing = |args: &[&str]| match Cli::try_parse_from(args) {
            Err(error) => one_line(&error.render().to_string()),
            Ok(_) => panic!("{args:?} should not parse"),
        };
        let line = missing(&["gcslock", "status"]);
        assert!(
            line.starts_with("the following required arguments were not provided: <URL>"),
            "{line}"
        );
        let line = missing(&["gcslock", "run", "gs://bucket/o"]);
        assert!(line.contains("<COMMAND>"), "{line}");
        let line = missing(&["gcslock", "--log-format", "yaml", "status", "gs://bucket/o"]);
        assert!(line.contains("[possible values: text, json]"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn json_is_requested_by_flag_or_variable_before_the_command() {
        let args = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        assert!(json_requested(
            args(&["gcslock", "--log-format", "json", "x"]),
            None
        ));
        assert!(json_requested(
            args(&["gcslock", "--log-format=json"]),
            None
        ));
        assert!(json_requested(args(&["gcslock"]), Some("json".into())));
        assert!(!json_requested(
            args(&["gcslock", "--log-format", "text"]),
            Some("json".into())
        ));
        assert!(!json_requested(
            args(&["gcslock", "run", "u", "--", "--log-format", "json"]),
            None
        ));
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
