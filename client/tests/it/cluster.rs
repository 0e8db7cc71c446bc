//! `Client` against a fake broker: routing, metadata, control calls.

use std::time::Duration;

use client::{Client, ClientConfig, ClientError, RetryPolicy, Routing};
use protocol::api::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicResponse, ListOffsetsRequest,
    ListOffsetsResponse,
};
use protocol::{ApiKey, ErrorCode, OffsetSpec};

use crate::peer::{Action, Cluster, Received, encode};

pub fn config(routing: Routing) -> ClientConfig {
    ClientConfig {
        routing,
        retry: RetryPolicy {
            attempts_max: 4,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            elapsed_max: Duration::from_secs(5),
        },
        ..ClientConfig::default()
    }
}

/// Answers `ListOffsets` with `1000 * listener + partition`, so a test can see where each
/// request went.
fn where_it_went(listener: usize, request: &Received) -> Action {
    let body = request.frame().access::<ListOffsetsRequest>().unwrap();
    Action::Reply(encode(
        request.id(),
        &ListOffsetsResponse {
            error: ErrorCode::NONE,
            offset: 1000 * listener as u64 + u64::from(body.partition.to_native()),
            timestamp_ms: 0,
        },
    ))
}

#[test]
fn shard_aware_routing_goes_to_the_leaders_own_port() {
    let cluster = Cluster::start(2, "t", &[0, 1, 1], where_it_went);
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    let offsets: Vec<u64> = (0..3)
        .map(|p| client.list_offsets("t", p, OffsetSpec::Latest).unwrap())
        .collect();
    // Shard 0 listens on listener 1, shard 1 on listener 2.
    assert_eq!(offsets, [1000, 2001, 2002]);
    let port = cluster.broker.shard_ports[1];
    assert_eq!(
        client.partition_address("t", 2).unwrap(),
        format!("127.0.0.1:{port}")
    );
    // One handshake per connection: shared port, shard 0, shard 1.
    assert_eq!(cluster.count(ApiKey::ApiVersions), 3);
}

#[test]
fn shared_port_routing_sends_everything_to_the_bootstrap_address() {
    let cluster = Cluster::start(2, "t", &[0, 1, 1], where_it_went);
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::SharedPort)).unwrap();
    let offsets: Vec<u64> = (0..3)
        .map(|p| client.list_offsets("t", p, OffsetSpec::Latest).unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2]);
    assert_eq!(cluster.count(ApiKey::ApiVersions), 1);
}

#[test]
fn shared_port_routing_needs_no_shard_address_in_the_metadata() {
    let cluster = Cluster::start(2, "t", &[1], where_it_went);
    cluster.metadata.lock().unwrap().shards.clear();
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::SharedPort)).unwrap();
    assert_eq!(client.list_offsets("t", 0, OffsetSpec::Latest).unwrap(), 0);
    assert_eq!(
        client.partition_address("t", 0).unwrap(),
        cluster.broker.shared
    );
    // The partition must still exist.
    assert!(matches!(
        client.partition_address("t", 1),
        Err(ClientError::UnknownPartition { partition: 1, .. })
    ));
    // Shard-aware routing does need it.
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    assert!(matches!(
        client.partition_address("t", 0),
        Err(ClientError::UnknownShard(1))
    ));
}

#[test]
fn metadata_lists_topics_and_unknown_partitions_are_named() {
    let cluster = Cluster::start(1, "orders", &[0, 0], where_it_went);
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    assert_eq!(client.list_topics().unwrap(), ["orders"]);
    assert_eq!(client.metadata().unwrap().shards().len(), 1);
    assert!(matches!(
        client.list_offsets("nope", 0, OffsetSpec::Earliest),
        Err(ClientError::UnknownTopic(ref topic)) if topic == "nope"
    ));
    assert!(matches!(
        client.list_offsets("orders", 2, OffsetSpec::Earliest),
        Err(ClientError::UnknownPartition { partition: 2, .. })
    ));
}

#[test]
fn list_offsets_retries_not_leader_after_refreshing_metadata() {
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    let cluster = Cluster::start(1, "t", &[0], move |listener, request| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            return Action::Reply(encode(
                request.id(),
                &ListOffsetsResponse {
                    error: ErrorCode::NOT_LEADER,
                    offset: 0,
                    timestamp_ms: 0,
                },
            ));
        }
        where_it_went(listener, request)
    });
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    let refreshes = client.metadata_refreshes();
    assert_eq!(
        client.list_offsets("t", 0, OffsetSpec::Latest).unwrap(),
        1000
    );
    assert_eq!(cluster.count(ApiKey::ListOffsets), 3);
    assert_eq!(client.metadata_refreshes(), refreshes + 2);
}

#[test]
fn list_offsets_gives_up_after_the_policy_attempts() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(encode(
            request.id(),
            &ListOffsetsResponse {
                error: ErrorCode::SHUTTING_DOWN,
                offset: 0,
                timestamp_ms: 0,
            },
        ))
    });
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    let result = client.list_offsets("t", 0, OffsetSpec::Latest);
    assert!(
        matches!(
            result,
            Err(ClientError::RetriesExhausted { attempts: 4, .. })
        ),
        "{result:?}"
    );
    assert_eq!(result.unwrap_err().code(), Some(ErrorCode::SHUTTING_DOWN));
    assert_eq!(cluster.count(ApiKey::ListOffsets), 4);
}

#[test]
fn create_and_delete_report_the_brokers_code_and_message() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| match request.api() {
        ApiKey::CreateTopic => {
            let body = request.frame().deserialize::<CreateTopicRequest>().unwrap();
            let (error, message) = if body.name == "t" {
                (
                    ErrorCode::TOPIC_ALREADY_EXISTS,
                    "topic 't' exists".to_string(),
                )
            } else {
                assert_eq!(
                    (body.partitions, body.replication_factor, body.min_insync),
                    (6, 3, 2)
                );
                (ErrorCode::NONE, String::new())
            };
            Action::Reply(encode(
                request.id(),
                &CreateTopicResponse { error, message },
            ))
        }
        ApiKey::DeleteTopic => Action::Reply(encode(
            request.id(),
            &DeleteTopicResponse {
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                message: "no such topic".into(),
            },
        )),
        other => panic!("unexpected {other:?}"),
    });
    let mut client = Client::connect(&cluster.broker.shared, config(Routing::ShardAware)).unwrap();
    client.create_topic("fresh", 6, 3).unwrap();
    let error = client.create_topic("t", 1, 1).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TOPIC_ALREADY_EXISTS));
    assert!(error.to_string().contains("topic 't' exists"), "{error}");
    let error = client.delete_topic("gone").unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION));
    // A name the broker would refuse never leaves the client.
    assert!(matches!(
        client.create_topic("../etc", 1, 1),
        Err(ClientError::InvalidName(_))
    ));
    assert_eq!(cluster.count(ApiKey::CreateTopic), 2);
}

#[test]
fn a_dead_bootstrap_address_is_a_connect_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let result = Client::connect(&address, config(Routing::ShardAware));
    match result {
        Err(ClientError::RetriesExhausted { attempts, last, .. }) => {
            assert_eq!(attempts, 4);
            assert!(matches!(*last, ClientError::Connect { .. }), "{last:?}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
}
