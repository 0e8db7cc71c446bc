//! The real `ringmq` binary, killed with SIGKILL under load and restarted on the same data:
//! every record acknowledged with `leader` or `leader+fsync` must be read back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, StartOffset,
};

mod common;

const PARTITIONS: u32 = 2;

fn value(partition: u32, seq: u64) -> String {
    format!("p{partition}-{seq:08}")
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let data = tempfile::tempdir().unwrap();
    let mut acked_total = 0;
    let (mut broker, mut address) = common::serve(data.path(), Stdio::null());
    Client::connect(&address, ClientConfig::default())
        .unwrap()
        .create_topic("t", PARTITIONS, 1)
        .unwrap();
    let mut next_seq = 0u64;
    for cycle in 0..3 {
        let acked: Arc<Mutex<BTreeSet<(u32, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let producer_thread = {
            let (acked, stop, address) = (Arc::clone(&acked), Arc::clone(&stop), address.clone());
            let first = next_seq;
            std::thread::spawn(move || {
                let client = Client::connect(&address, ClientConfig::default()).unwrap();
                let acks = if cycle % 2 == 0 {
                    Acks::Leader
                } else {
                    Acks::LeaderFsync
                };
                let config = ProducerConfig {
                    acks,
                    linger: Duration::from_millis(1),
                    ..ProducerConfig::default()
                };
                let mut producer = Producer::new(client, config).unwrap();
                let mut seq = first;
                while !stop.load(Ordering::Relaxed) {
                    let mut sent = Vec::new();
                    for _ in 0..20 {
                        let partition = (seq % u64::from(PARTITIONS)) as u32;
                        if producer
                            .send("t", partition, b"", value(partition, seq).as_bytes())
                            .is_err()
                        {
                            return seq;
                        }
                        sent.push((partition, seq));
                        seq += 1;
                    }
                    // flush acknowledges every record sent so far, or fails (broker killed).
                    match producer.flush() {
                        Ok(_) => acked.lock().unwrap().extend(sent),
                        Err(_) => return seq,
                    }
                }
                seq
            })
        };
        std::thread::sleep(Duration::from_millis(300 + 200 * cycle));
        broker.kill().unwrap(); // SIGKILL
        broker.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        next_seq = producer_thread.join().unwrap() + 1000;
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: nothing was acknowledged before the kill"
        );
        acked_total += acked.len();

        (broker, address) = common::serve(data.path(), Stdio::null());
        let client = Client::connect(&address, ClientConfig::default()).unwrap();
        let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
        let mut seen = BTreeSet::new();
        for partition in 0..PARTITIONS {
            consumer
                .assign("t", partition, StartOffset::Earliest)
                .unwrap();
            let end = consumer
                .client()
                .list_offsets("t", partition, client::OffsetSpec::Latest)
                .unwrap();
            let mut position = 0;
            while position < end {
                for record in consumer.poll(Duration::from_millis(500)).unwrap() {
                    let text = String::from_utf8(record.value).unwrap();
                    let seq: u64 = text.rsplit('-').next().unwrap().parse().unwrap();
                    seen.insert((record.partition, seq));
                    if record.partition == partition {
                        position = record.offset + 1;
                    }
                }
            }
            consumer.unassign("t", partition);
        }
        let lost: Vec<_> = acked.difference(&seen).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} acknowledged records lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!("R1 kill-9 cycles=3 acked={acked_total} lost=0");
}
