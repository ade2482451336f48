//! 4. Scale: one process holding many locks. Each lock count runs in a fresh child
//!    process (this executable as `__scale`) so that its memory, threads, sockets
//!    and CPU time are its own; the emulator is yet another process.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures_util::{stream, StreamExt as _};
use gcslock::backend::gcs::GcsBackend;
use gcslock::backend::Backend;
use gcslock::{Guard, Lock, LockOptions, Wait};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::counting::{in_release, object_key, Counter, Op};
use crate::emulator::{Emulator, BUCKET};
use crate::report::{table, Config, Report};
use crate::summary::{ms, us};
use crate::sys;

const BUCKET_MS: u64 = 100;

#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub locks: usize,
    pub ttl_ms: u64,
    pub refresh_ms: u64,
    pub concurrency: usize,
    pub acquire_ms: u64,
    pub acquire_failures: usize,
    pub rss_before_kib: u64,
    pub rss_acquired_kib: u64,
    pub rss_end_kib: u64,
    pub threads_before: u64,
    pub threads_max: u64,
    pub window_ms: u64,
    pub refreshes_in_window: u64,
    pub refresh_failures_in_window: u64,
    pub cpu_window_us: u64,
    pub connections_max: usize,
    pub connections_min: usize,
    pub connections_end: usize,
    pub client_time_wait_end: usize,
    /// Refresh send times over the whole window, per 100 ms.
    pub histogram: Vec<u64>,
    /// First to last refresh send within the window's first refresh interval.
    pub spread_ms: u64,
    pub sampler_cost_us: u64,
    pub leases_lost: usize,
    pub release_ms: u64,
    pub release_failures: usize,
    /// Requests made by the `release()` calls themselves (not by refreshes meanwhile).
    pub release_requests: u64,
    /// ... of which failed PATCHes (412 when a refresh raced the release) and
    /// read-backs (GET) that resolve them.
    pub release_failed_patches: u64,
    pub release_reads: u64,
    /// Releases whose lock had a refresh request in flight when `release()` was called.
    pub releases_with_refresh_in_flight: u64,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<T> {
    let at = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("missing {name}"))?;
    args.get(at + 1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad value for {name}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Entry point of the `__scale` child: prints one JSON line.
pub fn child_main(args: &[String]) -> Result<()> {
    let url: String = arg(args, "--url")?;
    let port: u16 = arg(args, "--port")?;
    let locks: usize = arg(args, "--locks")?;
    let ttl = Duration::from_millis(arg(args, "--ttl-ms")?);
    let refresh = Duration::from_millis(arg(args, "--refresh-ms")?);
    let window = Duration::from_millis(arg(args, "--window-ms")?);
    let concurrency: usize = arg(args, "--concurrency")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(hold_many(
        url,
        port,
        locks,
        ttl,
        refresh,
        window,
        concurrency,
    ))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn hold_many(
    url: String,
    port: u16,
    count: usize,
    ttl: Duration,
    refresh: Duration,
    window: Duration,
    concurrency: usize,
) -> Result<ScaleResult> {
    let gcs = GcsBackend::builder(BUCKET).endpoint(Some(url)).build()?;
    let counting = Counter::wrap(Arc::new(gcs));
    let backend: Arc<dyn Backend> = counting.clone();
    backend.read("scale/warm-up").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before_kib = sys::proc_status("VmRSS")?;
    let threads_before = sys::proc_status("Threads")?;

    let options = LockOptions::default()
        .ttl(ttl)
        .refresh_interval(refresh)
        .identity("bench-scale");
    let locks = (0..count)
        .map(|i| {
            Lock::new(
                Arc::clone(&backend),
                &format!("scale/{count}/{i:05}"),
                options.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let acquired: Vec<(usize, Result<Guard, gcslock::Error>)> =
        stream::iter(locks.iter().enumerate())
            .map(|(i, lock)| async move { (i, lock.acquire(Wait::No).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let acquire_ms = millis(started.elapsed());
    let acquire_failures = acquired.iter().filter(|(_, r)| r.is_err()).count();
    let guards: Vec<(usize, Guard)> = acquired
        .into_iter()
        .filter_map(|(i, r)| r.ok().map(|guard| (i, guard)))
        .collect();
    let rss_acquired_kib = sys::proc_status("VmRSS")?;
    let _ = counting.take_calls();

    // The measured window: only refreshes happen in it. Sockets and threads are
    // sampled on a plain thread whose own CPU time (RUSAGE_THREAD) is taken out.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let sampling = Arc::clone(&sampling);
        move || {
            let (mut max, mut min, mut threads) = (0usize, usize::MAX, 0u64);
            while sampling.load(Ordering::Relaxed) {
                if let Ok(snapshot) = sys::tcp_snapshot(port, &[]) {
                    max = max.max(snapshot.owned_established.len());
                    min = min.min(snapshot.owned_established.len());
                }
                threads = threads.max(sys::proc_status("Threads").unwrap_or(0));
                std::thread::sleep(Duration::from_secs(1));
            }
            let cost = sys::thread_cpu_time().unwrap_or_default();
            // Not counting the sampler itself.
            (max, min, threads.saturating_sub(1), cost)
        }
    });
    let window_start = Instant::now();
    let cpu = sys::cpu_time()?;
    let updates = counting.count(Op::UpdateMetadata);
    tokio::time::sleep(window).await;
    let cpu_window = sys::cpu_time()? - cpu;
    let refreshes_in_window = counting.count(Op::UpdateMetadata) - updates;
    sampling.store(false, Ordering::Relaxed);
    let (connections_max, connections_min, threads_max, sampler_cost) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?;
    let cpu_window = cpu_window.saturating_sub(sampler_cost);
    let calls = counting.take_calls();
    let refresh_failures_in_window = calls
        .iter()
        .filter(|c| c.op == Op::UpdateMetadata && !c.ok)
        .count() as u64;
    let buckets = usize::try_from(millis(window) / BUCKET_MS)
        .unwrap_or(0)
        .max(1);
    let mut histogram = vec![0u64; buckets];
    let (mut first, mut last) = (None::<Duration>, None::<Duration>);
    for call in calls.iter().filter(|c| c.op == Op::UpdateMetadata) {
        let Some(offset) = call.start.checked_duration_since(window_start) else {
            continue;
        };
        let index = usize::try_from(millis(offset) / BUCKET_MS).unwrap_or(usize::MAX);
        if let Some(slot) = histogram.get_mut(index) {
            *slot += 1;
            if offset < refresh {
                first = Some(first.map_or(offset, |f| f.min(offset)));
                last = Some(last.map_or(offset, |l| l.max(offset)));
            }
        }
    }
    let spread_ms = match (first, last) {
        (Some(first), Some(last)) => millis(last - first),
        _ => 0,
    };
    let rss_end_kib = sys::proc_status("VmRSS")?;
    let end = sys::tcp_snapshot(port, &[])?;
    let leases_lost = guards.iter().filter(|(_, g)| !g.is_valid()).count();

    // Release all. Each release() is scoped so that its own requests can be told
    // from the refreshes the locks not yet released keep sending meanwhile.
    let _ = counting.take_calls();
    let started = Instant::now();
    let released: Vec<(u64, Instant, Result<(), gcslock::Error>)> = stream::iter(guards)
        .map(|(i, guard)| async move {
            let object = object_key(&format!("scale/{count}/{i:05}"));
            let called = Instant::now();
            (object, called, in_release(guard.release()).await)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let release_ms = millis(started.elapsed());
    let calls = counting.take_calls();
    let by_release: Vec<_> = calls.iter().filter(|c| c.in_release).collect();
    // A refresh of the same object sent before release() was called and answered after.
    let refreshing: std::collections::HashMap<u64, Vec<(Instant, Instant)>> = calls
        .iter()
        .filter(|c| c.op == Op::UpdateMetadata && !c.in_release)
        .fold(Default::default(), |mut map, c| {
            map.entry(c.object)
                .or_default()
                .push((c.start, c.start + c.elapsed));
            map
        });
    let releases_with_refresh_in_flight = released
        .iter()
        .filter(|(object, called, _)| {
            refreshing.get(object).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|(sent, answered)| sent <= called && answered > called)
            })
        })
        .count() as u64;
    Ok(ScaleResult {
        locks: count,
        ttl_ms: millis(ttl),
        refresh_ms: millis(refresh),
        concurrency,
        acquire_ms,
        acquire_failures,
        rss_before_kib,
        rss_acquired_kib,
        rss_end_kib,
        threads_before,
        threads_max,
        window_ms: millis(window),
        refreshes_in_window,
        refresh_failures_in_window,
        cpu_window_us: u64::try_from(cpu_window.as_micros()).unwrap_or(u64::MAX),
        connections_max: connections_max.max(end.owned_established.len()),
        connections_min: connections_min.min(connections_max),
        connections_end: end.owned_established.len(),
        client_time_wait_end: end.client_time_wait,
        histogram,
        spread_ms,
        sampler_cost_us: u64::try_from(sampler_cost.as_micros()).unwrap_or(u64::MAX),
        leases_lost,
        release_ms,
        release_failures: released.iter().filter(|(_, _, r)| r.is_err()).count(),
        release_requests: by_release.len() as u64,
        release_failed_patches: by_release
            .iter()
            .filter(|c| c.op == Op::UpdateMetadata && !c.ok)
            .count() as u64,
        release_reads: by_release.iter().filter(|c| c.op == Op::Read).count() as u64,
        releases_with_refresh_in_flight,
    })
}

async fn spawn_child(emulator: &Emulator, config: &Config, locks: usize) -> Result<ScaleResult> {
    let exe = std::env::current_exe()?;
    let output = tokio::process::Command::new(exe)
        .arg("__scale")
        .args(["--url", &emulator.url])
        .args(["--port", &emulator.port.to_string()])
        .args(["--locks", &locks.to_string()])
        .args(["--ttl-ms", &millis(config.scale_ttl).to_string()])
        .args(["--refresh-ms", &millis(config.scale_refresh).to_string()])
        .args(["--window-ms", &millis(config.scale_window).to_string()])
        .args(["--concurrency", &config.scale_concurrency.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .context("running the scale child")?;
    if !output.status.success() {
        bail!("the scale child failed: {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("no output from the scale child")?;
    serde_json::from_str(line).with_context(|| format!("scale child output {line:?}"))
}

pub async fn run(emulator: &Emulator, config: &Config, report: &mut Report) -> Result<()> {
    eprintln!("== 4. scale");
    let mut rows = Vec::new();
    let mut histograms = String::new();
    for &(locks, latency_ms) in &config.scale_runs {
        eprintln!("  {locks} locks, emulator latency {latency_ms} ms");
        if latency_ms > 0 {
            emulator
                .set_faults(serde_json::json!({ "latency_ms": latency_ms }))
                .await?;
        }
        let before = emulator.stats().await?;
        let outcome = spawn_child(emulator, config, locks).await;
        let seen = emulator.stats().await?.since(&before);
        emulator.clear_faults().await?;
        let r = outcome?;
        let label = if latency_ms > 0 {
            format!("{} (+{latency_ms} ms per request)", r.locks)
        } else {
            r.locks.to_string()
        };
        let cpu_per_refresh = Duration::from_micros(r.cpu_window_us)
            / u32::try_from(r.refreshes_in_window.max(1)).unwrap_or(1);
        let rss_per_lock = (r.rss_acquired_kib.saturating_sub(r.rss_before_kib)) as f64 * 1024.0
            / r.locks.max(1) as f64;
        // The window's first refresh interval (every lock refreshes once in it),
        // then the whole window.
        let first_interval = &r.histogram
            [..usize::try_from(r.refresh_ms / BUCKET_MS).map_or(0, |n| n.min(r.histogram.len()))];
        let interval_buckets = first_interval.len().max(1) as f64;
        let in_interval: u64 = first_interval.iter().sum();
        let peak = first_interval.iter().copied().max().unwrap_or(0);
        let nonempty = first_interval.iter().filter(|&&c| c > 0).count();
        let in_window: u64 = r.histogram.iter().sum();
        let window_peak = r.histogram.iter().copied().max().unwrap_or(0);
        let window_even = in_window as f64 / r.histogram.len().max(1) as f64;
        // The fewest 100 ms buckets that hold 90% of the interval's refreshes.
        let mut sorted = first_interval.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let mut covered = 0;
        let mut buckets_90 = 0;
        for c in &sorted {
            if covered * 10 >= in_interval * 9 {
                break;
            }
            covered += c;
            buckets_90 += 1;
        }
        let expected = r.locks as f64 * (r.window_ms as f64 / r.refresh_ms as f64);
        rows.push(vec![
            label.clone(),
            format!(
                "{} / {}",
                ms(Duration::from_millis(r.ttl_ms)),
                ms(Duration::from_millis(r.refresh_ms))
            ),
            format!(
                "{} ms, {} at a time ({} failed)",
                r.acquire_ms, r.concurrency, r.acquire_failures
            ),
            format!("{} ms", r.window_ms),
            format!(
                "{} (expected ~{expected:.0}; {} failed)",
                r.refreshes_in_window, r.refresh_failures_in_window
            ),
            us(cpu_per_refresh),
            format!(
                "{:.2}",
                r.refreshes_in_window as f64 / (r.window_ms as f64 / 1000.0)
            ),
            format!(
                "{:.1} KiB ({:.1} KiB after the window)",
                rss_per_lock / 1024.0,
                (r.rss_end_kib.saturating_sub(r.rss_before_kib)) as f64 / r.locks.max(1) as f64
            ),
            format!("{} -> {}", r.threads_before, r.threads_max),
            format!(
                "{}..{} (end {}; {} TIME_WAIT)",
                r.connections_min, r.connections_max, r.connections_end, r.client_time_wait_end
            ),
            format!(
                "first interval: all within {} ms; peak {peak} vs even {:.1}; {nonempty}/{} buckets used; \
                 90% in {buckets_90}. Whole window: peak {window_peak} vs even {window_even:.1}",
                r.spread_ms,
                in_interval as f64 / interval_buckets,
                first_interval.len()
            ),
            r.leases_lost.to_string(),
            format!("{} ms ({} failed)", r.release_ms, r.release_failures),
            format!(
                "{} for {} releases ({} failed PATCH, {} GET); {} found a refresh in flight",
                r.release_requests,
                r.locks - r.acquire_failures,
                r.release_failed_patches,
                r.release_reads,
                r.releases_with_refresh_in_flight
            ),
        ]);
        let render = |buckets: &[u64]| {
            buckets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (head, tail) = r.histogram.split_at(first_interval.len());
        histograms.push_str(&format!(
            "{label} locks, refresh sends per {BUCKET_MS} ms over the window ({in_window} refreshes; \
             first interval, {in_interval}: `{}`; the rest: `{}`)\n\n",
            render(head),
            render(tail)
        ));
        report.headline(
            "4",
            format!(
                "scale: {label} locks, TTL {} s, refresh {} s",
                r.ttl_ms / 1000,
                r.refresh_ms as f64 / 1000.0
            ),
            format!(
                "{} CPU/refresh, {:.1} KiB RSS/lock, {} threads, {} connections; first interval's refreshes \
                 all within {} ms of the {} ms interval, peak {peak}/100 ms (even: {:.1}); whole {} s window \
                 peak {window_peak}/100 ms (even: {window_even:.1})",
                us(cpu_per_refresh),
                rss_per_lock / 1024.0,
                r.threads_max,
                r.connections_max,
                r.spread_ms,
                r.refresh_ms,
                in_interval as f64 / interval_buckets,
                r.window_ms / 1000
            ),
            "no thread per lock; refreshes spread",
            if r.leases_lost == 0 && r.acquire_failures == 0 {
                format!("{} leases lost", r.leases_lost)
            } else {
                format!("**{} leases lost, {} acquire failures**", r.leases_lost, r.acquire_failures)
            },
        );
        let released = (r.locks - r.acquire_failures) as u64;
        report.check(
            format!("scale {label}: one request per release"),
            r.release_requests == released && r.release_failures == 0,
            format!(
                "{} requests for {released} releases ({} failed PATCH, {} GET); \
                 {} releases found a refresh in flight",
                r.release_requests,
                r.release_failed_patches,
                r.release_reads,
                r.releases_with_refresh_in_flight
            ),
        );
        report.headline(
            "4",
            format!("scale: {label} locks, release all"),
            format!(
                "{} requests for {released} releases ({} x 412 + GET); {} releases found a refresh in flight",
                r.release_requests, r.release_failed_patches, r.releases_with_refresh_in_flight
            ),
            "1 PATCH per release",
            if r.release_requests == released {
                "ok"
            } else {
                "**extra requests**"
            },
        );
        report.check(
            format!("scale {label}: every lock acquired with one POST each"),
            r.acquire_failures == 0 && seen.method("POST") == r.locks as u64,
            format!(
                "{} acquire failures; emulator saw {} (412: {}, 404: {}, 429: {})",
                r.acquire_failures,
                seen.breakdown(),
                seen.status(412),
                seen.status(404),
                seen.status(429)
            ),
        );
    }
    report.section(
        "4. Scale: one process holding many locks (client in its own process)",
        table(
            &[
                "locks",
                "TTL / refresh",
                "acquire all (concurrently)",
                "window",
                "refreshes in window",
                "client CPU / refresh",
                "refreshes/s",
                "RSS / held lock",
                "threads",
                "TCP connections to emulator",
                "refresh spread (100 ms buckets)",
                "leases lost",
                "release all",
                "requests made by release() (refreshes meanwhile not counted)",
            ],
            &rows,
        ) + "\nClient CPU is `getrusage(RUSAGE_SELF)` user+sys over the window, less the \
             connection sampler thread's own CPU time (RUSAGE_THREAD), divided by the refreshes \
             sent in it. RSS per lock is (VmRSS after acquiring all − before) / locks, Lock and \
             Guard objects and their keep-alive tasks included; \"after the window\" adds the \
             connection pool's growth. Threads: /proc/self/status, the sampler thread not \
             counted. Connections: ESTABLISHED sockets of the client process to the emulator \
             port (/proc/net/tcp matched to /proc/self/fd), sampled every second and once at the end of the window (a burst between two samples \
             can be missed; the end count shows the pool the bursts left behind). Rows marked \
             \"+20 ms per request\": strict-gcs delays every request by 20 ms (its `latency_ms` \
             fault), a stand-in for a real GCS round trip, so a burst of refreshes keeps many \
             requests in flight at once. Release: every `release()` runs inside a task-local scope, so \
             the counting wrapper tells its requests from the refreshes that locks not yet released \
             keep sending; \"found a refresh in flight\" counts releases whose lock had a refresh \
             request sent before `release()` was called and answered after.\n\n"
            + &histograms,
    );
    Ok(())
}
