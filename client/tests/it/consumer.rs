//! `Consumer` against a fake broker: positions, skipping, errors, leader moves.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use client::{Client, ClientError, Consumer, ConsumerConfig, RetryPolicy, Routing, StartOffset};
use protocol::api::{
    ArchivedOffsetSpec, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataResponse,
};
use protocol::batch::set_base_offset;
use protocol::{ApiKey, BatchBuilder, ErrorCode, FrameBuf, Header};

use crate::cluster::config;
use crate::peer::{Action, Cluster, Received, encode};

const WAIT: Duration = Duration::from_millis(500);

/// One stored batch of `count` records at `base`: value "v{offset}", key "k", one header.
pub fn batch(base: u64, count: u64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for offset in base..base + count {
        let value = format!("v{offset}");
        let header = Header {
            key: b"h",
            value: b"x",
        };
        builder
            .append(1_000 + offset as i64, b"k", value.as_bytes(), &[header])
            .unwrap();
    }
    let mut bytes = builder.seal().unwrap().to_vec();
    set_base_offset(&mut bytes, base).unwrap();
    bytes
}

fn fetch_reply(
    request: &Received,
    error: ErrorCode,
    records: Vec<u8>,
    log_start_offset: u64,
    high_watermark: u64,
) -> FrameBuf {
    encode(
        request.id(),
        &FetchResponse {
            error,
            high_watermark,
            log_start_offset,
            records,
        },
    )
}

/// The requested partition and offset of a fetch.
fn fetched(request: &Received) -> (u32, u64) {
    let body = request.frame().access::<FetchRequest>().unwrap();
    (body.partition.to_native(), body.offset.to_native())
}

fn consumer(cluster: &Cluster) -> Consumer {
    let client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    let config = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            elapsed_max: Duration::from_secs(5),
        },
        ..ConsumerConfig::default()
    };
    Consumer::new(client, config).unwrap()
}

pub fn offsets(records: &[client::ConsumedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

#[test]
fn records_below_the_position_are_skipped_and_the_position_advances() {
    let requested = Arc::new(Mutex::new(Vec::new()));
    let seen = requested.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        let (_, offset) = fetched(request);
        seen.lock().unwrap().push(offset);
        if offset < 10 {
            // The stored batch starts before the requested offset.
            Action::Reply(fetch_reply(request, ErrorCode::NONE, batch(0, 10), 0, 10))
        } else {
            // Nothing new: a long poll that ends empty.
            Action::Defer(fetch_reply(request, ErrorCode::NONE, vec![], 0, 10))
        }
    });
    let mut consumer = consumer(&cluster);
    assert_eq!(consumer.assign("t", 0, StartOffset::Offset(4)).unwrap(), 4);
    let records = consumer.poll(WAIT).unwrap();
    assert_eq!(offsets(&records), [4, 5, 6, 7, 8, 9]);
    let first = &records[0];
    assert_eq!(&*first.topic, "t");
    assert_eq!((first.partition, first.timestamp_ms), (0, 1_004));
    assert_eq!(
        (first.key.as_slice(), first.value.as_slice()),
        (&b"k"[..], &b"v4"[..])
    );
    assert_eq!(first.headers, [(b"h".to_vec(), b"x".to_vec())]);
    assert_eq!(consumer.position("t", 0), Some(10));
    assert!(consumer.poll(WAIT).unwrap().is_empty());
    assert_eq!(consumer.position("t", 0), Some(10));
    assert_eq!(*requested.lock().unwrap(), [4, 10]);
}

#[test]
fn earliest_and_latest_ask_the_leader() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        let body = request.frame().access::<ListOffsetsRequest>().unwrap();
        let offset = match body.spec {
            ArchivedOffsetSpec::Earliest => 3,
            ArchivedOffsetSpec::Latest => 9,
            ArchivedOffsetSpec::Timestamp(_) => panic!("not asked"),
        };
        Action::Reply(encode(
            request.id(),
            &ListOffsetsResponse {
                error: ErrorCode::NONE,
                offset,
                timestamp_ms: 0,
            },
        ))
    });
    let mut consumer = consumer(&cluster);
    assert_eq!(consumer.assign("t", 0, StartOffset::Earliest).unwrap(), 3);
    assert_eq!(consumer.position("t", 0), Some(3));
    assert_eq!(consumer.assign("t", 0, StartOffset::Latest).unwrap(), 9);
    assert_eq!(consumer.position("t", 0), Some(9));
    assert_eq!(consumer.assignments(), [("t".to_string(), 0)]);
    assert!(matches!(
        consumer.assign("t", 5, StartOffset::Offset(0)),
        Err(ClientError::UnknownPartition { partition: 5, .. })
    ));
    assert!(matches!(
        consumer.seek("t", 5, 0),
        Err(ClientError::NotAssigned { partition: 5, .. })
    ));
    assert_eq!(cluster.count(ApiKey::ListOffsets), 2);
}

#[test]
fn offset_out_of_range_is_reported_and_never_silently_reset() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        let (_, offset) = fetched(request);
        if offset < 100 {
            Action::Reply(fetch_reply(
                request,
                ErrorCode::OFFSET_OUT_OF_RANGE,
                vec![],
                100,
                110,
            ))
        } else {
            Action::Reply(fetch_reply(
                request,
                ErrorCode::NONE,
                batch(100, 10),
                100,
                110,
            ))
        }
    });
    let mut consumer = consumer(&cluster);
    consumer.assign("t", 0, StartOffset::Offset(5)).unwrap();
    for _ in 0..2 {
        let result = consumer.poll(WAIT);
        assert!(
            matches!(
                result,
                Err(ClientError::OffsetOutOfRange {
                    offset: 5,
                    log_start_offset: 100,
                    high_watermark: 110,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(consumer.position("t", 0), Some(5));
    }
    consumer.seek("t", 0, 100).unwrap();
    let records = consumer.poll(WAIT).unwrap();
    assert_eq!(offsets(&records), (100..110).collect::<Vec<u64>>());
    assert_eq!(consumer.position("t", 0), Some(110));
}

#[test]
fn a_corrupt_batch_is_an_error_and_the_position_stays() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        let mut records = batch(0, 3);
        records.extend(batch(3, 3));
        let last = records.len() - 1;
        records[last] ^= 0x20;
        Action::Reply(fetch_reply(request, ErrorCode::NONE, records, 0, 6))
    });
    let mut consumer = consumer(&cluster);
    consumer.assign("t", 0, StartOffset::Offset(0)).unwrap();
    let result = consumer.poll(WAIT);
    assert!(
        matches!(result, Err(ClientError::CorruptBatch { partition: 0, .. })),
        "{result:?}"
    );
    assert_eq!(consumer.position("t", 0), Some(0));
}

#[test]
fn the_consumer_follows_the_leader_after_not_leader() {
    let metadata: Arc<OnceLock<Arc<Mutex<MetadataResponse>>>> = Arc::new(OnceLock::new());
    let moved = metadata.clone();
    let cluster = Cluster::start(2, "t", &[0], move |listener, request| {
        if listener == 1 {
            // Shard 0 lost the partition to shard 1.
            let metadata = moved.get().unwrap();
            metadata.lock().unwrap().topics[0].partitions[0].leader_shard = 1;
            return Action::Reply(fetch_reply(request, ErrorCode::NOT_LEADER, vec![], 0, 0));
        }
        Action::Reply(fetch_reply(request, ErrorCode::NONE, batch(0, 5), 0, 5))
    });
    metadata.set(cluster.metadata.clone()).unwrap();
    let mut consumer = consumer(&cluster);
    consumer.assign("t", 0, StartOffset::Offset(0)).unwrap();
    let records = consumer.poll(WAIT).unwrap();
    assert_eq!(offsets(&records), [0, 1, 2, 3, 4]);
    assert_eq!(cluster.listeners(ApiKey::Fetch), [1, 2]);
}

#[test]
fn a_partition_that_keeps_failing_is_reported_after_the_retry_policy() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(fetch_reply(request, ErrorCode::NOT_LEADER, vec![], 0, 0))
    });
    let mut consumer = consumer(&cluster);
    consumer.assign("t", 0, StartOffset::Offset(0)).unwrap();
    // Each poll retries within its wait; the third failure exhausts the policy.
    let mut outcome = None;
    for _ in 0..10 {
        match consumer.poll(WAIT) {
            Ok(records) => assert!(records.is_empty()),
            Err(error) => {
                outcome = Some(error);
                break;
            }
        }
    }
    match outcome {
        Some(ClientError::RetriesExhausted {
            attempts: 3, last, ..
        }) => {
            assert_eq!(last.code(), Some(ErrorCode::NOT_LEADER))
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(cluster.count(ApiKey::Fetch), 3);
}

#[test]
fn records_on_one_connection_are_not_held_up_by_a_long_poll_on_another() {
    let cluster = Cluster::start(2, "t", &[0, 1], |_, request| match fetched(request) {
        // Partition 0 has nothing: its fetch is answered only when the broker goes idle.
        (0, _) => Action::Defer(fetch_reply(request, ErrorCode::NONE, vec![], 0, 0)),
        (_, offset) if offset < 5 => {
            Action::Reply(fetch_reply(request, ErrorCode::NONE, batch(0, 5), 0, 5))
        }
        _ => Action::Defer(fetch_reply(request, ErrorCode::NONE, vec![], 0, 5)),
    });
    let mut consumer = consumer(&cluster);
    consumer.assign("t", 0, StartOffset::Offset(0)).unwrap();
    consumer.assign("t", 1, StartOffset::Offset(0)).unwrap();
    let records = consumer.poll(WAIT).unwrap();
    assert_eq!(offsets(&records), [0, 1, 2, 3, 4]);
    assert!(records.iter().all(|r| r.partition == 1));
    assert_eq!(consumer.position("t", 0), Some(0));
    assert_eq!(consumer.position("t", 1), Some(5));
    // Both long polls end empty; partition 0's fetch was kept in flight, not sent twice.
    assert!(consumer.poll(WAIT).unwrap().is_empty());
    let partition_0_fetches = cluster
        .listeners(ApiKey::Fetch)
        .iter()
        .filter(|&&listener| listener == 1)
        .count();
    assert_eq!(partition_0_fetches, 1);
}
