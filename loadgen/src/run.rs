//! One run from start to result: parse the target, start the workers, show progress, sample
//! CPU over the measured window, merge the workers' stats into a [`RunResult`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail};
use protocol::{Acks, StorageKind};

use crate::cpu::{self, CpuMeter};
use crate::nats::{self, Flavour, Nats};
use crate::plan::{Plan, Window};
use crate::rate::Clock;
use crate::report::RunResult;
use crate::ringmq::{self, Ringmq};
use crate::stats::{Live, Stats};
use crate::workload::{Rate, Workload};

/// What loadgen drives.
#[derive(Debug, Clone)]
pub enum Target {
    Ringmq(Ringmq),
    Nats(Nats),
}

impl Target {
    /// `ringmq://HOST:PORT`, `nats://HOST:PORT` or `jetstream://HOST:PORT`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!(
                "target '{url}' needs a scheme: ringmq://HOST:PORT, nats://HOST:PORT or jetstream://HOST:PORT"
            );
        };
        let address = rest.trim_end_matches('/');
        let Some((host, port)) = address.rsplit_once(':') else {
            bail!("target '{url}' needs HOST:PORT after {scheme}://");
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("target '{url}': '{address}' is not HOST:PORT with a port in 1..=65535");
        }
        let address = address.to_string();
        match scheme {
            "ringmq" => Ok(Target::Ringmq(Ringmq { address })),
            "nats" => Ok(Target::Nats(Nats {
                address,
                flavour: Flavour::Core,
            })),
            "jetstream" => Ok(Target::Nats(Nats {
                address,
                flavour: Flavour::JetStream,
            })),
            "kafka" => {
                bail!("kafka:// is not supported by this build (no Kafka client is compiled in)")
            }
            other => {
                bail!("unknown target scheme '{other}://': use ringmq://, nats:// or jetstream://")
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Target::Ringmq(r) => format!("ringmq://{}", r.address),
            Target::Nats(n) if n.flavour == Flavour::Core => format!("nats://{}", n.address),
            Target::Nats(n) => format!("jetstream://{}", n.address),
        }
    }

    fn port(&self) -> Option<u16> {
        let address = match self {
            Target::Ringmq(r) => &r.address,
            Target::Nats(n) => &n.address,
        };
        address.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    fn is_local(&self) -> bool {
        let address = match self {
            Target::Ringmq(r) => &r.address,
            Target::Nats(n) => &n.address,
        };
        address.starts_with("127.")
            || address.starts_with("localhost")
            || address.starts_with("[::1]")
    }

    /// How this target's consumers get their messages.
    pub fn consumer(&self) -> &'static str {
        match self {
            Target::Ringmq(_) => "push subscription (Subscribe)",
            Target::Nats(n) if n.flavour == Flavour::Core => "core queue subscription (push)",
            Target::Nats(_) => "JetStream durable pull consumer",
        }
    }

    /// What a message's acknowledgement promises on this target with these acks.
    pub fn durability(
        &self,
        acks: Acks,
        storage: StorageKind,
        jetstream_sync: &str,
    ) -> (String, String) {
        match self {
            Target::Ringmq(_) => {
                let durability = match (storage, acks) {
                    (StorageKind::Memory, Acks::None) => "memory topic: no ack, no persistence",
                    (StorageKind::Memory, _) => {
                        "memory topic: ack after the append to memory, no persistence"
                    }
                    (StorageKind::Disk, Acks::None) => {
                        "no ack; broker writes to its log (O_DIRECT), no fsync wait"
                    }
                    (StorageKind::Disk, Acks::Leader | Acks::All) => {
                        "ack after the log write (O_DIRECT), no fsync"
                    }
                    (StorageKind::Disk, Acks::LeaderFsync | Acks::AllFsync) => {
                        "ack after fdatasync (group commit)"
                    }
                };
                (durability.into(), acks.as_str().into())
            }
            Target::Nats(n) if n.flavour == Flavour::Core => (
                "in memory, no persistence".into(),
                "none (fire and forget)".into(),
            ),
            Target::Nats(_) => (
                format!("JetStream file storage, {jetstream_sync}"),
                "publish ack".into(),
            ),
        }
    }
}

/// Everything about one run besides the workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub target: Target,
    pub workload: Workload,
    /// Label in the results (`kafka-style`, a workload name, ...).
    pub profile: String,
    /// CPUs loadgen's workers pin to; `None`: every allowed CPU the broker does not use.
    pub cores: Option<Vec<usize>>,
    /// Process whose CPU is reported as the broker's; `None`: the local listener on the port.
    pub broker_pid: Option<u32>,
    pub progress: bool,
    /// Describes JetStream's sync policy (`sync_interval: always`, or the server default).
    pub jetstream_sync: String,
    /// The target's software and version, when known beforehand.
    pub target_version: Option<String>,
}

/// A finished run: the record and the merged stats (for plots).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub result: RunResult,
    pub stats: Stats,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// CPUs this process may run on.
pub fn allowed_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|id| id.id).collect())
        .unwrap_or_default()
}

fn cores_label(cores: &[usize]) -> String {
    if cores.is_empty() {
        return "any".into();
    }
    let list: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    format!("[{}]", list.join(","))
}

/// Runs one workload against one target and returns its result.
pub fn run(options: &RunOptions, stop: Arc<AtomicBool>) -> anyhow::Result<RunOutcome> {
    let broker_pid = options.broker_pid.or_else(|| {
        options
            .target
            .is_local()
            .then(|| options.target.port().and_then(cpu::pid_listening_on))
            .flatten()
    });
    let broker_cores = broker_pid.and_then(cpu::allowed_cpus).unwrap_or_default();
    let cores = match &options.cores {
        Some(cores) => cores.clone(),
        None => {
            let allowed = allowed_cores();
            let free: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|c| !broker_cores.contains(c))
                .collect();
            // A broker that may use every core leaves nothing free: share them all.
            if free.is_empty() { allowed } else { free }
        }
    };
    let workload = options.workload.clone();
    let plan = Arc::new(Plan::new(workload.clone(), stop, cores.clone()));
    let observer = {
        let plan = Arc::clone(&plan);
        let progress = options.progress;
        std::thread::Builder::new()
            .name("loadgen-progress".into())
            .spawn(move || observe(&plan, broker_pid, progress))?
    };
    let outcome = match &options.target {
        Target::Ringmq(target) => ringmq::run(target, &plan),
        Target::Nats(target) => nats::run(target, &plan),
    };
    plan.aborted.store(true, Ordering::SeqCst);
    let figures = observer
        .join()
        .map_err(|_| anyhow!("the progress thread panicked"))?;
    let (stats, version) = outcome?;
    let window = plan
        .window()
        .ok_or_else(|| anyhow!("the run ended before it started"))?;
    let interrupted = plan.stop.load(Ordering::SeqCst);
    let measured_end = plan
        .sending_ended_ns()
        .unwrap_or(window.end_ns)
        .min(window.end_ns);
    let seconds = (measured_end.saturating_sub(window.measure_from_ns) as f64 / 1e9).max(1e-3);

    let has_acks = match &options.target {
        Target::Ringmq(_) => workload.acks != Acks::None,
        Target::Nats(n) => n.flavour == Flavour::JetStream,
    };
    let consumers =
        workload.topics * workload.subscriptions_per_topic * workload.consumers_per_subscription;
    let deliveries = u64::from(workload.deliveries_per_message()).max(1);
    // Counted only if acknowledged (or delivered) while the window measured; never more than
    // was sent in it (a backlog of warm-up messages drained in the window).
    let delivered = if has_acks {
        stats.sent.min(stats.acked_in_window)
    } else if consumers > 0 {
        stats.sent.min(stats.received_in_window / deliveries)
    } else {
        stats.sent
    };
    let throughput = delivered as f64 / seconds;
    let (durability, acks) =
        options
            .target
            .durability(workload.acks, workload.storage, &options.jetstream_sync);
    let loadgen_cpu = figures.loadgen_cpu_percent;
    let per_100k = loadgen_cpu
        .filter(|_| throughput > 0.0)
        .map(|cpu| cpu / (throughput.max(stats.sent as f64 / seconds) / 100_000.0));
    let result = RunResult {
        target: options.target.url(),
        profile: options.profile.clone(),
        mode: match workload.rate {
            Rate::PerSecond(_) => "open-loop".into(),
            Rate::Max => "closed-loop".into(),
        },
        offered_rate_msgs_per_s: match workload.rate {
            Rate::PerSecond(rate) => Some(rate),
            Rate::Max => None,
        },
        sent: stats.sent,
        acked: has_acks.then_some(stats.acked),
        received: (consumers > 0).then_some(stats.received),
        failed: stats.failed,
        lost_to_retention: stats.lost_to_retention,
        throughput_msgs_per_s: throughput,
        throughput_mb_per_s: throughput * workload.message_bytes as f64 / 1e6,
        producer_msgs_per_s: stats.sent as f64 / seconds,
        consumer_msgs_per_s: (consumers > 0).then_some(stats.received_in_window as f64 / seconds),
        ack_latency_us: if has_acks { stats.ack.summary() } else { None },
        e2e_latency_us: stats.e2e.summary(),
        send_gap_us: stats.send_gap.summary(),
        broker_cpu_percent: figures.broker_cpu_percent,
        loadgen_cpu_percent: loadgen_cpu,
        loadgen_cpu_percent_per_100k_msgs_per_s: per_100k,
        durability,
        acks,
        consumer: options.target.consumer().into(),
        message_size: workload.message_bytes,
        batch: workload.batch_label(),
        duration_s: seconds,
        warmup_s: workload.warmup.as_secs_f64(),
        loadgen_cores: cores_label(&cores),
        broker_cores: if broker_pid.is_some() {
            cores_label(&broker_cores)
        } else {
            "unknown (broker not local)".into()
        },
        versions: format!(
            "{}; loadgen {}",
            options.target_version.clone().unwrap_or(version),
            env!("CARGO_PKG_VERSION")
        ),
        topics: workload.topics,
        partitions_per_topic: workload.partitions_per_topic,
        producers: workload.producers(),
        consumers,
    };
    Ok(RunOutcome {
        result,
        stats,
        interrupted,
    })
}

/// CPU over the measured window, as the observer saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    broker_cpu_percent: Option<f64>,
    loadgen_cpu_percent: Option<f64>,
}

/// The progress line (once a second: rates and the last second's p99) and CPU sampling at
/// the edges of the measured window. Runs until the workers are done.
fn observe(plan: &Plan, broker_pid: Option<u32>, progress: bool) -> Figures {
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(plan.workload.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Some(bar)
    } else {
        None
    };
    let mut meters: Option<(Option<CpuMeter>, Option<CpuMeter>)> = None;
    let mut figures = Figures::default();
    let (mut sent, mut acked, mut received) = (0, 0, 0);
    let mut last_tick = std::time::Instant::now();
    let mut window: Option<Window> = None;
    let mut ended = false;
    while !plan.aborted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let now = plan.clock.now_ns();
        if window.is_none() {
            window = plan.window();
        }
        let Some(w) = window else { continue };
        if meters.is_none() && now >= w.measure_from_ns {
            meters = Some((
                broker_pid.and_then(|pid| CpuMeter::start(pid).ok()),
                CpuMeter::start(std::process::id()).ok(),
            ));
        }
        let sending_over = now >= w.end_ns || plan.stop.load(Ordering::Relaxed);
        if sending_over && !ended {
            ended = true;
            if let Some((broker, own)) = &meters {
                figures.broker_cpu_percent = broker.and_then(|m| m.percent().ok());
                figures.loadgen_cpu_percent = own.and_then(|m| m.percent().ok());
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            let elapsed = last_tick.elapsed().as_secs_f64();
            last_tick = std::time::Instant::now();
            let (s, a, r) = (
                Live::get(&plan.live.sent),
                Live::get(&plan.live.acked),
                Live::get(&plan.live.received),
            );
            let p99 = plan.live.take_interval().quantile_ns(0.99) as f64 / 1e3;
            let phase = if now < w.measure_from_ns {
                "warm-up"
            } else if sending_over {
                "draining"
            } else {
                "measuring"
            };
            let line = format!(
                "{phase}: sent {:.0}/s, acked {:.0}/s, received {:.0}/s, p99 {:.0} us (last second), failed {}",
                (s - sent) as f64 / elapsed,
                (a - acked) as f64 / elapsed,
                (r - received) as f64 / elapsed,
                p99,
                Live::get(&plan.live.failed),
            );
            (sent, acked, received) = (s, a, r);
            if let Some(bar) = &bar {
                bar.set_message(line);
                bar.tick();
            }
        }
    }
    if !ended && let Some((broker, own)) = &meters {
        figures.broker_cpu_percent = broker.and_then(|m| m.percent().ok());
        figures.loadgen_cpu_percent = own.and_then(|m| m.percent().ok());
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    figures
}
