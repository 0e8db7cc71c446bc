//! Workloads over the partition log (`engine::log::Log` on `DmaStorage`), run on one pinned
//! glommio executor: appenders looping append -> wait, with latency and throughput counted
//! over a timed window.
//!
//! Every case opens a fresh log in its own directory with the production segment size and
//! tail buffer, runs `Log::maintain` in a background task so the next segment is prepared
//! ahead (as a shard does), and bounds the disk it uses with byte retention. A case may
//! prefill its log before the warm-up, so that the window sees the steady state of a log
//! whose retention already lets go of segments (recycled as the next ones, when the case
//! recycles segments).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use engine::log::storage::{DmaStorage, OpenFlags, Storage, StorageFile, probe_dir};
use engine::log::{Durability, Log, LogConfig, LogStats, Preallocate, Retention, WritePipeline};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::{CpuSample, CpuUse, DiskSample, SchedDelay, ThreadSched, pinned_kib};
use crate::sample_batch;

/// What each appender waits for after its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Wait {
    /// `wait_written`: the batch is in a completed O_DIRECT write (no fsync).
    Written,
    /// `wait_synced`: the batch is durable (fdatasync, or O_DSYNC write).
    Synced,
}

/// One log workload.
#[derive(Debug, Clone)]
pub struct LogCase {
    /// Fresh directory for this case's log; removed when the case ends.
    pub dir: PathBuf,
    /// Concurrent appender tasks, each looping append -> wait.
    pub appenders: usize,
    pub wait: Wait,
    pub durability: Durability,
    pub preallocate: Preallocate,
    /// The batch every append carries (the log stamps offsets into its copy).
    pub batch: Vec<u8>,
    pub records_per_batch: u64,
    /// Unmeasured run-in before the window: fills pipelines and caches.
    pub warmup: Duration,
    /// Measured window.
    pub measure: Duration,
    /// Pause between two `maintain` passes of the background task.
    pub maintain_interval: Duration,
    /// Byte retention: sealed segments beyond this are let go of (by `maintain`, and by the
    /// log as it prepares its next segment), which bounds the disk a case uses.
    pub retention_bytes: u64,
    /// `LogConfig::recycle_segments`: a segment retention lets go of becomes the next
    /// segment file instead of being deleted. Off: every segment is a fresh file.
    pub recycle_segments: bool,
    /// Bytes of the case's batch appended before the warm-up (not measured), with a
    /// `maintain` pass after each segment's worth; 0: the window starts on an empty log.
    pub prefill_bytes: u64,
    /// Block device under `dir` (`vda`), to count every write to it during the window.
    pub device: String,
    /// `LogConfig::group_commit_window_us` and `group_commit_bytes`.
    pub group_commit_window_us: u64,
    pub group_commit_bytes: u64,
    /// The writer's pipelining (writes in flight, write size).
    pub pipeline: WritePipeline,
    /// Diagnostic: each appender yields to the other tasks between its append and its wait,
    /// so every appender that a commit woke appends before the next commit starts.
    pub yield_before_wait: bool,
}

/// Latency distribution of append -> wait, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            count: histogram.len(),
            p50_ns: histogram.value_at_quantile(0.50),
            p99_ns: histogram.value_at_quantile(0.99),
            p999_ns: histogram.value_at_quantile(0.999),
            max_ns: histogram.max(),
            mean_ns: histogram.mean(),
        }
    }
}

/// What one case measured in its window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LogCaseResult {
    pub elapsed_s: f64,
    /// Appends acknowledged (written or synced, per `Wait`) inside the window.
    pub batches: u64,
    pub batch_bytes: u64,
    pub records: u64,
    pub latency: Latency,
    /// Log counters over the window.
    pub appends: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub syncs: u64,
    pub rolls: u64,
    /// Sealed segments retention let go of (deleted or recycled).
    pub segments_deleted: u64,
    /// Of those, the ones recycled as the next segment file.
    pub segments_recycled: u64,
    /// Writes issued while another write of the log was in flight.
    pub writes_overlapped: u64,
    /// Spare segments the log prepared during the window.
    pub spares_prepared: u64,
    /// Rolls that found no spare ready and made their segment while appends waited.
    pub rolls_without_spare: u64,
    /// Microseconds the log spent rolling (every append waits meanwhile).
    pub roll_us: u64,
    pub cpu: CpuUse,
    /// CPU contention the shard thread suffered in the window.
    pub shard_sched: SchedDelay,
    /// MB written to the device in the window by everyone (this log included).
    pub device_written_mb: Option<f64>,
    /// MB this log wrote in the window: group commits plus zeroing of spares it prepared
    /// (index and checkpoint files, a few KiB each, are left out).
    pub own_written_mb: f64,
}

impl LogCaseResult {
    /// Batch bytes acknowledged per second (10^6 B = 1 MB in the report).
    pub fn bytes_per_s(&self) -> f64 {
        (self.batches * self.batch_bytes) as f64 / self.elapsed_s
    }

    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed_s
    }

    pub fn ops_per_s(&self) -> f64 {
        self.batches as f64 / self.elapsed_s
    }

    /// fdatasyncs per append: 1.0 means no group commit, 1/16 means perfect grouping of 16.
    pub fn syncs_per_append(&self) -> f64 {
        if self.appends == 0 {
            0.0
        } else {
            self.syncs as f64 / self.appends as f64
        }
    }

    /// Mean size of one group-commit write, bytes.
    pub fn bytes_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.write_bytes as f64 / self.writes as f64
        }
    }
}

/// The batch of one record whose size is as close to `batch_bytes` as possible without
/// exceeding it. Returns the batch and the record's value length.
pub fn one_record_batch(batch_bytes: usize) -> anyhow::Result<(Vec<u8>, usize)> {
    for value_bytes in (1..batch_bytes).rev() {
        let batch = sample_batch(1, value_bytes);
        if batch.len() <= batch_bytes {
            return Ok((batch, value_bytes));
        }
    }
    bail!("no one-record batch fits in {batch_bytes} bytes")
}

/// Work for the shard thread.
#[derive(Debug, Clone)]
pub enum Job {
    Log(LogCase),
    Dma(DmaCase),
}

impl From<LogCase> for Job {
    fn from(case: LogCase) -> Job {
        Job::Log(case)
    }
}

impl From<DmaCase> for Job {
    fn from(case: DmaCase) -> Job {
        Job::Dma(case)
    }
}

/// Diagnostic workload without the log: glommio `DmaFile::write_rc_at` of fixed-size blocks,
/// `depth` in flight, sequentially over a pre-zeroed file. It is the runtime's own floor
/// for a given write size and queue depth, to tell the log's overhead from glommio's.
#[derive(Debug, Clone)]
pub struct DmaCase {
    /// Fresh directory holding the file; removed when the case ends.
    pub dir: PathBuf,
    pub file_bytes: u64,
    pub write_bytes: usize,
    /// Writes in flight (one task each).
    pub depth: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub device: String,
}

/// A glommio executor pinned to one CPU that runs log cases one after the other, like one
/// shard of the broker. The thread lives until the `Shard` is dropped, so the io_uring rings
/// and their registered buffers are set up once (PLATFORM §1.8: re-registering back to back
/// can fail).
pub struct Shard {
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<anyhow::Result<LogCaseResult>>,
    thread: Option<JoinHandle<()>>,
    /// `VmPin` of the process right after the executor started, KiB.
    pub pinned_kib: Option<u64>,
}

impl Shard {
    /// Starts the executor on `core` and runs `probe_dir(probe_in)` on it first (PLATFORM
    /// §1.5), so glommio decides polled I/O correctly for that device.
    ///
    /// `spin_before_park`: how long the executor spins for I/O completions before it sleeps
    /// (zero: glommio's default, sleep at once). `io_memory_bytes`: glommio's registered
    /// buffer arena (the profile's `shards.io_memory_bytes`); the log's tail and write buffers
    /// come from it, and from the heap (page faults on first touch) once it is exhausted.
    pub fn start(
        core: usize,
        probe_in: &Path,
        spin_before_park: Duration,
        io_memory_bytes: usize,
    ) -> anyhow::Result<Shard> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (result_tx, result_rx) = mpsc::channel::<anyhow::Result<LogCaseResult>>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Option<u64>>>();
        let probe_in = probe_in.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("logbench-shard".into())
            .spawn(move || {
                let mut builder = LocalExecutorBuilder::new(Placement::Fixed(core))
                    .name("logbench")
                    .io_memory(io_memory_bytes);
                if !spin_before_park.is_zero() {
                    builder = builder.spin_before_park(spin_before_park);
                }
                let executor = match builder.make() {
                    Ok(executor) => executor,
                    Err(error) => {
                        let _ =
                            ready_tx.send(Err(anyhow!("glommio executor on core {core}: {error}")));
                        return;
                    }
                };
                let probed = executor.run(async {
                    probe_dir(&probe_in)
                        .await
                        .with_context(|| format!("probe_dir {}", probe_in.display()))
                });
                let ready = probed.map(|_| pinned_kib());
                let ok = ready.is_ok();
                if ready_tx.send(ready).is_err() || !ok {
                    return;
                }
                for job in job_rx {
                    let result = match job {
                        Job::Log(case) => {
                            executor.run(removing_dir(case.dir.clone(), measure(case)))
                        }
                        Job::Dma(case) => {
                            executor.run(removing_dir(case.dir.clone(), measure_dma(case)))
                        }
                    };
                    if result_tx.send(result).is_err() {
                        return;
                    }
                }
            })
            .context("spawning the shard thread")?;
        let pinned_kib = ready_rx
            .recv()
            .context("shard thread ended before it was ready")??;
        Ok(Shard {
            jobs: Some(job_tx),
            results: result_rx,
            thread: Some(thread),
            pinned_kib,
        })
    }

    /// Runs one case on the shard and waits for its result.
    pub fn run(&self, case: impl Into<Job>) -> anyhow::Result<LogCaseResult> {
        self.jobs
            .as_ref()
            .context("shard stopped")?
            .send(case.into())
            .map_err(|_| anyhow!("shard thread ended"))?;
        self.results.recv().context("shard thread ended")?
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread's job loop
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a case, then removes its directory `dir` whatever the outcome.
async fn removing_dir(
    dir: PathBuf,
    case: impl Future<Output = anyhow::Result<LogCaseResult>>,
) -> anyhow::Result<LogCaseResult> {
    let result = case.await;
    if let Err(error) = std::fs::remove_dir_all(&dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: could not remove {}: {error}", dir.display());
    }
    result
}

/// Shared between the workers (appenders, DMA writers) and the timer of one case; one
/// executor thread only.
struct Window {
    stop: Cell<bool>,
    measuring: Cell<bool>,
    /// Operations completed inside the measured window.
    batches: Cell<u64>,
    histogram: RefCell<Histogram<u64>>,
}

/// What the machine did during a measured window.
struct Sampled {
    elapsed: Duration,
    cpu: CpuUse,
    shard_sched: SchedDelay,
    device_written_mb: Option<f64>,
}

impl Window {
    fn new() -> anyhow::Result<Rc<Window>> {
        Ok(Rc::new(Window {
            stop: Cell::new(false),
            measuring: Cell::new(false),
            batches: Cell::new(0),
            histogram: RefCell::new(
                Histogram::new_with_bounds(1, 10_000_000_000, 3)
                    .map_err(|e| anyhow!("histogram: {e}"))?,
            ),
        }))
    }

    /// Counts one operation that began at `started` and has just completed, if the window
    /// is open.
    fn record(&self, started: Instant) {
        if self.measuring.get() {
            let ns = started.elapsed().as_nanos() as u64;
            self.histogram.borrow_mut().saturating_record(ns.max(1));
            self.batches.set(self.batches.get() + 1);
        }
    }

    /// Lets `workers` run through `warmup`, opens the window for `measure` (calling
    /// `at_open` as it opens, to snapshot counters), then stops the workers and waits for
    /// all of them. The first worker error, if any, is returned after every worker ended.
    async fn run<T, E>(
        &self,
        warmup: Duration,
        measure: Duration,
        device: &str,
        workers: Vec<glommio::Task<Result<(), E>>>,
        at_open: impl FnOnce() -> T,
    ) -> (T, Sampled, Result<(), E>) {
        glommio::timer::sleep(warmup).await;
        let opened = at_open();
        let cpu_before = CpuSample::now();
        let sched_before = ThreadSched::now();
        let disk_before = DiskSample::now(device);
        let started = Instant::now();
        self.measuring.set(true);
        glommio::timer::sleep(measure).await;
        self.stop.set(true);
        let mut outcome = Ok(());
        for worker in workers {
            if let Err(error) = worker.await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        let elapsed = started.elapsed();
        self.measuring.set(false);
        let sampled = Sampled {
            elapsed,
            cpu: cpu_before.until(&CpuSample::now()),
            shard_sched: sched_before.until(&ThreadSched::now()),
            device_written_mb: disk_before.written_mb_until(&DiskSample::now(device)),
        };
        (opened, sampled, outcome)
    }
}

async fn measure(case: LogCase) -> anyhow::Result<LogCaseResult> {
    let config = LogConfig {
        durability: case.durability,
        preallocate: case.preallocate,
        retention: Retention {
            ms: None,
            bytes: Some(case.retention_bytes),
        },
        group_commit_window_us: case.group_commit_window_us,
        group_commit_bytes: case.group_commit_bytes,
        recycle_segments: case.recycle_segments,
        ..LogConfig::default()
    };
    let (log, _recovery) = Log::open_with(DmaStorage, &case.dir, config, case.pipeline)
        .await
        .with_context(|| format!("opening the log in {}", case.dir.display()))?;
    let log = Rc::new(log);
    if case.prefill_bytes > 0 {
        prefill(&log, &case.batch, case.prefill_bytes, config.segment_bytes)
            .await
            .context("prefill")?;
    }
    let window = Window::new()?;
    // Upkeep as a shard runs it (retention bounds the disk the case uses); the log prepares
    // its next segment itself.
    let maintainer = {
        let log = Rc::clone(&log);
        let window = Rc::clone(&window);
        let interval = case.maintain_interval;
        glommio::spawn_local(async move {
            while !window.stop.get() {
                log.maintain(now_ms()).await?;
                glommio::timer::sleep(interval).await;
            }
            Ok::<(), engine::log::LogError>(())
        })
    };

    let batch = Rc::new(case.batch);
    let mut appenders = Vec::with_capacity(case.appenders);
    for _ in 0..case.appenders {
        let log = Rc::clone(&log);
        let window = Rc::clone(&window);
        let batch = Rc::clone(&batch);
        let wait = case.wait;
        let yield_before_wait = case.yield_before_wait;
        appenders.push(glommio::spawn_local(async move {
            while !window.stop.get() {
                let started = Instant::now();
                let appended = log.append(&batch, 1).await?;
                if yield_before_wait {
                    futures_lite::future::yield_now().await;
                }
                match wait {
                    Wait::Written => log.wait_written(appended.next_offset).await?,
                    Wait::Synced => log.wait_synced(appended.next_offset).await?,
                }
                window.record(started);
            }
            Ok::<(), engine::log::LogError>(())
        }));
    }

    let (stats_before, sampled, appended) = window
        .run(case.warmup, case.measure, &case.device, appenders, || {
            log.stats()
        })
        .await;
    let stats = log.stats().since(&stats_before);
    let maintained = maintainer.await;
    appended.context("appender")?;
    maintained.context("maintain")?;
    log.close().await.context("close")?;

    let histogram = window.histogram.borrow();
    let batches = window.batches.get();
    Ok(LogCaseResult {
        elapsed_s: sampled.elapsed.as_secs_f64(),
        batches,
        batch_bytes: batch.len() as u64,
        records: batches * case.records_per_batch,
        latency: Latency::of(&histogram),
        appends: stats.appends,
        writes: stats.writes,
        write_bytes: stats.write_bytes,
        syncs: stats.syncs,
        rolls: stats.rolls,
        segments_deleted: stats.segments_deleted,
        segments_recycled: stats.segments_recycled,
        writes_overlapped: stats.writes_overlapped,
        spares_prepared: stats.spares_prepared,
        rolls_without_spare: stats.rolls_without_spare,
        roll_us: stats.roll_us,
        cpu: sampled.cpu,
        shard_sched: sampled.shard_sched,
        device_written_mb: sampled.device_written_mb,
        own_written_mb: own_written_mb(&stats),
    })
}

/// Appends `batch` until `bytes` have been appended, with a `maintain` pass after each
/// `segment_bytes` (retention lets go of segments as a shard's upkeep would), then waits
/// until all of it is written. One task appending without waiting: the log hands its tail
/// to the disk as it fills, and `append` waits only for tail space or a roll.
async fn prefill(
    log: &Log<DmaStorage>,
    batch: &[u8],
    bytes: u64,
    segment_bytes: u64,
) -> Result<(), engine::log::LogError> {
    let mut appended = 0u64;
    let mut next_maintain = segment_bytes;
    let mut next_offset = 0;
    while appended < bytes {
        next_offset = log.append(batch, 1).await?.next_offset;
        appended += batch.len() as u64;
        if appended >= next_maintain {
            log.maintain(now_ms()).await?;
            next_maintain += segment_bytes;
        }
    }
    log.wait_written(next_offset).await?;
    log.maintain(now_ms()).await?;
    Ok(())
}

async fn measure_dma(case: DmaCase) -> anyhow::Result<LogCaseResult> {
    std::fs::create_dir_all(&case.dir)?;
    let path = case.dir.join("dma.dat");
    let flags = OpenFlags {
        create: true,
        dsync: false,
    };
    let file = Rc::new(
        DmaStorage
            .open(&path, flags)
            .await
            .with_context(|| format!("creating {}", path.display()))?,
    );
    // Lay the file out with real writes, so every measured write is an overwrite.
    file.allocate(case.file_bytes).await?;
    let zero_bytes = 1 << 20;
    let mut zeros = file.alloc_buffer(zero_bytes);
    zeros.as_mut().fill(0);
    let zeros = Rc::new(zeros);
    let mut at = 0;
    while at < case.file_bytes {
        StorageFile::write_at(&*file, Rc::clone(&zeros), at).await?;
        at += zero_bytes as u64;
    }
    file.sync().await?;

    let mut block = file.alloc_buffer(case.write_bytes);
    block.as_mut().fill(0x5a);
    let block = Rc::new(block);
    let window = Window::new()?;
    let next_pos = Rc::new(Cell::new(0u64));
    let mut writers = Vec::with_capacity(case.depth);
    for _ in 0..case.depth {
        let file = Rc::clone(&file);
        let block = Rc::clone(&block);
        let window = Rc::clone(&window);
        let next_pos = Rc::clone(&next_pos);
        let len = case.write_bytes as u64;
        let file_bytes = case.file_bytes;
        writers.push(glommio::spawn_local(async move {
            while !window.stop.get() {
                let mut pos = next_pos.get();
                if pos + len > file_bytes {
                    pos = 0;
                }
                next_pos.set(pos + len);
                let started = Instant::now();
                let written = StorageFile::write_at(&*file, Rc::clone(&block), pos).await?;
                if written != len as usize {
                    return Err(std::io::Error::other(format!("short write {written}")));
                }
                window.record(started);
            }
            Ok(())
        }));
    }
    let ((), sampled, written) = window
        .run(case.warmup, case.measure, &case.device, writers, || ())
        .await;
    written.context("dma writer")?;
    drop(block);
    if let Ok(file) = Rc::try_unwrap(file) {
        StorageFile::close(file).await?;
    }
    let histogram = window.histogram.borrow();
    let writes = window.batches.get();
    let write_bytes = writes * case.write_bytes as u64;
    Ok(LogCaseResult {
        elapsed_s: sampled.elapsed.as_secs_f64(),
        batches: writes,
        batch_bytes: case.write_bytes as u64,
        records: 0,
        latency: Latency::of(&histogram),
        appends: 0,
        writes,
        write_bytes,
        syncs: 0,
        rolls: 0,
        segments_deleted: 0,
        segments_recycled: 0,
        writes_overlapped: 0,
        spares_prepared: 0,
        rolls_without_spare: 0,
        roll_us: 0,
        cpu: sampled.cpu,
        shard_sched: sampled.shard_sched,
        device_written_mb: sampled.device_written_mb,
        own_written_mb: write_bytes as f64 / 1e6,
    })
}

fn own_written_mb(stats: &LogStats) -> f64 {
    (stats.write_bytes + stats.zero_bytes) as f64 / 1e6
}
