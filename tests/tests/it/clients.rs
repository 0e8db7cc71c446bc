//! The broker through the client library: shard-aware and shared-port routing, ordering per
//! partition, many concurrent producers.

use std::collections::BTreeMap;
use std::time::Duration;

use client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Routing,
};
use ringmq_tests::TestBroker;

use crate::common::read_partition;

fn config(routing: Routing) -> ClientConfig {
    ClientConfig {
        routing,
        ..ClientConfig::default()
    }
}

/// Reads every record of `topic`'s partitions from the start, as (partition, value) in order.
fn read_all(
    address: &str,
    topic: &str,
    partitions: u32,
    routing: Routing,
) -> BTreeMap<u32, Vec<String>> {
    let client = Client::connect(address, config(routing)).unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    (0..partitions)
        .map(|partition| (partition, read_partition(&mut consumer, topic, partition)))
        .collect()
}

#[test]
fn shard_aware_and_shared_port_clients_see_the_same_ordered_data() {
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    admin.create_topic("orders", 4, 1).unwrap();
    for (round, routing) in [Routing::ShardAware, Routing::SharedPort]
        .into_iter()
        .enumerate()
    {
        let client = Client::connect(&address, config(routing)).unwrap();
        let acks = if round == 0 {
            Acks::Leader
        } else {
            Acks::LeaderFsync
        };
        let producer_config = ProducerConfig {
            acks,
            ..ProducerConfig::default()
        };
        let mut producer = Producer::new(client, producer_config).unwrap();
        for i in 0..400u32 {
            let partition = i % 4;
            producer
                .send("orders", partition, b"", format!("r{round}-{i}").as_bytes())
                .unwrap();
        }
        let acks = producer.flush().unwrap();
        assert_eq!(acks.iter().map(|a| u64::from(a.records)).sum::<u64>(), 400);
    }
    let shard_aware = read_all(&address, "orders", 4, Routing::ShardAware);
    let shared = read_all(&address, "orders", 4, Routing::SharedPort);
    assert_eq!(shard_aware, shared);
    for (partition, values) in &shard_aware {
        let expected: Vec<String> = (0..2)
            .flat_map(|round| {
                (0..400u32)
                    .filter(|i| i % 4 == *partition)
                    .map(move |i| format!("r{round}-{i}"))
            })
            .collect();
        assert_eq!(
            values, &expected,
            "partition {partition} keeps the send order"
        );
    }
}

#[test]
fn many_concurrent_producers_lose_and_reorder_nothing() {
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    Client::connect(&address, ClientConfig::default())
        .unwrap()
        .create_topic("events", 2, 1)
        .unwrap();
    let producers: Vec<_> = (0..8u32)
        .map(|producer| {
            let address = address.clone();
            std::thread::spawn(move || {
                let routing = if producer % 2 == 0 {
                    Routing::ShardAware
                } else {
                    Routing::SharedPort
                };
                let client = Client::connect(&address, config(routing)).unwrap();
                let acks = if producer % 3 == 0 {
                    Acks::LeaderFsync
                } else {
                    Acks::Leader
                };
                let producer_config = ProducerConfig {
                    acks,
                    batch_bytes: 4096,
                    linger: Duration::from_millis(2),
                    ..ProducerConfig::default()
                };
                let mut sender = Producer::new(client, producer_config).unwrap();
                for seq in 0..500u32 {
                    sender
                        .send(
                            "events",
                            seq % 2,
                            b"",
                            format!("{producer}:{seq}").as_bytes(),
                        )
                        .unwrap();
                }
                sender.flush().unwrap();
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let all = read_all(&address, "events", 2, Routing::ShardAware);
    assert_eq!(all.values().map(Vec::len).sum::<usize>(), 8 * 500);
    // Per producer and partition, sequences appear once each, in the order sent.
    for (partition, values) in &all {
        let mut last: BTreeMap<u32, i64> = BTreeMap::new();
        for value in values {
            let (producer, seq) = value.split_once(':').unwrap();
            let (producer, seq): (u32, i64) = (producer.parse().unwrap(), seq.parse().unwrap());
            // Partition p holds the sequences congruent to p mod 2, from p up.
            let previous = last
                .insert(producer, seq)
                .unwrap_or(i64::from(*partition) - 2);
            assert_eq!(
                seq,
                previous + 2,
                "partition {partition}: producer {producer} out of order"
            );
        }
    }
}
