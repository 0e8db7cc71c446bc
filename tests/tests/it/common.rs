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

/// Re-seals a frame's header crc over its first 28 bytes, as a hostile client would after
/// changing a header field.
pub fn reseal_header(frame: &mut [u8]) {
    let crc = crc32c::crc32c(&frame[..28]);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Re-seals a frame's body crc over whatever its body holds now, then its header crc: a
/// hostile client's frame that only bytecheck or the batch's own crc can refuse.
pub fn reseal_body(frame: &mut [u8]) {
    let body_len = u32::from_le_bytes(frame[8..12].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c(&frame[32..32 + body_len]);
    frame[24..28].copy_from_slice(&crc.to_le_bytes());
    reseal_header(frame);
}
