//! The sparse index of one segment: offset -> file position, and time -> file position.
//!
//! One entry per `index_interval_bytes` of log: the first batch at or after each interval
//! boundary gets an entry. Each entry also carries the largest record timestamp of every
//! batch *before* it, which never decreases along the index, so a time lookup is a binary
//! search too.
//!
//! The index is derived data: it lives in memory while a segment is active, is written to
//! `<base>.idx` when the segment is sealed or the log closes, and is rebuilt from the log
//! whenever the file is missing or fails its checks.
//!
//! File format (little-endian), padded with zeros to a whole block:
//!
//! ```text
//! 0   4  magic "RMQX"
//! 4   4  version 1
//! 8   8  base_offset
//! 16  8  data_end          bytes of batches in the segment
//! 24  8  next_offset       offset after the segment's last batch
//! 32  8  max_timestamp_ms  largest record timestamp in the segment
//! 40  4  entry_count
//! 44  4  crc32c of bytes [0, 44) and of the entries
//! 48  ... entries, 16 bytes each: offset - base (u32), position (u32), max_before_ms (i64)
//! ```

/// One index entry: a batch with base offset `offset` starts at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    /// Largest record timestamp of the batches before this one in the segment
    /// (`i64::MIN` when there are none).
    pub max_timestamp_before_ms: i64,
}

/// The sparse index of one segment, in memory.
///
/// Invariant: entries are strictly increasing in offset and position, and non-decreasing in
/// `max_timestamp_before_ms`.
#[derive(Debug, Clone)]
pub struct Index {
    base_offset: u64,
    interval_bytes: u64,
    entries: Vec<IndexEntry>,
    /// Largest record timestamp of every batch observed so far.
    max_timestamp_ms: i64,
}

const MAGIC: [u8; 4] = *b"RMQX";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
const ENTRY_BYTES: usize = 16;

/// The summary an index file stores beside its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub data_end: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
}

/// Why an index file was not used. The log rebuilds the index from the segment instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexFileError {
    #[error("index file too short: {0} bytes")]
    Truncated(usize),
    #[error("not an index file (magic or version)")]
    BadMagic,
    #[error("index checksum mismatch")]
    Checksum,
    #[error("index belongs to base offset {found}, expected {expected}")]
    WrongSegment { expected: u64, found: u64 },
    #[error("index entries out of order at entry {0}")]
    Disordered(usize),
}

impl Index {
    pub fn new(base_offset: u64, interval_bytes: u64) -> Index {
        Index {
            base_offset,
            interval_bytes: interval_bytes.max(1),
            entries: Vec::new(),
            max_timestamp_ms: i64::MIN,
        }
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    /// Records that a batch with base offset `offset` and largest timestamp
    /// `max_timestamp_ms` starts at `position`. Batches must be observed in log order.
    pub fn observe(&mut self, offset: u64, position: u64, max_timestamp_ms: i64) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => {
                assert!(
                    offset > last.offset && position > last.position,
                    "index out of order"
                );
                position - last.position >= self.interval_bytes
            }
        };
        if due {
            self.entries.push(IndexEntry {
                offset,
                position,
                max_timestamp_before_ms: self.max_timestamp_ms,
            });
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(max_timestamp_ms);
    }

    /// Position of the batch to start reading from to find `offset`: the last indexed batch
    /// at or below it (position 0 if none).
    pub fn lookup(&self, offset: u64) -> u64 {
        let after = self.entries.partition_point(|entry| entry.offset <= offset);
        match after.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(entry) => entry.position,
            None => 0,
        }
    }

    /// Where to start scanning for the first record with timestamp >= `timestamp_ms`, as
    /// `(offset, position)` of a batch: no batch before it has such a record.
    pub fn lookup_time(&self, timestamp_ms: i64) -> (u64, u64) {
        let first_reaching = self
            .entries
            .partition_point(|entry| entry.max_timestamp_before_ms < timestamp_ms);
        match first_reaching
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
        {
            Some(entry) => (entry.offset, entry.position),
            None => (self.base_offset, 0),
        }
    }

    /// Drops the entries at or beyond `position` (after a truncation of the log). The running
    /// timestamp maximum becomes the bound of the first dropped entry, which covers every
    /// batch kept.
    pub fn truncate(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|entry| entry.position < position);
        if let Some(first_dropped) = self.entries.get(keep) {
            self.max_timestamp_ms = first_dropped.max_timestamp_before_ms;
        }
        self.entries.truncate(keep);
    }

    /// The file image: header, entries, zero padding to `block_bytes`.
    pub fn encode(&self, summary: SegmentSummary, block_bytes: usize) -> Vec<u8> {
        let body_bytes = HEADER_BYTES + self.entries.len() * ENTRY_BYTES;
        let mut out = Vec::with_capacity(body_bytes.next_multiple_of(block_bytes));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&summary.data_end.to_le_bytes());
        out.extend_from_slice(&summary.next_offset.to_le_bytes());
        out.extend_from_slice(&summary.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]); // crc, filled below
        for entry in &self.entries {
            out.extend_from_slice(&((entry.offset - self.base_offset) as u32).to_le_bytes());
            out.extend_from_slice(&(entry.position as u32).to_le_bytes());
            out.extend_from_slice(&entry.max_timestamp_before_ms.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(out.get(..44).unwrap_or_default()),
            out.get(HEADER_BYTES..).unwrap_or_default(),
        );
        if let Some(slot) = out.get_mut(44..48) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        out.resize(body_bytes.next_multiple_of(block_bytes), 0);
        out
    }

    /// Reads an index file image. Checks magic, version, crc, segment and entry order.
    pub fn decode(
        bytes: &[u8],
        base_offset: u64,
        interval_bytes: u64,
    ) -> Result<(Index, SegmentSummary), IndexFileError> {
        let field = |at: usize| -> [u8; 8] {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8])
        };
        let field4 = |at: usize| -> [u8; 4] {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4])
        };
        if bytes.len() < HEADER_BYTES {
            return Err(IndexFileError::Truncated(bytes.len()));
        }
        if field4(0) != MAGIC || u32::from_le_bytes(field4(4)) != VERSION {
            return Err(IndexFileError::BadMagic);
        }
        let count = u32::from_le_bytes(field4(40)) as usize;
        let entries_end = HEADER_BYTES.saturating_add(count.saturating_mul(ENTRY_BYTES));
        let Some(entry_bytes) = bytes.get(HEADER_BYTES..entries_end) else {
            return Err(IndexFileError::Truncated(bytes.len()));
        };
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(bytes.get(..44).unwrap_or_default()),
            entry_bytes,
        );
        if crc != u32::from_le_bytes(field4(44)) {
            return Err(IndexFileError::Checksum);
        }
        let found = u64::from_le_bytes(field(8));
        if found != base_offset {
            return Err(IndexFileError::WrongSegment {
                expected: base_offset,
                found,
            });
        }
        let summary = SegmentSummary {
            data_end: u64::from_le_bytes(field(16)),
            next_offset: u64::from_le_bytes(field(24)),
            max_timestamp_ms: i64::from_le_bytes(field(32)),
        };
        let mut index = Index::new(base_offset, interval_bytes);
        for (i, raw) in entry_bytes.chunks_exact(ENTRY_BYTES).enumerate() {
            let word = |at: usize| -> u32 {
                raw.get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_le_bytes)
            };
            let max_before = raw
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(i64::MIN, i64::from_le_bytes);
            let entry = IndexEntry {
                offset: base_offset + u64::from(word(0)),
                position: u64::from(word(4)),
                max_timestamp_before_ms: max_before,
            };
            let ordered = match index.entries.last() {
                None => true,
                Some(last) => {
                    entry.offset > last.offset
                        && entry.position > last.position
                        && entry.max_timestamp_before_ms >= last.max_timestamp_before_ms
                }
            };
            if !ordered || entry.position >= summary.data_end || entry.offset >= summary.next_offset
            {
                return Err(IndexFileError::Disordered(i));
            }
            index.entries.push(entry);
        }
        index.max_timestamp_ms = summary.max_timestamp_ms;
        Ok((index, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let mut index = Index::new(100, 1000);
        // Batches of 400 bytes and 10 records each; timestamps wobble.
        for i in 0..20u64 {
            let ts = 1_000 + (i as i64 % 5) * 10 + i as i64;
            index.observe(100 + i * 10, i * 400, ts);
        }
        index
    }

    #[test]
    fn entries_are_spaced_by_the_interval() {
        let index = sample();
        let positions: Vec<u64> = index.entries().iter().map(|e| e.position).collect();
        assert_eq!(positions, [0, 1200, 2400, 3600, 4800, 6000, 7200]);
    }

    #[test]
    fn lookup_returns_the_last_entry_at_or_below() {
        let index = sample();
        assert_eq!(index.lookup(100), 0);
        assert_eq!(index.lookup(129), 0);
        assert_eq!(index.lookup(130), 1200);
        assert_eq!(index.lookup(175), 2400);
        assert_eq!(index.lookup(10_000), 7200);
        assert_eq!(index.lookup(0), 0);
    }

    #[test]
    fn lookup_time_never_skips_a_reaching_record() {
        let index = sample();
        // Brute force: the scan start must precede every batch whose max timestamp reaches.
        for target in 990..1_100 {
            let (_, start) = index.lookup_time(target);
            for i in 0..20u64 {
                let ts = 1_000 + (i as i64 % 5) * 10 + i as i64;
                if ts >= target {
                    assert!(
                        start <= i * 400,
                        "target {target}: start {start} skips batch {i}"
                    );
                    break;
                }
            }
        }
    }

    #[test]
    fn file_roundtrip_and_damage_detection() {
        let index = sample();
        let summary = SegmentSummary {
            data_end: 8000,
            next_offset: 300,
            max_timestamp_ms: 1059,
        };
        let bytes = index.encode(summary, 4096);
        assert_eq!(bytes.len() % 4096, 0);
        let (decoded, got) = Index::decode(&bytes, 100, 1000).unwrap();
        assert_eq!(got, summary);
        assert_eq!(decoded.entries(), index.entries());

        assert_eq!(
            Index::decode(&bytes, 7, 1000).unwrap_err(),
            IndexFileError::WrongSegment {
                expected: 7,
                found: 100
            }
        );
        for at in [0, 9, 17, 41, 50, 60] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(Index::decode(&bad, 100, 1000).is_err(), "flip at {at}");
        }
        assert_eq!(
            Index::decode(&bytes[..20], 100, 1000).unwrap_err(),
            IndexFileError::Truncated(20)
        );
        assert!(Index::decode(&vec![0; 4096], 100, 1000).is_err());
    }

    #[test]
    fn truncate_drops_entries_at_or_beyond_the_position() {
        let mut index = sample();
        index.truncate(2400);
        assert_eq!(index.entries().len(), 2);
        assert_eq!(index.lookup(10_000), 1200);
        index.observe(300, 2000, 5);
        assert_eq!(index.entries().len(), 2);
    }
}
