//! One segment of a partition log: a pre-sized `<base-offset>.log` file and its index.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::index::{Index, SegmentSummary};
use super::storage::BLOCK_BYTES;

/// Digits of the zero-padded base offset in segment file names, so names sort by offset.
const NAME_DIGITS: usize = 20;

pub(crate) fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:0NAME_DIGITS$}.log"))
}

pub(crate) fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:0NAME_DIGITS$}.idx"))
}

/// The base offset a segment file name carries, if `name` is a segment file name.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment: its file and what the log knows of its contents.
///
/// Owner: the partition log, on one shard.
/// Invariant: `data_end <= capacity_bytes`; the batches in `[0, data_end)` hold offsets
/// `[base_offset, next_offset)` densely.
#[derive(Debug)]
pub(crate) struct Segment<F> {
    pub base_offset: u64,
    pub file: Rc<F>,
    /// Bytes of batches in the segment (for the active segment: appended, not all written).
    pub data_end: u64,
    /// Size of the pre-allocated file: appends never go past it.
    pub capacity_bytes: u64,
    pub next_offset: u64,
    pub index: Index,
}

impl<F> Segment<F> {
    /// A segment with no data yet: its appends start at `base_offset`.
    pub fn empty(
        base_offset: u64,
        file: F,
        capacity_bytes: u64,
        index_interval_bytes: u64,
    ) -> Self {
        Segment {
            base_offset,
            file: Rc::new(file),
            data_end: 0,
            capacity_bytes,
            next_offset: base_offset,
            index: Index::new(base_offset, index_interval_bytes),
        }
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.index.max_timestamp_ms()
    }

    /// The `<base>.idx` file's contents: the index and where the data ends.
    pub fn index_image(&self) -> Vec<u8> {
        let summary = SegmentSummary {
            data_end: self.data_end,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms(),
        };
        self.index.encode(summary, BLOCK_BYTES)
    }

    pub fn check_invariants(&self) {
        assert!(
            self.data_end <= self.capacity_bytes,
            "segment {} overfull",
            self.base_offset
        );
        assert!(self.next_offset >= self.base_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_roundtrip_and_sort_by_offset() {
        let dir = Path::new("/d");
        let name = log_path(dir, 42);
        assert_eq!(name, Path::new("/d/00000000000000000042.log"));
        let file = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_log_name(file), Some(42));
        assert_eq!(parse_log_name("00000000000000000042.idx"), None);
        assert_eq!(parse_log_name("42.log"), None);
        assert_eq!(parse_log_name("0000000000000000004x.log"), None);
        assert!(log_path(dir, 9) < log_path(dir, 10));
    }
}
