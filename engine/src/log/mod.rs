//! The partition log: one replica's append-only, segmented log, owned by one shard.
//!
//! - Segments `<base-offset>.log` are created at full size and pre-zeroed ahead of the
//!   appends (or fallocated), so appends never change a file's size and an fdatasync never
//!   has to journal one. A segment that retention lets go of is recycled as the next one,
//!   old batches and all: appends overwrite blocks already written, the disk's fastest
//!   writes.
//! - Appended batches are copied into a 4 KiB-aligned tail buffer. A **group commit** writes
//!   the pending blocks in large O_DIRECT writes (about `WritePipeline::write_bytes_max`
//!   each, up to `writes_in_flight` at once) and, when a caller waits for durability, one
//!   fdatasync covers every batch whose write completed before it (or the files are opened
//!   O_DSYNC). Writes in flight never share a block; `written` advances only over the
//!   contiguous prefix of completed writes. Under light load (no write in flight but of one
//!   padded tail block), a batch written while a sync runs gets a sync of its own at once
//!   (up to `syncs_in_flight`, 2 by default) instead of waiting for that one to return;
//!   `synced` advances only over the prefix of returned syncs.
//! - The partly filled last block is written (padded) only when a waiter needs it and no
//!   other write is in flight, and is rewritten later with the same leading bytes, so a torn
//!   rewrite cannot destroy what a sync already made durable (proven by the torn-write
//!   simulation tests).
//! - After a failed write or fdatasync the log fails stop: it refuses further appends and
//!   never reports the lost data as durable.
//! - Each write and fdatasync runs in a task of the log's own, which records its completion:
//!   a waiter (`wait_written`, `wait_synced`) may be dropped at any point, by a produce
//!   timeout say, and nothing is lost. Dropping the `Log` cancels those tasks.
//! - Recovery walks the tail from the last index entry, checking every batch's length and
//!   crc32c, ends the log before a torn tail (and starts a new segment when bytes it cannot
//!   trust follow the data: remains of later writes after a hole, or old batches), and marks
//!   the log damaged when an invalid batch sits in data that was durable (below the
//!   checkpointed durable point).
//!
//! All I/O goes through [`storage::Storage`]: [`storage::DmaStorage`] in production,
//! [`memory::MemStorage`] for memory topics, [`sim::SimStorage`] in tests.

mod checkpoint;
pub mod epochs;
pub mod index;
pub mod memory;
pub(crate) mod notify;
mod partition_log;
mod recovery;
mod segment;
pub mod sim;
pub mod storage;
mod tail;
pub mod truncate;

use std::io;

pub use partition_log::{Appended, IoInFlight, Log, LogOffsets, LogStats, MaintainReport};
pub use recovery::{Recovery, Truncation, Untrusted};

use protocol::limits::BATCH_BYTES_MAX;
use storage::BLOCK_BYTES;

/// How a durable acknowledgement is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// One fdatasync per group commit that has a waiter for durability.
    Fdatasync,
    /// Segment files opened with O_DSYNC: every completed write is durable.
    Dsync,
}

/// How a new segment file is prepared before its first append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preallocate {
    /// fallocate, then write zeros over the whole file once, in the background: later
    /// overwrites need no extent conversion, so each fdatasync flushes data only. A producer
    /// that outruns the zeroing stops it, and the rest of that file is as under `Fallocate`.
    Zero,
    /// fallocate only: cheaper to create, but the first write to each extent converts it,
    /// which the next fdatasync must journal.
    Fallocate,
}

/// Retention of a partition: whole sealed segments go when either bound is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete a sealed segment once its newest record is older than this.
    pub ms: Option<u64>,
    /// Delete the oldest sealed segments while the log holds more than this.
    pub bytes: Option<u64>,
}

/// Settings of one partition log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Size of each segment file, a multiple of 4 KiB.
    pub segment_bytes: u64,
    /// An index entry for every this many bytes of log.
    pub index_interval_bytes: u64,
    /// Largest capacity of the tail buffer, which starts at 64 KiB and grows with the
    /// writes: the most one group-commit write carries.
    pub write_buffer_bytes: u64,
    pub durability: Durability,
    pub preallocate: Preallocate,
    /// A sealed segment that retention lets go of becomes the next segment file instead of
    /// being deleted (when no spare is on its way): overwriting written blocks is faster than
    /// writing fresh ones, under either `preallocate`.
    pub recycle_segments: bool,
    pub retention: Retention,
    /// The group-commit window: a committer waits up to this long for more appends before
    /// it writes, unless `group_commit_bytes` are already pending. 0: write at once.
    pub group_commit_window_us: u64,
    /// A committer skips its window when this many bytes are already pending as it starts
    /// (appends inside a window do not end it early).
    pub group_commit_bytes: u64,
}

/// How the writer overlaps its writes. Not part of [`LogConfig`] so that profiles written
/// before it keep working; `Log::open` uses the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePipeline {
    /// Most writes of one log in flight at once (1: the next write waits for the last).
    /// Writes in flight never share a block. Each holds the tail buffer it took (at most
    /// `write_buffer_bytes`) until it completes.
    pub writes_in_flight: usize,
    /// Pending bytes at which an append first hands the tail to a write: writes carry about
    /// this much (plus one batch) under load, so several can overlap instead of one write
    /// carrying the whole tail buffer. A multiple of 4 KiB, at least one block.
    pub write_bytes_max: u64,
    /// Most fdatasyncs of one log started and not yet counted (1: the next sync waits for
    /// the last; a sync that returned before one started earlier still counts here).
    /// Past the first, a sync starts only under light load (see the module docs).
    pub syncs_in_flight: usize,
}

/// Most fdatasyncs of one log started and not yet counted: each running one occupies an
/// io_uring worker thread of the shard's core; 4 leaves room to measure past the default.
pub const SYNCS_IN_FLIGHT_MAX: usize = 4;

const _: () = assert!(
    1 <= WritePipeline::SYNCS_IN_FLIGHT_DEFAULT
        && WritePipeline::SYNCS_IN_FLIGHT_DEFAULT <= SYNCS_IN_FLIGHT_MAX
);

/// Most writes of one log in flight: each pins a tail buffer, and past a handful the device
/// queue, not the log, is what limits throughput.
pub const WRITES_IN_FLIGHT_MAX: usize = 64;

impl Default for WritePipeline {
    fn default() -> Self {
        // Four in flight reach the bandwidth of fio's 1 MiB queue-depth-4 sequential writes
        // on the machines measured (PLATFORM; logbench), while one in flight reaches about
        // half of it.
        WritePipeline {
            writes_in_flight: 4,
            write_bytes_max: 1 << 20,
            syncs_in_flight: Self::SYNCS_IN_FLIGHT_DEFAULT,
        }
    }
}

impl WritePipeline {
    /// Two: a write that completes while a sync runs gets its own sync at once. The block
    /// layer of this VM's disk (one queue) runs the device's flushes one at a time, so a
    /// third would most likely only queue behind them (not measured).
    pub const SYNCS_IN_FLIGHT_DEFAULT: usize = 2;

    /// Checks the bounds; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let in_flight = |field, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err((field, format!("must be in 1..={max}; got {value}")))
            }
        };
        in_flight(
            "writes_in_flight",
            self.writes_in_flight,
            WRITES_IN_FLIGHT_MAX,
        )?;
        in_flight("syncs_in_flight", self.syncs_in_flight, SYNCS_IN_FLIGHT_MAX)?;
        if !self.write_bytes_max.is_multiple_of(BLOCK_BYTES as u64) || self.write_bytes_max == 0 {
            return Err((
                "write_bytes_max",
                format!(
                    "must be a positive multiple of {BLOCK_BYTES}; got {}",
                    self.write_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

/// Smallest segment: two of the largest batches, so a fresh segment always takes at least one
/// batch of `BATCH_BYTES_MAX` whatever the alignment of the write before it, and a roll always
/// makes room.
pub const SEGMENT_BYTES_MIN: u64 = 2 * BATCH_BYTES_MAX as u64;
/// Largest segment: positions in the index are 32-bit, and recovery of a torn tail may scan
/// the rest of the active segment. Segments are pre-zeroed in the background at about 2 GiB/s
/// (PLATFORM §2b), so 1 GiB takes about half a second; and retention deletes whole segments,
/// so larger ones would make it too coarse.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Smallest `write_buffer_bytes`, the size a tail buffer grows to: a full batch plus a partial
/// block on either side of it, because a batch can start in the middle of the block that the
/// previous group commit left half full.
pub const WRITE_BUFFER_BYTES_MIN: u64 = BATCH_BYTES_MAX as u64 + 2 * BLOCK_BYTES as u64;

/// Longest group-commit window: past 10 ms it costs more latency than any batching saves.
pub const GROUP_COMMIT_WINDOW_US_MAX: u64 = 10_000;

const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(WRITE_BUFFER_BYTES_MIN <= SEGMENT_BYTES_MIN);

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            index_interval_bytes: 4096,
            write_buffer_bytes: 2 << 20,
            durability: Durability::Fdatasync,
            preallocate: Preallocate::Zero,
            recycle_segments: true,
            retention: Retention::default(),
            group_commit_window_us: 0,
            group_commit_bytes: 1 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the bounds; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let block = BLOCK_BYTES as u64;
        if !self.segment_bytes.is_multiple_of(block)
            || !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
        {
            return Err((
                "segment_bytes",
                format!(
                    "must be a multiple of {block} in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}; got {}",
                    self.segment_bytes
                ),
            ));
        }
        if !self.write_buffer_bytes.is_multiple_of(block)
            || self.write_buffer_bytes < WRITE_BUFFER_BYTES_MIN
            || self.write_buffer_bytes > self.segment_bytes
        {
            return Err((
                "write_buffer_bytes",
                format!(
                    "must be a multiple of {block} in {WRITE_BUFFER_BYTES_MIN}..=segment_bytes; got {}",
                    self.write_buffer_bytes
                ),
            ));
        }
        if self.group_commit_window_us > GROUP_COMMIT_WINDOW_US_MAX {
            return Err((
                "group_commit_window_us",
                format!(
                    "must be at most {GROUP_COMMIT_WINDOW_US_MAX}; got {}",
                    self.group_commit_window_us
                ),
            ));
        }
        if self.group_commit_bytes > self.write_buffer_bytes {
            return Err((
                "group_commit_bytes",
                format!(
                    "must be at most write_buffer_bytes; got {}",
                    self.group_commit_bytes
                ),
            ));
        }
        if !(512..=self.segment_bytes).contains(&self.index_interval_bytes) {
            return Err((
                "index_interval_bytes",
                format!(
                    "must be in 512..=segment_bytes; got {}",
                    self.index_interval_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Why the log refuses writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// A write or fdatasync failed: nothing after it is acknowledged, ever (fail-stop).
    Failed {
        op: &'static str,
        errno: Option<i32>,
    },
    /// A batch that was durable is invalid: reported, kept on disk, never truncated away.
    Damaged {
        segment_base: u64,
        position: u64,
        offset: u64,
        reason: String,
    },
}

/// Errors of the partition log. `server::dispatch` maps them to protocol error codes.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log failed at {op} (errno {errno:?}); it accepts no more writes")]
    Failed {
        op: &'static str,
        errno: Option<i32>,
    },
    #[error(
        "log damaged at segment {segment_base} position {position} (offset {offset}): {reason}"
    )]
    Damaged {
        segment_base: u64,
        position: u64,
        offset: u64,
        reason: String,
    },
    #[error("no space left on the device for a new segment")]
    NoSpace,
    #[error("offset {offset} outside the log's {start}..={end}")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("invalid batch: {0}")]
    InvalidBatch(protocol::BatchError),
    #[error("corrupt batch in segment {segment_base} at position {position}: {error}")]
    Corrupt {
        segment_base: u64,
        position: u64,
        error: protocol::BatchError,
    },
    #[error("log configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("log is closed")]
    Closed,
}

impl LogError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> LogError {
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                LogError::NoSpace
            } else {
                LogError::Io { op, source }
            }
        }
    }
}

impl Health {
    /// The error an operation on a log in this state gets; `None` when healthy.
    pub fn error(&self) -> Option<LogError> {
        self.check().err()
    }

    fn check(&self) -> Result<(), LogError> {
        match self {
            Health::Healthy => Ok(()),
            Health::Failed { op, errno } => Err(LogError::Failed { op, errno: *errno }),
            Health::Damaged {
                segment_base,
                position,
                offset,
                reason,
            } => Err(LogError::Damaged {
                segment_base: *segment_base,
                position: *position,
                offset: *offset,
                reason: reason.clone(),
            }),
        }
    }
}
