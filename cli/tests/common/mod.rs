//! Starting the real `ringmq` binary for the tests in `cli/tests/`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig};

/// The tiny profile the tests run with.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/tiny.toml");

pub fn ringmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
}

/// Starts `ringmq serve` on free ports with the tiny profile over `data`, and waits for its
/// "serving on ADDRESS" line. `stderr` says where the broker's log goes.
pub fn serve(data: &Path, stderr: Stdio) -> (Child, String) {
    serve_profile(Path::new(TINY), data, stderr)
}

/// `serve` with the profile at `config`.
pub fn serve_profile(config: &Path, data: &Path, stderr: Stdio) -> (Child, String) {
    serve_on(config, data, 0, stderr)
}

/// `serve_profile` with the shared port `port` (0: free ports).
pub fn serve_on(config: &Path, data: &Path, port: u16, stderr: Stdio) -> (Child, String) {
    let mut child = ringmq()
        .args(["serve", "--port", &port.to_string(), "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .strip_prefix("ringmq serving on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, address)
}

/// The value of record `seq` on `partition`; `read_back` parses `seq` from it.
pub fn value(partition: u32, seq: u64) -> String {
    format!("p{partition}-{seq:08}")
}

/// Sends records `first_seq..` to topic `t` with `acks` in flushed groups of 20, record `seq`
/// to `partitions[seq % len]`, until `stop` is set or a send or flush fails (the broker was
/// killed). Every flushed record goes into `acked`. Returns the next unsent `seq`.
pub fn produce_until_stopped(
    address: &str,
    acks: Acks,
    first_seq: u64,
    partitions: &[u32],
    acked: &Mutex<BTreeSet<(u32, u64)>>,
    stop: &AtomicBool,
) -> u64 {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let config = ProducerConfig {
        acks,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config).unwrap();
    let mut seq = first_seq;
    while !stop.load(Ordering::Relaxed) {
        let mut sent = Vec::new();
        for _ in 0..20 {
            let partition = partitions[(seq % partitions.len() as u64) as usize];
            if let Err(error) = producer.send("t", partition, b"", value(partition, seq).as_bytes())
            {
                eprintln!("send failed: {error}");
                return seq;
            }
            sent.push((partition, seq));
            seq += 1;
        }
        // flush acknowledges every record sent so far, or fails.
        match producer.flush() {
            Ok(_) => acked.lock().unwrap().extend(sent),
            Err(error) => {
                eprintln!("flush failed: {error}");
                return seq;
            }
        }
    }
    seq
}

/// `produce_until_stopped` on its own thread.
pub fn spawn_producer(
    address: &str,
    acks: Acks,
    first_seq: u64,
    partitions: Vec<u32>,
    acked: &Arc<Mutex<BTreeSet<(u32, u64)>>>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let (address, acked, stop) = (address.to_string(), Arc::clone(acked), Arc::clone(stop));
    std::thread::spawn(move || {
        produce_until_stopped(&address, acks, first_seq, &partitions, &acked, &stop)
    })
}

/// Reads partitions `0..partitions` of topic `t` from the start until every record of
/// `acked` was seen or 15 s passed (after a restart the high watermark may wait for a
/// follower to report), and returns the `(partition, seq)` of every record seen. Errors (a
/// broker still opening its replicas) are retried until then.
pub fn read_back(
    address: &str,
    partitions: u32,
    acked: &BTreeSet<(u32, u64)>,
) -> BTreeSet<(u32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = BTreeSet::new();
    loop {
        if let Err(error) = read_once(address, partitions, deadline, &mut seen) {
            eprintln!("reading back: {error}");
        }
        if acked.is_subset(&seen) || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One pass over every partition up to its end, until `deadline` at most.
fn read_once(
    address: &str,
    partitions: u32,
    deadline: Instant,
    seen: &mut BTreeSet<(u32, u64)>,
) -> Result<(), String> {
    let client = Client::connect(address, ClientConfig::default()).map_err(|e| e.to_string())?;
    let mut consumer =
        Consumer::new(client, ConsumerConfig::default()).map_err(|e| e.to_string())?;
    for partition in 0..partitions {
        consumer
            .assign("t", partition, client::StartOffset::Earliest)
            .map_err(|e| e.to_string())?;
        let end = consumer
            .client()
            .list_offsets("t", partition, client::OffsetSpec::Latest)
            .map_err(|e| e.to_string())?;
        let mut position = 0;
        while position < end {
            if Instant::now() > deadline {
                return Err(format!(
                    "t-{partition}: read to {position} of {end} in time"
                ));
            }
            for record in consumer
                .poll(Duration::from_millis(500))
                .map_err(|e| e.to_string())?
            {
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
    Ok(())
}

/// Panics with up to five examples when an acknowledged record is missing from `seen`.
pub fn assert_none_lost(acked: &BTreeSet<(u32, u64)>, seen: &BTreeSet<(u32, u64)>, what: &str) {
    let lost: Vec<_> = acked.difference(seen).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
