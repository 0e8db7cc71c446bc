//! `loadgen`: drive a broker at a fixed rate and report honest latency.
//!
//! ```text
//! loadgen run --target URL [--workload FILE] [--rate N|max] [--duration 10s] [--message-size 1024]
//!             [--producers N] [--consumers N] [--acks ...] [--json FILE]
//! loadgen compare [--duration 10s] [--rate N] [--json FILE] [--plot FILE.svg]
//! ```
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadgen::compare::{self, CompareOptions};
use loadgen::report;
use loadgen::run::{self, RunOptions, Target};
use loadgen::workload::{Rate, WorkloadFile, parse_duration};

const ABOUT: &str = "Open-loop load generator for ringmq, core NATS and JetStream";

const LONG_ABOUT: &str = "\
Open-loop load generator for ringmq, core NATS and JetStream.

Every message gets an intended send time from a fixed schedule (--rate). Latency is measured
from that time, not from when the message actually left, so a broker stall counts against
every message it delayed (no coordinated omission); the gap between intended and actual send
is reported too. Each worker records into its own HdrHistogram; they are merged at the end.

Examples:
  loadgen run --target ringmq://127.0.0.1:9092 --rate 50000 --duration 10s --acks leader+fsync
  loadgen run --target nats://127.0.0.1:4222 --workload loadgen/workloads/1-topic-1-partition-1kb.yaml
  loadgen run --target ringmq://127.0.0.1:9092 --rate max            # peak throughput, closed loop
  loadgen compare --duration 10s --rate 20000 --json out.json --plot out.svg

Ctrl-C stops sending, waits briefly for outstanding acks and deliveries, and prints the result
of what ran.";

#[derive(Parser)]
#[command(name = "loadgen", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload against one broker and print its latency, throughput and CPU.
    Run(RunArgs),
    /// Kafka-style and NATS-style profiles against ringmq, core NATS and JetStream, side by
    /// side (starts its own servers on free loopback ports).
    Compare(CompareArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Broker to drive: ringmq://HOST:PORT, nats://HOST:PORT (core pub/sub, fire and forget)
    /// or jetstream://HOST:PORT (file-storage stream, publish with ack).
    #[arg(long, value_name = "URL")]
    target: String,
    /// An OpenMessaging Benchmark workload (YAML). Flags given here override its fields.
    #[arg(long, value_name = "FILE")]
    workload: Option<PathBuf>,
    /// Messages per second over all producers (open loop), or `max`: as fast as acks allow
    /// (closed loop, for peak throughput; its latencies are labelled closed-loop). [default: 10000]
    #[arg(long, value_name = "N|max")]
    rate: Option<String>,
    /// How long to measure, e.g. 10s, 2m. [default: 10s]
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Load before measuring starts (not counted). [default: 0s]
    #[arg(long, value_name = "DURATION")]
    warmup: Option<String>,
    /// Bytes per message (at least 16: loadgen stamps the send time into each). [default: 1024]
    #[arg(long, value_name = "BYTES")]
    message_size: Option<usize>,
    /// Producers per topic. [default: 1]
    #[arg(long, value_name = "N")]
    producers: Option<u32>,
    /// Consumers per subscription (they split the partitions). [default: 1]
    #[arg(long, value_name = "N")]
    consumers: Option<u32>,
    /// Topics. [default: 1]
    #[arg(long, value_name = "N")]
    topics: Option<u32>,
    /// Partitions per topic. [default: 1]
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,
    /// ringmq only: when the broker acknowledges: none, leader, leader+fsync, all, all+fsync.
    /// [default: leader]
    #[arg(long, value_name = "ACKS")]
    acks: Option<String>,
    /// ringmq only: the storage of the topics loadgen creates: disk, or memory (no disk I/O;
    /// refuses the +fsync acks). [default: disk]
    #[arg(long, value_name = "STORAGE")]
    storage: Option<String>,
    /// Bytes of messages per request (0: every message on its own). [default: 0]
    #[arg(long, value_name = "BYTES")]
    batch_bytes: Option<usize>,
    /// How long a part-filled batch waits for more messages, e.g. 5ms. [default: 0ms]
    #[arg(long, value_name = "DURATION")]
    linger: Option<String>,
    /// Unanswered requests per producer connection. [default: 1024]
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,
    /// Write the result as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the result as CSV here.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// CPUs for loadgen's workers, e.g. 0 or 0,2. [default: allowed CPUs the broker does not use]
    #[arg(long, value_delimiter = ',', value_name = "CPUS")]
    cores: Option<Vec<usize>>,
    /// Process whose CPU is reported as the broker's. [default: the local listener on the port]
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Label for the results. [default: the workload's name]
    #[arg(long)]
    profile: Option<String>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct CompareArgs {
    /// How long each run measures.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    duration: String,
    /// Load before each run's measurement starts (not counted).
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    warmup: String,
    /// Offered rate of the latency runs, messages per second (every system gets the same).
    #[arg(long, default_value = "20000", value_name = "N")]
    rate: String,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    message_size: usize,
    /// Write every run's result as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write every run's result as CSV here.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write the latency percentile distributions as an SVG plot here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// A running ringmq broker to use instead of starting one.
    #[arg(long, value_name = "ringmq://HOST:PORT")]
    target: Option<String>,
    /// The ringmq binary to start. [default: next to loadgen, then PATH]
    #[arg(long, value_name = "PATH")]
    ringmq_bin: Option<PathBuf>,
    /// The nats-server binary. [default: PATH; without one, NATS columns are skipped]
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,
    /// Where started brokers keep data (a disk with O_DIRECT, not tmpfs). [default: system temp dir]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// CPU for the started brokers. [default: the last allowed CPU]
    #[arg(long, value_name = "CPU")]
    broker_core: Option<usize>,
    /// Skip the closed-loop (max throughput) runs.
    #[arg(long)]
    no_max: bool,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    // First Ctrl-C: stop sending, drain and report. A second one exits at once.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop));
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let result = match cli.command {
        Command::Run(args) => run_command(args, stop),
        Command::Compare(args) => compare_command(args, stop),
    };
    if let Err(error) = result {
        eprintln!("loadgen: {error:#}");
        std::process::exit(1);
    }
}

fn run_command(args: RunArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let target = Target::parse(&args.target)?;
    let mut file = match &args.workload {
        Some(path) => WorkloadFile::read(path)?,
        None => WorkloadFile::default(),
    };
    if let Some(rate) = &args.rate {
        file.producer_rate = Some(match Rate::parse(rate).map_err(anyhow::Error::msg)? {
            Rate::PerSecond(rate) => rate,
            Rate::Max => 0.0,
        });
    }
    if let Some(duration) = &args.duration {
        let duration = parse_duration(duration).map_err(anyhow::Error::msg)?;
        file.test_duration_seconds = Some(duration.as_secs_f64());
    }
    if let Some(warmup) = &args.warmup {
        let warmup = parse_duration(warmup).map_err(anyhow::Error::msg)?;
        file.warmup_duration_seconds = Some(warmup.as_secs_f64());
    }
    if let Some(linger) = &args.linger {
        let linger = parse_duration(linger).map_err(anyhow::Error::msg)?;
        file.linger_ms = Some(linger.as_secs_f64() * 1e3);
    }
    file.message_size = args.message_size.or(file.message_size);
    file.producers_per_topic = args.producers.or(file.producers_per_topic);
    file.consumer_per_subscription = args.consumers.or(file.consumer_per_subscription);
    file.topics = args.topics.or(file.topics);
    file.partitions_per_topic = args.partitions.or(file.partitions_per_topic);
    file.acks = args.acks.clone().or(file.acks);
    file.storage = args.storage.clone().or(file.storage);
    file.batch_bytes = args.batch_bytes.or(file.batch_bytes);
    file.max_in_flight = args.max_in_flight.or(file.max_in_flight);
    let workload = file.resolve()?;
    let options = RunOptions {
        profile: args
            .profile
            .clone()
            .unwrap_or_else(|| workload.name.clone()),
        target,
        workload,
        cores: args.cores.clone(),
        broker_pid: args.broker_pid,
        progress: !args.no_progress,
        jetstream_sync: "server's sync_interval".into(),
        target_version: None,
    };
    let outcome = run::run(&options, stop)?;
    println!("{}", report::run_table(&outcome.result));
    if outcome.interrupted {
        println!(
            "interrupted: the figures cover the {:.1} s that ran",
            outcome.result.duration_s
        );
    }
    let results = [outcome.result];
    if let Some(path) = &args.json {
        std::fs::write(path, report::to_json(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::to_csv(&results))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn compare_command(args: CompareArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rate = match Rate::parse(&args.rate).map_err(anyhow::Error::msg)? {
        Rate::PerSecond(rate) => rate,
        Rate::Max => anyhow::bail!(
            "--rate for compare is the offered rate of the latency runs; the max runs happen anyway"
        ),
    };
    let options = CompareOptions {
        duration: parse_duration(&args.duration).map_err(anyhow::Error::msg)?,
        warmup: parse_duration(&args.warmup).map_err(anyhow::Error::msg)?,
        rate,
        message_bytes: args.message_size,
        target: args.target.as_deref().map(Target::parse).transpose()?,
        ringmq_bin: args.ringmq_bin,
        nats_server: args.nats_server,
        data_dir: args.data_dir,
        broker_core: args.broker_core,
        max_runs: !args.no_max,
        progress: !args.no_progress,
    };
    let comparison = compare::run(&options, stop)?;
    println!("{}", comparison.text);
    if let Some(path) = &args.json {
        std::fs::write(path, report::to_json(&comparison.results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::to_csv(&comparison.results))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        loadgen::plot::write_svg(path, &comparison.curves)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
