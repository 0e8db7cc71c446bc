//! Push subscriptions through the client library (`client::Subscription`): records produced
//! after it started, in order and once, across deliveries; a start in the middle of a batch;
//! a graceful broker restart survived with no gap and no duplicate.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use client::{
    Acks, BatchAck, Client, ClientConfig, ConsumedRecord, Producer, ProducerConfig, RetryPolicy,
    StartOffset, Subscription,
};
use ringmq_tests::{Relay, TestBroker};

/// How long a test waits for records it produced before it gives up.
const RECORDS_DUE: Duration = Duration::from_secs(20);

fn values(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn create(address: &str, topic: &str) {
    Client::connect(address, ClientConfig::default())
        .unwrap()
        .create_topic(topic, 1, 1)
        .unwrap();
}

fn producer(address: &str) -> Producer {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let config = ProducerConfig {
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    Producer::new(client, config).unwrap()
}

/// Sends `values` to partition 0 and flushes: acknowledged once this returns.
fn produce(producer: &mut Producer, topic: &str, values: &[String]) -> Vec<BatchAck> {
    for value in values {
        producer.send(topic, 0, b"", value.as_bytes()).unwrap();
    }
    producer.flush().unwrap()
}

/// Takes records until `count` arrived or `RECORDS_DUE` passed.
fn read(subscription: &mut Subscription, count: usize) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + RECORDS_DUE;
    let mut records = Vec::new();
    while records.len() < count && Instant::now() < deadline {
        records.extend(
            subscription
                .next_records(Duration::from_millis(200))
                .unwrap(),
        );
    }
    records
}

fn offsets(records: &[ConsumedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

fn texts(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

#[test]
fn a_subscription_gets_records_produced_after_it_started_in_order_and_once() {
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    create(&address, "live");
    let mut producer = producer(&address);
    produce(&mut producer, "live", &values("old", 0..5));

    let client = Client::connect(&address, ClientConfig::default()).unwrap();
    let mut subscription = Subscription::new(client, "live", 0, StartOffset::Latest).unwrap();
    assert_eq!(subscription.position(), 5);
    let mut got = Vec::new();
    // Each round is produced once the last one arrived: every round is a delivery of its own.
    for round in 0..4 {
        let expected = values("new", round * 10..round * 10 + 10);
        produce(&mut producer, "live", &expected);
        let records = read(&mut subscription, 10);
        assert_eq!(texts(&records), expected, "round {round}");
        got.extend(records);
    }
    assert_eq!(offsets(&got), (5..45).collect::<Vec<u64>>());
    assert_eq!(subscription.position(), 45);
    assert!(
        subscription
            .next_records(Duration::from_millis(300))
            .unwrap()
            .is_empty(),
        "nothing more, nothing twice"
    );
    subscription.close().unwrap();
}

#[test]
fn a_subscription_from_the_middle_of_a_batch_starts_exactly_there() {
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    create(&address, "middle");
    let mut producer = producer(&address);
    let first = produce(&mut producer, "middle", &values("v", 0..10));
    let second = produce(&mut producer, "middle", &values("v", 10..15));
    // One batch each, so offset 4 sits inside the first.
    assert_eq!(
        (first.len(), first[0].base_offset, first[0].records),
        (1, Some(0), 10)
    );
    assert_eq!(
        (second.len(), second[0].base_offset, second[0].records),
        (1, Some(10), 5)
    );

    let client = Client::connect(&address, ClientConfig::default()).unwrap();
    let mut subscription = Subscription::new(client, "middle", 0, StartOffset::Offset(4)).unwrap();
    let records = read(&mut subscription, 11);
    assert_eq!(offsets(&records), (4..15).collect::<Vec<u64>>());
    assert_eq!(texts(&records), values("v", 4..15));
    assert!(
        subscription
            .next_records(Duration::from_millis(300))
            .unwrap()
            .is_empty()
    );
    assert_eq!(subscription.position(), 15);
}

/// Retries that outlast a broker restart on a loaded machine.
fn patient() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            attempts_max: 200,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            elapsed_max: RECORDS_DUE,
        },
        ..ClientConfig::default()
    }
}

#[test]
fn a_subscription_survives_a_graceful_restart_with_no_gap_and_no_duplicate() {
    let mut broker = TestBroker::start();
    // The restarted broker listens on new ports: clients bootstrap through a relay that
    // follows it, and find its shards through metadata.
    let bootstrap = Relay::start(broker.address);
    let address = bootstrap.address.to_string();
    create(&address, "restarted");
    let client = Client::connect(&address, patient()).unwrap();
    let mut subscription =
        Subscription::new(client, "restarted", 0, StartOffset::Earliest).unwrap();
    // The reader runs through the restart: it sees the broker end the subscription, its
    // reconnects fail while the broker is down, and the new broker.
    let (first_read, read_first) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut records = read(&mut subscription, 20);
        first_read.send(()).unwrap();
        records.extend(read(&mut subscription, 50 - records.len()));
        (records, subscription)
    });

    let mut before = producer(&address);
    produce(&mut before, "restarted", &values("v", 0..20));
    read_first.recv_timeout(RECORDS_DUE).unwrap();
    // These may or may not reach the reader before the shutdown ends its subscription.
    produce(&mut before, "restarted", &values("v", 20..30));
    broker.stop();
    // Down for a while: the reader's resubscriptions are refused meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    bootstrap.retarget(broker.address);
    let mut after = producer(&address);
    produce(&mut after, "restarted", &values("v", 30..50));

    let (records, mut subscription) = reader.join().unwrap();
    assert_eq!(offsets(&records), (0..50).collect::<Vec<u64>>());
    assert_eq!(texts(&records), values("v", 0..50));
    assert!(
        subscription
            .next_records(Duration::from_millis(300))
            .unwrap()
            .is_empty(),
        "nothing more, nothing twice"
    );
}
