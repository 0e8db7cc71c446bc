//! Producer batching: one open batch per partition, sealed by size or by age. No I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{BatchBuilder, BuildError, Header};

/// A batch ready to send: whole, checksummed bytes for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedBatch {
    pub topic: String,
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub records: u32,
    /// Sequence of the batch's first record among the records this producer sent to the
    /// partition (0-based); record `i` of the batch has sequence `first_sequence + i`.
    pub first_sequence: u64,
}

/// The open batch of one partition.
#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    /// When the first record of the open batch arrived; `None` while it is empty.
    opened_at: Option<Instant>,
    first_timestamp_ms: i64,
    first_sequence: u64,
    next_sequence: u64,
}

impl OpenBatch {
    fn new() -> OpenBatch {
        OpenBatch {
            builder: BatchBuilder::new(),
            opened_at: None,
            first_timestamp_ms: 0,
            first_sequence: 0,
            next_sequence: 0,
        }
    }

    /// Seals the open batch into `sealed` and empties it. Does nothing when it is empty.
    fn seal(&mut self, topic: &str, partition: u32, sealed: &mut Vec<SealedBatch>) {
        if self.builder.is_empty() {
            return;
        }
        let records = self.builder.record_count();
        // `seal` fails only for an empty builder, which was ruled out above.
        if let Ok(bytes) = self.builder.seal() {
            sealed.push(SealedBatch {
                topic: topic.to_string(),
                partition,
                bytes: bytes.to_vec(),
                records,
                first_sequence: self.first_sequence,
            });
        }
        self.builder.clear();
        self.opened_at = None;
        self.first_sequence = self.next_sequence;
    }
}

/// Collects records into per-partition batches and decides when each is sent.
///
/// Owner: one [`Producer`](crate::Producer). A partition's open batch is sealed when:
/// - the next record would take it over `batch_bytes` (the record starts a new batch),
/// - it reaches `batch_bytes` or more,
/// - it could not take a record for another reason (`BATCH_RECORDS_MAX` records, timestamps
///   more than `i32` ms apart),
/// - `linger` has passed since its first record (checked by `seal_expired`).
///
/// A record larger than `batch_bytes` therefore travels alone, in a batch of its own of up to
/// `BATCH_BYTES_MAX`; only a record that fits no batch at all is refused.
#[derive(Debug)]
pub(crate) struct Accumulator {
    topics: HashMap<String, HashMap<u32, OpenBatch>>,
    batch_bytes: usize,
    linger: Duration,
    /// Records appended and not yet sealed, over every partition.
    records_open: u64,
}

impl Accumulator {
    pub fn new(batch_bytes: usize, linger: Duration) -> Accumulator {
        Accumulator {
            topics: HashMap::new(),
            batch_bytes,
            linger,
            records_open: 0,
        }
    }

    /// Records waiting in open batches.
    pub fn records_open(&self) -> u64 {
        self.records_open
    }

    /// Adds a record to its partition's open batch and returns the record's sequence in that
    /// partition. Batches this seals are pushed to `sealed`, also when the record itself is
    /// refused (`RecordTooLarge`, `TooManyHeaders`): then nothing of it was written.
    #[allow(clippy::too_many_arguments)] // One record's fields plus the clock and the output.
    pub fn append(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
        headers: &[Header<'_>],
        now: Instant,
        sealed: &mut Vec<SealedBatch>,
    ) -> Result<u64, BuildError> {
        let partitions = match self.topics.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.topics.entry(topic.to_string()).or_default(),
        };
        let open = partitions.entry(partition).or_insert_with(OpenBatch::new);
        if !open.builder.is_empty() {
            let delta = timestamp_ms.saturating_sub(open.first_timestamp_ms);
            let delta = i32::try_from(delta).unwrap_or(i32::MAX);
            let record_bytes = BatchBuilder::record_bytes(key, value, headers, delta);
            if open.builder.len_bytes().saturating_add(record_bytes) > self.batch_bytes {
                self.records_open -= u64::from(open.builder.record_count());
                open.seal(topic, partition, sealed);
            }
        }
        match open.builder.append(timestamp_ms, key, value, headers) {
            Ok(()) => {}
            Err(
                BuildError::BatchFull { .. }
                | BuildError::TooManyRecords
                | BuildError::TimestampOutOfRange { .. },
            ) if !open.builder.is_empty() => {
                self.records_open -= u64::from(open.builder.record_count());
                open.seal(topic, partition, sealed);
                open.builder.append(timestamp_ms, key, value, headers)?;
            }
            Err(error) => return Err(error),
        }
        if open.builder.record_count() == 1 {
            open.opened_at = Some(now);
            open.first_timestamp_ms = timestamp_ms;
        }
        self.records_open += 1;
        let sequence = open.next_sequence;
        open.next_sequence += 1;
        if open.builder.len_bytes() >= self.batch_bytes {
            self.records_open -= u64::from(open.builder.record_count());
            open.seal(topic, partition, sealed);
        }
        Ok(sequence)
    }

    /// Seals every open batch whose first record is `linger` or more old.
    pub fn seal_expired(&mut self, now: Instant, sealed: &mut Vec<SealedBatch>) {
        if self.records_open == 0 {
            return;
        }
        let linger = self.linger;
        self.seal_where(sealed, |opened_at| {
            now.saturating_duration_since(opened_at) >= linger
        });
    }

    /// Seals every open batch.
    pub fn seal_all(&mut self, sealed: &mut Vec<SealedBatch>) {
        self.seal_where(sealed, |_| true);
    }

    fn seal_where(&mut self, sealed: &mut Vec<SealedBatch>, due: impl Fn(Instant) -> bool) {
        for (topic, partitions) in &mut self.topics {
            for (&partition, open) in partitions.iter_mut() {
                if open.opened_at.is_some_and(&due) {
                    self.records_open -= u64::from(open.builder.record_count());
                    open.seal(topic, partition, sealed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
    use protocol::{BatchView, Record};

    const HOUR: Duration = Duration::from_secs(3600);

    /// Bytes one record with a 1-byte key and `value_len` value bytes takes (delta 0).
    fn record_bytes(value_len: usize) -> usize {
        BatchBuilder::record_bytes(b"k", &vec![0; value_len], &[], 0)
    }

    fn append(
        acc: &mut Accumulator,
        partition: u32,
        value: &[u8],
        sealed: &mut Vec<SealedBatch>,
    ) -> u64 {
        acc.append(
            "t",
            partition,
            1000,
            b"k",
            value,
            &[],
            Instant::now(),
            sealed,
        )
        .unwrap()
    }

    #[test]
    fn batch_is_sealed_when_it_reaches_batch_bytes_exactly() {
        let one = record_bytes(10);
        let batch_bytes = BATCH_HEADER_BYTES + 3 * one;
        let mut acc = Accumulator::new(batch_bytes, HOUR);
        let mut sealed = Vec::new();
        append(&mut acc, 0, &[1; 10], &mut sealed);
        append(&mut acc, 0, &[2; 10], &mut sealed);
        assert!(
            sealed.is_empty(),
            "one record short of batch_bytes stays open"
        );
        append(&mut acc, 0, &[3; 10], &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].records, 3);
        assert_eq!(sealed[0].bytes.len(), batch_bytes);
        assert_eq!(acc.records_open(), 0);
        // The next record starts a fresh batch with the next sequence.
        assert_eq!(append(&mut acc, 0, &[4; 10], &mut sealed), 3);
        acc.seal_all(&mut sealed);
        assert_eq!(sealed[1].first_sequence, 3);
    }

    #[test]
    fn record_that_would_overflow_batch_bytes_starts_the_next_batch() {
        let one = record_bytes(10);
        // Room for 2.5 records: the third does not fit and must open a new batch.
        let batch_bytes = BATCH_HEADER_BYTES + 2 * one + one / 2;
        let mut acc = Accumulator::new(batch_bytes, HOUR);
        let mut sealed = Vec::new();
        for i in 0..5u8 {
            append(&mut acc, 0, &[i; 10], &mut sealed);
        }
        assert_eq!(sealed.len(), 2);
        for batch in &sealed {
            assert_eq!(batch.records, 2);
            assert!(batch.bytes.len() <= batch_bytes);
        }
        assert_eq!(acc.records_open(), 1);
    }

    #[test]
    fn record_larger_than_batch_bytes_goes_alone() {
        let mut acc = Accumulator::new(1024, HOUR);
        let mut sealed = Vec::new();
        append(&mut acc, 0, b"small", &mut sealed);
        append(&mut acc, 0, &[7; 5000], &mut sealed);
        // The small batch was sealed first, then the big record alone.
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[0].records, 1);
        assert_eq!(sealed[1].records, 1);
        assert!(sealed[1].bytes.len() > 5000);
        let view = BatchView::new(&sealed[1].bytes).unwrap();
        assert_eq!(view.records().next().unwrap().value.len(), 5000);
        assert_eq!(acc.records_open(), 0);
    }

    #[test]
    fn record_that_fits_no_batch_is_refused_after_sealing_the_open_one() {
        let mut acc = Accumulator::new(1024, HOUR);
        let mut sealed = Vec::new();
        append(&mut acc, 0, b"small", &mut sealed);
        let huge = vec![0u8; BATCH_BYTES_MAX as usize];
        let result = acc.append("t", 0, 0, b"", &huge, &[], Instant::now(), &mut sealed);
        assert!(
            matches!(result, Err(BuildError::RecordTooLarge { .. })),
            "{result:?}"
        );
        // The small record was not lost.
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].records, 1);
        assert_eq!(acc.records_open(), 0);
    }

    #[test]
    fn linger_seals_at_its_boundary_and_not_before() {
        let linger = Duration::from_millis(5);
        let mut acc = Accumulator::new(1 << 20, linger);
        let mut sealed = Vec::new();
        let t0 = Instant::now();
        acc.append("t", 0, 0, b"", b"a", &[], t0, &mut sealed)
            .unwrap();
        acc.append(
            "t",
            1,
            0,
            b"",
            b"b",
            &[],
            t0 + Duration::from_millis(3),
            &mut sealed,
        )
        .unwrap();
        acc.seal_expired(t0 + linger - Duration::from_nanos(1), &mut sealed);
        assert!(sealed.is_empty());
        acc.seal_expired(t0 + linger, &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].partition, 0);
        // Partition 1's first record came 3 ms later; a later record does not reset the clock.
        acc.append(
            "t",
            1,
            0,
            b"",
            b"c",
            &[],
            t0 + Duration::from_millis(7),
            &mut sealed,
        )
        .unwrap();
        acc.seal_expired(t0 + Duration::from_millis(8), &mut sealed);
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[1].records, 2);
        assert_eq!(acc.records_open(), 0);
    }

    #[test]
    fn zero_linger_sends_every_record_at_once() {
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO);
        let mut sealed = Vec::new();
        let now = Instant::now();
        acc.append("t", 0, 0, b"", b"a", &[], now, &mut sealed)
            .unwrap();
        acc.seal_expired(now, &mut sealed);
        assert_eq!(sealed.len(), 1);
    }

    #[test]
    fn timestamps_too_far_apart_split_the_batch() {
        let mut acc = Accumulator::new(1 << 20, HOUR);
        let mut sealed = Vec::new();
        let now = Instant::now();
        acc.append("t", 0, 0, b"", b"a", &[], now, &mut sealed)
            .unwrap();
        let far = i64::from(i32::MAX) + 10;
        acc.append("t", 0, far, b"", b"b", &[], now, &mut sealed)
            .unwrap();
        assert_eq!(sealed.len(), 1);
        acc.seal_all(&mut sealed);
        let second = BatchView::new(&sealed[1].bytes).unwrap();
        assert_eq!(second.first_timestamp_ms(), far);
    }

    #[test]
    fn partitions_and_topics_batch_separately() {
        let mut acc = Accumulator::new(1 << 20, HOUR);
        let mut sealed = Vec::new();
        let now = Instant::now();
        for (topic, partition) in [("a", 0), ("a", 1), ("b", 0), ("a", 0)] {
            acc.append(topic, partition, 0, b"", b"v", &[], now, &mut sealed)
                .unwrap();
        }
        acc.seal_all(&mut sealed);
        sealed.sort_by(|x, y| (&x.topic, x.partition).cmp(&(&y.topic, y.partition)));
        let shape: Vec<(&str, u32, u32)> = sealed
            .iter()
            .map(|b| (b.topic.as_str(), b.partition, b.records))
            .collect();
        assert_eq!(shape, [("a", 0, 2), ("a", 1, 1), ("b", 0, 1)]);
    }

    proptest! {
        /// Whatever the record sizes: every record lands in exactly one batch, in order, with
        /// consecutive sequences; a batch exceeds `batch_bytes` only when it holds one record.
        #[test]
        fn every_record_lands_once_in_order(
            batch_bytes in 64usize..4096,
            sizes in proptest::collection::vec(0usize..3000, 1..60),
        ) {
            let mut acc = Accumulator::new(batch_bytes, HOUR);
            let mut sealed = Vec::new();
            let now = Instant::now();
            for (i, size) in sizes.iter().enumerate() {
                let mut value = vec![0u8; *size];
                if let Some(first) = value.first_mut() { *first = i as u8; }
                let seq = acc.append("t", 0, i as i64, b"", &value, &[], now, &mut sealed).unwrap();
                prop_assert_eq!(seq, i as u64);
            }
            acc.seal_all(&mut sealed);
            let mut next = 0u64;
            for batch in &sealed {
                prop_assert_eq!(batch.first_sequence, next);
                let view = BatchView::new(&batch.bytes).unwrap();
                prop_assert_eq!(view.record_count(), batch.records);
                prop_assert!(batch.bytes.len() <= batch_bytes || batch.records == 1);
                let records: Vec<Record<'_>> = view.records().collect();
                for record in records {
                    prop_assert_eq!(record.timestamp_ms, next as i64);
                    prop_assert_eq!(record.value.len(), sizes[next as usize]);
                    next += 1;
                }
            }
            prop_assert_eq!(next, sizes.len() as u64);
        }
    }
}
