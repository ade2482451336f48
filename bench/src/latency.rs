//! 2. Latency of acquire, release and refresh against the round trip of one bare
//!    GET made with the same HTTP client (reqwest, same settings as `GcsBackend`)
//!    against the same emulator.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use gcslock::backend::{Backend, BackendError, WriteCondition};
use gcslock::testing::{LockRecord, LockState};
use gcslock::{Lock, LockOptions, Wait};
use tokio::time::Instant;

use crate::counting::{Counter, Op};
use crate::emulator::{Emulator, BUCKET};
use crate::report::{table, Config, Report};
use crate::summary::{ratio, ratio_f, summarize, us, Summary};
use crate::sys;

/// What `GcsBackend` builds its client with (request and connect timeouts).
fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

fn record(seq: u64) -> LockRecord {
    LockRecord {
        state: LockState::Held,
        token: 1,
        holder: "bench-latency:1".into(),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        ttl: Duration::from_secs(60).into(),
        refresh_seq: seq,
        completed: None,
    }
}

/// Creates `name` unless it exists.
async fn ensure_object(backend: &dyn Backend, name: &str) -> Result<()> {
    match backend
        .write(name, WriteCondition::DoesNotExist, &record(0).to_metadata())
        .await
    {
        Ok(_) | Err(BackendError::PreconditionFailed) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Wall time of each kept call, and the process's CPU time over them.
#[derive(Default)]
struct Samples {
    samples: Vec<Duration>,
    cpu: Duration,
}

impl Samples {
    async fn time<T>(&mut self, keep: bool, call: impl Future<Output = Result<T>>) -> Result<T> {
        let cpu = sys::cpu_time()?;
        let start = Instant::now();
        let value = call.await?;
        let took = start.elapsed();
        let cpu_took = sys::cpu_time()?.saturating_sub(cpu);
        if keep {
            self.samples.push(took);
            self.cpu += cpu_took;
        }
        Ok(value)
    }

    fn cpu_per_op(&self) -> Duration {
        self.cpu / u32::try_from(self.samples.len().max(1)).unwrap_or(u32::MAX)
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<()> {
    let response = request.send().await?;
    let status = response.status();
    let _ = response.bytes().await?;
    if !status.is_success() {
        bail!("bare request: HTTP {status}");
    }
    Ok(())
}

fn multipart(name: &str, metadata: &gcslock::backend::Metadata) -> Result<(String, String)> {
    let json = serde_json::to_string(&serde_json::json!({ "name": name, "metadata": metadata }))?;
    let boundary = "gcslock-bench-0123456789abcdef0123456789abcdef";
    Ok((
        format!("multipart/related; boundary={boundary}"),
        format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
        ),
    ))
}

struct Row {
    name: String,
    requests: u32,
    summary: Summary,
    cpu: Option<Duration>,
    /// The baseline it is compared with, and the raw requests it is made of.
    against: Summary,
    against_name: &'static str,
    raw_equivalent: Option<Duration>,
}

pub struct LatencyOutcome {
    pub get: Summary,
    pub get_cpu: Duration,
}

pub async fn run(
    emulator: &Emulator,
    config: &Config,
    report: &mut Report,
) -> Result<LatencyOutcome> {
    eprintln!("== 2. latency ratios");
    let n = config.lat_ops;
    let warmup = config.lat_warmup;
    let stats_before = emulator.stats().await?;
    let sockets_before = emulator.client_connections()?;
    let gcs: Arc<dyn Backend> = Arc::new(emulator.backend()?);
    let client = http_client()?;
    let object_url = |name: &str| {
        format!(
            "{}/storage/v1/b/{BUCKET}/o/{}",
            emulator.url,
            name.replace('/', "%2F")
        )
    };
    ensure_object(gcs.as_ref(), "lat/get").await?;
    ensure_object(gcs.as_ref(), "lat/raw-patch").await?;
    let get_url = object_url("lat/get");

    // Everything but the paced pair runs in interleaved rounds: each round does every
    // operation once (the bare GET twice), so background load on the shared machine
    // hits baseline and library operations alike.
    let metadata = record(1).to_metadata();
    let patch_url = object_url("lat/raw-patch");
    let patch_body = serde_json::json!({ "metadata": metadata });
    let (content_type, body) = multipart("lat/raw-post", &metadata)?;
    let upload_url = format!(
        "{}/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart",
        emulator.url
    );
    let options = || {
        LockOptions::default()
            .ttl(Duration::from_secs(60))
            .identity("bench-latency")
    };
    let reuse = Lock::new(Arc::clone(&gcs), "lat/reuse", options())?;
    let mut version = match gcs
        .write(
            "lat/refresh",
            WriteCondition::DoesNotExist,
            &record(0).to_metadata(),
        )
        .await
    {
        Ok(written) => written.value.version,
        Err(BackendError::PreconditionFailed) => match gcs.read("lat/refresh").await?.value {
            Some(info) => info.version,
            None => bail!("lat/refresh vanished"),
        },
        Err(e) => return Err(e.into()),
    };
    let mut get = Samples::default();
    let mut read = Samples::default();
    let mut raw_patch = Samples::default();
    let mut raw_post = Samples::default();
    let mut acquire_new = Samples::default();
    let mut acquire_released = Samples::default();
    let mut release = Samples::default();
    let mut update = Samples::default();
    let rounds = warmup + n.max(config.lat_gets / 2);
    for round in 0..rounds {
        let keep = round >= warmup;
        get.time(keep, send(client.get(&get_url))).await?;
        read.time(keep, async {
            gcs.read("lat/get").await?;
            Ok(())
        })
        .await?;
        raw_patch
            .time(keep, send(client.patch(&patch_url).json(&patch_body)))
            .await?;
        raw_post
            .time(
                keep,
                send(
                    client
                        .post(&upload_url)
                        .header("content-type", &content_type)
                        .body(body.clone()),
                ),
            )
            .await?;
        let fresh = Lock::new(Arc::clone(&gcs), &format!("lat/new/{round:06}"), options())?;
        let guard = acquire_new
            .time(keep, async { Ok(fresh.acquire(Wait::No).await?) })
            .await?;
        release
            .time(keep, async { Ok(guard.release().await?) })
            .await?;
        get.time(keep, send(client.get(&get_url))).await?;
        let guard = acquire_released
            .time(keep, async { Ok(reuse.acquire(Wait::No).await?) })
            .await?;
        release
            .time(keep, async { Ok(guard.release().await?) })
            .await?;
        let metadata = record(round as u64 + 1).to_metadata();
        let written = update
            .time(keep, async {
                Ok(gcs
                    .update_metadata("lat/refresh", version, &metadata)
                    .await?)
            })
            .await?;
        version = written.value.version;
    }
    let per = |total: Duration, count: usize| total / u32::try_from(count.max(1)).unwrap_or(1);

    // Refresh, part 2: driven by the lease itself at a short interval, timed by the
    // wrapper; beside it a bare GET paced at the same interval.
    let interval = config.lat_paced_interval;
    let counting = Counter::wrap(Arc::clone(&gcs));
    let lease_lock = Lock::new(
        counting.clone(),
        "lat/lease",
        options().refresh_interval(interval),
    )?;
    let guard = lease_lock.acquire(Wait::No).await?;
    let _ = counting.take_calls();
    let cpu = sys::cpu_time()?;
    let target = counting.count(Op::UpdateMetadata) + (warmup + config.lat_paced) as u64;
    let hang_guard = Instant::now() + Duration::from_secs(300);
    while counting.count(Op::UpdateMetadata) < target && Instant::now() < hang_guard {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease_cpu_total = sys::cpu_time()? - cpu;
    let calls = counting.take_calls();
    guard.release().await?;
    let refreshes: Vec<Duration> = calls
        .iter()
        .filter(|c| c.op == Op::UpdateMetadata && c.ok)
        .skip(warmup)
        .take(config.lat_paced)
        .map(|c| c.elapsed)
        .collect();
    let lease_updates = calls.iter().filter(|c| c.op == Op::UpdateMetadata).count();
    let lease_cpu = per(lease_cpu_total, lease_updates);
    let start = Instant::now();
    let mut paced_samples = Vec::with_capacity(config.lat_paced);
    let paced_cpu = sys::cpu_time()?;
    for i in 0..config.lat_paced {
        tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let t = Instant::now();
        send(client.get(&get_url)).await?;
        paced_samples.push(t.elapsed());
    }
    let paced_cpu = per(sys::cpu_time()? - paced_cpu, config.lat_paced);

    let connections = emulator.client_connections()?;
    let requests = emulator.stats().await?.since(&stats_before).total();
    let closed = connections
        .client_time_wait
        .saturating_sub(sockets_before.client_time_wait)
        + connections
            .server_time_wait
            .saturating_sub(sockets_before.server_time_wait);
    let get_s = summarize(&get.samples);
    let read_s = summarize(&read.samples);
    let patch_s = summarize(&raw_patch.samples);
    let post_s = summarize(&raw_post.samples);
    let paced_s = summarize(&paced_samples);
    let rows = vec![
        Row {
            name: "bare GET (reqwest, back to back) — **baseline**".into(),
            requests: 1,
            summary: get_s,
            cpu: Some(get.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(get_s.p50),
        },
        Row {
            name: "`GcsBackend::read` (GET + JSON parse)".into(),
            requests: 1,
            summary: read_s,
            cpu: Some(read.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(get_s.p50),
        },
        Row {
            name: "bare PATCH (reqwest, lock-sized metadata)".into(),
            requests: 1,
            summary: patch_s,
            cpu: Some(raw_patch.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: None,
        },
        Row {
            name: "bare multipart POST upload (reqwest)".into(),
            requests: 1,
            summary: post_s,
            cpu: Some(raw_post.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: None,
        },
        Row {
            name: "**acquire**, brand-new name".into(),
            requests: 2,
            summary: summarize(&acquire_new.samples),
            cpu: Some(acquire_new.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(get_s.p50 + post_s.p50),
        },
        Row {
            name: "**acquire**, released name".into(),
            requests: 2,
            summary: summarize(&acquire_released.samples),
            cpu: Some(acquire_released.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(get_s.p50 + post_s.p50),
        },
        Row {
            name: "**release** (tombstone PATCH)".into(),
            requests: 1,
            summary: summarize(&release.samples),
            cpu: Some(release.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(patch_s.p50),
        },
        Row {
            name: "**refresh**: `update_metadata`, back to back".into(),
            requests: 1,
            summary: summarize(&update.samples),
            cpu: Some(update.cpu_per_op()),
            against: get_s,
            against_name: "GET",
            raw_equivalent: Some(patch_s.p50),
        },
        Row {
            name: format!("bare GET paced every {} ms", interval.as_millis()),
            requests: 1,
            summary: paced_s,
            cpu: Some(paced_cpu),
            against: paced_s,
            against_name: "paced GET",
            raw_equivalent: Some(paced_s.p50),
        },
        Row {
            name: format!(
                "**refresh** driven by the lease every {} ms",
                interval.as_millis()
            ),
            requests: 1,
            summary: summarize(&refreshes),
            cpu: Some(lease_cpu),
            against: paced_s,
            against_name: "paced GET",
            raw_equivalent: None,
        },
    ];
    let mut table_rows = Vec::new();
    for row in &rows {
        table_rows.push(vec![
            row.name.clone(),
            row.requests.to_string(),
            row.summary.n.to_string(),
            us(row.summary.p50),
            us(row.summary.p99),
            format!(
                "{} / {}",
                ratio(row.summary.p50, row.against.p50),
                ratio(row.summary.p99, row.against.p99)
            ),
            format!(
                "{:.2}x",
                ratio_f(row.summary.p50, row.against.p50) / f64::from(row.requests)
            ),
            row.against_name.to_owned(),
            row.raw_equivalent
                .map_or("–".into(), |raw| ratio(row.summary.p50, raw)),
            row.cpu.map_or("–".into(), us),
        ]);
    }
    report.section(
        "2. Latency (same reqwest client settings, same emulator, loopback)",
        table(
            &[
                "operation",
                "requests",
                "n",
                "p50",
                "p99",
                "p50 / p99 ÷ baseline",
                "p50 ÷ baseline ÷ requests",
                "baseline",
                "p50 ÷ its raw requests",
                "client CPU / op",
            ],
            &table_rows,
        ) + "\n\"÷ its raw requests\" divides by the p50 sum of the same bare requests \
             (acquire: GET + POST; release and refresh: PATCH): the library's own share. \
             The emulator does more work for a write than for a GET, so the per-request \
             ratio against GET overstates the library's overhead. All rows above the paced pair were \
             measured in interleaved rounds (every operation once per round, the GET twice), so \
             background load on the shared machine hits them alike.\n"
            + &format!(
                "\nConnections: over this section's {requests} requests (two clients: the bare \
             reqwest client and one `GcsBackend`), this process's established connections to \
             the emulator went from {} to {}, and TIME_WAIT sockets on the emulator's port went \
             from {} to {} (client side) and {} to {} (server side): {}.\n",
                sockets_before.owned_established.len(),
                connections.owned_established.len(),
                sockets_before.client_time_wait,
                connections.client_time_wait,
                sockets_before.server_time_wait,
                connections.server_time_wait,
                if closed < 10 {
                    "connections are kept alive and reused, no reconnect per request"
                } else {
                    "**connections were closed and reopened during the section**"
                }
            ),
    );
    for (what, row) in [
        ("acquire (released name)", &rows[5]),
        ("release", &rows[6]),
        ("refresh (`update_metadata`)", &rows[7]),
    ] {
        let per_request = ratio_f(row.summary.p50, row.against.p50) / f64::from(row.requests);
        report.headline(
            "2",
            format!("latency: {what} p50 / p99 vs bare GET"),
            format!(
                "{} / {} ({:.2}x per request; {} of its raw requests)",
                ratio(row.summary.p50, row.against.p50),
                ratio(row.summary.p99, row.against.p99),
                per_request,
                row.raw_equivalent
                    .map_or("–".into(), |raw| ratio(row.summary.p50, raw)),
            ),
            format!("GET p50 {} p99 {}", us(get_s.p50), us(get_s.p99)),
            if per_request <= 1.3 {
                "within 1.3x per request"
            } else {
                "over 1.3x per request vs GET (see raw-request column)"
            },
        );
    }
    Ok(LatencyOutcome {
        get: get_s,
        get_cpu: get.cpu_per_op(),
    })
}
