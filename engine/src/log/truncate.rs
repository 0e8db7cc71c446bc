//! Truncating a closed log to an offset: how a follower drops a divergent, uncommitted tail
//! before it follows a new leader (see `replication`). A function of its own, on a closed
//! log, so the writer (`partition_log`) stays as it is: close the log, truncate, reopen.
//!
//! Crash safety, step by step (each step leaves a log that recovery opens consistently):
//! 1. Remove the durable-point checkpoint, the cut segment's index and every later segment
//!    (newest first), then sync the directory. A crash before the sync may bring any of them
//!    back: the log is then simply not truncated yet.
//! 2. Zero the cut segment from the cut position to its old data end (the partial block is
//!    rewritten with its leading bytes), then fdatasync. A crash in between leaves the old
//!    batches or zeros past the cut; with no checkpoint, recovery either walks the old
//!    batches again (the caller then truncates again after the restart: the divergence is
//!    computed again) or finds bytes it cannot trust after the data and seals the segment
//!    there, cut to its last block, so no old batch is left behind in it.
//! 3. When nothing but zeros or a recycled file's old batches follows the data (so after a
//!    clean close whose index write succeeded, and whenever the new last segment is sealed),
//!    write the new last segment's index, then the clean-close marker, then sync the
//!    directory: the log is left as a clean close would leave it, so the next open need not
//!    read the rest of the segment looking for remains (up to a whole segment). Everything
//!    the marker vouches for is durable before it is written (step 2 synced the zeroed cut;
//!    when the cut removed segments whole, the new last one is sealed, synced whole before
//!    the next existed), so a crash at any point of this step is safe: without the marker
//!    the next open checks the rest; with the marker but not the index (a file system may
//!    make the marker's entry durable before the directory sync), it scans the segment from
//!    its start and stops where its data ends.

use std::path::Path;
use std::rc::Rc;

use protocol::BatchHeader;
use protocol::limits::BATCH_HEADER_BYTES;

use super::checkpoint::CHECKPOINT_FILE;
use super::recovery;
use super::segment::{Segment, index_path, log_path};
use super::storage::{BLOCK_BYTES, Storage, StorageFile, block_ceil, block_floor, write_whole};
use super::{Health, LogConfig, LogError};

/// What `truncate_to` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// The log's end offset before.
    pub old_end: u64,
    /// The log's end offset now: `offset`, or the start of the batch holding it.
    pub new_end: u64,
}

/// Truncates the log in `dir` (not open anywhere) so it ends at `offset`, or at the start
/// of the batch holding `offset` when it falls inside one. Nothing changes when the log
/// ends at or before `offset` (but the clean-close marker its recovery removed is put back
/// where it still holds). A damaged log is refused: truncating could hide damage.
pub async fn truncate_to<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &LogConfig,
    offset: u64,
) -> Result<Truncated, LogError> {
    let dir = &std::path::absolute(dir).map_err(LogError::io("resolve log directory"))?;
    let (opened, _) = recovery::open(storage, dir, config).await?;
    if let Health::Damaged { .. } | Health::Failed { .. } = &opened.health {
        return Err(opened.health.check().err().unwrap_or(LogError::Closed));
    }
    let mut segments: Vec<_> = opened.sealed.into_values().collect();
    segments.push(opened.active);
    let old_end = segments.last().map_or(0, |s| s.next_offset);
    let last = segments.len().saturating_sub(1);
    if offset >= old_end {
        // Recovery took the clean-close marker away; where it still holds, put it back.
        if opened.tail_trusted
            && let Some(segment) = segments.last()
        {
            let _ = leave_closed_cleanly(storage, dir, segment).await;
        }
        return Ok(Truncated {
            old_end,
            new_end: old_end,
        });
    }
    // The segment holding the cut: the last one starting at or below it (or the first).
    let target = segments
        .iter()
        .rposition(|s| s.base_offset <= offset)
        .unwrap_or(0);
    let Some(segment) = segments.get(target) else {
        return Err(LogError::Closed);
    };
    let (cut_position, new_end) = find_cut(
        segment.file.as_ref(),
        segment.index.lookup(offset.max(segment.base_offset)),
        segment.data_end,
        offset,
        segment.base_offset,
    )
    .await?;
    // A cut at the very start of a later segment removes that segment whole.
    let keep_target = cut_position > 0 || target == 0;
    let first_removed = if keep_target { target + 1 } else { target };

    let _ = storage.remove(&dir.join(CHECKPOINT_FILE)).await;
    let _ = storage.remove(&index_path(dir, segment.base_offset)).await;
    for doomed in segments.iter().skip(first_removed).rev() {
        storage
            .remove(&log_path(dir, doomed.base_offset))
            .await
            .map_err(LogError::io("remove segment"))?;
        let _ = storage.remove(&index_path(dir, doomed.base_offset)).await;
    }
    storage
        .sync_dir(dir)
        .await
        .map_err(LogError::io("sync log directory"))?;

    if keep_target {
        zero_from(
            segment.file.as_ref(),
            cut_position,
            segment.data_end,
            config,
        )
        .await?;
    }
    // The new last segment: the cut one, or the one before it when the cut removed it
    // whole. A sealed segment was synced whole before the next one existed, so only the
    // log's last segment can hold remains after its data.
    let new_last = if keep_target { target } else { target - 1 };
    if (opened.tail_trusted || new_last < last)
        && let Some(segment) = segments.get_mut(new_last)
    {
        if keep_target {
            segment.index.truncate(cut_position);
            segment.data_end = cut_position;
            segment.next_offset = new_end;
        }
        // Best effort: without the marker, the next open checks the rest of the segment.
        let _ = leave_closed_cleanly(storage, dir, segment).await;
    }
    drop(segments);
    Ok(Truncated { old_end, new_end })
}

/// Writes `last`'s index (where its data ends), then the clean-close marker, in that order,
/// so a marker without its index is at worst an open that scans the segment whole.
async fn leave_closed_cleanly<S: Storage>(
    storage: &S,
    dir: &Path,
    last: &Segment<S::File>,
) -> Result<(), LogError> {
    recovery::write_index(storage, dir, last).await?;
    recovery::mark_closed_cleanly(storage, dir).await
}

/// Walks batch headers from `position` (an index entry at or below the batch holding
/// `offset`) and returns the position and base offset of the first batch that holds
/// `offset` or starts after it.
async fn find_cut<F: StorageFile>(
    file: &F,
    mut position: u64,
    data_end: u64,
    offset: u64,
    base_offset: u64,
) -> Result<(u64, u64), LogError> {
    let mut batch_offset = base_offset;
    while position < data_end {
        let start = block_floor(position);
        let end = block_ceil(position + BATCH_HEADER_BYTES as u64);
        let bytes = file
            .read_at(start, (end - start) as usize)
            .await
            .map_err(LogError::io("truncate read"))?;
        let at = (position - start) as usize;
        let header = BatchHeader::parse(bytes.get(at..).unwrap_or_default()).map_err(|error| {
            LogError::Corrupt {
                segment_base: base_offset,
                position,
                error,
            }
        })?;
        batch_offset = header.base_offset;
        if header.next_offset() > offset {
            return Ok((position, header.base_offset));
        }
        if header.batch_len == 0 {
            break;
        }
        position += u64::from(header.batch_len);
        batch_offset = header.next_offset();
    }
    Ok((position.min(data_end), batch_offset))
}

/// Overwrites `[from, to)` of the file with zeros (keeping the bytes before `from` in its
/// block: a torn rewrite keeps them too, the same in both) and syncs.
pub(crate) async fn zero_from<F: StorageFile>(
    file: &F,
    from: u64,
    to: u64,
    config: &LogConfig,
) -> Result<(), LogError> {
    let mut pos = block_floor(from);
    let end = block_ceil(to);
    let chunk = (config.write_buffer_bytes as usize).max(BLOCK_BYTES);
    let mut first = true;
    while pos < end {
        let len = ((end - pos) as usize).min(chunk);
        let mut buf = file.alloc_buffer(len);
        buf.as_mut().fill(0);
        if first && from > pos {
            let keep = (from - pos) as usize;
            let head = file
                .read_at(pos, BLOCK_BYTES)
                .await
                .map_err(LogError::io("truncate read"))?;
            if let (Some(dst), Some(src)) = (buf.as_mut().get_mut(..keep), head.get(..keep)) {
                dst.copy_from_slice(src);
            }
        }
        first = false;
        write_whole(file, Rc::new(buf), pos)
            .await
            .map_err(LogError::io("truncate write"))?;
        pos += len as u64;
    }
    file.sync().await.map_err(LogError::io("truncate sync"))
}
