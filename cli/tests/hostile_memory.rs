//! Hostile frames against the real binary, with its memory measured from /proc: headers that
//! announce 4 GiB and frames cut off mid-way must not make the broker allocate what they
//! announce, and it must keep serving.
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

use protocol::api::MetadataRequest;
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
