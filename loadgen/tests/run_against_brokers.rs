//! Short bounded loadgen runs against a real ringmq broker started in this process (and
//! against nats-server when it is installed): every message sent is acknowledged and
//! received, and latencies are recorded for each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use loadgen::run::{self, RunOptions, Target};
use loadgen::workload::{KeyDistributor, WorkloadFile};
use ringmq_tests::TestBroker;

fn options(target: Target, file: WorkloadFile) -> RunOptions {
    RunOptions {
        target,
        workload: file.resolve().unwrap(),
        profile: "test".into(),
        cores: None,
        broker_pid: None,
        progress: false,
        jetstream_sync: "test".into(),
        target_version: None,
    }
}

fn workload(
    rate: f64,
    seconds: f64,
    acks: &str,
    batch_bytes: usize,
    partitions: u32,
) -> WorkloadFile {
    WorkloadFile {
        message_size: Some(256),
        producer_rate: Some(rate),
        test_duration_seconds: Some(seconds),
        acks: Some(acks.into()),
        batch_bytes: Some(batch_bytes),
        linger_ms: Some(if batch_bytes > 0 { 5.0 } else { 0.0 }),
        partitions_per_topic: Some(partitions),
        ..WorkloadFile::default()
    }
}

/// Runs and checks that nothing was lost: every message intended in the window was sent,
/// acknowledged (when the mode has acks), received once per subscription, and has a latency.
fn run_and_check(options: &RunOptions, expected_sent: u64, subscriptions: u64) -> run::RunOutcome {
    let outcome = run::run(options, Arc::new(AtomicBool::new(false))).unwrap();
    let result = &outcome.result;
    println!("{}", loadgen::report::run_table(result));
    assert_eq!(
        result.sent, expected_sent,
        "every scheduled message is sent"
    );
    assert_eq!(
        result.received,
        Some(expected_sent * subscriptions),
        "every message received"
    );
    assert_eq!(outcome.stats.e2e.len(), expected_sent * subscriptions);
    if let Some(acked) = result.acked {
        assert_eq!(acked, expected_sent, "every message acknowledged");
        assert_eq!(outcome.stats.ack.len(), expected_sent);
        assert!(result.ack_latency_us.unwrap().p50 > 0.0);
    }
    assert_eq!(result.failed, 0);
    let e2e = result.e2e_latency_us.unwrap();
    assert!(e2e.p50 > 0.0 && e2e.p50 <= e2e.p99 && e2e.p99 <= e2e.max);
    assert_eq!(outcome.stats.send_gap.len(), expected_sent);
    assert!(result.broker_cpu_percent.is_some(), "broker CPU measured");
    assert!(result.loadgen_cpu_percent.unwrap() > 0.0);
    outcome
}

#[test]
fn ringmq_runs_lose_nothing_and_record_latency() {
    let broker = TestBroker::start();
    let target = Target::parse(&format!("ringmq://{}", broker.address)).unwrap();

    // Single-message requests, acked after the log write, over two partitions (two shards).
    let outcome = run_and_check(
        &options(target.clone(), workload(2000.0, 2.0, "leader", 0, 2)),
        4000,
        1,
    );
    assert_eq!(outcome.result.mode, "open-loop");
    assert!((outcome.result.throughput_msgs_per_s - 2000.0).abs() < 100.0);

    // Kafka-style batches, acked after fdatasync, two subscriptions.
    let mut batched = workload(2000.0, 1.5, "leader+fsync", 4096, 1);
    batched.subscriptions_per_topic = Some(2);
    run_and_check(&options(target.clone(), batched), 3000, 2);

    // Keyed batches of three over four partitions on one connection, one request in flight:
    // batches fill while another is in flight and wait for room (the worker asserts it never
    // sends without), nothing lost.
    for keys in [KeyDistributor::KeyRoundRobin, KeyDistributor::RandomNano] {
        let mut keyed = workload(2000.0, 1.0, "leader", 1024, 4);
        keyed.key_distributor = Some(keys);
        keyed.max_in_flight = Some(1);
        run_and_check(&options(target.clone(), keyed), 2000, 1);
    }

    // Fire and forget: no acks in the result, everything still arrives.
    let outcome = run_and_check(
        &options(target.clone(), workload(2000.0, 1.0, "none", 0, 1)),
        2000,
        1,
    );
    assert!(outcome.result.acked.is_none());
    assert!(outcome.result.ack_latency_us.is_none());

    // The same on memory topics (compare's NATS-style column), and acked there too.
    for acks in ["none", "leader"] {
        let mut memory = workload(2000.0, 1.0, acks, 0, 2);
        memory.storage = Some("memory".into());
        let outcome = run_and_check(&options(target.clone(), memory), 2000, 1);
        assert!(outcome.result.durability.starts_with("memory topic"));
    }

    // Closed loop for a moment: labelled as such, nothing lost.
    let closed = run::run(
        &options(target, workload(0.0, 0.5, "leader", 0, 1)),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(closed.result.mode, "closed-loop");
    assert!(closed.result.offered_rate_msgs_per_s.is_none());
    assert_eq!(closed.result.acked, Some(closed.result.sent));
    assert_eq!(closed.result.received, Some(closed.result.sent));
    assert!(closed.result.sent > 100);
}

#[test]
fn a_stopped_run_still_reports_what_ran() {
    let broker = TestBroker::start();
    let target = Target::parse(&format!("ringmq://{}", broker.address)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let started = std::time::Instant::now();
    let outcome = run::run(
        &options(target, workload(1000.0, 30.0, "leader", 0, 1)),
        stop,
    )
    .unwrap();
    stopper.join().unwrap();
    assert!(
        started.elapsed().as_secs() < 20,
        "Ctrl-C ends a 30 s run early"
    );
    assert!(outcome.interrupted);
    assert!(outcome.result.duration_s < 10.0);
    assert!(outcome.result.sent > 0);
    assert_eq!(outcome.result.acked, Some(outcome.result.sent));
    assert_eq!(outcome.result.received, Some(outcome.result.sent));
}

#[test]
fn nats_runs_lose_nothing_when_nats_server_is_installed() {
    let Some(binary) = loadgen::server::find_on_path("nats-server") else {
        println!("nats-server not installed: skipping the NATS and JetStream runs");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = loadgen::server::NatsServer::start(&binary, dir.path(), None).unwrap();
    let address = format!("127.0.0.1:{}", server.port);
    let core = Target::parse(&format!("nats://{address}")).unwrap();
    let outcome = run_and_check(&options(core, workload(2000.0, 1.0, "none", 0, 1)), 2000, 1);
    assert!(outcome.result.acked.is_none());
    let jetstream = Target::parse(&format!("jetstream://{address}")).unwrap();
    run_and_check(
        &options(jetstream, workload(1000.0, 1.0, "leader", 0, 1)),
        1000,
        1,
    );
}

#[test]
fn bad_targets_are_refused_with_a_reason() {
    for (url, expected) in [
        ("127.0.0.1:9092", "scheme"),
        ("ringmq://nohost", "HOST:PORT"),
        ("ringmq://h:99999", "port"),
        ("kafka://127.0.0.1:9092", "kafka"),
        ("amqp://127.0.0.1:5672", "unknown target scheme"),
    ] {
        let error = Target::parse(url).unwrap_err().to_string();
        assert!(error.contains(expected), "{url}: {error}");
    }
}
