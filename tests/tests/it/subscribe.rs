//! Push subscriptions over raw frames: deliveries of the backlog and of each new record with
//! no request per delivery, unsubscribe, refusals, shutdown, and a consumer that stops reading.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine::limits::SHUTDOWN_DRAIN_MAX;
use protocol::limits::FETCH_BYTES_MAX;

use protocol::api::*;
use protocol::{Acks, ApiKey, Batches, ErrorCode, decode_frame};
use ringmq_tests::{RawConn, TestBroker};

use crate::raw::{self, create_topic};

/// A broker with a one-partition `topic`: the broker, an admin connection to the shared
/// port, a connection to the shard leading the partition (where subscriptions are served)
/// and the address of a shard that does not lead it (when the broker has more than one).
fn start_with(topic: &str) -> (TestBroker, RawConn, RawConn, Option<SocketAddr>) {
    let broker = TestBroker::start();
    let mut admin = RawConn::connect(broker.address);
    create_topic(&mut admin, topic, 1);
    let (leader, other) = shards_of(&broker, &mut admin, topic);
    let consumer = RawConn::connect(leader);
    (broker, admin, consumer, other)
}

/// The address of the shard leading `topic`'s partition 0, and of one that does not (when
/// the broker has more than one shard).
fn shards_of(
    broker: &TestBroker,
    conn: &mut RawConn,
    topic: &str,
) -> (SocketAddr, Option<SocketAddr>) {
    conn.send(
        2,
        &MetadataRequest {
            topics: vec![topic.into()],
        },
    );
    let metadata: MetadataResponse = conn.recv(2);
    let leader = metadata.topics[0].partitions[0].leader_shard as usize;
    let other = (0..broker.shard_addresses.len()).find(|&s| s != leader);
    (
        broker.shard_addresses[leader],
        other.map(|s| broker.shard_addresses[s]),
    )
}

/// Produces `values` as one batch to partition 0, acknowledged by the leader.
fn produce(conn: &mut RawConn, topic: &str, values: &[String]) {
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let response = raw::produce(conn, 3, topic, 0, Acks::Leader, &values);
    assert_eq!(response.error, ErrorCode::NONE);
}

fn subscribe(conn: &mut RawConn, id: u64, topic: &str, offset: u64) {
    let request = SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        offset,
        max_bytes: 1 << 20,
    };
    conn.send(id, &request);
}

/// Sends `Unsubscribe` of `subscription` as request `id`; its answer's code.
fn unsubscribe(conn: &mut RawConn, id: u64, subscription: u64) -> ErrorCode {
    conn.send(id, &UnsubscribeRequest { subscription });
    let response: UnsubscribeResponse = conn.recv(id);
    response.error
}

/// The next frame, which must be a delivery of subscription `id`.
fn delivery(conn: &mut RawConn, id: u64) -> SubscribeDelivery {
    let frame = conn.recv_frame().expect("a delivery");
    let (decoded, _) = decode_frame(&frame).unwrap().unwrap();
    assert_eq!(decoded.header.api(), Ok(ApiKey::Subscribe));
    assert_eq!(decoded.header.correlation_id, id);
    decoded.deserialize::<SubscribeDelivery>().unwrap()
}

/// Reads deliveries of `id` until `count` values from `from` on arrived; returns them.
fn read_values(conn: &mut RawConn, id: u64, from: u64, count: usize) -> Vec<String> {
    let mut values = Vec::new();
    let mut next = from;
    while values.len() < count {
        let delivery = delivery(conn, id);
        assert_eq!(delivery.error, ErrorCode::NONE);
        assert!(!delivery.records.is_empty(), "an empty delivery");
        for batch in Batches::new(&delivery.records) {
            for record in batch.unwrap().records() {
                if record.offset < next {
                    continue; // the first batch may start before the offset asked for
                }
                assert_eq!(record.offset, next, "records in order, none skipped");
                next += 1;
                values.push(String::from_utf8(record.value.to_vec()).unwrap());
            }
        }
    }
    assert_eq!(values.len(), count, "no more than produced");
    values
}

fn values(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("v{i}")).collect()
}

#[test]
fn a_subscription_delivers_the_backlog_then_each_new_record_without_a_request() {
    let (_broker, mut admin, mut consumer, _) = start_with("subs");
    produce(&mut admin, "subs", &values(0..3));

    subscribe(&mut consumer, 7, "subs", 1);
    assert_eq!(read_values(&mut consumer, 7, 1, 2), values(1..3));
    // Each later produce reaches the consumer with nothing more asked.
    for i in 3..8 {
        produce(&mut admin, "subs", &values(i..i + 1));
        assert_eq!(
            read_values(&mut consumer, 7, u64::from(i), 1),
            values(i..i + 1)
        );
    }
}

#[test]
fn unsubscribe_is_answered_after_the_last_delivery_and_none_follows() {
    let (_broker, mut admin, mut consumer, _) = start_with("unsub");
    subscribe(&mut consumer, 7, "unsub", 0);
    produce(&mut admin, "unsub", &values(0..1));
    assert_eq!(read_values(&mut consumer, 7, 0, 1), values(0..1));

    // A second subscription under a running one's id is refused; the first runs on.
    subscribe(&mut consumer, 7, "unsub", 0);
    assert_eq!(delivery(&mut consumer, 7).error, ErrorCode::INVALID_REQUEST);

    assert_eq!(unsubscribe(&mut consumer, 8, 7), ErrorCode::NONE);
    produce(&mut admin, "unsub", &values(1..4));
    // Nothing more arrives: the next frame is the answer to a later request.
    assert_eq!(
        unsubscribe(&mut consumer, 9, 7),
        ErrorCode::INVALID_REQUEST,
        "it ended already"
    );

    // The id is free again: a new subscription under it starts where asked.
    subscribe(&mut consumer, 7, "unsub", 1);
    assert_eq!(read_values(&mut consumer, 7, 1, 3), values(1..4));
}

#[test]
fn subscriptions_the_shard_cannot_serve_are_refused_with_a_reason() {
    let (_broker, mut admin, mut conn, other) = start_with("refused");
    produce(&mut admin, "refused", &values(0..2));

    subscribe(&mut conn, 1, "missing", 0);
    assert_eq!(
        delivery(&mut conn, 1).error,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    subscribe(&mut conn, 2, "refused", 3);
    let past_end = delivery(&mut conn, 2);
    assert_eq!(past_end.error, ErrorCode::OFFSET_OUT_OF_RANGE);
    assert_eq!(past_end.high_watermark, 2);
    // The connection serves on after each refusal.
    subscribe(&mut conn, 3, "refused", 0);
    assert_eq!(read_values(&mut conn, 3, 0, 2), values(0..2));

    match other {
        Some(other) => {
            let mut elsewhere = RawConn::connect(other);
            subscribe(&mut elsewhere, 1, "refused", 0);
            assert_eq!(delivery(&mut elsewhere, 1).error, ErrorCode::NOT_LEADER);
        }
        None => eprintln!("one shard only: the not-leader refusal is not exercised"),
    }
}

#[test]
fn deleting_the_topic_ends_its_subscriptions_with_not_leader() {
    let (_broker, mut admin, mut consumer, _) = start_with("deleted");
    subscribe(&mut consumer, 6, "deleted", 0);
    produce(&mut admin, "deleted", &values(0..1));
    assert_eq!(read_values(&mut consumer, 6, 0, 1), values(0..1));
    admin.send(
        5,
        &DeleteTopicRequest {
            name: "deleted".into(),
        },
    );
    let deleted: DeleteTopicResponse = admin.recv(5);
    assert_eq!(deleted.error, ErrorCode::NONE, "{}", deleted.message);
    // The term that served it ended; the metadata then says the topic is gone.
    assert_eq!(delivery(&mut consumer, 6).error, ErrorCode::NOT_LEADER);
    // It ended: nothing is left to unsubscribe, and the connection serves on.
    assert_eq!(unsubscribe(&mut consumer, 9, 6), ErrorCode::INVALID_REQUEST);
}

#[test]
fn shutdown_ends_subscriptions_with_shutting_down() {
    let (mut broker, mut admin, mut consumer, _) = start_with("closing");
    subscribe(&mut consumer, 5, "closing", 0);
    produce(&mut admin, "closing", &values(0..1));
    assert_eq!(read_values(&mut consumer, 5, 0, 1), values(0..1));
    drop(admin);
    broker.stop();
    assert_eq!(delivery(&mut consumer, 5).error, ErrorCode::SHUTTING_DOWN);
    assert!(
        consumer.recv_frame().is_none(),
        "then the connection closes"
    );
}

/// 24 MiB in 16 KiB records, far past a connection's window of unsent deliveries and the
/// socket buffers.
fn produce_24_mib(admin: &mut RawConn, topic: &str) -> usize {
    let big = "x".repeat(16 << 10);
    let total = 24 * 64;
    for i in 0..total / 16 {
        let batch: Vec<String> = (0..16).map(|j| format!("{:06}{big}", i * 16 + j)).collect();
        produce(admin, topic, &batch);
    }
    total
}

/// A client that reads nothing stops its connection's reading at the bound of unsent
/// responses, with its subscription waiting for room. Shutdown must still end the
/// subscription at once (nothing on the connection will), not leave the shard to sit out its
/// drain deadline for it.
#[test]
fn shutdown_is_not_held_up_by_a_client_that_reads_nothing() {
    let (mut broker, mut admin, mut consumer, _) = start_with("unread");
    produce_24_mib(&mut admin, "unread");
    subscribe(&mut consumer, 1, "unread", 0);
    // Unread answers of 4 MiB each take the connection past its 16 MiB bound of unsent
    // responses (they were all read before their answers came).
    for id in 2..14 {
        let request = FetchRequest {
            topic: "unread".into(),
            partition: 0,
            offset: 0,
            max_bytes: FETCH_BYTES_MAX,
            max_wait_ms: 0,
        };
        consumer.send(id, &request);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Read once the answers are queued: the connection does not take it.
    consumer.send(
        14,
        &MetadataRequest {
            topics: vec!["unread".into()],
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    broker.stop();
    let took = started.elapsed();
    assert!(
        took < SHUTDOWN_DRAIN_MAX,
        "shutdown took {took:?}: it waited out the drain deadline"
    );
}

#[test]
fn a_consumer_that_stops_reading_gets_everything_once_it_reads_again() {
    let (_broker, mut admin, mut consumer, _) = start_with("slow");
    subscribe(&mut consumer, 4, "slow", 0);
    // While the consumer reads nothing, deliveries wait; the producer is not held up.
    let total = produce_24_mib(&mut admin, "slow");
    std::thread::sleep(Duration::from_millis(200));
    let got = read_values(&mut consumer, 4, 0, total);
    for (i, value) in got.iter().enumerate() {
        assert_eq!(&value[..6], format!("{i:06}"), "in order, none lost");
    }
}
