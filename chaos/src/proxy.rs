//! A TCP proxy per worker in front of strict-gcs, so that one worker's link to
//! storage can be cut while the others' stay up (strict-gcs's faults hit every
//! client alike).
//!
//! Cutting black-holes the link: bytes in either direction are read and dropped,
//! and sockets stay open, so requests hang as they would behind a dead network
//! rather than fail fast. Healing closes every connection that lived through the
//! cut (the client reconnects), so that no request held during the cut is
//! delivered late.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// How often a blocked pump looks at the cut flag.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    /// Incremented on every cut: a connection older than the last cut is closed
    /// once the link heals.
    cuts: AtomicU64,
    /// The proxy is being dropped: every thread ends.
    closing: AtomicBool,
}

/// One proxy: `endpoint` is what the worker's gcslock gets as `--endpoint`.
#[derive(Debug)]
pub struct Proxy {
    pub endpoint: String,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream` (`http://HOST:PORT`).
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        let target = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        let address = listener.local_addr().context("the proxy has no address")?;
        listener
            .set_nonblocking(true)
            .context("cannot make the proxy's listener non-blocking")?;
        let state = Arc::new(State::default());
        let accept_state = Arc::clone(&state);
        std::thread::spawn(move || accept_loop(&listener, &target, &accept_state));
        Ok(Self {
            endpoint: format!("http://{address}"),
            state,
        })
    }

    /// Black-holes the link from now on.
    pub fn cut(&self) {
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
        self.state.cut.store(true, Ordering::SeqCst);
    }

    /// Restores the link; connections that lived through the cut are closed.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, target: &str, state: &Arc<State>) {
    while !state.closing.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let state = Arc::clone(state);
                let target = target.to_owned();
                std::thread::spawn(move || connection(client, &target, &state));
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Pumps one connection both ways until either side closes, or the link heals
/// after a cut this connection lived through.
fn connection(client: TcpStream, target: &str, state: &Arc<State>) {
    let born = state.cuts.load(Ordering::SeqCst);
    // A connection opened during a cut is black-holed from the start: it does not
    // even reach the server.
    let upstream = if state.cut.load(Ordering::SeqCst) {
        None
    } else {
        TcpStream::connect(target).ok()
    };
    let Some(upstream) = upstream else {
        let _ = client.set_nonblocking(false);
        let _ = client.set_read_timeout(Some(POLL));
        let mut sink = client;
        let mut buffer = [0u8; 4096];
        while state.cut.load(Ordering::SeqCst) && !state.closing.load(Ordering::SeqCst) {
            match sink.read(&mut buffer) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(_) => return,
            }
        }
        let _ = sink.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client_reader), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let back_state = Arc::clone(state);
    let back = std::thread::spawn(move || pump(upstream_reader, client, born, &back_state));
    pump(client_reader, upstream, born, state);
    let _ = back.join();
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Copies `from` to `to`, dropping bytes while the link is cut; closes both
/// once the link heals after a cut that began while this connection was open.
fn pump(mut from: TcpStream, mut to: TcpStream, born: u64, state: &State) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if state.closing.load(Ordering::SeqCst) {
            break;
        }
        let cut = state.cut.load(Ordering::SeqCst);
        if !cut && state.cuts.load(Ordering::SeqCst) != born {
            break; // lived through a cut: close rather than deliver late
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if state.cut.load(Ordering::SeqCst) || state.cuts.load(Ordering::SeqCst) != born {
                    continue; // black-holed
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(error) if is_timeout(&error) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its `http://` address.
    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        format!("http://{address}")
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        // Only "no answer" needs a timeout: an absence can be shown only by waiting.
        let stream = TcpStream::connect(proxy.endpoint.trim_start_matches("http://")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream
    }

    fn round_trip(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping")?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer)?;
        Ok(answer.to_vec())
    }

    #[test]
    fn forwards_black_holes_while_cut_and_closes_survivors_on_heal() {
        let proxy = Proxy::start(&echo_server()).unwrap();
        let mut old = connect(&proxy);
        assert_eq!(round_trip(&mut old).unwrap(), b"ping");

        proxy.cut();
        // Neither the old connection nor a new one gets an answer: they hang.
        let error = round_trip(&mut old).unwrap_err();
        assert!(is_timeout(&error), "{error}");
        let mut during = connect(&proxy);
        let error = round_trip(&mut during).unwrap_err();
        assert!(is_timeout(&error), "{error}");

        proxy.heal();
        // The connection that lived through the cut is closed, not revived.
        old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        if let Err(error) = old.read_to_end(&mut rest) {
            assert!(!is_timeout(&error), "closed, not left hanging: {error}");
        }
        assert!(rest.is_empty(), "nothing held during the cut is delivered");
        let mut fresh = connect(&proxy);
        fresh
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(round_trip(&mut fresh).unwrap(), b"ping");
    }
}
