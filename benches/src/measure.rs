//! Turning runs into numbers: batch sizing, medians, histogram summaries.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A histogram of nanoseconds from 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles drawn in the latency plot.
pub const PLOT_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// A round-trip latency distribution, in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencyStats {
    /// Round trips recorded.
    pub count: u64,
    /// Total time over count (includes the timer's own cost, as the
    /// percentiles do).
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Worst round trip.
    pub max: u64,
    /// `(percentile, value)` at each of [`PLOT_PERCENTILES`].
    pub curve: Vec<(f64, u64)>,
}

impl LatencyStats {
    /// Summarises a histogram.
    pub fn of(hist: &Histogram<u64>) -> Self {
        Self {
            count: hist.len(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            curve: PLOT_PERCENTILES
                .iter()
                .map(|&p| (p, hist.value_at_quantile(p / 100.0)))
                .collect(),
        }
    }
}

impl std::fmt::Display for LatencyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} mean={:.0}ns p50={}ns p99={}ns p99.9={}ns max={}ns",
            self.count, self.mean, self.p50, self.p99, self.p999, self.max
        )
    }
}

/// Measures a message rate: grows the batch until one takes ~20 ms, sizes
/// batches to `per_run`, runs one to warm up and `reps` more, and returns
/// the median rate in messages per second.
pub fn rate(mut run: impl FnMut(u64) -> Duration, per_run: Duration, reps: usize) -> f64 {
    let mut n = 16u64;
    let probe = loop {
        let d = run(n);
        if d >= Duration::from_millis(20) || n >= 1 << 32 {
            break d;
        }
        n *= 4;
    };
    let per_msg = probe.as_secs_f64() / n as f64;
    // Float to integer: a batch count, clamped to a sane range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let batch = (per_run.as_secs_f64() / per_msg).clamp(16.0, 1e10) as u64;
    run(batch);
    let mut rates: Vec<f64> = (0..reps.max(1))
        .map(|_| batch as f64 / run(batch).as_secs_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}
