//! The in-memory tail of the active segment: appended batches wait here for the next group
//! commit, and readers are served from here until the bytes are on disk, and from a copy of
//! the last bytes written (`Recent`) for a while after.

use std::rc::Rc;

use super::storage::{BLOCK_BYTES, IoBuffer};

/// Blocks of the active segment that are appended but not yet written.
///
/// Owner: the partition log, on one shard.
/// Invariant: `pos` is block-aligned; `written <= len <= capacity`; `written < BLOCK_BYTES`
/// unless it equals `len` (only the carried partial block is ever handed out and kept);
/// `buf[len..]` is zero up to the end of the block holding `len` by the time those blocks are
/// written.
/// Durability: nothing here is on disk until an [`Inflight`] taken from it completes.
pub(crate) struct Tail<B> {
    buf: B,
    /// File position of `buf[0]`.
    pos: u64,
    /// Bytes of batches in `buf`.
    len: usize,
    /// Prefix of `buf` that is written or being written.
    written: usize,
}

/// Blocks handed to the disk: readable from memory until the write completes.
pub(crate) struct Inflight<B> {
    pub buf: Rc<B>,
    /// File position of `buf[0]`.
    pub pos: u64,
    /// Bytes of batches in `buf` (the rest of the last block is zero padding).
    pub len: usize,
    /// The write ends in a partly filled block that the tail still holds (and will rewrite).
    pub padded: bool,
}

/// How a write takes the tail's dirty bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Only the whole blocks: the partly filled last block stays in the tail, not handed to
    /// the disk, so the next write may start at it while this one is in flight.
    WholeBlocks,
    /// Everything, the last block padded with zeros. The tail keeps a copy of that block, and
    /// no later write may touch it until this one completes (writes in flight never share a
    /// block, or a late completion could put back older bytes).
    Padded,
}

impl<B: IoBuffer> Tail<B> {
    pub fn new(buf: B, pos: u64) -> Tail<B> {
        assert!(pos.is_multiple_of(BLOCK_BYTES as u64));
        Tail {
            buf,
            pos,
            len: 0,
            written: 0,
        }
    }

    /// File position of the tail's first block.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// File position just after the last appended byte.
    pub fn data_end(&self) -> u64 {
        self.pos + self.len as u64
    }

    /// File position up to which bytes are written or handed to a write.
    pub fn handed_end(&self) -> u64 {
        self.pos + self.written as u64
    }

    /// File position of the end of the whole blocks the tail holds.
    pub fn whole_blocks_end(&self) -> u64 {
        self.pos + (self.len - self.len % BLOCK_BYTES) as u64
    }

    pub fn free_bytes(&self) -> usize {
        self.buf.as_ref().len() - self.len
    }

    /// Bytes of batches the tail holds, from its first block on (handed out or not).
    pub fn held(&self) -> usize {
        self.len
    }

    /// Bytes the tail's buffer holds in all.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Moves the tail into `larger`, a buffer longer than the bytes it holds: same position,
    /// same bytes, more room. Nothing is handed to the disk.
    pub fn grow(&mut self, mut larger: B) {
        let held = self.len;
        assert!(larger.as_ref().len() > held, "grow into a smaller buffer");
        if let (Some(dst), Some(src)) = (
            larger.as_mut().get_mut(..held),
            self.buf.as_ref().get(..held),
        ) {
            dst.copy_from_slice(src);
        }
        self.buf = larger;
    }

    /// Marks everything pushed so far as already on disk (the block re-read at open).
    pub fn mark_written(&mut self) {
        self.written = self.len;
    }

    /// Bytes appended and not yet handed to the disk.
    pub fn dirty_bytes(&self) -> usize {
        self.len - self.written
    }

    pub fn is_dirty(&self) -> bool {
        self.len > self.written
    }

    /// Whether a [`Take::WholeBlocks`] would hand out anything.
    pub fn has_whole_dirty_blocks(&self) -> bool {
        self.is_dirty() && self.len >= BLOCK_BYTES
    }

    /// Copies `batch` in and returns the copy, so the caller can stamp its offset.
    pub fn push(&mut self, batch: &[u8]) -> &mut [u8] {
        let start = self.len;
        let end = start + batch.len();
        assert!(
            end <= self.buf.as_ref().len(),
            "tail overflow: caller checks free_bytes"
        );
        self.len = end;
        let slot = self.buf.as_mut().get_mut(start..end).unwrap_or_default();
        slot.copy_from_slice(batch);
        slot
    }

    /// The bytes at file positions `[from, to)` if this tail holds all of them.
    pub fn bytes(&self, from: u64, to: u64) -> Option<&[u8]> {
        slice_at(self.buf.as_ref(), self.pos, self.len, from, to)
    }

    /// Hands dirty blocks to the disk; `fresh` becomes the new tail and starts with a copy of
    /// the last, partly filled block. With [`Take::Padded`] that block is written now and
    /// rewritten by a later write with the same leading bytes, so a torn rewrite leaves each
    /// sector either old or new and never damages what was there before. With
    /// [`Take::WholeBlocks`] it is not written now at all.
    ///
    /// The caller checks there is something to take (`is_dirty`, and for `WholeBlocks`
    /// `has_whole_dirty_blocks`).
    pub fn take(&mut self, mut fresh: B, how: Take) -> Inflight<B> {
        debug_assert!(self.is_dirty());
        let keep_from = self.len - self.len % BLOCK_BYTES;
        let (write_len, data_len) = match how {
            Take::Padded => (self.len.next_multiple_of(BLOCK_BYTES), self.len),
            Take::WholeBlocks => (keep_from, keep_from),
        };
        assert!(write_len > 0, "take of an empty range");
        if let Some(padding) = self.buf.as_mut().get_mut(self.len..write_len) {
            padding.fill(0);
        }
        let carried = self.len - keep_from;
        if let (Some(dst), Some(src)) = (
            fresh.as_mut().get_mut(..carried),
            self.buf.as_ref().get(keep_from..self.len),
        ) {
            dst.copy_from_slice(src);
        }
        let mut old = std::mem::replace(&mut self.buf, fresh);
        old.truncate(write_len);
        let inflight = Inflight {
            buf: Rc::new(old),
            pos: self.pos,
            len: data_len,
            padded: how == Take::Padded && carried > 0,
        };
        self.pos += keep_from as u64;
        self.len = carried;
        self.written = match how {
            Take::Padded => carried,
            Take::WholeBlocks => 0,
        };
        inflight
    }
}

impl<B: IoBuffer> Inflight<B> {
    pub fn bytes(&self, from: u64, to: u64) -> Option<&[u8]> {
        slice_at((*self.buf).as_ref(), self.pos, self.len, from, to)
    }

    pub fn data_end(&self) -> u64 {
        self.pos + self.len as u64
    }

    /// File position just after the last block this write touches.
    pub fn block_end(&self) -> u64 {
        self.pos + (*self.buf).as_ref().len() as u64
    }
}

/// A copy of the last bytes written to the active segment, kept after their write retires:
/// a consumer that tails the log reads what was just written without a trip to the disk.
///
/// Owner: the partition log, on one shard.
/// Invariant: `bytes.len() <= 2 * capacity`, and at least the last `capacity` bytes kept
/// (or all since the last `clear`); holds exactly the file's bytes at
/// `[pos, pos + bytes.len())`, since written bytes never change (a padded block is
/// rewritten only with the same leading bytes).
pub(crate) struct Recent {
    pos: u64,
    bytes: Vec<u8>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            pos: 0,
            bytes: Vec::new(),
            capacity,
        }
    }

    /// Forgets everything (a new active segment).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.pos = 0;
    }

    /// Keeps the last `capacity` bytes of the file's data up to `pos + data.len()`, given the
    /// bytes just written at `pos`. Writes retire in file order, each starting at or before
    /// the previous one's end (a rewritten partial block).
    pub fn keep(&mut self, pos: u64, data: &[u8]) {
        let skip = data.len().saturating_sub(self.capacity);
        let (pos, data) = (pos + skip as u64, data.get(skip..).unwrap_or_default());
        let end = self.pos + self.bytes.len() as u64;
        if !self.bytes.is_empty() && pos >= self.pos && pos <= end {
            self.bytes.truncate((pos - self.pos) as usize);
        } else {
            self.bytes.clear();
            self.pos = pos;
        }
        self.bytes.extend_from_slice(data);
        // Up to twice the capacity before dropping the front, so each byte moves about once.
        if self.bytes.len() > 2 * self.capacity {
            let excess = self.bytes.len() - self.capacity;
            self.bytes.drain(..excess);
            self.pos += excess as u64;
        }
    }

    /// The bytes at file positions `[from, to)` if all of them are kept.
    pub fn bytes(&self, from: u64, to: u64) -> Option<&[u8]> {
        slice_at(&self.bytes, self.pos, self.bytes.len(), from, to)
    }
}

fn slice_at(buf: &[u8], pos: u64, len: usize, from: u64, to: u64) -> Option<&[u8]> {
    if from < pos || to > pos + len as u64 || from > to {
        return None;
    }
    buf.get((from - pos) as usize..(to - pos) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecBuf(Vec<u8>);
    impl AsRef<[u8]> for VecBuf {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl AsMut<[u8]> for VecBuf {
        fn as_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }
    impl IoBuffer for VecBuf {
        fn truncate(&mut self, len: usize) {
            self.0.truncate(len);
        }
    }

    #[test]
    fn take_dirty_carries_the_partial_block_and_pads_with_zeros() {
        let mut tail = Tail::new(VecBuf(vec![0xee; 16384]), 8192);
        tail.push(&[1; 5000]);
        let inflight = tail.take(VecBuf(vec![0xdd; 16384]), Take::Padded);
        assert_eq!(inflight.pos, 8192);
        assert_eq!(inflight.buf.0.len(), 8192);
        assert!(inflight.buf.0[..5000].iter().all(|&b| b == 1));
        assert!(inflight.buf.0[5000..].iter().all(|&b| b == 0));
        // The new tail starts at the partial block, holding the same 904 bytes.
        assert_eq!(tail.data_end(), 8192 + 5000);
        assert!(!tail.is_dirty());
        assert_eq!(tail.bytes(8192 + 4096, 8192 + 5000).unwrap(), &[1; 904][..]);
        assert_eq!(inflight.bytes(8192, 8192 + 10).unwrap(), &[1; 10][..]);
        assert!(tail.bytes(8192, 8192 + 10).is_none());
        tail.push(&[2; 100]);
        assert!(tail.is_dirty());
        let next = tail.take(VecBuf(vec![0; 16384]), Take::Padded);
        assert_eq!(next.pos, 8192 + 4096);
        assert_eq!(&next.buf.0[..904], &[1; 904][..]);
        assert_eq!(&next.buf.0[904..1004], &[2; 100][..]);
        assert!(next.buf.0[1004..4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn recent_keeps_the_last_written_bytes_across_rewrites_of_the_partial_block() {
        let mut recent = Recent::new(8192);
        recent.keep(0, &[1; 5000]);
        assert_eq!(recent.bytes(0, 5000).unwrap(), &[1; 5000][..]);
        // The next write starts at the partial block, with the same leading bytes.
        let mut rewrite = vec![1; 904];
        rewrite.extend_from_slice(&[2; 3000]);
        recent.keep(4096, &rewrite);
        assert_eq!(recent.bytes(4000, 4100).unwrap(), &[1; 100][..]);
        assert_eq!(recent.bytes(5000, 8000).unwrap(), &[2; 3000][..]);
        assert!(recent.bytes(5000, 8001).is_none());
        // Past twice the capacity the front goes; the last `capacity` bytes stay.
        recent.keep(4096 + 4096, &[3; 12000]);
        assert!(recent.bytes(0, 1).is_none());
        let end = 8192 + 12000;
        assert_eq!(recent.bytes(end - 8192, end).unwrap(), &[3; 8192][..]);
        // A write that does not continue the kept bytes replaces them.
        recent.keep(1 << 20, &[4; 100]);
        assert!(recent.bytes(end - 10, end).is_none());
        assert_eq!(
            recent.bytes(1 << 20, (1 << 20) + 100).unwrap(),
            &[4; 100][..]
        );
        recent.clear();
        assert!(recent.bytes(1 << 20, (1 << 20) + 1).is_none());
    }

    #[test]
    fn grow_keeps_position_bytes_and_what_is_handed_out() {
        let mut tail = Tail::new(VecBuf(vec![0; 8192]), 4096);
        tail.push(&[7; 5000]);
        let taken = tail.take(VecBuf(vec![0xee; 8192]), Take::Padded);
        assert_eq!((taken.pos, taken.len), (4096, 5000));
        tail.push(&[8; 3000]);
        assert_eq!(tail.free_bytes(), 8192 - 904 - 3000);
        tail.grow(VecBuf(vec![0xee; 32768]));
        assert_eq!(tail.capacity(), 32768);
        assert_eq!(tail.free_bytes(), 32768 - 3904);
        assert_eq!(
            (tail.pos(), tail.data_end(), tail.handed_end()),
            (8192, 8192 + 3904, 8192 + 904)
        );
        let mut expected = vec![7; 904];
        expected.extend_from_slice(&[8; 3000]);
        assert_eq!(tail.bytes(8192, 8192 + 3904), Some(&expected[..]));
    }

    #[test]
    fn block_aligned_tail_carries_nothing() {
        let mut tail = Tail::new(VecBuf(vec![0; 8192]), 0);
        tail.push(&[3; 4096]);
        let inflight = tail.take(VecBuf(vec![9; 8192]), Take::Padded);
        assert_eq!(inflight.buf.0.len(), 4096);
        assert_eq!(tail.data_end(), 4096);
        assert_eq!(tail.free_bytes(), 8192);
        assert!(!tail.is_dirty());
    }

    #[test]
    fn whole_block_take_leaves_the_partial_block_dirty_and_unwritten() {
        let mut tail = Tail::new(VecBuf(vec![0xee; 16384]), 4096);
        tail.push(&[1; 9000]);
        assert!(tail.has_whole_dirty_blocks());
        assert_eq!(tail.whole_blocks_end(), 4096 + 8192);
        let inflight = tail.take(VecBuf(vec![0xdd; 16384]), Take::WholeBlocks);
        assert_eq!(
            (inflight.pos, inflight.len, inflight.padded),
            (4096, 8192, false)
        );
        assert_eq!(inflight.buf.0.len(), 8192);
        assert_eq!(inflight.block_end(), 4096 + 8192);
        // The 808 bytes of the third block are still dirty: nothing of them was handed out.
        assert_eq!(tail.pos(), 4096 + 8192);
        assert_eq!(tail.handed_end(), 4096 + 8192);
        assert_eq!(tail.dirty_bytes(), 808);
        assert!(!tail.has_whole_dirty_blocks());
        assert_eq!(tail.bytes(12288, 12288 + 808).unwrap(), &[1; 808][..]);
        // A padded take of the rest writes that block whole and keeps it as handed.
        let padded = tail.take(VecBuf(vec![0; 16384]), Take::Padded);
        assert_eq!((padded.pos, padded.len, padded.padded), (12288, 808, true));
        assert!(padded.buf.0[808..].iter().all(|&b| b == 0));
        assert_eq!(tail.handed_end(), 12288 + 808);
        assert!(!tail.is_dirty());
    }
}
