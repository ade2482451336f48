//! The `strict-gcs` binary: flags to [`strict_gcs::ServerConfig`], then serve.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use strict_gcs::config::parse_probability;
use strict_gcs::{FaultConfig, FaultScope, RateLimit, Server, ServerConfig};

/// A GCS JSON-API emulator that enforces GCS's conditional-request semantics
/// exactly, with fault injection. Prints `listening on http://HOST:PORT` as its first
/// line of standard output.
#[derive(Debug, Parser)]
#[command(name = "strict-gcs", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Create this bucket at start (repeatable).
    #[arg(long = "bucket", value_name = "NAME")]
    buckets: Vec<String>,
    /// Probability of answering 503 without applying the request.
    #[arg(long, value_name = "P", value_parser = parse_probability, default_value_t = 0.0)]
    fail_503: f64,
    /// Probability of answering 429 without applying the request.
    #[arg(long, value_name = "P", value_parser = parse_probability, default_value_t = 0.0)]
    fail_429: f64,
    /// Probability of resetting the connection before applying the request.
    #[arg(long, value_name = "P", value_parser = parse_probability, default_value_t = 0.0)]
    reset_before: f64,
    /// Probability of applying the request, then resetting the connection instead
    /// of answering (a lost response).
    #[arg(long, value_name = "P", value_parser = parse_probability, default_value_t = 0.0)]
    reset_after: f64,
    /// Latency added to every request in scope.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,
    /// Uniform jitter on the added latency (latency ± jitter).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of stalling a request for --stall-ms before applying it.
    #[arg(long, value_name = "P", value_parser = parse_probability, default_value_t = 0.0)]
    stall: f64,
    /// How long a stall lasts.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    stall_ms: u64,
    /// Per-object mutation rate limit, e.g. 1/s (GCS's documented limit); off by default.
    #[arg(long, value_name = "COUNT/PERIOD")]
    object_rate_limit: Option<RateLimit>,
    /// Which requests the probabilistic faults hit.
    #[arg(long, value_enum, default_value_t = FaultScope::All)]
    fault_scope: FaultScope,
    /// Seed for the fault draws (printed to stderr when chosen at random).
    #[arg(long)]
    seed: Option<u64>,
    /// Skew of the server clock in milliseconds (positive: ahead).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    skew_ms: i64,
    /// Log every request to stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let faults = FaultConfig {
        fail_503: args.fail_503,
        fail_429: args.fail_429,
        reset_before: args.reset_before,
        reset_after: args.reset_after,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        stall: args.stall,
        stall_ms: args.stall_ms,
        object_rate_limit: args.object_rate_limit,
        scope: args.fault_scope,
        skew_ms: args.skew_ms,
    };
    let config = ServerConfig {
        buckets: args.buckets,
        faults,
        seed: args.seed,
        verbose: args.verbose,
    };
    let mut server = match Server::bind((args.host.as_str(), args.port), config).await {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "strict-gcs: cannot serve on {}:{}: {e}",
                args.host,
                args.port
            );
            return ExitCode::FAILURE;
        }
    };
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {}", server.url());
        let _ = stdout.flush();
    }
    let _ = writeln!(
        std::io::stderr(),
        "strict-gcs: fault seed {}",
        server.seed()
    );
    tokio::select! {
        () = server.wait() => ExitCode::FAILURE,
        () = shutdown_signal() => ExitCode::SUCCESS,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
