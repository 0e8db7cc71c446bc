//! Scripted brokers for the tests, written with `protocol` directly (never the client's code):
//! a [`Peer`] drives one accepted connection from a test thread, and a [`FakeBroker`]
//! serves a shared port and shard ports with a handler per request.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use client::Request;
use protocol::api::{
    ApiVersionRange, ApiVersionsResponse, MetadataResponse, PartitionMetadata, ShardAddress,
    TopicMetadata,
};
use protocol::{
    ApiKey, ErrorCode, Frame, FrameBuf, FrameHeader, StorageKind, decode_frame, encode_frame,
};

/// A request frame as the peer received it, in an aligned buffer of its own.
pub struct Received {
    pub header: FrameHeader,
    buf: FrameBuf,
}

impl Received {
    pub fn frame(&self) -> Frame<'_> {
        decode_frame(&self.buf).unwrap().unwrap().0
    }

    pub fn api(&self) -> ApiKey {
        self.header.api().unwrap()
    }

    pub fn id(&self) -> u64 {
        self.header.correlation_id
    }
}

pub fn encode<T: Request>(correlation_id: u64, body: &T) -> FrameBuf {
    let mut out = FrameBuf::new();
    encode_frame(&mut out, correlation_id, body).unwrap();
    out
}

/// Accumulates bytes and cuts whole frames off the front. Survives read timeouts.
#[derive(Default)]
struct Unframer {
    bytes: Vec<u8>,
}

impl Unframer {
    fn next(&mut self) -> Option<Received> {
        let header = FrameHeader::peek(&self.bytes).unwrap()?;
        let len = header.frame_len as usize;
        if self.bytes.len() < len {
            return None;
        }
        let mut buf = FrameBuf::new();
        buf.extend_from_slice(&self.bytes[..len]);
        self.bytes.drain(..len);
        Some(Received { header, buf })
    }
}

/// One connection, driven step by step by a test.
pub struct Peer {
    pub stream: TcpStream,
    unframer: Unframer,
}

impl Peer {
    pub fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Peer {
            stream,
            unframer: Unframer::default(),
        }
    }

    /// The next request, or `None` once the client closed the connection.
    pub fn read(&mut self) -> Option<Received> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(received) = self.unframer.next() {
                return Some(received);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.unframer.bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("peer read failed: {e}"),
            }
        }
    }

    pub fn reply<T: Request>(&mut self, correlation_id: u64, body: &T) {
        self.write(&encode(correlation_id, body));
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }
}

/// A listener on 127.0.0.1:0 and its `host:port`.
pub fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

/// What a [`FakeBroker`] handler does with a request.
pub enum Action {
    Reply(FrameBuf),
    /// Keep the reply back; deferred replies are written, newest first, once the client has
    /// sent nothing for 50 ms.
    Defer(FrameBuf),
    NoReply,
    /// Close the connection without answering.
    Close,
}

/// Which listener a request came in on: 0 is the shared port, `n` is shard `n - 1`'s port.
pub type Listener = usize;

pub type Handler = dyn Fn(Listener, &Received) -> Action + Send + Sync;

/// A broker made of a handler: a shared port plus one port per shard, a thread per
/// connection. Dropping it stops every thread.
pub struct FakeBroker {
    pub shared: String,
    pub shard_ports: Vec<u16>,
    /// The largest number of deferred replies any connection held at once.
    pub deferred_max: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeBroker {
    pub fn start(shards: usize, handler: Arc<Handler>) -> FakeBroker {
        let stop = Arc::new(AtomicBool::new(false));
        let deferred_max = Arc::new(Mutex::new(0));
        let mut threads = Vec::new();
        let mut addresses = Vec::new();
        for index in 0..=shards {
            let (listener, address) = listen();
            listener.set_nonblocking(true).unwrap();
            addresses.push(address);
            let (stop, handler, deferred_max) =
                (stop.clone(), handler.clone(), deferred_max.clone());
            threads.push(std::thread::spawn(move || {
                accept_loop(index, listener, &stop, &handler, &deferred_max)
            }));
        }
        let port = |address: &String| address.rsplit_once(':').unwrap().1.parse().unwrap();
        FakeBroker {
            shared: addresses[0].clone(),
            shard_ports: addresses[1..].iter().map(port).collect(),
            deferred_max,
            stop,
            threads,
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    index: Listener,
    listener: TcpListener,
    stop: &Arc<AtomicBool>,
    handler: &Arc<Handler>,
    deferred_max: &Arc<Mutex<usize>>,
) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (stop, handler, deferred_max) =
                    (stop.clone(), handler.clone(), deferred_max.clone());
                connections.push(std::thread::spawn(move || {
                    serve(index, stream, &stop, &handler, &deferred_max)
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept failed: {e}"),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve(
    index: Listener,
    mut stream: TcpStream,
    stop: &AtomicBool,
    handler: &Arc<Handler>,
    deferred_max: &Mutex<usize>,
) {
    stream.set_nonblocking(false).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut unframer = Unframer::default();
    let mut deferred: Vec<FrameBuf> = Vec::new();
    let mut chunk = [0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        while let Some(request) = unframer.next() {
            match handler(index, &request) {
                Action::Reply(bytes) => {
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
                Action::Defer(bytes) => {
                    deferred.push(bytes);
                    let mut max = deferred_max.lock().unwrap();
                    *max = (*max).max(deferred.len());
                }
                Action::NoReply => {}
                Action::Close => return,
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => unframer.bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                for bytes in deferred.drain(..).rev() {
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Answers the handshake with every api at the versions this build speaks.
pub fn api_versions(request: &Received) -> Action {
    Action::Reply(api_versions_answer(request))
}

/// The answer [`api_versions`] sends, as bytes.
pub fn api_versions_answer(request: &Received) -> FrameBuf {
    encode(
        request.id(),
        &ApiVersionsResponse {
            error: ErrorCode::NONE,
            broker_version: "fake".into(),
            apis: ApiKey::ALL
                .iter()
                .map(|&api| ApiVersionRange {
                    api_key: api as u16,
                    min_version: api.versions().0,
                    max_version: api.versions().1,
                })
                .collect(),
        },
    )
}

/// Whether `request` is a connection's handshake: its first request, `ApiVersions` with
/// correlation id 1 (the client numbers each connection's requests from 1). A later
/// `ApiVersions` is a subscription's liveness probe.
pub fn is_handshake(request: &Received) -> bool {
    request.api() == ApiKey::ApiVersions && request.id() == 1
}

/// Metadata for one topic whose partition `p` is led by shard `leaders[p]`.
pub fn metadata(broker_ports: &[u16], topic: &str, leaders: &[u16]) -> MetadataResponse {
    MetadataResponse {
        error: ErrorCode::NONE,
        shards: broker_ports
            .iter()
            .enumerate()
            .map(|(shard, &port)| ShardAddress {
                shard: shard as u16,
                // Listening on every interface: the client must use the bootstrap host.
                host: "0.0.0.0".into(),
                port,
            })
            .collect(),
        topics: vec![TopicMetadata {
            error: ErrorCode::NONE,
            name: topic.into(),
            replication_factor: 1,
            min_insync: 1,
            retention_ms: None,
            retention_bytes: None,
            storage: StorageKind::Disk,
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(partition, &leader_shard)| PartitionMetadata {
                    error: ErrorCode::NONE,
                    partition: partition as u32,
                    leader_shard,
                    leader_epoch: 1,
                    replicas: vec![leader_shard],
                    in_sync: vec![leader_shard],
                    log_start_offset: 0,
                    high_watermark: 0,
                    log_end_offset: 0,
                    high_watermark_synced: 0,
                    followers: vec![],
                })
                .collect(),
        }],
    }
}

/// Polls `condition` every millisecond for up to `limit`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    condition()
}

/// A fake broker with metadata for one topic, that logs every request it gets.
pub struct Cluster {
    pub broker: FakeBroker,
    /// What `Metadata` answers; tests may change it (move a leader).
    pub metadata: Arc<Mutex<MetadataResponse>>,
    /// Every request, in arrival order: the listener it came in on and its api.
    pub log: Arc<Mutex<Vec<(Listener, ApiKey)>>>,
}

impl Cluster {
    /// `shards` shard ports plus the shared port; partition `p` of `topic` is led by shard
    /// `leaders[p]`. `on` answers everything but the handshake and metadata (a later
    /// `ApiVersions`, a subscription's probe, goes to `on` too).
    pub fn start(
        shards: usize,
        topic: &str,
        leaders: &[u16],
        on: impl Fn(Listener, &Received) -> Action + Send + Sync + 'static,
    ) -> Cluster {
        let metadata = Arc::new(Mutex::new(MetadataResponse {
            error: ErrorCode::NONE,
            shards: vec![],
            topics: vec![],
        }));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = {
            let (metadata, log) = (metadata.clone(), log.clone());
            Arc::new(move |listener: Listener, request: &Received| {
                log.lock().unwrap().push((listener, request.api()));
                match request.api() {
                    _ if is_handshake(request) => api_versions(request),
                    ApiKey::Metadata => {
                        let answer = metadata.lock().unwrap().clone();
                        Action::Reply(encode(request.id(), &answer))
                    }
                    _ => on(listener, request),
                }
            })
        };
        let broker = FakeBroker::start(shards, handler);
        *metadata.lock().unwrap() = self::metadata(&broker.shard_ports, topic, leaders);
        Cluster {
            broker,
            metadata,
            log,
        }
    }

    /// How many requests of `api` arrived, on any listener.
    pub fn count(&self, api: ApiKey) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, seen)| *seen == api)
            .count()
    }

    /// The listeners `api` requests arrived on, in order.
    pub fn listeners(&self, api: ApiKey) -> Vec<Listener> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, seen)| *seen == api)
            .map(|(listener, _)| *listener)
            .collect()
    }
}
