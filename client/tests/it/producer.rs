//! `Producer` against a fake broker: batching on the wire, pipelining, acks, retries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{
    Acks, Client, ClientConfig, ClientError, Producer, ProducerConfig, RetryPolicy, Routing,
};
use protocol::api::{ProduceRequest, ProduceResponse};
use protocol::{ApiKey, BatchView, ErrorCode};

use crate::cluster::config;
use crate::peer::{Action, Cluster, Received, encode, eventually};

/// What the broker saw of one produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    partition: u32,
    acks: Acks,
    batch: Vec<u8>,
    records: u32,
}

fn seen(request: &Received) -> Seen {
    let body = request.frame().access::<ProduceRequest>().unwrap();
    let batch = body.batch.as_slice().to_vec();
    let records = BatchView::new(&batch).unwrap().record_count();
    Seen {
        partition: body.partition.to_native(),
        acks: Acks::from(&body.acks),
        batch,
        records,
    }
}

fn ack(request: &Received, error: ErrorCode, base_offset: u64) -> protocol::FrameBuf {
    encode(
        request.id(),
        &ProduceResponse {
            error,
            base_offset,
            log_start_offset: 0,
        },
    )
}

/// A broker that stores produce batches in order per partition and answers per `answer`.
struct Log {
    seen: Arc<Mutex<Vec<Seen>>>,
    next_offset: Arc<AtomicU64>,
}

impl Log {
    fn new() -> Log {
        Log {
            seen: Arc::new(Mutex::new(Vec::new())),
            next_offset: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records the batch and returns the base offset it would get.
    fn store(&self, request: &Received) -> u64 {
        let seen = seen(request);
        let base = self
            .next_offset
            .fetch_add(u64::from(seen.records), Ordering::SeqCst);
        self.seen.lock().unwrap().push(seen);
        base
    }

    fn batches(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn fast_retry(attempts_max: u32) -> RetryPolicy {
    RetryPolicy {
        attempts_max,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(4),
        elapsed_max: Duration::from_secs(5),
    }
}

fn producer(cluster: &Cluster, routing: Routing, config: ProducerConfig) -> Producer {
    let client = Client::connect(&cluster.broker.shared, crate::cluster::config(routing)).unwrap();
    Producer::new(client, config).unwrap()
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::Leader,
        batch_bytes: 16 << 10,
        linger: Duration::from_secs(60),
        max_in_flight: 4,
        produce_timeout: Duration::from_secs(5),
        retry: fast_retry(5),
    }
}

#[test]
fn flush_sends_one_batch_per_partition_and_returns_their_offsets() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    let cluster = Cluster::start(2, "t", &[0, 1], move |_, request| {
        let base = broker_log.store(request);
        Action::Reply(ack(request, ErrorCode::NONE, base))
    });
    let mut producer = producer(&cluster, Routing::ShardAware, producer_config());
    for i in 0..10u32 {
        let sequence = producer
            .send("t", i % 2, b"k", format!("v{i}").as_bytes())
            .unwrap();
        assert_eq!(sequence, u64::from(i / 2));
    }
    assert_eq!(producer.records_buffered(), 10);
    assert!(
        log.batches().is_empty(),
        "nothing is sent before linger or flush"
    );
    let mut acks = producer.flush().unwrap();
    acks.sort_by_key(|ack| ack.partition);
    assert_eq!(acks.len(), 2);
    for ack in &acks {
        assert_eq!((ack.records, ack.first_sequence), (5, 0));
        assert!(ack.base_offset.is_some());
    }
    let batches = log.batches();
    assert_eq!(batches.len(), 2);
    // Each partition's batch went to its leader's shard port (listener = shard + 1).
    let mut listeners = cluster.listeners(ApiKey::Produce);
    listeners.sort();
    assert_eq!(listeners, [1, 2]);
    let stats = producer.stats();
    assert_eq!(
        (stats.batches_sent, stats.batches_acked, stats.retries),
        (2, 2, 0)
    );
}

#[test]
fn a_full_batch_is_sent_by_send_and_linger_by_the_next_send() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        let base = broker_log.store(request);
        Action::Reply(ack(request, ErrorCode::NONE, base))
    });
    let config = ProducerConfig {
        batch_bytes: 1024,
        linger: Duration::from_millis(40),
        ..producer_config()
    };
    let mut producer = producer(&cluster, Routing::ShardAware, config);
    // 300-byte values: the fourth record would take the batch over 1024 bytes.
    for _ in 0..4 {
        producer.send("t", 0, b"", &[7; 300]).unwrap();
    }
    assert!(eventually(Duration::from_secs(2), || log.batches().len() == 1));
    assert_eq!(log.batches()[0].records, 3);
    assert!(log.batches()[0].batch.len() <= 1024);
    // The fourth record waits for linger: nothing more arrives until a send after it.
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(log.batches().len(), 1);
    producer.send("t", 0, b"", b"late").unwrap();
    assert!(eventually(Duration::from_secs(2), || log.batches().len() == 2));
    assert_eq!(log.batches()[1].records, 2);
    // A record larger than batch_bytes travels alone.
    producer.send("t", 0, b"", &[1; 5000]).unwrap();
    let acks = producer.flush().unwrap();
    let records: Vec<u32> = acks.iter().map(|a| a.records).collect();
    assert_eq!(records, [3, 2, 1]);
    assert_eq!(acks[2].first_sequence, 5);
}

#[test]
fn batches_are_pipelined_up_to_max_in_flight_and_acked_out_of_order() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    // The broker holds every answer back until the client stops sending, then answers
    // newest first: the producer must block at max_in_flight and match acks by id.
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        let base = broker_log.store(request);
        Action::Defer(ack(request, ErrorCode::NONE, base))
    });
    let config = ProducerConfig {
        linger: Duration::ZERO,
        max_in_flight: 4,
        ..producer_config()
    };
    let mut producer = producer(&cluster, Routing::ShardAware, config);
    for i in 0..20u32 {
        producer.send("t", 0, b"", &i.to_le_bytes()).unwrap();
    }
    let acks = producer.flush().unwrap();
    assert_eq!(acks.len(), 20);
    // Never more than 4 unanswered; more than 1 shows the batches really were pipelined.
    let deferred_max = *cluster.broker.deferred_max.lock().unwrap();
    assert!(
        (2..=4).contains(&deferred_max),
        "{deferred_max} unanswered at once"
    );
    // Every ack carries the offset the broker gave that very batch.
    let batches = log.batches();
    for ack in &acks {
        let index = ack.first_sequence as usize;
        let value = u32::from_le_bytes(
            BatchView::new(&batches[index].batch)
                .unwrap()
                .records()
                .next()
                .unwrap()
                .value
                .try_into()
                .unwrap(),
        );
        assert_eq!(value, ack.first_sequence as u32);
        assert_eq!(ack.base_offset, Some(ack.first_sequence));
    }
}

#[test]
fn not_leader_is_retried_after_a_metadata_refresh() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    let produces = Arc::new(AtomicUsize::new(0));
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        broker_log.store(request);
        if produces.fetch_add(1, Ordering::SeqCst) == 0 {
            return Action::Reply(ack(request, ErrorCode::NOT_LEADER, 0));
        }
        Action::Reply(ack(request, ErrorCode::NONE, 500))
    });
    let mut producer = producer(&cluster, Routing::ShardAware, producer_config());
    for _ in 0..3 {
        producer.send("t", 0, b"k", b"v").unwrap();
    }
    let refreshes = producer.client().metadata_refreshes();
    let acks = producer.flush().unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].base_offset, acks[0].records), (Some(500), 3));
    let batches = log.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(
        batches[0].batch, batches[1].batch,
        "the retry re-sends the same bytes"
    );
    let stats = producer.stats();
    assert_eq!((stats.retries, stats.possible_duplicates), (1, 0));
    assert!(producer.client().metadata_refreshes() > refreshes);
}

#[test]
fn a_lost_connection_is_retried_and_counted_as_a_possible_duplicate() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    let produces = Arc::new(AtomicUsize::new(0));
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        let base = broker_log.store(request);
        if produces.fetch_add(1, Ordering::SeqCst) == 0 {
            // Stored, but the answer is lost with the connection.
            return Action::Close;
        }
        Action::Reply(ack(request, ErrorCode::NONE, base))
    });
    let mut producer = producer(&cluster, Routing::ShardAware, producer_config());
    producer.send("t", 0, b"k", b"v").unwrap();
    let acks = producer.flush().unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].base_offset, Some(1), "the broker stored it twice");
    let stats = producer.stats();
    assert_eq!(
        (stats.retries, stats.possible_duplicates, stats.batches_sent),
        (1, 1, 2)
    );
    // Two connections to the shard: the first died.
    assert_eq!(cluster.listeners(ApiKey::ApiVersions), [0, 1, 1]);
}

#[test]
fn retries_stop_at_attempts_max_and_flush_reports_the_failure() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(ack(request, ErrorCode::NOT_ENOUGH_REPLICAS, 0))
    });
    let config = ProducerConfig {
        retry: fast_retry(3),
        ..producer_config()
    };
    let mut producer = producer(&cluster, Routing::SharedPort, config);
    producer.send("t", 0, b"k", b"v").unwrap();
    let started = Instant::now();
    let error = producer.flush().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(error.acked.is_empty());
    assert_eq!(error.failed.len(), 1);
    match &error.failed[0].error {
        ClientError::RetriesExhausted {
            attempts: 3, last, ..
        } => {
            assert_eq!(last.code(), Some(ErrorCode::NOT_ENOUGH_REPLICAS))
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(cluster.count(ApiKey::Produce), 3);
    // Shared-port routing: every produce went to the bootstrap listener.
    assert!(cluster.listeners(ApiKey::Produce).iter().all(|&l| l == 0));
    assert_eq!(producer.stats().batches_failed, 1);
    // The failure was reported once; the next flush is clean.
    assert!(producer.flush().unwrap().is_empty());
}

#[test]
fn a_permanent_error_is_not_retried() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(ack(request, ErrorCode::CORRUPT_MESSAGE, 0))
    });
    let mut producer = producer(&cluster, Routing::ShardAware, producer_config());
    producer.send("t", 0, b"k", b"v").unwrap();
    let error = producer.flush().unwrap_err();
    assert_eq!(
        error.failed[0].error.code(),
        Some(ErrorCode::CORRUPT_MESSAGE)
    );
    assert_eq!(cluster.count(ApiKey::Produce), 1);
}

#[test]
fn acks_none_gets_no_answer_and_flush_returns_once_written() {
    let log = Arc::new(Log::new());
    let broker_log = log.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        broker_log.store(request);
        Action::NoReply
    });
    let config = ProducerConfig {
        acks: Acks::None,
        batch_bytes: 256,
        ..producer_config()
    };
    let mut producer = producer(&cluster, Routing::ShardAware, config);
    for _ in 0..50 {
        producer.send("t", 0, b"", &[0; 40]).unwrap();
    }
    let acks = producer.flush().unwrap();
    assert!(acks.len() > 1);
    assert!(acks.iter().all(|ack| ack.base_offset.is_none()));
    let records: u32 = acks.iter().map(|ack| ack.records).sum();
    assert_eq!(records, 50);
    assert!(eventually(Duration::from_secs(2), || {
        log.batches().iter().map(|b| b.records).sum::<u32>() == 50
    }));
    assert!(log.batches().iter().all(|b| b.acks == Acks::None));
}

#[test]
fn unknown_partitions_and_oversized_records_are_refused_at_send() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(ack(request, ErrorCode::NONE, 0))
    });
    let mut producer = producer(&cluster, Routing::ShardAware, producer_config());
    assert!(matches!(
        producer.send("other", 0, b"", b"v"),
        Err(ClientError::UnknownTopic(_))
    ));
    assert!(matches!(
        producer.send("t", 1, b"", b"v"),
        Err(ClientError::UnknownPartition { partition: 1, .. })
    ));
    let huge = vec![0u8; 2 << 20];
    assert!(matches!(
        producer.send("t", 0, b"", &huge),
        Err(ClientError::Record(_))
    ));
    assert_eq!(producer.records_buffered(), 0);
    assert!(producer.flush().unwrap().is_empty());
    assert_eq!(cluster.count(ApiKey::Produce), 0);
}

#[test]
fn a_bad_config_is_refused_with_its_field() {
    let cluster = Cluster::start(1, "t", &[0], |_, _| Action::NoReply);
    let client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    let result = Producer::new(
        client,
        ProducerConfig {
            max_in_flight: 64,
            ..producer_config()
        },
    );
    assert!(matches!(
        result,
        Err(ClientError::Config {
            field: "producer.max_in_flight",
            ..
        })
    ));
    let bad = ProducerConfig {
        batch_bytes: 2 << 20,
        ..producer_config()
    };
    assert!(matches!(
        bad.validate(),
        Err(ClientError::Config {
            field: "producer.batch_bytes",
            ..
        })
    ));
    // `validate_for` is `Producer::new`'s check, without a client: one slot stays free.
    let connection = ClientConfig::default().connection;
    let window = |max_in_flight| ProducerConfig {
        max_in_flight,
        ..producer_config()
    };
    assert!(
        window(connection.in_flight_max - 1)
            .validate_for(&connection)
            .is_ok()
    );
    assert!(matches!(
        window(connection.in_flight_max).validate_for(&connection),
        Err(ClientError::Config {
            field: "producer.max_in_flight",
            ..
        })
    ));
}
