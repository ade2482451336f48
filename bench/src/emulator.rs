//! The benchmark's own strict-gcs: this same executable re-run as `__emulator`, so
//! the emulator is built with the same profile and runs in its own process (its CPU
//! time never shows in the client's `getrusage(RUSAGE_SELF)`).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use gcslock::backend::gcs::GcsBackend;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::sys;

/// The bucket every measurement uses.
pub const BUCKET: &str = "gcslock-bench";

/// Entry point of the `__emulator` child: serve until the parent closes our stdin.
pub fn serve_main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the emulator's runtime")?;
    runtime.block_on(async {
        let config = strict_gcs::ServerConfig {
            buckets: vec![BUCKET.to_owned()],
            seed: Some(1),
            ..Default::default()
        };
        let server = strict_gcs::Server::bind(("127.0.0.1", 0), config)
            .await
            .context("binding the emulator")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", server.url())?;
            out.flush()?;
        }
        // The parent holds our stdin open; EOF (or its death) ends the emulator.
        tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        })
        .await
        .context("waiting for stdin to close")?;
        drop(server);
        Ok(())
    })
}

/// Counters from `GET /_strict/stats`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
    #[serde(default)]
    pub responses: BTreeMap<String, u64>,
    #[serde(default)]
    pub faults: BTreeMap<String, u64>,
    #[serde(default)]
    pub mutations_applied: u64,
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Stats {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Stats) -> Stats {
        Stats {
            requests: diff(&self.requests, &before.requests),
            responses: diff(&self.responses, &before.responses),
            faults: diff(&self.faults, &before.faults),
            mutations_applied: self
                .mutations_applied
                .saturating_sub(before.mutations_applied),
        }
    }

    pub fn method(&self, method: &str) -> u64 {
        self.requests.get(method).copied().unwrap_or(0)
    }

    pub fn status(&self, code: u16) -> u64 {
        self.responses.get(&code.to_string()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Uploads, patches and deletes sent (applied or not).
    pub fn writes(&self) -> u64 {
        self.method("POST") + self.method("PATCH") + self.method("DELETE")
    }

    /// `GET 1 + POST 1` style, in a fixed order.
    pub fn breakdown(&self) -> String {
        let parts: Vec<String> = ["GET", "POST", "PATCH", "DELETE"]
            .iter()
            .filter(|m| self.method(m) > 0)
            .map(|m| format!("{m} {}", self.method(m)))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" + ")
        }
    }
}

/// A running emulator child and a control client for its `/_strict/` endpoint.
pub struct Emulator {
    /// Held for its stdin (closing it stops the child) and `kill_on_drop`.
    _child: Child,
    pub url: String,
    pub port: u16,
    control: reqwest::Client,
    /// Local ports of the control client's own connection, left out of the
    /// connection counts.
    control_ports: Vec<u16>,
}

impl Emulator {
    pub async fn start() -> Result<Self> {
        let exe = std::env::current_exe().context("locating the benchmark executable")?;
        let mut child = Command::new(exe)
            .arg("__emulator")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the emulator")?;
        let stdout = child.stdout.take().context("the emulator has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the emulator printed no address within 30 s")?
            .context("reading the emulator's address")?
            .context("the emulator exited before printing its address")?;
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the emulator: {line:?}"))?
            .trim()
            .to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .with_context(|| format!("no port in {url:?}"))?;
        // One persistent connection for control calls, so it can be told apart.
        let control = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(None)
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut emulator = Self {
            _child: child,
            url,
            port,
            control,
            control_ports: Vec::new(),
        };
        emulator.stats().await?;
        emulator.control_ports = sys::tcp_snapshot(port, &[])?.owned_established;
        if emulator.control_ports.len() != 1 {
            bail!(
                "expected one control connection to the emulator, found {:?}",
                emulator.control_ports
            );
        }
        Ok(emulator)
    }

    /// A fresh GCS backend (its own connection pool) on the benchmark bucket.
    pub fn backend(&self) -> Result<GcsBackend> {
        Ok(GcsBackend::builder(BUCKET)
            .endpoint(Some(self.url.clone()))
            .build()?)
    }

    pub async fn stats(&self) -> Result<Stats> {
        let response = self
            .control
            .get(format!("{}/_strict/stats", self.url))
            .send()
            .await
            .context("reading emulator stats")?;
        if !response.status().is_success() {
            bail!("emulator stats: HTTP {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// `POST /_strict/faults` with `"reset": true` and these settings.
    pub async fn set_faults(&self, mut settings: serde_json::Value) -> Result<()> {
        if let Some(fields) = settings.as_object_mut() {
            fields.insert("reset".into(), serde_json::Value::Bool(true));
        }
        let response = self
            .control
            .post(format!("{}/_strict/faults", self.url))
            .json(&settings)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "setting emulator faults: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn clear_faults(&self) -> Result<()> {
        self.set_faults(serde_json::json!({})).await
    }

    /// Connections this process holds to the emulator, the control one left out.
    pub fn client_connections(&self) -> Result<sys::TcpSnapshot> {
        sys::tcp_snapshot(self.port, &self.control_ports)
    }
}
