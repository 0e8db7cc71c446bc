//! Writes seed inputs for the fuzz targets in `protocol/fuzz`: valid frames of every api
//! and valid batches, each prefixed with the targets' mode byte.
//!
//! `cargo run -p ringmq-protocol --example fuzz_seeds -- protocol/fuzz/corpus`

#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use protocol::api::*;
use protocol::{BatchBuilder, FrameBuf, Header, encode_frame};

fn batch(records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.set_producer(9, 0, 0);
    for i in 0..records {
        let headers = [Header {
            key: b"trace",
            value: b"abc",
        }];
        let headers = if i % 2 == 0 { &headers[..] } else { &[] };
        let _ = builder.append(
            1_700_000_000_000 + i as i64,
            b"key",
            &[i as u8; 20],
            headers,
        );
    }
    builder.seal().map(<[u8]>::to_vec).unwrap_or_default()
}

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "protocol/fuzz/corpus".into());
    let root = Path::new(&root);
    let frames_dir = root.join("decode_frame");
    let batches_dir = root.join("validate_batch");
    std::fs::create_dir_all(&frames_dir)?;
    std::fs::create_dir_all(&batches_dir)?;

    let mut frames = FrameBuf::new();
    let produce = ProduceRequest {
        topic: "orders".into(),
        partition: 1,
        acks: Acks::All,
        timeout_ms: 100,
        batch: batch(3),
    };
    encode_frame(&mut frames, 1, &produce).expect("seed frame");
    encode_frame(
        &mut frames,
        2,
        &MetadataRequest {
            topics: vec!["a".into(), "b".into()],
        },
    )
    .expect("seed frame");
    encode_frame(
        &mut frames,
        3,
        &FetchResponse {
            error: ErrorCode::NONE,
            high_watermark: 3,
            log_start_offset: 0,
            records: batch(2),
        },
    )
    .expect("seed frame");
    encode_frame(
        &mut frames,
        4,
        &CreateTopicRequest {
            name: "t".into(),
            partitions: 2,
            replication_factor: 1,
            min_insync: 1,
            retention_ms: Some(1),
            retention_bytes: None,
            storage: StorageKind::Memory,
        },
    )
    .expect("seed frame");
    encode_frame(
        &mut frames,
        5,
        &ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: OffsetSpec::Timestamp(7),
        },
    )
    .expect("seed frame");

    let mut at = 0;
    let mut i = 0;
    while let Ok(Some((_, used))) = protocol::decode_frame(&frames[at..]) {
        let frame = &frames[at..at + used];
        at += used;
        i += 1;
        for mode in [0u8, 1] {
            let mut seed = vec![mode];
            seed.extend_from_slice(frame);
            std::fs::write(frames_dir.join(format!("frame-{i}-mode{mode}")), seed)?;
        }
    }
    let mut all = vec![0u8];
    all.extend_from_slice(&frames);
    std::fs::write(frames_dir.join("frames-back-to-back"), all)?;

    for records in [1, 4] {
        for mode in [0u8, 1] {
            let mut seed = vec![mode];
            seed.extend_from_slice(&batch(records));
            std::fs::write(
                batches_dir.join(format!("batch-{records}-mode{mode}")),
                seed,
            )?;
        }
    }
    println!("wrote seeds under {}", root.display());
    Ok(())
}
