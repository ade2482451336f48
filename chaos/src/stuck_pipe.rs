//! A pipe that is full and never read: a stderr as a stalled log collector,
//! Docker's blocking log mode or a terminal paused with Ctrl-S leave it.

use std::io::{ErrorKind, PipeReader, PipeWriter, Write as _};

use anyhow::Context as _;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// A pipe whose buffer is full: any blocking write to the writer waits until
/// someone reads, and nobody does. The reader must be kept (closed, writes
/// would fail with EPIPE instead of blocking).
pub fn full_pipe() -> anyhow::Result<(PipeReader, PipeWriter)> {
    let (reader, mut writer) = std::io::pipe().context("cannot create a pipe")?;
    let flags = fcntl(&writer, FcntlArg::F_GETFL).context("cannot read the pipe's flags")?;
    let flags = OFlag::from_bits_truncate(flags);
    fcntl(&writer, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))
        .context("cannot make the pipe non-blocking")?;
    let chunk = [b'x'; 4096];
    loop {
        match writer.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => return Err(error).context("cannot fill the pipe"),
        }
    }
    // Blocking again: the file description is shared with every gcslock given it.
    fcntl(&writer, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))
        .context("cannot make the pipe blocking again")?;
    Ok((reader, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_is_full_and_blocking() {
        let (_reader, mut writer) = full_pipe().expect("pipe");
        let flags = OFlag::from_bits_truncate(fcntl(&writer, FcntlArg::F_GETFL).expect("flags"));
        assert!(!flags.contains(OFlag::O_NONBLOCK), "left non-blocking");
        // Not one more byte fits (asked without blocking: this test owns the pipe).
        fcntl(&writer, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).expect("set flags");
        let error = writer.write(b"x").expect_err("a byte fitted");
        assert_eq!(error.kind(), ErrorKind::WouldBlock);
    }
}
