//! The log on the real disk: glommio `DmaFile`s (O_DIRECT over io_uring) in a temp directory.

use std::rc::Rc;
use std::time::Duration;

use engine::log::storage::{DmaStorage, probe_dir};
use engine::log::{Log, LogError, Retention};

use crate::common::{batch, read_all, records, run, small_config};

#[test]
fn dropped_log_reopens_with_every_written_batch() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let dir = tmp.path().join("orders-0");
        {
            let (log, recovery) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
            assert_eq!(recovery.segments, 1);
            for i in 0..300u32 {
                let appended = log.append(&batch(1, i * 4, 4, 2000), 1).await.unwrap();
                assert_eq!(appended.base_offset, u64::from(i) * 4);
                if i % 3 == 0 {
                    log.wait_synced(appended.next_offset).await.unwrap();
                } else {
                    log.wait_written(appended.next_offset).await.unwrap();
                }
            }
            assert!(
                log.stats().rolls >= 1,
                "300 x 8 KiB batches roll a 2 MiB segment"
            );
            // Dropped without close: no index for the active segment, no clean marker.
        }
        let (log, recovery) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        assert_eq!(recovery.truncated, None);
        assert!(!recovery.resumed_from_index);
        assert_eq!(log.offsets().next, 1200);
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 1200);
        for (offset, value) in all {
            assert!(value.starts_with(format!("1:{offset}:").as_bytes()));
        }
        log.close().await.unwrap();
    });
}

/// The tail buffer starts small and grows for a batch that does not fit (up to one of the
/// largest), then shrinks back; every batch lands whole and in order, across a reopen.
#[test]
fn small_and_largest_batches_interleave_through_a_growing_tail() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let dir = tmp.path().join("mixed-0");
        let sizes = [
            100,
            (1 << 20) - 4096,
            100,
            100,
            300_000,
            70_000,
            (1 << 20) - 4096,
            10,
        ];
        let mut next = 0u32;
        {
            let (log, _) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
            for (i, &value_bytes) in sizes.iter().enumerate() {
                let appended = log
                    .append(&batch(1, next, 1, value_bytes), 1)
                    .await
                    .unwrap();
                assert_eq!(appended.base_offset, u64::from(next));
                next += 1;
                if i % 2 == 1 {
                    log.wait_synced(appended.next_offset).await.unwrap();
                }
            }
            log.wait_synced(u64::from(next)).await.unwrap();
            let all = read_all(&log, 0).await;
            assert_eq!(all.len(), sizes.len());
            log.close().await.unwrap();
        }
        let (log, _) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), sizes.len());
        for ((offset, value), &value_bytes) in all.iter().zip(&sizes) {
            assert!(value.starts_with(format!("1:{offset}:").as_bytes()));
            assert_eq!(value.len(), value_bytes.max(value.len()));
        }
        log.close().await.unwrap();
    });
}

#[test]
fn torn_tail_on_disk_is_cut_at_the_first_invalid_batch() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let dir = tmp.path().join("t-0");
        let batch_bytes = batch(2, 0, 3, 300).len() as u64;
        {
            let (log, _) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
            for i in 0..10 {
                let appended = log.append(&batch(2, i * 3, 3, 300), 1).await.unwrap();
                log.wait_synced(appended.next_offset).await.unwrap();
            }
        }
        // Cut the 10th batch in half and leave garbage after it, as a torn write would.
        let segment = dir.join("00000000000000000000.log");
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap();
            file.seek(SeekFrom::Start(9 * batch_bytes + batch_bytes / 2))
                .unwrap();
            file.write_all(&[0xab; 5000]).unwrap();
            file.sync_all().unwrap();
        }
        let (log, recovery) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        let cut = recovery.truncated.expect("torn tail reported");
        assert_eq!(cut.position, 9 * batch_bytes);
        assert_eq!(cut.offset, 27);
        assert_eq!(log.offsets().next, 27);
        // The segment is sealed at the cut: cut to the block holding it, with the garbage
        // gone, and a new segment takes the appends.
        let raw = std::fs::read(&segment).unwrap();
        assert_eq!(raw.len() as u64, (9 * batch_bytes).div_ceil(4096) * 4096);
        assert!(raw[(9 * batch_bytes) as usize..].iter().all(|&b| b == 0));
        assert!(dir.join("00000000000000000027.log").exists());
        let appended = log.append(&batch(3, 0, 2, 100), 2).await.unwrap();
        assert_eq!(appended.base_offset, 27);
        log.wait_synced(appended.next_offset).await.unwrap();
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 29);
        assert!(all[27].1.starts_with(b"3:0:"));
        log.close().await.unwrap();
        let (log, recovery) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        assert_eq!(recovery.truncated, None);
        assert!(
            recovery.resumed_from_index,
            "clean close resumes from the index"
        );
        assert_eq!(log.offsets().next, 29);
    });
}

#[test]
fn reads_span_segments_memory_and_disk() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let (log, _) = Log::open(DmaStorage, &tmp.path().join("r-0"), small_config())
            .await
            .unwrap();
        let mut next = 0;
        for i in 0..900u32 {
            next = log
                .append(&batch(4, i * 2, 2, 2500), 1)
                .await
                .unwrap()
                .next_offset;
            if i % 50 == 0 {
                log.wait_written(next).await.unwrap();
            }
        }
        // The last batches are still in the tail buffer: reads are served from memory.
        assert!(log.offsets().written < next);
        assert!(log.stats().rolls >= 2);
        let before = log.stats();
        let last = log.read(1798, 10_000, u64::MAX).await.unwrap();
        assert_eq!(records(&last).len(), 2);
        assert_eq!(
            log.stats().since(&before).disk_reads,
            0,
            "the tail is in memory"
        );
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 1800);
        let read = log.stats().since(&before);
        assert!(read.disk_reads > 0 && read.disk_read_bytes > 0, "{read:?}");
        // A read from the middle starts at the batch holding the offset.
        let mid = log.read(1001, 10_000, u64::MAX).await.unwrap();
        let got = records(&mid);
        assert_eq!(got[0].0, 1000);
        assert!(
            got.iter()
                .all(|(o, v)| v.starts_with(format!("4:{o}:").as_bytes()))
        );
        assert!(mid.len() <= 10_000);
        // max_offset cuts at batch boundaries; max_bytes still returns one whole batch.
        let capped = log.read(0, 1, 4).await.unwrap();
        assert_eq!(records(&capped).len(), 2);
        assert!(log.read(1800, 1000, u64::MAX).await.unwrap().is_empty());
        assert!(matches!(
            log.read(1801, 1000, u64::MAX).await,
            Err(LogError::OffsetOutOfRange { offset: 1801, .. })
        ));
        log.wait_synced(next).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 1800);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_whole_sealed_segments_only() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let mut config = small_config();
        config.retention = Retention {
            ms: None,
            bytes: Some(3 << 20),
        };
        let dir = tmp.path().join("ret-0");
        let (log, _) = Log::open(DmaStorage, &dir, config).await.unwrap();
        for i in 0..3000u32 {
            log.append(&batch(5, i, 1, 3000), 1).await.unwrap();
        }
        log.wait_synced(3000).await.unwrap();
        let before = log.offsets();
        let deleted = log.enforce_retention(i64::MAX).await.unwrap();
        assert!(deleted >= 1);
        let after = log.offsets();
        assert!(after.log_start > before.log_start);
        assert_eq!(after.next, 3000);
        assert!(matches!(
            log.read(0, 100, u64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            read_all(&log, after.log_start).await.len() as u64,
            3000 - after.log_start
        );
        // Age: every sealed record is older than now + 1 day, so all sealed segments go, and
        // the active one stays.
        let mut config = small_config();
        config.retention = Retention {
            ms: Some(1),
            bytes: None,
        };
        // Closed cleanly: the active segment (a recycled file by now) stays the active one.
        // (After an unclean stop recovery would seal it and start a new one.)
        log.close().await.unwrap();
        let (log, _) = Log::open(DmaStorage, &dir, config).await.unwrap();
        log.enforce_retention(i64::MAX / 2).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(offsets.next, 3000);
        assert!(
            offsets.log_start < 3000,
            "the active segment is never deleted"
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let logs = names
            .iter()
            .filter(|n| n.to_str().unwrap().ends_with(".log"))
            .count();
        assert_eq!(logs, 1);
    });
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let (log, _) = Log::open(DmaStorage, &tmp.path().join("gc-0"), small_config())
            .await
            .unwrap();
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for producer in 0..16u32 {
            let log = Rc::clone(&log);
            tasks.push(glommio::spawn_local(async move {
                for seq in 0..50 {
                    let appended = log.append(&batch(producer, seq, 1, 1000), 1).await.unwrap();
                    log.wait_synced(appended.next_offset).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 800);
        assert!(
            stats.syncs < 400,
            "group commit: {} syncs for 800 durable appends",
            stats.syncs
        );
        assert_eq!(log.offsets().synced, 800);
        log.close().await.unwrap();
    });
}

#[test]
fn the_log_prepares_the_next_segment_at_half_full_and_the_roll_uses_it() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let dir = tmp.path().join("m-0");
        let (log, _) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        let spare_ready = || dir.join("spare.ready").exists();
        // 300 x 3 KiB: under half of the 2 MiB segment, no spare yet.
        for i in 0..300u32 {
            log.append(&batch(6, i, 1, 3000), 1).await.unwrap();
        }
        log.wait_synced(300).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert!(
            !spare_ready(),
            "a segment under half full needs no spare yet"
        );
        assert_eq!(log.stats().spares_prepared, 0);
        // Past half: the log starts preparing it by itself (no maintain), zeroing at the
        // appends' pace, so that it is done by three quarters full and not before.
        for i in 300..400u32 {
            log.append(&batch(6, i, 1, 3000), 1).await.unwrap();
        }
        log.wait_synced(400).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(200)).await;
        assert!(
            !spare_ready() && dir.join("spare.tmp").exists(),
            "the spare is begun at half full and paced by the appends"
        );
        for i in 400..560u32 {
            log.append(&batch(6, i, 1, 3000), 1).await.unwrap();
        }
        for _ in 0..500 {
            if spare_ready() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(spare_ready(), "no spare 5 s after passing three quarters");
        assert_eq!(log.stats().spares_prepared, 1);
        // The roll takes it, whether ready or still being prepared, and makes none itself.
        for i in 560..800u32 {
            log.append(&batch(6, i, 1, 3000), 1).await.unwrap();
        }
        log.wait_synced(800).await.unwrap();
        let stats = log.stats();
        assert!(stats.rolls >= 1);
        assert_eq!(stats.rolls_without_spare, 0, "{stats:?}");
        assert_eq!(read_all(&log, 0).await.len(), 800);
        // Close abandons a spare still being prepared and removes its file before it returns.
        log.close().await.unwrap();
        assert!(!dir.join("spare.tmp").exists());
        drop(log);
        let (log, _) = Log::open(DmaStorage, &dir, small_config()).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 800);
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_window_gathers_appends_that_arrive_apart() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let mut syncs = Vec::new();
        for (name, window_us) in [("no-window", 0), ("window", 2000)] {
            let mut config = small_config();
            config.group_commit_window_us = window_us;
            config.group_commit_bytes = 1 << 20;
            let (log, _) = Log::open(DmaStorage, &tmp.path().join(name), config)
                .await
                .unwrap();
            let log = Rc::new(log);
            let tasks: Vec<_> = (0..8u32)
                .map(|producer| {
                    let log = Rc::clone(&log);
                    glommio::spawn_local(async move {
                        // Arrivals 50 us apart: too far apart to share a commit by chance.
                        glommio::timer::sleep(std::time::Duration::from_micros(
                            50 * u64::from(producer),
                        ))
                        .await;
                        let appended = log.append(&batch(producer, 0, 1, 100), 1).await.unwrap();
                        log.wait_synced(appended.next_offset).await.unwrap();
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            syncs.push(log.stats().syncs);
            log.close().await.unwrap();
        }
        let (without, with) = (syncs[0], syncs[1]);
        assert!(
            with <= 2,
            "a 2 ms window should gather 8 appends within 0.4 ms: {with} syncs"
        );
        assert!(with < without, "window {with} syncs vs none {without}");
    });
}

#[test]
fn relative_log_directory_opens() {
    run(|| async {
        let tmp = tempfile::tempdir_in(".").unwrap();
        let name = tmp.path().file_name().unwrap().to_owned();
        let relative = std::path::Path::new(".").join(&name).join("p-0");
        probe_dir(tmp.path()).await.unwrap();
        let (log, _) = Log::open(DmaStorage, &relative, small_config())
            .await
            .unwrap();
        let appended = log.append(&batch(1, 0, 1, 10), 1).await.unwrap();
        log.wait_synced(appended.next_offset).await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(DmaStorage, &relative, small_config())
            .await
            .unwrap();
        assert_eq!(log.offsets().next, 1);
    });
}

/// The broker's throughput case on the real disk: 64 KiB batches appended by one task per
/// request, 16 in flight, each awaiting its write (every few its sync), while maintenance
/// prepares spare segments and a reader tails the log, across many segment rolls. No wait may
/// stall: the log's own tasks must always carry every append to the disk.
#[test]
fn stress_many_appenders_across_rolls_never_stall() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        probe_dir(tmp.path()).await.unwrap();
        let mut config = small_config();
        config.segment_bytes = 8 << 20;
        config.write_buffer_bytes = 2 << 20;
        let (log, _) = Log::open(DmaStorage, &tmp.path().join("st-0"), config)
            .await
            .unwrap();
        let log = Rc::new(log);
        let done = Rc::new(std::cell::Cell::new(false));
        let maintenance = {
            let (log, done) = (Rc::clone(&log), Rc::clone(&done));
            glommio::spawn_local(async move {
                while !done.get() {
                    log.maintain(0).await.unwrap();
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
        };
        let reader = {
            let (log, done) = (Rc::clone(&log), Rc::clone(&done));
            glommio::spawn_local(async move {
                let mut at = 0;
                while !done.get() {
                    let end = log.offsets().next;
                    if end > at {
                        let bytes = log.read(at, 1 << 20, end).await.unwrap();
                        at = records(&bytes).last().map_or(at, |r| r.0 + 1);
                    }
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
                }
            })
        };
        let in_flight = Rc::new(glommio::sync::Semaphore::new(16));
        let b = Rc::new(batch(0, 0, 60, 1000));
        let mut requests = Vec::new();
        for i in 0..4000u32 {
            let permit = in_flight.acquire_static_permit(1).await.unwrap();
            let (log, b) = (Rc::clone(&log), Rc::clone(&b));
            requests.push(
                glommio::spawn_local(async move {
                    let appended = log.append(&b, 1).await.unwrap();
                    let wait = async {
                        if i % 7 == 0 {
                            log.wait_synced(appended.next_offset).await
                        } else {
                            log.wait_written(appended.next_offset).await
                        }
                    };
                    let limit = std::time::Duration::from_secs(10);
                    let waited = glommio::timer::timeout(limit, async { Ok(wait.await) }).await;
                    match waited {
                        Ok(result) => result.unwrap(),
                        Err(_) => panic!(
                            "append {i}: stalled 10 s; offsets {:?} stats {:?}",
                            log.offsets(),
                            log.stats()
                        ),
                    }
                    drop(permit);
                })
                .detach(),
            );
        }
        for request in requests {
            request.await;
        }
        done.set(true);
        maintenance.await;
        reader.await;
        let next = log.offsets().next;
        log.wait_synced(next).await.unwrap();
        assert!(log.stats().rolls > 10, "{:?}", log.stats());
        log.close().await.unwrap();
    });
}
