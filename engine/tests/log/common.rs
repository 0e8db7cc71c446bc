//! Helpers shared by the log tests.

use std::future::Future;
use std::path::Path;

use engine::log::storage::Storage;
use engine::log::{Durability, Log, LogConfig, Preallocate, Retention};
use glommio::{LocalExecutorBuilder, Placement};
use protocol::{BatchBuilder, Batches};

/// Runs `test` on a fresh glommio executor with a small io_memory, and waits for it.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .name("log-test")
        .spawn(test)
        .expect("spawn executor")
        .join()
        .expect("executor");
}

/// Small segments and buffers: tests reach rolls and retention within a few hundred KiB.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2 << 20,
        index_interval_bytes: 4096,
        write_buffer_bytes: (1 << 20) + 8192,
        durability: Durability::Fdatasync,
        preallocate: Preallocate::Zero,
        recycle_segments: true,
        retention: Retention::default(),
        group_commit_window_us: 0,
        group_commit_bytes: 64 << 10,
    }
}

/// The log in `dir` on `storage`, opened with `small_config()`.
pub async fn open_small<S: Storage + Clone>(storage: &S, dir: &Path) -> Log<S> {
    let (log, _) = Log::open(storage.clone(), dir, small_config())
        .await
        .unwrap();
    log
}

/// A batch of `count` records whose values say `(producer, seq)` and carry filler.
pub fn batch(producer: u32, first_seq: u32, count: u32, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for seq in first_seq..first_seq + count {
        let mut value = format!("{producer}:{seq}:").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        builder
            .append(1_700_000_000_000 + i64::from(seq), b"", &value, &[])
            .unwrap();
    }
    builder.seal().unwrap().to_vec()
}

/// Every record in `bytes` (concatenated batches) as (offset, value).
pub fn records(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for batch in Batches::new(bytes) {
        let batch = batch.expect("served batches are valid");
        for record in batch.records() {
            out.push((record.offset, record.value.to_vec()));
        }
    }
    out
}

/// Reads the whole log from `from`, one read at a time, checking offsets are dense.
pub async fn read_all<S: engine::log::storage::Storage>(
    log: &engine::log::Log<S>,
    from: u64,
) -> Vec<(u64, Vec<u8>)> {
    let end = log.offsets().next;
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut offset = from;
    while offset < end {
        let bytes = log.read(offset, 256 << 10, u64::MAX).await.expect("read");
        assert!(!bytes.is_empty(), "empty read at {offset} below end {end}");
        for (at, value) in records(&bytes) {
            if at < offset {
                continue;
            }
            assert_eq!(at, offset, "offsets are dense");
            out.push((at, value));
            offset += 1;
        }
    }
    out
}
