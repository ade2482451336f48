//! Options every subcommand takes. Each can also come from a `GCSLOCK_*` variable
//! (so a crontab, unit file or CronJob can set it once); a flag beats its variable.

use clap::{ArgAction, Args, ValueEnum};

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Storage endpoint: https://... (with credentials), or http://HOST:PORT or HOST:PORT
    /// for an emulator. Default: $STORAGE_EMULATOR_HOST, else https://storage.googleapis.com
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "GCSLOCK_ENDPOINT",
        hide_env_values = true // keep deployment details out of --help (no credentials: URLs with user:key@ are refused)
    )]
    pub endpoint: Option<String>,

    /// Print errors only. -v beats it when $GCSLOCK_QUIET set it (true/1/yes/on)
    #[arg(
        short,
        long,
        global = true,
        env = "GCSLOCK_QUIET",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub quiet: bool,

    /// Print more: -v key events (acquired, released), -vv debugging details
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Format of gcslock's own messages on stderr
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "GCSLOCK_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// The subcommand's --storage-timeout, if it has one: it also caps each storage
    /// request (see `target::open_options`). Set by `main` after parsing.
    #[arg(skip)]
    pub storage_budget: Option<std::time::Duration>,
}

impl GlobalArgs {
    /// Errors only: -q (or $GCSLOCK_QUIET) without -v. Giving both -q and -v on the
    /// command line is refused earlier, by [`quiet_and_verbose_conflict`].
    pub fn errors_only(&self) -> bool {
        self.quiet && self.verbose == 0
    }
}

/// Whether -q and -v were both given on the command line. Clap's own `conflicts_with`
/// would also refuse $GCSLOCK_QUIET with -v, where the flag should simply win.
pub fn quiet_and_verbose_conflict(matches: &clap::ArgMatches) -> bool {
    let from_command_line =
        |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    from_command_line("quiet") && from_command_line("verbose")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per message: `gcslock: ...`
    Text,
    /// One JSON object per line
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn conflict(args: &[&str]) -> bool {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .unwrap_or_else(|error| panic!("{args:?}: {error}"));
        quiet_and_verbose_conflict(&matches)
    }

    #[test]
    fn quiet_and_verbose_conflict_wherever_they_are_given() {
        assert!(conflict(&[
            "gcslock",
            "-q",
            "-v",
            "status",
            "gs://bucket/o"
        ]));
        assert!(conflict(&[
            "gcslock",
            "-q",
            "status",
            "gs://bucket/o",
            "-v"
        ]));
        assert!(conflict(&["gcslock", "status", "gs://bucket/o", "-vq"]));
        assert!(!conflict(&["gcslock", "-q", "status", "gs://bucket/o"]));
        assert!(!conflict(&["gcslock", "status", "gs://bucket/o", "-vv"]));
    }
}
