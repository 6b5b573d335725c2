//! Latency histograms and the figures reported per cell: operations per second and the
//! latency percentiles, from HDR histograms (microsecond resolution, 3 significant digits).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: one minute, in microseconds; slower samples are clamped to it.
const MAX_US: u64 = 60_000_000;

/// Latencies of one worker or of a whole cell.
#[derive(Clone, Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    #[allow(clippy::expect_used)] // constant bounds, which hdrhistogram accepts
    pub fn new() -> Latencies {
        // 1 µs to a minute at 3 significant digits: ~0.1 % relative error everywhere.
        let histogram = Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        Latencies { histogram }
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US);
        let _ = self.histogram.record(us);
    }

    /// Records one sample `count` times (an operation of a batch of `count`).
    pub fn record_n(&mut self, latency: Duration, count: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US);
        let _ = self.histogram.record_n(us, count);
    }

    /// Adds another worker's samples.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.histogram.value_at_quantile(q)
    }

    /// The percentile curve for plots: (quantile, microseconds) at quantiles 0 .. 0.9999.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        let mut points = Vec::new();
        // Evenly spaced in "nines": 0, 0.5, 0.75, ..., as HDR plots show tails.
        for i in 0..=40 {
            let nines = f64::from(i) / 10.0;
            let q = 1.0 - 10f64.powf(-nines);
            points.push((q, self.quantile_us(q)));
        }
        points
    }
}

/// What a cell reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
    /// Failed operations, by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    /// Summarises `latencies` over a window of `window`.
    pub fn of(ops: u64, window: Duration, latencies: &Latencies) -> Summary {
        let secs = window.as_secs_f64();
        Summary {
            ops,
            ops_per_s: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            p50_us: latencies.quantile_us(0.50),
            p90_us: latencies.quantile_us(0.90),
            p99_us: latencies.quantile_us(0.99),
            p999_us: latencies.quantile_us(0.999),
            max_us: latencies.histogram.max(),
            errors: Default::default(),
        }
    }
}

/// The median of a list (for repeated runs), `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: u64, expected: u64) -> bool {
        // 3 significant digits: within 0.1 %, and 1 µs at the bottom.
        actual.abs_diff(expected) <= (expected / 1000).max(1)
    }

    #[test]
    fn percentiles_of_a_uniform_set() {
        let mut l = Latencies::new();
        for us in 1..=10_000u64 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 10_000);
        for (q, expected) in [(0.5, 5_000), (0.9, 9_000), (0.99, 9_900), (0.999, 9_990)] {
            let got = l.quantile_us(q);
            assert!(close(got, expected), "q{q}: {got} vs {expected}");
        }
        let s = Summary::of(10_000, Duration::from_secs(2), &l);
        assert_eq!(s.ops_per_s, 5_000.0);
        assert!(close(s.max_us, 10_000));
    }

    #[test]
    fn a_tail_shows_in_the_high_percentiles_only() {
        let mut l = Latencies::new();
        l.record_n(Duration::from_micros(100), 990);
        l.record_n(Duration::from_micros(50_000), 10);
        assert!(close(l.quantile_us(0.5), 100));
        assert!(close(l.quantile_us(0.99), 100));
        assert!(close(l.quantile_us(0.995), 50_000));
        assert!(close(l.quantile_us(0.999), 50_000));
    }

    #[test]
    fn merged_workers_add_up() {
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        a.record_n(Duration::from_micros(10), 500);
        b.record_n(Duration::from_micros(30), 500);
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert!(close(a.quantile_us(0.25), 10));
        assert!(close(a.quantile_us(0.75), 30));
        let curve = a.curve();
        assert_eq!(curve.first().map(|p| p.0), Some(0.0));
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1), "a percentile curve never falls");
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut l = Latencies::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(3600));
        assert_eq!(l.count(), 2);
        assert!(l.quantile_us(1.0) >= 59_000_000);
        assert!(l.quantile_us(0.0) <= 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
