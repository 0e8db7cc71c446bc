//! The record batch: the same bytes on the wire, on disk and to consumers.
//!
//! A producer builds a batch with [`BatchBuilder`]; the broker checks it once with
//! [`BatchView::new`], copies it into its log, stamps the offset with [`set_base_offset`] and
//! serves those bytes unchanged. Consumers check it again and iterate its records in place.
//!
//! Layout (little-endian; `BATCH_HEADER_BYTES` = 64):
//!
//! ```text
//! offset size field               notes
//! 0      8    base_offset         assigned by the broker          } not covered
//! 8      4    leader_epoch        assigned by the broker          } by the crc
//! 12     4    crc32c              crc32c of bytes [16, batch_len)
//! 16     4    batch_len           whole batch, this header included
//! 20     1    magic               1
//! 21     1    reserved            0
//! 22     2    attributes          bits 0-2: compression (0 = none); the rest 0
//! 24     4    record_count        1..=BATCH_RECORDS_MAX; record i has offset base_offset + i
//! 28     4    base_sequence       i32, the producer's sequence of record 0; -1 without one
//! 32     8    first_timestamp_ms  i64, timestamp of record 0
//! 40     8    max_timestamp_ms    i64, largest record timestamp
//! 48     8    producer_id         i64, -1 for a producer without idempotence
//! 56     2    producer_epoch      i16, -1 without a producer id
//! 58     6    reserved            0
//! 64     ...  records
//! ```
//!
//! Each record, with LEB128 varints (`zigzag` for the signed delta):
//!
//! ```text
//! length            varint   bytes of the record after this field
//! timestamp_delta   zigzag   milliseconds from first_timestamp_ms (0 for record 0)
//! key_len, key      varint + bytes (an empty key means "no key")
//! value_len, value  varint + bytes
//! header_count      varint   0..=RECORD_HEADERS_MAX
//!   key_len, key, value_len, value   per header
//! ```
//!
//! The crc skips the fields the broker writes, so assigning an offset or an epoch never
//! recomputes it, and the stored crc still checks the producer's bytes end to end.

use crate::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, RECORD_HEADERS_MAX};
use crate::varint::{self, VarintError};

/// The only batch format this crate reads and writes.
pub const BATCH_MAGIC: u8 = 1;

/// First byte the crc covers: everything after base offset, leader epoch and the crc itself.
pub const BATCH_CRC_START: usize = 16;

/// Mask of the compression codec in `attributes`.
pub const ATTRIBUTE_COMPRESSION_MASK: u16 = 0b111;

/// Producer id of a batch sent without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;
/// Producer epoch and base sequence of a batch sent without idempotence.
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

const AT_BASE_OFFSET: usize = 0;
const AT_LEADER_EPOCH: usize = 8;
const AT_CRC: usize = 12;
const AT_BATCH_LEN: usize = 16;
const AT_MAGIC: usize = 20;
const AT_RESERVED0: usize = 21;
const AT_ATTRIBUTES: usize = 22;
const AT_RECORD_COUNT: usize = 24;
const AT_BASE_SEQUENCE: usize = 28;
const AT_FIRST_TIMESTAMP: usize = 32;
const AT_MAX_TIMESTAMP: usize = 40;
const AT_PRODUCER_ID: usize = 48;
const AT_PRODUCER_EPOCH: usize = 56;
const AT_RESERVED1: usize = 58;

/// Why bytes are not a valid batch. Says where checking stopped; never echoes the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("batch length {len} outside {BATCH_HEADER_BYTES}..={BATCH_BYTES_MAX}")]
    BadLength { len: u32 },
    #[error("batch length field says {declared} bytes, {actual} given")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch magic {0}")]
    UnsupportedMagic(u8),
    #[error("reserved bits set in the batch header")]
    ReservedBits,
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u16),
    #[error("record count {0} outside 1..={BATCH_RECORDS_MAX}")]
    BadRecordCount(u32),
    #[error("producer id {producer_id} with epoch {producer_epoch} and sequence {base_sequence}")]
    BadProducer {
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    },
    #[error("record {index} at batch byte {at}: {fault}")]
    BadRecord {
        index: u32,
        at: usize,
        fault: RecordFault,
    },
    #[error("{extra} bytes after the last of {records} records")]
    TrailingBytes { records: u32, extra: usize },
    #[error("base offset {base_offset} plus {record_count} records overflows u64")]
    OffsetOverflow { base_offset: u64, record_count: u32 },
    #[error("max timestamp {declared} but records reach {actual}")]
    BadMaxTimestamp { declared: i64, actual: i64 },
}

/// What is wrong inside one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    #[error("runs past the end of the batch")]
    Truncated,
    #[error("a varint is longer than 32 bits")]
    VarintOverflow,
    #[error("fields do not fill the record length exactly")]
    LengthMismatch,
    #[error("more than {RECORD_HEADERS_MAX} headers")]
    TooManyHeaders,
    #[error("the first record's timestamp delta is not 0")]
    FirstDeltaNotZero,
}

impl From<VarintError> for RecordFault {
    fn from(error: VarintError) -> Self {
        match error {
            VarintError::Truncated => RecordFault::Truncated,
            VarintError::Overflow => RecordFault::VarintOverflow,
        }
    }
}

/// Why a record could not be added to a [`BatchBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The record would take the batch over its byte bound. Seal this batch and start another.
    #[error("batch full: {have} bytes + {record} byte record exceeds {max}")]
    BatchFull {
        have: usize,
        record: usize,
        max: usize,
    },
    /// The batch already holds `BATCH_RECORDS_MAX` records.
    #[error("batch holds the most records it may ({BATCH_RECORDS_MAX})")]
    TooManyRecords,
    /// A record alone is larger than any batch may be.
    #[error("record of {record} bytes cannot fit any batch of at most {max} bytes")]
    RecordTooLarge { record: usize, max: usize },
    #[error("record has {0} headers, at most {RECORD_HEADERS_MAX} allowed")]
    TooManyHeaders(usize),
    /// Timestamps in one batch must lie within `i32` milliseconds (about 24 days) of the first.
    #[error("timestamp {timestamp_ms} too far from the batch's first timestamp {first_ms}")]
    TimestampOutOfRange { timestamp_ms: i64, first_ms: i64 },
    #[error("cannot seal an empty batch")]
    Empty,
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|field| field.try_into().ok())
        .unwrap_or([0; N])
}

fn write(bytes: &mut [u8], at: usize, field: &[u8]) {
    if let Some(slot) = bytes.get_mut(at..at + field.len()) {
        slot.copy_from_slice(field);
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(read(bytes, at))
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(read(bytes, at))
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(read(bytes, at))
}

/// The fixed header of a batch, read without checking anything but its presence.
///
/// Log recovery and indexing use it to step from batch to batch; anything served to a
/// client goes through [`BatchView::new`] first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub leader_epoch: u32,
    pub crc: u32,
    pub batch_len: u32,
    pub magic: u8,
    pub attributes: u16,
    pub record_count: u32,
    pub base_sequence: i32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    reserved_nonzero: bool,
}

impl BatchHeader {
    /// Reads the header at the front of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let Some(header) = bytes.first_chunk::<BATCH_HEADER_BYTES>() else {
            return Err(BatchError::Truncated {
                need: BATCH_HEADER_BYTES,
                have: bytes.len(),
            });
        };
        let reserved_nonzero =
            read::<1>(header, AT_RESERVED0) != [0] || read::<6>(header, AT_RESERVED1) != [0; 6];
        Ok(BatchHeader {
            base_offset: u64_at(header, AT_BASE_OFFSET),
            leader_epoch: u32_at(header, AT_LEADER_EPOCH),
            crc: u32_at(header, AT_CRC),
            batch_len: u32_at(header, AT_BATCH_LEN),
            magic: read::<1>(header, AT_MAGIC)[0],
            attributes: u16_at(header, AT_ATTRIBUTES),
            record_count: u32_at(header, AT_RECORD_COUNT),
            base_sequence: u32_at(header, AT_BASE_SEQUENCE) as i32,
            first_timestamp_ms: u64_at(header, AT_FIRST_TIMESTAMP) as i64,
            max_timestamp_ms: u64_at(header, AT_MAX_TIMESTAMP) as i64,
            producer_id: u64_at(header, AT_PRODUCER_ID) as i64,
            producer_epoch: u16_at(header, AT_PRODUCER_EPOCH) as i16,
            reserved_nonzero,
        })
    }

    /// The header and the bytes of the batch at the front of `bytes` (a log segment, a fetch
    /// response, a replicated run of batches), checking its length only: for bytes this
    /// process validated with [`BatchView::new`] before, and to find the batch to validate.
    pub fn split_first(bytes: &[u8]) -> Result<(BatchHeader, &[u8]), BatchError> {
        let header = BatchHeader::parse(bytes)?;
        check_len(header.batch_len)?;
        let len = header.batch_len as usize;
        let Some(batch) = bytes.get(..len) else {
            return Err(BatchError::Truncated {
                need: len,
                have: bytes.len(),
            });
        };
        Ok((header, batch))
    }

    /// Offset of the batch's last record. Saturates on an unvalidated header.
    pub fn last_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count.saturating_sub(1)))
    }

    /// Offset just after the batch. Saturates on an unvalidated header.
    pub fn next_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    /// The compression codec in the attributes (0 = none).
    pub fn compression(&self) -> u16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    /// Checks everything the header alone can say, except the crc.
    fn check_fields(&self) -> Result<(), BatchError> {
        if self.magic != BATCH_MAGIC {
            return Err(BatchError::UnsupportedMagic(self.magic));
        }
        if self.reserved_nonzero || self.attributes & !ATTRIBUTE_COMPRESSION_MASK != 0 {
            return Err(BatchError::ReservedBits);
        }
        if self.compression() != 0 {
            return Err(BatchError::UnsupportedCompression(self.compression()));
        }
        if self.record_count == 0 || self.record_count > BATCH_RECORDS_MAX {
            return Err(BatchError::BadRecordCount(self.record_count));
        }
        // The crc does not cover the base offset, so a damaged disk or a hostile peer can
        // put anything there; every record's offset must still fit in u64.
        if self
            .base_offset
            .checked_add(u64::from(self.record_count))
            .is_none()
        {
            return Err(BatchError::OffsetOverflow {
                base_offset: self.base_offset,
                record_count: self.record_count,
            });
        }
        let idempotent = self.producer_id >= 0;
        let consistent = if idempotent {
            self.producer_epoch >= 0 && self.base_sequence >= 0
        } else {
            self.producer_id == NO_PRODUCER_ID
                && self.producer_epoch == NO_PRODUCER_EPOCH
                && self.base_sequence == NO_SEQUENCE
        };
        if !consistent {
            return Err(BatchError::BadProducer {
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                base_sequence: self.base_sequence,
            });
        }
        Ok(())
    }
}

/// Stamps the broker-assigned base offset into a batch. The crc does not cover it, so a
/// batch that was valid stays valid. `Truncated` if `batch` is shorter than a header.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) -> Result<(), BatchError> {
    set_field(batch, AT_BASE_OFFSET, &base_offset.to_le_bytes())
}

/// Stamps the leader epoch under which the broker appended the batch (not covered by the crc).
pub fn set_leader_epoch(batch: &mut [u8], leader_epoch: u32) -> Result<(), BatchError> {
    set_field(batch, AT_LEADER_EPOCH, &leader_epoch.to_le_bytes())
}

fn set_field(batch: &mut [u8], at: usize, field: &[u8]) -> Result<(), BatchError> {
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated {
            need: BATCH_HEADER_BYTES,
            have: batch.len(),
        });
    }
    write(batch, at, field);
    Ok(())
}

/// A validated batch borrowed from a buffer: header fields, crc, and the bounds of every
/// record have been checked, so iterating its records cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Validates `bytes` as exactly one batch.
    ///
    /// Order: lengths, then the crc (so a flipped bit anywhere the crc covers is reported as
    /// a checksum mismatch), then header fields, then every record's bounds. Cost: one crc
    /// pass over the bytes plus a walk of the record lengths.
    pub fn new(bytes: &'a [u8]) -> Result<BatchView<'a>, BatchError> {
        let header = whole_batch_header(bytes)?;
        BatchView::finish(header, bytes, crc32c::crc32c(crc_covered(bytes)))
    }

    /// [`BatchView::new`] for a caller that has just computed `computed`, the crc32c of
    /// `crc_covered(bytes)`, for a check of its own (a produce frame's body crc), so the
    /// bytes are hashed once.
    pub(crate) fn with_crc(bytes: &'a [u8], computed: u32) -> Result<BatchView<'a>, BatchError> {
        let header = whole_batch_header(bytes)?;
        BatchView::finish(header, bytes, computed)
    }

    fn finish(
        header: BatchHeader,
        bytes: &'a [u8],
        computed: u32,
    ) -> Result<BatchView<'a>, BatchError> {
        if computed != header.crc {
            return Err(BatchError::ChecksumMismatch {
                stored: header.crc,
                computed,
            });
        }
        header.check_fields()?;
        let records = bytes.get(BATCH_HEADER_BYTES..).unwrap_or_default();
        walk_records(&header, records)?;
        Ok(BatchView { header, bytes })
    }

    /// Validates the batch at the front of `bytes` (a log segment or a fetch response holding
    /// several), returning it and the bytes it used.
    pub fn split_first(bytes: &'a [u8]) -> Result<(BatchView<'a>, usize), BatchError> {
        let (_, batch) = BatchHeader::split_first(bytes)?;
        Ok((BatchView::new(batch)?, batch.len()))
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset()
    }
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
    pub fn first_timestamp_ms(&self) -> i64 {
        self.header.first_timestamp_ms
    }
    pub fn max_timestamp_ms(&self) -> i64 {
        self.header.max_timestamp_ms
    }

    /// The records, in offset order, borrowing from the batch's bytes.
    pub fn records(&self) -> Records<'a> {
        Records {
            rest: self.bytes.get(BATCH_HEADER_BYTES..).unwrap_or_default(),
            base_offset: self.header.base_offset,
            first_timestamp_ms: self.header.first_timestamp_ms,
            index: 0,
            count: self.header.record_count,
        }
    }
}

/// The header of `bytes` when they hold exactly one batch by its lengths.
fn whole_batch_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    check_len(header.batch_len)?;
    if header.batch_len as usize != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.batch_len,
            actual: bytes.len(),
        });
    }
    Ok(header)
}

/// The bytes of a batch its crc covers: everything after base offset, leader epoch and crc.
pub(crate) fn crc_covered(batch: &[u8]) -> &[u8] {
    batch.get(BATCH_CRC_START..).unwrap_or_default()
}

fn check_len(len: u32) -> Result<(), BatchError> {
    if (len as usize) < BATCH_HEADER_BYTES || len > BATCH_BYTES_MAX {
        return Err(BatchError::BadLength { len });
    }
    Ok(())
}

/// Checks that exactly `record_count` well-formed records fill `records`, and that the
/// header's timestamps match them.
fn walk_records(header: &BatchHeader, records: &[u8]) -> Result<(), BatchError> {
    let mut rest = records;
    let mut max_timestamp_ms = header.first_timestamp_ms;
    for index in 0..header.record_count {
        let at = BATCH_HEADER_BYTES + (records.len() - rest.len());
        let fault = |fault| BatchError::BadRecord { index, at, fault };
        let (record, used) = RawRecord::decode(rest).map_err(fault)?;
        if index == 0 && record.timestamp_delta != 0 {
            return Err(fault(RecordFault::FirstDeltaNotZero));
        }
        let timestamp_ms = header
            .first_timestamp_ms
            .saturating_add(record.timestamp_delta.into());
        max_timestamp_ms = max_timestamp_ms.max(timestamp_ms);
        rest = rest.get(used..).unwrap_or_default();
    }
    if !rest.is_empty() {
        return Err(BatchError::TrailingBytes {
            records: header.record_count,
            extra: rest.len(),
        });
    }
    if max_timestamp_ms != header.max_timestamp_ms {
        return Err(BatchError::BadMaxTimestamp {
            declared: header.max_timestamp_ms,
            actual: max_timestamp_ms,
        });
    }
    Ok(())
}

/// One record as laid out in the batch.
struct RawRecord<'a> {
    timestamp_delta: i32,
    key: &'a [u8],
    value: &'a [u8],
    header_count: u32,
    headers: &'a [u8],
}

/// Splits `len` bytes off the front of a cursor.
fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], RecordFault> {
    if rest.len() < len {
        return Err(RecordFault::Truncated);
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn take_varint(rest: &mut &[u8]) -> Result<u32, RecordFault> {
    let (value, used) = varint::read_u32(rest)?;
    *rest = rest.get(used..).unwrap_or_default();
    Ok(value)
}

fn take_sized<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], RecordFault> {
    let len = take_varint(rest)?;
    take(rest, len as usize)
}

impl<'a> RawRecord<'a> {
    /// Decodes the record at the front of `bytes`; returns it and the bytes it used.
    fn decode(bytes: &'a [u8]) -> Result<(RawRecord<'a>, usize), RecordFault> {
        let mut rest = bytes;
        let record_len = take_varint(&mut rest)? as usize;
        let used = bytes.len() - rest.len() + record_len;
        let mut body = take(&mut rest, record_len)?;
        let timestamp_delta = varint::zigzag_decode(take_varint(&mut body)?);
        let key = take_sized(&mut body)?;
        let value = take_sized(&mut body)?;
        let header_count = take_varint(&mut body)?;
        if header_count > RECORD_HEADERS_MAX {
            return Err(RecordFault::TooManyHeaders);
        }
        let headers = body;
        for _ in 0..header_count {
            take_sized(&mut body)?;
            take_sized(&mut body)?;
        }
        if !body.is_empty() {
            return Err(RecordFault::LengthMismatch);
        }
        let record = RawRecord {
            timestamp_delta,
            key,
            value,
            header_count,
            headers,
        };
        Ok((record, used))
    }
}

/// A record inside a validated batch, borrowed from the batch's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub headers: Headers<'a>,
}

/// Iterator over the records of a [`BatchView`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    base_offset: u64,
    first_timestamp_ms: i64,
    index: u32,
    count: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.index >= self.count {
            return None;
        }
        // The batch was validated, so decoding cannot fail; stop quietly if it somehow does.
        let (raw, used) = RawRecord::decode(self.rest).ok()?;
        self.rest = self.rest.get(used..).unwrap_or_default();
        let record = Record {
            offset: self.base_offset.saturating_add(u64::from(self.index)),
            timestamp_ms: self
                .first_timestamp_ms
                .saturating_add(raw.timestamp_delta.into()),
            key: raw.key,
            value: raw.value,
            headers: Headers {
                rest: raw.headers,
                left: raw.header_count,
            },
        };
        self.index += 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Records<'_> {}

/// Iterator over one record's headers as `(key, value)` byte slices.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = take_sized(&mut self.rest).ok()?;
        let value = take_sized(&mut self.rest).ok()?;
        Some((key, value))
    }
}

/// Iterator over the batches concatenated in a fetch response or a log read. Yields each
/// validated batch, or the first error and then nothing.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
}

impl<'a> Batches<'a> {
    pub fn new(bytes: &'a [u8]) -> Batches<'a> {
        Batches { rest: bytes }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match BatchView::split_first(self.rest) {
            Ok((batch, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                Some(Ok(batch))
            }
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

/// A header to attach to a record being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Builds a batch record by record into one reusable buffer.
///
/// `append` refuses a record that would take the batch over `bytes_max`, before writing
/// anything, so a caller can seal and start the next batch with the same record.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    bytes_max: usize,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// A builder for batches of up to `BATCH_BYTES_MAX` bytes.
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_bytes_max(BATCH_BYTES_MAX as usize)
    }

    /// A builder for batches of at most `bytes_max` bytes (capped at `BATCH_BYTES_MAX`).
    pub fn with_bytes_max(bytes_max: usize) -> BatchBuilder {
        let bytes_max = bytes_max.clamp(BATCH_HEADER_BYTES, BATCH_BYTES_MAX as usize);
        let mut buf = Vec::with_capacity(bytes_max.min(64 << 10));
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            bytes_max,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
        }
    }

    /// Marks the batch as coming from an idempotent producer. Negative values mean "none".
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        if producer_id < 0 {
            self.producer_id = NO_PRODUCER_ID;
            self.producer_epoch = NO_PRODUCER_EPOCH;
            self.base_sequence = NO_SEQUENCE;
        } else {
            self.producer_id = producer_id;
            self.producer_epoch = producer_epoch.max(0);
            self.base_sequence = base_sequence.max(0);
        }
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the batch would have if sealed now.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes a record would add to a batch.
    pub fn record_bytes(key: &[u8], value: &[u8], headers: &[Header<'_>], delta: i32) -> usize {
        let body = Self::record_body_bytes(key, value, headers, delta);
        varint::len_u32(body as u32) + body
    }

    fn record_body_bytes(key: &[u8], value: &[u8], headers: &[Header<'_>], delta: i32) -> usize {
        let sized = |bytes: &[u8]| varint::len_u32(bytes.len() as u32) + bytes.len();
        let headers_bytes: usize = headers.iter().map(|h| sized(h.key) + sized(h.value)).sum();
        varint::len_u32(varint::zigzag_encode(delta))
            + sized(key)
            + sized(value)
            + varint::len_u32(headers.len() as u32)
            + headers_bytes
    }

    /// Adds one record. On error nothing was written.
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
        headers: &[Header<'_>],
    ) -> Result<(), BuildError> {
        if self.record_count == BATCH_RECORDS_MAX {
            return Err(BuildError::TooManyRecords);
        }
        if headers.len() > RECORD_HEADERS_MAX as usize {
            return Err(BuildError::TooManyHeaders(headers.len()));
        }
        let first_ms = if self.record_count == 0 {
            timestamp_ms
        } else {
            self.first_timestamp_ms
        };
        let delta = timestamp_ms
            .checked_sub(first_ms)
            .and_then(|delta| i32::try_from(delta).ok())
            .ok_or(BuildError::TimestampOutOfRange {
                timestamp_ms,
                first_ms,
            })?;
        // Saturating sums: a record near usize::MAX bytes must fail the bound, not wrap.
        let record = Self::record_bytes(key, value, headers, delta);
        if BATCH_HEADER_BYTES.saturating_add(record) > self.bytes_max {
            return Err(BuildError::RecordTooLarge {
                record,
                max: self.bytes_max,
            });
        }
        if self.buf.len().saturating_add(record) > self.bytes_max {
            return Err(BuildError::BatchFull {
                have: self.buf.len(),
                record,
                max: self.bytes_max,
            });
        }
        let body = Self::record_body_bytes(key, value, headers, delta);
        let out = &mut self.buf;
        varint::write_u32(out, body as u32);
        varint::write_u32(out, varint::zigzag_encode(delta));
        varint::write_u32(out, key.len() as u32);
        out.extend_from_slice(key);
        varint::write_u32(out, value.len() as u32);
        out.extend_from_slice(value);
        varint::write_u32(out, headers.len() as u32);
        for header in headers {
            varint::write_u32(out, header.key.len() as u32);
            out.extend_from_slice(header.key);
            varint::write_u32(out, header.value.len() as u32);
            out.extend_from_slice(header.value);
        }
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        self.record_count += 1;
        Ok(())
    }

    /// Writes the header and crc and returns the finished batch (base offset 0, leader epoch
    /// 0). The builder keeps the bytes until [`clear`](Self::clear).
    pub fn seal(&mut self) -> Result<&[u8], BuildError> {
        if self.record_count == 0 {
            return Err(BuildError::Empty);
        }
        let len = self.buf.len() as u32;
        let buf = &mut self.buf;
        write(buf, AT_BASE_OFFSET, &0u64.to_le_bytes());
        write(buf, AT_LEADER_EPOCH, &0u32.to_le_bytes());
        write(buf, AT_BATCH_LEN, &len.to_le_bytes());
        write(buf, AT_MAGIC, &[BATCH_MAGIC, 0]);
        write(buf, AT_ATTRIBUTES, &0u16.to_le_bytes());
        write(buf, AT_RECORD_COUNT, &self.record_count.to_le_bytes());
        write(buf, AT_BASE_SEQUENCE, &self.base_sequence.to_le_bytes());
        write(
            buf,
            AT_FIRST_TIMESTAMP,
            &self.first_timestamp_ms.to_le_bytes(),
        );
        write(buf, AT_MAX_TIMESTAMP, &self.max_timestamp_ms.to_le_bytes());
        write(buf, AT_PRODUCER_ID, &self.producer_id.to_le_bytes());
        write(buf, AT_PRODUCER_EPOCH, &self.producer_epoch.to_le_bytes());
        write(buf, AT_RESERVED1, &[0; 6]);
        let crc = crc32c::crc32c(buf.get(BATCH_CRC_START..).unwrap_or_default());
        write(buf, AT_CRC, &crc.to_le_bytes());
        Ok(&self.buf)
    }

    /// Empties the builder for the next batch, keeping its buffer and producer id.
    pub fn clear(&mut self) {
        self.buf.truncate(BATCH_HEADER_BYTES);
        self.record_count = 0;
        self.first_timestamp_ms = 0;
        self.max_timestamp_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[derive(Debug, Clone)]
    struct TestRecord {
        timestamp_ms: i64,
        key: Vec<u8>,
        value: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    }

    fn build(records: &[TestRecord]) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for r in records {
            let headers: Vec<Header<'_>> = r
                .headers
                .iter()
                .map(|(k, v)| Header { key: k, value: v })
                .collect();
            builder
                .append(r.timestamp_ms, &r.key, &r.value, &headers)
                .unwrap();
        }
        builder.seal().unwrap().to_vec()
    }

    fn sample_records(count: usize) -> Vec<TestRecord> {
        (0..count)
            .map(|i| TestRecord {
                timestamp_ms: 1_700_000_000_000 + (i as i64 % 7) * 3,
                key: format!("key-{i}").into_bytes(),
                value: vec![i as u8; 40 + i % 50],
                headers: if i % 3 == 0 {
                    vec![(b"h".to_vec(), vec![i as u8])]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    fn any_record() -> impl Strategy<Value = TestRecord> {
        (
            -5_000i64..5_000,
            prop::collection::vec(any::<u8>(), 0..32),
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u8>(), 0..16),
                    prop::collection::vec(any::<u8>(), 0..32),
                ),
                0..4,
            ),
        )
            .prop_map(|(ts, key, value, headers)| TestRecord {
                timestamp_ms: 1_700_000_000_000 + ts,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn batch_roundtrip(records in prop::collection::vec(any_record(), 1..200), base in 0..u64::MAX - 200) {
            let mut bytes = build(&records);
            set_base_offset(&mut bytes, base).unwrap();
            let view = BatchView::new(&bytes).unwrap();
            prop_assert_eq!(view.record_count() as usize, records.len());
            prop_assert_eq!(view.base_offset(), base);
            prop_assert_eq!(view.first_timestamp_ms(), records[0].timestamp_ms);
            let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap();
            prop_assert_eq!(view.max_timestamp_ms(), max_ts);
            let decoded: Vec<Record<'_>> = view.records().collect();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base + i as u64);
                prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
                prop_assert_eq!(got.key, &want.key[..]);
                prop_assert_eq!(got.value, &want.value[..]);
                let headers: Vec<(Vec<u8>, Vec<u8>)> =
                    got.headers.map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                prop_assert_eq!(&headers, &want.headers);
            }
        }
    }

    #[test]
    fn batch_of_the_most_records_is_valid_and_one_more_is_refused() {
        let mut builder = BatchBuilder::new();
        for _ in 0..BATCH_RECORDS_MAX {
            builder.append(0, b"", b"", &[]).unwrap();
        }
        assert_eq!(
            builder.append(0, b"", b"", &[]),
            Err(BuildError::TooManyRecords)
        );
        let bytes = builder.seal().unwrap().to_vec();
        let view = BatchView::new(&bytes).unwrap();
        assert_eq!(view.record_count(), BATCH_RECORDS_MAX);
        assert_eq!(view.records().count(), BATCH_RECORDS_MAX as usize);
    }

    #[test]
    fn batch_fills_to_its_byte_bound_and_refuses_the_next_record() {
        let mut builder = BatchBuilder::new();
        let value = vec![7u8; 1000];
        let full = loop {
            match builder.append(5, b"k", &value, &[]) {
                Ok(()) => {}
                Err(error) => break error,
            }
        };
        assert!(matches!(full, BuildError::BatchFull { .. }), "{full:?}");
        assert!(builder.len_bytes() <= BATCH_BYTES_MAX as usize);
        let bytes = builder.seal().unwrap().to_vec();
        assert!(BatchView::new(&bytes).is_ok());
        let huge = vec![0u8; BATCH_BYTES_MAX as usize];
        assert!(matches!(
            BatchBuilder::new().append(0, b"", &huge, &[]),
            Err(BuildError::RecordTooLarge { .. })
        ));
    }

    #[test]
    fn builder_refuses_bad_records_without_writing() {
        let mut builder = BatchBuilder::with_bytes_max(4096);
        builder.append(0, b"k", b"v", &[]).unwrap();
        let len = builder.len_bytes();
        let far = i64::from(i32::MAX) + 1;
        assert_eq!(
            builder.append(far, b"k", b"v", &[]),
            Err(BuildError::TimestampOutOfRange {
                timestamp_ms: far,
                first_ms: 0
            })
        );
        let headers = vec![
            Header {
                key: b"k",
                value: b"v"
            };
            65
        ];
        assert_eq!(
            builder.append(0, b"", b"", &headers),
            Err(BuildError::TooManyHeaders(65))
        );
        assert_eq!(builder.len_bytes(), len);
        assert_eq!(BatchBuilder::new().seal(), Err(BuildError::Empty));
    }

    #[test]
    fn builder_reuses_its_buffer_after_clear() {
        let mut builder = BatchBuilder::new();
        builder.set_producer(42, 3, 100);
        builder.append(10, b"a", b"first", &[]).unwrap();
        let first = builder.seal().unwrap().to_vec();
        builder.clear();
        builder.append(20, b"b", b"second", &[]).unwrap();
        let second = builder.seal().unwrap().to_vec();
        let view = BatchView::new(&second).unwrap();
        assert_eq!(view.record_count(), 1);
        assert_eq!(view.first_timestamp_ms(), 20);
        assert_eq!(view.header().producer_id, 42);
        assert_eq!(view.records().next().unwrap().value, b"second");
        assert_ne!(first, second);
    }

    #[test]
    fn set_base_offset_and_epoch_keep_the_crc_valid() {
        let mut bytes = build(&sample_records(3));
        set_base_offset(&mut bytes, 1 << 40).unwrap();
        set_leader_epoch(&mut bytes, 9).unwrap();
        let view = BatchView::new(&bytes).unwrap();
        assert_eq!(view.base_offset(), 1 << 40);
        assert_eq!(view.header().leader_epoch, 9);
        assert_eq!(view.last_offset(), (1 << 40) + 2);
        assert_eq!(view.next_offset(), (1 << 40) + 3);
        assert!(matches!(
            set_base_offset(&mut [0u8; 10], 1),
            Err(BatchError::Truncated { need: 64, have: 10 })
        ));
    }

    /// Pins the exact bytes of a small batch: a layout change must change this test.
    #[test]
    fn batch_bytes_are_pinned() {
        let mut builder = BatchBuilder::new();
        builder.set_producer(7, 1, 5);
        builder
            .append(
                1000,
                b"k",
                b"hello",
                &[Header {
                    key: b"h",
                    value: b"v",
                }],
            )
            .unwrap();
        builder.append(998, b"", b"x", &[]).unwrap();
        let mut bytes = builder.seal().unwrap().to_vec();
        set_base_offset(&mut bytes, 0x0102_0304_0506_0708).unwrap();
        set_leader_epoch(&mut bytes, 2).unwrap();
        let expected: &[u8] = &[
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // base_offset
            0x02, 0x00, 0x00, 0x00, // leader_epoch
            0x3c, 0xcb, 0xe9, 0x81, // crc32c
            0x55, 0x00, 0x00, 0x00, // batch_len = 85
            0x01, 0x00, // magic, reserved
            0x00, 0x00, // attributes
            0x02, 0x00, 0x00, 0x00, // record_count
            0x05, 0x00, 0x00, 0x00, // base_sequence
            0xe8, 0x03, 0, 0, 0, 0, 0, 0, // first_timestamp_ms = 1000
            0xe8, 0x03, 0, 0, 0, 0, 0, 0, // max_timestamp_ms = 1000
            0x07, 0, 0, 0, 0, 0, 0, 0, // producer_id
            0x01, 0x00, // producer_epoch
            0, 0, 0, 0, 0, 0, // reserved
            // record 0: len 14, delta 0, key "k", value "hello", 1 header h=v
            0x0e, 0x00, 0x01, b'k', 0x05, b'h', b'e', b'l', b'l', b'o', 0x01, 0x01, b'h', 0x01,
            b'v', // record 1: len 5, delta -2 (zigzag 3), no key, value "x", no headers
            0x05, 0x03, 0x00, 0x01, b'x', 0x00,
        ];
        assert_eq!(bytes, expected);
        let view = BatchView::new(&bytes).unwrap();
        let records: Vec<Record<'_>> = view.records().collect();
        assert_eq!(records[1].timestamp_ms, 998);
        assert_eq!(records[1].offset, 0x0102_0304_0506_0709);
    }

    #[test]
    fn every_truncated_prefix_is_rejected() {
        let bytes = build(&sample_records(5));
        for end in 0..bytes.len() {
            assert!(BatchView::new(&bytes[..end]).is_err(), "prefix {end}");
            assert!(
                matches!(
                    BatchView::split_first(&bytes[..end]),
                    Err(BatchError::Truncated { .. })
                ),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn flipped_bit_in_the_covered_bytes_is_a_checksum_mismatch() {
        let bytes = build(&sample_records(8));
        for bit in (AT_CRC * 8)..(bytes.len() * 8) {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = BatchView::new(&flipped);
            if (AT_BATCH_LEN..AT_BATCH_LEN + 4).contains(&(bit / 8)) {
                // The length is checked against the slice first.
                assert!(
                    matches!(
                        result,
                        Err(BatchError::LengthMismatch { .. } | BatchError::BadLength { .. })
                    ),
                    "bit {bit}: {result:?}"
                );
            } else {
                assert!(
                    matches!(result, Err(BatchError::ChecksumMismatch { .. })),
                    "bit {bit}: {result:?}"
                );
            }
        }
    }

    /// A hostile producer computes a correct crc over garbage: the record walk must catch it.
    #[test]
    fn random_mutations_never_panic() {
        let seed = rand::random::<u64>();
        let mut rng = StdRng::seed_from_u64(seed);
        let original = build(&sample_records(12));
        let mut rejected_by_walk = 0;
        for case in 0..100_000 {
            let mut bytes = original.clone();
            let edits = rng.random_range(1..=4);
            for _ in 0..edits {
                match rng.random_range(0..4) {
                    0 => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                    1 => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    2 => {
                        let at = rng.random_range(0..=bytes.len());
                        bytes.truncate(at);
                    }
                    _ => {
                        let at = rng.random_range(0..=bytes.len());
                        bytes.insert(at, rng.random());
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let fix_crc = case % 2 == 0;
            if fix_crc && bytes.len() >= BATCH_HEADER_BYTES {
                let len = bytes.len() as u32;
                bytes[AT_BATCH_LEN..AT_BATCH_LEN + 4].copy_from_slice(&len.to_le_bytes());
                let crc = crc32c::crc32c(&bytes[BATCH_CRC_START..]);
                bytes[AT_CRC..AT_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            }
            match BatchView::new(&bytes) {
                Ok(view) => {
                    // Whatever validated must iterate to exactly its record count.
                    assert_eq!(
                        view.records().count(),
                        view.record_count() as usize,
                        "seed {seed}"
                    );
                    for record in view.records() {
                        assert_eq!(record.headers.count(), record.headers.left as usize);
                    }
                }
                Err(BatchError::BadRecord { .. } | BatchError::TrailingBytes { .. }) => {
                    rejected_by_walk += 1
                }
                Err(_) => {}
            }
            let _ = Batches::new(&bytes).count();
        }
        assert!(
            rejected_by_walk > 1000,
            "the walker saw too few cases: seed {seed}"
        );
    }

    /// Found by the `validate_batch` fuzz target: a base offset near u64::MAX made record
    /// iteration overflow. The base offset is outside the crc, so validation must bound it.
    #[test]
    fn base_offset_that_overflows_is_rejected() {
        let mut bytes = build(&sample_records(3));
        set_base_offset(&mut bytes, u64::MAX - 1).unwrap();
        assert_eq!(
            BatchView::new(&bytes).unwrap_err(),
            BatchError::OffsetOverflow {
                base_offset: u64::MAX - 1,
                record_count: 3
            }
        );
        set_base_offset(&mut bytes, u64::MAX - 3).unwrap();
        let view = BatchView::new(&bytes).unwrap();
        assert_eq!(view.records().last().unwrap().offset, u64::MAX - 1);
        assert_eq!(view.next_offset(), u64::MAX);
    }

    #[test]
    fn header_field_errors_are_named() {
        let good = build(&sample_records(2));
        let reseal = |mut bytes: Vec<u8>| {
            let crc = crc32c::crc32c(&bytes[BATCH_CRC_START..]);
            bytes[AT_CRC..AT_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut bytes = good.clone();
        bytes[AT_MAGIC] = 2;
        assert_eq!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::UnsupportedMagic(2)
        );
        let mut bytes = good.clone();
        bytes[AT_ATTRIBUTES] = 1;
        assert_eq!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::UnsupportedCompression(1)
        );
        let mut bytes = good.clone();
        bytes[AT_RESERVED1 + 3] = 1;
        assert_eq!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::ReservedBits
        );
        let mut bytes = good.clone();
        bytes[AT_RECORD_COUNT..AT_RECORD_COUNT + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::BadRecordCount(0)
        );
        let mut bytes = good.clone();
        bytes[AT_RECORD_COUNT..AT_RECORD_COUNT + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::TrailingBytes { records: 1, .. }
        ));
        let mut bytes = good.clone();
        bytes[AT_MAX_TIMESTAMP] ^= 1;
        assert!(matches!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::BadMaxTimestamp { .. }
        ));
        let mut bytes = good;
        bytes[AT_PRODUCER_EPOCH] = 0;
        assert!(matches!(
            BatchView::new(&reseal(bytes)).unwrap_err(),
            BatchError::BadProducer { .. }
        ));
    }

    #[test]
    fn batches_iterates_concatenated_batches_and_stops_at_the_first_error() {
        let mut log = Vec::new();
        for base in [0u64, 5, 9] {
            let mut bytes = build(&sample_records(if base == 5 { 4 } else { 5 }));
            set_base_offset(&mut bytes, base).unwrap();
            log.extend_from_slice(&bytes);
        }
        let offsets: Vec<u64> = Batches::new(&log)
            .map(|b| b.unwrap().base_offset())
            .collect();
        assert_eq!(offsets, [0, 5, 9]);
        log.extend_from_slice(&[0xff; 10]);
        let results: Vec<_> = Batches::new(&log).collect();
        assert_eq!(results.len(), 4);
        assert!(matches!(results[3], Err(BatchError::Truncated { .. })));
    }
}
