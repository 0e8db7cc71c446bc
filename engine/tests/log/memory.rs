//! The log over a shard's memory (`log::memory`), as memory topics run it.

use std::path::Path;

use engine::log::memory::{self, MemStorage};
use engine::log::{Log, Retention};

use crate::common::{batch, read_all, run, small_config};

/// Once retention ran, a memory log's files hold no more than its retention: a retired
/// segment is deleted, not kept (old records and all) as the next segment.
#[test]
fn a_memory_log_holds_no_more_than_its_retention() {
    run(|| async {
        let storage = MemStorage::default();
        let dir = Path::new("/shard-0/m-0");
        let retention_bytes = 4u64 << 20;
        let mut config = small_config();
        config.retention = Retention {
            ms: None,
            bytes: Some(retention_bytes),
        };
        let (log, _) = Log::open(storage.clone(), dir, memory::log_config(config))
            .await
            .unwrap();
        // 12 MiB of records through 2 MiB segments, retention after each MiB.
        for i in 0..4000u32 {
            log.append(&batch(5, i, 1, 3000), 1).await.unwrap();
            if i % 350 == 349 {
                log.wait_written(u64::from(i) + 1).await.unwrap();
                log.enforce_retention(i64::MAX).await.unwrap();
            }
        }
        log.wait_synced(4000).await.unwrap();
        log.enforce_retention(i64::MAX).await.unwrap();
        let offsets = log.offsets();
        assert!(offsets.log_start > 0, "retention deleted segments");
        assert_eq!(
            read_all(&log, offsets.log_start).await.len() as u64,
            4000 - offsets.log_start
        );
        // Records, index and checkpoint files, each rounded up to a 64 KiB chunk.
        let held = storage.bytes_under(dir);
        assert!(
            held <= retention_bytes + (512 << 10),
            "{held} bytes held for a retention of {retention_bytes}"
        );
        log.close().await.unwrap();
    });
}
