//! The signals gcslock forwards to the command (or that abort the wait for the lock).

use nix::sys::signal::Signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

use crate::exit::{self, Coded};

/// The signals gcslock forwards to the command (or that abort the wait).
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The job-control stops gcslock refuses: stopped, it would neither refresh the lease
/// nor stop the command, which runs on in its own process group, and after the TTL
/// another machine's copy would start beside it. Caught rather than set to SIG_IGN,
/// which the command would inherit.
const REFUSED: [Signal; 2] = [Signal::SIGTSTP, Signal::SIGTTIN];

/// INT, TERM, HUP and QUIT, caught (so they no longer kill gcslock) and delivered
/// in order through one channel; TSTP and TTIN caught and refused; TTOU ignored.
pub struct Signals {
    receiver: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        ignore_ttou()?;
        for signal in REFUSED {
            let mut stream = catch(signal)?;
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::warn!(
                        "ignoring {signal}: a stopped gcslock could not refresh the lock or stop \
                         the command, which would run on without it"
                    );
                }
            });
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        for signal in FORWARDED {
            let mut stream = catch(signal)?;
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if sender.send(signal).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { receiver })
    }

    /// Signals fed by hand, for tests of the supervisor.
    #[cfg(test)]
    pub fn from_channel() -> (mpsc::UnboundedSender<Signal>, Self) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (sender, Self { receiver })
    }

    pub async fn recv(&mut self) -> Option<Signal> {
        self.receiver.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Signal> {
        self.receiver.try_recv().ok()
    }
}

/// SIGTTOU is ignored, not caught: a background gcslock writing to a terminal with
/// `stty tostop` gets SIGTTOU and, with a handler, the write is restarted and gets
/// it again, forever (the kernel lets the write through only when SIGTTOU is ignored
/// or blocked). The command gets the default back before it executes (`child.rs`).
fn ignore_ttou() -> Result<(), Coded> {
    // SAFETY: SIG_IGN runs no code of ours.
    unsafe { nix::sys::signal::signal(Signal::SIGTTOU, nix::sys::signal::SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(|error| Coded::new(exit::INTERNAL, format!("cannot ignore SIGTTOU: {error}")))
}

fn catch(signal: Signal) -> Result<tokio::signal::unix::Signal, Coded> {
    tokio::signal::unix::signal(SignalKind::from_raw(signal as i32)).map_err(|error| {
        Coded::new(
            exit::INTERNAL,
            format!("cannot install a handler for {signal}: {error}"),
        )
    })
}
