//! Hostile clients against the real binary, with its memory measured from /proc: headers that
//! announce 4 GiB and frames cut off mid-way must not make the broker allocate what they
//! announce, and it must keep serving; a subscriber that never reads must not make it queue
//! what the partition receives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use client::{Acks, Client, ClientConfig, Producer, ProducerConfig};
use engine::limits::SUBSCRIPTION_WINDOW_BYTES;
use protocol::api::{MetadataRequest, SubscribeRequest};
use protocol::limits::FRAME_BYTES_MAX;
use protocol::{FrameBuf, encode_frame};

mod common;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn hostile_headers_do_not_grow_memory_by_the_frame_limit() {
    let data = tempfile::tempdir().unwrap();
    let (mut broker, address) = common::serve(data.path(), Stdio::null());
    let pid = broker.id();
    let before = rss_bytes(pid);

    let mut frame = FrameBuf::new();
    encode_frame(
        &mut frame,
        1,
        &MetadataRequest {
            topics: vec!["x".into(); 100],
        },
    )
    .unwrap();
    for round in 0..40 {
        let mut stream = TcpStream::connect(&address).unwrap();
        if round % 2 == 0 {
            // A header announcing 4 GiB (with a valid header crc).
            let mut header = frame[..32].to_vec();
            header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            let crc = crc32c::crc32c(&header[..28]);
            header[28..32].copy_from_slice(&crc.to_le_bytes());
            stream.write_all(&header).unwrap();
        } else {
            // Half a frame, then silence until the frame-read timeout closes it.
            stream.write_all(&frame[..frame.len() / 2]).unwrap();
        }
        assert!(
            closed_by_peer(&mut stream),
            "round {round}: connection left open"
        );
    }
    let grown = rss_bytes(pid).saturating_sub(before);
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!("S2 hostile-memory cases=40 rss_growth={grown}B limit={FRAME_BYTES_MAX}B");
    assert!(grown < u64::from(FRAME_BYTES_MAX), "RSS grew {grown} bytes");
}

/// Produces `mib` MiB of 16 KiB records to `topic`'s partition 0, acknowledged.
fn produce_mib(address: &str, topic: &str, mib: usize) {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let config = ProducerConfig {
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config).unwrap();
    let value = vec![b'x'; 16 << 10];
    for _ in 0..mib * 64 {
        producer.send(topic, 0, b"", &value).unwrap();
    }
    producer.flush().unwrap();
}

/// A subscriber that never reads its socket: the broker holds its deliveries back once the
/// connection's window of unsent responses is full, instead of queueing everything the
/// partition receives for it.
#[test]
fn a_subscriber_that_never_reads_does_not_grow_memory_with_the_partition() {
    const PRODUCED_MIB: usize = 96;
    let data = tempfile::tempdir().unwrap();
    let (mut broker, address) = common::serve(data.path(), Stdio::null());
    let pid = broker.id();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    admin.create_topic("unread", 1, 1).unwrap();
    // The broker's own growth from taking this much (the partition's buffers reach their
    // steady size) comes before the measurement; the subscription starts after it.
    produce_mib(&address, "unread", PRODUCED_MIB);
    let before = rss_bytes(pid);

    let leader = admin.partition_address("unread", 0).unwrap();
    let mut subscriber = TcpStream::connect(&leader).unwrap();
    let mut frame = FrameBuf::new();
    let request = SubscribeRequest {
        topic: "unread".into(),
        partition: 0,
        offset: (PRODUCED_MIB * 64) as u64,
        max_bytes: 1 << 20,
    };
    encode_frame(&mut frame, 1, &request).unwrap();
    subscriber.write_all(&frame).unwrap();
    produce_mib(&address, "unread", PRODUCED_MIB);
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_bytes(pid).saturating_sub(before);
    // Measured: 11-17 MiB (the window, the delivery the writer holds, and the allocator
    // keeping freed delivery buffers); without the window, 135 MiB.
    let limit = 8 * SUBSCRIPTION_WINDOW_BYTES as u64;
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!(
        "S3 unread-subscription produced={PRODUCED_MIB}MiB rss_growth={grown}B limit={limit}B"
    );
    assert!(grown < limit, "RSS grew {grown} bytes");
}
