//! What a worker measures: latency histograms and counters, merged (never averaged) at the end.
//!
//! Every worker owns its [`Stats`]; nothing on the send or receive path is shared between
//! threads except the [`Live`] counters the progress line reads. At the end the coordinator
//! [`Stats::merge`]s the workers' histograms, which gives exactly the histogram of all
//! samples together.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::rate::Nanos;

/// Largest latency a histogram records, in ns (one hour); larger values saturate to it.
pub const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// Significant digits of every histogram: values are exact to 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        match Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS) {
            Ok(histogram) => Latency { histogram },
            // The bounds are constants hdrhistogram accepts (low >= 1, high >= 2 * low,
            // sigfig <= 5): failing here is a bug in them, which every test would catch.
            Err(error) => unreachable!("histogram bounds: {error}"),
        }
    }

    /// Records one sample; values above `LATENCY_NS_MAX` saturate, 0 counts as 1 ns.
    pub fn record(&mut self, latency_ns: Nanos) {
        self.histogram
            .saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
    }

    /// Adds every sample of `other`. Both have the same bounds, so this cannot fail.
    pub fn merge(&mut self, other: &Latency) {
        if self.histogram.add(&other.histogram).is_err() {
            // Unreachable with equal bounds; fall back to a sample-by-sample copy.
            for value in other.histogram.iter_recorded() {
                self.histogram
                    .saturating_record_n(value.value_iterated_to(), value.count_at_value());
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    pub fn reset(&mut self) {
        self.histogram.reset();
    }

    /// Value at `quantile` (0..=1) in ns; 0 when empty.
    pub fn quantile_ns(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_quantile(quantile)
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// Percentiles in microseconds, or `None` without samples.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.histogram.is_empty() {
            return None;
        }
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1e3;
        Some(Percentiles {
            p50: us(0.50),
            p90: us(0.90),
            p99: us(0.99),
            p999: us(0.999),
            p9999: us(0.9999),
            max: self.histogram.max() as f64 / 1e3,
            samples: self.histogram.len(),
        })
    }

    /// `(percentile, latency_us)` points for an HdrHistogram-style percentile plot.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(5)
            .map(|v| {
                (
                    v.quantile_iterated_to() * 100.0,
                    v.value_iterated_to() as f64 / 1e3,
                )
            })
            .collect()
    }
}

/// Latency percentiles in microseconds. Also the latency record of the JSON report
/// (`ack_latency_us`, ...): the field names are part of that format.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    /// Samples behind the figures.
    pub samples: u64,
}

/// One worker's measurements. Only messages whose intended send time lies in the measured
/// window (after warm-up) are counted or recorded.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Intended send time to acknowledgement.
    pub ack: Latency,
    /// Intended send time to a consumer's receipt.
    pub e2e: Latency,
    /// Intended send time to the moment the message was handed to the socket.
    pub send_gap: Latency,
    pub sent: u64,
    pub sent_bytes: u64,
    pub acked: u64,
    pub received: u64,
    pub received_bytes: u64,
    /// Acks and deliveries that arrived while the window measured (`Window::completes_in`),
    /// of any message: throughput counts these, so a target that falls behind shows the rate
    /// it delivered instead of catching up unseen while loadgen drains.
    pub acked_in_window: u64,
    pub received_in_window: u64,
    /// Requests the target answered with an error (each counts its messages).
    pub failed: u64,
    /// Messages a consumer never got because retention deleted them before it read them (it
    /// fell behind by more than the topic keeps, and skipped to the log start).
    pub lost_to_retention: u64,
}

impl Stats {
    pub fn merge(&mut self, other: &Stats) {
        self.ack.merge(&other.ack);
        self.e2e.merge(&other.e2e);
        self.send_gap.merge(&other.send_gap);
        self.sent += other.sent;
        self.sent_bytes += other.sent_bytes;
        self.acked += other.acked;
        self.received += other.received;
        self.received_bytes += other.received_bytes;
        self.acked_in_window += other.acked_in_window;
        self.received_in_window += other.received_in_window;
        self.failed += other.failed;
        self.lost_to_retention += other.lost_to_retention;
    }
}

/// Counters and the last second's latencies, shared with the progress line.
///
/// Workers bump the counters with relaxed atomics (one per request or fetch, not per
/// message) and hand over their interval histogram about once a second.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub failed: AtomicU64,
    /// Latencies since the progress line last looked (ack latency where there are acks,
    /// else end-to-end).
    interval: Mutex<Latency>,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds a worker's interval histogram (and empties it).
    pub fn publish(&self, interval: &mut Latency) {
        if let Ok(mut shared) = self.interval.lock() {
            shared.merge(interval);
        }
        interval.reset();
    }

    /// Takes the latencies gathered since the last call.
    pub fn take_interval(&self) -> Latency {
        match self.interval.lock() {
            Ok(mut shared) => std::mem::take(&mut *shared),
            Err(_) => Latency::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn merge_equals_the_histogram_of_the_union() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let samples: Vec<u64> = (0..200_000)
            .map(|_| {
                // A long-tailed mix: mostly tens of microseconds, some milliseconds, a few
                // above the histogram's bound (saturated in both).
                match rng.random_range(0..1000) {
                    0 => LATENCY_NS_MAX + rng.random_range(0..1000),
                    1..=20 => rng.random_range(1_000_000..50_000_000),
                    _ => rng.random_range(0..100_000),
                }
            })
            .collect();
        let mut union = Latency::new();
        for &s in &samples {
            union.record(s);
        }
        let mut workers: Vec<Stats> = (0..7).map(|_| Stats::default()).collect();
        for &s in &samples {
            let worker = rng.random_range(0..workers.len());
            workers[worker].e2e.record(s);
            workers[worker].received += 1;
        }
        let mut merged = Stats::default();
        for worker in &workers {
            merged.merge(worker);
        }
        assert_eq!(merged.received, samples.len() as u64);
        assert_eq!(merged.e2e.len(), union.len());
        assert!(merged.e2e.histogram() == union.histogram());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(merged.e2e.quantile_ns(q), union.quantile_ns(q), "q {q}");
        }
        assert_eq!(merged.e2e.summary(), union.summary());
    }

    #[test]
    fn averaging_workers_would_differ_from_merging() {
        // The reason we merge: one slow worker dominates the tail of the union.
        let mut fast = Latency::new();
        let mut slow = Latency::new();
        for _ in 0..990 {
            fast.record(10_000);
        }
        for _ in 0..10 {
            slow.record(5_000_000);
        }
        let mut merged = fast.clone();
        merged.merge(&slow);
        let p99_mean = (fast.quantile_ns(0.995) + slow.quantile_ns(0.995)) / 2;
        assert!(merged.quantile_ns(0.995) >= 4_990_000);
        assert_ne!(merged.quantile_ns(0.995), p99_mean);
    }

    #[test]
    fn summary_is_in_microseconds() {
        let mut latency = Latency::new();
        assert!(latency.summary().is_none());
        for us in 1..=1000u64 {
            latency.record(us * 1000);
        }
        let summary = latency.summary().unwrap();
        assert!((summary.p50 - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max - 1000.0).abs() < 1.0, "{summary:?}");
        assert_eq!(summary.samples, 1000);
        let curve = latency.percentile_curve();
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
    }
}
