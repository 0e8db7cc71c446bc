//! Hostile clients: garbage, a header announcing 4 GiB, a truncated frame then silence, an
//! unknown api key. Each connection is closed or answered with an error, the broker keeps
//! serving others, and its memory does not grow by more than the frame limit.

use std::io::Write;
use std::time::{Duration, Instant};

use protocol::api::*;
use protocol::{ErrorCode, FrameBuf, encode_frame};
use ringmq_tests::{RawConn, TestBroker};

use crate::common::{reseal_body, reseal_header};

fn still_serves(broker: &TestBroker) {
    let mut good = RawConn::connect(broker.address);
    good.send(
        42,
        &ApiVersionsRequest {
            client_software: "test".into(),
        },
    );
    let response: ApiVersionsResponse = good.recv(42);
    assert_eq!(response.error, ErrorCode::NONE);
}

#[test]
fn garbage_bytes_close_the_connection() {
    let broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.address);
    conn.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(conn.closed_by_peer());
    still_serves(&broker);
}

#[test]
fn header_announcing_4_gib_is_refused() {
    // Memory growth is measured on the real binary in cli/tests/hostile_memory.rs, where
    // no other test shares the process.
    let broker = TestBroker::start();
    for _ in 0..5 {
        let mut frame = FrameBuf::new();
        encode_frame(&mut frame, 1, &MetadataRequest { topics: vec![] }).unwrap();
        let mut header = frame[..32].to_vec();
        header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal_header(&mut header);
        let mut conn = RawConn::connect(broker.address);
        conn.stream.write_all(&header).unwrap();
        assert!(conn.closed_by_peer());
    }
    still_serves(&broker);
}

#[test]
fn truncated_frame_then_silence_is_closed_by_the_frame_timeout() {
    let broker = TestBroker::start();
    let mut frame = FrameBuf::new();
    encode_frame(
        &mut frame,
        1,
        &MetadataRequest {
            topics: vec!["x".into(); 50],
        },
    )
    .unwrap();
    let mut conn = RawConn::connect(broker.address);
    conn.stream.write_all(&frame[..frame.len() / 2]).unwrap();
    let started = Instant::now();
    assert!(conn.closed_by_peer());
    // tiny.toml: frame_read_timeout_ms = 1000.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    still_serves(&broker);
}

#[test]
fn unknown_api_key_closes_the_connection() {
    let broker = TestBroker::start();
    let mut frame = FrameBuf::new();
    encode_frame(&mut frame, 1, &MetadataRequest { topics: vec![] }).unwrap();
    let mut bytes = frame.to_vec();
    bytes[12..14].copy_from_slice(&999u16.to_le_bytes());
    reseal_header(&mut bytes);
    let mut conn = RawConn::connect(broker.address);
    conn.stream.write_all(&bytes).unwrap();
    assert!(conn.closed_by_peer());
    still_serves(&broker);
}

#[test]
fn invalid_body_is_answered_with_invalid_request() {
    let broker = TestBroker::start();
    let mut frame = FrameBuf::new();
    encode_frame(
        &mut frame,
        5,
        &MetadataRequest {
            topics: vec!["a-topic-name".into()],
        },
    )
    .unwrap();
    // Point the topic list's relative pointer far outside the body, then re-seal both
    // checksums as a hostile client would: only bytecheck stands in the way.
    let mut bytes = frame.to_vec();
    let body_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let root = 32 + body_len - 8;
    bytes[root..root + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    reseal_body(&mut bytes);
    let mut conn = RawConn::connect(broker.address);
    conn.stream.write_all(&bytes).unwrap();
    let response: MetadataResponse = conn.recv(5);
    assert_eq!(response.error, ErrorCode::INVALID_REQUEST);
    still_serves(&broker);
}
