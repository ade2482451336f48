//! Starting strict-gcs, and its control endpoint over a tiny HTTP/1.1 client
//! (loopback only, `Connection: close`; no async runtime needed).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A running strict-gcs, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    host_port: String,
}

impl Emulator {
    /// Starts `binary` with `args`, stderr to `stderr_path`, and waits (at most
    /// 10 s) for its `listening on http://HOST:PORT` line.
    pub fn start(binary: &Path, args: &[String], stderr_path: &Path) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("strict-gcs has no stdout pipe")?;
        let (sender, receiver) = mpsc::channel();
        // Reads the first line, then drains stdout until strict-gcs exits.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send(first);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => {
                let _ = child.kill();
                bail!("cannot read strict-gcs's address line: {error}");
            }
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "strict-gcs printed no `listening on` line within 10s (see {})",
                    stderr_path.display()
                );
            }
        };
        let Some(endpoint) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!(
                "unexpected first line from strict-gcs: {first:?} (see {})",
                stderr_path.display()
            );
        };
        let endpoint = endpoint.to_owned();
        let host_port = endpoint
            .strip_prefix("http://")
            .context("strict-gcs's address is not http://")?
            .trim_end_matches('/')
            .to_owned();
        let emulator = Self {
            child,
            endpoint,
            host_port,
        };
        emulator
            .stats()
            .context("strict-gcs's control endpoint does not answer")?;
        Ok(emulator)
    }

    /// `GET /_strict/stats`.
    pub fn stats(&self) -> anyhow::Result<Value> {
        self.request("GET", "/_strict/stats", None)
    }

    /// `POST /_strict/faults` with a partial update.
    pub fn set_faults(&self, update: &Value) -> anyhow::Result<Value> {
        self.request("POST", "/_strict/faults", Some(update))
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(&self.host_port)
            .with_context(|| format!("cannot connect to {}", self.host_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host_port,
            body.len()
        )?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .with_context(|| format!("{method} {path}: cannot read the response"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("{method} {path}: malformed response {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .with_context(|| format!("{method} {path}: no status in {head:?}"))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let payload = if chunked {
            dechunk(payload)?
        } else {
            payload.to_owned()
        };
        if status != 200 {
            bail!("{method} {path}: HTTP {status}: {payload}");
        }
        serde_json::from_str(&payload)
            .with_context(|| format!("{method} {path}: not JSON: {payload:?}"))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("malformed chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("short chunk")?;
        out.push_str(chunk);
        body = rest.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

/// `{"fail_503": 12, ...}` from stats, as (kind, count) pairs, largest first.
pub fn faults_injected(stats: &Value) -> Vec<(String, u64)> {
    let mut faults: Vec<(String, u64)> = stats
        .get("faults")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(k, n)| *n > 0 && k != "latency")
                .collect()
        })
        .unwrap_or_default();
    faults.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_counts_faults() {
        assert_eq!(
            dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n").unwrap_or_default(),
            "{\"a\":1}"
        );
        let stats = serde_json::json!({"faults": {"fail_503": 3, "latency": 99, "reset_after": 5, "fail_429": 0}});
        assert_eq!(
            faults_injected(&stats),
            vec![("reset_after".to_owned(), 5), ("fail_503".to_owned(), 3)]
        );
    }
}
