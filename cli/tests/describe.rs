//! `ringmq topic describe` as an operator reads it: with replication factor 2 over 2 shards,
//! each partition's in-sync set, watermarks and end, and each follower's lag.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::process::{Output, Stdio};

mod common;

fn run(address: &str, args: &[&str], stdin: &str) -> Output {
    let output = run_unchecked(address, args, stdin);
    assert!(
        output.status.success(),
        "ringmq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn run_unchecked(address: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = common::ringmq()
        .args(args)
        .args(["--broker", address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn describe_shows_the_in_sync_set_watermarks_and_each_followers_lag() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        println!("SKIPPED: replication factor 2 needs 2 shards, this machine has {cores} core");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let (mut broker, address) = common::serve(data.path(), Stdio::null());
    run(
        &address,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "1",
            "--replication-factor",
            "2",
        ],
        "",
    );
    let lines: String = (0..5).map(|i| format!("v{i}\n")).collect();
    run(&address, &["produce", "t", "--acks", "all+fsync"], &lines);
    let described = run(&address, &["topic", "describe", "t"], "");
    broker.kill().unwrap();
    broker.wait().unwrap();

    let text = String::from_utf8(described.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    // Two tables, each a header row starting "partition" and one row per line below it.
    let headers: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].first() == Some(&"partition"))
        .collect();
    let [partitions, followers] = headers[..] else {
        panic!("two tables expected:\n{text}")
    };
    // partition leader epoch replicas in-sync log-start high-watermark hw-synced log-end
    let partition = &rows[partitions + 1];
    let leader = partition[1];
    let follower = if leader == "0" { "1" } else { "0" };
    assert_eq!(partition[4], format!("{leader},{follower}"), "{text}");
    assert_eq!(partition[5..], ["0", "5", "5", "5"], "{text}");
    // partition follower state behind-written behind-synced behind-ms
    let lag = &rows[followers + 1];
    assert_eq!(lag[..], ["0", follower, "in-sync", "0", "0", "0"], "{text}");
}

#[test]
fn a_memory_topic_is_created_described_and_refuses_fsync_acks() {
    let data = tempfile::tempdir().unwrap();
    let (mut broker, address) = common::serve(data.path(), Stdio::null());
    let created = run(
        &address,
        &["topic", "create", "m", "--storage", "memory"],
        "",
    );
    let created = String::from_utf8(created.stdout).unwrap();
    assert!(created.contains("memory storage"), "{created}");
    run(&address, &["produce", "m", "--acks", "leader"], "a\nb\n");
    let refused = run_unchecked(&address, &["produce", "m", "--acks", "leader+fsync"], "c\n");
    let consumed = run(&address, &["consume", "m", "--from", "earliest"], "");
    let described = run(&address, &["topic", "describe", "m"], "");
    let bad = run_unchecked(&address, &["topic", "create", "x", "--storage", "tape"], "");
    broker.kill().unwrap();
    broker.wait().unwrap();

    assert!(!refused.status.success());
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert!(reason.contains("InvalidAcks"), "{reason}");
    assert_eq!(String::from_utf8(consumed.stdout).unwrap(), "a\nb\n");
    let text = String::from_utf8(described.stdout).unwrap();
    let first = text.lines().next().unwrap_or_default();
    assert!(first.contains("storage memory"), "{text}");
    assert!(
        first.contains("67108864 bytes"),
        "the default bound: {text}"
    );
    assert!(!bad.status.success());
    let reason = String::from_utf8_lossy(&bad.stderr);
    assert!(reason.contains("expected disk or memory"), "{reason}");
}
