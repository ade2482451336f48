//! The server's shared state: buckets (each one the library's `MemoryBackend`),
//! fault settings, the random source and the counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gcslock::backend::memory::MemoryBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{FaultConfig, FaultScope, RateLimit};
use crate::resource::Attrs;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few plain assignments; a panic inside one
    // cannot leave the data half-updated, so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One bucket.
#[derive(Debug)]
pub struct Bucket {
    pub name: String,
    /// The library's strict model: generations, metagenerations, conditional writes,
    /// the server clock.
    pub backend: MemoryBackend,
    pub created: DateTime<Utc>,
    /// Held for the whole of every object request on this bucket (reads included):
    /// it makes each check-precondition-then-mutate sequence atomic, because the
    /// server is the only user of `backend`.
    pub state: tokio::sync::Mutex<BucketState>,
}

/// What the server keeps beside the model, under the bucket's lock.
#[derive(Debug, Default)]
pub struct BucketState {
    /// Per object name: the attributes of its live generation.
    pub attrs: HashMap<String, Attrs>,
    /// Per object name: when its recent mutations were applied (for the rate limit).
    recent_mutations: HashMap<String, VecDeque<Instant>>,
}

impl BucketState {
    /// Whether one more mutation of `name` now stays within `limit`.
    pub fn within_rate_limit(&mut self, name: &str, limit: Option<RateLimit>) -> bool {
        let Some(limit) = limit else {
            return true;
        };
        let now = Instant::now();
        let Some(times) = self.recent_mutations.get_mut(name) else {
            return true;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.per)
        {
            times.pop_front();
        }
        times.len() < limit.count as usize
    }

    /// Records an applied mutation of `name`.
    pub fn record_mutation(&mut self, name: &str) {
        let times = self.recent_mutations.entry(name.to_owned()).or_default();
        times.push_back(Instant::now());
        // Keep the history bounded whatever the limit is later set to.
        while times.len() > 1024 {
            times.pop_front();
        }
    }
}

/// The faults one request will suffer, drawn before it is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub latency: Option<Duration>,
    pub stall: Option<Duration>,
    pub fail_503: bool,
    pub fail_429: bool,
    pub reset_before: bool,
    pub reset_after: bool,
}

/// Counters served by `GET /_strict/stats`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Storage API requests (everything but `/_strict/`), by HTTP method.
    pub requests: BTreeMap<String, u64>,
    /// Storage API responses, by status code. Reset connections send none.
    pub responses: BTreeMap<u16, u64>,
    /// Faults injected, by kind: fail_503, fail_429, reset_before, reset_after,
    /// stall, latency, rate_limit.
    pub faults: BTreeMap<String, u64>,
    /// Mutations applied to the model (uploads, patches, deletes, bucket creations).
    pub mutations_applied: u64,
    /// The same, by kind.
    pub mutations: BTreeMap<String, u64>,
    /// Object requests being handled right now (including stalled ones).
    pub in_flight: u64,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    buckets: RwLock<BTreeMap<String, Arc<Bucket>>>,
    /// The server clock for responses that concern no bucket.
    clock: MemoryBackend,
    faults: Mutex<FaultConfig>,
    seed: AtomicU64,
    rng: Mutex<StdRng>,
    stats: Mutex<Stats>,
    in_flight: watch::Sender<u64>,
    stall_release: watch::Sender<u64>,
    pub verbose: bool,
}

impl AppState {
    pub fn new(faults: FaultConfig, seed: u64, verbose: bool) -> Self {
        let clock = MemoryBackend::new("_clock");
        clock.set_server_skew(chrono::Duration::milliseconds(faults.skew_ms));
        Self {
            buckets: RwLock::default(),
            clock,
            faults: Mutex::new(faults),
            seed: AtomicU64::new(seed),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: Mutex::default(),
            in_flight: watch::Sender::new(0),
            stall_release: watch::Sender::new(0),
            verbose,
        }
    }

    /// The server's current time (the same clock every bucket uses).
    pub fn server_time(&self) -> DateTime<Utc> {
        self.clock.server_time()
    }

    pub fn bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        self.buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all_buckets(&self) -> Vec<Arc<Bucket>> {
        self.buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Creates a bucket; `None` if it exists already.
    pub fn create_bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        if buckets.contains_key(name) {
            return None;
        }
        let backend = MemoryBackend::new(name);
        backend.set_server_skew(chrono::Duration::milliseconds(self.faults().skew_ms));
        let bucket = Arc::new(Bucket {
            name: name.to_owned(),
            created: backend.server_time(),
            backend,
            state: tokio::sync::Mutex::default(),
        });
        buckets.insert(name.to_owned(), bucket.clone());
        drop(buckets);
        self.count_mutation("bucket_create");
        Some(bucket)
    }

    pub fn faults(&self) -> FaultConfig {
        lock(&self.faults).clone()
    }

    /// Replaces the fault settings (and applies the clock skew to every bucket).
    pub fn set_faults(&self, faults: FaultConfig) {
        let skew = chrono::Duration::milliseconds(faults.skew_ms);
        *lock(&self.faults) = faults;
        self.clock.set_server_skew(skew);
        for bucket in self.all_buckets() {
            bucket.backend.set_server_skew(skew);
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed.load(Ordering::SeqCst)
    }

    /// Restarts the random source from `seed`.
    pub fn reseed(&self, seed: u64) {
        let mut rng = lock(&self.rng);
        *rng = StdRng::seed_from_u64(seed);
        self.seed.store(seed, Ordering::SeqCst);
    }

    /// Draws the faults for one request. Every request consumes the same number of
    /// random values whatever the settings, so a seed replays the same sequence for
    /// the same order of requests.
    pub fn draw_faults(&self, is_mutation: bool) -> FaultPlan {
        let config = self.faults();
        let draws: [f64; 6] = {
            let mut rng = lock(&self.rng);
            std::array::from_fn(|_| rng.random::<f64>())
        };
        if config.scope == FaultScope::Mutations && !is_mutation {
            return FaultPlan::default();
        }
        let hit = |p: f64, u: f64| u < p;
        let latency = if config.latency_ms > 0 || config.jitter_ms > 0 {
            let jitter = config.jitter_ms as f64 * (2.0 * draws[5] - 1.0);
            let ms = (config.latency_ms as f64 + jitter).max(0.0);
            Some(Duration::from_micros((ms * 1000.0) as u64))
        } else {
            None
        };
        FaultPlan {
            latency,
            stall: hit(config.stall, draws[4]).then(|| Duration::from_millis(config.stall_ms)),
            fail_503: hit(config.fail_503, draws[0]),
            fail_429: hit(config.fail_429, draws[1]),
            reset_before: hit(config.reset_before, draws[2]),
            reset_after: hit(config.reset_after, draws[3]),
        }
    }

    pub fn count_request(&self, method: &str) {
        *lock(&self.stats)
            .requests
            .entry(method.to_owned())
            .or_default() += 1;
    }

    pub fn count_response(&self, status: u16) {
        *lock(&self.stats).responses.entry(status).or_default() += 1;
    }

    pub fn count_fault(&self, kind: &str) {
        *lock(&self.stats).faults.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn count_mutation(&self, kind: &str) {
        let mut stats = lock(&self.stats);
        stats.mutations_applied += 1;
        *stats.mutations.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn stats(&self) -> Stats {
        let mut stats = lock(&self.stats).clone();
        stats.in_flight = *self.in_flight.borrow();
        stats
    }

    /// Marks an object request as in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Waits until exactly `count` object requests are in flight.
    pub async fn in_flight_reaches(&self, count: u64) {
        let mut rx = self.in_flight.subscribe();
        // `wait_for` only fails if the sender is gone, and `self` owns it.
        let _ = rx.wait_for(|n| *n == count).await;
    }

    /// Ends every stall in progress now.
    pub fn release_stalls(&self) {
        self.stall_release.send_modify(|n| *n += 1);
    }

    /// Sleeps for `duration` or until stalls are released, whichever is first.
    pub async fn stall(&self, duration: Duration) {
        let mut released = self.stall_release.subscribe();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = released.changed() => {}
        }
    }
}

/// See [`AppState::enter`].
#[derive(Debug)]
pub struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}
