//! `ringmq consume --follow` against the real binary: it prints the records produced after it
//! started (pushed to its subscription), and `--count` ends it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use client::{Acks, Client, ClientConfig, Producer, ProducerConfig};

mod common;

/// How long the test waits for the command's output and exit.
const DUE: Duration = Duration::from_secs(20);

/// Kills and reaps a child process when dropped, so a failing test leaves none behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn produce(address: &str, values: &[&str]) {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let config = ProducerConfig {
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config).unwrap();
    for value in values {
        producer.send("t", 0, b"", value.as_bytes()).unwrap();
    }
    producer.flush().unwrap();
}

#[test]
fn consume_follow_prints_records_produced_after_it_started_and_stops_at_count() {
    let data = tempfile::tempdir().unwrap();
    let (broker, address) = common::serve(data.path(), Stdio::null());
    let _broker = Reaped(broker);
    Client::connect(&address, ClientConfig::default())
        .unwrap()
        .create_topic("t", 1, 1)
        .unwrap();
    produce(&address, &["old-0", "old-1"]);

    let mut consume = Reaped(
        common::ringmq()
            .args([
                "consume", "t", "--follow", "--count", "5", "--broker", &address,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = consume.0.stdout.take().unwrap();
    let (line_sent, lines) = mpsc::channel();
    let reading = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line_sent.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    for _ in 0..2 {
        printed.push(lines.recv_timeout(DUE).expect("the backlog is printed"));
    }
    // At the end of the partition it waits for more instead of exiting.
    std::thread::sleep(Duration::from_millis(300));
    assert!(consume.0.try_wait().unwrap().is_none(), "exited at the end");

    // One more than --count asks for, in one batch: the last is not printed.
    produce(&address, &["new-0", "new-1", "new-2", "new-3"]);
    let deadline = Instant::now() + DUE;
    let status = loop {
        if let Some(status) = consume.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!("consume --follow did not exit; printed {printed:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reading.join().unwrap();
    printed.extend(lines.try_iter());
    assert!(status.success(), "{status}");
    assert_eq!(printed, ["old-0", "old-1", "new-0", "new-1", "new-2"]);
}
