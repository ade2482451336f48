//! The command line surface: clap definitions, help texts and value parsers.

use std::ffi::OsString;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use gcslock::Wait;

use crate::target::{ListTarget, LockTarget};

use crate::exit;

const ABOUT: &str = "A distributed lease lock whose only server is a Google Cloud Storage bucket";

const LONG_ABOUT: &str = "\
A distributed lease lock whose only server is a Google Cloud Storage bucket.

`gcslock run gs://BUCKET/OBJECT -- COMMAND` runs COMMAND only while holding the lock, so the
same job started from cron, CronJobs or CI on many machines runs at most once at a time.
The lease is refreshed in the background; if it is lost the command is stopped.

Storage: the endpoint is --endpoint if given, else $STORAGE_EMULATOR_HOST (an emulator, no
credentials), else https://storage.googleapis.com with Application Default Credentials.";

const AFTER_HELP: &str = "\
Exit codes: the command's own (128+N if it died of signal N); 75 busy; 76 lease lost;
64 usage; 65 not a lock; 66 no such bucket; 69 storage unavailable; 70 internal;
74 I/O error; 77 permission denied; 78 stale fencing token (put);
126/127 command not executable/not found. See --help for details.";

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0-255  gcslock run: the command's own exit code; 128+N if it died of signal N
  64     usage error: bad arguments, URL, duration or option (EX_USAGE)
  65     the object exists but is not a gcslock lock; it is never overwritten (EX_DATAERR).
         `gcslock put`: the object has no fencing token (see --adopt-unfenced)
  66     the bucket does not exist (EX_NOINPUT); `gcslock cat`: no such object
  69     storage unreachable or failing until the time allowed ran out (EX_UNAVAILABLE)
  70     internal error in gcslock itself (EX_SOFTWARE)
  74     `gcslock put`/`cat`: I/O error on stdin, the spool file or stdout (EX_IOERR)
  75     the lock is busy: held by someone else after any --wait (EX_TEMPFAIL);
         --busy-exit-code changes it. `gcslock break --token N`: the lock carries
         another token or changed meanwhile; nothing was broken. `gcslock put`:
         concurrent writers kept winning the race (contended)
  76     the lease was lost while the command ran; the command was stopped (or, if the
         lease ran out before it could start, e.g. gcslock was suspended, not started)
  77     permission denied by storage, or no credentials (EX_NOPERM)
  78     `gcslock put`: the fencing token is stale: the object was already written with
         a larger one, by a newer holder; nothing was written
  126    the command could not be executed (permission denied, not executable)
  127    the command was not found
  128+N  gcslock itself got signal N (INT, TERM, HUP, QUIT) while waiting for the lock;
         no lock is left behind";

const RUN_LONG_ABOUT: &str = "\
Run COMMAND while holding the lock gs://BUCKET/OBJECT.

The command inherits stdin, stdout and stderr and runs in its own process group, with
GCSLOCK_TOKEN (the fencing token: larger than every earlier holder's) and GCSLOCK_URL in its
environment. gcslock's own messages go to stderr only.

Signals INT, TERM, HUP and QUIT sent to gcslock are forwarded to the command's whole process
group; while gcslock is still waiting for the lock they abort the wait instead (exit 128+N).
If the lease is lost while the command runs (the lock was broken or taken over, or storage
could not be reached before the lease ran out), the process group gets SIGTERM, then SIGKILL
after --kill-grace, and gcslock exits 76 (also when the loss is found only as the command
exits). Processes the command leaves behind in its process group are stopped the same way
once it exits, so that nothing runs without the lock. The lock is released on every way out.

The command is not in the terminal's foreground process group: it can write to a terminal
but not read from one (it would be stopped by SIGTTIN).";

#[derive(Debug, Parser)]
#[command(
    name = "gcslock",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    after_long_help = EXIT_CODES_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding the lock
    #[command(long_about = RUN_LONG_ABOUT, after_long_help = EXIT_CODES_HELP)]
    Run(RunArgs),

    /// Show whether a lock is free, released, held or stale, and by whom
    #[command(after_long_help = STATUS_HELP)]
    Status(StatusArgs),

    /// List the locks under a prefix, one line each
    #[command(after_long_help = LIST_HELP)]
    List(ListArgs),

    /// Force-release a lock (its holder notices at its next refresh and stops)
    #[command(name = "break", after_long_help = BREAK_HELP)]
    Break(BreakArgs),

    /// Write stdin to an object, refused if the fencing token is stale
    #[command(long_about = crate::fence_cmd::PUT_LONG_ABOUT, after_long_help = crate::fence_cmd::PUT_HELP)]
    Put(crate::fence_cmd::PutArgs),

    /// Write an object's body to stdout (and, with --show-token, its token to stderr)
    #[command(long_about = crate::fence_cmd::CAT_LONG_ABOUT, after_long_help = crate::fence_cmd::CAT_HELP)]
    Cat(crate::fence_cmd::CatArgs),
}

const STATUS_HELP: &str = "\
States: free (no lock object, or released by its last holder), held, stale (not refreshed
within its TTL by the server's clock: the next contender takes it over), not-a-lock.
Times left are judged by the storage server's clock, never this machine's.

--json prints one object: {\"url\", \"state\": \"free\"|\"released\"|\"held\"|\"stale\"|\"not-a-lock\",
\"free\": bool, \"token\", \"holder\", \"ttl_ms\", \"last_refresh\" (RFC 3339), \"expires_in_ms\",
\"released_at\", \"generation\", \"metageneration\", \"reason\"}; absent fields are omitted.

Exit codes: 0 when the lock could be read, whatever its state; otherwise as for run.";

const LIST_HELP: &str = "\
--json prints JSON lines: one object per lock, in name order, with the fields of
`gcslock status --json`. Nothing is printed when no object matches.

Exit codes: 0 when the listing succeeded; otherwise as for run.";

const BREAK_HELP: &str = "\
The lock is marked released (not deleted), so fencing tokens keep growing. With --token N
it is broken only if it still carries token N. Prints what was broken, on stdout.

Exit codes: 0 broken or already free; 75 not broken because the lock carries another
token or changed meanwhile; 65 not a gcslock lock; otherwise as for run.";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// How long to wait for a lock someone else holds: a duration (30s, 5m, 1h30m) or
    /// `forever`. Default: a single attempt
    #[arg(short, long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Wait>,

    /// How long the lease lasts without a refresh (1s to 7d)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub ttl: Duration,

    /// How often the lease is refreshed. Default: TTL/8
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_interval: Option<Duration>,

    /// Holder name recorded in the lock. Default: HOST:PID
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,

    /// After the lease is lost: time between SIGTERM and SIGKILL to the command's group
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub kill_grace: Duration,

    /// Exit code when the lock is busy
    #[arg(long, value_name = "CODE", default_value_t = exit::BUSY)]
    pub busy_exit_code: u8,

    /// How long to keep retrying while storage is unreachable before giving up (exit 69);
    /// the retries also continue until the end of --wait (forever with `--wait forever`)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub storage_timeout: Duration,

    /// The command to run, after `--`
    #[arg(
        value_name = "COMMAND",
        last = true,
        required = true,
        num_args = 1..,
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock: gs://BUCKET/OBJECT (with the object-store feature also s3://, az://)
    #[arg(value_name = "URL", value_parser = LockTarget::parse)]
    pub url: LockTarget,

    /// Print one JSON object instead of a line of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// gs://BUCKET or gs://BUCKET/PREFIX
    #[arg(value_name = "URL", value_parser = ListTarget::parse)]
    pub url: ListTarget,

    /// Print JSON lines (one object per lock) instead of text
    #[arg(long)]
    pub json: bool,
}

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

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|error| format!("{error} (expected a duration such as 30s, 5m or 1h30m)"))
}

fn parse_wait(value: &str) -> Result<Wait, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "forever" | "inf" | "infinity" | "infinite" => Ok(Wait::Forever),
        "0" => Ok(Wait::No),
        _ => {
            let duration = humantime::parse_duration(value.trim()).map_err(|error| {
                format!("{error} (expected a duration such as 30s or 5m, or `forever`)")
            })?;
            Ok(if duration.is_zero() {
                Wait::No
            } else {
                Wait::For(duration)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_wait_values() {
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("inf"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0s"), Ok(Wait::No));
        assert_eq!(parse_wait("90s"), Ok(Wait::For(Duration::from_secs(90))));
        assert_eq!(parse_wait("5m"), Ok(Wait::For(Duration::from_secs(300))));
        assert!(parse_wait("soon").is_err());
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
            run.command,
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
