//! `ringmq serve` as an operator meets it: a bad profile is refused with a message naming the
//! field, and SIGTERM stops the broker cleanly with every acknowledged record kept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Stdio};
use std::time::Duration;

use client::{
    Acks, Client, ClientConfig, Connection, ConnectionConfig, Consumer, ConsumerConfig, Producer,
    ProducerConfig, StartOffset,
};

mod common;

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn tiny() -> String {
    std::fs::read_to_string(common::TINY).unwrap()
}

/// Runs `serve` on a profile made from tiny.toml by `edit`; returns (exit ok, stderr).
fn serve_with(edit: impl Fn(String) -> String) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("bad.toml");
    std::fs::write(&profile, edit(tiny())).unwrap();
    let output = common::ringmq()
        .args(["serve", "--port", "0", "--config"])
        .arg(&profile)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_profiles_are_refused_with_the_field_and_the_reason() {
    let (ok, stderr) =
        serve_with(|text| text.replace("ring_depth = 32", "ring_depth = 32\nring_dept = 64"));
    assert!(!ok);
    assert!(stderr.contains("ring_dept"), "{stderr}");
    let (ok, stderr) = serve_with(|text| text.replace("cores = \"all\"", "cores = [999]"));
    assert!(!ok);
    assert!(
        stderr.contains("999") && stderr.contains("cores"),
        "{stderr}"
    );
    let (ok, stderr) = serve_with(|text| {
        text.replace("io_memory_bytes = 1048576", "io_memory_bytes = 17179869184")
    });
    assert!(!ok);
    assert!(stderr.contains("io_memory_bytes"), "{stderr}");
    // One line, for scripts and humans alike.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn sigterm_stops_cleanly_and_keeps_acknowledged_records() {
    let data = tempfile::tempdir().unwrap();
    let start = || common::serve(data.path(), Stdio::piped());
    let (child, address) = start();
    let mut client = Client::connect(&address, ClientConfig::default()).unwrap();
    client.create_topic("t", 1, 1).unwrap();
    let config = ProducerConfig {
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config).unwrap();
    for i in 0..1000u32 {
        producer
            .send("t", 0, b"", format!("v{i}").as_bytes())
            .unwrap();
    }
    producer.flush().unwrap();
    drop(producer);
    sigterm(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");

    let (mut child, address) = start();
    let client = Client::connect(&address, ClientConfig::default()).unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    consumer.assign("t", 0, StartOffset::Earliest).unwrap();
    let mut values = Vec::new();
    while values.len() < 1000 {
        let batch = consumer.poll(Duration::from_millis(500)).unwrap();
        assert!(!batch.is_empty(), "records missing after {}", values.len());
        values.extend(
            batch
                .into_iter()
                .map(|r| String::from_utf8(r.value).unwrap()),
        );
    }
    assert_eq!(
        values,
        (0..1000).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A broker stopped while clients were connected starts again at once on the same port. The
/// connections it closed linger (FIN-WAIT, then TIME-WAIT) for up to a minute, and a bind
/// gets past them only when both the new socket and the lingering ones set SO_REUSEADDR,
/// which an accepted connection inherits from its listener.
#[test]
fn a_broker_stopped_with_clients_connected_restarts_at_once_on_the_same_port() {
    let data = tempfile::tempdir().unwrap();
    let tiny = std::path::Path::new(common::TINY);
    // Both runs take the shared port and the shard ports after it, all fixed.
    let port = free_ports_below_the_ephemeral_range(shard_ports_max() + 1);
    let (child, address) = common::serve_on(tiny, data.path(), port, Stdio::inherit());
    let mut connection = Connection::connect(&address, ConnectionConfig::default()).unwrap();
    connection.handshake("serve-test").unwrap();
    sigterm(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    // The broker closed first; the client closes its end after.
    drop(connection);
    let (mut child, again) = common::serve_on(tiny, data.path(), port, Stdio::inherit());
    assert_eq!(again, address);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Most shards the tiny profile starts (one per allowed core).
fn shard_ports_max() -> u16 {
    std::thread::available_parallelism().map_or(64, |n| n.get().min(64) as u16)
}

/// The first of `len` consecutive ports on 127.0.0.1 that are free now, below the kernel's
/// ephemeral range: the other tests' brokers (`--port 0`) and every client take their ports
/// from that range, so none of them takes these between the two runs.
fn free_ports_below_the_ephemeral_range(len: u16) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let (first, last) = (10_000, low.saturating_sub(len));
    assert!(first < last, "no room below the ephemeral range {range:?}");
    // Start somewhere the process id says, so that concurrent runs spread out.
    let span = u32::from(last - first);
    let start = std::process::id() % span;
    for step in 0..span.min(1_000) {
        let port = first + ((start + step * 97) % span) as u16;
        let free = (port..port + len)
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if free {
            return port;
        }
    }
    panic!("no {len} free ports below {low}");
}
