//! `Connection` against a scripted peer: correlation, framing over TCP, failures, timeouts.

use std::thread;
use std::time::{Duration, Instant};

use client::{ClientError, Connection, ConnectionConfig};
use protocol::api::{
    ApiVersionRange, ApiVersionsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataResponse, ProduceRequest, SubscribeDelivery, SubscribeRequest,
};
use protocol::{Acks, ApiKey, DecodeError, ErrorCode, OffsetSpec};

use crate::peer::{Peer, encode, listen};

fn config() -> ConnectionConfig {
    ConnectionConfig {
        request_timeout: Duration::from_secs(5),
        ..ConnectionConfig::default()
    }
}

fn list_offsets(partition: u32) -> ListOffsetsRequest {
    ListOffsetsRequest {
        topic: "t".into(),
        partition,
        spec: OffsetSpec::Latest,
    }
}

fn offset_reply(offset: u64) -> ListOffsetsResponse {
    ListOffsetsResponse {
        error: ErrorCode::NONE,
        offset,
        timestamp_ms: 0,
    }
}

/// Reads the request's partition: the peers below answer with `partition * 100`.
fn requested_partition(request: &crate::peer::Received) -> u32 {
    request
        .frame()
        .access::<ListOffsetsRequest>()
        .unwrap()
        .partition
        .to_native()
}

fn offset_of(response: &client::Response) -> u64 {
    response
        .access::<ListOffsetsResponse>()
        .unwrap()
        .offset
        .to_native()
}

#[test]
fn responses_in_any_order_are_matched_by_correlation_id() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let requests: Vec<_> = (0..4).map(|_| peer.read().unwrap()).collect();
        // Answer newest first, all in one write.
        let mut bytes = Vec::new();
        for request in requests.iter().rev() {
            bytes.extend_from_slice(&encode(
                request.id(),
                &offset_reply(u64::from(requested_partition(request)) * 100),
            ));
        }
        peer.write(&bytes);
        assert!(peer.read().is_none(), "client sent more than it should");
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let ids: Vec<u64> = (0..4)
        .map(|p| connection.send(&list_offsets(p)).unwrap())
        .collect();
    assert_eq!(connection.in_flight(), 4);
    // Waiting for the oldest keeps the three that arrived before it.
    assert_eq!(offset_of(&connection.wait(ids[0]).unwrap()), 0);
    assert_eq!(connection.in_flight(), 3);
    assert_eq!(offset_of(&connection.wait(ids[2]).unwrap()), 200);
    let mut rest: Vec<(u64, u64)> = (0..2)
        .map(|_| {
            let response = connection.recv().unwrap().unwrap();
            (response.correlation_id(), offset_of(&response))
        })
        .collect();
    rest.sort();
    assert_eq!(rest, [(ids[1], 100), (ids[3], 300)]);
    assert!(
        connection.recv().unwrap().is_none(),
        "nothing left in flight"
    );
    assert!(matches!(
        connection.wait(ids[0]),
        Err(ClientError::NotInFlight { .. })
    ));
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn frames_split_across_many_reads_are_reassembled() {
    let records: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let expected = records.clone();
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let small = peer.read().unwrap();
        let large = peer.read().unwrap();
        // The small reply byte by byte, with pauses so the reads really are split.
        let bytes = encode(small.id(), &offset_reply(7));
        for (i, byte) in bytes.iter().enumerate() {
            peer.write(&[*byte]);
            if i % 8 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        // The large one (over the 64 KiB shared buffer) in uneven pieces.
        let bytes = encode(
            large.id(),
            &FetchResponse {
                error: ErrorCode::NONE,
                high_watermark: 1,
                log_start_offset: 0,
                records,
            },
        );
        for piece in bytes.chunks(7_919) {
            peer.write(piece);
            thread::sleep(Duration::from_millis(1));
        }
        assert!(peer.read().is_none());
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let small = connection.send(&list_offsets(0)).unwrap();
    let large = connection
        .send(&FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .unwrap();
    assert_eq!(offset_of(&connection.wait(small).unwrap()), 7);
    let response = connection.wait(large).unwrap();
    let fetch = response.access::<FetchResponse>().unwrap();
    assert_eq!(fetch.records.as_slice(), &expected[..]);
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn a_corrupt_frame_closes_the_connection() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let request = peer.read().unwrap();
        let mut bytes = encode(request.id(), &offset_reply(1)).to_vec();
        bytes[40] ^= 0x10; // inside the body: the body crc no longer holds
        peer.write(&bytes);
        assert!(peer.read().is_none(), "the client must hang up");
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let id = connection.send(&list_offsets(0)).unwrap();
    let result = connection.wait(id);
    assert!(
        matches!(
            result,
            Err(ClientError::Decode {
                source: DecodeError::BodyChecksum { .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert!(connection.is_closed());
    assert!(matches!(
        connection.send(&list_offsets(0)),
        Err(ClientError::Disconnected { .. })
    ));
    peer.join().unwrap();
}

#[test]
fn a_peer_closing_mid_frame_is_reported() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let request = peer.read().unwrap();
        let bytes = encode(request.id(), &offset_reply(1));
        peer.write(&bytes[..bytes.len() / 2]);
        // Dropping the peer closes the socket with half a frame sent.
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let id = connection.send(&list_offsets(0)).unwrap();
    match connection.wait(id) {
        Err(ClientError::Disconnected { reason, .. }) => {
            assert!(reason.contains("middle of a frame"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(connection.is_closed());
    peer.join().unwrap();
}

#[test]
fn a_peer_closing_between_frames_is_reported() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        peer.read().unwrap();
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let id = connection.send(&list_offsets(0)).unwrap();
    match connection.wait(id) {
        Err(ClientError::Disconnected { reason, .. }) => {
            assert!(!reason.contains("middle"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    peer.join().unwrap();
}

#[test]
fn a_late_response_times_out_within_bounds_and_closes() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let _request = peer.read().unwrap();
        // Still silent when the client gives up; it hangs up rather than wait.
        assert!(peer.read().is_none());
    });
    let timeout = Duration::from_millis(150);
    let mut connection = Connection::connect(
        &address,
        ConnectionConfig {
            request_timeout: timeout,
            ..config()
        },
    )
    .unwrap();
    let started = Instant::now();
    let id = connection.send(&list_offsets(0)).unwrap();
    let result = connection.wait(id);
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Timeout { api: ApiKey::ListOffsets, correlation_id, timeout_ms: 150, .. }) if correlation_id == id),
        "{result:?}"
    );
    assert!(waited >= timeout, "gave up after {waited:?}");
    assert!(waited < timeout * 4, "gave up only after {waited:?}");
    assert!(connection.is_closed());
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn poll_gives_up_without_closing_while_the_request_is_young() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let request = peer.read().unwrap();
        thread::sleep(Duration::from_millis(100));
        peer.reply(request.id(), &offset_reply(5));
        assert!(peer.read().is_none());
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    assert!(connection.poll(Duration::from_millis(5)).unwrap().is_none());
    let id = connection.send(&list_offsets(0)).unwrap();
    let started = Instant::now();
    assert!(
        connection
            .poll(Duration::from_millis(20))
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(!connection.is_closed());
    let response = connection.wait(id).unwrap();
    assert_eq!(offset_of(&response), 5);
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn a_response_nobody_asked_for_is_a_protocol_violation() {
    for wrong_api in [false, true] {
        let (listener, address) = listen();
        let peer = thread::spawn(move || {
            let mut peer = Peer::accept(&listener);
            let request = peer.read().unwrap();
            if wrong_api {
                let metadata = MetadataResponse {
                    error: ErrorCode::NONE,
                    shards: vec![],
                    topics: vec![],
                };
                peer.reply(request.id(), &metadata);
            } else {
                peer.reply(request.id() + 1000, &offset_reply(1));
            }
            assert!(peer.read().is_none());
        });
        let mut connection = Connection::connect(&address, config()).unwrap();
        let id = connection.send(&list_offsets(0)).unwrap();
        let result = connection.wait(id);
        match result {
            Err(ClientError::Protocol { reason, .. }) => {
                let expected = if wrong_api {
                    "carries api"
                } else {
                    "not in flight"
                };
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected Protocol, got {other:?}"),
        }
        assert!(connection.is_closed());
        drop(connection);
        peer.join().unwrap();
    }
}

#[test]
fn requests_in_flight_are_bounded() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let mut answered = 0;
        while let Some(request) = peer.read() {
            peer.reply(request.id(), &offset_reply(request.id()));
            answered += 1;
        }
        answered
    });
    let mut connection = Connection::connect(
        &address,
        ConnectionConfig {
            in_flight_max: 2,
            ..config()
        },
    )
    .unwrap();
    let first = connection.send(&list_offsets(0)).unwrap();
    connection.send(&list_offsets(0)).unwrap();
    assert!(matches!(
        connection.send(&list_offsets(0)),
        Err(ClientError::InFlightFull {
            in_flight_max: 2,
            ..
        })
    ));
    assert!(
        !connection.is_closed(),
        "a full table is not a broken connection"
    );
    connection.wait(first).unwrap();
    let third = connection.send(&list_offsets(0)).unwrap();
    assert_eq!(offset_of(&connection.wait(third).unwrap()), third);
    // Received but not yet taken still counts as in flight.
    assert_eq!(connection.in_flight(), 1);
    drop(connection);
    assert_eq!(peer.join().unwrap(), 3);
}

#[test]
fn the_handshake_refuses_apis_the_broker_does_not_serve() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let hello = peer.read().unwrap();
        assert_eq!(hello.api(), ApiKey::ApiVersions);
        peer.reply(
            hello.id(),
            &ApiVersionsResponse {
                error: ErrorCode::NONE,
                broker_version: "old".into(),
                apis: vec![ApiVersionRange {
                    api_key: ApiKey::ListOffsets as u16,
                    min_version: 0,
                    max_version: 0,
                }],
            },
        );
        let mut seen = Vec::new();
        while let Some(request) = peer.read() {
            seen.push(request.api());
            peer.reply(request.id(), &offset_reply(1));
        }
        seen
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let versions = connection.handshake("test").unwrap();
    assert_eq!(versions.broker_version, "old");
    let produce = ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: Acks::Leader,
        timeout_ms: 1000,
        batch: vec![],
    };
    assert!(matches!(
        connection.send(&produce),
        Err(ClientError::UnsupportedApi {
            api: ApiKey::Produce,
            version: 0,
            ..
        })
    ));
    let id = connection.send(&list_offsets(0)).unwrap();
    connection.wait(id).unwrap();
    drop(connection);
    // The refused produce never reached the wire.
    assert_eq!(peer.join().unwrap(), [ApiKey::ListOffsets]);
}

#[test]
fn an_oversized_frame_header_is_refused_before_its_body_arrives() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let request = peer.read().unwrap();
        let mut header = encode(request.id(), &offset_reply(1))[..32].to_vec();
        header[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
        let crc = crc32c::crc32c(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        peer.write(&header);
        // No body follows: the client must decide from the header alone.
        assert!(peer.read().is_none());
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let id = connection.send(&list_offsets(0)).unwrap();
    let started = Instant::now();
    let result = connection.wait(id);
    assert!(
        matches!(
            result,
            Err(ClientError::Decode {
                source: DecodeError::FrameTooLarge { .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn connecting_to_a_closed_port_is_a_connect_error() {
    let (listener, address) = listen();
    drop(listener);
    let result = Connection::connect(&address, config());
    assert!(
        matches!(result, Err(ClientError::Connect { ref address, .. }) if !address.is_empty()),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_retriable());
}

#[test]
fn a_bad_config_names_its_field() {
    let result = Connection::connect(
        "127.0.0.1:1",
        ConnectionConfig {
            in_flight_max: 0,
            ..config()
        },
    );
    assert!(matches!(
        result,
        Err(ClientError::Config {
            field: "connection.in_flight_max",
            ..
        })
    ));
}

#[test]
fn answers_received_before_a_failure_can_still_be_taken() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let first = peer.read().unwrap();
        let second = peer.read().unwrap();
        peer.reply(first.id(), &offset_reply(1));
        peer.reply(second.id(), &offset_reply(2));
        // The third request is never answered: the peer hangs up.
        peer.read().unwrap();
    });
    let mut connection = Connection::connect(&address, config()).unwrap();
    let first = connection.send(&list_offsets(0)).unwrap();
    let second = connection.send(&list_offsets(0)).unwrap();
    assert_eq!(offset_of(&connection.wait(second).unwrap()), 2);
    let third = connection.send(&list_offsets(0)).unwrap();
    assert!(matches!(
        connection.wait(third),
        Err(ClientError::Disconnected { .. })
    ));
    let kept = connection.take_received().unwrap();
    assert_eq!((kept.correlation_id(), offset_of(&kept)), (first, 1));
    assert!(connection.take_received().is_none());
    peer.join().unwrap();
}

fn subscribe_request() -> SubscribeRequest {
    SubscribeRequest {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
    }
}

/// A delivery that carries `high_watermark`, so a test can tell deliveries apart.
fn delivery(high_watermark: u64) -> SubscribeDelivery {
    SubscribeDelivery {
        error: ErrorCode::NONE,
        high_watermark,
        log_start_offset: 0,
        records: vec![],
    }
}

fn watermark_of(response: &client::Response) -> u64 {
    response
        .access::<SubscribeDelivery>()
        .unwrap()
        .high_watermark
        .to_native()
}

#[test]
fn a_stream_takes_responses_under_one_id_with_no_deadline_until_it_ends() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let subscribe = peer.read().unwrap();
        assert_eq!(subscribe.api(), ApiKey::Subscribe);
        peer.reply(subscribe.id(), &delivery(1));
        peer.reply(subscribe.id(), &delivery(2));
        // Longer than the request timeout: a stream has no deadline.
        thread::sleep(Duration::from_millis(400));
        peer.reply(subscribe.id(), &delivery(3));
        let request = peer.read().unwrap();
        peer.reply(request.id(), &offset_reply(7));
        // The client ended the stream: a delivery now answers nothing in flight.
        let request = peer.read().unwrap();
        peer.reply(subscribe.id(), &delivery(4));
        peer.reply(request.id(), &offset_reply(8));
        assert!(peer.read().is_none());
    });
    let mut connection = Connection::connect(
        &address,
        ConnectionConfig {
            request_timeout: Duration::from_millis(200),
            ..config()
        },
    )
    .unwrap();
    let stream = connection.send_stream(&subscribe_request()).unwrap();
    assert_eq!(connection.in_flight(), 1);
    let mut watermarks = Vec::new();
    for _ in 0..3 {
        let response = connection.poll(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(response.correlation_id(), stream);
        watermarks.push(watermark_of(&response));
    }
    assert_eq!(watermarks, [1, 2, 3]);
    // Nothing more yet: the wait ends, the stream stays open.
    assert!(
        connection
            .poll(Duration::from_millis(20))
            .unwrap()
            .is_none()
    );
    assert!(!connection.is_closed());
    assert_eq!(connection.in_flight(), 1);
    // Requests still work beside the stream.
    let id = connection.send(&list_offsets(0)).unwrap();
    assert_eq!(offset_of(&connection.wait(id).unwrap()), 7);

    assert!(connection.end_stream(stream));
    assert!(!connection.end_stream(stream), "it ended already");
    assert_eq!(connection.in_flight(), 0);
    let id = connection.send(&list_offsets(0)).unwrap();
    match connection.wait(id) {
        Err(ClientError::Protocol { reason, .. }) => {
            assert!(reason.contains("not in flight"), "{reason}")
        }
        other => panic!("expected Protocol, got {other:?}"),
    }
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn wait_keeps_no_more_stream_responses_than_the_bound() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let subscribe = peer.read().unwrap();
        let request = peer.read().unwrap();
        for watermark in 1..=3 {
            peer.reply(subscribe.id(), &delivery(watermark));
        }
        peer.reply(request.id(), &offset_reply(9));
        assert!(peer.read().is_none());
    });
    let mut connection = Connection::connect(
        &address,
        ConnectionConfig {
            in_flight_max: 3,
            ..config()
        },
    )
    .unwrap();
    connection.send_stream(&subscribe_request()).unwrap();
    let id = connection.send(&list_offsets(0)).unwrap();
    // Each turn either answers or takes one of the three deliveries.
    let mut taken = Vec::new();
    let mut answer = None;
    for _ in 0..10 {
        match connection.wait(id) {
            Ok(response) => {
                answer = Some(offset_of(&response));
                break;
            }
            Err(ClientError::InFlightFull { .. }) => {
                assert!(!connection.is_closed(), "a full table is not a failure");
                assert_eq!(connection.in_flight(), 3);
                taken.push(watermark_of(&connection.take_received().unwrap()));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answer, Some(9));
    // One delivery fits beside the stream and the request; each take made room for the next.
    assert_eq!(taken, [1, 2, 3]);
    assert_eq!(connection.in_flight(), 1, "the stream");
    drop(connection);
    peer.join().unwrap();
}

#[test]
fn with_a_stream_open_requests_leave_a_place_for_its_responses() {
    let (listener, address) = listen();
    let peer = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let subscribe = peer.read().unwrap();
        peer.reply(subscribe.id(), &delivery(1));
        let request = peer.read().unwrap();
        assert_eq!(request.api(), ApiKey::ListOffsets);
        peer.reply(request.id(), &offset_reply(5));
        assert!(
            peer.read().is_none(),
            "the refused requests never reached the wire"
        );
    });
    let mut connection = Connection::connect(
        &address,
        ConnectionConfig {
            in_flight_max: 2,
            ..config()
        },
    )
    .unwrap();
    let stream = connection.send_stream(&subscribe_request()).unwrap();
    // Sent, this request would fill the table: `wait` could then read nothing, and a
    // delivery ahead of its answer could never be taken.
    assert!(matches!(
        connection.send(&list_offsets(0)),
        Err(ClientError::InFlightFull {
            in_flight_max: 2,
            ..
        })
    ));
    assert!(!connection.is_closed(), "a full table is not a failure");
    let response = connection.poll(Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!(watermark_of(&response), 1);
    assert!(connection.end_stream(stream));
    // With no stream open, both places serve requests; a stream needs one free beside it.
    let id = connection.send(&list_offsets(0)).unwrap();
    assert!(matches!(
        connection.send_stream(&subscribe_request()),
        Err(ClientError::InFlightFull { .. })
    ));
    assert_eq!(offset_of(&connection.wait(id).unwrap()), 5);
    drop(connection);
    peer.join().unwrap();
}
