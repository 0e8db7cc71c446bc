//! Codec micro-benchmarks: the CPU cost the broker pays per produce before any I/O.
//!
//! Run: `cargo bench -p ringmq-bench-harness --bench protocol`.
//! `cargo test --benches` runs each once so none can rot.

use std::hint::black_box;

use bench_harness::{produce_frame, sample_batch};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocol::api::ProduceRequest;
use protocol::{BatchBuilder, BatchView, decode_frame, split_frame};

const RECORDS: usize = 100;
const VALUE_BYTES: usize = 1024;

fn batch_build(c: &mut Criterion) {
    let value = vec![0x5a; VALUE_BYTES];
    let keys: Vec<String> = (0..RECORDS).map(|i| format!("key-{i:012}")).collect();
    let mut builder = BatchBuilder::new();
    let batch_bytes = sample_batch(RECORDS, VALUE_BYTES).len() as u64;
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(batch_bytes));
    group.bench_function("build_100x1KiB", |b| {
        b.iter(|| {
            builder.clear();
            for (i, key) in keys.iter().enumerate() {
                let _ = builder.append(1_700_000_000_000 + i as i64, key.as_bytes(), &value, &[]);
            }
            black_box(builder.seal().map(<[u8]>::len).unwrap_or(0))
        })
    });
    let batch = sample_batch(RECORDS, VALUE_BYTES);
    group.bench_function("validate_iterate_100x1KiB", |b| {
        b.iter(|| {
            let Ok(view) = BatchView::new(black_box(&batch)) else {
                return 0;
            };
            view.records().map(|r| r.value.len()).sum::<usize>()
        })
    });
    group.finish();
}

/// The whole broker-side check of a produce frame: header and its crc, body crc, rkyv
/// access, batch crc and record walk. This is the figure the 10 GB/s target is about.
fn produce_frame_validate(c: &mut Criterion) {
    let frame = produce_frame(sample_batch(RECORDS, VALUE_BYTES));
    let mut group = c.benchmark_group("produce_frame");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode_access_validate_100x1KiB", |b| {
        b.iter(|| {
            let Ok(Some((frame, _))) = decode_frame(black_box(&frame)) else {
                return 0;
            };
            let Ok(request) = frame.access::<ProduceRequest>() else {
                return 0;
            };
            let Ok(batch) = BatchView::new(request.batch.as_slice()) else {
                return 0;
            };
            batch.records().count()
        })
    });
    // What the broker does: the batch is hashed once for both crcs (`crc::combine`).
    group.bench_function("split_access_check_once_100x1KiB", |b| {
        b.iter(|| {
            let Ok(Some((frame, _))) = split_frame(black_box(&frame)) else {
                return 0;
            };
            let Ok(request) = frame.access::<ProduceRequest>() else {
                return 0;
            };
            let Ok(Ok(batch)) = frame.check_body_with_batch(request.batch.as_slice()) else {
                return 0;
            };
            batch.records().count()
        })
    });
    group.finish();
}

/// Joining two crcs across a 64 KiB batch: ringmq's against the `crc32c` crate's.
fn crc32c_combine_64kib(c: &mut Criterion) {
    let len = 64 << 10;
    let mut group = c.benchmark_group("crc32c_combine");
    group.bench_function("ringmq_64KiB", |b| {
        b.iter(|| protocol::crc::combine(black_box(0x1234_5678), black_box(7), black_box(len)))
    });
    group.bench_function("crc32c_crate_64KiB", |b| {
        b.iter(|| crc32c::crc32c_combine(black_box(0x1234_5678), black_box(7), black_box(len)))
    });
    group.finish();
}

/// rkyv access alone, on frames whose batch holds 1, 100 and 1000 records: the cost must
/// not grow with the record count, because the batch is one opaque byte vector.
fn rkyv_access_by_record_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("rkyv_access");
    for records in [1, 100, 1000] {
        let frame = produce_frame(sample_batch(records, VALUE_BYTES));
        let Ok(Some((decoded, _))) = decode_frame(&frame) else {
            panic!("bench frame invalid")
        };
        group.bench_with_input(
            BenchmarkId::from_parameter(records),
            &decoded,
            |b, decoded| {
                b.iter(|| {
                    black_box(decoded)
                        .access::<ProduceRequest>()
                        .map(|r| r.batch.len())
                })
            },
        );
    }
    group.finish();
}

fn crc32c_1mib(c: &mut Criterion) {
    let bytes = vec![0xa5u8; 1 << 20];
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| crc32c::crc32c(black_box(&bytes))));
    group.finish();
}

criterion_group!(
    benches,
    batch_build,
    produce_frame_validate,
    rkyv_access_by_record_count,
    crc32c_1mib,
    crc32c_combine_64kib
);
criterion_main!(benches);
