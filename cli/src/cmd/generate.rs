//! `gcslock generate`: the man pages and shell completions, made from the same clap
//! definitions as the parser (`Cli::command()`), so they cannot drift from it. Hidden:
//! packagers call it (packaging/build-deb.sh), users get its output from the package.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::cli::{Cli, VERSION};
use crate::exit::{self, Coded};

pub const LONG_ABOUT: &str = "\
Write gcslock's man pages or a shell's completion script, generated from the same
definitions the command line is parsed with. For packagers: packaging/build-deb.sh
installs them as /usr/share/man/man1/gcslock*.1.gz and in each shell's completion
directory.";

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Write gcslock.1 and one page per subcommand (gcslock-run.1, ...) into DIR
    Man {
        /// Directory to write the pages into; created if missing
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print SHELL's completion script for gcslock to stdout
    Completions {
        #[arg(value_name = "SHELL", value_enum)]
        shell: Shell,
    },
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<u8> {
    match &args.what {
        Generated::Man { dir } => write_man_pages(dir)?,
        Generated::Completions { shell } => print_completions(*shell)?,
    }
    Ok(0)
}

fn write_man_pages(dir: &Path) -> Result<(), Coded> {
    let io_error = |error: io::Error| {
        Coded::new(
            exit::IO_ERROR,
            format!("cannot write man pages to {}: {error}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    write_man_page_tree(&command, dir).map_err(io_error)
}

/// `Cli::command()` without its hidden subcommands (this one, internal helpers), which
/// clap_complete would otherwise offer for completion.
fn without_hidden_subcommands() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("gcslock")
        .version(VERSION)
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        )
}

/// The page for `command`, then one for each of its visible subcommands, as
/// `clap_mangen::generate_to` does, but with the text after the options kept as
/// written (see [`render_man_page`]).
fn write_man_page_tree(command: &clap::Command, dir: &Path) -> io::Result<()> {
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_man_page_tree(subcommand, dir)?;
    }
    let page = render_man_page(command)?;
    let name = clap_mangen::Man::new(command.clone()).get_filename();
    std::fs::write(dir.join(name), page)
}

/// clap_mangen's page, except that the after-help text (the exit code table and the
/// subcommands' notes) goes out unfilled: it is laid out in columns, which
/// clap_mangen's filled EXTRA section runs together.
fn render_man_page(command: &clap::Command) -> io::Result<Vec<u8>> {
    // `run --help` stays short: its explanations and the full exit code table live
    // in its man page.
    let notes = if command.get_name() == "run" {
        Some(format!(
            "{}\n\n{}",
            crate::cmd::run::MANUAL,
            crate::exit::HELP
        ))
    } else {
        command
            .get_after_long_help()
            .or_else(|| command.get_after_help())
            .map(ToString::to_string)
    };
    let without_notes = command
        .clone()
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    let mut page = Vec::new();
    clap_mangen::Man::new(without_notes)
        .source(format!("gcslock {VERSION}"))
        .render(&mut page)?;
    let Some(notes) = notes else {
        return Ok(page);
    };
    let heading = if notes.starts_with("Exit codes:") {
        "EXIT STATUS"
    } else {
        "NOTES"
    };
    let mut section = format!(".SH \"{heading}\"\n.nf\n");
    for line in notes.lines() {
        section.push_str(&roff_line(line));
        section.push('\n');
    }
    section.push_str(".fi\n");
    // Before VERSION, where clap_mangen puts EXTRA.
    let at = rfind(&page, b"\n.SH VERSION").map_or(page.len(), |newline| newline + 1);
    page.splice(at..at, section.into_bytes());
    Ok(page)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

/// One line of text for roff: backslashes escaped, and a leading `.` or `'` kept
/// from being read as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn print_completions(shell: Shell) -> Result<(), Coded> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut without_hidden_subcommands(),
        "gcslock",
        &mut script,
    );
    let mut out = io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(Coded::new(
            exit::IO_ERROR,
            format!("cannot write to stdout: {error}"),
        )),
        _ => Ok(()),
    }
}
