//! Records as consumers receive them: whole batches from a fetch response or a subscription
//! delivery, checked (lengths and crc32c) before any record is handed out, and records below
//! the consumer's position skipped. Shared by [`Consumer`](crate::Consumer) and
//! [`Subscription`](crate::Subscription), so both check batches the same way.

use std::sync::Arc;

use protocol::batch::BatchError;
use protocol::{BatchView, Batches, Record};

/// A record copied out of a fetch response or a subscription delivery, owned by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic the record came from (shared by every record of the topic).
    pub topic: Arc<str>,
    /// Partition the record came from.
    pub partition: u32,
    /// Position of the record in its partition's log.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as the producer set it.
    pub timestamp_ms: i64,
    /// Empty when the record has no key.
    pub key: Vec<u8>,
    /// The record's payload.
    pub value: Vec<u8>,
    /// `(key, value)` pairs, in the order the producer gave them.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ConsumedRecord {
    /// Copies `record` (borrowed from a receive buffer) out of `topic`/`partition`.
    pub(crate) fn copied(topic: &Arc<str>, partition: u32, record: &Record<'_>) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::clone(topic),
            partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.to_vec(),
            value: record.value.to_vec(),
            headers: record
                .headers
                .map(|(key, value)| (key.to_vec(), value.to_vec()))
                .collect(),
        }
    }
}

/// What delivering one fetch response or subscription delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Visited {
    /// The partition's position after the delivered records.
    pub position: u64,
    pub delivered: usize,
}

/// Validates every batch in `records`, then hands `visit` each record at or above `position`
/// and below `high_watermark`, in order. On a bad batch nothing is delivered.
pub(crate) fn visit_records(
    records: &[u8],
    position: u64,
    high_watermark: u64,
    mut visit: impl FnMut(Record<'_>),
) -> Result<Visited, BatchError> {
    let batches: Vec<BatchView<'_>> = Batches::new(records).collect::<Result<_, _>>()?;
    let mut visited = Visited {
        position,
        delivered: 0,
    };
    for batch in batches {
        if batch.next_offset() <= visited.position {
            continue;
        }
        for record in batch.records() {
            if record.offset < visited.position {
                continue;
            }
            if record.offset >= high_watermark {
                return Ok(visited);
            }
            visit(record);
            visited.delivered += 1;
            visited.position = record.offset + 1;
        }
    }
    Ok(visited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::BatchBuilder;
    use protocol::batch::set_base_offset;

    /// A batch of `count` records at `base`, values "v{offset}".
    fn batch(base: u64, count: u64) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for offset in base..base + count {
            builder
                .append(offset as i64, b"", format!("v{offset}").as_bytes(), &[])
                .unwrap();
        }
        let mut bytes = builder.seal().unwrap().to_vec();
        set_base_offset(&mut bytes, base).unwrap();
        bytes
    }

    fn delivered(records: &[u8], position: u64, high_watermark: u64) -> (Vec<u64>, Visited) {
        let mut offsets = Vec::new();
        let visited = visit_records(records, position, high_watermark, |record| {
            assert_eq!(record.value, format!("v{}", record.offset).as_bytes());
            offsets.push(record.offset);
        })
        .unwrap();
        (offsets, visited)
    }

    #[test]
    fn records_below_the_position_are_skipped() {
        let mut records = batch(0, 10);
        records.extend(batch(10, 5));
        let (offsets, visited) = delivered(&records, 7, 100);
        assert_eq!(offsets, [7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(visited.position, 15);
        assert_eq!(visited.delivered, 8);
    }

    #[test]
    fn a_batch_wholly_below_the_position_delivers_nothing() {
        let mut records = batch(0, 10);
        records.extend(batch(10, 5));
        let (offsets, visited) = delivered(&records, 10, 100);
        assert_eq!(offsets, [10, 11, 12, 13, 14]);
        let (offsets, visited_all) = delivered(&records, 15, 100);
        assert!(offsets.is_empty());
        assert_eq!(visited_all.position, 15, "the position never moves back");
        assert_eq!(visited.position, 15);
    }

    #[test]
    fn nothing_at_or_above_the_high_watermark_is_delivered() {
        let records = batch(0, 10);
        let (offsets, visited) = delivered(&records, 3, 6);
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(visited.position, 6);
    }

    #[test]
    fn a_corrupt_batch_delivers_nothing_of_the_fetch() {
        let mut records = batch(0, 3);
        let mut second = batch(3, 3);
        let last = second.len() - 1;
        second[last] ^= 0x55;
        records.extend(second);
        let mut seen = 0;
        let result = visit_records(&records, 0, 100, |_| seen += 1);
        assert!(
            matches!(result, Err(BatchError::ChecksumMismatch { .. })),
            "{result:?}"
        );
        assert_eq!(seen, 0);
        // Trailing garbage after good batches is a truncated batch, not a silent stop.
        let mut records = batch(0, 3);
        records.extend([1, 2, 3]);
        assert!(matches!(
            visit_records(&records, 0, 100, |_| {}),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn empty_records_keep_the_position() {
        let (offsets, visited) = delivered(&[], 42, 42);
        assert!(offsets.is_empty());
        assert_eq!(
            visited,
            Visited {
                position: 42,
                delivered: 0
            }
        );
    }
}
