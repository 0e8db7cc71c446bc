//! Shared inputs and tools of the criterion benches and the benchmark runners (`logbench`,
//! `brokerbench`).
#![forbid(unsafe_code)]

pub mod fio;
pub mod floor;
pub mod logcases;
pub mod machine;

use protocol::api::{Acks, ProduceRequest};
use protocol::{BatchBuilder, FrameBuf, encode_frame};

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
