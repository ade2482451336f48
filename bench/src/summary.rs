//! Percentiles and number formatting.

use std::time::Duration;

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let rank = |q: f64| -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        // Nearest rank: the smallest value with at least q of the sample at or below it.
        let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        sorted[index]
    };
    Summary {
        n,
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted.last().copied().unwrap_or_default(),
    }
}

/// Microseconds, e.g. `412 µs`.
pub fn us(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 10.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{micros:.0} µs")
    }
}

/// Milliseconds, e.g. `1,204 ms` → `1204 ms`.
pub fn ms(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1e3;
    if millis < 10.0 {
        format!("{millis:.2} ms")
    } else {
        format!("{millis:.0} ms")
    }
}

/// `a / b` as `2.31x`.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "–".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

pub fn ratio_f(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        return f64::NAN;
    }
    a.as_secs_f64() / b.as_secs_f64()
}
