//! Shared inputs and tools of the criterion benches and the benchmark runners (`logbench`,
//! `brokerbench`).
#![forbid(unsafe_code)]

pub mod fio;
pub mod floor;
pub mod logcases;
pub mod machine;
pub mod noise;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use protocol::api::{Acks, ProduceRequest};
use protocol::{BatchBuilder, FrameBuf, encode_frame};

/// An open-loop schedule: `total` sends (or arrivals), send i due at `started + i / rate`,
/// whenever the one before it actually went. The latency case and the disk floor under it
/// share it, so the floor's records arrive as the case's are sent.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    pub started: Instant,
    interval_ns: u64,
    pub total: u64,
}

impl OpenLoop {
    /// `rate` a second for `seconds`, the first due 10 ms from now (time to set up).
    pub fn new(rate: u64, seconds: u64) -> OpenLoop {
        OpenLoop {
            started: Instant::now() + Duration::from_millis(10),
            interval_ns: 1_000_000_000 / rate.max(1),
            total: rate.saturating_mul(seconds),
        }
    }

    /// When send `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.started + Duration::from_nanos(self.interval_ns.saturating_mul(i))
    }
}

/// Asks for the least timer slack for the calling thread: Linux lets a sleeping thread
/// oversleep by it (50 us by default), and an open-loop sender or a floor's writer that wakes
/// late is timed as the system under test.
pub fn least_timer_slack(who: &str) {
    if let Err(error) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1)) {
        eprintln!("{who}: timer slack stays at the default ({error})");
    }
}

/// A histogram of microseconds, from 1 us to a minute.
pub fn micros_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
}

/// A sealed batch of `records` records, each with a 16-byte key and a `value_bytes` value.
pub fn sample_batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    let value = vec![0x5a; value_bytes];
    for i in 0..records {
        let key = format!("key-{i:012}");
        let appended = builder.append(1_700_000_000_000 + i as i64, key.as_bytes(), &value, &[]);
        assert!(appended.is_ok(), "sample batch too large: {appended:?}");
    }
    match builder.seal() {
        Ok(bytes) => bytes.to_vec(),
        Err(error) => panic!("sample batch: {error}"),
    }
}

/// A produce frame carrying `batch`, as a client would send it.
pub fn produce_frame(batch: Vec<u8>) -> FrameBuf {
    let request = ProduceRequest {
        topic: "bench".into(),
        partition: 0,
        acks: Acks::Leader,
        timeout_ms: 5_000,
        batch,
    };
    let mut frame = FrameBuf::new();
    if let Err(error) = encode_frame(&mut frame, 1, &request) {
        panic!("produce frame: {error}");
    }
    frame
}

/// The median of `values`: the middle one, or the mean of the two middle ones; NaN when there
/// are none. Runs are few (3-5), so sorting a copy is fine.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match (sorted.get(n.wrapping_sub(1) / 2), sorted.get(n / 2)) {
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_is_the_middle_value_or_the_mean_of_the_two() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([7.0]), 7.0);
        assert!(median([]).is_nan());
    }
}
