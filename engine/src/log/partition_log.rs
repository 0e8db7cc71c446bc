//! `Log`: append, group commit, segment roll, reads, retention and shutdown of one
//! partition replica's log.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::task::JoinHandle;

use protocol::batch::{set_base_offset, set_leader_epoch};
use protocol::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
use protocol::{BatchHeader, BatchView};

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use super::notify::Notify;
use super::recovery::{self, Recovery, SPARE_READY, SPARE_TMP, ZeroPace};
use super::segment::{Segment, index_path, log_path};
use super::storage::{BLOCK_BYTES, Storage, StorageFile, block_ceil, block_floor, write_whole};
use super::tail::{Inflight, Recent, Tail, Take};
use super::{Durability, Health, LogConfig, LogError, Retention, WritePipeline};

/// Written bytes of the active segment kept in memory (`State::recent_bytes`): a tailing
/// read finds its batches there, and the sparse index entry it starts from (one every
/// `index_interval_bytes`), even when their blocks have gone to the disk. Between this and
/// twice it, per partition with writes.
const RECENT_BYTES: usize = 32 << 10;

/// The smallest tail buffer a log starts with and shrinks back to. A tail buffer grows with
/// what the log's writes carry (see [`tail_bytes`]), up to `write_buffer_bytes`, so a
/// quiet partition pins 64 KiB of the shard's registered memory instead of a whole write
/// buffer, and a shard's partitions share its `io_memory` by how busy they are.
const TAIL_BYTES_MIN: u64 = 64 << 10;

/// Writes of zeros that prepare a spare segment, at the appends' pace. About one append in
/// (chunk / append size) queues behind one, so larger chunks delay fewer appends, each by
/// longer (1 MiB: about 0.4 ms here). 1 MiB keeps 4 KiB durable appends' p99 clear of them:
/// `logbench --seconds 4 --runs 1 --cases fio-4k-fdatasync,log-4k-fdatasync,log-1k-fdatasync`,
/// 3 interleaved pairs, log-4k-fdatasync p99 329 / 308 / 320 us against 485 / 401 / 390 us
/// with 256 KiB chunks (fio's write p99 + fdatasync p99: 238-241 us).
const SPARE_ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// How long a paced spare waits for appends before it zeroes its next chunk anyway.
const SPARE_IDLE_PACE: Duration = Duration::from_secs(1);

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    /// Offset after the batch: pass it to `wait_written` / `wait_synced`.
    pub next_offset: u64,
}

/// The log's offsets. Invariant: `log_start <= synced <= written <= next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    /// First offset still in the log (retention moves it).
    pub log_start: u64,
    /// Offset the next appended record gets.
    pub next: u64,
    /// Every offset below this is in a completed write.
    pub written: u64,
    /// Every offset below this is durable (write and fdatasync completed, or O_DSYNC).
    pub synced: u64,
}

/// Counters for metrics and tests. Plain integers: the log never leaves its shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appends: u64,
    /// Group-commit writes issued.
    pub writes: u64,
    pub write_bytes: u64,
    /// fdatasyncs that returned successfully.
    pub syncs: u64,
    pub rolls: u64,
    /// Rolls that found no spare segment ready and made theirs in the append path.
    pub rolls_without_spare: u64,
    /// Spare segments prepared: recycled ones (`segments_recycled`), and new ones (written
    /// with zeros under `Preallocate::Zero`, in full unless cut short).
    pub spares_prepared: u64,
    /// New spares whose zeroing stopped before their end (`Preallocate::Zero`): the appends
    /// outran it, or a roll came first. The rest of such a file is allocated space. Counted
    /// when the zeroing stops.
    pub spares_cut_short: u64,
    /// Bytes of zeros written into new spares, counted when a spare is ready.
    pub zero_bytes: u64,
    /// Sealed segments retention let go of: deleted, or recycled.
    pub segments_deleted: u64,
    /// Of those, the ones whose file became the next segment (`spare.ready`) instead of
    /// being deleted.
    pub segments_recycled: u64,
    /// Writes issued while another write of this log was in flight (pipelining at work).
    pub writes_overlapped: u64,
    /// Microseconds spent in rolls: from the append that found the segment full until the
    /// next segment took appends. Every append of the log waits meanwhile.
    pub roll_us: u64,
    /// Reads (`Log::read`, by fetches and by replication) that went to the disk, and their
    /// bytes: what was asked for was no longer in the tail, a write buffer or the recently
    /// written bytes.
    pub disk_reads: u64,
    pub disk_read_bytes: u64,
}

impl LogStats {
    /// The counts since `earlier`, a snapshot of the same log.
    pub fn since(&self, earlier: &LogStats) -> LogStats {
        LogStats {
            appends: self.appends - earlier.appends,
            writes: self.writes - earlier.writes,
            write_bytes: self.write_bytes - earlier.write_bytes,
            syncs: self.syncs - earlier.syncs,
            rolls: self.rolls - earlier.rolls,
            rolls_without_spare: self.rolls_without_spare - earlier.rolls_without_spare,
            spares_prepared: self.spares_prepared - earlier.spares_prepared,
            spares_cut_short: self.spares_cut_short - earlier.spares_cut_short,
            zero_bytes: self.zero_bytes - earlier.zero_bytes,
            segments_deleted: self.segments_deleted - earlier.segments_deleted,
            segments_recycled: self.segments_recycled - earlier.segments_recycled,
            writes_overlapped: self.writes_overlapped - earlier.writes_overlapped,
            roll_us: self.roll_us - earlier.roll_us,
            disk_reads: self.disk_reads - earlier.disk_reads,
            disk_read_bytes: self.disk_read_bytes - earlier.disk_read_bytes,
        }
    }
}

/// What one `maintain` pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub segments_deleted: usize,
    pub checkpoint_written: bool,
}

/// What `append` must do next.
enum AppendStep {
    Done(Appended),
    /// Another append is rolling the segment.
    WaitForRoll,
    /// This append rolls the segment (`rolling` is set).
    Roll,
    /// The tail buffer is full: commit it first.
    MakeRoom,
}

/// The roll that one append runs (`State::rolling`), ended however that append ends:
/// finished, failed, or dropped mid-way (a produce given up). Left set, it would keep every
/// later append waiting for a roll nobody finishes; a roll cut short is redone by the next
/// append (its new segment file is made again).
struct Rolling<'a, S: Storage>(&'a Core<S>);

impl<S: Storage> Drop for Rolling<'_, S> {
    fn drop(&mut self) {
        // No borrow of the state is held across an await, so none is held here.
        self.0.state.borrow_mut().rolling = false;
        self.0.changed.notify();
    }
}

/// The next segment file, prepared ahead of the roll by a task of the log's own.
enum Spare {
    Absent,
    /// The task preparing it: a new file (`spare.tmp`, renamed to `spare.ready` when done),
    /// or a segment retention let go of, renamed to `spare.ready`. `close` awaits it, never
    /// cancels it: glommio runs a rename on a thread of its own, which a cancel would not
    /// stop. A new file being zeroed is abandoned (removed) once the log is closed.
    Preparing(JoinHandle<()>),
    Ready,
    /// Preparing it failed; the roll makes its segment itself (and reports why, if it fails
    /// again), and the next segment tries anew.
    Failed,
}

/// One partition replica's log.
///
/// Owner: one shard. Shared by that shard's tasks through `&self` (typically in an `Rc`);
/// never `Send`. No `RefCell` borrow is held across an `.await`.
/// Invariants: see `State::check_invariants`.
/// Durability: `append` makes a batch readable at once; it is written once a group commit
/// covering it completes (`wait_written`), durable once a sync covering it completes and
/// every sync issued before it has returned successfully (`wait_synced`). After a failed
/// write or sync the log fails stop.
/// Tasks: the log runs each write and fdatasync it issues in a task of its own (see
/// `Core::commit`), and so each write of its checkpoint and index and retention's removals
/// (`Core::dir_op`), so a waiter may be dropped at any point; dropping the log cancels them.
pub struct Log<S: Storage> {
    core: Rc<Core<S>>,
}

/// The log, shared with the tasks that run its writes and syncs: they record each completion
/// here whether or not anyone still waits for it.
struct Core<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    pipeline: WritePipeline,
    state: RefCell<State<S::File>>,
    changed: Notify,
    /// Wakes a spare zeroing at the appends' pace (`spare_pace`): the appends reached its
    /// due point, a roll waits for it, or the log closed, failed or found damage. Not
    /// `changed`, which every write and sync completion signals.
    spare_wake: Notify,
    /// Wakes those waiting for directory work (`Core::dir_op`, `close`) when work ends: a
    /// waiter only waits while work runs. Not `changed`, for the same reason.
    dir_wake: Notify,
}

/// A write or fdatasync running in a task of the log's own, and when it was issued.
struct Issued {
    task: JoinHandle<()>,
    at: Instant,
}

impl Issued {
    fn new(task: JoinHandle<()>) -> Self {
        Issued {
            task,
            at: Instant::now(),
        }
    }
}

/// A write handed to the disk.
struct PendingWrite<B> {
    id: u64,
    data: Inflight<B>,
    /// The disk returned it. Retired once every earlier write has returned too, unless the
    /// log failed: a write that failed is done but never retired.
    done: bool,
    io: Issued,
}

/// An fdatasync handed to the disk.
struct PendingSync {
    id: u64,
    /// What it covers: the writes completed before it was issued (`written_offset` and
    /// `written_batch_end` then).
    offset: u64,
    end: u64,
    /// The disk returned it. Retired, and what it covers made durable, once every earlier
    /// sync has returned too, unless the log failed: a failed sync is done but never retired.
    done: bool,
    io: Issued,
}

/// The oldest write, fdatasync or directory operation of a log still in flight
/// (`Log::io_in_flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoInFlight {
    pub op: &'static str,
    pub age: Duration,
}

struct State<F: StorageFile> {
    sealed: BTreeMap<u64, Segment<F>>,
    active: Segment<F>,
    tail: Tail<F::Buffer>,
    /// Writes of the active segment handed to the disk and not yet retired, in file order
    /// (each starts at or after the previous one's last full block). A completed write stays
    /// here, readable, until every write before it has completed too.
    inflight: VecDeque<PendingWrite<F::Buffer>>,
    /// Id of the next write handed to the disk.
    write_id_next: u64,
    /// The fdatasyncs handed to the disk and not yet retired, in the order issued: each
    /// covers at least as much as the one before.
    syncing: VecDeque<PendingSync>,
    /// Id of the next fdatasync handed to the disk.
    sync_id_next: u64,
    /// The task committing for `commit_soon`, if any, and the offset it commits up to.
    background: Option<JoinHandle<()>>,
    background_upto: u64,
    /// (end position, next offset) of each batch of the active segment that ends after
    /// `written_batch_end`, in order: maps a written position back to whole batches.
    batch_ends: VecDeque<(u64, u64)>,
    /// The last bytes written to the active segment, kept after their write retires.
    recent_bytes: Recent,
    /// Bytes of the active segment in the contiguous prefix of completed writes (may end
    /// inside a batch).
    written_end: u64,
    /// End of the last whole batch inside `written_end`: `written_offset` ends here.
    written_batch_end: u64,
    /// Bytes of the active segment known durable; always at a batch boundary.
    synced_end: u64,
    next_offset: u64,
    written_offset: u64,
    synced_offset: u64,
    rolling: bool,
    closed: bool,
    health: Health,
    spare: Spare,
    /// Data end of the active segment at which the spare's zeroing, waiting in
    /// `spare_pace`, may go on (`u64::MAX`: nothing waits); an append that reaches it
    /// wakes it.
    spare_due: u64,
    /// Data end of the active segment when its spare began (at least half its capacity):
    /// where the spare's zeroing schedule starts.
    spare_from: u64,
    checkpoint: Option<Checkpoint>,
    /// The log's work on its directory outside the write pipeline that runs (see
    /// `Core::dir_op`): at most one of each kind.
    dir_ops: Vec<DirOp>,
    stats: LogStats,
}

/// A kind of work of the log on its directory outside the write pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirWork {
    /// The active segment's index file.
    Index,
    /// The durable point.
    Checkpoint,
    /// Removing segments past retention.
    Retention,
}

impl DirWork {
    /// As `io_in_flight` names it.
    fn op(self) -> &'static str {
        match self {
            DirWork::Index => "index write",
            DirWork::Checkpoint => "checkpoint write",
            DirWork::Retention => "retention",
        }
    }
}

/// What `Core::dir_op` does when work of the same kind runs already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenBusy {
    Wait,
    /// Do nothing (`Ok(None)`): for work a later call redoes anyway.
    Skip,
}

/// Work of the log on its directory, running in a task of the log's own.
struct DirOp {
    work: DirWork,
    io: Issued,
}

impl<F: StorageFile> State<F> {
    fn writable(&self) -> Result<(), LogError> {
        if self.closed {
            return Err(LogError::Closed);
        }
        self.health.check()
    }

    /// End position (in the active segment) of the first batch not yet written whose next
    /// offset reaches `upto`: the bytes a waiter for `upto` needs written. Callers ask only
    /// for `upto > written_offset`, which such a batch always holds; the end of the data
    /// otherwise.
    fn position_after(&self, upto: u64) -> u64 {
        let at = self.batch_ends.partition_point(|&(_, next)| next < upto);
        self.batch_ends
            .get(at)
            .map_or(self.active.data_end, |&(end, _)| end)
    }

    /// The tail's first block is in a padded write still in flight: no write may touch it
    /// until that one completes. Such a write is always the last one issued, since nothing
    /// is issued while it runs.
    fn tail_block_busy(&self) -> bool {
        self.inflight
            .back()
            .is_some_and(|w| w.data.padded && !w.done)
    }

    /// Every task of the log still running, or finished and not yet forgotten.
    fn tasks(&self) -> impl Iterator<Item = &JoinHandle<()>> {
        let writes = self.inflight.iter().map(|w| &w.io.task);
        let syncs = self.syncing.iter().map(|s| &s.io.task);
        let spare = match &self.spare {
            Spare::Preparing(task) => Some(task),
            _ => None,
        };
        let dir_ops = self.dir_ops.iter().map(|op| &op.io.task);
        writes
            .chain(syncs)
            .chain(&self.background)
            .chain(spare)
            .chain(dir_ops)
    }

    /// How many of the oldest sealed segments are past `retention` at `now_ms` (wall clock,
    /// ms since the epoch). The active segment never is.
    fn past_retention(&self, retention: Retention, now_ms: i64) -> usize {
        let mut total: u64 =
            self.sealed.values().map(|s| s.data_end).sum::<u64>() + self.active.data_end;
        let mut past = 0;
        for segment in self.sealed.values() {
            let too_big = retention.bytes.is_some_and(|max| total > max);
            let too_old = retention
                .ms
                .is_some_and(|ms| segment.max_timestamp_ms() < now_ms.saturating_sub(ms as i64));
            if !too_big && !too_old {
                break;
            }
            total -= segment.data_end;
            past += 1;
        }
        past
    }

    fn log_start(&self) -> u64 {
        self.sealed
            .values()
            .next()
            .map_or(self.active.base_offset, |s| s.base_offset)
    }

    fn check_invariants(&self) {
        assert!(self.synced_offset <= self.written_offset);
        assert!(self.written_offset <= self.next_offset);
        assert!(self.synced_end <= self.written_batch_end);
        assert!(self.written_batch_end <= self.written_end);
        assert!(self.written_end <= self.active.data_end);
        assert!(self.written_end <= self.tail.handed_end());
        assert_eq!(self.tail.data_end(), self.active.data_end);
        assert_eq!(self.active.next_offset, self.next_offset);
        self.active.check_invariants();
    }
}

impl<S: Storage> Log<S> {
    /// Opens the log in `dir` (creating it if new), recovering from whatever a crash left.
    pub async fn open(
        storage: S,
        dir: &Path,
        config: LogConfig,
    ) -> Result<(Log<S>, Recovery), LogError> {
        Self::open_with(storage, dir, config, WritePipeline::default()).await
    }

    /// `open`, with the writer's pipelining chosen by the caller.
    pub async fn open_with(
        storage: S,
        dir: &Path,
        config: LogConfig,
        pipeline: WritePipeline,
    ) -> Result<(Log<S>, Recovery), LogError> {
        pipeline
            .validate()
            .map_err(|(field, reason)| LogError::Config { field, reason })?;
        config
            .validate()
            .map_err(|(field, reason)| LogError::Config { field, reason })?;
        // Absolute, because glommio opens directories without resolving relative paths (and a
        // relative path's last ancestor is empty), and a shard's working directory is global.
        let dir = &std::path::absolute(dir).map_err(LogError::io("resolve log directory"))?;
        let (opened, report) = recovery::open(&storage, dir, &config).await?;
        let active = opened.active;
        let tail_pos = block_floor(active.data_end);
        let mut tail = Tail::new(active.file.alloc_buffer(tail_bytes(&config, 0)), tail_pos);
        // The tail starts at the block holding the end of the data, with that block's bytes:
        // the next commit rewrites it whole.
        if active.data_end > tail_pos {
            let head = active
                .file
                .read_at(tail_pos, BLOCK_BYTES)
                .await
                .map_err(LogError::io("read tail block"))?;
            let carried = head
                .get(..(active.data_end - tail_pos) as usize)
                .unwrap_or_default();
            tail.push(carried);
            tail.mark_written();
        }
        let next = active.next_offset;
        let data_end = active.data_end;
        let state = State {
            sealed: opened.sealed,
            active,
            tail,
            inflight: VecDeque::new(),
            write_id_next: 0,
            syncing: VecDeque::new(),
            sync_id_next: 0,
            background: None,
            background_upto: next,
            batch_ends: VecDeque::new(),
            recent_bytes: Recent::new(RECENT_BYTES),
            written_end: data_end,
            written_batch_end: data_end,
            synced_end: data_end,
            next_offset: next,
            written_offset: next,
            synced_offset: next,
            rolling: false,
            closed: false,
            health: opened.health,
            spare: if opened.spare_ready {
                Spare::Ready
            } else {
                Spare::Absent
            },
            spare_due: u64::MAX,
            spare_from: 0,
            checkpoint: opened.checkpoint,
            dir_ops: Vec::new(),
            stats: LogStats::default(),
        };
        state.check_invariants();
        let log = Log {
            core: Rc::new(Core {
                storage,
                dir: dir.to_path_buf(),
                config,
                pipeline,
                state: RefCell::new(state),
                changed: Notify::default(),
                spare_wake: Notify::default(),
                dir_wake: Notify::default(),
            }),
        };
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// The storage the log's files live on.
    pub fn storage(&self) -> &S {
        &self.core.storage
    }

    pub fn offsets(&self) -> LogOffsets {
        let st = self.core.state.borrow();
        LogOffsets {
            log_start: st.log_start(),
            next: st.next_offset,
            written: st.written_offset,
            synced: st.synced_offset,
        }
    }

    pub fn health(&self) -> Health {
        self.core.state.borrow().health.clone()
    }

    /// Whether `close` was called: a closed log takes no appends, whatever its health.
    pub fn is_closed(&self) -> bool {
        self.core.state.borrow().closed
    }

    /// Whether an append may be taken now: `Closed` once closed, otherwise the health's
    /// error (failed or damaged).
    pub fn writable(&self) -> Result<(), LogError> {
        self.core.state.borrow().writable()
    }

    /// The oldest write, fdatasync or directory operation (a checkpoint or index write,
    /// retention's removals) still running, if any, and how long it has run: a disk that
    /// stops completing I/O shows here (the shard's upkeep warns about it). `None` means the
    /// disk returned every one, failed ones included: only then may a failed log's files be
    /// reopened, since the kernel performs a write it has even when its task is cancelled.
    pub fn io_in_flight(&self) -> Option<IoInFlight> {
        let st = self.core.state.borrow();
        let write = st.inflight.iter().find(|w| !w.done).map(|w| IoInFlight {
            op: "write",
            age: w.io.at.elapsed(),
        });
        let sync = st.syncing.iter().find(|s| !s.done).map(|s| IoInFlight {
            op: "fdatasync",
            age: s.io.at.elapsed(),
        });
        let dir_ops = st.dir_ops.iter().map(|op| IoInFlight {
            op: op.work.op(),
            age: op.io.at.elapsed(),
        });
        write
            .into_iter()
            .chain(sync)
            .chain(dir_ops)
            .max_by_key(|io| io.age)
    }

    pub fn stats(&self) -> LogStats {
        self.core.state.borrow().stats
    }

    /// Appends one validated batch, stamping its base offset and `leader_epoch`. Readable at
    /// once; call `wait_written` or `wait_synced` with the returned `next_offset` before
    /// acknowledging it. Waits only to roll a full segment or to free tail space.
    pub async fn append(&self, batch: &[u8], leader_epoch: u32) -> Result<Appended, LogError> {
        let header = BatchHeader::parse(batch).map_err(LogError::InvalidBatch)?;
        let len = batch.len() as u64;
        if u64::from(header.batch_len) != len || len > u64::from(BATCH_BYTES_MAX) {
            return Err(LogError::InvalidBatch(
                protocol::BatchError::LengthMismatch {
                    declared: header.batch_len,
                    actual: batch.len(),
                },
            ));
        }
        debug_assert!(
            BatchView::new(batch).is_ok(),
            "append takes validated batches"
        );
        loop {
            let seen = self.core.changed.epoch();
            match self.try_append(batch, &header, leader_epoch)? {
                AppendStep::Done(appended) => return Ok(appended),
                AppendStep::WaitForRoll => self.core.changed.changed(seen).await,
                AppendStep::Roll => {
                    let _rolling = Rolling(&self.core);
                    self.roll().await?;
                }
                AppendStep::MakeRoom => {
                    if !self.core.make_room()? {
                        self.core.changed.changed(seen).await;
                    }
                }
            }
        }
    }

    /// The synchronous part of `append`: copies the batch into the tail if it fits, or says
    /// what must happen first. Never awaits, so its borrow of the state cannot span one.
    fn try_append(
        &self,
        batch: &[u8],
        header: &BatchHeader,
        leader_epoch: u32,
    ) -> Result<AppendStep, LogError> {
        let len = batch.len() as u64;
        let mut st = self.core.state.borrow_mut();
        st.writable()?;
        if st.rolling {
            return Ok(AppendStep::WaitForRoll);
        }
        if st.active.data_end + len > st.active.capacity_bytes {
            st.rolling = true;
            return Ok(AppendStep::Roll);
        }
        // A tail buffer smaller than the largest takes more room before anything is written.
        if (st.tail.free_bytes() as u64) < len
            && (st.tail.capacity() as u64) < self.core.config.write_buffer_bytes
        {
            let larger = tail_bytes(&self.core.config, st.tail.held() as u64 + len);
            let larger = st.active.file.alloc_buffer(larger);
            st.tail.grow(larger);
        }
        // A full tail, or enough pending for one large write: hand it to the disk first.
        if (st.tail.free_bytes() as u64) < len
            || st.tail.dirty_bytes() as u64 >= self.core.pipeline.write_bytes_max
        {
            return Ok(AppendStep::MakeRoom);
        }
        let base_offset = st.next_offset;
        let position = st.active.data_end;
        let copy = st.tail.push(batch);
        // Both fields lie outside the crc; the copy is at least a header long.
        let _ = set_base_offset(copy, base_offset);
        let _ = set_leader_epoch(copy, leader_epoch);
        let next_offset = base_offset + u64::from(header.record_count);
        st.active
            .index
            .observe(base_offset, position, header.max_timestamp_ms);
        st.active.data_end += len;
        let batch_end = st.active.data_end;
        st.batch_ends.push_back((batch_end, next_offset));
        st.active.next_offset = next_offset;
        st.next_offset = next_offset;
        st.stats.appends += 1;
        st.check_invariants();
        // Half full: start preparing the next segment, so the roll finds it ready. (Not
        // earlier: a spare for every quiet partition would double a quiet broker's writes.)
        if matches!(st.spare, Spare::Absent) && st.active.data_end * 2 >= st.active.capacity_bytes {
            // Byte retention only (no clock here): age retention hands its segments over in
            // `maintain`.
            let by_size = Retention {
                ms: None,
                ..self.core.config.retention
            };
            let past = st.past_retention(by_size, 0);
            let retired = self.core.take_retired(&mut st, past);
            self.core.start_spare(&mut st, retired);
        }
        if st.active.data_end >= st.spare_due {
            st.spare_due = u64::MAX;
            self.core.spare_wake.notify();
        }
        Ok(AppendStep::Done(Appended {
            base_offset,
            next_offset,
        }))
    }

    /// Waits until every offset below `offset` is in a completed write (survives a crash of
    /// the process, not of the machine).
    pub async fn wait_written(&self, offset: u64) -> Result<(), LogError> {
        self.core.commit(offset, false).await
    }

    /// Waits until every offset below `offset` is durable.
    pub async fn wait_synced(&self, offset: u64) -> Result<(), LogError> {
        self.core.commit(offset, true).await
    }

    /// Starts writing every offset below `offset` without waiting for it (a produce nobody
    /// waits for): a task of the log's own runs the group commit, at most one per log at a
    /// time, and calls `committed` after each round of it, done or failed (the caller's
    /// cue to look at `offsets` and `health`). A call while the task runs only raises its
    /// goal; its `committed` is dropped, as the running task's one serves.
    pub fn commit_soon(&self, offset: u64, committed: impl Fn() + 'static) {
        let mut st = self.core.state.borrow_mut();
        if offset <= st.background_upto {
            return;
        }
        st.background_upto = offset;
        if st.background.is_none() {
            self.core.start_background(&mut st, committed);
        }
    }

    /// Waits until the log holds written data at `offset` (`written > offset`): the wake-up
    /// of a long-poll fetch. Returns early with an error if the log fails or closes. Never
    /// starts a commit itself: every append has a waiter, or a `commit_soon`, that does.
    pub async fn wait_written_beyond(&self, offset: u64) -> Result<(), LogError> {
        loop {
            let seen = self.core.changed.epoch();
            {
                let st = self.core.state.borrow();
                if st.written_offset > offset {
                    return Ok(());
                }
                if st.closed {
                    return Err(LogError::Closed);
                }
                st.health.check()?;
            }
            self.core.changed.changed(seen).await;
        }
    }

    /// Seals the active segment and starts the next one at `next_offset`.
    async fn roll(&self) -> Result<(), LogError> {
        let started = Instant::now();
        let upto = self.core.state.borrow().next_offset;
        // Everything in the old segment is durable before a newer segment exists, so recovery
        // may treat any invalid batch in a sealed segment as corruption.
        self.core.commit(upto, true).await?;
        self.write_active_index().await;
        let base = upto;
        let file = self.new_segment_file(base).await?;
        self.core
            .storage
            .sync_dir(&self.core.dir)
            .await
            .map_err(LogError::io("sync log directory"))?;
        let tail_buf = file.alloc_buffer(tail_bytes(&self.core.config, 0));
        let capacity_bytes = file.size().await.map_err(LogError::io("stat segment"))?;
        {
            let mut st = self.core.state.borrow_mut();
            let interval = self.core.config.index_interval_bytes;
            let segment = Segment::empty(base, file, capacity_bytes, interval);
            let old = std::mem::replace(&mut st.active, segment);
            st.sealed.insert(old.base_offset, old);
            // The commit above waited for every write and sync of the old segment.
            assert!(st.inflight.is_empty() && st.batch_ends.is_empty());
            assert!(st.syncing.is_empty());
            st.recent_bytes.clear();
            st.spare_due = u64::MAX;
            st.tail = Tail::new(tail_buf, 0);
            st.written_end = 0;
            st.written_batch_end = 0;
            st.synced_end = 0;
            st.stats.rolls += 1;
            st.check_invariants();
        }
        // Best effort: a stale checkpoint only weakens damage detection. Skipped when the
        // upkeep writes one (in the background queue): appends wait for the roll, and the
        // next upkeep records the new segment.
        let _ = self.write_checkpoint(WhenBusy::Skip).await;
        // Appends wait until the roll returns (`Rolling`), checkpoint included.
        self.core.state.borrow_mut().stats.roll_us += started.elapsed().as_micros() as u64;
        Ok(())
    }

    /// A prepared segment file for base offset `base`: the spare (waiting for it while it is
    /// being prepared), else a new one made now, allocated only (every append of this log
    /// waits meanwhile).
    async fn new_segment_file(&self, base: u64) -> Result<S::File, LogError> {
        let path = log_path(&self.core.dir, base);
        // A spare still zeroing at the appends' pace sees the roll (`rolling`) and stops.
        self.core.spare_wake.notify();
        let spare_ready = loop {
            let seen = self.core.changed.epoch();
            let taken = {
                let mut st = self.core.state.borrow_mut();
                if st.closed {
                    // Nothing of a closed log touches its directory (see `close`).
                    return Err(LogError::Closed);
                }
                let ready = match st.spare {
                    Spare::Preparing(_) => None,
                    Spare::Ready => Some(true),
                    Spare::Absent | Spare::Failed => {
                        st.stats.rolls_without_spare += 1;
                        Some(false)
                    }
                };
                if ready.is_some() {
                    st.spare = Spare::Absent;
                }
                ready
            };
            match taken {
                Some(ready) => break ready,
                None => self.core.changed.changed(seen).await,
            }
        };
        let (storage, dir, config) = (&self.core.storage, &self.core.dir, &self.core.config);
        if spare_ready
            && let Ok(file) =
                recovery::take_segment_file(storage, &dir.join(SPARE_READY), &path, config).await
        {
            return Ok(file);
        }
        recovery::create_allocated_segment_file(&self.core.storage, &path, &self.core.config).await
    }

    /// Writes the active segment's index file (best effort: it is rebuilt when lost). Call
    /// only when the active segment's data is synced.
    async fn write_active_index(&self) {
        let core = Rc::clone(&self.core);
        let written = self.core.dir_op(DirWork::Index, WhenBusy::Wait, move |st| {
            let path = index_path(&core.dir, st.active.base_offset);
            let image = st.active.index_image();
            Some(async move { recovery::write_small_file(&core.storage, &path, &image).await })
        });
        match written.await {
            Ok(_) | Err(LogError::Closed) => {}
            Err(error) => {
                tracing::warn!(dir = %self.core.dir.display(), %error, "index not written; rebuilt on next open")
            }
        }
    }

    /// Records the synced position so recovery can tell corruption from a torn tail. False
    /// when the checkpoint on disk says it already (or, with `WhenBusy::Skip`, when another
    /// checkpoint write runs).
    async fn write_checkpoint(&self, when_busy: WhenBusy) -> Result<bool, LogError> {
        let core = Rc::clone(&self.core);
        let written = self.core.dir_op(DirWork::Checkpoint, when_busy, move |st| {
            let point = Checkpoint {
                segment_base: st.active.base_offset,
                position: st.synced_end,
                next_offset: st.synced_offset,
            };
            if st.checkpoint == Some(point) {
                return None;
            }
            let existed = st.checkpoint.is_some();
            Some(async move {
                let path = core.dir.join(CHECKPOINT_FILE);
                recovery::write_small_file(&core.storage, &path, &point.encode(BLOCK_BYTES))
                    .await?;
                if !existed {
                    core.storage
                        .sync_dir(&core.dir)
                        .await
                        .map_err(LogError::io("sync log directory"))?;
                }
                core.state.borrow_mut().checkpoint = Some(point);
                Ok(())
            })
        });
        Ok(written.await?.is_some())
    }

    /// Background upkeep, run by the shard in its background task queue: deletes segments
    /// past retention (`now_ms`: wall clock, ms since the epoch) and records the durable
    /// point. (The log prepares its next segment itself, once the active one is half full.)
    /// A log closed meanwhile ends it early, with what was done.
    pub async fn maintain(&self, now_ms: i64) -> Result<MaintainReport, LogError> {
        let mut report = MaintainReport::default();
        if self.core.state.borrow().writable().is_err() {
            return Ok(report);
        }
        let upkeep = async {
            report.segments_deleted = self.enforce_retention(now_ms).await?;
            report.checkpoint_written = self.write_checkpoint(WhenBusy::Wait).await?;
            Ok(())
        };
        match upkeep.await {
            Ok(()) | Err(LogError::Closed) => Ok(report),
            Err(error) => Err(error),
        }
    }

    /// Deletes whole sealed segments past the retention bounds, oldest first. The active
    /// segment is never deleted. When no spare is on its way, one of them is recycled as the
    /// next segment instead (see `Core::take_retired`).
    /// `Closed` once the log is closed.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let core = Rc::clone(&self.core);
        let removed = self.core.dir_op(DirWork::Retention, WhenBusy::Wait, move |st| {
            let past = st.past_retention(core.config.retention, now_ms);
            if past == 0 {
                return None;
            }
            // The oldest goes first: recycled, when the log wants a spare, else deleted.
            let retired = core.take_retired(st, past);
            let recycled = usize::from(retired.is_some());
            if retired.is_some() {
                core.start_spare(st, retired);
            }
            let doomed: Vec<(u64, Rc<S::File>)> = (0..past - recycled)
                .filter_map(|_| st.sealed.pop_first())
                .map(|(base, segment)| (base, segment.file))
                .collect();
            st.stats.segments_deleted += doomed.len() as u64;
            // Readers still holding a segment's file keep reading it; the name goes now.
            Some(async move {
                for (base, _file) in &doomed {
                    tracing::info!(dir = %core.dir.display(), base, "retention: deleting segment");
                    core.storage
                        .remove(&log_path(&core.dir, *base))
                        .await
                        .map_err(LogError::io("remove segment"))?;
                    let _ = core.storage.remove(&index_path(&core.dir, *base)).await;
                }
                Ok(past)
            })
        });
        Ok(removed.await?.unwrap_or(0))
    }

    /// Whole batches, as stored, starting with the one holding `offset`: at most `max_bytes`
    /// unless the first batch alone is larger, never a batch reaching `max_offset` or beyond.
    /// Empty when `offset` is at the end. Every batch read from the file is checked against
    /// its crc first, so a corrupt batch is never served; one still in memory was checked
    /// before `append` took it, and is not checked again. Reads stay within one segment, like
    /// Kafka's fetch.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        max_offset: u64,
    ) -> Result<Vec<u8>, LogError> {
        let (segment_base, mut position, segment_end, file) = {
            let st = self.core.state.borrow();
            let start = st.log_start();
            let out_of_range = LogError::OffsetOutOfRange {
                offset,
                start,
                end: st.next_offset,
            };
            if offset < start || offset > st.next_offset {
                return Err(out_of_range);
            }
            if offset >= st.next_offset.min(max_offset) {
                return Ok(Vec::new());
            }
            let segment = if offset >= st.active.base_offset {
                &st.active
            } else {
                match st.sealed.range(..=offset).next_back() {
                    Some((_, segment)) => segment,
                    None => return Err(out_of_range),
                }
            };
            let position = segment.index.lookup(offset);
            (
                segment.base_offset,
                position,
                segment.data_end,
                Rc::clone(&segment.file),
            )
        };
        // Read ahead in windows: the batches wanted plus the distance from the index entry.
        let window = (max_bytes as u64)
            .max(64 << 10)
            .saturating_add(self.core.config.index_interval_bytes)
            .saturating_add(BATCH_HEADER_BYTES as u64);
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_pos = position;
        let mut buf_disk_end = position;
        let mut out = Vec::new();
        while position < segment_end {
            let header_end = (position + BATCH_HEADER_BYTES as u64).min(segment_end);
            if !(position >= buf_pos && header_end <= buf_pos + buf.len() as u64) {
                let to = segment_end.min(position + window);
                (buf, buf_disk_end) = self.read_range(segment_base, &file, position, to).await?;
                buf_pos = position;
            }
            let at = (position - buf_pos) as usize;
            let header = BatchHeader::parse(buf.get(at..).unwrap_or_default())
                .map_err(|error| self.corrupt(segment_base, position, error))?;
            let len = u64::from(header.batch_len);
            if len < BATCH_HEADER_BYTES as u64 || position + len > segment_end {
                let error = protocol::BatchError::BadLength {
                    len: header.batch_len,
                };
                return Err(self.corrupt(segment_base, position, error));
            }
            if position + len > buf_pos + buf.len() as u64 {
                let to = segment_end.min(position + len.max(window));
                (buf, buf_disk_end) = self.read_range(segment_base, &file, position, to).await?;
                buf_pos = position;
            }
            let at = (position - buf_pos) as usize;
            let raw = buf.get(at..at + len as usize).unwrap_or_default();
            // A batch read from the file is checked whole (crc, fields, records); one that
            // never left memory was checked before `append` took it, so its header will do.
            let next_offset = if position < buf_disk_end {
                BatchView::new(raw)
                    .map_err(|error| self.corrupt(segment_base, position, error))?
                    .next_offset()
            } else {
                header.next_offset()
            };
            position += len;
            if next_offset <= offset {
                continue;
            }
            let over_budget = !out.is_empty() && out.len() + raw.len() > max_bytes;
            if next_offset > max_offset || over_budget {
                break;
            }
            out.extend_from_slice(raw);
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn corrupt(&self, segment_base: u64, position: u64, error: protocol::BatchError) -> LogError {
        tracing::error!(dir = %self.core.dir.display(), segment_base, position, %error, "corrupt batch on disk; log marked damaged");
        let mut st = self.core.state.borrow_mut();
        if st.health == Health::Healthy {
            st.health = Health::Damaged {
                segment_base,
                position,
                offset: segment_base,
                reason: format!("read found: {error}"),
            };
            self.core.spare_wake.notify();
        }
        LogError::Corrupt {
            segment_base,
            position,
            error,
        }
    }

    /// The bytes at positions `[from, to)` of a segment, from memory where the tail, a write
    /// buffer or the recently written bytes still hold them and from the file otherwise, and
    /// the position before which some came from the file (`from` if none did).
    async fn read_range(
        &self,
        segment_base: u64,
        file: &Rc<S::File>,
        from: u64,
        to: u64,
    ) -> Result<(Vec<u8>, u64), LogError> {
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut cur = from;
        let mut disk_end = from;
        while cur < to {
            let disk_until = {
                let st = self.core.state.borrow();
                if st.active.base_offset == segment_base {
                    let tail_end = st.tail.data_end();
                    let in_tail = st
                        .tail
                        .bytes(cur, to.min(tail_end))
                        .filter(|b| !b.is_empty());
                    let in_flight = st.inflight.iter().find_map(|w| {
                        w.data
                            .bytes(cur, to.min(w.data.data_end()))
                            .filter(|b| !b.is_empty())
                    });
                    let recent = || {
                        st.recent_bytes
                            .bytes(cur, to.min(st.written_end))
                            .filter(|b| !b.is_empty())
                    };
                    if let Some(bytes) = in_tail.or(in_flight).or_else(recent) {
                        out.extend_from_slice(bytes);
                        cur += bytes.len() as u64;
                        continue;
                    }
                    to.min(st.written_end)
                } else {
                    to
                }
            };
            if disk_until <= cur {
                return Err(LogError::Io {
                    op: "read",
                    source: io::Error::other(format!(
                        "bytes at {cur} neither in memory nor written"
                    )),
                });
            }
            let start = block_floor(cur);
            let len = block_ceil(disk_until) - start;
            {
                let stats = &mut self.core.state.borrow_mut().stats;
                stats.disk_reads += 1;
                stats.disk_read_bytes += len;
            }
            let data = file
                .read_at(start, len as usize)
                .await
                .map_err(LogError::io("read"))?;
            let wanted = data.get((cur - start) as usize..(disk_until - start) as usize);
            let Some(bytes) = wanted else {
                return Err(LogError::Io {
                    op: "read",
                    source: io::Error::other(format!(
                        "short read at {start}: {} bytes",
                        data.len()
                    )),
                });
            };
            out.extend_from_slice(bytes);
            cur = disk_until;
            disk_end = disk_until;
        }
        Ok((out, disk_end))
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or `None` when
    /// no record reaches it (the caller answers with the end of the log).
    pub async fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>, LogError> {
        let candidates: Vec<(u64, u64)> = {
            let st = self.core.state.borrow();
            st.sealed
                .values()
                .chain(std::iter::once(&st.active))
                .filter(|s| s.max_timestamp_ms() >= timestamp_ms)
                .map(|s| (s.index.lookup_time(timestamp_ms).0, s.next_offset))
                .collect()
        };
        for (mut offset, segment_next) in candidates {
            while offset < segment_next {
                let bytes = match self.read(offset, 1 << 20, segment_next).await {
                    Err(LogError::OffsetOutOfRange { .. }) => break, // deleted by retention
                    read => read?,
                };
                if bytes.is_empty() {
                    break;
                }
                for batch in protocol::Batches::new(&bytes) {
                    let batch = batch.map_err(LogError::InvalidBatch)?;
                    let reaching = batch.max_timestamp_ms() >= timestamp_ms;
                    let first = batch.records().find(|r| r.timestamp_ms >= timestamp_ms);
                    if let (true, Some(record)) = (reaching, first) {
                        return Ok(Some(record.offset));
                    }
                    offset = batch.next_offset();
                }
            }
        }
        Ok(None)
    }

    /// Graceful close: commits and syncs everything appended, writes the active segment's
    /// index and the durable point (so the next open resumes from the index), closes files.
    /// A failed log closes without syncing: nothing after the failure is ever reported.
    /// The log is closed when this returns, also with an error (from the final commit, or
    /// from writing the durable point, which the next open does without): it takes no
    /// append and nothing of it touches its directory any more.
    pub async fn close(&self) -> Result<(), LogError> {
        let (healthy, next) = {
            let st = self.core.state.borrow();
            (st.health == Health::Healthy && !st.closed, st.next_offset)
        };
        let flushed = if healthy {
            async {
                self.core.commit(next, true).await?;
                self.write_active_index().await;
                self.write_checkpoint(WhenBusy::Wait).await.map(drop)
            }
            .await
        } else {
            Ok(())
        };
        let healthy = healthy && flushed.is_ok();
        let (quiet, spare) = {
            let mut st = self.core.state.borrow_mut();
            // From here no append is taken, so no new spare starts.
            st.closed = true;
            // Nothing appended after the commit above and nothing in flight: every write is
            // complete and synced, so no lost write can have left remains past the data.
            let quiet = healthy
                && st.inflight.is_empty()
                && st.synced_end == st.active.data_end
                && st.synced_offset == st.next_offset;
            let spare = match std::mem::replace(&mut st.spare, Spare::Absent) {
                Spare::Preparing(task) => Some(task),
                other => {
                    st.spare = other;
                    None
                }
            };
            (quiet, spare)
        };
        self.core.changed.notify();
        self.core.spare_wake.notify();
        // Nothing of this log may touch its directory after close, when it may be opened
        // again or removed with its topic: a spare being zeroed sees `closed` and removes its
        // file; a rename finishes; a roll still waiting for its segment file gets `Closed`
        // instead of making one. (Callers end their appends, and so any roll, first.)
        if let Some(task) = spare {
            let _ = task.await;
        }
        // A directory operation started before the close (the upkeep's checkpoint) lands
        // before close returns; none starts after.
        loop {
            let seen = self.core.dir_wake.epoch();
            if self.core.state.borrow().dir_ops.is_empty() {
                break;
            }
            self.core.dir_wake.changed(seen).await;
        }
        if quiet {
            // Best effort: without the marker the next open checks the rest of the segment.
            let marked = recovery::mark_closed_cleanly(&self.core.storage, &self.core.dir).await;
            if let Err(error) = marked {
                tracing::warn!(dir = %self.core.dir.display(), %error, "clean-close marker not written");
            }
        }
        flushed
    }
}

/// A tail buffer's length for `wanted` bytes: the next power of two, at least
/// [`TAIL_BYTES_MIN`], at most `write_buffer_bytes` (a multiple of the block size).
fn tail_bytes(config: &LogConfig, wanted: u64) -> usize {
    let largest = config.write_buffer_bytes;
    let bytes = wanted
        .checked_next_power_of_two()
        .unwrap_or(largest)
        .clamp(TAIL_BYTES_MIN.min(largest), largest);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Starts one of the log's tasks in the current task queue. Scheduled to run, not polled at
/// once as `glommio::spawn_local` would: the caller holds the state's borrow, which the task
/// takes when its I/O completes (at once, on the simulated disk).
fn spawn_task(task: impl Future<Output = ()> + 'static) -> JoinHandle<()> {
    let queue = glommio::executor().current_task_queue();
    let Ok(task) = glommio::spawn_local_into(task, queue) else {
        unreachable!("the running task's queue exists");
    };
    task.detach()
}

impl<S: Storage> Drop for Log<S> {
    /// The log's tasks end with it: a write or sync still running is never recorded (what it
    /// covers was never acknowledged), and a simulated power loss that drops the log stops
    /// all of its I/O. On the simulated disk a cancelled write never lands, so it cannot
    /// overtake a reopened log's rewrite of its block; on a real disk the kernel may still
    /// perform a write it already has, so reopen only after `close`, which leaves no write
    /// in flight on a healthy log.
    fn drop(&mut self) {
        // No borrow of the state is ever held across an await, so this never fails.
        if let Ok(st) = self.core.state.try_borrow() {
            st.tasks().for_each(JoinHandle::cancel);
        }
    }
}

impl<S: Storage> Core<S> {
    /// Group commit, pipelined. Every waiter drives the log towards its own goal: it issues a
    /// write of what is pending when its batch is not yet handed to the disk (and the
    /// pipeline has room), or an fdatasync once its batch is written and no sync in flight
    /// covers it (and `sync_has_room`), and otherwise waits for the next completion. Up to
    /// `WritePipeline::writes_in_flight` writes run at once, never two on the same block, and
    /// up to `syncs_in_flight` syncs; `written` moves only over the contiguous prefix of
    /// completed writes, a sync covers only writes that completed before it was issued, and
    /// `synced` moves only over the prefix of completed syncs.
    ///
    /// Each write and sync runs in a task of the log's own, which records its completion: a
    /// waiter only issues and waits, so dropping it (a produce timeout) loses nothing.
    async fn commit(self: &Rc<Self>, upto: u64, durable: bool) -> Result<(), LogError> {
        let mut gathered = false;
        loop {
            let seen = self.changed.epoch();
            let gather = {
                let mut st = self.state.borrow_mut();
                assert!(
                    upto <= st.next_offset,
                    "commit of {upto} beyond {}",
                    st.next_offset
                );
                let done = if durable {
                    st.synced_offset
                } else {
                    st.written_offset
                };
                // What is covered stays truthfully covered, even after a failure.
                if done >= upto {
                    return Ok(());
                }
                st.health.check()?;
                if st.written_offset < upto {
                    let need = st.position_after(upto);
                    match self.plan_write(&st, need) {
                        None => false,
                        Some(_) if !gathered => true,
                        Some(how) => {
                            self.start_write(&mut st, how);
                            continue;
                        }
                    }
                } else {
                    // Written but not durable: only with fdatasync (O_DSYNC writes are
                    // durable when they complete). A sync in flight that covers `upto`
                    // will do; else a new one (see `sync_has_room`).
                    let covered = st.syncing.back().map_or(st.synced_offset, |s| s.offset);
                    if covered < upto && self.sync_has_room(&st) {
                        self.start_sync(&mut st);
                    }
                    false
                }
            };
            if gather {
                gathered = true;
                self.gather().await;
            } else {
                self.changed.changed(seen).await;
            }
        }
    }

    /// Runs the log's work on its directory outside the write pipeline: a checkpoint or index
    /// write, retention's removals. Once no work of the same kind runs (`when_busy` says
    /// whether to wait for it or do nothing), `start` takes the state and returns the work
    /// (`None`: nothing to do), which runs in a task of the log's own, so that:
    /// - one checkpoint write at a time, the newest is the last one written (work of other
    ///   kinds touches other files, and runs beside it: a roll never waits for retention);
    /// - `io_in_flight` counts it, and a caller dropped midway (an upkeep given up) does not
    ///   cancel it;
    /// - `close` waits for it, and none starts once the log is closed (`Closed`): nothing of
    ///   a closed log lands in its directory later, where it may be truncated and opened
    ///   again (a late checkpoint would claim bytes durable that the cut log no longer has)
    ///   or removed with its topic.
    async fn dir_op<T: 'static, W>(
        self: &Rc<Self>,
        work: DirWork,
        when_busy: WhenBusy,
        start: impl FnOnce(&mut State<S::File>) -> Option<W>,
    ) -> Result<Option<T>, LogError>
    where
        W: Future<Output = Result<T, LogError>> + 'static,
    {
        loop {
            let seen = self.dir_wake.epoch();
            {
                let st = self.state.borrow();
                if st.closed {
                    return Err(LogError::Closed);
                }
                if st.dir_ops.iter().all(|op| op.work != work) {
                    break;
                }
            }
            if when_busy == WhenBusy::Skip {
                return Ok(None);
            }
            self.dir_wake.changed(seen).await;
        }
        let done = Rc::new(RefCell::new(None));
        {
            let mut st = self.state.borrow_mut();
            let Some(future) = start(&mut st) else {
                return Ok(None);
            };
            let (core, result) = (Rc::clone(self), Rc::clone(&done));
            let task = spawn_task(async move {
                let outcome = future.await;
                *result.borrow_mut() = Some(outcome);
                core.state.borrow_mut().dir_ops.retain(|op| op.work != work);
                core.dir_wake.notify();
            });
            st.dir_ops.push(DirOp {
                work,
                io: Issued::new(task),
            });
        }
        loop {
            let seen = self.dir_wake.epoch();
            if let Some(outcome) = done.borrow_mut().take() {
                return outcome.map(Some);
            }
            self.dir_wake.changed(seen).await;
        }
    }

    /// Keeps committing up to `background_upto` in a task of the log's own, so that batches
    /// nobody waits for are written too; at most one such task runs per log.
    fn start_background(self: &Rc<Self>, st: &mut State<S::File>, committed: impl Fn() + 'static) {
        let core = Rc::clone(self);
        st.background = Some(spawn_task(async move {
            loop {
                let upto = core.state.borrow().background_upto;
                let result = core.commit(upto, false).await;
                committed();
                let mut st = core.state.borrow_mut();
                if result.is_err() || st.background_upto <= upto {
                    st.background = None;
                    return;
                }
            }
        }));
    }

    /// Starts the task that prepares the next segment file (`Spare::Preparing`); the roll
    /// takes it, or waits for it. `retired`: a segment retention let go of, whose file
    /// becomes the spare as it is; otherwise a new file is made.
    fn start_spare(self: &Rc<Self>, st: &mut State<S::File>, retired: Option<(u64, Rc<S::File>)>) {
        st.spare_from = st.active.data_end.max(st.active.capacity_bytes / 2);
        let core = Rc::clone(self);
        st.spare = Spare::Preparing(spawn_task(async move {
            let recycled = retired.is_some();
            let prepared = match retired {
                Some((base, file)) => core.recycle_spare(base, file).await,
                None => core.prepare_spare().await,
            };
            let mut st = core.state.borrow_mut();
            st.spare = match prepared {
                Ok(()) => {
                    st.stats.spares_prepared += 1;
                    st.stats.segments_recycled += u64::from(recycled);
                    Spare::Ready
                }
                Err(LogError::Closed) => Spare::Failed,
                Err(error) => {
                    tracing::warn!(dir = %core.dir.display(), %error, "next segment not prepared; the roll makes it");
                    Spare::Failed
                }
            };
            drop(st);
            core.changed.notify();
        }));
    }

    /// The oldest sealed segment, taken out of the log to become the next segment file,
    /// when `past` (>= 1) segments are past retention, the log has no spare on its way, and
    /// nobody reads the segment (a reader holds its file until its read returns).
    ///
    /// A recycled file needs no extent conversion and no zeroing: appends overwrite its old
    /// batches in place, which the disk takes at its overwrite bandwidth (fio: about twice
    /// that of writes into freshly fallocated space on the machines measured). Every old
    /// batch holds offsets below the log start, so below every base offset the file can get;
    /// recovery never takes one for the next batch (see `recovery`).
    fn take_retired(&self, st: &mut State<S::File>, past: usize) -> Option<(u64, Rc<S::File>)> {
        let wanted = self.config.recycle_segments
            && past > 0
            && matches!(st.spare, Spare::Absent | Spare::Failed)
            && st.writable().is_ok();
        let (&base, oldest) = st.sealed.first_key_value()?;
        let usable = oldest.capacity_bytes == self.config.segment_bytes
            && Rc::strong_count(&oldest.file) == 1;
        if !wanted || !usable {
            return None;
        }
        let segment = st.sealed.remove(&base)?;
        st.stats.segments_deleted += 1;
        Some((base, segment.file))
    }

    /// Turns a segment retention let go of into `spare.ready`: its index goes, then its
    /// name. A crash in between leaves the segment without an index (rebuilt at the next
    /// open, then let go of again); a crash after leaves a ready spare.
    async fn recycle_spare(&self, base: u64, file: Rc<S::File>) -> Result<(), LogError> {
        tracing::info!(dir = %self.dir.display(), base, "retention: recycling segment as the next one");
        let path = log_path(&self.dir, base);
        let _ = self.storage.remove(&index_path(&self.dir, base)).await;
        let recycled = async {
            if let Ok(file) = Rc::try_unwrap(file) {
                file.close()
                    .await
                    .map_err(LogError::io("close recycled segment"))?;
            }
            self.storage
                .rename(&path, &self.dir.join(SPARE_READY))
                .await
                .map_err(LogError::io("rename recycled segment"))
        }
        .await;
        if recycled.is_err() {
            // Retention let go of it either way: left behind, the next open would take it
            // for the log's start and serve its old batches again.
            let _ = self.storage.remove(&path).await;
        }
        recycled
    }

    /// Prepares the next segment file: allocated, zeroed (as far as `spare_pace` lets it),
    /// synced, then renamed to `spare.ready`. A crash mid-way leaves `spare.tmp`, which
    /// `open` removes.
    ///
    /// The zeroing goes in small writes, paced by the appends (`spare_pace`): all at once, a
    /// 128 MiB segment kept the device busy with 2 MiB writes for about 150 ms, and every
    /// append's 4 KiB write queued behind them (p99 0.5 ms, max 4.5 ms, against 78 µs p90).
    async fn prepare_spare(&self) -> Result<(), LogError> {
        let tmp = self.dir.join(SPARE_TMP);
        let pace = |zeroed| self.spare_pace(zeroed);
        let (file, zeroed) =
            recovery::create_segment_file_paced(&self.storage, &tmp, &self.config, pace).await?;
        self.state.borrow_mut().stats.zero_bytes += zeroed;
        file.close().await.map_err(LogError::io("close spare"))?;
        self.storage
            .rename(&tmp, &self.dir.join(SPARE_READY))
            .await
            .map_err(LogError::io("rename spare"))
    }

    /// Waits until a spare with `zeroed` bytes done may zero its next chunk, and says how
    /// long that chunk is. Zeroing keeps pace with the appends so that it ends halfway from
    /// where the spare began (`spare_from`, half full or later) to the segment's end: at
    /// three quarters full for a spare begun at half, a quarter segment of appends per
    /// segment zeroed, `SPARE_ZERO_CHUNK_BYTES` at a time. Behind schedule, it writes its
    /// chunks back to back.
    ///
    /// It stops (`Enough`) when the appends get `write_buffer_bytes` (of appends) ahead of
    /// that schedule, which a producer faster than about a quarter of the disk's bandwidth
    /// soon does, or when a roll waits for the spare: the rest of the file is left as
    /// allocated space. Zeros would take the disk's bandwidth from such a producer's appends
    /// (every byte written twice) and make its rolls wait; it pays the extent conversions of
    /// `Preallocate::Fallocate` instead, in the segments it fills faster than they can be
    /// zeroed. `Abandon` once the log is closed or failed.
    ///
    /// Behind that schedule (a log that went quiet between half and three quarters full)
    /// it still writes a chunk each second, instead of holding the task and the file open
    /// for as long as the log stays quiet.
    async fn spare_pace(&self, zeroed: u64) -> ZeroPace {
        let ahead = self.config.write_buffer_bytes.max(SPARE_ZERO_CHUNK_BYTES);
        let mut idle = std::pin::pin!(self.storage.sleep(SPARE_IDLE_PACE));
        loop {
            let seen = self.spare_wake.epoch();
            {
                let mut st = self.state.borrow_mut();
                if st.closed || st.health != Health::Healthy {
                    return ZeroPace::Abandon;
                }
                let from = st.spare_from;
                let span = (st.active.capacity_bytes.saturating_sub(from) / 2).max(1);
                let due = |zeroed: u64| {
                    let along = u128::from(zeroed) * u128::from(span)
                        / u128::from(self.config.segment_bytes.max(1));
                    from.saturating_add(u64::try_from(along).unwrap_or(u64::MAX))
                };
                if st.rolling || st.active.data_end >= due(zeroed).saturating_add(ahead) {
                    st.stats.spares_cut_short += 1;
                    return ZeroPace::Enough;
                }
                if st.active.data_end >= due(zeroed) {
                    return ZeroPace::Chunk(SPARE_ZERO_CHUNK_BYTES);
                }
                st.spare_due = due(zeroed);
            }
            let quiet = futures_lite::future::or(
                async {
                    self.spare_wake.changed(seen).await;
                    false
                },
                async {
                    (&mut idle).await;
                    true
                },
            )
            .await;
            if quiet {
                return ZeroPace::Chunk(SPARE_ZERO_CHUNK_BYTES);
            }
        }
    }

    /// The tail is full: hand what it holds to the disk (a fresh buffer takes its place at
    /// once). False when a write in flight must complete first.
    fn make_room(self: &Rc<Self>) -> Result<bool, LogError> {
        let mut st = self.state.borrow_mut();
        st.writable()?;
        // Room comes from handing out whole blocks; the partial one can stay.
        let need = st.tail.whole_blocks_end().max(st.tail.handed_end() + 1);
        let how = self.plan_write(&st, need);
        if let Some(how) = how {
            self.start_write(&mut st, how);
        }
        Ok(how.is_some())
    }

    /// Whether a write may be issued now for a waiter that needs the bytes before `need`
    /// written, and how much it takes; `None`: wait for a completion.
    ///
    /// - Bytes already handed to a write are not written again.
    /// - No write touches a block that a write in flight touches, and at most
    ///   `writes_in_flight` run at once.
    /// - Whole blocks go out as soon as someone needs them. A partly filled last block goes out
    ///   (padded, to be rewritten later) only when someone needs it and no other write is in
    ///   flight: while writes are in flight, later appends usually fill it and it leaves as a
    ///   whole block, and a padded block stalls the next write until it completes.
    fn plan_write(&self, st: &State<S::File>, need: u64) -> Option<Take> {
        if need <= st.tail.handed_end() || st.tail_block_busy() {
            return None;
        }
        // Every write not yet retired counts, done or not: a completed write behind a slow
        // one still holds its buffer, so counting only the unfinished ones would let a stuck
        // write pin any number of buffers (and put remains any distance past a hole).
        let in_flight = st.inflight.len();
        if in_flight >= self.pipeline.writes_in_flight {
            return None;
        }
        let whole = st.tail.has_whole_dirty_blocks();
        if whole && need <= st.tail.whole_blocks_end() {
            Some(Take::WholeBlocks)
        } else if in_flight == 0 {
            Some(Take::Padded)
        } else if whole {
            Some(Take::WholeBlocks)
        } else {
            None
        }
    }

    /// Takes the tail's dirty blocks, as planned by `plan_write`, and starts the task that
    /// writes them and records the completion: the contiguous prefix of completed writes
    /// becomes `written` (and, with O_DSYNC, `synced`). A failed or short write fails the
    /// log; nothing at or after it is ever reported written.
    fn start_write(self: &Rc<Self>, st: &mut State<S::File>, how: Take) {
        // Room for twice what this write takes: a steady stream of group commits keeps the
        // buffer it needs, and a partition that goes quiet shrinks back to the smallest.
        let held = st.tail.held() as u64;
        let fresh = st
            .active
            .file
            .alloc_buffer(tail_bytes(&self.config, 2 * held));
        let data = st.tail.take(fresh, how);
        if st.inflight.iter().any(|w| !w.done) {
            st.stats.writes_overlapped += 1;
        }
        let id = st.write_id_next;
        st.write_id_next += 1;
        let (core, file, buf, pos) = (
            Rc::clone(self),
            Rc::clone(&st.active.file),
            Rc::clone(&data.buf),
            data.pos,
        );
        let len = (*buf).as_ref().len();
        let task = spawn_task(async move {
            let written = write_whole(&*file, buf, pos).await;
            let mut st = core.state.borrow_mut();
            match written {
                Ok(()) => core.complete_write(&mut st, id, len),
                Err(error) => {
                    // Returned, not written: the log fails, so it is never retired.
                    if let Some(write) = st.inflight.iter_mut().find(|w| w.id == id) {
                        write.done = true;
                    }
                    core.fail(&mut st, "write", &error);
                }
            }
            drop(st);
            core.changed.notify();
        });
        st.inflight.push_back(PendingWrite {
            id,
            data,
            done: false,
            io: Issued::new(task),
        });
    }

    fn complete_write(&self, st: &mut State<S::File>, id: u64, len: usize) {
        // Only a write's own task completes it, once, and a roll waits for all of them.
        let at = st.inflight.iter().position(|w| w.id == id);
        assert!(at.is_some(), "completed write {id} is not in flight");
        if let Some(write) = at.and_then(|at| st.inflight.get_mut(at)) {
            write.done = true;
            if write.data.padded {
                // Nothing was issued at the busy block meanwhile: it is still the tail's first.
                let block_end = write.data.block_end();
                assert_eq!(block_end, st.tail.pos() + BLOCK_BYTES as u64);
            }
        }
        st.stats.writes += 1;
        st.stats.write_bytes += len as u64;
        if st.health != Health::Healthy {
            // Fail-stop: a write that completes after the failure is done in the books but
            // never acknowledged; `written` and `synced` stay where the failure left them.
            st.check_invariants();
            return;
        }
        while st.inflight.front().is_some_and(|w| w.done) {
            if let Some(retired) = st.inflight.pop_front() {
                st.written_end = st.written_end.max(retired.data.data_end());
                let data = &retired.data;
                if let Some(bytes) = data.bytes(data.pos, data.data_end()) {
                    st.recent_bytes.keep(data.pos, bytes);
                }
            }
        }
        while let Some(&(end, next)) = st.batch_ends.front()
            && end <= st.written_end
        {
            st.written_batch_end = end;
            st.written_offset = next;
            st.batch_ends.pop_front();
        }
        if self.config.durability == Durability::Dsync {
            st.synced_end = st.written_batch_end;
            st.synced_offset = st.written_offset;
        }
        st.check_invariants();
    }

    /// Whether another fdatasync may start now. With none in flight, yes. Beside one that
    /// runs, only while the pipeline has room and no write is in flight but of one padded
    /// tail block: a record of a log under light load then gets its own sync at once instead
    /// of waiting for the running one to return first, even when the next record went out
    /// in that block as its write completed (figures in tuning/README, "Where a durable
    /// ack's time goes"); under load, with whole blocks still being written, the next sync
    /// waits and covers them too, as one group commit.
    fn sync_has_room(&self, st: &State<S::File>) -> bool {
        st.syncing.is_empty()
            || (st.syncing.len() < self.pipeline.syncs_in_flight
                && st
                    .inflight
                    .iter()
                    .all(|w| w.data.padded && w.data.len < BLOCK_BYTES))
    }

    /// Starts the task that runs one fdatasync, covering the writes completed so far, and
    /// records its completion: the prefix of completed syncs becomes `synced`. A failed sync
    /// fails the log.
    fn start_sync(self: &Rc<Self>, st: &mut State<S::File>) {
        let (core, file) = (Rc::clone(self), Rc::clone(&st.active.file));
        let id = st.sync_id_next;
        st.sync_id_next += 1;
        let task = spawn_task(async move {
            let synced = file.sync().await;
            let mut st = core.state.borrow_mut();
            core.complete_sync(&mut st, id, synced);
            drop(st);
            core.changed.notify();
        });
        // What the sync covers: the writes completed before it is issued.
        st.syncing.push_back(PendingSync {
            id,
            offset: st.written_offset,
            end: st.written_batch_end,
            done: false,
            io: Issued::new(task),
        });
    }

    fn complete_sync(&self, st: &mut State<S::File>, id: u64, synced: io::Result<()>) {
        // Only a sync's own task completes it, once, and a roll waits for all of them.
        let sync = st.syncing.iter_mut().find(|s| s.id == id);
        assert!(sync.is_some(), "completed sync {id} is not in flight");
        if let Some(sync) = sync {
            sync.done = true;
        }
        match synced {
            Ok(()) => {
                st.stats.syncs += 1;
                // Fail-stop: after a failure (of a write or sync, meanwhile) nothing more is
                // reported. Each sync covers at least what the one before it does, so the
                // last of the returned prefix says what is durable.
                if st.health == Health::Healthy {
                    let returned = st.syncing.iter().take_while(|s| s.done).count();
                    if let Some(last) = st.syncing.drain(..returned).next_back() {
                        st.synced_offset = last.offset;
                        st.synced_end = last.end;
                    }
                    st.check_invariants();
                }
            }
            // The kernel may have dropped the dirty state; a retry could report data as
            // durable when it is not. Stop here, for good.
            Err(error) => self.fail(st, "fdatasync", &error),
        }
    }

    /// The group-commit window: before its first write, a committer waits up to
    /// `group_commit_window_us` for more appends to join, unless `group_commit_bytes` are
    /// already pending, so the appends that arrive meanwhile ride the same write and sync.
    async fn gather(&self) {
        let window_us = self.config.group_commit_window_us;
        if window_us == 0 {
            // A window of zero time: one turn of the executor lets appenders that were woken
            // with this committer append before the write, instead of waiting for the next
            // one (measured: 16 durable appenders went from 0.118 to 0.063 syncs per append).
            futures_lite::future::yield_now().await;
            return;
        }
        let pending = self.state.borrow().tail.dirty_bytes() as u64;
        if pending < self.config.group_commit_bytes {
            self.storage
                .sleep(std::time::Duration::from_micros(window_us))
                .await;
        }
    }

    fn fail(&self, st: &mut State<S::File>, op: &'static str, error: &io::Error) {
        // The first failure (or damage) stands: a write that was in flight may fail after it.
        if st.health != Health::Healthy {
            return;
        }
        tracing::error!(dir = %self.dir.display(), op, %error, "log failed; refusing further writes");
        st.health = Health::Failed {
            op,
            errno: error.raw_os_error(),
        };
        self.spare_wake.notify();
    }
}
