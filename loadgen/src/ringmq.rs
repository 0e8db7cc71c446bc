//! The `ringmq://` target: topics created through the client crate, then pinned workers that
//! each drive their producers' and consumers' connections through one io_uring ring.
//!
//! Produce frames are built once per (topic, messages per request) and patched per send:
//! partition, each message's stamp (intended send time and sequence), key, batch timestamps,
//! then the batch crc, body crc and header crc are re-sealed. Nothing is re-encoded on the
//! send path. Consumers long-poll fetches and read the stamps in place.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use client::{Client, ClientConfig};
use protocol::api::{
    ArchivedProduceResponse, ArchivedSubscribeDelivery, CreateTopicRequest, ProduceRequest,
    ProduceResponse, SubscribeDelivery, SubscribeRequest,
};
use protocol::batch::BATCH_CRC_START;
use protocol::limits::FRAME_HEADER_BYTES;
use protocol::{Acks, ApiKey, BatchView, Batches, FrameBuf, decode_frame, encode_frame};

use crate::plan::{DRAIN_MAX, DRAIN_QUIET, Plan, Window, topic_name};
use crate::rate::{Clock, Nanos, Schedule};
use crate::stats::{Latency, Live, Stats};
use crate::uring::Transport;
use crate::workload::{KeyDistributor, Rate};

/// Bytes of a key when the workload uses keys (a little-endian u64).
const KEY_BYTES: usize = 8;

/// Most bytes of one delivery of a consumer's subscription.
const DELIVERY_BYTES: u32 = 1 << 20;

/// Most messages one producer takes from its schedule per loop turn, so one far-behind
/// producer cannot starve the ring's completions.
const MESSAGES_PER_TURN_MAX: u64 = 4096;

/// Unsent bytes on a connection above which an unacknowledged producer (`acks=none`) waits:
/// its only back-pressure is the socket.
const UNSENT_BYTES_MAX: usize = 4 << 20;

/// Bytes of produce-frame templates a worker keeps; past it, frames are encoded per send.
const TEMPLATE_BYTES_MAX: usize = 256 << 20;

/// How long the broker may take to answer a produce before it reports `Timeout`.
const PRODUCE_TIMEOUT_MS: u32 = 30_000;

// Fixed positions in the frame header and the batch header (protocol/src/frame.rs and
// protocol/src/batch.rs document both layouts; protocol exports no setters for these).
const FRAME_AT_BODY_CRC: usize = 24;
const BATCH_AT_CRC: usize = 12;
const BATCH_AT_FIRST_TIMESTAMP: usize = 32;
const BATCH_AT_MAX_TIMESTAMP: usize = 40;

/// What a ringmq target is: the broker's shared `host:port`.
#[derive(Debug, Clone)]
pub struct Ringmq {
    pub address: String,
}

/// A produce frame for one topic with a fixed number of records, and where to patch it.
#[derive(Debug, Clone)]
pub struct Template {
    frame: FrameBuf,
    partition_at: usize,
    batch_at: usize,
    batch_len: usize,
    /// Frame offset of each record's key (empty keys: unused) and value.
    keys_at: Vec<usize>,
    values_at: Vec<usize>,
    body_len: usize,
}

/// One message in a request: its intended send time and its stamp sequence.
#[derive(Debug, Clone, Copy)]
struct Message {
    intended_ns: Nanos,
    sequence: u64,
    key: u64,
}

impl Template {
    /// Builds the frame for `count` records of `payload` (keys of `key_bytes`, 0 or 8).
    pub fn build(
        topic: &str,
        acks: Acks,
        count: usize,
        payload: &[u8],
        key_bytes: usize,
    ) -> anyhow::Result<Template> {
        let mut builder = protocol::BatchBuilder::new();
        let key = vec![0u8; key_bytes];
        let now_ms = wall_clock_ms();
        for _ in 0..count {
            builder
                .append(now_ms, &key, payload, &[])
                .map_err(|e| anyhow!("building a {count}-record batch: {e}"))?;
        }
        let batch = builder
            .seal()
            .map_err(|e| anyhow!("sealing a batch: {e}"))?
            .to_vec();
        let request = ProduceRequest {
            topic: topic.to_string(),
            partition: 0,
            acks,
            timeout_ms: PRODUCE_TIMEOUT_MS,
            batch,
        };
        let mut frame = FrameBuf::new();
        encode_frame(&mut frame, 0, &request).map_err(|e| anyhow!("encoding a produce: {e}"))?;
        let base = frame.as_ptr() as usize;
        let (decoded, _) = decode_frame(&frame)
            .map_err(|e| anyhow!("re-reading our own frame: {e}"))?
            .ok_or_else(|| anyhow!("our own frame is incomplete"))?;
        let archived = decoded
            .access::<ProduceRequest>()
            .map_err(|e| anyhow!("re-reading our own produce: {e}"))?;
        let partition_at = std::ptr::addr_of!(archived.partition) as usize - base;
        let batch_bytes: &[u8] = archived.batch.as_slice();
        let batch_at = batch_bytes.as_ptr() as usize - base;
        let view = BatchView::new(batch_bytes).map_err(|e| anyhow!("our own batch: {e}"))?;
        let mut keys_at = Vec::with_capacity(count);
        let mut values_at = Vec::with_capacity(count);
        for record in view.records() {
            keys_at.push(record.key.as_ptr() as usize - base);
            values_at.push(record.value.as_ptr() as usize - base);
        }
        let body_len = decoded.header.body_len as usize;
        Ok(Template {
            batch_len: batch_bytes.len(),
            frame,
            partition_at,
            batch_at,
            keys_at,
            values_at,
            body_len,
        })
    }

    /// Stamps `messages` (at most the template's record count) and re-seals the frame.
    fn patch(
        &mut self,
        partition: u32,
        messages: &[Message],
        key_bytes: usize,
        correlation_id: u64,
    ) {
        let frame = self.frame.as_mut_slice();
        put(frame, self.partition_at, &partition.to_le_bytes());
        for ((message, value_at), key_at) in messages.iter().zip(&self.values_at).zip(&self.keys_at)
        {
            put(frame, *value_at, &message.intended_ns.to_le_bytes());
            put(frame, value_at + 8, &message.sequence.to_le_bytes());
            if key_bytes == KEY_BYTES {
                put(frame, *key_at, &message.key.to_le_bytes());
            }
        }
        let now_ms = wall_clock_ms().to_le_bytes();
        put(frame, self.batch_at + BATCH_AT_FIRST_TIMESTAMP, &now_ms);
        put(frame, self.batch_at + BATCH_AT_MAX_TIMESTAMP, &now_ms);
        let batch_crc = crc32c::crc32c(
            frame
                .get(self.batch_at + BATCH_CRC_START..self.batch_at + self.batch_len)
                .unwrap_or_default(),
        );
        put(
            frame,
            self.batch_at + BATCH_AT_CRC,
            &batch_crc.to_le_bytes(),
        );
        let body_crc = crc32c::crc32c(
            frame
                .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + self.body_len)
                .unwrap_or_default(),
        );
        put(frame, FRAME_AT_BODY_CRC, &body_crc.to_le_bytes());
        protocol::patch_correlation_id(frame, correlation_id);
    }

    pub fn frame(&self) -> &[u8] {
        &self.frame
    }
}

fn put(frame: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = frame.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads the stamp loadgen put at the front of a payload: (intended send ns, sequence).
pub fn read_stamp(value: &[u8]) -> Option<(Nanos, u64)> {
    let intended = u64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
    let sequence = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((intended, sequence))
}

/// Writes the stamp into the front of a payload.
pub fn write_stamp(value: &mut [u8], intended_ns: Nanos, sequence: u64) {
    put(value, 0, &intended_ns.to_le_bytes());
    put(value, 8, &sequence.to_le_bytes());
}

/// Where a producer sends one partition.
#[derive(Debug, Clone, Copy)]
struct Route {
    conn: usize,
    partition: u32,
}

/// A batch being filled for one partition. Its linger runs from the first message's
/// intended send time, so when the worker wakes to take that message does not move it.
///
/// `messages` keeps its allocation from batch to batch.
#[derive(Debug, Default)]
struct OpenBatch {
    messages: Vec<Message>,
    first_intended_ns: Nanos,
}

struct Producer {
    topic: usize,
    schedule: Schedule,
    routes: Vec<Route>,
    open: Vec<OpenBatch>,
    sticky: usize,
    keys: KeyDistributor,
    /// The next message's key (0 without keys) and, with keys, its partition's slot. Drawn
    /// when the message before it is taken, so a message waiting for room keeps its key and
    /// so its partition, as a client's would.
    next_key: u64,
    key_slot: usize,
    sequence: u64,
    rng: rand::rngs::SmallRng,
}

impl Producer {
    /// The slot in `routes` and `open` the next message goes to: the sticky partition
    /// without keys, else its key's partition.
    fn next_slot(&self) -> usize {
        match self.keys {
            KeyDistributor::NoKey => self.sticky % self.routes.len().max(1),
            _ => self.key_slot,
        }
    }

    /// Draws the key after `next_key`, and its partition.
    fn draw_key(&mut self) {
        self.next_key = match self.keys {
            KeyDistributor::NoKey => return,
            KeyDistributor::KeyRoundRobin => self.next_key + 1,
            KeyDistributor::RandomNano => rand::Rng::random::<u64>(&mut self.rng),
        };
        // Stable, like a client partitioner: crc32c of the key bytes.
        let hash = crc32c::crc32c(&self.next_key.to_le_bytes());
        self.key_slot = hash as usize % self.routes.len().max(1);
    }

    /// Whether the next message can be taken now: its partition's batch is open and not
    /// full, or that partition's connection has room for another request (`has_room`), so
    /// the batch can be sent once full (a full batch held back for room goes out first).
    fn can_take(&self, records_per_batch: usize, has_room: impl Fn(usize) -> bool) -> bool {
        let slot = self.next_slot();
        let open = self.open.get(slot).map_or(0, |b| b.messages.len());
        (1..records_per_batch).contains(&open)
            || self.routes.get(slot).is_some_and(|r| has_room(r.conn))
    }
}

struct Consumer {
    topic: usize,
    subscription: usize,
    conn: usize,
    topic_name: String,
    partition: u32,
    position: u64,
    /// A subscription runs (or its `Subscribe` is on its way); an error delivery ends it.
    subscribed: bool,
    retry_at_ns: Nanos,
}

/// A produce request waiting for its response: its producer and the intended send time of
/// each of its messages. A slot's `intended` keeps its allocation across requests.
#[derive(Default)]
struct Pending {
    producer: usize,
    intended: Vec<Nanos>,
    waiting: bool,
    generation: u32,
}

/// Requests in flight, indexed by correlation id (slot in the low 32 bits, a generation in
/// the high bits so a stale id never matches a reused slot).
#[derive(Default)]
struct InFlight {
    slots: Vec<Pending>,
    free: Vec<u32>,
    per_conn: Vec<usize>,
}

impl InFlight {
    /// Records a request of `messages` from `producer` on `conn`; returns its correlation id.
    fn insert(&mut self, conn: usize, producer: usize, messages: &[Message]) -> u64 {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Pending::default());
            (self.slots.len() - 1) as u32
        });
        let Some(pending) = self.slots.get_mut(slot as usize) else {
            return 0;
        };
        pending.producer = producer;
        pending.intended.clear();
        pending
            .intended
            .extend(messages.iter().map(|m| m.intended_ns));
        pending.waiting = true;
        pending.generation = pending.generation.wrapping_add(1);
        if let Some(count) = self.per_conn.get_mut(conn) {
            *count += 1;
        }
        u64::from(pending.generation) << 32 | u64::from(slot)
    }

    /// The request answered by `correlation_id`, once: `(producer, intended send times)`.
    fn take(&mut self, conn: usize, correlation_id: u64) -> Option<(usize, &[Nanos])> {
        let index = (correlation_id & 0xffff_ffff) as usize;
        let generation = (correlation_id >> 32) as u32;
        let pending = self.slots.get_mut(index)?;
        if !pending.waiting || pending.generation != generation {
            return None;
        }
        pending.waiting = false;
        self.free.push(index as u32);
        if let Some(count) = self.per_conn.get_mut(conn) {
            *count = count.saturating_sub(1);
        }
        Some((pending.producer, &pending.intended))
    }

    fn on_conn(&self, conn: usize) -> usize {
        self.per_conn.get(conn).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// What one worker drives: producers (by index into the run's producer list) and consumer
/// assignments (topic, subscription, partition), with the address of each partition leader.
struct WorkerSetup {
    producers: Vec<(usize, usize)>,
    consumers: Vec<(usize, usize, u32)>,
}

/// The broker's name and version from the `ApiVersions` handshake.
pub fn broker_version(address: &str) -> anyhow::Result<String> {
    let mut connection = client::Connection::connect(address, client::ConnectionConfig::default())
        .with_context(|| format!("connecting to ringmq at {address}"))?;
    let response = connection
        .handshake(concat!("loadgen/", env!("CARGO_PKG_VERSION")))
        .with_context(|| format!("ApiVersions handshake with {address}"))?;
    Ok(format!("ringmq {}", response.broker_version))
}

/// Runs the workload against a ringmq broker; returns every worker's stats merged and the
/// broker's version.
pub fn run(target: &Ringmq, plan: &Arc<Plan>) -> anyhow::Result<(Stats, String)> {
    let workload = &plan.workload;
    let version = broker_version(&target.address)?;
    let mut admin = Client::connect(&target.address, ClientConfig::default())
        .with_context(|| format!("connecting to ringmq at {}", target.address))?;
    let mut leaders: Vec<Vec<String>> = Vec::new();
    for topic in 0..workload.topics as usize {
        let name = topic_name(&plan.run_id, topic);
        let request = CreateTopicRequest {
            storage: workload.storage,
            ..client::topic_request(&name, workload.partitions_per_topic, 1)
        };
        admin
            .create_topic_with(&request)
            .with_context(|| format!("creating topic {name}"))?;
        let mut addresses = Vec::new();
        for partition in 0..workload.partitions_per_topic {
            addresses.push(
                admin
                    .partition_address(&name, partition)
                    .with_context(|| format!("finding the leader of {name}/{partition}"))?,
            );
        }
        leaders.push(addresses);
    }

    // Spread producers, then consumer assignments, over the workers in turn.
    let workers = plan.cores.len().max(1);
    let mut setups: Vec<WorkerSetup> = (0..workers)
        .map(|_| WorkerSetup {
            producers: Vec::new(),
            consumers: Vec::new(),
        })
        .collect();
    let mut next = 0usize;
    for topic in 0..workload.topics as usize {
        for producer in 0..workload.producers_per_topic as usize {
            if let Some(setup) = setups.get_mut(next % workers) {
                setup.producers.push((topic, producer));
            }
            next += 1;
        }
    }
    for topic in 0..workload.topics as usize {
        for subscription in 0..workload.subscriptions_per_topic as usize {
            // Consumers of one subscription split the partitions; each partition is one
            // assignment (a consumer with several partitions polls them all).
            for partition in 0..workload.partitions_per_topic {
                let consumer = partition % workload.consumers_per_subscription;
                let worker = (next + consumer as usize) % workers;
                if let Some(setup) = setups.get_mut(worker) {
                    setup.consumers.push((topic, subscription, partition));
                }
            }
            next += workload.consumers_per_subscription as usize;
        }
    }

    let payload = workload.payload_bytes(0x5eed)?;
    let handles: Vec<_> = setups
        .into_iter()
        .enumerate()
        .filter(|(_, s)| !s.producers.is_empty() || !s.consumers.is_empty())
        .map(|(index, setup)| {
            let plan = Arc::clone(plan);
            let leaders = leaders.clone();
            let payload = payload.clone();
            let has_producers = !setup.producers.is_empty();
            if has_producers {
                plan.producer_started();
            }
            std::thread::Builder::new()
                .name(format!("loadgen-ringmq-{index}"))
                .spawn(move || {
                    plan.pin(index);
                    let result = Worker::new(&plan, setup, &leaders, payload, index)
                        .and_then(|mut worker| worker.run());
                    if result.is_err() {
                        plan.aborted.store(true, Ordering::SeqCst);
                    }
                    result
                })
                .map(|handle| (handle, has_producers))
        })
        .collect::<Result<_, _>>()
        .context("starting worker threads")?;
    plan.begin(Duration::from_millis(50));
    let mut merged = Stats::default();
    let mut first_error = None;
    for (handle, _) in handles {
        match handle.join() {
            Ok(Ok(stats)) => merged.merge(&stats),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!("a worker thread panicked"));
            }
        }
    }
    for topic in 0..workload.topics as usize {
        // Best effort: a broker we did not start keeps no benchmark data behind.
        let _ = admin.delete_topic(&topic_name(&plan.run_id, topic));
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok((merged, version)),
    }
}

/// One pinned thread: its ring, its producers and consumers, its stats.
struct Worker<'p> {
    plan: &'p Plan,
    transport: Transport,
    producers: Vec<Producer>,
    consumers: Vec<Consumer>,
    /// Consumer index per connection (`None`: a producer connection).
    consumer_of_conn: Vec<Option<usize>>,
    in_flight: InFlight,
    templates: HashMap<(usize, usize), Template>,
    template_bytes: usize,
    topic_names: Vec<String>,
    payload: Vec<u8>,
    records_per_batch: usize,
    key_bytes: usize,
    acks: Acks,
    stats: Stats,
    interval: Latency,
    has_producers: bool,
    scratch: FrameBuf,
}

impl<'p> Worker<'p> {
    fn new(
        plan: &'p Plan,
        setup: WorkerSetup,
        leaders: &[Vec<String>],
        payload: Vec<u8>,
        worker_index: usize,
    ) -> anyhow::Result<Worker<'p>> {
        let workload = &plan.workload;
        let mut streams = Vec::new();
        let mut consumer_of_conn = Vec::new();
        fn connect(streams: &mut Vec<TcpStream>, address: &str) -> anyhow::Result<usize> {
            let stream = TcpStream::connect(address)
                .with_context(|| format!("connecting to partition leader {address}"))?;
            streams.push(stream);
            Ok(streams.len() - 1)
        }
        let mut producers = Vec::new();
        for (n, (topic, producer)) in setup.producers.iter().enumerate() {
            let addresses = leaders
                .get(*topic)
                .ok_or_else(|| anyhow!("no leaders for topic {topic}"))?;
            let mut by_address: HashMap<&str, usize> = HashMap::new();
            let mut routes = Vec::new();
            for (partition, address) in addresses.iter().enumerate() {
                let conn = match by_address.get(address.as_str()) {
                    Some(conn) => *conn,
                    None => {
                        let conn = connect(&mut streams, address)?;
                        by_address.insert(address, conn);
                        conn
                    }
                };
                routes.push(Route {
                    conn,
                    partition: partition as u32,
                });
            }
            let per_producer = match workload.rate {
                Rate::PerSecond(rate) => Some(rate / f64::from(workload.producers())),
                Rate::Max => None,
            };
            use rand::SeedableRng;
            let mut producer = Producer {
                topic: *topic,
                schedule: match per_producer {
                    Some(rate) => Schedule::open(0, rate),
                    None => Schedule::closed(0),
                },
                open: routes.iter().map(|_| OpenBatch::default()).collect(),
                routes,
                sticky: n,
                keys: workload.keys,
                next_key: 0,
                key_slot: 0,
                sequence: ((worker_index as u64) << 48) | ((*producer as u64) << 32),
                rng: rand::rngs::SmallRng::seed_from_u64((worker_index * 1000 + n) as u64),
            };
            producer.draw_key();
            producers.push(producer);
        }
        consumer_of_conn.resize(streams.len(), None);
        let mut consumers = Vec::new();
        for (topic, subscription, partition) in &setup.consumers {
            let address = leaders
                .get(*topic)
                .and_then(|a| a.get(*partition as usize))
                .ok_or_else(|| anyhow!("no leader for {topic}/{partition}"))?;
            let conn = connect(&mut streams, address)?;
            consumer_of_conn.push(Some(consumers.len()));
            consumers.push(Consumer {
                topic: *topic,
                subscription: *subscription,
                conn,
                topic_name: topic_name(&plan.run_id, *topic),
                partition: *partition,
                position: 0,
                subscribed: false,
                retry_at_ns: 0,
            });
        }
        let conns = streams.len();
        let transport = Transport::new(streams).context("creating the io_uring ring")?;
        let mut in_flight = InFlight::default();
        in_flight.per_conn.resize(conns, 0);
        Ok(Worker {
            plan,
            transport,
            has_producers: !producers.is_empty(),
            producers,
            consumers,
            consumer_of_conn,
            in_flight,
            templates: HashMap::new(),
            template_bytes: 0,
            topic_names: (0..workload.topics as usize)
                .map(|t| topic_name(&plan.run_id, t))
                .collect(),
            payload,
            records_per_batch: workload.records_per_batch(),
            key_bytes: if workload.keys == KeyDistributor::NoKey {
                0
            } else {
                KEY_BYTES
            },
            acks: workload.acks,
            stats: Stats::default(),
            interval: Latency::new(),
            scratch: FrameBuf::new(),
        })
    }

    fn run(&mut self) -> anyhow::Result<Stats> {
        let plan = self.plan;
        let window = loop {
            if let Some(window) = plan.window() {
                break window;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        for producer in &mut self.producers {
            producer.schedule = if producer.schedule.is_open_loop() {
                let rate = match plan.workload.rate {
                    Rate::PerSecond(rate) => rate / f64::from(plan.workload.producers()),
                    Rate::Max => 1.0,
                };
                Schedule::open(window.start_ns, rate)
            } else {
                Schedule::closed(window.start_ns)
            };
        }
        let mut producers_done = !self.has_producers;
        let mut last_publish_ns = 0;
        let mut last_progress_ns = plan.clock.now_ns();
        let mut drain_started_ns: Option<Nanos> = None;
        loop {
            let now = plan.clock.now_ns();
            let interrupted = plan.interrupted(now, &window);
            let exhausted = self
                .producers
                .iter()
                .all(|p| p.schedule.exhausted(now, window.end_ns));
            let over = interrupted || exhausted;
            let sending = now >= window.start_ns && !over;
            if sending {
                self.generate(now, &window)?;
            }
            self.seal_lingered(now, over, &window)?;
            if over && !producers_done && self.producers_idle() {
                producers_done = true;
                plan.producer_finished();
            }
            if plan.backlog_reached() {
                self.subscribe(now);
            }
            let progress_before = self.stats.acked + self.stats.received;
            let timeout = self.timeout(now, sending, &window);
            self.transport
                .poll(Some(timeout))
                .context("waiting on the io_uring ring")?;
            self.process()?;
            if let Some(conn) =
                (0..self.transport.len()).find(|c| self.transport.failure(*c).is_some())
            {
                let reason = self
                    .transport
                    .failure(conn)
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                if plan.aborted.load(Ordering::Relaxed)
                    || (over && producers_done && self.consumers_complete())
                {
                    break;
                }
                bail!("ringmq connection {conn} failed: {reason}");
            }
            let now = plan.clock.now_ns();
            if self.stats.acked + self.stats.received != progress_before {
                last_progress_ns = now;
            }
            if now.saturating_sub(last_publish_ns) >= 250_000_000 {
                plan.live.publish(&mut self.interval);
                last_publish_ns = now;
            }
            if over {
                let drain_started = *drain_started_ns.get_or_insert(now);
                if plan.aborted.load(Ordering::Relaxed) {
                    break;
                }
                if producers_done && self.consumers_complete() {
                    break;
                }
                let quiet = now.saturating_sub(last_progress_ns) > DRAIN_QUIET.as_nanos() as u64;
                let too_long = now.saturating_sub(drain_started) > DRAIN_MAX.as_nanos() as u64;
                if quiet || too_long {
                    break;
                }
            }
        }
        if !producers_done {
            plan.producer_finished();
        }
        plan.live.publish(&mut self.interval);
        Ok(std::mem::take(&mut self.stats))
    }

    /// Whether every producer has sent everything it took and has no answer outstanding.
    fn producers_idle(&self) -> bool {
        self.producers
            .iter()
            .all(|p| p.open.iter().all(|b| b.messages.is_empty()))
            && self.in_flight.total() == 0
            && (0..self.transport.len()).all(|c| {
                self.consumer_of_conn.get(c).copied().flatten().is_some()
                    || self.transport.unsent_bytes(c) == 0
            })
    }

    fn consumers_complete(&self) -> bool {
        self.consumers
            .iter()
            .all(|c| self.plan.subscription_complete(c.topic, c.subscription))
    }

    /// Whether a connection can take another request.
    fn has_room(&self, conn: usize) -> bool {
        if self.acks == Acks::None {
            self.transport.unsent_bytes(conn) < UNSENT_BYTES_MAX
        } else {
            self.in_flight.on_conn(conn) < self.plan.workload.max_in_flight
        }
    }

    /// Takes every due message from each producer's schedule into its open batches, sealing
    /// full batches when their connection has room.
    fn generate(&mut self, now: Nanos, window: &Window) -> anyhow::Result<()> {
        for index in 0..self.producers.len() {
            let mut taken = 0;
            while taken < MESSAGES_PER_TURN_MAX {
                let Some(producer) = self.producers.get(index) else {
                    break;
                };
                let Some(intended_ns) = producer.schedule.due_before(now, window.end_ns) else {
                    break;
                };
                // A message that cannot be taken stops this producer for now: it stays due,
                // with its key and partition, and its send gap grows, which is what the open
                // loop reports.
                if !producer.can_take(self.records_per_batch, |c| self.has_room(c)) {
                    break;
                }
                let slot = producer.next_slot();
                let Some(conn) = producer.routes.get(slot).map(|r| r.conn) else {
                    break;
                };
                if producer
                    .open
                    .get(slot)
                    .is_some_and(|b| b.messages.len() >= self.records_per_batch)
                {
                    // Held back for want of room, which there is now (`can_take`). Sealing
                    // moves a sticky producer on, so look at the message again.
                    self.seal(index, slot, now, window)?;
                    continue;
                }
                let Some(producer) = self.producers.get_mut(index) else {
                    break;
                };
                producer.schedule.issue();
                producer.sequence += 1;
                let message = Message {
                    intended_ns,
                    sequence: producer.sequence,
                    key: producer.next_key,
                };
                producer.draw_key();
                let Some(batch) = producer.open.get_mut(slot) else {
                    break;
                };
                if batch.messages.is_empty() {
                    batch.first_intended_ns = intended_ns;
                }
                batch.messages.push(message);
                taken += 1;
                if batch.messages.len() >= self.records_per_batch && self.has_room(conn) {
                    self.seal(index, slot, now, window)?;
                }
            }
        }
        Ok(())
    }

    /// Seals batches that are full or whose linger ran out (or every open batch, when `all`)
    /// and whose connection has room.
    fn seal_lingered(&mut self, now: Nanos, all: bool, window: &Window) -> anyhow::Result<()> {
        let linger_ns = self.plan.workload.linger.as_nanos() as Nanos;
        for index in 0..self.producers.len() {
            let slots = self.producers.get(index).map_or(0, |p| p.open.len());
            for slot in 0..slots {
                let due = self
                    .producers
                    .get(index)
                    .and_then(|p| p.open.get(slot))
                    .is_some_and(|b| {
                        !b.messages.is_empty()
                            && (all
                                || b.messages.len() >= self.records_per_batch
                                || now.saturating_sub(b.first_intended_ns) >= linger_ns)
                    });
                let conn = self
                    .producers
                    .get(index)
                    .and_then(|p| p.routes.get(slot))
                    .map(|r| r.conn);
                if due && conn.is_some_and(|c| self.has_room(c)) {
                    self.seal(index, slot, now, window)?;
                }
            }
        }
        Ok(())
    }

    /// Turns one open batch into a produce frame on its connection.
    fn seal(
        &mut self,
        index: usize,
        slot: usize,
        now: Nanos,
        window: &Window,
    ) -> anyhow::Result<()> {
        let Some(route) = self
            .producers
            .get(index)
            .and_then(|p| p.routes.get(slot))
            .copied()
        else {
            return Ok(());
        };
        // Every caller checks, so a connection never has more than `max_in_flight` requests
        // outstanding (without acks: `UNSENT_BYTES_MAX` unsent bytes, plus one request).
        debug_assert!(self.has_room(route.conn), "sealing without room: {route:?}");
        let Some(producer) = self.producers.get_mut(index) else {
            return Ok(());
        };
        let topic = producer.topic;
        if producer.routes.len() > 1 && self.key_bytes == 0 {
            producer.sticky = producer.sticky.wrapping_add(1);
        }
        let Some(batch) = producer.open.get_mut(slot) else {
            return Ok(());
        };
        if batch.messages.is_empty() {
            return Ok(());
        }
        // Borrowed out and put back below, so the batch keeps its allocation.
        let mut messages = std::mem::take(&mut batch.messages);
        let key = (topic, messages.len());
        let mut uncached = None;
        if !self.templates.contains_key(&key) {
            let name = self.topic_names.get(topic).map_or("", String::as_str);
            let template = Template::build(name, self.acks, key.1, &self.payload, self.key_bytes)?;
            if self.template_bytes + template.frame.len() <= TEMPLATE_BYTES_MAX {
                self.template_bytes += template.frame.len();
                self.templates.insert(key, template);
            } else {
                uncached = Some(template);
            }
        }
        let Some(template) = uncached.as_mut().or(self.templates.get_mut(&key)) else {
            return Ok(());
        };
        let correlation_id = if self.acks == Acks::None {
            0
        } else {
            self.in_flight.insert(route.conn, index, &messages)
        };
        template.patch(route.partition, &messages, self.key_bytes, correlation_id);
        self.transport.queue(route.conn, template.frame());
        self.account_sent(topic, &messages, now, window);
        messages.clear();
        if let Some(batch) = self
            .producers
            .get_mut(index)
            .and_then(|p| p.open.get_mut(slot))
        {
            batch.messages = messages;
        }
        Ok(())
    }

    fn account_sent(&mut self, topic: usize, messages: &[Message], now: Nanos, window: &Window) {
        let bytes = (messages.len() * self.payload.len()) as u64;
        self.plan.add_sent(topic, messages.len() as u64, bytes);
        let mut measured = 0;
        for message in messages {
            if window.measures(message.intended_ns) {
                self.stats
                    .send_gap
                    .record(now.saturating_sub(message.intended_ns));
                measured += 1;
            }
        }
        self.stats.sent += measured;
        self.stats.sent_bytes += measured * self.payload.len() as u64;
        Live::add(&self.plan.live.sent, messages.len() as u64);
    }

    /// Subscribes every consumer without a subscription from its position: the broker
    /// then pushes each committed stretch of the partition, with no request per delivery.
    fn subscribe(&mut self, now: Nanos) {
        for consumer in &mut self.consumers {
            if consumer.subscribed || now < consumer.retry_at_ns {
                continue;
            }
            let request = SubscribeRequest {
                topic: consumer.topic_name.clone(),
                partition: consumer.partition,
                offset: consumer.position,
                max_bytes: DELIVERY_BYTES,
            };
            self.scratch.clear();
            // One subscription per consumer connection, so one correlation id serves; a
            // subscription has ended by the time its error delivery arrives.
            if encode_frame(&mut self.scratch, 0, &request).is_ok() {
                self.transport.queue(consumer.conn, &self.scratch);
                consumer.subscribed = true;
            }
        }
    }

    /// How long the ring may sleep: until a producer must take its next message or a batch's
    /// linger ends, at most 10 ms (the stop flag and the progress line are checked that
    /// often). A producer or batch waiting for room on its connection sets no deadline: the
    /// completion that makes room wakes the ring.
    fn timeout(&self, now: Nanos, sending: bool, window: &Window) -> Duration {
        let mut wake = now + 10_000_000;
        if !sending && now < window.start_ns {
            wake = wake.min(window.start_ns);
        }
        let linger_ns = self.plan.workload.linger.as_nanos() as Nanos;
        for producer in &self.producers {
            // Only a message that is left and can be taken sets a deadline.
            if sending
                && !producer.schedule.exhausted(now, window.end_ns)
                && producer.can_take(self.records_per_batch, |c| self.has_room(c))
            {
                if producer.schedule.is_open_loop() {
                    // See `take_by`; the end of the window is a deadline too, where the last
                    // messages are taken and every open batch is sealed.
                    let take_ns = take_by(
                        &producer.schedule,
                        &producer.open,
                        self.records_per_batch,
                        linger_ns,
                    );
                    wake = wake.min(take_ns.min(window.end_ns));
                } else {
                    // Closed loop: at once.
                    wake = now;
                }
            }
            for (batch, route) in producer.open.iter().zip(&producer.routes) {
                if !batch.messages.is_empty() && self.has_room(route.conn) {
                    wake = wake.min(batch.first_intended_ns + linger_ns);
                }
            }
        }
        Duration::from_nanos(wake.saturating_sub(now))
    }

    /// Handles every whole frame received on the readable connections.
    fn process(&mut self) -> anyhow::Result<()> {
        for next in 0..self.transport.readable().len() {
            let Some(conn) = self.transport.readable().get(next).copied() else {
                break;
            };
            loop {
                let now = self.plan.clock.now_ns();
                let data = self.transport.received(conn);
                let (frame, used) = match decode_frame(data) {
                    Ok(Some(found)) => found,
                    Ok(None) => break,
                    Err(error) => bail!("bad frame from the broker on connection {conn}: {error}"),
                };
                let consumer = self.consumer_of_conn.get(conn).copied().flatten();
                match (frame.header.api(), consumer) {
                    (Ok(ApiKey::Produce), None) => {
                        let response = frame
                            .access::<ProduceResponse>()
                            .map_err(|e| anyhow!("bad produce response: {e}"))?;
                        let correlation_id = frame.header.correlation_id;
                        let error = response_error(response);
                        let window = self.plan.window();
                        if let (Some((producer, intended)), Some(window)) =
                            (self.in_flight.take(conn, correlation_id), window)
                        {
                            let topic = self.producers.get(producer).map_or(0, |p| p.topic);
                            on_ack(
                                self.plan,
                                &mut self.stats,
                                &mut self.interval,
                                topic,
                                intended,
                                error,
                                now,
                                &window,
                            );
                        }
                    }
                    (Ok(ApiKey::Subscribe), Some(consumer)) => {
                        let delivery = frame
                            .access::<SubscribeDelivery>()
                            .map_err(|e| anyhow!("bad subscription delivery: {e}"))?;
                        let track_interval = self.acks == Acks::None;
                        if let Some(consumer) = self.consumers.get_mut(consumer) {
                            let interval = track_interval.then_some(&mut self.interval);
                            on_delivery(
                                self.plan,
                                &mut self.stats,
                                interval,
                                consumer,
                                delivery,
                                now,
                            )?;
                        }
                    }
                    (api, _) => bail!(
                        "unexpected response {:?} (api {}) on connection {conn}",
                        api.ok(),
                        frame.header.api_key
                    ),
                }
                self.transport.consume(conn, used);
            }
        }
        Ok(())
    }
}

/// When an open-loop producer must next take messages from its `schedule` into its `open`
/// batches. Without batching (or without a linger), when the next message is due. With
/// batches and a linger, a due message may wait untaken without changing when its batch goes
/// out, which is when the batch fills or its first message's linger ends. So the worker wakes
/// once per batch instead of once per message, and sends at the same times: at the earliest
/// moment any batch could fill (as if every next message went to the fullest), or when the
/// next message's linger ends. Open batches' own lingers are the caller's deadlines.
fn take_by(
    schedule: &Schedule,
    open: &[OpenBatch],
    records_per_batch: usize,
    linger_ns: Nanos,
) -> Nanos {
    let due_ns = schedule.intended_ns(schedule.issued());
    if records_per_batch <= 1 || linger_ns == 0 {
        return due_ns;
    }
    // A full batch (held back for room) takes no more messages.
    let fullest = open
        .iter()
        .map(|b| b.messages.len())
        .filter(|len| *len < records_per_batch)
        .max()
        .unwrap_or(0);
    let to_fill = records_per_batch.saturating_sub(fullest).max(1) as u64;
    let fills_ns = schedule.intended_ns(schedule.issued() + to_fill - 1);
    fills_ns.min(due_ns + linger_ns)
}

/// Records the answer to one produce request.
#[allow(clippy::too_many_arguments)]
fn on_ack(
    plan: &Plan,
    stats: &mut Stats,
    interval: &mut Latency,
    topic: usize,
    intended_ns: &[Nanos],
    error: protocol::ErrorCode,
    now: Nanos,
    window: &Window,
) {
    let count = intended_ns.len() as u64;
    if !error.is_ok() {
        plan.add_lost(topic, count);
        Live::add(&plan.live.failed, count);
        stats.failed += intended_ns.iter().filter(|t| window.measures(**t)).count() as u64;
        return;
    }
    Live::add(&plan.live.acked, count);
    if window.completes_in(now) {
        stats.acked_in_window += count;
    }
    for &intended in intended_ns {
        let latency = now.saturating_sub(intended);
        interval.record(latency);
        if window.measures(intended) {
            stats.ack.record(latency);
            stats.acked += 1;
        }
    }
}

/// Records every new record of one delivery and advances the consumer; an error delivery
/// ends its subscription.
fn on_delivery(
    plan: &Plan,
    stats: &mut Stats,
    mut interval: Option<&mut Latency>,
    consumer: &mut Consumer,
    response: &ArchivedSubscribeDelivery,
    now: Nanos,
) -> anyhow::Result<()> {
    let window = plan.window();
    let error = protocol::ErrorCode(response.error.0.to_native());
    let log_start = response.log_start_offset.to_native();
    if !error.is_ok() {
        consumer.subscribed = false;
    }
    if error == protocol::ErrorCode::OFFSET_OUT_OF_RANGE && log_start > consumer.position {
        // Retention deleted records this consumer had not read yet: like a Kafka consumer
        // with `auto.offset.reset = earliest`, go on from the log start, and count the loss
        // (they are done with, so the drain does not wait for them), subscribing again
        // at once.
        let lost = log_start - consumer.position;
        consumer.position = log_start;
        stats.lost_to_retention += lost;
        plan.add_received(consumer.topic, consumer.subscription, lost);
        return Ok(());
    }
    if !error.is_ok() {
        // A transient broker answer (not leader yet, shutting down): try again shortly.
        consumer.retry_at_ns = now + 10_000_000;
        return Ok(());
    }
    let mut delivered = 0u64;
    let mut measured = 0u64;
    for batch in Batches::new(response.records.as_slice()) {
        let batch = batch.map_err(|e| {
            anyhow!(
                "corrupt batch from {}/{} near offset {}: {e}",
                consumer.topic_name,
                consumer.partition,
                consumer.position
            )
        })?;
        for record in batch.records() {
            if record.offset < consumer.position {
                continue;
            }
            consumer.position = record.offset + 1;
            delivered += 1;
            let Some((intended, _sequence)) = read_stamp(record.value) else {
                continue;
            };
            let latency = now.saturating_sub(intended);
            if let Some(interval) = interval.as_deref_mut() {
                interval.record(latency);
            }
            if window.is_some_and(|w| w.measures(intended)) {
                stats.e2e.record(latency);
                measured += 1;
                stats.received_bytes += record.value.len() as u64;
            }
        }
    }
    stats.received += measured;
    if window.is_some_and(|w| w.completes_in(now)) {
        stats.received_in_window += delivered;
    }
    plan.add_received(consumer.topic, consumer.subscription, delivered);
    Live::add(&plan.live.received, delivered);
    Ok(())
}

fn response_error(response: &ArchivedProduceResponse) -> protocol::ErrorCode {
    protocol::ErrorCode(response.error.0.to_native())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn patched_template_is_a_valid_frame_with_the_stamps() {
        let payload = vec![7u8; 100];
        for (count, key_bytes) in [(1, 0), (5, 0), (3, KEY_BYTES)] {
            let mut template =
                Template::build("orders", Acks::LeaderFsync, count, &payload, key_bytes).unwrap();
            let messages: Vec<Message> = (0..count)
                .map(|i| Message {
                    intended_ns: 1_000 + i as u64,
                    sequence: 77 + i as u64,
                    key: 900 + i as u64,
                })
                .collect();
            template.patch(3, &messages, key_bytes, 0xabc);
            let frame = template.frame().to_vec();
            let mut aligned = FrameBuf::new();
            aligned.extend_from_slice(&frame);
            let (decoded, used) = decode_frame(&aligned).unwrap().unwrap();
            assert_eq!(used, aligned.len());
            assert_eq!(decoded.header.correlation_id, 0xabc);
            let request: ProduceRequest = decoded.deserialize().unwrap();
            assert_eq!(request.partition, 3);
            assert_eq!(request.topic, "orders");
            assert_eq!(request.acks, Acks::LeaderFsync);
            let view = BatchView::new(&request.batch).unwrap();
            assert_eq!(view.record_count() as usize, count);
            for (record, message) in view.records().zip(&messages) {
                assert_eq!(
                    read_stamp(record.value),
                    Some((message.intended_ns, message.sequence))
                );
                assert_eq!(&record.value[16..], &payload[16..]);
                if key_bytes == KEY_BYTES {
                    assert_eq!(record.key, &message.key.to_le_bytes());
                }
            }
        }
    }

    /// A subscription ended by `OFFSET_OUT_OF_RANGE` behind the log start (retention deleted
    /// what the consumer had not read) moves the consumer to the log start and counts the
    /// loss as received for the drain; one past the log's end is a transient answer.
    #[test]
    fn a_consumer_overtaken_by_retention_skips_to_the_log_start() {
        let workload = crate::workload::WorkloadFile::parse("topics: 1")
            .unwrap()
            .resolve()
            .unwrap();
        let plan = Plan::new(workload, Arc::new(Default::default()), vec![0]);
        let mut consumer = Consumer {
            topic: 0,
            subscription: 0,
            conn: 0,
            topic_name: "t".into(),
            partition: 0,
            position: 10,
            subscribed: true,
            retry_at_ns: 0,
        };
        // The consumer gets an OFFSET_OUT_OF_RANGE answer naming this log start.
        let out_of_range = |consumer: &mut Consumer, stats: &mut Stats, log_start_offset| {
            let response = SubscribeDelivery {
                error: protocol::ErrorCode::OFFSET_OUT_OF_RANGE,
                high_watermark: 200,
                log_start_offset,
                records: Vec::new(),
            };
            let mut frame = FrameBuf::new();
            encode_frame(&mut frame, 1, &response).unwrap();
            let (frame, _) = decode_frame(&frame).unwrap().unwrap();
            let response = frame.access::<SubscribeDelivery>().unwrap();
            on_delivery(&plan, stats, None, consumer, response, 5).unwrap();
        };
        let mut stats = Stats::default();
        // 100 sent, the first 10 read; retention then deletes up to offset 100.
        plan.add_sent(0, 100, 0);
        plan.add_received(0, 0, 10);
        assert!(!plan.subscription_complete(0, 0));

        out_of_range(&mut consumer, &mut stats, 100);
        assert_eq!(consumer.position, 100);
        assert_eq!(stats.lost_to_retention, 90);
        assert_eq!(
            (consumer.subscribed, consumer.retry_at_ns),
            (false, 0),
            "subscribes again now"
        );
        assert!(
            plan.subscription_complete(0, 0),
            "the lost records count as done: the drain does not wait for them"
        );

        // Ahead of the log start (past the end, say): not a loss; retried shortly.
        out_of_range(&mut consumer, &mut stats, 50);
        assert_eq!(consumer.position, 100);
        assert_eq!(stats.lost_to_retention, 90);
        assert_eq!(consumer.retry_at_ns, 5 + 10_000_000);
    }

    #[test]
    fn an_open_loop_producer_wakes_when_a_batch_fills_or_its_linger_ends() {
        let message = Message {
            intended_ns: 0,
            sequence: 0,
            key: 0,
        };
        let linger_ns = 5_000_000;
        let mut schedule = Schedule::open(0, 1000.0); // one message per ms
        let empty = [OpenBatch::default(), OpenBatch::default()];
        // No batching, or no linger: every message when it is due.
        assert_eq!(take_by(&schedule, &empty, 1, linger_ns), 0);
        assert_eq!(take_by(&schedule, &empty, 10, 0), 0);
        // 10 per batch: the first message's linger (5 ms) ends before the 10th is due (9 ms).
        assert_eq!(take_by(&schedule, &empty, 10, linger_ns), 5_000_000);
        // 3 per batch: the 3rd message, due at 2 ms, fills it.
        assert_eq!(take_by(&schedule, &empty, 3, linger_ns), 2_000_000);
        // Two taken into one batch: the next message (due at 2 ms) fills the fullest.
        assert_eq!(schedule.next_due(1_000_000), Some(0));
        assert_eq!(schedule.next_due(1_000_000), Some(1_000_000));
        let open = [
            OpenBatch::default(),
            OpenBatch {
                messages: vec![message; 2],
                first_intended_ns: 0,
            },
        ];
        assert_eq!(take_by(&schedule, &open, 3, linger_ns), 2_000_000);
        assert_eq!(take_by(&schedule, &open, 10, linger_ns), 7_000_000);
        // A full batch held back for room takes no more: the other one fills with the 4th.
        let held = [
            OpenBatch {
                messages: vec![message; 3],
                first_intended_ns: 0,
            },
            OpenBatch {
                messages: vec![message; 1],
                first_intended_ns: 0,
            },
        ];
        assert_eq!(take_by(&schedule, &held, 3, linger_ns), 3_000_000);
    }

    /// A producer of `partitions` partitions, partition `p` on connection `p`.
    fn producer(partitions: u32, keys: KeyDistributor) -> Producer {
        use rand::SeedableRng;
        let mut producer = Producer {
            topic: 0,
            schedule: Schedule::open(0, 1000.0),
            routes: (0..partitions)
                .map(|partition| Route {
                    conn: partition as usize,
                    partition,
                })
                .collect(),
            open: (0..partitions).map(|_| OpenBatch::default()).collect(),
            sticky: 0,
            keys,
            next_key: 0,
            key_slot: 0,
            sequence: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(1),
        };
        producer.draw_key();
        producer
    }

    #[test]
    fn only_the_next_messages_partition_decides_whether_it_can_be_taken() {
        for keys in [KeyDistributor::KeyRoundRobin, KeyDistributor::RandomNano] {
            let mut producer = producer(4, keys);
            let blocked = producer.next_slot();
            let key = producer.next_key;
            // Every other partition's connection has room: the message still waits for its
            // own (a worker that woke for it would spin).
            let room_elsewhere = |conn: usize| conn != blocked;
            assert!(!producer.can_take(10, room_elsewhere), "{keys:?}");
            assert_eq!(producer.next_key, key, "a waiting message keeps its key");
            // An open batch with space takes it without room; a full one waits for room.
            let message = Message {
                intended_ns: 0,
                sequence: 0,
                key,
            };
            producer.open[blocked].messages = vec![message; 9];
            assert!(producer.can_take(10, room_elsewhere), "{keys:?}");
            producer.open[blocked].messages.push(message);
            assert!(!producer.can_take(10, room_elsewhere), "{keys:?}");
            assert!(producer.can_take(10, |_| true), "{keys:?}");
        }
        // Without keys: the sticky partition.
        let mut producer = producer(4, KeyDistributor::NoKey);
        producer.sticky = 6;
        assert_eq!(producer.next_slot(), 2);
        assert!(!producer.can_take(1, |conn| conn != 2));
        assert!(producer.can_take(1, |conn| conn == 2));
    }

    #[test]
    fn keys_are_drawn_as_before() {
        let mut round_robin = producer(4, KeyDistributor::KeyRoundRobin);
        let mut random = producer(4, KeyDistributor::RandomNano);
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
        // A key's partition: crc32c of its bytes, as a client partitioner takes it.
        let slot = |key: u64| crc32c::crc32c(&key.to_le_bytes()) as usize % 4;
        for expected in 1..=5 {
            assert_eq!(round_robin.next_key, expected);
            assert_eq!(round_robin.next_slot(), slot(expected));
            assert_eq!(random.next_slot(), slot(random.next_key));
            round_robin.draw_key();
            assert_eq!(random.next_key, rand::Rng::random::<u64>(&mut rng));
            random.draw_key();
        }
    }

    #[test]
    fn in_flight_ids_do_not_match_reused_slots() {
        let mut in_flight = InFlight::default();
        in_flight.per_conn.resize(1, 0);
        let message = |intended_ns| Message {
            intended_ns,
            sequence: 0,
            key: 0,
        };
        let first = in_flight.insert(0, 4, &[message(1)]);
        assert_eq!(in_flight.take(0, first), Some((4, &[1][..])));
        assert!(in_flight.take(0, first).is_none(), "answered once");
        let second = in_flight.insert(0, 5, &[message(2), message(3)]);
        assert_ne!(first, second);
        assert!(in_flight.take(0, first).is_none());
        assert_eq!(in_flight.on_conn(0), 1);
        assert_eq!(in_flight.take(0, second), Some((5, &[2, 3][..])));
        assert_eq!(in_flight.total(), 0);
    }
}
