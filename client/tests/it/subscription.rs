//! `Subscription` against a fake broker: where it subscribes, skipping, leader moves, lost
//! connections, errors it returns, the retry bound and `close`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use client::{
    Client, ClientConfig, ClientError, ConnectionConfig, RetryPolicy, Routing, StartOffset,
    Subscription,
};
use protocol::api::{
    MetadataResponse, SubscribeDelivery, SubscribeRequest, UnsubscribeRequest, UnsubscribeResponse,
};
use protocol::{ApiKey, ErrorCode, FrameBuf};

use crate::consumer::{batch, offsets};
use crate::peer::{Action, Cluster, Received, api_versions_answer, encode};

const WAIT: Duration = Duration::from_millis(500);

/// Fast retries. `backoff_max` is long on purpose: a subscription that stays open that long
/// counts as served, and a refusal must come well within it on a loaded machine.
fn config(routing: Routing) -> ClientConfig {
    ClientConfig {
        routing,
        retry: RetryPolicy {
            attempts_max: 4,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_secs(2),
            elapsed_max: Duration::from_secs(10),
        },
        ..ClientConfig::default()
    }
}

fn subscription(cluster: &Cluster, routing: Routing, from: StartOffset) -> Subscription {
    let client = Client::connect(&cluster.broker.shared, config(routing)).unwrap();
    Subscription::new(client, "t", 0, from).unwrap()
}

/// The offset a `Subscribe` asked for.
fn subscribed_at(request: &Received) -> u64 {
    let body = request.frame().access::<SubscribeRequest>().unwrap();
    body.offset.to_native()
}

/// A delivery to the subscription that `Subscribe` request `subscription` opened.
fn delivery(
    subscription: u64,
    error: ErrorCode,
    records: Vec<u8>,
    high_watermark: u64,
) -> FrameBuf {
    encode(
        subscription,
        &SubscribeDelivery {
            error,
            high_watermark,
            log_start_offset: 0,
            records,
        },
    )
}

/// Several frames as one write.
fn frames(parts: &[FrameBuf]) -> FrameBuf {
    let mut out = FrameBuf::new();
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// `config`, with requests (the probe's answer included) due within `request_timeout`, which
/// is also how long a subscription's connection may stay silent before it sends a probe.
fn config_timing_out_after(request_timeout: Duration) -> ClientConfig {
    ClientConfig {
        connection: ConnectionConfig {
            request_timeout,
            ..ConnectionConfig::default()
        },
        ..config(Routing::ShardAware)
    }
}

/// Calls `next_records` until it returns records or `limit` passes; panics on an error.
fn first_records(subscription: &mut Subscription, limit: Duration) -> Vec<client::ConsumedRecord> {
    let started = Instant::now();
    // Each turn waits at most WAIT (plus a resubscription's own timeouts).
    while started.elapsed() < limit {
        let records = subscription.next_records(WAIT).unwrap();
        if !records.is_empty() {
            return records;
        }
    }
    Vec::new()
}

#[test]
fn not_leader_moves_the_subscription_to_the_new_leaders_shard_port_at_its_position() {
    let metadata: Arc<OnceLock<Arc<Mutex<MetadataResponse>>>> = Arc::new(OnceLock::new());
    let requested = Arc::new(Mutex::new(Vec::new()));
    let (moved, seen) = (metadata.clone(), requested.clone());
    let cluster = Cluster::start(2, "t", &[0], move |listener, request| {
        assert_eq!(request.api(), ApiKey::Subscribe);
        seen.lock().unwrap().push(subscribed_at(request));
        if listener == 1 {
            // Shard 0 serves 0..5, then loses the partition to shard 1.
            let metadata = moved.get().unwrap();
            metadata.lock().unwrap().topics[0].partitions[0].leader_shard = 1;
            return Action::Reply(frames(&[
                delivery(request.id(), ErrorCode::NONE, batch(0, 5), 5),
                delivery(request.id(), ErrorCode::NOT_LEADER, vec![], 5),
            ]));
        }
        // The new leader's first batch starts before the offset asked for.
        let mut records = batch(3, 4);
        records.extend(batch(7, 3));
        Action::Reply(delivery(request.id(), ErrorCode::NONE, records, 10))
    });
    metadata.set(cluster.metadata.clone()).unwrap();
    // Shared-port routing still subscribes on the leader's own port.
    let mut subscription = subscription(&cluster, Routing::SharedPort, StartOffset::Offset(0));
    assert_eq!(
        offsets(&subscription.next_records(WAIT).unwrap()),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(subscription.position(), 5);
    let records = subscription.next_records(WAIT).unwrap();
    assert_eq!(offsets(&records), [5, 6, 7, 8, 9]);
    assert_eq!(records[0].value, b"v5");
    assert_eq!(subscription.position(), 10);
    assert_eq!(*requested.lock().unwrap(), [0, 5]);
    assert_eq!(cluster.listeners(ApiKey::Subscribe), [1, 2]);
}

#[test]
fn a_lost_connection_is_survived_by_subscribing_again() {
    let subscribes = Arc::new(AtomicUsize::new(0));
    let count = subscribes.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        match count.fetch_add(1, Ordering::SeqCst) {
            0 => Action::Close,
            _ => Action::Reply(delivery(
                request.id(),
                ErrorCode::NONE,
                batch(subscribed_at(request), 3),
                100,
            )),
        }
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(2));
    assert_eq!(
        offsets(&subscription.next_records(WAIT).unwrap()),
        [2, 3, 4]
    );
    assert_eq!(subscribes.load(Ordering::SeqCst), 2);
}

#[test]
fn offset_out_of_range_is_returned_and_never_silently_reset() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        let offset = subscribed_at(request);
        if offset < 100 {
            return Action::Reply(encode(
                request.id(),
                &SubscribeDelivery {
                    error: ErrorCode::OFFSET_OUT_OF_RANGE,
                    high_watermark: 110,
                    log_start_offset: 100,
                    records: vec![],
                },
            ));
        }
        Action::Reply(delivery(request.id(), ErrorCode::NONE, batch(100, 10), 110))
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(5));
    for _ in 0..2 {
        let result = subscription.next_records(WAIT);
        assert!(
            matches!(
                result,
                Err(ClientError::OffsetOutOfRange {
                    offset: 5,
                    log_start_offset: 100,
                    high_watermark: 110,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(subscription.position(), 5);
    }
    // Not retried: one subscribe per call.
    assert_eq!(cluster.count(ApiKey::Subscribe), 2);
    subscription.seek(100);
    let records = subscription.next_records(WAIT).unwrap();
    assert_eq!(offsets(&records), (100..110).collect::<Vec<u64>>());
}

#[test]
fn a_delivery_that_skips_offsets_is_a_protocol_violation() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(delivery(request.id(), ErrorCode::NONE, batch(7, 3), 10))
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(5));
    let result = subscription.next_records(WAIT);
    assert!(
        matches!(&result, Err(ClientError::Protocol { reason, .. }) if reason.contains("offset 7 where 5")),
        "{result:?}"
    );
    assert_eq!(subscription.position(), 5);
}

#[test]
fn a_corrupt_batch_returns_nothing_of_its_delivery_and_the_position_stays() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        let mut records = batch(0, 3);
        records.extend(batch(3, 3));
        let last = records.len() - 1;
        records[last] ^= 0x20;
        Action::Reply(delivery(request.id(), ErrorCode::NONE, records, 6))
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(0));
    let result = subscription.next_records(WAIT);
    assert!(
        matches!(result, Err(ClientError::CorruptBatch { partition: 0, .. })),
        "{result:?}"
    );
    assert_eq!(subscription.position(), 0);
}

#[test]
fn a_subscription_that_keeps_failing_is_reported_after_the_retry_policy() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        Action::Reply(delivery(request.id(), ErrorCode::SHUTTING_DOWN, vec![], 0))
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(0));
    match subscription.next_records(WAIT) {
        Err(ClientError::RetriesExhausted {
            attempts: 4, last, ..
        }) => assert_eq!(last.code(), Some(ErrorCode::SHUTTING_DOWN)),
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(cluster.count(ApiKey::Subscribe), 4);
}

#[test]
fn close_unsubscribes_and_waits_for_the_answer() {
    let subscribed = Arc::new(Mutex::new(None));
    let seen = subscribed.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| match request.api() {
        ApiKey::Subscribe => {
            *seen.lock().unwrap() = Some(request.id());
            Action::Reply(delivery(request.id(), ErrorCode::NONE, batch(0, 2), 2))
        }
        ApiKey::Unsubscribe => {
            let body = request.frame().access::<UnsubscribeRequest>().unwrap();
            assert_eq!(Some(body.subscription.to_native()), *seen.lock().unwrap());
            // A delivery still on its way comes before the answer.
            Action::Reply(frames(&[
                delivery(
                    body.subscription.to_native(),
                    ErrorCode::NONE,
                    batch(2, 1),
                    3,
                ),
                encode(
                    request.id(),
                    &UnsubscribeResponse {
                        error: ErrorCode::NONE,
                    },
                ),
            ]))
        }
        other => panic!("unexpected {other:?}"),
    });
    let mut subscription = subscription(&cluster, Routing::ShardAware, StartOffset::Offset(0));
    assert_eq!(offsets(&subscription.next_records(WAIT).unwrap()), [0, 1]);
    subscription.close().unwrap();
    assert_eq!(cluster.count(ApiKey::Unsubscribe), 1);
}

#[test]
fn a_broker_gone_silent_is_found_out_by_a_probe_and_the_subscription_moves_on() {
    let (subscribes, probes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (subscribe_count, probe_count) = (subscribes.clone(), probes.clone());
    let cluster = Cluster::start(1, "t", &[0], move |_, request| match request.api() {
        // A host that died without closing the connection: it reads, and answers nothing.
        ApiKey::ApiVersions => {
            probe_count.fetch_add(1, Ordering::SeqCst);
            Action::NoReply
        }
        ApiKey::Subscribe if subscribe_count.fetch_add(1, Ordering::SeqCst) == 0 => Action::NoReply,
        ApiKey::Subscribe => Action::Reply(delivery(
            request.id(),
            ErrorCode::NONE,
            batch(subscribed_at(request), 3),
            100,
        )),
        other => panic!("unexpected {other:?}"),
    });
    // A probe after 400 ms of silence, lost 400 ms later.
    let timeout = Duration::from_millis(400);
    let client = Client::connect(&cluster.broker.shared, config_timing_out_after(timeout)).unwrap();
    let started = Instant::now();
    let mut subscription = Subscription::new(client, "t", 0, StartOffset::Offset(2)).unwrap();
    let records = first_records(&mut subscription, Duration::from_secs(5));
    assert_eq!(
        offsets(&records),
        [2, 3, 4],
        "subscribed again at its position"
    );
    assert_eq!(subscribes.load(Ordering::SeqCst), 2);
    assert!(probes.load(Ordering::SeqCst) >= 1);
    assert!(
        started.elapsed() >= timeout * 2,
        "not before the probe timed out: {:?}",
        started.elapsed()
    );
}

#[test]
fn an_idle_subscription_whose_broker_answers_its_probes_stays_open() {
    let subscribed = Arc::new(Mutex::new(None));
    let probes = Arc::new(AtomicUsize::new(0));
    let (seen, probe_count) = (subscribed.clone(), probes.clone());
    let cluster = Cluster::start(1, "t", &[0], move |_, request| match request.api() {
        // Nothing to deliver yet.
        ApiKey::Subscribe => {
            *seen.lock().unwrap() = Some(request.id());
            Action::NoReply
        }
        // The first probe is only answered; records follow the answer to the second.
        ApiKey::ApiVersions if probe_count.fetch_add(1, Ordering::SeqCst) == 0 => {
            Action::Reply(api_versions_answer(request))
        }
        ApiKey::ApiVersions => {
            let subscription = seen.lock().unwrap().unwrap();
            Action::Reply(frames(&[
                api_versions_answer(request),
                delivery(subscription, ErrorCode::NONE, batch(0, 2), 2),
            ]))
        }
        other => panic!("unexpected {other:?}"),
    });
    let client = Client::connect(
        &cluster.broker.shared,
        config_timing_out_after(Duration::from_millis(200)),
    )
    .unwrap();
    let mut subscription = Subscription::new(client, "t", 0, StartOffset::Offset(0)).unwrap();
    let records = first_records(&mut subscription, Duration::from_secs(5));
    assert_eq!(offsets(&records), [0, 1]);
    assert_eq!(probes.load(Ordering::SeqCst), 2);
    assert_eq!(
        cluster.count(ApiKey::Subscribe),
        1,
        "never subscribed again"
    );
}

#[test]
fn a_client_with_too_few_requests_in_flight_for_a_subscription_is_refused() {
    let cluster = Cluster::start(1, "t", &[0], |_, request| {
        panic!("unexpected {:?}", request.api())
    });
    let config = ClientConfig {
        connection: ConnectionConfig {
            in_flight_max: 3,
            ..ConnectionConfig::default()
        },
        ..config(Routing::ShardAware)
    };
    let client = Client::connect(&cluster.broker.shared, config).unwrap();
    let result = Subscription::new(client, "t", 0, StartOffset::Earliest);
    assert!(
        matches!(
            &result,
            Err(ClientError::Config {
                field: "connection.in_flight_max",
                reason,
            }) if reason.contains("below 4")
        ),
        "{result:?}"
    );
    assert_eq!(
        cluster.count(ApiKey::ListOffsets),
        0,
        "refused before asking"
    );
}

#[test]
fn close_fits_beside_a_probe_in_flight_with_the_least_bound() {
    let probes = Arc::new(AtomicUsize::new(0));
    let probe_count = probes.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| match request.api() {
        ApiKey::Subscribe => Action::NoReply,
        // Held: the probe is still in flight when `close` sends its Unsubscribe.
        ApiKey::ApiVersions => {
            probe_count.fetch_add(1, Ordering::SeqCst);
            Action::NoReply
        }
        ApiKey::Unsubscribe => Action::Reply(encode(
            request.id(),
            &UnsubscribeResponse {
                error: ErrorCode::NONE,
            },
        )),
        other => panic!("unexpected {other:?}"),
    });
    // A probe after 1 s of silence, lost at 2 s: `close` comes as soon as it is out.
    let config = ClientConfig {
        connection: ConnectionConfig {
            in_flight_max: 4,
            request_timeout: Duration::from_secs(1),
            ..ConnectionConfig::default()
        },
        ..config(Routing::ShardAware)
    };
    let client = Client::connect(&cluster.broker.shared, config).unwrap();
    let mut subscription = Subscription::new(client, "t", 0, StartOffset::Offset(0)).unwrap();
    let started = Instant::now();
    // Each turn waits 50 ms at most.
    while probes.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no probe");
        let records = subscription
            .next_records(Duration::from_millis(50))
            .unwrap();
        assert!(records.is_empty());
    }
    subscription.close().unwrap();
    assert_eq!(probes.load(Ordering::SeqCst), 1);
    assert_eq!(cluster.count(ApiKey::Unsubscribe), 1);
    assert_eq!(cluster.count(ApiKey::Subscribe), 1);
}

#[test]
fn a_subscription_served_for_backoff_max_ends_its_run_of_failures() {
    let subscribes = Arc::new(AtomicUsize::new(0));
    let count = subscribes.clone();
    let cluster = Cluster::start(1, "t", &[0], move |_, request| {
        assert_eq!(request.api(), ApiKey::Subscribe);
        // Four times in a row, twice what the policy allows without a break: served (silent)
        // for well over backoff_max, then the connection is lost.
        if count.fetch_add(1, Ordering::SeqCst) < 4 {
            std::thread::sleep(Duration::from_millis(200));
            return Action::Close;
        }
        Action::Reply(delivery(request.id(), ErrorCode::NONE, batch(0, 3), 3))
    });
    let config = ClientConfig {
        retry: RetryPolicy {
            attempts_max: 2,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
            elapsed_max: Duration::from_secs(10),
        },
        ..config(Routing::ShardAware)
    };
    let client = Client::connect(&cluster.broker.shared, config).unwrap();
    let mut subscription = Subscription::new(client, "t", 0, StartOffset::Offset(0)).unwrap();
    let records = first_records(&mut subscription, Duration::from_secs(5));
    assert_eq!(offsets(&records), [0, 1, 2]);
    assert_eq!(subscribes.load(Ordering::SeqCst), 5);
}
