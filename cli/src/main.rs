//! `ringmq`: run a broker, or talk to one.
//!
//! ```text
//! ringmq serve [--config FILE] [--data-dir DIR] [--port PORT]
//! ringmq topic create NAME [--partitions N] [--replication-factor R] [--storage disk|memory] [--retention-bytes B]
//! ringmq topic list | describe NAME | delete NAME
//! ringmq produce NAME [--partition P] [--acks none|leader|leader+fsync|all|all+fsync] [--key K] [--value V]
//! ringmq consume NAME [--partition P] [--from earliest|latest|OFFSET] [--count N] [--follow]
//! ```
//!
//! Client commands take `--broker HOST:PORT` (default: the local broker's default port).
//! Exit status 0 on success; otherwise non-zero with a one-line reason on stderr.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use client::{
    Acks, Client, ClientConfig, ClientError, ConsumedRecord, Consumer, ConsumerConfig, OffsetSpec,
    Producer, ProducerConfig, StartOffset, Subscription,
};
use engine::broker::{self, BrokerOptions};
use engine::config::Profile;
use protocol::StorageKind;
use protocol::api::CreateTopicRequest;

/// The local broker's default shared port (tuning/default.toml).
const DEFAULT_BROKER: &str = "127.0.0.1:9092";

#[derive(Parser)]
#[command(name = "ringmq", version, about = "ringmq: a thread-per-core message broker", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker in the foreground until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Create, list, describe or delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one record per line of stdin (or the one given with --value).
    Produce(ProduceArgs),
    /// Print one record value per line.
    Consume(ConsumeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Profile to run with (see tuning/); default: the embedded tuning/default.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where shards keep their data (replaces broker.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shared port (replaces broker.port; shard ports follow it). 0 picks free ports.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Args, Clone)]
struct BrokerArg {
    /// Any shard's shared address.
    #[arg(long, default_value = DEFAULT_BROKER)]
    broker: String,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u16,
        /// Where the partitions keep their records: `disk`, or `memory` (no disk I/O, emptied
        /// by a restart, bounded by --retention-bytes; the +fsync acks are refused).
        #[arg(long, default_value = "disk")]
        storage: StorageKind,
        /// Bytes each partition keeps before its oldest segments go. Default: the broker
        /// profile's `retention_bytes`; for a memory topic without one, 64 MiB.
        #[arg(long)]
        retention_bytes: Option<u64>,
        #[command(flatten)]
        broker: BrokerArg,
    },
    /// List topic names.
    List {
        #[command(flatten)]
        broker: BrokerArg,
    },
    /// Show a topic's settings and each partition's leader, replicas and offsets.
    Describe {
        name: String,
        #[command(flatten)]
        broker: BrokerArg,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        broker: BrokerArg,
    },
}

#[derive(Args)]
struct ProduceArgs {
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// When the broker acknowledges: none, leader, leader+fsync, all, all+fsync.
    #[arg(long, default_value = "leader")]
    acks: Acks,
    /// Key of every record.
    #[arg(long)]
    key: Option<String>,
    /// Produce this one record instead of reading stdin.
    #[arg(long)]
    value: Option<String>,
    #[command(flatten)]
    broker: BrokerArg,
}

#[derive(Args)]
struct ConsumeArgs {
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// earliest, latest, or an offset.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the current end: the broker
    /// pushes them to a subscription as they are committed.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    broker: BrokerArg,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic { command } => topic(command),
        Command::Produce(args) => produce(args),
        Command::Consume(args) => consume(args),
    };
    if let Err(error) = result {
        // One line: the chain of causes, outermost first.
        let reason: Vec<String> = error.chain().map(ToString::to_string).collect();
        eprintln!("ringmq: {}", reason.join(": "));
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let profile = match &args.config {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    let options = BrokerOptions {
        data_dir: args.data_dir,
        port: args.port,
    };
    // Block SIGINT/SIGTERM delivery to threads before any shard starts, so the signal lands
    // in the iterator below and not as a default-action kill.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let handle = broker::start(profile, options)?;
    let shards: Vec<String> = handle
        .shards
        .iter()
        .map(|s| format!("{}:{}", s.host, s.port))
        .collect();
    println!(
        "ringmq serving on {} (shard ports: {})",
        handle.address,
        shards.join(", ")
    );
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        eprintln!("ringmq: signal {signal}: shutting down");
    }
    handle
        .shutdown()
        .map_err(anyhow::Error::msg)
        .context("shutdown")?;
    eprintln!("ringmq: stopped cleanly");
    Ok(())
}

fn connect(broker: &str) -> anyhow::Result<Client> {
    Client::connect(broker, ClientConfig::default())
        .with_context(|| format!("connecting to {broker}"))
}

fn topic(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            storage,
            retention_bytes,
            broker,
        } => {
            let request = CreateTopicRequest {
                retention_bytes,
                storage,
                ..client::topic_request(&name, partitions, replication_factor)
            };
            connect(&broker.broker)?
                .create_topic_with(&request)
                .with_context(|| format!("creating topic {name}"))?;
            println!(
                "created topic {name} ({partitions} partitions, {} storage)",
                storage.as_str()
            );
        }
        TopicCommand::List { broker } => {
            for name in connect(&broker.broker)?.list_topics()? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { name, broker } => {
            let mut client = connect(&broker.broker)?;
            let metadata = client.metadata()?;
            let Some(topic) = metadata.topic(&name) else {
                bail!("topic {name} does not exist")
            };
            let retention = |value: Option<u64>, unit: &str| {
                value.map_or_else(|| "unbounded".to_string(), |v| format!("{v} {unit}"))
            };
            println!(
                "topic {}  storage {}  partitions {}  replication-factor {}  min-insync {}  \
                 retention {} / {}",
                topic.name,
                topic.storage.as_str(),
                topic.partitions.len(),
                topic.replication_factor,
                topic.min_insync,
                retention(topic.retention_ms, "ms"),
                retention(topic.retention_bytes, "bytes"),
            );
            println!(
                "partition  leader  epoch  replicas  in-sync  log-start  high-watermark  \
                 hw-synced  log-end"
            );
            let shards = |list: &[u16]| {
                list.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for p in &topic.partitions {
                println!(
                    "{:>9}  {:>6}  {:>5}  {:>8}  {:>7}  {:>9}  {:>14}  {:>9}  {:>7}",
                    p.partition,
                    p.leader_shard,
                    p.leader_epoch,
                    shards(&p.replicas),
                    shards(&p.in_sync),
                    p.log_start_offset,
                    p.high_watermark,
                    p.high_watermark_synced,
                    p.log_end_offset,
                );
            }
            let followers = topic
                .partitions
                .iter()
                .flat_map(|p| p.followers.iter().map(move |f| (p.partition, f)));
            let mut header = true;
            for (partition, f) in followers {
                if header {
                    println!(
                        "\npartition  follower  state        behind-written  behind-synced  behind-ms"
                    );
                    header = false;
                }
                println!(
                    "{:>9}  {:>8}  {:<11}  {:>14}  {:>13}  {:>9}",
                    partition,
                    f.shard,
                    f.state.as_str(),
                    f.records_behind,
                    f.records_behind_synced,
                    f.time_behind_ms,
                );
            }
        }
        TopicCommand::Delete { name, broker } => {
            connect(&broker.broker)?
                .delete_topic(&name)
                .with_context(|| format!("deleting topic {name}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let client = connect(&args.broker.broker)?;
    let config = ProducerConfig {
        acks: args.acks,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(client, config)?;
    let key = args.key.unwrap_or_default();
    let mut sent = 0u64;
    let mut send = |producer: &mut Producer, value: &str| -> anyhow::Result<()> {
        producer.send(
            &args.topic,
            args.partition,
            key.as_bytes(),
            value.as_bytes(),
        )?;
        sent += 1;
        Ok(())
    };
    match &args.value {
        Some(value) => send(&mut producer, value)?,
        None => {
            for line in std::io::stdin().lock().lines() {
                send(&mut producer, &line.context("reading stdin")?)?;
            }
        }
    }
    producer
        .flush()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    eprintln!(
        "produced {sent} records to {}-{} (acks {})",
        args.topic,
        args.partition,
        args.acks.as_str()
    );
    Ok(())
}

fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let from =
        match args.from.as_str() {
            "earliest" => StartOffset::Earliest,
            "latest" => StartOffset::Latest,
            offset => StartOffset::Offset(offset.parse().with_context(|| {
                format!("--from {offset}: expected earliest, latest or an offset")
            })?),
        };
    let client = connect(&args.broker.broker)?;
    if args.follow {
        follow(client, &args, from)
    } else {
        read_to_end(client, &args, from)
    }
}

/// Longest one wait of `consume` for records: what it printed is flushed at least this often.
const CONSUME_WAIT: Duration = Duration::from_millis(500);

/// `consume` without `--follow`: long-poll fetches up to the partition's end as it was at the
/// start (or `--count` records), then exit.
fn read_to_end(mut client: Client, args: &ConsumeArgs, from: StartOffset) -> anyhow::Result<()> {
    let end = client.list_offsets(&args.topic, args.partition, OffsetSpec::Latest)?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
    let position = consumer.assign(&args.topic, args.partition, from)?;
    print_values(
        args.count,
        position,
        |position| position >= end,
        || consumer.poll(CONSUME_WAIT),
    )
}

/// `consume --follow`: records as the broker pushes them to a subscription, from `from` on,
/// until `--count` records (without it, until the process is stopped).
fn follow(client: Client, args: &ConsumeArgs, from: StartOffset) -> anyhow::Result<()> {
    let mut subscription = Subscription::new(client, &args.topic, args.partition, from)
        .with_context(|| format!("subscribing to {}-{}", args.topic, args.partition))?;
    // Dropping the subscription closes its connection, which ends it on the broker; waiting
    // for an Unsubscribe answer would only delay the exit.
    print_values(
        args.count,
        subscription.position(),
        |_| false,
        || subscription.next_records(CONSUME_WAIT),
    )
}

/// Prints the value of each record `next` returns, one a line, until `count` records were
/// printed or `at_end` holds for the position (`position` at first, then the offset after the
/// last record printed).
fn print_values(
    count: Option<u64>,
    mut position: u64,
    at_end: impl Fn(u64) -> bool,
    mut next: impl FnMut() -> Result<Vec<ConsumedRecord>, ClientError>,
) -> anyhow::Result<()> {
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let done = |printed: u64, position: u64| {
        count.is_some_and(|count| printed >= count) || at_end(position)
    };
    while !done(printed, position) {
        for record in next()? {
            out.write_all(&record.value)?;
            out.write_all(b"\n")?;
            printed += 1;
            position = record.offset + 1;
            if done(printed, position) {
                break;
            }
        }
        out.flush()?;
    }
    Ok(())
}
