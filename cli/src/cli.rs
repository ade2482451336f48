//! The top of the command line: the `gcslock` command, its global options and its
//! subcommands. Each subcommand's arguments, help and handler live in `cmd/`.

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::exit;
use crate::global::GlobalArgs;

const ABOUT: &str = "A distributed lease lock whose only server is a Google Cloud Storage bucket";

const LONG_ABOUT: &str = "\
A distributed lease lock whose only server is a Google Cloud Storage bucket.

`gcslock run gs://BUCKET/OBJECT -- COMMAND` runs COMMAND only while holding the lock, so the
same job started from cron, CronJobs or CI on many machines runs at most once at a time.
The lease is refreshed in the background; if it is lost the command is stopped.

Storage: the endpoint is --endpoint ($GCSLOCK_ENDPOINT) if given, else $STORAGE_EMULATOR_HOST
(an emulator, no credentials), else https://storage.googleapis.com with Application Default
Credentials.";

/// Usage and examples before the options (`run --help` is read for them).
const USAGE_FIRST: &str = "\
{about-with-newline}
{usage-heading} {usage}

{before-help}{all-args}{after-help}";

/// `0.1.0 (abc1234)`: the version and the source revision it was built from
/// (`-dirty` with uncommitted changes, `unknown` outside a git checkout); see build.rs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("GCSLOCK_BUILD_REVISION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "gcslock",
    version = VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = exit::SUMMARY,
    after_long_help = exit::HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding the lock
    // --help prints the short form too: the explanations are in the man page.
    #[command(
        long_about = cmd::run::LONG_ABOUT,
        before_help = cmd::run::EXAMPLES,
        help_template = USAGE_FIRST,
        after_help = "Details and exit codes: `man gcslock-run`, and the README.",
        disable_help_flag = true,
        arg = clap::Arg::new("help")
            .short('h')
            .long("help")
            .action(clap::ArgAction::HelpShort)
            .help("Print help (the details are in `man gcslock-run`)")
    )]
    Run(cmd::run::RunArgs),

    /// Campaign for leadership; run a command while leading, campaign again after
    #[command(long_about = cmd::elect::LONG_ABOUT, after_long_help = exit::HELP)]
    Elect(cmd::elect::ElectArgs),

    /// Print who leads an election, and every change, until interrupted
    #[command(after_long_help = cmd::observe::HELP)]
    Observe(cmd::observe::ObserveArgs),

    /// Show whether a lock is free, released, held or stale, and by whom
    #[command(after_long_help = cmd::status::HELP)]
    Status(cmd::status::StatusArgs),

    /// List the locks under a prefix, one line each
    #[command(after_long_help = cmd::list::HELP)]
    List(cmd::list::ListArgs),

    /// Force-release a lock (its holder notices at its next refresh and stops)
    #[command(name = "break", after_long_help = cmd::break_lock::HELP)]
    Break(cmd::break_lock::BreakArgs),

    /// Write stdin to an object, refused if the fencing token is stale
    #[command(long_about = cmd::put::LONG_ABOUT, after_long_help = cmd::put::HELP)]
    Put(cmd::put::PutArgs),

    /// Write an object's body to stdout (and, with --show-token, its token to stderr)
    #[command(long_about = cmd::cat::LONG_ABOUT, after_long_help = cmd::cat::HELP)]
    Cat(cmd::cat::CatArgs),

    /// Write the man pages or a shell completion script (for packagers)
    #[command(hide = true, long_about = cmd::generate::LONG_ABOUT)]
    Generate(cmd::generate::GenerateArgs),
}

impl Command {
    /// The lock or prefix URL the command works on, for the log span.
    pub fn url(&self) -> Option<String> {
        match self {
            Self::Run(args) => Some(args.url.to_string()),
            Self::Elect(args) => Some(args.url.to_string()),
            Self::Observe(args) => Some(args.url.to_string()),
            Self::Status(args) => Some(args.url.to_string()),
            Self::List(args) => Some(args.url.to_string()),
            Self::Break(args) => Some(args.url.to_string()),
            Self::Put(args) => Some(args.url.to_string()),
            Self::Cat(args) => Some(args.url.to_string()),
            Self::Generate(_) => None,
        }
    }

    /// The `run --once-per` period, for the log span.
    pub fn period(&self) -> Option<std::time::Duration> {
        match self {
            Self::Run(args) => args.once_per,
            _ => None,
        }
    }

    /// The command's --storage-timeout, if it talks to storage.
    pub fn storage_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Self::Run(args) => Some(args.storage_timeout.duration),
            Self::Elect(args) => Some(args.storage_timeout.duration),
            Self::Observe(_) => None,
            Self::Status(args) => Some(args.storage_timeout.duration),
            Self::List(args) => Some(args.storage_timeout.duration),
            Self::Break(args) => Some(args.storage_timeout.duration),
            Self::Put(args) => Some(args.storage_timeout.duration),
            Self::Cat(args) => Some(args.storage_timeout.duration),
            Self::Generate(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::ffi::OsString;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_requires_a_command_after_the_separator() {
        let parsed = Cli::try_parse_from(["gcslock", "run", "gs://bucket/o", "--", "true", "-x"]);
        let Ok(Cli {
            command: Command::Run(run),
            ..
        }) = parsed
        else {
            panic!("should parse: {parsed:?}");
        };
        assert_eq!(
            run.command.argv,
            vec![OsString::from("true"), OsString::from("-x")]
        );
        assert!(Cli::try_parse_from(["gcslock", "run", "gs://bucket/o"]).is_err());
        assert!(Cli::try_parse_from(["gcslock", "run", "gs://bucket/o", "true"]).is_err());
        assert!(Cli::try_parse_from(["gcslock", "run", "bucket/o", "--", "true"]).is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let parsed = Cli::try_parse_from([
            "gcslock",
            "status",
            "gs://bucket/o",
            "--endpoint",
            "http://127.0.0.1:1",
            "-vv",
        ]);
        let Ok(cli) = parsed else {
            panic!("should parse: {parsed:?}");
        };
        assert_eq!(cli.global.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(cli.global.verbose, 2);
    }
}
