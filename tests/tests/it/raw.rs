//! The broker over raw frames: topics, produce and fetch on every shard, long poll, restart.

use std::io::Write;
use std::time::{Duration, Instant};

use protocol::api::*;
use protocol::{Acks, BatchBuilder, Batches, ErrorCode, FrameBuf, encode_frame};
use ringmq_tests::{RawConn, TestBroker};

use crate::common::reseal_body;

fn batch(values: &[&str]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for value in values {
        builder
            .append(1_700_000_000_000, b"k", value.as_bytes(), &[])
            .unwrap();
    }
    builder.seal().unwrap().to_vec()
}

pub fn create_topic(conn: &mut RawConn, name: &str, partitions: u32) {
    let request = client::topic_request(name, partitions, 1);
    conn.send(1, &request);
    let response: CreateTopicResponse = conn.recv(1);
    assert_eq!(response.error, ErrorCode::NONE, "{}", response.message);
}

pub fn produce(
    conn: &mut RawConn,
    id: u64,
    topic: &str,
    partition: u32,
    acks: Acks,
    values: &[&str],
) -> ProduceResponse {
    let request = ProduceRequest {
        topic: topic.into(),
        partition,
        acks,
        timeout_ms: 5000,
        batch: batch(values),
    };
    conn.send(id, &request);
    conn.recv(id)
}

fn fetch(
    conn: &mut RawConn,
    topic: &str,
    partition: u32,
    offset: u64,
    max_wait_ms: u32,
) -> (FetchResponse, Vec<String>) {
    let request = FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms,
    };
    conn.send(99, &request);
    let response: FetchResponse = conn.recv(99);
    let values = Batches::new(&response.records)
        .flat_map(|b| {
            b.unwrap()
                .records()
                .filter(|r| r.offset >= offset)
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    (response, values)
}

#[test]
fn produce_and_fetch_on_every_partition_through_the_shared_port() {
    let broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    create_topic(&mut conn, "orders", 4);
    conn.send(2, &MetadataRequest { topics: vec![] });
    let metadata: MetadataResponse = conn.recv(2);
    assert_eq!(metadata.shards.len(), broker.shard_addresses.len());
    let topic = &metadata.topics[0];
    assert_eq!(topic.name, "orders");
    assert_eq!(topic.partitions.len(), 4);
    for partition in 0..4u32 {
        for (round, acks) in [Acks::Leader, Acks::LeaderFsync, Acks::All]
            .into_iter()
            .enumerate()
        {
            let value = format!("p{partition}-r{round}");
            let response = produce(
                &mut conn,
                10 + u64::from(partition),
                "orders",
                partition,
                acks,
                &[&value],
            );
            assert_eq!(response.error, ErrorCode::NONE);
            assert_eq!(response.base_offset, round as u64);
        }
        let (response, values) = fetch(&mut conn, "orders", partition, 0, 0);
        assert_eq!(response.error, ErrorCode::NONE);
        assert_eq!(response.high_watermark, 3);
        assert_eq!(
            values,
            [
                format!("p{partition}-r0"),
                format!("p{partition}-r1"),
                format!("p{partition}-r2")
            ]
        );
    }
    // Direct to the leader's own shard port: no hop, same data.
    let leader = usize::from(topic.partitions[1].leader_shard);
    let mut direct = RawConn::connect(broker.shard_addresses[leader]);
    let (_, values) = fetch(&mut direct, "orders", 1, 1, 0);
    assert_eq!(values, ["p1-r1", "p1-r2"]);
    conn.send(
        3,
        &MetadataRequest {
            topics: vec!["orders".into()],
        },
    );
    let metadata: MetadataResponse = conn.recv(3);
    assert!(
        metadata.topics[0]
            .partitions
            .iter()
            .all(|p| p.high_watermark == 3)
    );
}

#[test]
fn long_poll_fetch_returns_a_record_produced_after_it_was_sent() {
    let broker = TestBroker::start();
    let mut admin = RawConn::connect(broker.address);
    create_topic(&mut admin, "events", 1);
    let mut consumer = RawConn::connect(broker.address);
    let request = FetchRequest {
        topic: "events".into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
        max_wait_ms: 10_000,
    };
    consumer.send(7, &request);
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    let response = produce(&mut admin, 8, "events", 0, Acks::Leader, &["late"]);
    assert_eq!(response.error, ErrorCode::NONE);
    let fetched: FetchResponse = consumer.recv(7);
    let waited = sent.elapsed();
    assert_eq!(fetched.error, ErrorCode::NONE);
    assert_eq!(Batches::new(&fetched.records).count(), 1);
    assert!(
        waited < Duration::from_secs(5),
        "long poll answered after {waited:?}, max_wait 10 s"
    );
    // With nothing new, the fetch waits out max_wait and answers empty.
    let started = Instant::now();
    let (response, values) = fetch(&mut consumer, "events", 0, 1, 200);
    assert_eq!(response.error, ErrorCode::NONE);
    assert!(values.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn acknowledged_records_survive_a_graceful_restart() {
    let mut broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    create_topic(&mut conn, "t", 2);
    for i in 0..50u64 {
        let value = format!("v{i}");
        let acks = if i % 2 == 0 {
            Acks::Leader
        } else {
            Acks::LeaderFsync
        };
        assert_eq!(
            produce(&mut conn, i, "t", (i % 2) as u32, acks, &[&value]).error,
            ErrorCode::NONE
        );
    }
    drop(conn);
    broker.restart();
    let mut conn = RawConn::connect(broker.address);
    for partition in 0..2u32 {
        let (response, values) = fetch(&mut conn, "t", partition, 0, 0);
        assert_eq!(response.error, ErrorCode::NONE);
        let expected: Vec<String> = (0..50)
            .filter(|i| i % 2 == u64::from(partition))
            .map(|i| format!("v{i}"))
            .collect();
        assert_eq!(values, expected);
    }
    // The catalogue survived too: the topic exists once, and re-creating it is refused.
    let request = client::topic_request("t", 1, 1);
    conn.send(5, &request);
    let response: CreateTopicResponse = conn.recv(5);
    assert_eq!(response.error, ErrorCode::TOPIC_ALREADY_EXISTS);
}

#[test]
fn unknown_topics_and_bad_requests_get_error_codes() {
    let broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    assert_eq!(
        produce(&mut conn, 1, "nope", 0, Acks::Leader, &["x"]).error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    create_topic(&mut conn, "one", 1);
    assert_eq!(
        produce(&mut conn, 2, "one", 5, Acks::Leader, &["x"]).error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    let (response, _) = fetch(&mut conn, "one", 0, 10, 0);
    assert_eq!(response.error, ErrorCode::OFFSET_OUT_OF_RANGE);
    // A batch whose crc does not match is refused and never stored.
    let mut corrupt = batch(&["bad"]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let request = ProduceRequest {
        topic: "one".into(),
        partition: 0,
        acks: Acks::Leader,
        timeout_ms: 1000,
        batch: corrupt,
    };
    conn.send(3, &request);
    let response: ProduceResponse = conn.recv(3);
    assert_eq!(response.error, ErrorCode::CORRUPT_MESSAGE);
    let (response, _) = fetch(&mut conn, "one", 0, 0, 0);
    assert_eq!(response.high_watermark, 0);
    let request = client::topic_request("a/b", 1, 1);
    conn.send(4, &request);
    let response: CreateTopicResponse = conn.recv(4);
    assert_eq!(response.error, ErrorCode::INVALID_TOPIC);
    assert!(
        response.message.contains("'/'") || response.message.contains("0x2f"),
        "{}",
        response.message
    );
    conn.send(5, &DeleteTopicRequest { name: "one".into() });
    let response: DeleteTopicResponse = conn.recv(5);
    assert_eq!(response.error, ErrorCode::NONE);
    assert_eq!(
        produce(&mut conn, 6, "one", 0, Acks::Leader, &["x"]).error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
}

/// A produce frame's body crc is checked by the shard that appends it, in one pass with the
/// batch's crc: a frame whose body fails it is answered `CORRUPT_MESSAGE` (even with `acks =
/// none`, which is part of what failed) and nothing is stored, on the shard that read it and
/// on the one it was routed to. Fails if either check is skipped.
#[test]
fn produce_with_a_corrupt_body_is_refused_on_every_shard() {
    const TIMEOUT_MARK: u32 = 0x0001_2344;
    let broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    create_topic(&mut conn, "crc", 2);
    for partition in 0..2 {
        for acks in [Acks::Leader, Acks::None] {
            let mut frame = FrameBuf::new();
            let request = ProduceRequest {
                topic: "crc".into(),
                partition,
                acks,
                timeout_ms: TIMEOUT_MARK,
                batch: batch(&["intact batch, damaged frame"]),
            };
            encode_frame(&mut frame, 7, &request).unwrap();
            let mut bytes = frame.to_vec();
            // A bit of the timeout, outside the batch: only the body's crc can tell (a
            // timeout one millisecond longer is as good a request).
            let mark = TIMEOUT_MARK.to_le_bytes();
            let at = bytes.windows(4).position(|w| w == mark).unwrap();
            bytes[at] ^= 1;
            conn.stream.write_all(&bytes).unwrap();
            let response: ProduceResponse = conn.recv(7);
            assert_eq!(
                response.error,
                ErrorCode::CORRUPT_MESSAGE,
                "{partition} {acks:?}"
            );
        }
        // The body re-sealed over a damaged batch: the batch's crc refuses it.
        let mut frame = FrameBuf::new();
        let request = ProduceRequest {
            topic: "crc".into(),
            partition,
            acks: Acks::Leader,
            timeout_ms: 1000,
            batch: batch(&["damaged batch"]),
        };
        encode_frame(&mut frame, 8, &request).unwrap();
        let mut bytes = frame.to_vec();
        let at = bytes.windows(7).position(|w| w == b"damaged").unwrap();
        bytes[at] ^= 0x20;
        reseal_body(&mut bytes);
        conn.stream.write_all(&bytes).unwrap();
        let response: ProduceResponse = conn.recv(8);
        assert_eq!(response.error, ErrorCode::CORRUPT_MESSAGE, "{partition}");
        let (response, values) = fetch(&mut conn, "crc", partition, 0, 0);
        assert_eq!(response.high_watermark, 0, "{values:?}");
        // The connection still serves.
        assert_eq!(
            produce(&mut conn, 9, "crc", partition, Acks::Leader, &["good"]).error,
            ErrorCode::NONE
        );
    }
}

/// A produce body damaged where the archive's root points (no produce archive at all, so
/// the batch cannot be found) is still told from a malformed request by the body's crc:
/// damaged in transit, `CORRUPT_MESSAGE`; the same bytes re-sealed, `INVALID_REQUEST`.
#[test]
fn produce_whose_archive_is_damaged_is_told_from_an_invalid_one() {
    let broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    create_topic(&mut conn, "root", 1);
    for (resealed, expected) in [
        (false, ErrorCode::CORRUPT_MESSAGE),
        (true, ErrorCode::INVALID_REQUEST),
    ] {
        let mut frame = FrameBuf::new();
        let request = ProduceRequest {
            topic: "root".into(),
            partition: 0,
            acks: Acks::Leader,
            timeout_ms: 1000,
            batch: batch(&["never stored"]),
        };
        encode_frame(&mut frame, 5, &request).unwrap();
        let mut bytes = frame.to_vec();
        let body_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let root = 32 + body_len - 8;
        bytes[root..root + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        if resealed {
            reseal_body(&mut bytes);
        }
        conn.stream.write_all(&bytes).unwrap();
        let response: ProduceResponse = conn.recv(5);
        assert_eq!(response.error, expected, "re-sealed: {resealed}");
    }
    let (response, values) = fetch(&mut conn, "root", 0, 0, 0);
    assert_eq!(response.high_watermark, 0, "{values:?}");
}
