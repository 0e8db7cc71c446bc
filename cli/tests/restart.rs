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

use client::{Acks, Client, ClientConfig};

mod common;

const PARTITIONS: u32 = 2;

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
        let acks = if cycle % 2 == 0 {
            Acks::Leader
        } else {
            Acks::LeaderFsync
        };
        let producer_thread = common::spawn_producer(
            &address,
            acks,
            next_seq,
            (0..PARTITIONS).collect(),
            &acked,
            &stop,
        );
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
        let seen = common::read_back(&address, PARTITIONS, &acked);
        common::assert_none_lost(&acked, &seen, &format!("cycle {cycle}"));
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!("R1 kill-9 cycles=3 acked={acked_total} lost=0");
}
