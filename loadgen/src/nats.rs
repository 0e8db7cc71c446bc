//! The `nats://` (core publish/subscribe) and `jetstream://` (file-storage stream, publish with
//! ack) targets, through the async-nats client on a tokio runtime of loadgen's own.
//!
//! Producers run on plain pinned threads that keep the same open-loop schedule as the ringmq
//! workers (a tokio timer has 1 ms granularity, which would add up to 1 ms of send gap) and
//! hand each message to the client with `block_on`. Acks and deliveries are awaited on the
//! runtime. Subscriptions are queue groups (core) or durable pull consumers (JetStream), one
//! per OMB subscription, shared by that subscription's consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::plan::{DRAIN_MAX, DRAIN_QUIET, Plan, Window, topic_name};
use crate::rate::{Clock, Nanos, Schedule};
use crate::ringmq::{read_stamp, write_stamp};
use crate::stats::{Latency, Live, Stats};
use crate::workload::Rate;

/// Messages the client may buffer before `publish` waits (back-pressure on the producer).
const CLIENT_CAPACITY: usize = 65_536;

/// Messages a subscription may buffer before the client drops them as a slow consumer.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;

/// Which flavour of NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// Core publish/subscribe: in memory, fire and forget.
    Core,
    /// A file-storage stream; every publish waits for the server's ack.
    JetStream,
}

/// A NATS target: `host:port` and flavour.
#[derive(Debug, Clone)]
pub struct Nats {
    pub address: String,
    pub flavour: Flavour,
}

fn subject(run_id: &str, topic: usize) -> String {
    format!("loadgen.{}", topic_name(run_id, topic).replace('-', "_"))
}

fn stream_name(run_id: &str, topic: usize) -> String {
    topic_name(run_id, topic).replace('-', "_").to_uppercase()
}

/// Runs the workload against a NATS server; returns the merged stats.
pub fn run(target: &Nats, plan: &Arc<Plan>) -> anyhow::Result<(Stats, String)> {
    let workload = &plan.workload;
    if workload.backlog_bytes > 0 && target.flavour == Flavour::Core {
        anyhow::bail!(
            "workload field `consumerBacklogSizeGB`: core NATS keeps no backlog; use jetstream://"
        );
    }
    let pin_plan = Arc::clone(plan);
    let next_thread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.cores.len().max(1))
        .enable_all()
        .thread_name("loadgen-nats")
        .on_thread_start(move || {
            pin_plan.pin(next_thread.fetch_add(1, Ordering::Relaxed));
        })
        .build()
        .context("starting the tokio runtime for the NATS client")?;
    let handle = runtime.handle().clone();
    // async-nats' JetStream context spawns onto the current runtime when created.
    let _entered = handle.enter();
    let client = handle
        .block_on(
            async_nats::ConnectOptions::new()
                .client_capacity(CLIENT_CAPACITY)
                .subscription_capacity(SUBSCRIPTION_CAPACITY)
                .connection_timeout(Duration::from_secs(5))
                .connect(target.address.as_str()),
        )
        .with_context(|| format!("connecting to NATS at {}", target.address))?;
    let context = jetstream::new(client.clone());
    let version = format!("nats-server {}", client.server_info().version);

    // Subscriptions first, so nothing published is missed.
    let consuming = Arc::new(AtomicBool::new(true));
    let mut consumer_tasks = Vec::new();
    for topic in 0..workload.topics as usize {
        let subject = subject(&plan.run_id, topic);
        let stream = match target.flavour {
            Flavour::Core => None,
            Flavour::JetStream => Some(
                handle
                    .block_on(context.create_stream(jetstream::stream::Config {
                        name: stream_name(&plan.run_id, topic),
                        subjects: vec![subject.clone()],
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: 1,
                        ..Default::default()
                    }))
                    .map_err(|e| anyhow!("creating JetStream stream for {subject}: {e}"))?,
            ),
        };
        for subscription in 0..workload.subscriptions_per_topic as usize {
            let group = format!("sub{subscription}");
            let pull = match &stream {
                None => None,
                Some(stream) => Some(
                    handle
                        .block_on(stream.create_consumer(jetstream::consumer::pull::Config {
                            durable_name: Some(group.clone()),
                            ack_policy: jetstream::consumer::AckPolicy::None,
                            deliver_policy: jetstream::consumer::DeliverPolicy::All,
                            ..Default::default()
                        }))
                        .map_err(|e| anyhow!("creating JetStream consumer {group}: {e}"))?,
                ),
            };
            for _ in 0..workload.consumers_per_subscription {
                let plan = Arc::clone(plan);
                let consuming = Arc::clone(&consuming);
                let task = match &pull {
                    None => {
                        let subscriber = handle
                            .block_on(client.queue_subscribe(subject.clone(), group.clone()))
                            .map_err(|e| anyhow!("subscribing to {subject}: {e}"))?;
                        let messages = subscriber.map(|m| m.payload);
                        handle.spawn(consume(plan, consuming, topic, subscription, messages))
                    }
                    Some(pull) => {
                        let pull = pull.clone();
                        handle.spawn(async move {
                            while !plan.backlog_reached() && consuming.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            let messages = match pull.messages().await {
                                Ok(messages) => messages,
                                Err(error) => {
                                    return Err(anyhow!("JetStream pull consumer: {error}"));
                                }
                            };
                            let messages = messages
                                .filter_map(|m| async move { m.ok().map(|m| m.payload.clone()) });
                            consume(plan, consuming, topic, subscription, Box::pin(messages)).await
                        })
                    }
                };
                consumer_tasks.push(task);
            }
        }
    }
    handle
        .block_on(client.flush())
        .map_err(|e| anyhow!("flushing subscriptions: {e}"))?;

    // Producers: one pinned thread per loadgen core, producers spread over them.
    let payload = workload.payload_bytes(0x5eed)?;
    let threads = plan.cores.len().max(1);
    let stats_sink = Arc::new(Mutex::new(Sink::default()));
    let mut producer_threads = Vec::new();
    for thread in 0..threads {
        let mine: Vec<usize> = (0..workload.producers() as usize)
            .filter(|p| p % threads == thread)
            .collect();
        if mine.is_empty() {
            continue;
        }
        plan.producer_started();
        let plan = Arc::clone(plan);
        let handle = handle.clone();
        let client = client.clone();
        let context = context.clone();
        let flavour = target.flavour.clone();
        let payload = payload.clone();
        let sink = Arc::clone(&stats_sink);
        producer_threads.push(
            std::thread::Builder::new()
                .name(format!("loadgen-nats-pub-{thread}"))
                .spawn(move || {
                    plan.pin(thread);
                    let result = produce(
                        &plan, &handle, &client, &context, &flavour, &mine, &payload, &sink,
                    );
                    plan.producer_finished();
                    if result.is_err() {
                        plan.aborted.store(true, Ordering::SeqCst);
                    }
                    result
                })
                .context("starting a producer thread")?,
        );
    }
    plan.begin(Duration::from_millis(50));
    let mut first_error = None;
    for thread in producer_threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!("a producer thread panicked"));
            }
        }
    }
    if let Err(error) = handle.block_on(client.flush()) {
        first_error.get_or_insert(anyhow!("flushing publishes: {error}"));
    }
    // Drain: wait until every subscription has everything, or nothing arrives for a while.
    let drain_started = std::time::Instant::now();
    let mut last_received = Live::get(&plan.live.received);
    let mut last_progress = std::time::Instant::now();
    loop {
        let complete = (0..workload.topics as usize).all(|t| {
            (0..workload.subscriptions_per_topic as usize).all(|s| plan.subscription_complete(t, s))
        });
        if complete || drain_started.elapsed() > DRAIN_MAX || last_progress.elapsed() > DRAIN_QUIET
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        let received = Live::get(&plan.live.received);
        if received != last_received {
            last_received = received;
            last_progress = std::time::Instant::now();
        }
    }
    consuming.store(false, Ordering::SeqCst);
    let mut merged = match stats_sink.lock() {
        Ok(sink) => sink.stats.clone(),
        Err(_) => Stats::default(),
    };
    for task in consumer_tasks {
        match handle.block_on(task) {
            Ok(Ok(stats)) => merged.merge(&stats),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(anyhow!("a consumer task failed: {error}"));
            }
        }
    }
    if target.flavour == Flavour::JetStream {
        for topic in 0..workload.topics as usize {
            let _ = handle.block_on(context.delete_stream(stream_name(&plan.run_id, topic)));
        }
    }
    drop(client);
    runtime.shutdown_timeout(Duration::from_secs(2));
    match first_error {
        Some(error) => Err(error),
        None => Ok((merged, version)),
    }
}

/// Reads one subscription's messages until told to stop; records end-to-end latency.
async fn consume<S>(
    plan: Arc<Plan>,
    consuming: Arc<AtomicBool>,
    topic: usize,
    subscription: usize,
    mut messages: S,
) -> anyhow::Result<Stats>
where
    S: futures_util::Stream<Item = Bytes> + Unpin,
{
    let mut stats = Stats::default();
    let mut interval = Latency::new();
    let mut last_publish = std::time::Instant::now();
    let track_interval = plan.workload.acks == protocol::Acks::None;
    while consuming.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
        let payload = match next {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(_) => continue,
        };
        let now = plan.clock.now_ns();
        plan.add_received(topic, subscription, 1);
        Live::add(&plan.live.received, 1);
        let Some((intended, _)) = read_stamp(&payload) else {
            continue;
        };
        let latency = now.saturating_sub(intended);
        if track_interval {
            interval.record(latency);
        }
        let window = plan.window();
        stats.received_in_window += u64::from(window.is_some_and(|w| w.completes_in(now)));
        if window.is_some_and(|w| w.measures(intended)) {
            stats.e2e.record(latency);
            stats.received += 1;
            stats.received_bytes += payload.len() as u64;
        }
        if last_publish.elapsed() > Duration::from_millis(250) {
            plan.live.publish(&mut interval);
            last_publish = std::time::Instant::now();
        }
    }
    plan.live.publish(&mut interval);
    Ok(stats)
}

/// One producer thread: keeps each producer's schedule and publishes what falls due.
#[allow(clippy::too_many_arguments)]
fn produce(
    plan: &Arc<Plan>,
    handle: &tokio::runtime::Handle,
    client: &async_nats::Client,
    context: &jetstream::Context,
    flavour: &Flavour,
    producers: &[usize],
    payload: &[u8],
    sink: &Arc<Mutex<Sink>>,
) -> anyhow::Result<()> {
    let workload = &plan.workload;
    let window = loop {
        if let Some(window) = plan.window() {
            break window;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let per_producer = match workload.rate {
        Rate::PerSecond(rate) => Some(rate / f64::from(workload.producers())),
        Rate::Max => None,
    };
    let mut schedules: Vec<(usize, String, Schedule)> = producers
        .iter()
        .map(|p| {
            let topic = p / workload.producers_per_topic as usize;
            let schedule = match per_producer {
                Some(rate) => Schedule::open(window.start_ns, rate),
                None => Schedule::closed(window.start_ns),
            };
            (topic, subject(&plan.run_id, topic), schedule)
        })
        .collect();
    // Unanswered publishes (JetStream): a full window makes the producer wait, and in the
    // open loop that wait shows up as send gap and latency.
    let permits = Arc::new(tokio::sync::Semaphore::new(workload.max_in_flight));
    let mut stats = Stats::default();
    let mut sequence = 0u64;
    let mut buffer = payload.to_vec();
    let mut acks = Vec::new();
    let mut last_publish = std::time::Instant::now();
    loop {
        let now = plan.clock.now_ns();
        if now < window.start_ns {
            std::thread::sleep(Duration::from_nanos(window.start_ns - now));
            continue;
        }
        if plan.interrupted(now, &window)
            || schedules
                .iter()
                .all(|(_, _, s)| s.exhausted(now, window.end_ns))
        {
            break;
        }
        let mut next_due: Option<Nanos> = None;
        for (topic, subject, schedule) in &mut schedules {
            let mut taken = 0;
            while taken < 1024 {
                let now = plan.clock.now_ns();
                let permit = match flavour {
                    Flavour::Core => None,
                    Flavour::JetStream => {
                        // Closed loop: wait for room. Open loop: wait too, the message is due.
                        if schedule.next_due_ns().is_some_and(|due| due > now) {
                            break;
                        }
                        Some(
                            handle
                                .block_on(Arc::clone(&permits).acquire_owned())
                                .map_err(|_| anyhow!("publish window closed"))?,
                        )
                    }
                };
                let now = plan.clock.now_ns();
                let Some(intended) = schedule.next_due_before(now, window.end_ns) else {
                    break;
                };
                taken += 1;
                sequence += 1;
                write_stamp(&mut buffer, intended, sequence);
                let message = Bytes::copy_from_slice(&buffer);
                let measured = window.measures(intended);
                match flavour {
                    Flavour::Core => {
                        handle
                            .block_on(client.publish(subject.clone(), message))
                            .map_err(|e| anyhow!("publishing to {subject}: {e}"))?;
                    }
                    Flavour::JetStream => {
                        let ack = handle
                            .block_on(context.publish(subject.clone(), message))
                            .map_err(|e| anyhow!("publishing to {subject}: {e}"))?;
                        let plan = Arc::clone(plan);
                        let sink = Arc::clone(sink);
                        let topic = *topic;
                        acks.push(handle.spawn(async move {
                            let result = ack.await;
                            drop(permit);
                            let now = plan.clock.now_ns();
                            record_ack(&plan, &sink, topic, intended, now, result.is_ok());
                        }));
                        if acks.len() > 4096 {
                            acks.retain(|task| !task.is_finished());
                        }
                    }
                }
                let sent_at = plan.clock.now_ns();
                plan.add_sent(*topic, 1, buffer.len() as u64);
                Live::add(&plan.live.sent, 1);
                if measured {
                    stats.sent += 1;
                    stats.sent_bytes += buffer.len() as u64;
                    stats.send_gap.record(sent_at.saturating_sub(intended));
                }
                if plan.interrupted(sent_at, &window) {
                    break;
                }
            }
            if let Some(due) = schedule.next_due_ns() {
                next_due = Some(next_due.map_or(due, |d: Nanos| d.min(due)));
            }
        }
        if last_publish.elapsed() > Duration::from_millis(250) {
            if let Ok(mut shared) = sink.lock() {
                plan.live.publish(&mut shared.interval);
            }
            last_publish = std::time::Instant::now();
        }
        if let Some(due) = next_due {
            let now = plan.clock.now_ns();
            if due > now {
                // Sleep, never spin: the client's I/O task may share this core.
                std::thread::sleep(Duration::from_nanos((due - now).min(10_000_000)));
            }
        }
    }
    for task in acks {
        let _ = handle.block_on(task);
    }
    if let Ok(mut shared) = sink.lock() {
        shared.stats.merge(&stats);
        plan.live.publish(&mut shared.interval);
    }
    Ok(())
}

fn record_ack(
    plan: &Plan,
    sink: &Mutex<Sink>,
    topic: usize,
    intended: Nanos,
    now: Nanos,
    ok: bool,
) {
    let window: Option<Window> = plan.window();
    let measured = window.is_some_and(|w| w.measures(intended));
    if !ok {
        plan.add_lost(topic, 1);
        Live::add(&plan.live.failed, 1);
        if measured && let Ok(mut sink) = sink.lock() {
            sink.stats.failed += 1;
        }
        return;
    }
    Live::add(&plan.live.acked, 1);
    let latency = now.saturating_sub(intended);
    if let Ok(mut sink) = sink.lock() {
        sink.interval.record(latency);
        sink.stats.acked_in_window += u64::from(window.is_some_and(|w| w.completes_in(now)));
        if measured {
            sink.stats.ack.record(latency);
            sink.stats.acked += 1;
        }
    }
}

/// Where JetStream ack tasks record: the producers' stats and the progress interval.
#[derive(Default)]
struct Sink {
    stats: Stats,
    interval: Latency,
}
