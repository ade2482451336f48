//! Starting strict-gcs, and its control endpoint (`/_strict/...`) over ureq: a
//! blocking client, so the orchestrator needs no async runtime.

use std::io::{BufRead as _, BufReader};
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
    control: Control,
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
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let emulator = Self {
            child,
            control: Control::new(&endpoint),
            endpoint,
        };
        emulator
            .stats()
            .context("strict-gcs's control endpoint does not answer")?;
        Ok(emulator)
    }

    /// `GET /_strict/stats`.
    pub fn stats(&self) -> anyhow::Result<Value> {
        self.control.stats()
    }

    /// `POST /_strict/faults` with a partial update.
    pub fn set_faults(&self, update: &Value) -> anyhow::Result<Value> {
        self.control.set_faults(update)
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

/// strict-gcs's control endpoint.
#[derive(Debug)]
struct Control {
    agent: ureq::Agent,
    endpoint: String,
}

impl Control {
    fn new(endpoint: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            // Loopback: never through a proxy from the environment.
            .proxy(None)
            // Error statuses are reported with their body, below.
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            endpoint: endpoint.to_owned(),
        }
    }

    fn stats(&self) -> anyhow::Result<Value> {
        let path = "/_strict/stats";
        let response = self.agent.get(format!("{}{path}", self.endpoint)).call();
        Self::json("GET", path, response)
    }

    fn set_faults(&self, update: &Value) -> anyhow::Result<Value> {
        let path = "/_strict/faults";
        let response = self
            .agent
            .post(format!("{}{path}", self.endpoint))
            .send_json(update);
        Self::json("POST", path, response)
    }

    /// The JSON body of a 200 answer; anything else is an error naming the request.
    fn json(
        method: &str,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = response.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let payload = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{method} {path}: cannot read the response"))?;
        if status != ureq::http::StatusCode::OK {
            bail!("{method} {path}: HTTP {}: {payload}", status.as_u16());
        }
        serde_json::from_str(&payload)
            .with_context(|| format!("{method} {path}: not JSON: {payload:?}"))
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
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// Serves one connection with `response`, and hands back the request's head.
    fn serve_once(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            let head = String::from_utf8(request).unwrap();
            // Read the body too: closing with unread input would reset the connection.
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).unwrap();
            stream.write_all(response.as_bytes()).unwrap();
            head
        });
        (endpoint, server)
    }

    #[test]
    fn reads_a_chunked_json_answer() {
        let (endpoint, server) = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        let stats = Control::new(&endpoint).stats().unwrap();
        assert_eq!(stats, serde_json::json!({"a": 1}));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /_strict/stats HTTP/1.1\r\n"));
    }

    #[test]
    fn reports_an_error_status_with_its_body() {
        let (endpoint, server) = serve_once(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\nConnection: close\r\n\r\nunknown fault",
        );
        let error = Control::new(&endpoint)
            .set_faults(&serde_json::json!({"nope": 1}))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "POST /_strict/faults: HTTP 400: unknown fault"
        );
        assert!(server
            .join()
            .unwrap()
            .starts_with("POST /_strict/faults HTTP/1.1\r\n"));
    }

    #[test]
    fn counts_faults() {
        let stats = serde_json::json!({"faults": {"fail_503": 3, "latency": 99, "reset_after": 5, "fail_429": 0}});
        assert_eq!(
            faults_injected(&stats),
            vec![("reset_after".to_owned(), 5), ("fail_503".to_owned(), 3)]
        );
    }
}
