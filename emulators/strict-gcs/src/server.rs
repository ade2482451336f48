//! The HTTP server: one task per connection, served with hyper directly so that a
//! fault can drop a connection (with a TCP reset) instead of answering.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::config::FaultConfig;
use crate::state::AppState;

/// Lets a handler drop the connection its request arrived on.
#[derive(Clone, Debug)]
pub struct ConnHandle(Arc<Notify>);

impl ConnHandle {
    /// Closes the connection with a TCP reset, without sending a response. The
    /// handler calling this should then never complete.
    pub fn reset(&self) {
        self.0.notify_one();
    }
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Buckets to create at start.
    pub buckets: Vec<String>,
    pub faults: FaultConfig,
    /// Seed of the fault draws; `None` picks one at random (see [`Server::seed`]).
    pub seed: Option<u64>,
    /// Log every request to stderr.
    pub verbose: bool,
}

/// A running server. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    accept: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Self::from_listener(listener, config)
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> io::Result<Self> {
        config
            .faults
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for bucket in &config.buckets {
            crate::api::validate_bucket_name(bucket)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.message))?;
        }
        let seed = config.seed.unwrap_or_else(rand::random);
        let state = Arc::new(AppState::new(config.faults, seed, config.verbose));
        for bucket in &config.buckets {
            // A bucket named twice is created once.
            let _ = state.create_bucket(bucket);
        }
        let addr = listener.local_addr()?;
        let router = crate::router(state.clone());
        let accept = tokio::spawn(accept_loop(listener, router, state.verbose));
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, the value for `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The seed the fault draws started from.
    pub fn seed(&self) -> u64 {
        self.state.seed()
    }

    /// Serves until the accept loop ends (it does not, unless aborted).
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub(crate) fn log(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "strict-gcs: {message}");
}

async fn accept_loop(listener: TcpListener, router: Router, verbose: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(serve_connection(stream, router.clone(), verbose));
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                log(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Splits off a second handle on the socket, kept to set SO_LINGER at reset time
/// while hyper owns the stream.
fn with_control(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let control = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, control))
}

async fn serve_connection(stream: TcpStream, router: Router, verbose: bool) {
    let _ = stream.set_nodelay(true);
    let (stream, control) = match with_control(stream) {
        Ok(pair) => pair,
        Err(e) => {
            log(format_args!("cannot set up a connection: {e}"));
            return;
        }
    };
    let abort = Arc::new(Notify::new());
    let handle = ConnHandle(abort.clone());
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(handle.clone());
        router.clone().oneshot(request)
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                if verbose {
                    log(format_args!("connection error: {e}"));
                }
            }
        }
        () = abort.notified() => {
            // With SO_LINGER 0, the close below sends RST instead of FIN: the
            // client's transport sees "connection reset", not a response.
            if let Err(e) = SockRef::from(&control).set_linger(Some(Duration::ZERO)) {
                log(format_args!("cannot set SO_LINGER for a reset: {e}"));
            }
        }
    }
    // The hyper connection (and its handle on the socket) is gone; this closes the
    // last descriptor.
    drop(control);
}
