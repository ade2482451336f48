//! Options every subcommand takes.

use clap::{ArgAction, Args, ValueEnum};

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Storage endpoint: https://... (with credentials), or http://HOST:PORT or HOST:PORT
    /// for an emulator. Default: $STORAGE_EMULATOR_HOST, else https://storage.googleapis.com
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Print errors only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print more: -v key events (acquired, released), -vv debugging details
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Format of gcslock's own messages on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per message: `gcslock: ...`
    Text,
    /// One JSON object per line
    Json,
}
