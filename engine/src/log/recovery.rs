//! Opening a log: load segments and indexes, walk the tail, end the log before a torn tail,
//! spot damage.
//!
//! Sealed segments were synced before their index was written, so a sealed segment with a
//! valid index file, one that ends where the next segment starts, is trusted without reading
//! its data (every read checks crcs anyway). A sealed segment without one is scanned from its
//! start up to the next segment's base offset and its index rebuilt. The last segment is
//! walked from its last index entry, checking every batch's length, crc32c and offset, up to
//! the first bytes that are not the next batch: zeros (pre-zeroed or fallocated space), a
//! torn write, or an old batch of a recycled file.
//!
//! Old batches never pass for the next one. Retention recycles a segment only once the log
//! start has passed it, and a sealed segment holds nothing after its data that could carry
//! a later offset (below), so every old batch in a recycled file holds offsets below every
//! base offset the file can get.
//!
//! Writes complete out of order (several are in flight at once, and a device cache may persist
//! a later write and lose an earlier one), so after a crash valid-looking bytes can follow a
//! hole. Left in place, they could later line up with new batches and be read back as data.
//! So unless the log was closed cleanly at exactly the end found, any bytes after the end
//! retire the segment: it is sealed at its data (the file cut to the block holding the end,
//! that block zeroed after the data) or, when empty, replaced, and a new segment takes the
//! appends. Only one block is rewritten, so a recycled segment, whose old batches always
//! follow its data, costs little here.
//!
//! An invalid batch in the last segment at or above the durable point (see `checkpoint`) is
//! the remains of a write that did not complete: the log ends before it, as above. Below the
//! durable point, or in a sealed segment, an invalid batch is corruption: the log opens
//! `Damaged`, readable up to it and refusing writes, and nothing is truncated.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use protocol::limits::BATCH_HEADER_BYTES;
use protocol::{BatchHeader, BatchView};

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use super::index::Index;
use super::segment::{Segment, index_path, log_path, parse_log_name};
use super::storage::{OpenFlags, Storage, StorageFile, block_ceil, block_floor, write_whole};
use super::truncate::zero_from;
use super::{Durability, Health, LogConfig, LogError, Preallocate};

/// Name of a segment file being prepared ahead of the next roll.
pub(crate) const SPARE_TMP: &str = "spare.tmp";
/// Name of a prepared segment file waiting for the next roll: a new one (allocated, zeroed
/// if configured, synced), or a segment retention let go of, with its old batches.
pub(crate) const SPARE_READY: &str = "spare.ready";
/// Present while the log is closed cleanly: every write completed and was synced, so no lost
/// write can have left bytes after the end of the data. `open` removes it (durably) before
/// the log writes anything.
pub(crate) const CLEAN_FILE: &str = "clean";

/// Writes the clean-close marker and syncs the directory, so that it is durable. Call only
/// when the last segment's index says where its data ends and nothing but zeros or a recycled
/// file's old batches follows the data: `open` then trusts the bytes after it.
pub(crate) async fn mark_closed_cleanly<S: Storage>(
    storage: &S,
    dir: &Path,
) -> Result<(), LogError> {
    write_small_file(storage, &dir.join(CLEAN_FILE), b"closed cleanly").await?;
    storage
        .sync_dir(dir)
        .await
        .map_err(LogError::io("sync log directory"))
}

/// What recovery found and did, for the operator and for tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    pub segments: usize,
    /// Bytes of batches read and checked.
    pub scanned_bytes: u64,
    /// Indexes rebuilt from their segments (missing or invalid index files).
    pub indexes_rebuilt: usize,
    /// Where the log was ended before bytes recovery cannot trust: a torn tail, remains of
    /// writes after a lost one, or (after an unclean stop) a recycled file's old batches.
    pub truncated: Option<Truncation>,
    /// True when the last segment's scan started from an index entry (clean shutdown).
    pub resumed_from_index: bool,
}

/// Where a torn tail was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment_base: u64,
    pub position: u64,
    /// First offset that would have been stored at `position`.
    pub offset: u64,
    pub reason: Untrusted,
}

/// Bytes recovery cannot trust as the log's data: why a segment's data ends where it does
/// (a `Truncation`, or damage when the bytes were durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// A segment file whose base offset does not follow the previous segment's data.
    #[error("segment starts at {base}, not {expected}")]
    SegmentStart { base: u64, expected: u64 },
    /// The bytes there are not a valid batch.
    #[error("{0}")]
    Invalid(protocol::BatchError),
    /// A batch header whose length runs past the end of the file.
    #[error("batch length {len} runs past the file")]
    RunsPast { len: u64 },
    /// A valid batch, but not the one due: a recycled file's old batch when `found` is below
    /// `due` (remains of writes after a lost one carry the offsets due).
    #[error("base offset {found} where {due} was due")]
    Offset { found: u64, due: u64 },
    /// Bytes after the end of the data, after an unclean stop: a recycled segment's old
    /// batches, or the remains of writes that completed after an earlier one was lost.
    #[error(
        "bytes at {at} after the end of the data: a recycled segment's old batches, or the \
         remains of writes that completed after an earlier one was lost"
    )]
    BytesAfterData { at: u64 },
}

/// The log state recovery hands to `Log`.
pub(crate) struct Opened<F> {
    pub sealed: BTreeMap<u64, Segment<F>>,
    pub active: Segment<F>,
    pub checkpoint: Option<Checkpoint>,
    pub spare_ready: bool,
    pub health: Health,
    /// Whatever follows the last segment's data is zeros or a recycled file's old batches,
    /// never the remains of writes (a clean close ended there, or nothing but zeros follows):
    /// what a truncation needs to leave the log as a clean close would (`truncate`).
    pub tail_trusted: bool,
}

/// How a scan ended.
#[derive(Debug)]
enum ScanEnd {
    /// An all-zero header, the end of the file, or the offset the next segment starts at:
    /// the data ends here.
    Clean,
    /// Bytes that are not the next batch.
    Invalid { reason: Untrusted },
}

struct Scan {
    data_end: u64,
    next_offset: u64,
    end: ScanEnd,
    scanned_bytes: u64,
}

/// Reads a file in large aligned chunks and hands out byte ranges of it.
struct ChunkReader<'f, F> {
    file: &'f F,
    file_size: u64,
    chunk_bytes: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'f, F: StorageFile> ChunkReader<'f, F> {
    fn new(file: &'f F, file_size: u64, chunk_bytes: u64) -> Self {
        ChunkReader {
            file,
            file_size,
            chunk_bytes,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// The bytes `[pos, pos + len)`, or fewer if the file ends first.
    async fn get(&mut self, pos: u64, len: u64) -> Result<&[u8], LogError> {
        let end = (pos + len).min(self.file_size);
        let held = pos >= self.buf_pos && end <= self.buf_pos + self.buf.len() as u64;
        if !held {
            let start = block_floor(pos);
            let want = (end - start).max(self.chunk_bytes);
            let read_end = block_ceil(start + want).min(block_ceil(self.file_size));
            let data = self
                .file
                .read_at(start, (read_end - start) as usize)
                .await
                .map_err(LogError::io("recovery read"))?;
            self.buf.clear();
            self.buf.extend_from_slice(&data);
            self.buf_pos = start;
        }
        let from = (pos - self.buf_pos) as usize;
        let to = (end.saturating_sub(self.buf_pos) as usize).min(self.buf.len());
        Ok(self.buf.get(from..to.max(from)).unwrap_or_default())
    }
}

/// Walks batches from `position` (holding `offset`) to the end of the data, adding them to
/// `index`.
async fn scan<F: StorageFile>(
    file: &F,
    file_size: u64,
    mut position: u64,
    mut offset: u64,
    index: &mut Index,
    chunk_bytes: u64,
    stop_at: u64,
) -> Result<Scan, LogError> {
    let mut reader = ChunkReader::new(file, file_size, chunk_bytes);
    let start = position;
    let end = loop {
        if offset >= stop_at {
            // The next segment starts here: what follows in this file is not data.
            break ScanEnd::Clean;
        }
        let head = reader.get(position, BATCH_HEADER_BYTES as u64).await?;
        if head.iter().all(|&b| b == 0) {
            // Pre-zeroed space (or the end of the file): the data ends here.
            break ScanEnd::Clean;
        }
        let header = match BatchHeader::parse(head) {
            Ok(header) => header,
            Err(error) => {
                break ScanEnd::Invalid {
                    reason: Untrusted::Invalid(error),
                };
            }
        };
        let len = u64::from(header.batch_len);
        if len < BATCH_HEADER_BYTES as u64 || position + len > file_size {
            break ScanEnd::Invalid {
                reason: Untrusted::RunsPast { len },
            };
        }
        let bytes = reader.get(position, len).await?;
        match BatchView::new(bytes) {
            Ok(batch) if batch.base_offset() == offset => {
                index.observe(offset, position, batch.max_timestamp_ms());
                offset = batch.next_offset();
                position += len;
            }
            Ok(batch) => {
                break ScanEnd::Invalid {
                    reason: Untrusted::Offset {
                        found: batch.base_offset(),
                        due: offset,
                    },
                };
            }
            Err(error) => {
                break ScanEnd::Invalid {
                    reason: Untrusted::Invalid(error),
                };
            }
        }
    };
    Ok(Scan {
        data_end: position,
        next_offset: offset,
        end,
        scanned_bytes: position - start,
    })
}

/// The first position at or after `position` that holds a nonzero byte, if any.
async fn first_nonzero_after<F: StorageFile>(
    file: &F,
    position: u64,
    file_size: u64,
    chunk_bytes: u64,
) -> Result<Option<u64>, LogError> {
    let mut at = block_floor(position);
    while at < file_size {
        let len = chunk_bytes.min(block_ceil(file_size) - at) as usize;
        let data = file
            .read_at(at, len)
            .await
            .map_err(LogError::io("recovery read"))?;
        let skip = position.saturating_sub(at) as usize;
        let after = data.get(skip..).unwrap_or_default();
        if let Some(found) = after.iter().position(|&b| b != 0) {
            return Ok(Some(at + (skip + found) as u64));
        }
        if data.len() < len {
            break; // the file ended
        }
        at += len as u64;
    }
    Ok(None)
}

/// How segment files open: O_DSYNC when the log's durability says so.
pub(crate) fn segment_flags(config: &LogConfig, create: bool) -> OpenFlags {
    OpenFlags {
        create,
        dsync: config.durability == Durability::Dsync,
    }
}

/// The segment file at `from` (a spare), renamed to `path` and opened by that name: glommio
/// looks a file's size up by the name it opened.
pub(crate) async fn take_segment_file<S: Storage>(
    storage: &S,
    from: &Path,
    path: &Path,
    config: &LogConfig,
) -> Result<S::File, LogError> {
    storage
        .rename(from, path)
        .await
        .map_err(LogError::io("rename segment"))?;
    storage
        .open(path, segment_flags(config, false))
        .await
        .map_err(LogError::io("open segment"))
}

/// Creates a segment file at `path`: allocated to `segment_bytes`, zeroed if configured,
/// synced. The caller syncs the directory. On error the partial file is removed.
pub(crate) async fn create_segment_file<S: Storage>(
    storage: &S,
    path: &Path,
    config: &LogConfig,
) -> Result<S::File, LogError> {
    let whole_chunks = |_| std::future::ready(ZeroPace::Chunk(config.write_buffer_bytes));
    let (file, _zeroed) = create_segment_file_paced(storage, path, config, whole_chunks).await?;
    Ok(file)
}

/// Creates a segment file at `path` allocated only, whatever `preallocate` says: for a
/// segment made while the log waits for it (a roll without a spare, a log opening after a
/// crash), which a whole segment of zeros would hold up. Its first writes convert extents,
/// as under `Preallocate::Fallocate`. Synced; the caller syncs the directory.
pub(crate) async fn create_allocated_segment_file<S: Storage>(
    storage: &S,
    path: &Path,
    config: &LogConfig,
) -> Result<S::File, LogError> {
    let no_zeros = |_| std::future::ready(ZeroPace::Enough);
    let (file, _zeroed) = create_segment_file_paced(storage, path, config, no_zeros).await?;
    Ok(file)
}

/// What the zeroing of a segment file being prepared does next (`create_segment_file_paced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroPace {
    /// Write this many bytes of zeros next.
    Chunk(u64),
    /// Zero no more: the rest of the file stays allocated space, which reads as zeros. The
    /// first write into each of its blocks converts an unwritten extent, as under
    /// `Preallocate::Fallocate`.
    Enough,
    /// The log closed or failed: remove the file.
    Abandon,
}

/// `create_segment_file`, zeroing in writes whose length `pace(bytes zeroed so far)` gives
/// when it resolves: a spare prepared in the background zeroes in small writes at the
/// appends' pace, so their own writes do not queue behind long ones, and stops when they
/// outrun it. Returns the file and the bytes of zeros written. `ZeroPace::Abandon` removes
/// the file and returns `Closed`.
pub(crate) async fn create_segment_file_paced<S, P, Fut>(
    storage: &S,
    path: &Path,
    config: &LogConfig,
    pace: P,
) -> Result<(S::File, u64), LogError>
where
    S: Storage,
    P: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ZeroPace>,
{
    let file = storage
        .open(path, segment_flags(config, true))
        .await
        .map_err(LogError::io("create segment"))?;
    match prepare(&file, config, pace).await {
        Ok(zeroed) => Ok((file, zeroed)),
        Err(error) => {
            let _ = file.close().await;
            let _ = storage.remove(path).await;
            Err(error)
        }
    }
}

/// Allocates, zeroes as `pace` says and syncs `file`; returns the bytes of zeros written.
async fn prepare<F, P, Fut>(file: &F, config: &LogConfig, mut pace: P) -> Result<u64, LogError>
where
    F: StorageFile,
    P: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ZeroPace>,
{
    file.allocate(config.segment_bytes)
        .await
        .map_err(LogError::io("allocate segment"))?;
    let mut at = 0;
    if config.preallocate == Preallocate::Zero {
        // A buffer of zeros serves every chunk of its length: each write completes before
        // the next.
        let mut zeros: Option<Rc<F::Buffer>> = None;
        while at < config.segment_bytes {
            let chunk = match pace(at).await {
                ZeroPace::Chunk(chunk) => chunk,
                ZeroPace::Enough => break,
                ZeroPace::Abandon => return Err(LogError::Closed),
            };
            let chunk = block_ceil(chunk.max(1));
            let len = chunk.min(config.segment_bytes - at);
            let buf = match zeros.take() {
                Some(buf) if (*buf).as_ref().len() as u64 == len => buf,
                _ => Rc::new(zeroed_buffer(file, len as usize)),
            };
            write_whole(file, Rc::clone(&buf), at)
                .await
                .map_err(LogError::io("zero segment"))?;
            zeros = Some(buf);
            at += len;
        }
    }
    file.sync()
        .await
        .map_err(LogError::io("sync new segment"))?;
    Ok(at)
}

fn zeroed_buffer<F: StorageFile>(file: &F, len: usize) -> F::Buffer {
    let mut buf = file.alloc_buffer(len);
    buf.as_mut().fill(0);
    buf
}

async fn read_whole<F: StorageFile>(file: &F) -> Result<Vec<u8>, LogError> {
    let size = file.size().await.map_err(LogError::io("stat"))?;
    let data = file
        .read_at(0, block_ceil(size) as usize)
        .await
        .map_err(LogError::io("read small file"))?;
    Ok(data.to_vec())
}

/// Reads a small file (index, checkpoint) whole, or `None` if it does not exist.
pub(crate) async fn read_small_file<S: Storage>(
    storage: &S,
    path: &Path,
) -> Result<Option<Vec<u8>>, LogError> {
    let flags = OpenFlags {
        create: false,
        dsync: false,
    };
    let file = match storage.open(path, flags).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(LogError::io("open small file")(error)),
    };
    let data = read_whole(&file).await;
    let _ = file.close().await;
    data.map(Some)
}

/// Writes `segment`'s index file: where its data ends, and its entries (`write_small_file`).
pub(crate) async fn write_index<S: Storage>(
    storage: &S,
    dir: &Path,
    segment: &Segment<S::File>,
) -> Result<(), LogError> {
    let path = index_path(dir, segment.base_offset);
    write_small_file(storage, &path, &segment.index_image()).await
}

/// Writes a small file (index, checkpoint) whole and syncs it. Creating it is not made
/// durable with a directory sync: these files are rebuilt when lost.
pub(crate) async fn write_small_file<S: Storage>(
    storage: &S,
    path: &Path,
    bytes: &[u8],
) -> Result<(), LogError> {
    let flags = OpenFlags {
        create: true,
        dsync: false,
    };
    let file = storage
        .open(path, flags)
        .await
        .map_err(LogError::io("open small file"))?;
    let len = block_ceil(bytes.len() as u64) as usize;
    let mut buf = file.alloc_buffer(len);
    let out = buf.as_mut();
    out.fill(0);
    if let Some(dst) = out.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    let synced = match write_whole(&file, Rc::new(buf), 0).await {
        Ok(()) => file.sync().await.map_err(LogError::io("sync small file")),
        Err(error) => Err(LogError::io("write small file")(error)),
    };
    let closed = file.close().await.map_err(LogError::io("close small file"));
    synced.and(closed)
}

/// Loads the index file of a segment if it exists and passes its checks.
async fn load_index<S: Storage>(
    storage: &S,
    dir: &Path,
    base_offset: u64,
    config: &LogConfig,
) -> Option<(Index, super::index::SegmentSummary)> {
    let bytes = read_small_file(storage, &index_path(dir, base_offset))
        .await
        .ok()??;
    Index::decode(&bytes, base_offset, config.index_interval_bytes).ok()
}

/// Opens the log in `dir`, creating it if it is new.
pub(crate) async fn open<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &LogConfig,
) -> Result<(Opened<S::File>, Recovery), LogError> {
    storage
        .create_dir_all(dir)
        .await
        .map_err(LogError::io("create log directory"))?;
    // A new partition directory, and any parent `create_dir_all` made on the way, must be
    // durable before anything in it is acknowledged: sync each one's entry in its parent.
    for parent in dir
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
    {
        storage
            .sync_dir(parent)
            .await
            .map_err(LogError::io("sync parent directory"))?;
    }
    let names = storage
        .list_dir(dir)
        .await
        .map_err(LogError::io("list log directory"))?;
    if names.iter().any(|n| n == SPARE_TMP) {
        // A spare whose preparation was interrupted: it may not be zeroed or synced.
        storage
            .remove(&dir.join(SPARE_TMP))
            .await
            .map_err(LogError::io("remove stale spare"))?;
    }
    // Whatever entries the directory shows are about to be used (and appended to): make
    // them durable first, or a segment created just before a crash, its entry never synced,
    // could take acknowledged batches with it at the next one.
    storage
        .sync_dir(dir)
        .await
        .map_err(LogError::io("sync log directory"))?;
    let spare_ready = names.iter().any(|n| n == SPARE_READY);
    let closed_cleanly = names.iter().any(|n| n == CLEAN_FILE);
    let checkpoint = read_small_file(storage, &dir.join(CHECKPOINT_FILE))
        .await?
        .and_then(|bytes| Checkpoint::decode(&bytes));
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_log_name(n)).collect();
    bases.sort_unstable();

    let mut recovery = Recovery::default();
    let mut health = Health::Healthy;
    let flags = segment_flags(config, false);
    let chunk_bytes = config.write_buffer_bytes;

    let Some((&last_base, sealed_bases)) = bases.split_last() else {
        let path = log_path(dir, 0);
        let file = create_segment_file(storage, &path, config).await?;
        storage
            .sync_dir(dir)
            .await
            .map_err(LogError::io("sync log directory"))?;
        let active = Segment::empty(0, file, config.segment_bytes, config.index_interval_bytes);
        recovery.segments = 1;
        let opened = Opened {
            sealed: BTreeMap::new(),
            active,
            checkpoint,
            spare_ready,
            health,
            tail_trusted: false,
        };
        return Ok((opened, recovery));
    };

    let mut sealed = BTreeMap::new();
    let mut expected_offset: Option<u64> = None;
    for (&base, &next_base) in sealed_bases.iter().zip(bases.iter().skip(1)) {
        let path = log_path(dir, base);
        let file = storage
            .open(&path, flags)
            .await
            .map_err(LogError::io("open segment"))?;
        let size = file.size().await.map_err(LogError::io("stat segment"))?;
        if let Some(damage) = misplaced(base, expected_offset) {
            health = damage;
            break;
        }
        // The segment after this one starts at the offset this one ends with: an index whose
        // summary says otherwise is stale (written at an earlier close, say) and is rebuilt.
        let segment = match load_index(storage, dir, base, config).await {
            Some((index, summary))
                if summary.data_end <= size && summary.next_offset == next_base =>
            {
                Segment {
                    base_offset: base,
                    file: Rc::new(file),
                    data_end: summary.data_end,
                    capacity_bytes: size,
                    next_offset: summary.next_offset,
                    index,
                }
            }
            _ => {
                let mut index = Index::new(base, config.index_interval_bytes);
                // A sealed segment ends where the next one starts; past that it may hold a
                // recycled file's old batches, or what an unclean stop left after its data.
                let scan = scan(&file, size, 0, base, &mut index, chunk_bytes, next_base).await?;
                recovery.scanned_bytes += scan.scanned_bytes;
                recovery.indexes_rebuilt += 1;
                let segment = Segment {
                    base_offset: base,
                    file: Rc::new(file),
                    data_end: scan.data_end,
                    capacity_bytes: size,
                    next_offset: scan.next_offset,
                    index,
                };
                if let ScanEnd::Invalid { reason } = scan.end {
                    // Sealed segments were synced whole before the next one was created.
                    health = damaged(base, scan.data_end, scan.next_offset, reason);
                    sealed.insert(base, segment);
                    break;
                }
                // Best effort: a lost index is rebuilt again next time.
                let _ = write_index(storage, dir, &segment).await;
                segment
            }
        };
        expected_offset = Some(segment.next_offset);
        sealed.insert(base, segment);
    }

    if health != Health::Healthy {
        // Serve what is readable; the damaged segment stays the last one, and accepts nothing.
        let Some((_, active)) = sealed.pop_last() else {
            return Err(LogError::Config {
                field: "dir",
                reason: "no readable segment".into(),
            });
        };
        recovery.segments = sealed.len() + 1;
        return Ok((
            Opened {
                sealed,
                active,
                checkpoint,
                spare_ready,
                health,
                tail_trusted: false,
            },
            recovery,
        ));
    }

    // The last segment: walk its tail.
    let path = log_path(dir, last_base);
    let file = storage
        .open(&path, flags)
        .await
        .map_err(LogError::io("open segment"))?;
    let mut size = file.size().await.map_err(LogError::io("stat segment"))?;
    if size < config.segment_bytes {
        // Its allocation did not survive (created, then a crash before the size was synced).
        // Zeroing from position 0 would be wrong if it holds data, so allocate only the rest,
        // which then reads as zeros.
        file.allocate(config.segment_bytes)
            .await
            .map_err(LogError::io("allocate segment"))?;
        size = config.segment_bytes;
    }
    if let Some(damage) = misplaced(last_base, expected_offset) {
        health = damage;
    }
    let mut index = Index::new(last_base, config.index_interval_bytes);
    let mut start = (0, last_base);
    let loaded = load_index(storage, dir, last_base, config).await;
    let closed_at = loaded
        .as_ref()
        .map(|(_, summary)| (summary.data_end, summary.next_offset));
    if let Some((loaded, _)) = loaded
        && let Some(last) = loaded.entries().last().copied()
        && entry_holds_batch(&file, last.position, last.offset).await
    {
        index = loaded;
        index.truncate(last.position);
        start = (last.position, last.offset);
        recovery.resumed_from_index = true;
    }
    let scan = scan(
        &file,
        size,
        start.0,
        start.1,
        &mut index,
        chunk_bytes,
        u64::MAX,
    )
    .await?;
    recovery.scanned_bytes += scan.scanned_bytes;
    // A clean close completed and synced every write, and wrote the index of the data's
    // end: whatever follows that end is a recycled file's old batches, never remains.
    let ends_where_closed = closed_cleanly && closed_at == Some((scan.data_end, scan.next_offset));
    let mut leftover = match scan.end {
        ScanEnd::Invalid { reason } if !ends_where_closed => Some(reason),
        _ => None,
    };
    if leftover.is_none()
        && !closed_cleanly
        && let Some(at) = first_nonzero_after(&file, scan.data_end, size, chunk_bytes).await?
    {
        leftover = Some(Untrusted::BytesAfterData { at });
    }
    let tail_trusted =
        leftover.is_none() && health == Health::Healthy && (ends_where_closed || !closed_cleanly);
    let mut segment = Segment {
        base_offset: last_base,
        file: Rc::new(file),
        data_end: scan.data_end,
        capacity_bytes: size,
        next_offset: scan.next_offset,
        index,
    };
    let mut spare_ready = spare_ready;
    if let Some(reason) = leftover
        && health == Health::Healthy
    {
        if checkpoint.is_some_and(|c| c.covers(last_base, scan.data_end)) {
            health = damaged(last_base, scan.data_end, scan.next_offset, reason);
        } else {
            recovery.truncated = Some(Truncation {
                segment_base: last_base,
                position: scan.data_end,
                offset: scan.next_offset,
                reason,
            });
            // Appends must never land before bytes that could later line up with them and
            // be read back as data: the segment ends here, and a new one takes the appends.
            let (active, retired) = start_after(storage, dir, config, spare_ready, segment).await?;
            segment = active;
            spare_ready = false;
            if let Some(retired) = retired {
                sealed.insert(retired.base_offset, retired);
            }
        }
    }
    // What survived is on the device; one sync makes it durable against power loss too, so
    // everything recovered counts as synced.
    segment
        .file
        .sync()
        .await
        .map_err(LogError::io("sync recovered segment"))?;
    if closed_cleanly {
        // From here on the log writes again: a crash must find the marker gone.
        storage
            .remove(&dir.join(CLEAN_FILE))
            .await
            .map_err(LogError::io("remove clean marker"))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(LogError::io("sync log directory"))?;
    }
    recovery.segments = sealed.len() + 1;
    Ok((
        Opened {
            sealed,
            active: segment,
            checkpoint,
            spare_ready,
            health,
            tail_trusted,
        },
        recovery,
    ))
}

/// Ends `old`, whose bytes after its data recovery cannot trust, and makes the segment that
/// takes the appends from its next offset: the ready spare if there is one, else a new file.
/// An `old` with data is sealed first (cut to the block holding its end, that block zeroed
/// after the data, synced, its index written), so it is whole before a newer segment exists
/// and holds nothing after its data; an empty one is replaced under its own name,
/// atomically, so a crash finds one or the other.
async fn start_after<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &LogConfig,
    spare_ready: bool,
    old: Segment<S::File>,
) -> Result<(Segment<S::File>, Option<Segment<S::File>>), LogError> {
    let base = old.next_offset;
    let path = log_path(dir, base);
    let sealed = if old.data_end > 0 {
        // Nothing may follow the data in a sealed segment: such bytes could hold offsets the
        // log reuses, and a recycled file must hold none above its old end. So the block
        // holding the end is rewritten with zeros after the data (a torn rewrite keeps the
        // leading bytes, the same in both), and the file ends with that block.
        let capacity_bytes = block_ceil(old.data_end);
        old.file
            .truncate(capacity_bytes)
            .await
            .map_err(LogError::io("truncate sealed segment"))?;
        zero_from(old.file.as_ref(), old.data_end, capacity_bytes, config).await?;
        // Best effort: a lost or stale index is rebuilt, up to the next segment's base.
        let _ = write_index(storage, dir, &old).await;
        Some(Segment {
            capacity_bytes,
            ..old
        })
    } else {
        if let Ok(file) = Rc::try_unwrap(old.file) {
            let _ = file.close().await;
        }
        None
    };
    let spare = if spare_ready {
        take_segment_file(storage, &dir.join(SPARE_READY), &path, config)
            .await
            .ok()
    } else {
        None
    };
    let file = match spare {
        Some(file) => file,
        None => {
            // Made under a temporary name, then renamed over `path` (which an empty `old`
            // holds).
            let tmp = dir.join(SPARE_TMP);
            let file = create_allocated_segment_file(storage, &tmp, config).await?;
            file.close()
                .await
                .map_err(LogError::io("close new segment"))?;
            take_segment_file(storage, &tmp, &path, config).await?
        }
    };
    storage
        .sync_dir(dir)
        .await
        .map_err(LogError::io("sync log directory"))?;
    let capacity_bytes = file.size().await.map_err(LogError::io("stat segment"))?;
    let active = Segment::empty(base, file, capacity_bytes, config.index_interval_bytes);
    Ok((active, sealed))
}

/// Damage, when a segment's base offset is not `expected`, where the previous one's data
/// ended.
fn misplaced(base: u64, expected: Option<u64>) -> Option<Health> {
    let expected = expected.filter(|&expected| expected != base)?;
    let reason = Untrusted::SegmentStart { base, expected };
    Some(damaged(base, 0, expected, reason))
}

fn damaged(segment_base: u64, position: u64, offset: u64, reason: Untrusted) -> Health {
    tracing::error!(segment_base, position, offset, %reason, "log damaged: durable data is invalid");
    Health::Damaged {
        segment_base,
        position,
        offset,
        reason: reason.to_string(),
    }
}

/// Whether a valid-looking batch with base offset `offset` starts at `position`.
async fn entry_holds_batch<F: StorageFile>(file: &F, position: u64, offset: u64) -> bool {
    let start = block_floor(position);
    let len = block_ceil(position + BATCH_HEADER_BYTES as u64) - start;
    let Ok(data) = file.read_at(start, len as usize).await else {
        return false;
    };
    let head = data.get((position - start) as usize..).unwrap_or_default();
    BatchHeader::parse(head).is_ok_and(|h| h.base_offset == offset && h.magic == 1)
}
