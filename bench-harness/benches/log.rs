//! CPU cost of `Log::append`: copying a 64 x 1 KiB batch (about 66 KiB) into the tail buffer
//! and stamping it, with no disk wait in the timed section.
//!
//! Each timed chunk appends at most `CHUNK_APPENDS` batches, few enough that `append` never
//! hands the tail to a write (it does once `WritePipeline::write_bytes_max`, 1 MiB, is
//! pending); the `wait_written` that empties the tail runs outside the timing, and each chunk
//! checks that its bytes went out in that one write. A chunk during which the segment rolled
//! is discarded and repeated (a roll waits for a sync).
//!
//! Run: `cargo bench -p ringmq-bench-harness --bench log`. `cargo test --benches` runs it once.
//! The log lives in a scratch directory under the current directory, which must be on a
//! real disk (O_DIRECT).

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bench_harness::machine::ScratchDir;
use bench_harness::sample_batch;
use criterion::async_executor::AsyncExecutor;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::log::storage::{DmaStorage, probe_dir};
use engine::log::{Log, LogConfig, Preallocate, Retention};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

/// Batches per timed chunk: the last of 16 appends finds 15 x 66 KiB (983 KiB) pending, below
/// the 1 MiB at which an append starts a write.
const CHUNK_APPENDS: u64 = 16;

/// criterion's async runner over a glommio executor living on the bench thread.
struct Glommio(LocalExecutor);

impl AsyncExecutor for &Glommio {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.0.run(future)
    }
}

fn append_64k(c: &mut Criterion) {
    let executor = match LocalExecutorBuilder::new(Placement::Unbound)
        .name("log-bench")
        .make()
    {
        Ok(executor) => Glommio(executor),
        Err(error) => panic!("glommio executor: {error}"),
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let scratch = match ScratchDir::create_in(&cwd, "log-bench") {
        Ok(scratch) => scratch,
        Err(error) => panic!("scratch dir in {}: {error}", cwd.display()),
    };
    let config = LogConfig {
        // Rolls are excluded from the timing; fallocated segments make them cheap.
        preallocate: Preallocate::Fallocate,
        retention: Retention {
            ms: None,
            bytes: Some(256 << 20),
        },
        ..LogConfig::default()
    };
    let dir = scratch.path().join("p-0");
    let opened = executor.0.run(async {
        probe_dir(scratch.path()).await?;
        Log::open(DmaStorage, &dir, config)
            .await
            .map(|(log, _)| log)
            .map_err(std::io::Error::other)
    });
    let log = match opened {
        Ok(log) => log,
        Err(error) => panic!("opening the log in {}: {error}", dir.display()),
    };
    let batch = sample_batch(64, 1024);

    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("append_64x1KiB_into_tail", |b| {
        let log = &log;
        let batch = &batch;
        b.to_async(&executor).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CHUNK_APPENDS.min(iters - done);
                let before = log.stats();
                let started = Instant::now();
                let mut next = 0;
                for _ in 0..n {
                    match log.append(black_box(batch), 1).await {
                        Ok(appended) => next = appended.next_offset,
                        Err(error) => panic!("append: {error}"),
                    }
                }
                let elapsed = started.elapsed();
                if let Err(error) = log.wait_written(next).await {
                    panic!("wait_written: {error}");
                }
                let chunk = log.stats().since(&before);
                if chunk.rolls != 0 {
                    // Keep disk use bounded; retry the chunk without the roll in it.
                    let _ = log.enforce_retention(0).await;
                    continue;
                }
                // `writes` counts completions, and a write handed off by an append completes
                // in a task of the log's own, after the timed section: so count them all
                // here. Nothing is in flight when a chunk starts, and `wait_written` writes
                // what the appends left in one write; a second came from an append.
                assert_eq!(
                    chunk.writes, 1,
                    "an append handed the tail to a write inside the timed section: lower CHUNK_APPENDS"
                );
                timed += elapsed;
                done += n;
            }
            timed
        });
    });
    group.finish();
    let closed = executor.0.run(log.close());
    if let Err(error) = closed {
        panic!("close: {error}");
    }
    drop(scratch);
}

criterion_group!(benches, append_64k);
criterion_main!(benches);
