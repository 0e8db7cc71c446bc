//! brokerbench: the broker on one core, a simple client on another, 1 KiB records.
//!
//! Cases (each names its durability mode, record and batch size):
//! - throughput, acks `leader` and `leader+fsync`: one producer, 64 KiB batches
//!   (64 records of 1 KiB), 16 of them in flight (`--in-flight`);
//! - latency, acks `leader+fsync` (or `--latency-acks`): single-record batches sent open-loop
//!   at a fixed rate (10,000/s by default); produce-to-ack measured from each send's
//!   *intended* time, so a stall counts against every send it delays (no coordinated
//!   omission);
//! - the loopback round trip alone: the latency case's client against a plain thread on the
//!   broker's core that acks at once (no log, no disk), beside fio's write+fdatasync;
//! - the disk floor: 4 KiB O_DIRECT write+fdatasync pairs timed whole on the broker's core,
//!   at up to the latency case's rate (`bench_harness::floor`). No durable ack can come
//!   sooner than one pair after its record arrived;
//! - the disk floor under the latency case: records arriving as the latency case sends them,
//!   made durable by a group commit modelled on the log's, with no broker and no network
//!   (`floor::group_commit`);
//! - once, before the runs: the broker core's noise, how much of it a spinning thread loses,
//!   alone and beside a thread that wakes on that core every 200 us
//!   (`bench_harness::noise`); the loss per wake-up is at least what each of the kernel's
//!   helper threads woken there for a shard's writes and syncs costs it. With
//!   `--replication`, the leaders' and the followers' cores.
//!
//! `--replication`: the broker on every allowed core instead; replication factor 1 with
//! `leader+fsync` against replication factor 2 (leader and follower on different shards)
//! with `all+fsync`, throughput and produce-to-ack latency, interleaved in the same run,
//! beside the disk floor of one replica and of two (pairs on the leader's and the
//! follower's cores, on the one disk both write to), and the group commit floor of each.
//!
//! The cases are interleaved across runs and medians reported, since this machine is shared.
//!
//! `cargo run --release -p ringmq-bench-harness --bin brokerbench -- --seconds 10 --runs 3`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench_harness::machine::{ScratchDir, pin};
use bench_harness::noise::{self, CoreNoise};
use bench_harness::{OpenLoop, fio, floor, least_timer_slack, median, micros_histogram};
use client::{Acks, Client, ClientConfig, FrameReader, Producer, ProducerConfig, ReadError};
use engine::broker::{self, BrokerHandle, BrokerOptions};
use engine::config::{Cores, Profile};
use hdrhistogram::Histogram;
use protocol::api::{ErrorCode, ProduceRequest, ProduceResponse};
use protocol::{BatchBuilder, FrameBuf};

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 64;

struct Args {
    seconds: u64,
    runs: usize,
    rate: u64,
    broker_core: usize,
    client_core: usize,
    dir: PathBuf,
    latency_only: bool,
    latency_acks: Acks,
    profile: Option<PathBuf>,
    replication: bool,
    /// Produce batches each throughput case keeps in flight.
    in_flight: usize,
    /// Byte retention of the throughput cases' topics; with it, each is filled past it
    /// before the runs, so the measured writes overwrite recycled segments.
    retention_bytes: Option<u64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let cores = engine::config::allowed_cores();
    let mut args = Args {
        seconds: 10,
        runs: 3,
        rate: 10_000,
        broker_core: cores.last().copied().unwrap_or(0),
        client_core: cores.first().copied().unwrap_or(0),
        dir: std::env::current_dir()?.join("brokerbench-data"),
        latency_only: false,
        latency_acks: Acks::LeaderFsync,
        profile: None,
        replication: false,
        in_flight: ProducerConfig::default().max_in_flight,
        retention_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--broker-core" => args.broker_core = value()?.parse()?,
            "--client-core" => args.client_core = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            // Measure latency alone: the throughput cases fill the disk with segment rolls
            // and background zeroing, which a latency figure must not include unlabelled.
            "--latency-only" => args.latency_only = true,
            // The latency case's acks: `leader` separates the broker's own path from fsync.
            "--latency-acks" => {
                args.latency_acks = value()?.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                if args.latency_acks == Acks::None {
                    bail!("--latency-acks none: the latency case measures acks, and none come");
                }
            }
            // A tuning profile (its shard section is replaced by the broker core, except with
            // --replication).
            "--profile" => args.profile = Some(value()?.into()),
            "--replication" => args.replication = true,
            // The throughput cases' window: with too few batches in flight they measure the
            // round trip of a batch rather than what the broker can take.
            "--in-flight" => args.in_flight = value()?.parse()?,
            // Without it every throughput case writes fresh segments, whose first writes the
            // file system must convert from allocated to written (tuning/README.md).
            "--retention-bytes" => args.retention_bytes = Some(value()?.parse()?),
            "--help" | "-h" => {
                println!(
                    "brokerbench [--seconds S] [--runs N] [--rate RECORDS_PER_S] [--broker-core C] \
                     [--client-core C] [--dir DATA_DIR_ON_A_REAL_DISK] [--latency-only] \
                     [--latency-acks leader|leader+fsync] [--profile tuning/FILE.toml] [--replication] \
                     [--in-flight BATCHES] [--retention-bytes B]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (see --help)"),
        }
    }
    // Checked now, not when the first throughput case starts (or never, --latency-only).
    throughput_config(Acks::Leader, args.in_flight)
        .validate_for(&ClientConfig::default().connection)
        .with_context(|| format!("--in-flight {}", args.in_flight))?;
    Ok(args)
}

/// A broker started in this process, its data in a scratch directory that is removed on drop
/// (also when a case fails).
struct Broker {
    handle: BrokerHandle,
    address: String,
    scratch: ScratchDir,
}

impl Broker {
    fn start(profile: Profile, parent: &Path) -> anyhow::Result<Broker> {
        let scratch = ScratchDir::create_in(parent, "run")
            .with_context(|| format!("creating a data directory in {}", parent.display()))?;
        let options = BrokerOptions {
            data_dir: Some(scratch.path().to_path_buf()),
            port: Some(0),
        };
        let handle = broker::start(profile, options)?;
        Ok(Broker {
            address: handle.address.to_string(),
            handle,
            scratch,
        })
    }

    fn admin(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.address, ClientConfig::default())?)
    }

    fn stop(self) -> anyhow::Result<()> {
        self.handle.shutdown().map_err(anyhow::Error::msg)
    }
}

/// The throughput cases' producer: 64 KiB batches, `in_flight` of them pipelined.
fn throughput_config(acks: Acks, in_flight: usize) -> ProducerConfig {
    ProducerConfig {
        acks,
        batch_bytes: BATCH_RECORDS * (RECORD_BYTES + 16) + 64,
        linger: Duration::from_millis(5),
        max_in_flight: in_flight,
        ..ProducerConfig::default()
    }
}

/// Records per second from one producer (`throughput_config`).
fn throughput(
    address: &str,
    topic: &str,
    acks: Acks,
    seconds: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (sent, took) = produce_while(address, (topic, acks), in_flight, |_| {
        Instant::now() < deadline
    })?;
    Ok(sent as f64 / took.as_secs_f64())
}

/// Sends `RECORD_BYTES` records from one producer (`throughput_config`), a batch's worth at
/// a time, while `more(records sent so far)`, then flushes: the records sent and the time
/// taken, flush included.
fn produce_while(
    address: &str,
    (topic, acks): (&str, Acks),
    in_flight: usize,
    mut more: impl FnMut(u64) -> bool,
) -> anyhow::Result<(u64, Duration)> {
    let client = Client::connect(address, ClientConfig::default())?;
    let mut producer = Producer::new(client, throughput_config(acks, in_flight))?;
    let value = vec![b'x'; RECORD_BYTES];
    let started = Instant::now();
    let mut sent = 0u64;
    while more(sent) {
        for _ in 0..BATCH_RECORDS {
            producer.send(topic, 0, b"", &value)?;
        }
        sent += BATCH_RECORDS as u64;
    }
    producer
        .flush()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok((sent, started.elapsed()))
}

/// Which segments the throughput cases write, for their table rows.
fn segments(args: &Args) -> String {
    match args.retention_bytes {
        Some(bytes) => format!("recycled segments (retention {bytes} bytes)"),
        None => "fresh segments".to_string(),
    }
}

/// One partition, with `--retention-bytes` when given.
fn create_throughput_topic(
    admin: &mut Client,
    args: &Args,
    name: &str,
    replication_factor: u16,
) -> anyhow::Result<()> {
    let mut request = client::topic_request(name, 1, replication_factor);
    request.retention_bytes = args.retention_bytes;
    admin.create_topic_with(&request)?;
    Ok(())
}

/// With `--retention-bytes` (and throughput cases to run): produces twice the retention and
/// a segment more into each topic, so that every later write overwrites a recycled segment.
fn fill_past_retention(
    args: &Args,
    address: &str,
    segment_bytes: u64,
    topics: &[(&str, Acks)],
) -> anyhow::Result<()> {
    let Some(retention) = args.retention_bytes.filter(|_| !args.latency_only) else {
        return Ok(());
    };
    let bytes = retention.saturating_mul(2).saturating_add(segment_bytes);
    for &case in topics {
        let (sent, took) = produce_while(address, case, args.in_flight, |sent| {
            sent * (RECORD_BYTES as u64) < bytes
        })?;
        println!(
            "filled {} past its retention of {retention} bytes: {} bytes of records in {:.1} s",
            case.0,
            sent * RECORD_BYTES as u64,
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// The throughput of two (topic, acks) cases, one after the other; `None` with
/// `--latency-only`.
fn throughput_pair(
    args: &Args,
    address: &str,
    (topic_a, acks_a): (&str, Acks),
    (topic_b, acks_b): (&str, Acks),
) -> anyhow::Result<Option<(f64, f64)>> {
    if args.latency_only {
        return Ok(None);
    }
    Ok(Some((
        throughput(address, topic_a, acks_a, args.seconds, args.in_flight)?,
        throughput(address, topic_b, acks_b, args.seconds, args.in_flight)?,
    )))
}

/// Open-loop single-record produce at `rate`/s with `acks`; latency from the intended send
/// time to the ack, in microseconds.
///
/// One thread sends on schedule (sleeping, not polling a socket with a timeout: socket
/// timeouts round up to scheduler ticks), another reads acks from a clone of the socket, so
/// neither waits on the other.
fn latency(
    address: &str,
    topic: &str,
    acks: Acks,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Latency> {
    let shard = Client::connect(address, ClientConfig::default())?.partition_address(topic, 0)?;
    latency_at(&shard, topic, acks, rate, seconds)
}

/// The round trip without a broker: a plain thread on the broker's core answers each
/// produce frame at once with an ack (no log, no disk), driven by the client of [`latency`]
/// at the same rate. It is what loopback TCP and the wake-ups on both sides cost any broker
/// on this machine; with the device's own figure it bounds what produce-to-ack can reach.
fn loopback_floor(core: usize, rate: u64, seconds: u64) -> anyhow::Result<Latency> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let answerer = std::thread::spawn(move || -> anyhow::Result<()> {
        pin(core);
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut ack = FrameBuf::new();
        let body = ProduceResponse {
            error: ErrorCode::NONE,
            base_offset: 0,
            log_start_offset: 0,
        };
        protocol::encode_frame(&mut ack, 0, &body).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut frames = FrameReader::new();
        loop {
            let request = match frames.next_frame(&mut stream) {
                Ok(request) => request,
                Err(ReadError::Closed { mid_frame: false }) => return Ok(()),
                Err(error) => bail!("loopback answerer: {error}"),
            };
            protocol::patch_correlation_id(ack.as_mut_slice(), request.header().correlation_id);
            stream.write_all(&ack)?;
        }
    });
    let latency = latency_at(&address, "loopback-floor", Acks::Leader, rate, seconds);
    // The answerer's own error, if it failed, says more than the client's "closed".
    let answered = answerer
        .join()
        .map_err(|_| anyhow::anyhow!("loopback answerer panicked"))?;
    answered?;
    latency
}

/// [`latency`] against the partition's shard at `shard` (an address).
fn latency_at(
    shard: &str,
    topic: &str,
    acks: Acks,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Latency> {
    let mut stream = std::net::TcpStream::connect(shard)?;
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let mut builder = BatchBuilder::new();
    builder.append(0, b"", &vec![b'y'; RECORD_BYTES], &[])?;
    let batch = builder.seal()?.to_vec();
    let request = ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks,
        timeout_ms: 10_000,
        batch,
    };
    let mut frame = FrameBuf::new();
    protocol::encode_frame(&mut frame, 0, &request).map_err(|e| anyhow::anyhow!("{e}"))?;
    least_timer_slack("brokerbench");
    // The intended time of send i comes from the schedule: the reader needs no table.
    let schedule = OpenLoop::new(rate, seconds);
    let (started, total) = (schedule.started, schedule.total);
    let due = move |i: u64| schedule.due(i);
    // When each send actually left (ns after `started`): the ack reader measures from it too,
    // separating the broker's service time from the sender's own lateness.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let sent_read = Arc::clone(&sent_at);
    let acks = std::thread::spawn(move || -> anyhow::Result<Latency> {
        let mut latency = Latency::new()?;
        let mut frames = FrameReader::new();
        for _ in 0..total {
            let response = frames
                .next_frame(&mut reader)
                .map_err(|e| anyhow::anyhow!("from the broker: {e}"))?;
            let now = Instant::now();
            let body: ProduceResponse = response
                .frame()
                .deserialize()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !body.error.is_ok() {
                bail!("produce failed: {}", body.error);
            }
            let i = response.header().correlation_id;
            let sent = sent_read
                .get(i as usize)
                .map_or(0, |at| at.load(Ordering::Acquire));
            latency.record(due(i), started + Duration::from_nanos(sent), now)?;
        }
        Ok(latency)
    });
    for i in 0..total {
        loop {
            let now = Instant::now();
            if now >= due(i) {
                break;
            }
            // Sleep, never spin: a spinning sender keeps the ack reader on the same core from
            // running until the next scheduler tick (4 ms here), which would be measured as
            // broker latency. Oversleeping still counts: latency runs from the intended time.
            std::thread::sleep(due(i) - now);
        }
        protocol::patch_correlation_id(frame.as_mut_slice(), i);
        if let Some(at) = sent_at.get(i as usize) {
            at.store(started.elapsed().as_nanos() as u64, Ordering::Release);
        }
        stream.write_all(&frame)?;
    }
    acks.join()
        .map_err(|_| anyhow::anyhow!("ack reader panicked"))?
}

/// The latency case's histograms, in microseconds.
struct Latency {
    /// Produce-to-ack from each send's intended time: the figure the target is about.
    from_intended: Histogram<u64>,
    /// Produce-to-ack from when the send actually left: the broker's service time.
    from_sent: Histogram<u64>,
    /// How late each send left (the sender's oversleep; counted in `from_intended`).
    send_lag: Histogram<u64>,
    /// Every stall: a gap of over [`STALL`] between two acks (or the start and the first),
    /// while sends were due every `1/rate`. A percentile hides a rare stall; this does not.
    stalls: Vec<Duration>,
    last_ack: Option<Instant>,
}

/// The gap between acks that counts as a stall: 200 sends' worth at 10,000/s.
const STALL: Duration = Duration::from_millis(20);

impl Latency {
    fn new() -> anyhow::Result<Latency> {
        let histogram = micros_histogram;
        Ok(Latency {
            from_intended: histogram()?,
            from_sent: histogram()?,
            send_lag: histogram()?,
            stalls: Vec::new(),
            last_ack: None,
        })
    }

    /// One ack that arrived at `acked` for a send intended at `due` that left at `sent`.
    fn record(&mut self, due: Instant, sent: Instant, acked: Instant) -> anyhow::Result<()> {
        let micros = |from: Instant, to: Instant| {
            to.saturating_duration_since(from).as_micros().max(1) as u64
        };
        self.from_intended.record(micros(due, acked))?;
        self.from_sent.record(micros(sent, acked))?;
        self.send_lag.record(micros(due, sent))?;
        let gap = acked.saturating_duration_since(self.last_ack.unwrap_or(due));
        if gap > STALL {
            self.stalls.push(gap);
        }
        self.last_ack = Some(acked);
        Ok(())
    }
}

/// "no stall over 20 ms", or how many `stalls` and the longest.
fn stall_report(stalls: &[Duration]) -> String {
    match stalls.iter().max() {
        None => format!("no stall over {} ms", STALL.as_millis()),
        Some(longest) => format!(
            "{} stalls over {} ms (no ack for that long), longest {:.1} ms",
            stalls.len(),
            STALL.as_millis(),
            longest.as_secs_f64() * 1e3
        ),
    }
}

/// A quantile of `histogram`, as a figure to take the median of.
fn at(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64
}

/// The median over runs of one figure.
fn median_over<R>(runs: &[R], figure: impl Fn(&R) -> f64) -> f64 {
    median(runs.iter().map(figure))
}

/// The medians over runs of a histogram's p50, p99 and p99.9, as a table cell.
fn median_quantiles<R>(runs: &[R], histogram: impl Fn(&R) -> &Histogram<u64>) -> String {
    let median_at = |quantile| median_over(runs, |r| at(histogram(r), quantile));
    format!(
        "p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        median_at(0.5),
        median_at(0.99),
        median_at(0.999)
    )
}

/// One run's disk floor, as a run line.
fn print_floor(run: usize, what: &str, floor: &Histogram<u64>) {
    println!(
        "run {run}: disk floor, {what}: p50 {} us p99 {} us p99.9 {} us (n={})",
        floor.value_at_quantile(0.5),
        floor.value_at_quantile(0.99),
        floor.value_at_quantile(0.999),
        floor.len(),
    );
}

/// How often the thread beside the spinner wakes in `core_noise`.
const NOISE_WAKE_EVERY: Duration = Duration::from_micros(200);

/// The broker core's noise (`bench_harness::noise`), a second alone and a second beside a
/// thread waking every `NOISE_WAKE_EVERY`, printed. `None` if the core could not be measured.
fn core_noise(core: usize) -> Option<(CoreNoise, CoreNoise)> {
    let span = Duration::from_secs(1);
    let measured = CoreNoise::measure(core, span, None).zip(CoreNoise::measure(
        core,
        span,
        Some(NOISE_WAKE_EVERY),
    ));
    let Some((alone, beside)) = measured else {
        println!("core {core} noise: not measured (no thread could be pinned there)");
        return None;
    };
    println!(
        "core {core} noise, a thread spinning for {:.1} s: alone it lost {:.2} % ({} gaps of {} us or more, {} over 100 us, longest {} us); beside a thread waking {} times on that core it lost {:.2} %, per wake-up {}",
        alone.span.as_secs_f64(),
        alone.lost_fraction() * 100.0,
        alone.gaps,
        noise::GAP_MIN.as_micros(),
        alone.gaps_over_100us,
        alone.longest.as_micros(),
        beside.wakeups,
        beside.lost_fraction() * 100.0,
        per_wakeup(&alone, &beside),
    );
    Some((alone, beside))
}

/// `beside`'s loss per wake-up beyond `alone`'s, in words.
fn per_wakeup(alone: &CoreNoise, beside: &CoreNoise) -> String {
    match beside.per_wakeup_us(alone) {
        None => "unknown (the thread beside it never woke)".to_owned(),
        Some(us) if us < 0.0 => format!("{us:.0} us (less than alone: the noise varied more)"),
        Some(us) => format!("{us:.0} us more"),
    }
}

/// How the machine's idle cores sleep (on a VM whose cores halt at once, every wake-up
/// costs tens of microseconds, in the broker and the floors alike) and which I/O scheduler
/// the data's disk uses: both move the durable figures (tuning/README.md).
fn print_machine_policy(data: &Path) {
    println!("idle cores: {}", engine::preflight::IdlePolicy::read());
    match engine::preflight::DiskQueue::of(data) {
        Some(queue) => println!("data disk: {queue}"),
        None => println!(
            "data disk: unknown (no block device queue for {})",
            data.display()
        ),
    }
}

/// One replica's disk floors on `core`, files under `scratch`, each printed as a run line:
/// write+fdatasync pairs timed whole, then the latency case's records group-committed.
fn one_replica_floors(
    run: usize,
    scratch: &Path,
    core: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let pairs = floor::durable_pairs(&scratch.join("floor-pairs"), core, rate, seconds)?;
    print_floor(
        run,
        &format!("one replica's 4 KiB O_DIRECT pwrite + fdatasync pairs timed whole, core {core}"),
        &pairs,
    );
    let committed = floor::group_commit(
        &[(&scratch.join("floor-commit"), core)],
        rate,
        seconds,
        SYNCS_IN_FLIGHT,
    )?;
    print_floor(
        run,
        &group_commit_floor(rate, &format!("one replica, core {core}")),
        &committed,
    );
    Ok((pairs, committed))
}

/// The group commit floor runs as many fdatasyncs at once as the broker's logs do.
const SYNCS_IN_FLIGHT: usize = engine::log::WritePipeline::SYNCS_IN_FLIGHT_DEFAULT;

/// What the group commit floor's run line says it measured.
fn group_commit_floor(rate: u64, replicas: &str) -> String {
    format!(
        "records arriving at {rate}/s group-committed on {replicas}, up to {SYNCS_IN_FLIGHT} fdatasyncs at once (no broker, no network), arrival to durable"
    )
}

fn pass(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

/// One run of the single-broker-core cases.
struct Run {
    /// Records/s with `acks=leader` and `leader+fsync`; `None` with `--latency-only`.
    throughput: Option<(f64, f64)>,
    latency: Latency,
    /// fio's 4 KiB write p99 + fdatasync p99 on the broker's core, us; `None` without fio.
    device_p99_us: Option<f64>,
    /// The same client against a thread that acks at once: the loopback round trip.
    floor: Latency,
    /// The disk's 4 KiB write+fdatasync pairs on the broker's core, timed whole (us).
    pairs: Histogram<u64>,
    /// The latency case's records group-committed on the broker's core, no broker (us).
    committed: Histogram<u64>,
}

fn main() -> anyhow::Result<()> {
    // The in-process broker's warnings go to stderr, as `ringmq serve` prints them
    // (`RINGMQ_LOG` overrides the level).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    if args.replication {
        return replication(&args);
    }
    let mut profile = match &args.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    profile.shards.cores = Cores::List(vec![args.broker_core]);
    // Before the broker starts: its shard may spin on that core (`spin_before_park_us`), and
    // a log that has gone quiet zeroes its next segment in the background.
    let noise = core_noise(args.broker_core);
    let segment_bytes = profile.log.segment_bytes;
    let broker = Broker::start(profile, &args.dir)?;
    let address = broker.address.as_str();
    pin(args.client_core);
    let mut admin = broker.admin()?;
    create_throughput_topic(&mut admin, &args, "bench-leader", 1)?;
    create_throughput_topic(&mut admin, &args, "bench-fsync", 1)?;
    admin.create_topic("bench-latency", 1, 1)?;
    fill_past_retention(
        &args,
        address,
        segment_bytes,
        &[
            ("bench-leader", Acks::Leader),
            ("bench-fsync", Acks::LeaderFsync),
        ],
    )?;

    println!(
        "brokerbench: broker on core {}, client on core {}, {}-byte records, {} s per case, {} runs, data in {}",
        args.broker_core,
        args.client_core,
        RECORD_BYTES,
        args.seconds,
        args.runs,
        broker.scratch.path().display()
    );
    print_machine_policy(broker.scratch.path());
    // The device's own figure in the same run: fio's 4 KiB O_DIRECT write + fdatasync on the
    // broker's core, next to the broker's durable produce-to-ack.
    let fio_file = broker.scratch.path().join("fio-write-fdatasync");
    let fio_ready = fio::version()
        .and_then(|version| {
            fio::lay_out_write_fdatasync(&fio_file, args.broker_core)?;
            println!(
                "device baseline: {version}, 4 KiB write+fdatasync, QD1, on core {}",
                args.broker_core
            );
            Ok(())
        })
        .map_err(|error| eprintln!("brokerbench: no fio baseline: {error:#}"))
        .is_ok();
    let acks = args.latency_acks.as_str();
    let mut runs: Vec<Run> = Vec::new();
    for run in 1..=args.runs {
        let mut device_p99_us = None;
        if fio_ready {
            let device = fio::write_fdatasync(&fio_file, args.seconds, args.broker_core)?;
            let bound_us = device.total_p99_bound_ns() / 1e3;
            println!(
                "run {run}: fio write p99 {:.0} us + fdatasync p99 {:.0} us = {bound_us:.0} us ({:.0} durable writes/s)",
                device.write_p99_ns / 1e3,
                device.sync_p99_ns / 1e3,
                device.iops
            );
            device_p99_us = Some(bound_us);
        }
        let (pairs, committed) = one_replica_floors(
            run,
            broker.scratch.path(),
            args.broker_core,
            args.rate,
            args.seconds,
        )?;
        let floor = loopback_floor(args.broker_core, args.rate, args.seconds)?;
        println!(
            "run {run}: loopback round trip, a thread on core {} acking at once (no log, no disk), {}/s: p50 {} us p99 {} us p99.9 {} us",
            args.broker_core,
            args.rate,
            floor.from_intended.value_at_quantile(0.5),
            floor.from_intended.value_at_quantile(0.99),
            floor.from_intended.value_at_quantile(0.999),
        );
        let throughput = throughput_pair(
            &args,
            address,
            ("bench-leader", Acks::Leader),
            ("bench-fsync", Acks::LeaderFsync),
        )?;
        let latency = latency(
            address,
            "bench-latency",
            args.latency_acks,
            args.rate,
            args.seconds,
        )?;
        let (intended, sent, lag) = (
            &latency.from_intended,
            &latency.from_sent,
            &latency.send_lag,
        );
        let throughputs = match throughput {
            Some((leader, fsync)) => format!(
                "acks=leader {leader:.0} rec/s ({:.1} MB/s); acks=leader+fsync {fsync:.0} rec/s; ",
                leader * RECORD_BYTES as f64 / 1e6
            ),
            None => String::new(),
        };
        println!(
            "run {run}: {throughputs}\
             single records at {}/s acks={acks}: from intended send p50 {} us p99 {} us p99.9 {} us max {} us; \
             from actual send p50 {} us p99 {} us; send lag p50 {} us p99 {} us max {} us (n={}); {}",
            args.rate,
            intended.value_at_quantile(0.5),
            intended.value_at_quantile(0.99),
            intended.value_at_quantile(0.999),
            intended.max(),
            sent.value_at_quantile(0.5),
            sent.value_at_quantile(0.99),
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.99),
            lag.max(),
            intended.len(),
            stall_report(&latency.stalls),
        );
        runs.push(Run {
            throughput,
            latency,
            device_p99_us,
            floor,
            pairs,
            committed,
        });
    }
    let p99 = median_over(&runs, |r| at(&r.latency.from_intended, 0.99));
    println!();
    println!(
        "| case (1 KiB records) | durability | median of {} runs |",
        args.runs
    );
    println!("|---|---|---|");
    let throughputs: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.throughput).collect();
    let leader = median_over(&throughputs, |t| t.0);
    let fsync = median_over(&throughputs, |t| t.1);
    if !args.latency_only {
        println!(
            "| throughput, 64 KiB batches, 1 producer, {} batches in flight, {} | acks=leader (O_DIRECT write, no fsync) | {leader:.0} rec/s ({:.1} MB/s) |",
            args.in_flight,
            segments(&args),
            leader * RECORD_BYTES as f64 / 1e6
        );
        println!(
            "| throughput, 64 KiB batches, 1 producer, {} batches in flight, {} | acks=leader+fsync | {fsync:.0} rec/s |",
            args.in_flight,
            segments(&args)
        );
    }
    println!(
        "| produce-to-ack from intended send, single records at {}/s | acks={acks} | p50 {:.0} us, p99 {p99:.0} us, p99.9 {:.0} us, max {:.0} us |",
        args.rate,
        median_over(&runs, |r| at(&r.latency.from_intended, 0.5)),
        median_over(&runs, |r| at(&r.latency.from_intended, 0.999)),
        median_over(&runs, |r| r.latency.from_intended.max() as f64),
    );
    println!(
        "| produce-to-ack from actual send (service time) | acks={acks} | {} |",
        median_quantiles(&runs, |r| &r.latency.from_sent)
    );
    let stalls: Vec<Duration> = runs
        .iter()
        .flat_map(|r| r.latency.stalls.iter().copied())
        .collect();
    println!(
        "| stalls, all runs | acks={acks} | {} |",
        stall_report(&stalls)
    );
    println!(
        "| sender lateness (included in the first row) | - | p50 {:.0} us, p99 {:.0} us |",
        median_over(&runs, |r| at(&r.latency.send_lag, 0.5)),
        median_over(&runs, |r| at(&r.latency.send_lag, 0.99)),
    );
    if fio_ready {
        let device = median(runs.iter().filter_map(|r| r.device_p99_us));
        println!(
            "| device: fio 4 KiB O_DIRECT write p99 + fdatasync p99, QD1 | fdatasync per write | {device:.0} us (broker p99 / device = {:.2}) |",
            p99 / device
        );
    }
    println!(
        "| loopback round trip: the same client, a thread on the broker core acking at once | no log, no disk | {} |",
        median_quantiles(&runs, |r| &r.floor.from_intended)
    );
    println!(
        "| disk floor: one 4 KiB O_DIRECT pwrite + fdatasync pair timed whole, on the broker core, at up to {}/s | fdatasync per write | {} |",
        args.rate,
        median_quantiles(&runs, |r| &r.pairs)
    );
    println!(
        "| disk floor under the latency case: records arriving at {}/s, group-committed like the log, no broker, no network | fdatasync | {} |",
        args.rate,
        median_quantiles(&runs, |r| &r.committed)
    );
    if let Some((alone, beside)) = &noise {
        println!(
            "| broker core noise, before the runs: a spinning thread's time lost alone; its loss per wake-up of a thread beside it, beyond that | - | {:.2} %; {} |",
            alone.lost_fraction() * 100.0,
            per_wakeup(alone, beside),
        );
    }
    let pairs_p99 = median_over(&runs, |r| at(&r.pairs, 0.99));
    let committed_p99 = median_over(&runs, |r| at(&r.committed, 0.99));
    println!();
    // Each target is judged only on the case it is about: the latency target on durable
    // (leader+fsync) acks, the throughput target when the throughput cases ran.
    if args.latency_acks == Acks::LeaderFsync {
        println!(
            "target: p99 produce-to-ack with fsync < 250 us: {} ({p99:.0} us; the disk's write+fdatasync pair alone: p99 {pairs_p99:.0} us; the same records group-committed with no broker: p99 {committed_p99:.0} us)",
            pass(p99 < 250.0)
        );
    }
    if !args.latency_only {
        println!(
            "target: throughput with fsync >= 150,000 rec/s: {} ({fsync:.0})",
            pass(fsync >= 150_000.0)
        );
    }
    broker.stop()
}

/// One run of `--replication`.
struct ReplicationRun {
    /// Records/s of RF=1 `leader+fsync` and RF=2 `all+fsync`; `None` with `--latency-only`.
    throughput: Option<(f64, f64)>,
    /// Produce-to-ack from the intended send, RF=1 `leader+fsync` and RF=2 `all+fsync`.
    rf1: Histogram<u64>,
    rf2: Histogram<u64>,
    /// The disk's write+fdatasync pairs (us): one replica's on the leader's core, and two
    /// replicas' on the leader's and the follower's cores, timed until both are durable.
    pairs1: Histogram<u64>,
    pairs2: Histogram<u64>,
    /// The latency case's records group-committed, no broker (us): on one replica, on two.
    committed1: Histogram<u64>,
    committed2: Histogram<u64>,
}

/// RF=1 `leader+fsync` against RF=2 `all+fsync` on every allowed core, interleaved per run.
fn replication(args: &Args) -> anyhow::Result<()> {
    // The leaders go on the broker core's shard (shard i runs on the i-th allowed core):
    // on a VM whose disk has one interrupt queue, that core takes every completion, and a
    // shard on another core waits for a cross-core wake-up on each write and sync (single
    // records at 10k/s, leader+fsync, one shard: p50 334-340 us on the interrupt's core,
    // 434-437 us on the other). RF=1 and RF=2 then differ by the follower alone.
    // The profile's own cores (the default: every allowed core), unlike the one-shard cases.
    let profile = match &args.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    let cores: Vec<usize> = profile
        .resolve(&engine::config::allowed_cores())?
        .iter()
        .map(|shard| shard.core)
        .collect();
    let leader_shard = cores
        .iter()
        .position(|&core| core == args.broker_core)
        .with_context(|| {
            format!(
                "--broker-core {} runs no shard of the profile (cores {cores:?})",
                args.broker_core
            )
        })?;
    // The RF=2 topics' followers are on the next shard (see the padding below).
    let follower_core = cores[(leader_shard + 1) % cores.len()];
    // Before the broker starts (see `core_noise`): the leaders' core, then the followers'.
    core_noise(args.broker_core);
    if follower_core != args.broker_core {
        core_noise(follower_core);
    }
    let segment_bytes = profile.log.segment_bytes;
    let broker = Broker::start(profile, &args.dir)?;
    let shards = broker.handle.shards.len();
    let address = broker.address.as_str();
    pin(args.client_core);
    let mut admin = broker.admin()?;
    // Placement is round-robin over partitions of all topics: pad so every measured topic
    // has its leader on that shard (the follower of the RF=2 ones on the next shard).
    if leader_shard > 0 {
        admin.create_topic("pad-0", leader_shard as u32, 1)?;
    }
    let pad = (shards - 1).max(1) as u32;
    create_throughput_topic(&mut admin, args, "rf1-tput", 1)?;
    admin.create_topic("pad-a", pad, 1)?;
    create_throughput_topic(&mut admin, args, "rf2-tput", 2)?;
    admin.create_topic("pad-b", pad, 1)?;
    admin.create_topic("rf1-lat", 1, 1)?;
    admin.create_topic("pad-c", pad, 1)?;
    admin.create_topic("rf2-lat", 1, 2)?;
    let metadata = admin.metadata()?.clone();
    for name in ["rf1-tput", "rf2-tput", "rf1-lat", "rf2-lat"] {
        let topic = metadata.topic(name).context("topic missing")?;
        let placement: Vec<_> = topic
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        println!("{name}: replicas {placement:?}");
        if placement.first().and_then(|r| r.first()) != Some(&(leader_shard as u16)) {
            bail!("{name}: leader not on shard {leader_shard} ({placement:?})");
        }
    }
    println!(
        "brokerbench --replication: broker on {shards} shards, leaders on shard {leader_shard} (core {}), client on core {}, {}-byte records, {} s per case, {} runs",
        args.broker_core, args.client_core, RECORD_BYTES, args.seconds, args.runs
    );
    print_machine_policy(broker.scratch.path());
    fill_past_retention(
        args,
        address,
        segment_bytes,
        &[
            ("rf1-tput", Acks::LeaderFsync),
            ("rf2-tput", Acks::AllFsync),
        ],
    )?;
    let mut runs: Vec<ReplicationRun> = Vec::new();
    for run in 1..=args.runs {
        let throughput = throughput_pair(
            args,
            address,
            ("rf1-tput", Acks::LeaderFsync),
            ("rf2-tput", Acks::AllFsync),
        )?;
        let rf1 = latency(
            address,
            "rf1-lat",
            Acks::LeaderFsync,
            args.rate,
            args.seconds,
        )?;
        let rf2 = latency(address, "rf2-lat", Acks::AllFsync, args.rate, args.seconds)?;
        let scratch = broker.scratch.path();
        let (pairs1, committed1) =
            one_replica_floors(run, scratch, args.broker_core, args.rate, args.seconds)?;
        // The same, with the follower's on its core: a pair or a record ends when both are.
        let both = format!("cores {} and {follower_core}, one disk", args.broker_core);
        let pairs2 = floor::replicated_pairs(
            (
                &scratch.join("floor-pairs"),
                &scratch.join("floor-follower"),
            ),
            (args.broker_core, follower_core),
            args.rate,
            args.seconds,
        )?;
        print_floor(
            run,
            &format!("two replicas' pairs timed whole, {both}"),
            &pairs2,
        );
        let committed2 = floor::group_commit(
            &[
                (&scratch.join("floor-commit"), args.broker_core),
                (&scratch.join("floor-commit-follower"), follower_core),
            ],
            args.rate,
            args.seconds,
            SYNCS_IN_FLIGHT,
        )?;
        print_floor(
            run,
            &group_commit_floor(args.rate, &format!("two replicas, {both}")),
            &committed2,
        );
        let stalls = (stall_report(&rf1.stalls), stall_report(&rf2.stalls));
        let (rf1, rf2) = (rf1.from_intended, rf2.from_intended);
        let (t1, t2) = match throughput {
            Some((t1, t2)) => (format!("{t1:.0} rec/s, "), format!("{t2:.0} rec/s, ")),
            None => Default::default(),
        };
        println!(
            "run {run}: RF=1 leader+fsync {t1}p50 {} us p99 {} us max {} us ({}); RF=2 all+fsync {t2}p50 {} us p99 {} us max {} us ({})",
            rf1.value_at_quantile(0.5),
            rf1.value_at_quantile(0.99),
            rf1.max(),
            stalls.0,
            rf2.value_at_quantile(0.5),
            rf2.value_at_quantile(0.99),
            rf2.max(),
            stalls.1,
        );
        runs.push(ReplicationRun {
            throughput,
            rf1,
            rf2,
            pairs1,
            pairs2,
            committed1,
            committed2,
        });
    }
    let throughputs: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.throughput).collect();
    let (t1, t2) = (
        median_over(&throughputs, |t| t.0),
        median_over(&throughputs, |t| t.1),
    );
    let p50_1 = median_over(&runs, |r| at(&r.rf1, 0.5));
    let p50_2 = median_over(&runs, |r| at(&r.rf2, 0.5));
    let p99_1 = median_over(&runs, |r| at(&r.rf1, 0.99));
    let p99_2 = median_over(&runs, |r| at(&r.rf2, 0.99));
    println!();
    println!(
        "| case (1 KiB records, median of {} runs) | RF=1 leader+fsync | RF=2 all+fsync | ratio |",
        args.runs
    );
    println!("|---|---|---|---|");
    if !args.latency_only {
        println!(
            "| throughput, 64 KiB batches, 1 producer, {} batches in flight, {} | {t1:.0} rec/s | {t2:.0} rec/s | {:.2} |",
            args.in_flight,
            segments(args),
            t2 / t1.max(1.0)
        );
    }
    println!(
        "| produce-to-ack p50, single records at {}/s | {p50_1:.0} us | {p50_2:.0} us | {:.2} |",
        args.rate,
        p50_2 / p50_1.max(1.0)
    );
    println!(
        "| produce-to-ack p99, single records at {}/s | {p99_1:.0} us | {p99_2:.0} us | {:.2} |",
        args.rate,
        p99_2 / p99_1.max(1.0)
    );
    let floor_p50 = (
        median_over(&runs, |r| at(&r.pairs1, 0.5)),
        median_over(&runs, |r| at(&r.pairs2, 0.5)),
    );
    let floor_p99 = (
        median_over(&runs, |r| at(&r.pairs1, 0.99)),
        median_over(&runs, |r| at(&r.pairs2, 0.99)),
    );
    println!(
        "| disk floor p50: 4 KiB pwrite + fdatasync pairs, one replica / two on one disk | {:.0} us | {:.0} us | {:.2} |",
        floor_p50.0,
        floor_p50.1,
        floor_p50.1 / floor_p50.0.max(1.0)
    );
    println!(
        "| disk floor p99: the same pairs | {:.0} us | {:.0} us | {:.2} |",
        floor_p99.0,
        floor_p99.1,
        floor_p99.1 / floor_p99.0.max(1.0)
    );
    for (quantile, name) in [(0.5, "p50"), (0.99, "p99")] {
        let one = median_over(&runs, |r| at(&r.committed1, quantile));
        let two = median_over(&runs, |r| at(&r.committed2, quantile));
        println!(
            "| disk floor {name} under the latency case: records arriving at {}/s, group-committed like the log, no broker, no network | {one:.0} us | {two:.0} us | {:.2} |",
            args.rate,
            two / one.max(1.0)
        );
    }
    println!();
    let p99_target = format!("RF=2 p99 <= 1.5x RF=1: {}", pass(p99_2 <= 1.5 * p99_1));
    if args.latency_only {
        println!("target: {p99_target}");
    } else {
        println!(
            "target: {p99_target}; RF=2 throughput >= 60% of RF=1: {}",
            pass(t2 >= 0.6 * t1)
        );
    }
    broker.stop()
}
