//! Helpers the integration test modules share.

use std::time::Duration;

use client::{Consumer, OffsetSpec, StartOffset};

/// Every value of `topic`'s `partition` from its log start to its current end, checking that
/// records arrive in order, with dense offsets, from that partition only.
pub fn read_partition(consumer: &mut Consumer, topic: &str, partition: u32) -> Vec<String> {
    let client = consumer.client();
    let start = client
        .list_offsets(topic, partition, OffsetSpec::Earliest)
        .unwrap();
    let end = client
        .list_offsets(topic, partition, OffsetSpec::Latest)
        .unwrap();
    consumer
        .assign(topic, partition, StartOffset::Earliest)
        .unwrap();
    let mut values = Vec::new();
    let mut position = start;
    let mut polls = 0;
    while position < end {
        polls += 1;
        assert!(
            polls < 10_000,
            "consumer made no progress at {position} of {end}"
        );
        for record in consumer.poll(Duration::from_millis(200)).unwrap() {
            assert_eq!(record.partition, partition);
            assert_eq!(record.offset, position, "offsets arrive in order, densely");
            values.push(String::from_utf8(record.value).unwrap());
            position += 1;
        }
    }
    consumer.unassign(topic, partition);
    values
}
