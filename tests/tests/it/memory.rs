//! Memory topics: records kept in the shards' memory, never on disk; readable as soon as
//! they are appended, bounded by retention, refused the `+fsync` acks, emptied (but kept)
//! by a restart.

use std::time::Duration;

use client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig,
};
use protocol::api::CreateTopicRequest;
use protocol::{ErrorCode, StorageKind};
use ringmq_tests::TestBroker;

use crate::common::read_partition;

fn memory_topic(name: &str, partitions: u32, retention_bytes: Option<u64>) -> CreateTopicRequest {
    CreateTopicRequest {
        retention_bytes,
        storage: StorageKind::Memory,
        ..client::topic_request(name, partitions, 1)
    }
}

fn produce(address: &str, topic: &str, partition: u32, acks: Acks, values: &[String]) {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let config = ProducerConfig {
        acks,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config).unwrap();
    for value in values {
        producer
            .send(topic, partition, b"", value.as_bytes())
            .unwrap();
    }
    producer.flush().unwrap();
}

/// Every value of `topic`/`partition` from its log start to its end.
fn read(address: &str, topic: &str, partition: u32) -> Vec<String> {
    let client = Client::connect(address, ClientConfig::default()).unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    read_partition(&mut consumer, topic, partition)
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn a_memory_topic_serves_what_it_took_refuses_fsync_and_starts_empty_after_a_restart() {
    let mut broker = TestBroker::start();
    let address = broker.address.to_string();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    admin
        .create_topic_with(&memory_topic("m", 2, None))
        .unwrap();
    admin.create_topic("d", 1, 1).unwrap();
    let metadata = admin.metadata().unwrap();
    let topic = metadata.topic("m").unwrap();
    assert_eq!(topic.storage, StorageKind::Memory);
    assert_eq!(
        topic.retention_bytes,
        Some(64 << 20),
        "a memory topic always has a bound"
    );
    assert_eq!(metadata.topic("d").unwrap().storage, StorageKind::Disk);

    // Both partitions (one per shard), acked and fire-and-forget, read back in order.
    produce(&address, "m", 0, Acks::Leader, &values("a", 300));
    produce(&address, "m", 1, Acks::None, &values("b", 300));
    produce(&address, "m", 0, Acks::Leader, &values("c", 5));
    let mut expected = values("a", 300);
    expected.extend(values("c", 5));
    assert_eq!(read(&address, "m", 0), expected);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin.list_offsets("m", 1, OffsetSpec::Latest).unwrap() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "acks=none records never landed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read(&address, "m", 1), values("b", 300));

    // No promise of durability it cannot keep: the fsync policies are refused.
    for acks in [Acks::LeaderFsync, Acks::AllFsync] {
        let client = Client::connect(&address, ClientConfig::default()).unwrap();
        let config = ProducerConfig {
            acks,
            ..ProducerConfig::default()
        };
        let mut producer = Producer::new(client, config).unwrap();
        producer.send("m", 0, b"", b"durable?").unwrap();
        let failed = producer.flush().unwrap_err();
        let codes: Vec<_> = failed
            .failed
            .iter()
            .map(|batch| match &batch.error {
                ClientError::Broker { code, .. } => *code,
                other => panic!("expected a broker error, got {other}"),
            })
            .collect();
        assert_eq!(codes, [ErrorCode::INVALID_ACKS], "{acks:?}");
    }
    assert_eq!(
        read(&address, "m", 0).len(),
        305,
        "nothing refused was stored"
    );

    // Nothing of it touched the disk: no partition directories in any shard's data.
    let on_disk: Vec<String> = walk(broker.data_dir())
        .into_iter()
        .filter(|path| path.contains("m-0") || path.contains("m-1"))
        .collect();
    assert!(
        on_disk.is_empty(),
        "memory topic files on disk: {on_disk:?}"
    );

    // A restart keeps the topic and empties it; it takes records again at once, and the
    // disk topic beside it keeps its own.
    produce(&address, "d", 0, Acks::LeaderFsync, &values("d", 10));
    broker.restart();
    let address = broker.address.to_string();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    let metadata = admin.metadata().unwrap();
    assert_eq!(metadata.topic("m").unwrap().storage, StorageKind::Memory);
    for partition in 0..2 {
        assert_eq!(
            admin
                .list_offsets("m", partition, OffsetSpec::Latest)
                .unwrap(),
            0
        );
    }
    produce(&address, "m", 0, Acks::Leader, &values("e", 3));
    assert_eq!(read(&address, "m", 0), values("e", 3));
    assert_eq!(read(&address, "d", 0), values("d", 10));
    admin.delete_topic("m").unwrap();
    assert!(admin.metadata().unwrap().topic("m").is_none());
}

#[test]
fn retention_bounds_a_memory_topic() {
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    // The tiny profile's 2 MiB segments; keep about two of them.
    admin
        .create_topic_with(&memory_topic("bounded", 1, Some(4 << 20)))
        .unwrap();
    let value = "x".repeat(16 << 10);
    let batch: Vec<String> = (0..64).map(|_| value.clone()).collect();
    for _ in 0..12 {
        produce(&address, "bounded", 0, Acks::Leader, &batch); // 1 MiB each
    }
    // Retention runs in the shard's upkeep (every 500 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let start = admin
            .list_offsets("bounded", 0, OffsetSpec::Earliest)
            .unwrap();
        let end = admin
            .list_offsets("bounded", 0, OffsetSpec::Latest)
            .unwrap();
        assert_eq!(end, 12 * 64);
        let kept_bytes = (end - start) * value.len() as u64;
        if start > 0 && kept_bytes <= (4 << 20) + (2 << 20) {
            assert_eq!(read(&address, "bounded", 0).len() as u64, end - start);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never trimmed: {start}..{end}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replicated_memory_topic_acknowledges_all_once_both_replicas_hold_it() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        println!("SKIPPED: replication factor 2 needs 2 shards, this machine has {cores} core");
        return;
    }
    let broker = TestBroker::start();
    let address = broker.address.to_string();
    let mut admin = Client::connect(&address, ClientConfig::default()).unwrap();
    let mut request = memory_topic("r", 1, None);
    request.replication_factor = 2;
    request.min_insync = 2;
    admin.create_topic_with(&request).unwrap();
    produce(&address, "r", 0, Acks::All, &values("r", 200));
    assert_eq!(read(&address, "r", 0), values("r", 200));
    let metadata = admin.metadata().unwrap();
    let partition = &metadata.topic("r").unwrap().partitions[0];
    assert_eq!(partition.in_sync.len(), 2, "{partition:?}");
    assert_eq!(partition.high_watermark, 200);
}

/// Every path under `dir`, as strings.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}
