//! The write pipeline under a gated disk: a `Storage` wrapper over `SimStorage` that holds
//! chosen writes of the log's segment files until the test releases them (from the review of
//! the pipelined writes).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use engine::log::sim::{Fault, Op, SimBuffer, SimFile, SimStorage};
use engine::log::storage::{OpenFlags, Storage, StorageFile};
use engine::log::{Health, Log, LogError, WritePipeline};
use futures_lite::future::yield_now;

use crate::common::{batch, open_small, read_all, records, run, small_config};

#[derive(Default)]
struct Gate {
    held: RefCell<BTreeSet<u64>>,
    started: Cell<u64>,
    finished: Cell<u64>,
    /// Writes that completed while write `held_first` was still held.
    completed_while_held: Cell<u64>,
    bytes_while_held: Cell<u64>,
    /// Syncs of a log file wait while this is set.
    hold_syncs: Cell<bool>,
    /// Syncs of a log file (numbered from 0 as they start, as `syncs_started` counts them)
    /// that wait while their number is here.
    held_syncs: RefCell<BTreeSet<u64>>,
    syncs_started: Cell<u64>,
    /// Writes of the log's checkpoint wait while this is set.
    hold_checkpoint_writes: Cell<bool>,
    checkpoint_writes_started: Cell<u64>,
}

#[derive(Clone)]
struct Gated {
    inner: SimStorage,
    gate: Rc<Gate>,
}

struct GatedFile {
    inner: SimFile,
    gate: Rc<Gate>,
    is_log: bool,
    is_checkpoint: bool,
}

impl StorageFile for GatedFile {
    type Buffer = SimBuffer;
    type ReadBuf = Vec<u8>;
    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        self.inner.alloc_buffer(len)
    }
    async fn write_at(&self, buf: Rc<SimBuffer>, pos: u64) -> io::Result<usize> {
        if self.is_checkpoint {
            let n = self.gate.checkpoint_writes_started.get();
            self.gate.checkpoint_writes_started.set(n + 1);
            while self.gate.hold_checkpoint_writes.get() {
                yield_now().await;
            }
        }
        if !self.is_log {
            return self.inner.write_at(buf, pos).await;
        }
        let n = self.gate.started.get();
        self.gate.started.set(n + 1);
        while self.gate.held.borrow().contains(&n) {
            yield_now().await;
        }
        let len = (*buf).as_ref().len() as u64;
        let r = self.inner.write_at(buf, pos).await;
        self.gate.finished.set(self.gate.finished.get() + 1);
        if !self.gate.held.borrow().is_empty() {
            self.gate
                .completed_while_held
                .set(self.gate.completed_while_held.get() + 1);
            self.gate
                .bytes_while_held
                .set(self.gate.bytes_while_held.get() + len);
        }
        r
    }
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(pos, len).await
    }
    async fn sync(&self) -> io::Result<()> {
        if self.is_log {
            let n = self.gate.syncs_started.get();
            self.gate.syncs_started.set(n + 1);
            while self.gate.hold_syncs.get() || self.gate.held_syncs.borrow().contains(&n) {
                yield_now().await;
            }
        }
        self.inner.sync().await
    }
    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len).await
    }
    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }
    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len).await
    }
    async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}

impl Storage for Gated {
    type File = GatedFile;
    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<GatedFile> {
        let inner = self.inner.open(path, flags).await?;
        let is_log = path.extension().is_some_and(|e| e == "log");
        let is_checkpoint = path.file_name().is_some_and(|name| name == "checkpoint");
        Ok(GatedFile {
            inner,
            gate: Rc::clone(&self.gate),
            is_log,
            is_checkpoint,
        })
    }
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path).await
    }
    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path).await
    }
    async fn sleep(&self, duration: Duration) {
        self.inner.sleep(duration).await
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/data/pipeline-0")
}

fn gated(seed: u64) -> Gated {
    Gated {
        inner: SimStorage::new(seed),
        gate: Rc::default(),
    }
}

async fn spin_until(mut cond: impl FnMut() -> bool, max: u32) -> bool {
    for _ in 0..max {
        if cond() {
            return true;
        }
        yield_now().await;
    }
    cond()
}

/// `fut`'s output, or `None` when it is not done within `max` turns of the executor: a wedged
/// log fails the assertion instead of hanging the test.
async fn within<T>(max: u32, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        for _ in 0..max {
            yield_now().await;
        }
        None
    })
    .await
}

/// Runs `fut` until `issued` holds (the log handed its I/O to the disk, within `max` turns
/// of the executor), then drops it, as a produce timeout would: `None`. `Some` with its output
/// if it finished first.
async fn drop_once<T>(
    fut: impl Future<Output = T>,
    mut issued: impl FnMut() -> bool,
    max: u32,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        spin_until(&mut issued, max).await;
        None
    })
    .await
}

/// `close` returns, and succeeds, within a bounded number of turns.
async fn assert_closes<S: Storage>(log: &Log<S>) {
    let closed = within(20_000, log.close()).await;
    assert!(matches!(closed, Some(Ok(()))), "close: {closed:?}");
}

fn one_block_value() -> usize {
    let overhead = batch(1, 0, 1, 4000).len() - 4000;
    4096 - overhead
}

/// Appends batch `seq` with one `value`-byte record; its next offset.
async fn append_one(log: &Log<Gated>, seq: u32, value: usize) -> u64 {
    let appended = log.append(&batch(1, seq, 1, value), 1).await.unwrap();
    appended.next_offset
}

/// Waits, in a task of its own, until the log is durable up to `next`.
fn wait_synced_in_task(log: &Rc<Log<Gated>>, next: u64) -> glommio::Task<Result<(), LogError>> {
    let log = Rc::clone(log);
    glommio::spawn_local(async move { log.wait_synced(next).await })
}

/// The `skip`+1-th fdatasync of a log file to reach the disk fails with EIO.
fn log_sync_fault(skip: u32) -> Fault {
    Fault {
        op: Op::Sync,
        path_contains: Some(".log".into()),
        errno: libc::EIO,
        skip,
        times: 1,
    }
}

/// Each waiter saw the log fail on an fdatasync.
async fn assert_failed_on_sync(waiters: [glommio::Task<Result<(), LogError>>; 2]) {
    for waiter in waiters {
        let waited = within(20_000, waiter).await;
        assert!(
            matches!(
                waited,
                Some(Err(LogError::Failed {
                    op: "fdatasync",
                    ..
                }))
            ),
            "{waited:?}"
        );
    }
}

/// Appends record A (`value` bytes, sequence 0) and waits in a task for it to be durable,
/// with A's fdatasync held in flight once it has started: that sync's number and the
/// waiter.
async fn append_with_sync_held(
    storage: &Gated,
    log: &Rc<Log<Gated>>,
    value: usize,
) -> (u64, glommio::Task<Result<(), LogError>>) {
    let first = storage.gate.syncs_started.get();
    storage.gate.held_syncs.borrow_mut().insert(first);
    let a = append_one(log, 0, value).await;
    let wait_a = wait_synced_in_task(log, a);
    assert!(spin_until(|| storage.gate.syncs_started.get() > first, 1000).await);
    (first, wait_a)
}

/// Finding: done-but-unretired writes are not counted against `writes_in_flight`; with one
/// write stuck, the log keeps issuing and completing writes, each pinning a tail buffer.
#[test]
fn stuck_write_pins_at_most_writes_in_flight_buffers() {
    run(|| async {
        let storage = gated(1);
        let pipeline = WritePipeline {
            writes_in_flight: 2,
            write_bytes_max: 8192,
            ..WritePipeline::default()
        };
        let (log, _) = Log::open_with(storage.clone(), &dir(), small_config(), pipeline)
            .await
            .unwrap();
        storage.gate.started.set(0);
        // Hold the first data write of the log forever (until released below).
        storage.gate.held.borrow_mut().insert(0);
        let log = Rc::new(log);
        let value = one_block_value();
        let appended = Rc::new(Cell::new(0u64));
        // Two appenders (acks=none style: no waiter): appends that fill the tail hand it to
        // writes, which pile up behind the held write 0 as far as the pipeline lets them.
        for producer in 0..2u32 {
            let (log, appended) = (Rc::clone(&log), Rc::clone(&appended));
            glommio::spawn_local(async move {
                for seq in 0..200u32 {
                    if log
                        .append(&batch(producer, seq, 1, value), 1)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    appended.set(appended.get() + 4096);
                }
            })
            .detach();
        }
        for _ in 0..50_000 {
            yield_now().await;
        }
        let appended = appended.get();
        let n = storage.gate.completed_while_held.get();
        let bytes = storage.gate.bytes_while_held.get();
        println!(
            "appended {appended} B; writes completed while write 0 held: {n} ({bytes} B); \
             each pins a {} B tail buffer -> ~{} MiB pinned; offsets {:?}",
            small_config().write_buffer_bytes,
            (n * small_config().write_buffer_bytes) >> 20,
            log.offsets()
        );
        assert!(
            n <= pipeline.writes_in_flight as u64,
            "writes retained beyond writes_in_flight: {n}"
        );
    });
}

/// A waiter dropped while the write it issued is in flight (a produce timeout) must lose
/// nothing: the log runs the write in a task of its own, which records the completion, so
/// `written` moves past it with no waiter left, the log stays healthy, the next waiter is
/// acknowledged and `close` returns. (Before, the write's completion died with the waiter:
/// the log wedged, or had to fail stop.)
#[test]
fn dropped_waiter_mid_write_loses_nothing() {
    run(|| async {
        let storage = gated(2);
        let log = open_small(&storage, &dir()).await;
        storage.gate.started.set(0);
        let log = Rc::new(log);
        storage.gate.held.borrow_mut().insert(0);
        let a = log.append(&batch(1, 0, 1, 100), 1).await.unwrap();
        let waited = drop_once(
            log.wait_written(a.next_offset),
            || storage.gate.started.get() >= 1,
            1000,
        );
        assert!(waited.await.is_none(), "write should still be held");
        storage.gate.held.borrow_mut().clear();
        assert!(
            spin_until(|| log.offsets().written == a.next_offset, 20_000).await,
            "the write of a dropped waiter is never recorded: offsets {:?}, health {:?}",
            log.offsets(),
            log.health()
        );
        assert_eq!(log.health(), Health::Healthy);
        let waited = within(20_000, async {
            let b = log.append(&batch(1, 1, 1, 100), 1).await?;
            log.wait_written(b.next_offset).await?;
            Ok::<_, LogError>(b.next_offset)
        })
        .await;
        let next = match waited {
            Some(Ok(next)) => next,
            other => panic!("the next waiter is not acknowledged: {other:?}"),
        };
        assert_eq!(log.offsets().written, next);
        assert_eq!(log.health(), Health::Healthy);
        assert_closes(&log).await;
    });
}

/// A waiter dropped while the fdatasync it issued is in flight: the sync still completes and
/// is recorded with no waiter left, the next waiter is acknowledged, and close returns.
#[test]
fn dropped_waiter_mid_sync_loses_nothing() {
    run(|| async {
        let storage = gated(4);
        let log = open_small(&storage, &dir()).await;
        let a = log.append(&batch(1, 0, 1, 100), 1).await.unwrap();
        log.wait_written(a.next_offset).await.unwrap();
        storage.gate.hold_syncs.set(true);
        let before = storage.gate.syncs_started.get();
        let waited = drop_once(
            log.wait_synced(a.next_offset),
            || storage.gate.syncs_started.get() > before,
            1000,
        );
        assert!(waited.await.is_none(), "sync should still be held");
        storage.gate.hold_syncs.set(false);
        assert!(
            spin_until(|| log.offsets().synced == a.next_offset, 20_000).await,
            "the sync of a dropped waiter is never recorded: offsets {:?}",
            log.offsets()
        );
        let syncs = storage.gate.syncs_started.get();
        let waited = within(20_000, log.wait_synced(a.next_offset)).await;
        assert!(
            matches!(waited, Some(Ok(()))),
            "wait_synced after a dropped sync waiter: {waited:?}"
        );
        assert_eq!(log.offsets().synced, a.next_offset);
        assert_eq!(
            storage.gate.syncs_started.get(),
            syncs,
            "a second sync for what the first one covered"
        );
        assert_eq!(log.health(), Health::Healthy);
        assert_closes(&log).await;
    });
}

/// A record written while the fdatasync before it runs gets its own sync at once, beside
/// that one (up to `WritePipeline::syncs_in_flight`), instead of waiting for it; a sync that
/// returns first counts only once every sync issued before it has, and covers only the
/// writes that completed before it was issued.
#[test]
fn a_sync_runs_beside_the_one_before_and_counts_after_it() {
    run(|| async {
        let storage = gated(11);
        let log = Rc::new(open_small(&storage, &dir()).await);
        assert_eq!(WritePipeline::default().syncs_in_flight, 2);
        let (first, wait_a) = append_with_sync_held(&storage, &log, 100).await;
        storage
            .gate
            .held_syncs
            .borrow_mut()
            .extend([first + 1, first + 2]);

        // B is written while A's sync runs: its own sync starts beside it.
        let b = append_one(&log, 1, 100).await;
        log.wait_written(b).await.unwrap();
        let wait_b = wait_synced_in_task(&log, b);
        assert!(
            spin_until(|| storage.gate.syncs_started.get() > first + 1, 1000).await,
            "B's sync waited for A's"
        );

        // With both slots taken, C's sync waits for one of them.
        let c = append_one(&log, 2, 100).await;
        log.wait_written(c).await.unwrap();
        let wait_c = wait_synced_in_task(&log, c);
        for _ in 0..200 {
            yield_now().await;
        }
        assert_eq!(
            storage.gate.syncs_started.get(),
            first + 2,
            "more syncs in flight than syncs_in_flight"
        );

        // B's sync returns first, after C was written: it counts only once A's has, and
        // then only up to B.
        let returned = log.stats().syncs;
        storage.gate.held_syncs.borrow_mut().remove(&(first + 1));
        assert!(spin_until(|| log.stats().syncs > returned, 20_000).await);
        assert_eq!(
            log.offsets().synced,
            0,
            "a sync that returned before an earlier one counted first"
        );
        storage.gate.held_syncs.borrow_mut().remove(&first);
        assert!(matches!(within(20_000, wait_a).await, Some(Ok(()))));
        assert!(matches!(within(20_000, wait_b).await, Some(Ok(()))));
        assert_eq!(
            log.offsets().synced,
            b,
            "B's sync covered a write that completed after it was issued"
        );

        storage.gate.held_syncs.borrow_mut().clear();
        assert!(matches!(within(20_000, wait_c).await, Some(Ok(()))));
        assert_eq!(log.offsets().synced, c);
        assert_eq!(log.health(), Health::Healthy);
        assert_closes(&log).await;
    });
}

/// Under load a second sync waits: while a write of whole blocks is in flight, a record
/// written after the running sync began waits for that sync (and the next one then covers
/// the write in flight too); once the write completes, its sync starts beside the running
/// one. A padded tail block in flight (the next record of a lightly loaded log) does not
/// hold it back.
#[test]
fn a_second_sync_waits_while_whole_blocks_are_written() {
    for whole in [true, false] {
        run(move || async move {
            let storage = gated(13);
            let log = Rc::new(open_small(&storage, &dir()).await);
            // Batches of exactly one block: every write takes whole blocks. Small ones:
            // every write is the padded tail block.
            let value = if whole { one_block_value() } else { 100 };
            let (first, wait_a) = append_with_sync_held(&storage, &log, value).await;
            let b = append_one(&log, 1, value).await;
            log.wait_written(b).await.unwrap();

            // C's write is held in flight.
            let write = storage.gate.started.get();
            storage.gate.held.borrow_mut().insert(write);
            let c = append_one(&log, 2, value).await;
            let wait_c = wait_synced_in_task(&log, c);
            assert!(spin_until(|| storage.gate.started.get() > write, 1000).await);
            let wait_b = wait_synced_in_task(&log, b);
            for _ in 0..200 {
                yield_now().await;
            }
            if whole {
                assert_eq!(
                    storage.gate.syncs_started.get(),
                    first + 1,
                    "a second sync started while whole blocks were being written"
                );
                storage.gate.held.borrow_mut().clear();
            }
            assert!(
                spin_until(|| storage.gate.syncs_started.get() > first + 1, 20_000).await,
                "no second sync (whole blocks: {whole})"
            );
            assert_eq!(log.offsets().synced, 0);
            storage.gate.held.borrow_mut().clear();
            storage.gate.held_syncs.borrow_mut().clear();
            for waited in [wait_a, wait_b, wait_c] {
                let waited = within(20_000, waited).await;
                assert!(matches!(waited, Some(Ok(()))), "{waited:?}");
            }
            assert_eq!(log.offsets().synced, c);
            assert_eq!(log.health(), Health::Healthy);
            assert_closes(&log).await;
        });
    }
}

/// A sync that fails while a later one has already succeeded fails the log, and neither
/// sync's records are acknowledged as durable: the later success does not count past the
/// earlier failure.
#[test]
fn a_failed_sync_is_not_overtaken_by_a_later_success() {
    run(|| async {
        let storage = gated(12);
        let log = Rc::new(open_small(&storage, &dir()).await);
        let (first, wait_a) = append_with_sync_held(&storage, &log, 100).await;
        // The held sync reaches the disk second, after B's: it is the one that fails.
        storage.inner.inject(log_sync_fault(1));
        let b = append_one(&log, 1, 100).await;
        log.wait_written(b).await.unwrap();
        let returned = log.stats().syncs;
        let wait_b = wait_synced_in_task(&log, b);
        assert!(spin_until(|| storage.gate.syncs_started.get() > first + 1, 1000).await);
        assert!(
            spin_until(|| log.stats().syncs > returned, 20_000).await,
            "B's sync did not return"
        );
        assert_eq!(log.offsets().synced, 0);
        assert_eq!(
            log.health(),
            Health::Healthy,
            "B's sync was the one that failed"
        );

        storage.gate.held_syncs.borrow_mut().clear();
        assert_failed_on_sync([wait_a, wait_b]).await;
        assert_eq!(log.offsets().synced, 0, "acknowledged past a failed sync");
        assert_ne!(log.health(), Health::Healthy);
        assert_eq!(log.io_in_flight(), None, "both syncs returned");
    });
}

/// The other order: the earlier sync fails first, and a later one that succeeds afterwards
/// counts nothing (the failed sync is done but never retired, and a failed log reports
/// nothing more as durable).
#[test]
fn a_later_success_does_not_count_after_an_earlier_failure() {
    run(|| async {
        let storage = gated(14);
        let log = Rc::new(open_small(&storage, &dir()).await);
        let (first, wait_a) = append_with_sync_held(&storage, &log, 100).await;
        storage.gate.held_syncs.borrow_mut().insert(first + 1);
        // The first sync to reach the disk fails: A's, released first below.
        storage.inner.inject(log_sync_fault(0));
        let b = append_one(&log, 1, 100).await;
        log.wait_written(b).await.unwrap();
        let wait_b = wait_synced_in_task(&log, b);
        assert!(spin_until(|| storage.gate.syncs_started.get() > first + 1, 1000).await);
        storage.gate.held_syncs.borrow_mut().remove(&first);
        assert!(
            spin_until(|| log.health() != Health::Healthy, 20_000).await,
            "A's sync did not fail"
        );
        let returned = log.stats().syncs;
        storage.gate.held_syncs.borrow_mut().clear();
        assert!(
            spin_until(|| log.stats().syncs > returned, 20_000).await,
            "B's sync did not succeed"
        );
        assert_eq!(log.offsets().synced, 0, "acknowledged past a failed sync");
        assert_failed_on_sync([wait_a, wait_b]).await;
    });
}

/// Finding: after an fdatasync error (fail-stop), a write that was in flight completes and
/// `wait_written` acknowledges it (leader ack after failure); `written`/HWM advance.
#[test]
fn write_completing_after_fdatasync_failure_is_not_acked() {
    run(|| async {
        let storage = gated(3);
        let log = open_small(&storage, &dir()).await;
        storage.gate.started.set(0);
        let log = Rc::new(log);
        let value = one_block_value();
        storage.gate.held.borrow_mut().extend([0, 1]);
        let a = log.append(&batch(1, 0, 1, value), 1).await.unwrap();
        let la = Rc::clone(&log);
        let t1 = glommio::spawn_local(async move { la.wait_synced(a.next_offset).await });
        assert!(spin_until(|| storage.gate.started.get() >= 1, 1000).await);
        let b = log.append(&batch(1, 1, 1, value), 1).await.unwrap();
        let lb = Rc::clone(&log);
        let t2 = glommio::spawn_local(async move {
            let r = lb.wait_written(b.next_offset).await;
            (r, lb.health())
        });
        assert!(
            spin_until(|| storage.gate.started.get() >= 2, 1000).await,
            "second write not issued while the first is in flight"
        );
        storage.inner.inject(log_sync_fault(0));
        storage.gate.held.borrow_mut().remove(&0);
        let r1 = t1.await;
        let written_at_failure = log.offsets().written;
        println!(
            "wait_synced(A) -> {r1:?}; health {:?}; written {written_at_failure}",
            log.health()
        );
        assert!(matches!(
            r1,
            Err(LogError::Failed {
                op: "fdatasync",
                ..
            })
        ));
        storage.gate.held.borrow_mut().clear();
        let (r2, health_at_ack) = t2.await;
        println!(
            "wait_written(B) after fdatasync failure -> {:?} (health then {:?}); written {} -> {}",
            r2.as_ref().map_err(|e| e.to_string()),
            health_at_ack,
            written_at_failure,
            log.offsets().written
        );
        assert!(
            r2.is_err(),
            "acked after fail-stop: written advanced from {written_at_failure} to {}",
            log.offsets().written
        );
    });
}

/// An append nobody waits for (`acks=none`): `commit_soon` writes it in a task of the log's
/// own and calls back after each round; a call while that task runs raises its goal, so the
/// batch appended meanwhile is written too, with no waiter at all.
#[test]
fn commit_soon_writes_what_nobody_waits_for_and_calls_back() {
    run(|| async {
        let storage = gated(5);
        let log = open_small(&storage, &dir()).await;
        storage.gate.started.set(0);
        storage.gate.held.borrow_mut().insert(0);
        let rounds = Rc::new(Cell::new(0u32));
        let a = log.append(&batch(1, 0, 1, 100), 1).await.unwrap();
        let counted = Rc::clone(&rounds);
        log.commit_soon(a.next_offset, move || counted.set(counted.get() + 1));
        assert!(
            spin_until(|| storage.gate.started.get() >= 1, 1000).await,
            "commit_soon issued no write"
        );
        let b = log.append(&batch(1, 1, 1, 100), 1).await.unwrap();
        log.commit_soon(b.next_offset, || {});
        storage.gate.held.borrow_mut().clear();
        assert!(
            spin_until(|| log.offsets().written == b.next_offset, 20_000).await,
            "commit_soon left a batch unwritten: offsets {:?}, health {:?}",
            log.offsets(),
            log.health()
        );
        // One round for `a` (its padded write held `b` back), one for `b`.
        assert!(
            spin_until(|| rounds.get() == 2, 1000).await,
            "rounds called back: {}",
            rounds.get()
        );
        assert_eq!(log.health(), Health::Healthy);
        log.close().await.unwrap();
    });
}

/// A log dropped (not closed) while a write is in flight cancels that write: reopened, the
/// log writes the same block again, and the old write, let go afterwards, never lands over
/// it.
#[test]
fn dropped_log_never_lets_its_old_write_land_after_reopen() {
    run(|| async {
        let storage = gated(6);
        let log = open_small(&storage, &dir()).await;
        storage.gate.started.set(0);
        storage.gate.held.borrow_mut().insert(0);
        let old = log.append(&batch(1, 0, 1, 100), 1).await.unwrap();
        log.commit_soon(old.next_offset, || {});
        assert!(
            spin_until(|| storage.gate.started.get() >= 1, 1000).await,
            "commit_soon issued no write"
        );
        drop(log);
        let log = open_small(&storage, &dir()).await;
        assert_eq!(log.offsets().next, 0, "the held write never completed");
        let new_batch = batch(2, 0, 1, 100);
        let new = log.append(&new_batch, 1).await.unwrap();
        log.wait_synced(new.next_offset).await.unwrap();
        // Let the old write go: cancelled with its log, it must stay lost.
        storage.gate.held.borrow_mut().clear();
        for _ in 0..1000 {
            yield_now().await;
        }
        log.close().await.unwrap();
        drop(log);
        let log = open_small(&storage, &dir()).await;
        assert_eq!(read_all(&log, 0).await, records(&new_batch));
    });
}

/// An append dropped while it rolls the segment (its produce given up, its task cancelled)
/// must not leave the roll marked as running: every later append would wait for a roll that
/// nobody finishes, and the partition would stop taking writes with nothing in flight.
#[test]
fn append_dropped_mid_roll_leaves_the_log_appendable() {
    run(|| async {
        let storage = gated(7);
        let log = open_small(&storage, &dir()).await;
        let big = |seq| batch(1, seq, 1, 60_000);
        let fit = small_config().segment_bytes / big(0).len() as u64;
        for seq in 0..fit as u32 {
            log.append(&big(seq), 1).await.unwrap();
        }
        storage.gate.hold_syncs.set(true);
        let before = storage.gate.syncs_started.get();
        // The roll's commit waits for its fdatasync: drop the append there.
        let rolls = big(0);
        let rolling = drop_once(
            log.append(&rolls, 1),
            || storage.gate.syncs_started.get() > before,
            20_000,
        );
        assert!(
            rolling.await.is_none(),
            "the roll should wait for its held sync"
        );
        storage.gate.hold_syncs.set(false);
        let next = within(20_000, log.append(&big(fit as u32), 1)).await;
        let appended = match next {
            Some(Ok(appended)) => appended,
            other => panic!(
                "append after a dropped roll: {other:?}; offsets {:?}",
                log.offsets()
            ),
        };
        assert_eq!(
            appended.base_offset, fit,
            "the dropped append appended nothing"
        );
        assert_eq!(log.stats().rolls, 1);
        log.wait_synced(appended.next_offset).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len() as u64, fit + 1);
        assert_closes(&log).await;
    });
}

/// A write or fdatasync held by the disk shows in `io_in_flight`, oldest first, with its age;
/// once it completes, nothing does.
#[test]
fn io_in_flight_reports_a_held_write_and_sync_with_their_age() {
    run(|| async {
        let storage = gated(8);
        let log = open_small(&storage, &dir()).await;
        assert_eq!(log.io_in_flight(), None, "nothing issued yet");
        let a = log.append(&batch(1, 0, 1, 100), 1).await.unwrap();
        let first = storage.gate.started.get();
        storage.gate.held.borrow_mut().insert(first);
        let held = Duration::from_millis(20);
        let write = drop_once(
            log.wait_written(a.next_offset),
            || storage.gate.started.get() > first,
            1000,
        );
        assert!(write.await.is_none(), "the write should still be held");
        glommio::timer::sleep(held).await;
        let io = log.io_in_flight().expect("the held write");
        assert_eq!(io.op, "write");
        assert!(io.age >= held, "{io:?}");
        storage.gate.held.borrow_mut().clear();
        log.wait_written(a.next_offset).await.unwrap();
        assert_eq!(log.io_in_flight(), None, "the write completed");

        storage.gate.hold_syncs.set(true);
        let before = storage.gate.syncs_started.get();
        let sync = drop_once(
            log.wait_synced(a.next_offset),
            || storage.gate.syncs_started.get() > before,
            1000,
        );
        assert!(sync.await.is_none(), "the sync should still be held");
        glommio::timer::sleep(held).await;
        let io = log.io_in_flight().expect("the held sync");
        assert_eq!(io.op, "fdatasync");
        assert!(io.age >= held, "{io:?}");
        storage.gate.hold_syncs.set(false);
        log.wait_synced(a.next_offset).await.unwrap();
        assert_eq!(log.io_in_flight(), None, "the sync completed");
        assert_closes(&log).await;
    });
}

/// A checkpoint write of the upkeep that the disk holds shows in `io_in_flight`, lands
/// although the upkeep was dropped meanwhile, and `close` returns only once it landed, also
/// for a log that failed meanwhile (whose close writes nothing of its own); no later upkeep
/// writes one. So nothing of a closed log reaches its directory after `close`, where a
/// truncation may have removed the checkpoint (a late one would claim bytes durable that the
/// cut log no longer has).
#[test]
fn close_waits_for_the_upkeeps_checkpoint_write() {
    run(|| async {
        let storage = gated(9);
        let path = dir().join("checkpoint");
        let log = Rc::new(open_small(&storage, &dir()).await);
        let a = log.append(&batch(1, 0, 3, 100), 1).await.unwrap();
        log.wait_synced(a.next_offset).await.unwrap();
        storage.gate.hold_checkpoint_writes.set(true);
        let dropped = drop_once(
            log.maintain(0),
            || storage.gate.checkpoint_writes_started.get() == 1,
            1000,
        );
        assert!(
            dropped.await.is_none(),
            "the upkeep should wait for its write"
        );
        let held = Duration::from_millis(10);
        glommio::timer::sleep(held).await;
        let io = log.io_in_flight().expect("the held checkpoint write");
        assert_eq!(io.op, "checkpoint write");
        assert!(io.age >= held, "{io:?}");
        // A later durable point, whose upkeep waits for the first one's write.
        let b = log.append(&batch(1, 3, 3, 100), 1).await.unwrap();
        log.wait_synced(b.next_offset).await.unwrap();
        let second = glommio::spawn_local({
            let log = Rc::clone(&log);
            async move { log.maintain(0).await }
        });
        storage.inner.inject(Fault {
            op: Op::Write,
            path_contains: Some(".log".into()),
            errno: libc::EIO,
            skip: 0,
            times: 1,
        });
        let c = log.append(&batch(1, 6, 1, 100), 1).await.unwrap();
        assert!(log.wait_written(c.next_offset).await.is_err());

        let closed = Rc::new(Cell::new(false));
        let closing = glommio::spawn_local({
            let (log, closed) = (Rc::clone(&log), Rc::clone(&closed));
            async move {
                let result = log.close().await;
                closed.set(true);
                result
            }
        });
        assert!(
            !spin_until(|| closed.get(), 2000).await,
            "close returned while the upkeep's checkpoint write was still held"
        );
        let written = || {
            storage
                .inner
                .file_image(&path)
                .is_some_and(|b| !b.is_empty())
        };
        assert!(!written(), "the held write landed");
        storage.gate.hold_checkpoint_writes.set(false);
        // A failed log's close only releases it.
        closing.await.unwrap();
        assert!(
            written(),
            "the dropped upkeep's checkpoint landed before close returned"
        );
        assert!(!second.await.unwrap().checkpoint_written);
        assert_eq!(
            storage.gate.checkpoint_writes_started.get(),
            1,
            "an upkeep wrote to the closed log's directory"
        );
        assert_eq!(log.io_in_flight(), None);
    });
}

/// A roll does not wait for the upkeep's checkpoint write (the upkeep runs in the shard's
/// background queue, and every append waits for the roll): it leaves the checkpoint to the
/// next upkeep.
#[test]
fn a_roll_does_not_wait_for_the_upkeeps_checkpoint_write() {
    run(|| async {
        let storage = gated(10);
        let log = Rc::new(open_small(&storage, &dir()).await);
        let big = |seq| batch(1, seq, 1, 60_000);
        let fit = small_config().segment_bytes / big(0).len() as u64;
        for seq in 0..fit as u32 {
            log.append(&big(seq), 1).await.unwrap();
        }
        log.wait_synced(fit).await.unwrap();
        storage.gate.hold_checkpoint_writes.set(true);
        let upkeep = glommio::spawn_local({
            let log = Rc::clone(&log);
            async move { log.maintain(0).await }
        });
        assert!(
            spin_until(|| storage.gate.checkpoint_writes_started.get() == 1, 1000).await,
            "the upkeep should write the checkpoint"
        );
        let rolled = within(20_000, log.append(&big(fit as u32), 1)).await;
        assert!(
            matches!(rolled, Some(Ok(_))),
            "the roll waited for the held checkpoint write: {rolled:?}"
        );
        assert_eq!(log.stats().rolls, 1);
        assert_eq!(storage.gate.checkpoint_writes_started.get(), 1);
        storage.gate.hold_checkpoint_writes.set(false);
        assert!(upkeep.await.unwrap().checkpoint_written);
        assert_closes(&log).await;
    });
}
