//! Shared inputs for the criterion benches and, later, the scenario runner.
#![forbid(unsafe_code)]

pub mod fio;
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
