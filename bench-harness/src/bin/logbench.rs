//! logbench: the partition log against fio on the same disk, side by side.
//!
//! Runs fio baselines (sequential O_DIRECT bandwidth; 4 KiB write + fdatasync latency) and
//! the log's cases (throughput without sync, one durable appender, group commit) on one
//! pinned glommio executor, interleaved across runs so noise hits every case alike, then
//! prints one markdown table with every run, the medians and the target checks.
//!
//! Run: `cargo run --release -p ringmq-bench-harness --bin logbench -- --seconds 10 --runs 3`
//! (`--help` lists the options). Needs fio (`apt-get install -y fio`) and a data directory on
//! a real disk: O_DIRECT does not work on tmpfs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bench_harness::fio;
use bench_harness::logcases::{
    DmaCase, Job, LogCase, LogCaseResult, Shard, Wait, one_record_batch,
};
use bench_harness::machine::{CpuSample, CpuUse, DiskSample, MachineFacts, ScratchDir, loadavg_1m};
use bench_harness::{median, sample_batch};
use engine::config::allowed_cores;
use engine::log::{Durability, LogConfig, Preallocate, WritePipeline};
use serde::Serialize;

const USAGE: &str = "\
usage: logbench [options]
  --dir DIR            parent of the scratch data directory (default: .); must be a real
                       disk, not tmpfs. logbench creates DIR/logbench-<pid> and removes it.
  --seconds S          measured seconds per case and run (default 10)
  --runs N             runs; every run does every case (default 3)
  --core C             CPU for the log's executor and for fio (default: last allowed CPU)
  --json FILE          also write the results as JSON
  --appenders N        appender tasks of the throughput cases (default 64: each keeps one
                       66 KiB batch outstanding, so 64 hold about 4 MiB in flight, as
                       fio's 1 MiB writes at queue depth 4 do; with 8, at most 0.5 MiB is
                       in flight and the device idles between writes)
  --group N            appender tasks of the group-commit cases (default 16)
  --maintain-ms MS     pause between background maintain passes (retention, checkpoint;
                       default 10)
  --retain-mib MIB     byte retention of every log case but log-tput-recycled (default
                       1024): bounds disk use
  --group-commit-window-us US
                       LogConfig::group_commit_window_us (default: LogConfig's, 0)
  --group-commit-bytes B
                       LogConfig::group_commit_bytes (default: LogConfig's, 1 MiB)
  --writes-in-flight N WritePipeline::writes_in_flight (default: WritePipeline's, 4)
  --write-bytes-max B  WritePipeline::write_bytes_max (default: WritePipeline's, 1 MiB)
  --syncs-in-flight N  WritePipeline::syncs_in_flight (default: WritePipeline's, 2)
  --io-memory-mib MIB  glommio io_memory of the executor (default 32, as tuning/throughput.toml;
                       the default profile has 10): the log's tail and write buffers come
                       from this registered arena, and from the heap once it is used up
  --spin-us US         glommio spin_before_park of the executor (default 0: sleep at once)
  --yield-before-wait  diagnostic: appenders yield once between append and wait, so a
                       commit's woken appenders all append before the next commit starts
  --cases LIST         comma-separated subset of case ids (default: all). The three
                       throughput cases differ in the segment files the appends go to:
                       log-tput-fallocate and log-tput-zero write fresh segments
                       (fallocated, or zeroed by the log ahead of each roll until the
                       appends outrun it; retention deletes, nothing is recycled);
                       log-tput-recycled writes segments that retention recycled
                       (retention 2 segments, 4 segments appended before the warm-up):
                       the steady state of a log with retention.
                       ids:
                       ";

/// Appenders of the throughput cases: 64 x 66 KiB batches outstanding is about the 4 MiB
/// that fio's sequential case keeps in flight (1 MiB writes, queue depth 4).
const TPUT_APPENDERS: usize = 64;
/// Records per throughput batch and their value size: 64 x 1 KiB, about 66 KiB per batch.
const TPUT_RECORDS: usize = 64;
const RECORD_VALUE_BYTES: usize = 1024;
/// Batch size of the durable latency case: one record filling exactly one 4 KiB block,
/// like fio's 4 KiB writes.
const DURABLE_BATCH_BYTES: usize = 4096;

#[derive(Debug, Clone)]
struct Args {
    dir: PathBuf,
    seconds: u64,
    runs: usize,
    core: Option<usize>,
    json: Option<PathBuf>,
    appenders: usize,
    group: usize,
    maintain_ms: u64,
    retain_mib: u64,
    spin_us: u64,
    yield_before_wait: bool,
    group_commit_window_us: u64,
    group_commit_bytes: u64,
    writes_in_flight: usize,
    write_bytes_max: u64,
    syncs_in_flight: usize,
    io_memory_mib: u64,
    cases: Option<Vec<String>>,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut args = Args {
            dir: PathBuf::from("."),
            seconds: 10,
            runs: 3,
            core: None,
            json: None,
            appenders: TPUT_APPENDERS,
            group: 16,
            maintain_ms: 10,
            retain_mib: 1024,
            spin_us: 0,
            yield_before_wait: false,
            group_commit_window_us: LogConfig::default().group_commit_window_us,
            group_commit_bytes: LogConfig::default().group_commit_bytes,
            writes_in_flight: WritePipeline::default().writes_in_flight,
            write_bytes_max: WritePipeline::default().write_bytes_max,
            syncs_in_flight: WritePipeline::default().syncs_in_flight,
            io_memory_mib: 32,
            cases: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            if key == "--yield-before-wait" {
                args.yield_before_wait = true;
                continue;
            }
            if key == "--help" || key == "-h" {
                println!("{USAGE}{}", CASE_IDS.join(", "));
                std::process::exit(0);
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .with_context(|| format!("{key} needs a value\n{USAGE}"))?,
            };
            let number = |v: &str| -> anyhow::Result<u64> {
                v.parse()
                    .with_context(|| format!("{key}: not a number: {v}"))
            };
            match key.as_str() {
                "--dir" => args.dir = PathBuf::from(value),
                "--seconds" => args.seconds = number(&value)?,
                "--runs" => args.runs = number(&value)? as usize,
                "--core" => args.core = Some(number(&value)? as usize),
                "--json" => args.json = Some(PathBuf::from(value)),
                "--appenders" => args.appenders = number(&value)? as usize,
                "--group" => args.group = number(&value)? as usize,
                "--maintain-ms" => args.maintain_ms = number(&value)?,
                "--retain-mib" => args.retain_mib = number(&value)?,
                "--spin-us" => args.spin_us = number(&value)?,
                "--group-commit-window-us" => args.group_commit_window_us = number(&value)?,
                "--group-commit-bytes" => args.group_commit_bytes = number(&value)?,
                "--writes-in-flight" => args.writes_in_flight = number(&value)? as usize,
                "--syncs-in-flight" => args.syncs_in_flight = number(&value)? as usize,
                "--write-bytes-max" => args.write_bytes_max = number(&value)?,
                "--io-memory-mib" => args.io_memory_mib = number(&value)?,
                "--cases" => {
                    let ids: Vec<String> = value.split(',').map(str::to_owned).collect();
                    for id in &ids {
                        if !CASE_IDS.contains(&id.as_str()) {
                            bail!("unknown case {id}; known: {}", CASE_IDS.join(", "));
                        }
                    }
                    args.cases = Some(ids);
                }
                _ => bail!("unknown option {key}\n{USAGE}"),
            }
        }
        if args.seconds == 0 || args.runs == 0 || args.appenders == 0 || args.group == 0 {
            bail!("--seconds, --runs, --appenders and --group must be at least 1");
        }
        Ok(args)
    }

    fn wants(&self, id: &str) -> bool {
        self.cases
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|c| c == id))
    }
}

const FIO_SEQ: &str = "fio-seq-1m";
const FIO_SYNC: &str = "fio-4k-fdatasync";
const DMA_1M_QD4: &str = "glommio-write-1m-qd4";
const DMA_256K_QD1: &str = "glommio-write-256k-qd1";
const TPUT_FALLOCATE: &str = "log-tput-fallocate";
const TPUT_ZERO: &str = "log-tput-zero";
const TPUT_RECYCLED: &str = "log-tput-recycled";
const DURABLE_4K_FDATASYNC: &str = "log-4k-fdatasync";
const DURABLE_4K_DSYNC: &str = "log-4k-dsync";
const DURABLE_1K_FDATASYNC: &str = "log-1k-fdatasync";
const GROUP_1K_FDATASYNC: &str = "log-1k-group-fdatasync";
const DURABLE_1K_DSYNC: &str = "log-1k-dsync";
const GROUP_1K_DSYNC: &str = "log-1k-group-dsync";

/// Every case, in the order each run executes them.
const CASE_IDS: [&str; 13] = [
    FIO_SEQ,
    FIO_SYNC,
    DMA_1M_QD4,
    DMA_256K_QD1,
    TPUT_FALLOCATE,
    TPUT_ZERO,
    TPUT_RECYCLED,
    DURABLE_4K_FDATASYNC,
    DURABLE_4K_DSYNC,
    DURABLE_1K_FDATASYNC,
    GROUP_1K_FDATASYNC,
    DURABLE_1K_DSYNC,
    GROUP_1K_DSYNC,
];

/// How a case is labelled in the table: every line says durability, record and batch size.
#[derive(Debug, Clone, Serialize)]
struct CaseLabel {
    id: &'static str,
    what: String,
    durability: String,
    record: String,
    batch: String,
}

/// One run of one case.
#[derive(Debug, Clone, Serialize)]
enum Outcome {
    FioSeq(fio::SeqWrite),
    FioSync(fio::WriteSync),
    /// A log case, or a diagnostic DmaFile case, run on the pinned executor.
    Shard(LogCaseResult),
}

#[derive(Debug, Clone, Serialize)]
struct CaseRun {
    run: usize,
    outcome: Outcome,
    cpu: CpuUse,
    /// MB written to the data device during the case, by everyone.
    device_written_mb: Option<f64>,
    /// MB of those the measured program wrote itself.
    own_written_mb: f64,
    loadavg_1m_after: f64,
}

/// One line of the table: a figure of one case across runs.
#[derive(Debug, Clone, Serialize)]
struct Row {
    case: &'static str,
    durability: String,
    record: String,
    batch: String,
    metric: String,
    unit: &'static str,
    runs: Vec<f64>,
    median: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    name: &'static str,
    /// What is compared, in words.
    detail: String,
    measured: f64,
    baseline: f64,
    unit: &'static str,
    /// measured / baseline, from the medians.
    ratio: f64,
    /// The ratio the target requires (>= for throughput, <= for latency).
    required: String,
    per_run_ratios: Vec<f64>,
    pass: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: MachineFacts,
    fio_version: String,
    core: usize,
    pinned_kib_after_executor_start: Option<u64>,
    seconds: u64,
    runs: usize,
    appenders: usize,
    group: usize,
    maintain_ms: u64,
    retain_mib: u64,
    spin_us: u64,
    yield_before_wait: bool,
    group_commit_window_us: u64,
    group_commit_bytes: u64,
    writes_in_flight: usize,
    write_bytes_max: u64,
    syncs_in_flight: usize,
    io_memory_mib: u64,
    /// `git describe`-like state of the source tree the binary ran from, when known.
    source: String,
    durable_batch_bytes: usize,
    durable_value_bytes: usize,
    labels: Vec<CaseLabel>,
    rows: Vec<Row>,
    targets: Vec<Target>,
    results: BTreeMap<&'static str, Vec<CaseRun>>,
    loadavg_1m_end: f64,
}

struct Plan {
    args: Args,
    work: PathBuf,
    device: String,
    core: usize,
    tput_batch: Vec<u8>,
    durable_batch: Vec<u8>,
    durable_value_bytes: usize,
    small_batch: Vec<u8>,
}

impl Plan {
    fn label(&self, id: &'static str) -> CaseLabel {
        let tput = format!("{TPUT_RECORDS} records/batch, {} B", self.tput_batch.len());
        let durable = format!("1 record/batch, {} B", self.durable_batch.len());
        let small = format!("1 record/batch, {} B", self.small_batch.len());
        let kib = "1 KiB value".to_owned();
        let (what, durability, record, batch) = match id {
            FIO_SEQ => (
                "fio seq write, io_uring QD4".to_owned(),
                "none (O_DIRECT, no fsync)".to_owned(),
                "-".to_owned(),
                "1 MiB block".to_owned(),
            ),
            FIO_SYNC => (
                "fio write+fdatasync, sync engine QD1".to_owned(),
                "fdatasync per write".to_owned(),
                "-".to_owned(),
                "4 KiB block".to_owned(),
            ),
            DMA_1M_QD4 => (
                "diagnostic, no log: glommio DmaFile write_rc_at, 4 in flight, pre-zeroed file (the runtime's counterpart of fio-seq-1m)".to_owned(),
                "none (O_DIRECT, no fsync)".to_owned(),
                "-".to_owned(),
                "1 MiB block".to_owned(),
            ),
            DMA_256K_QD1 => (
                "diagnostic, no log: glommio DmaFile write_rc_at, 1 in flight, pre-zeroed file (the floor for a log with one write in flight: `--writes-in-flight 1`)".to_owned(),
                "none (O_DIRECT, no fsync)".to_owned(),
                "-".to_owned(),
                "256 KiB block".to_owned(),
            ),
            TPUT_FALLOCATE => (
                format!(
                    "log append, {} appenders, fresh segments fallocated (not recycled)",
                    self.args.appenders
                ),
                "none (wait_written, no fsync)".to_owned(),
                kib,
                tput,
            ),
            TPUT_ZERO => (
                format!(
                    "log append, {} appenders, fresh segments preallocated \"zero\": zeroed by the log ahead of each roll until the appends outrun it (zeroing bandwidth included; not recycled)",
                    self.args.appenders
                ),
                "none (wait_written, no fsync)".to_owned(),
                kib,
                tput,
            ),
            TPUT_RECYCLED => (
                format!(
                    "log append, {} appenders, segments recycled by retention (steady state of a log with retention: retention {} MiB, {} MiB appended before the warm-up)",
                    self.args.appenders,
                    recycled_retention_bytes() >> 20,
                    recycled_prefill_bytes() >> 20
                ),
                "none (wait_written, no fsync)".to_owned(),
                kib,
                tput,
            ),
            DURABLE_4K_FDATASYNC => (
                "log durable append, 1 appender".to_owned(),
                "fdatasync (wait_synced)".to_owned(),
                format!("{} B value", self.durable_value_bytes),
                durable,
            ),
            DURABLE_4K_DSYNC => (
                "log durable append, 1 appender".to_owned(),
                "O_DSYNC (wait_synced)".to_owned(),
                format!("{} B value", self.durable_value_bytes),
                durable,
            ),
            DURABLE_1K_FDATASYNC => (
                "log durable append, 1 appender".to_owned(),
                "fdatasync (wait_synced)".to_owned(),
                kib,
                small,
            ),
            GROUP_1K_FDATASYNC => (
                format!("log group commit, {} appenders", self.args.group),
                "fdatasync (wait_synced)".to_owned(),
                kib,
                small,
            ),
            DURABLE_1K_DSYNC => (
                "log durable append, 1 appender".to_owned(),
                "O_DSYNC (wait_synced)".to_owned(),
                kib,
                small,
            ),
            _ => (
                format!("log group commit, {} appenders", self.args.group),
                "O_DSYNC (wait_synced)".to_owned(),
                kib,
                small,
            ),
        };
        CaseLabel {
            id,
            what,
            durability,
            record,
            batch,
        }
    }

    fn dma_case(&self, id: &str, run: usize) -> DmaCase {
        let measure = Duration::from_secs(self.args.seconds);
        let (write_bytes, depth) = if id == DMA_1M_QD4 {
            (1 << 20, 4)
        } else {
            (256 << 10, 1)
        };
        DmaCase {
            dir: self.work.join(format!("{id}-run{run}")),
            file_bytes: 1 << 30,
            write_bytes,
            depth,
            warmup: (measure / 10).min(Duration::from_secs(1)),
            measure,
            device: self.device.clone(),
        }
    }

    fn log_case(&self, id: &str, run: usize) -> LogCase {
        let measure = Duration::from_secs(self.args.seconds);
        let (appenders, wait, durability, preallocate, batch, records) = match id {
            TPUT_FALLOCATE | TPUT_ZERO | TPUT_RECYCLED => (
                self.args.appenders,
                Wait::Written,
                Durability::Fdatasync,
                if id == TPUT_ZERO {
                    Preallocate::Zero
                } else {
                    Preallocate::Fallocate
                },
                self.tput_batch.clone(),
                TPUT_RECORDS as u64,
            ),
            DURABLE_4K_FDATASYNC | DURABLE_4K_DSYNC => (
                1,
                Wait::Synced,
                sync_mode(id),
                Preallocate::Zero,
                self.durable_batch.clone(),
                1,
            ),
            DURABLE_1K_FDATASYNC | DURABLE_1K_DSYNC => (
                1,
                Wait::Synced,
                sync_mode(id),
                Preallocate::Zero,
                self.small_batch.clone(),
                1,
            ),
            _ => (
                self.args.group,
                Wait::Synced,
                sync_mode(id),
                Preallocate::Zero,
                self.small_batch.clone(),
                1,
            ),
        };
        // The fresh-segment cases delete what retention lets go of; the recycled case starts
        // its window on a log whose every next segment is a recycled file.
        let (recycle_segments, retention_bytes, prefill_bytes) = if id == TPUT_RECYCLED {
            (true, recycled_retention_bytes(), recycled_prefill_bytes())
        } else {
            (false, self.args.retain_mib << 20, 0)
        };
        LogCase {
            dir: self.work.join(format!("{id}-run{run}")),
            appenders,
            wait,
            durability,
            preallocate,
            batch,
            records_per_batch: records,
            warmup: (measure / 10).min(Duration::from_secs(1)),
            measure,
            maintain_interval: Duration::from_millis(self.args.maintain_ms),
            retention_bytes,
            recycle_segments,
            prefill_bytes,
            device: self.device.clone(),
            yield_before_wait: self.args.yield_before_wait,
            group_commit_window_us: self.args.group_commit_window_us,
            group_commit_bytes: self.args.group_commit_bytes,
            pipeline: WritePipeline {
                writes_in_flight: self.args.writes_in_flight,
                write_bytes_max: self.args.write_bytes_max,
                syncs_in_flight: self.args.syncs_in_flight,
            },
        }
    }
}

/// Byte retention of `log-tput-recycled`: two segments.
fn recycled_retention_bytes() -> u64 {
    2 * LogConfig::default().segment_bytes
}

/// What `log-tput-recycled` appends before its warm-up: retention plus two segments, so
/// that retention has let go of segments and every segment the window writes (the active
/// one included) is a recycled file.
fn recycled_prefill_bytes() -> u64 {
    recycled_retention_bytes() + 2 * LogConfig::default().segment_bytes
}

fn sync_mode(id: &str) -> Durability {
    if id.ends_with("dsync") && !id.ends_with("fdatasync") {
        Durability::Dsync
    } else {
        Durability::Fdatasync
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let fio_version = fio::version()?;
    let allowed = allowed_cores();
    let core = match args.core {
        Some(core) => core,
        None => *allowed
            .last()
            .context("core_affinity found no allowed CPU; pass --core")?,
    };
    if !allowed.is_empty() && !allowed.contains(&core) {
        bail!("--core {core} is not among the allowed CPUs {allowed:?}");
    }
    let scratch = ScratchDir::create_in(&args.dir, "logbench")
        .with_context(|| format!("creating a scratch directory in {}", args.dir.display()))?;
    let machine = MachineFacts::read(scratch.path());
    if machine.data_fs == "tmpfs" || machine.data_fs == "ramfs" {
        bail!(
            "{} is on {}: O_DIRECT needs a real disk; pass --dir on ext4 or xfs",
            scratch.path().display(),
            machine.data_fs
        );
    }
    let (durable_batch, durable_value_bytes) = one_record_batch(DURABLE_BATCH_BYTES)?;
    let plan = Plan {
        work: scratch.path().to_path_buf(),
        device: machine.data_device.clone(),
        core,
        tput_batch: sample_batch(TPUT_RECORDS, RECORD_VALUE_BYTES),
        durable_batch,
        durable_value_bytes,
        small_batch: sample_batch(1, RECORD_VALUE_BYTES),
        args,
    };
    print_machine(&machine, &fio_version, &plan);

    let shard = Shard::start(
        core,
        &plan.work,
        Duration::from_micros(plan.args.spin_us),
        (plan.args.io_memory_mib << 20) as usize,
    )?;
    eprintln!(
        "glommio executor pinned to core {core}; VmPin after start: {} KiB",
        shard
            .pinned_kib
            .map_or_else(|| "unknown".to_owned(), |k| k.to_string())
    );

    let ids: Vec<&'static str> = CASE_IDS
        .iter()
        .copied()
        .filter(|id| plan.args.wants(id))
        .collect();
    let fio_seq_file = plan.work.join("fio-seq.dat");
    let fio_sync_file = plan.work.join("fio-4k.dat");
    // Only the files of the fio cases that run: the sequential one alone is 1 GiB.
    if ids.contains(&FIO_SEQ) {
        eprintln!("laying out {FIO_SEQ}'s file ...");
        fio::lay_out_seq_write(&fio_seq_file, core)?;
    }
    if ids.contains(&FIO_SYNC) {
        eprintln!("laying out {FIO_SYNC}'s file ...");
        fio::lay_out_write_fdatasync(&fio_sync_file, core)?;
    }
    let mut results: BTreeMap<&'static str, Vec<CaseRun>> = BTreeMap::new();
    for run in 1..=plan.args.runs {
        for &id in &ids {
            eprint!("run {run}/{}: {id} ... ", plan.args.runs);
            let before = CpuSample::now();
            let disk_before = DiskSample::now(&plan.device);
            let outcome = match id {
                FIO_SEQ => Outcome::FioSeq(fio::seq_write(&fio_seq_file, plan.args.seconds, core)?),
                FIO_SYNC => Outcome::FioSync(fio::write_fdatasync(
                    &fio_sync_file,
                    plan.args.seconds,
                    core,
                )?),
                _ => {
                    let job: Job = if id == DMA_1M_QD4 || id == DMA_256K_QD1 {
                        plan.dma_case(id, run).into()
                    } else {
                        plan.log_case(id, run).into()
                    };
                    Outcome::Shard(
                        shard
                            .run(job)
                            .with_context(|| format!("case {id}, run {run}"))?,
                    )
                }
            };
            let (cpu, device_written_mb, own_written_mb) = match &outcome {
                // The shard sampled its measured window alone, without the warm-up.
                Outcome::Shard(r) => (r.cpu, r.device_written_mb, r.own_written_mb),
                Outcome::FioSeq(fio::SeqWrite { io_bytes, .. })
                | Outcome::FioSync(fio::WriteSync { io_bytes, .. }) => (
                    before.until(&CpuSample::now()),
                    disk_before.written_mb_until(&DiskSample::now(&plan.device)),
                    io_bytes / 1e6,
                ),
            };
            let case_run = CaseRun {
                run,
                outcome,
                cpu,
                device_written_mb,
                own_written_mb,
                loadavg_1m_after: loadavg_1m(),
            };
            eprintln!("{}", brief(&case_run.outcome));
            results.entry(id).or_default().push(case_run);
        }
    }
    let pinned_kib = shard.pinned_kib;
    drop(shard);

    let labels: Vec<CaseLabel> = ids.iter().map(|id| plan.label(id)).collect();
    let rows = rows(&labels, &results);
    let targets = targets(&plan, &results);
    let report = Report {
        machine,
        fio_version,
        core,
        pinned_kib_after_executor_start: pinned_kib,
        seconds: plan.args.seconds,
        runs: plan.args.runs,
        appenders: plan.args.appenders,
        group: plan.args.group,
        maintain_ms: plan.args.maintain_ms,
        retain_mib: plan.args.retain_mib,
        spin_us: plan.args.spin_us,
        yield_before_wait: plan.args.yield_before_wait,
        group_commit_window_us: plan.args.group_commit_window_us,
        group_commit_bytes: plan.args.group_commit_bytes,
        writes_in_flight: plan.args.writes_in_flight,
        write_bytes_max: plan.args.write_bytes_max,
        syncs_in_flight: plan.args.syncs_in_flight,
        io_memory_mib: plan.args.io_memory_mib,
        source: source_state(),
        durable_batch_bytes: plan.durable_batch.len(),
        durable_value_bytes: plan.durable_value_bytes,
        labels,
        rows,
        targets,
        results,
        loadavg_1m_end: loadavg_1m(),
    };
    emit(&render(&report));
    if let Some(path) = &plan.args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    // The scratch directory (fio files, probe file, any case left-overs) goes on drop.
    drop(scratch);
    Ok(())
}

fn print_machine(machine: &MachineFacts, fio_version: &str, plan: &Plan) {
    let mut out = String::new();
    let _ = writeln!(out, "# logbench: partition log vs fio\n");
    let _ = writeln!(out, "- kernel: {}", machine.kernel);
    let _ = writeln!(
        out,
        "- CPU: {} ({} online, allowed {:?})",
        machine.cpu_model, machine.cpus_online, machine.cpus_allowed
    );
    let _ = writeln!(
        out,
        "- data: {} on {} ({} mounted at {})",
        plan.work.display(),
        machine.data_fs,
        machine.data_device,
        machine.data_mount
    );
    let _ = writeln!(
        out,
        "- cores used: glommio executor (appenders, maintain, its blocking helper) pinned to \
         core {}; fio pinned to core {} (--cpus_allowed); the executor's io_uring workers \
         (iou-wrk: fdatasync and any punted write) inherit its affinity and share that core; \
         kernel threads are not pinned",
        plan.core, plan.core
    );
    let _ = writeln!(
        out,
        "- memlock soft limit: {}; {fio_version}; load average (1 min) at start: {:.2}",
        machine.memlock_limit, machine.loadavg_1m
    );
    let _ = writeln!(
        out,
        "- {} s measured per case and run, {} runs, cases interleaved per run; log cases: \
         128 MiB segments, 2 MiB tail buffer (LogConfig defaults), maintain every {} ms, \
         retention {} MiB ({TPUT_RECYCLED}: {} MiB, recycling, {} MiB appended before the \
         warm-up; the other cases do not recycle), warm-up {} ms, group_commit_window_us {}, group_commit_bytes {}, \
         writes_in_flight {}, write_bytes_max {}, syncs_in_flight {}; executor io_memory {} MiB, spin_before_park {} us; appenders yield before waiting (diagnostic): {}",
        plan.args.seconds,
        plan.args.runs,
        plan.args.maintain_ms,
        plan.args.retain_mib,
        recycled_retention_bytes() >> 20,
        recycled_prefill_bytes() >> 20,
        (Duration::from_secs(plan.args.seconds) / 10)
            .min(Duration::from_secs(1))
            .as_millis(),
        plan.args.group_commit_window_us,
        plan.args.group_commit_bytes,
        plan.args.writes_in_flight,
        plan.args.write_bytes_max,
        plan.args.syncs_in_flight,
        plan.args.io_memory_mib,
        plan.args.spin_us,
        if plan.args.yield_before_wait {
            "yes"
        } else {
            "no"
        }
    );
    let _ = writeln!(out, "- source: {}\n", source_state());
    emit(&out);
}

/// The commit and whether `engine/` or `bench-harness/` differ from it, when run inside the
/// git checkout (read-only git commands); "unknown" elsewhere.
fn source_state() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let output = std::process::Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not run inside the git checkout)".to_owned();
    };
    let dirty = git(&["status", "--porcelain", "--", "engine", "bench-harness"]).map_or(
        "unknown".to_owned(),
        |s| {
            if s.is_empty() {
                "clean".to_owned()
            } else {
                format!("{} changed files", s.lines().count())
            }
        },
    );
    format!("git HEAD {head}; engine/ and bench-harness/ vs HEAD: {dirty}")
}

/// Writes to stdout, ignoring a closed pipe (`| head`): `print!` would panic, and with
/// `panic = "abort"` the scratch directory would be left behind.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// One progress line per case and run, on stderr.
fn brief(outcome: &Outcome) -> String {
    match outcome {
        Outcome::FioSeq(r) => format!("{:.0} MB/s", r.bytes_per_s / 1e6),
        Outcome::FioSync(r) => format!(
            "{:.0} ops/s, write p99 {:.1} us + sync p99 {:.1} us",
            r.iops,
            r.write_p99_ns / 1e3,
            r.sync_p99_ns / 1e3
        ),
        Outcome::Shard(r) => format!(
            "{:.0} MB/s, {:.0} ops/s, p50 {:.1} us, p99 {:.1} us, syncs/append {:.3}",
            r.bytes_per_s() / 1e6,
            r.ops_per_s(),
            r.latency.p50_ns as f64 / 1e3,
            r.latency.p99_ns as f64 / 1e3,
            r.syncs_per_append()
        ),
    }
}

type Metric = (String, &'static str, fn(&CaseRun) -> Option<f64>);

fn fio_seq(run: &CaseRun) -> Option<&fio::SeqWrite> {
    match &run.outcome {
        Outcome::FioSeq(r) => Some(r),
        _ => None,
    }
}

fn fio_sync(run: &CaseRun) -> Option<&fio::WriteSync> {
    match &run.outcome {
        Outcome::FioSync(r) => Some(r),
        _ => None,
    }
}

fn log_result(run: &CaseRun) -> Option<&LogCaseResult> {
    match &run.outcome {
        Outcome::Shard(r) => Some(r),
        _ => None,
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The figures shown for each kind of case.
fn metrics(id: &str) -> Vec<Metric> {
    let m = |name: &str, unit: &'static str, f: fn(&CaseRun) -> Option<f64>| -> Metric {
        (name.to_owned(), unit, f)
    };
    let noise = [
        m(
            "CPU of the measured program (log process or fio)",
            "s",
            |r| Some(r.cpu.ours_s),
        ),
        m("CPU of everything else (noise)", "s", |r| {
            Some(r.cpu.others_s)
        }),
        m("CPU steal", "s", |r| Some(r.cpu.steal_s)),
        m(
            "device writes by others (noise; device total - own)",
            "MB",
            |r| r.device_written_mb.map(|d| d - r.own_written_mb),
        ),
        m(
            "shard thread run-queue wait (CPU taken by others)",
            "ms",
            |r| log_result(r).map(|l| l.shard_sched.runqueue_wait_ms),
        ),
        m("shard thread preemptions", "count", |r| {
            log_result(r).map(|l| l.shard_sched.preemptions as f64)
        }),
    ];
    let mut out = match id {
        FIO_SEQ => vec![
            m("bandwidth", "MB/s", |r| {
                fio_seq(r).map(|f| f.bytes_per_s / 1e6)
            }),
            m("fio CPU", "%", |r| fio_seq(r).map(|f| f.cpu_pct)),
        ],
        FIO_SYNC => vec![
            m("write clat p50", "us", |r| {
                fio_sync(r).map(|f| f.write_p50_ns / 1e3)
            }),
            m("write clat p99", "us", |r| {
                fio_sync(r).map(|f| f.write_p99_ns / 1e3)
            }),
            m("fdatasync p50", "us", |r| {
                fio_sync(r).map(|f| f.sync_p50_ns / 1e3)
            }),
            m("fdatasync p99", "us", |r| {
                fio_sync(r).map(|f| f.sync_p99_ns / 1e3)
            }),
            m(
                "write p99 + fdatasync p99 (upper bound of the combined p99)",
                "us",
                |r| fio_sync(r).map(|f| f.total_p99_bound_ns() / 1e3),
            ),
            m("durable writes (iops)", "ops/s", |r| {
                fio_sync(r).map(|f| f.iops)
            }),
        ],
        DMA_1M_QD4 | DMA_256K_QD1 => vec![
            m("bandwidth", "MB/s", |r| {
                log_result(r).map(|l| l.bytes_per_s() / 1e6)
            }),
            m("write latency p50", "us", |r| {
                log_result(r).map(|l| us(l.latency.p50_ns))
            }),
            m("write latency p99", "us", |r| {
                log_result(r).map(|l| us(l.latency.p99_ns))
            }),
        ],
        TPUT_FALLOCATE | TPUT_ZERO | TPUT_RECYCLED => vec![
            m("throughput", "MB/s", |r| {
                log_result(r).map(|l| l.bytes_per_s() / 1e6)
            }),
            m("records", "records/s", |r| {
                log_result(r).map(LogCaseResult::records_per_s)
            }),
            m("mean group-commit write", "KiB", |r| {
                log_result(r).map(|l| l.bytes_per_write() / 1024.0)
            }),
            m("writes issued while another was in flight", "share", |r| {
                log_result(r).map(|l| l.writes_overlapped as f64 / l.writes.max(1) as f64)
            }),
            m("append->written p99", "us", |r| {
                log_result(r).map(|l| us(l.latency.p99_ns))
            }),
            m("segment rolls", "count", |r| {
                log_result(r).map(|l| l.rolls as f64)
            }),
            m("rolls without a spare ready", "count", |r| {
                log_result(r).map(|l| l.rolls_without_spare as f64)
            }),
            m("segments recycled", "count", |r| {
                log_result(r).map(|l| l.segments_recycled as f64)
            }),
            m("time spent rolling (appends wait)", "share", |r| {
                log_result(r).map(|l| l.roll_us as f64 / (l.elapsed_s * 1e6))
            }),
            m("mean roll", "ms", |r| {
                log_result(r).map(|l| l.roll_us as f64 / 1e3 / l.rolls.max(1) as f64)
            }),
        ],
        _ => vec![
            m("durable appends", "ops/s", |r| {
                log_result(r).map(LogCaseResult::ops_per_s)
            }),
            m("append->synced p50", "us", |r| {
                log_result(r).map(|l| us(l.latency.p50_ns))
            }),
            m("append->synced p99", "us", |r| {
                log_result(r).map(|l| us(l.latency.p99_ns))
            }),
            m("append->synced p99.9", "us", |r| {
                log_result(r).map(|l| us(l.latency.p999_ns))
            }),
            m("append->synced max", "us", |r| {
                log_result(r).map(|l| us(l.latency.max_ns))
            }),
            m("syncs per append", "ratio", |r| {
                log_result(r).map(LogCaseResult::syncs_per_append)
            }),
            m("segment rolls", "count", |r| {
                log_result(r).map(|l| l.rolls as f64)
            }),
            m("rolls without a spare ready", "count", |r| {
                log_result(r).map(|l| l.rolls_without_spare as f64)
            }),
        ],
    };
    out.extend(noise);
    out
}

fn rows(labels: &[CaseLabel], results: &BTreeMap<&'static str, Vec<CaseRun>>) -> Vec<Row> {
    let mut rows = Vec::new();
    for label in labels {
        let Some(runs) = results.get(label.id) else {
            continue;
        };
        for (name, unit, get) in metrics(label.id) {
            let values: Vec<f64> = runs.iter().map(|r| get(r).unwrap_or(f64::NAN)).collect();
            rows.push(Row {
                case: label.id,
                durability: label.durability.clone(),
                record: label.record.clone(),
                batch: label.batch.clone(),
                metric: name,
                unit,
                median: median(values.iter().copied()),
                runs: values,
            });
        }
    }
    rows
}

/// Per-run values of one figure of one case.
fn series(
    results: &BTreeMap<&'static str, Vec<CaseRun>>,
    id: &str,
    get: impl Fn(&CaseRun) -> Option<f64>,
) -> Option<Vec<f64>> {
    let runs = results.get(id)?;
    Some(runs.iter().map(|r| get(r).unwrap_or(f64::NAN)).collect())
}

fn targets(plan: &Plan, results: &BTreeMap<&'static str, Vec<CaseRun>>) -> Vec<Target> {
    let mut out = Vec::new();
    let ratio_target = |name: &'static str,
                        detail: String,
                        measured: Vec<f64>,
                        baseline: Vec<f64>,
                        unit: &'static str,
                        at_least: bool,
                        bound: f64|
     -> Target {
        let m = median(measured.iter().copied());
        let b = median(baseline.iter().copied());
        let ratio = m / b;
        Target {
            name,
            detail,
            measured: m,
            baseline: b,
            unit,
            ratio,
            required: if at_least {
                format!(">= {bound}")
            } else {
                format!("<= {bound}")
            },
            per_run_ratios: measured.iter().zip(&baseline).map(|(m, b)| m / b).collect(),
            pass: if at_least {
                ratio >= bound
            } else {
                ratio <= bound
            },
        }
    };
    let fio_bw = series(results, FIO_SEQ, |r| {
        fio_seq(r).map(|f| f.bytes_per_s / 1e6)
    });
    for (id, how) in [
        (TPUT_RECYCLED, "segments recycled by retention"),
        (TPUT_FALLOCATE, "fresh fallocated segments"),
        (
            TPUT_ZERO,
            "fresh segments under preallocate \"zero\", zeroing included",
        ),
    ] {
        let log_bw = series(results, id, |r| {
            log_result(r).map(|l| l.bytes_per_s() / 1e6)
        });
        if let (Some(log_bw), Some(fio_bw)) = (log_bw, &fio_bw) {
            out.push(ratio_target(
                "sustained append throughput >= 85% of fio O_DIRECT sequential bandwidth",
                format!(
                    "{id}: {} appenders x {TPUT_RECORDS} x 1 KiB batches, no fsync, {how}; vs {FIO_SEQ}",
                    plan.args.appenders
                ),
                log_bw,
                fio_bw.clone(),
                "MB/s",
                true,
                0.85,
            ));
        }
    }
    let fio_p99 = series(results, FIO_SYNC, |r| {
        fio_sync(r).map(|f| f.total_p99_bound_ns() / 1e3)
    });
    for id in [DURABLE_4K_FDATASYNC, DURABLE_4K_DSYNC] {
        let log_p99 = series(results, id, |r| log_result(r).map(|l| us(l.latency.p99_ns)));
        if let (Some(log_p99), Some(fio_p99)) = (log_p99, &fio_p99) {
            out.push(ratio_target(
                "p99 of one durable 4 KiB append <= 1.3 x fio write+fdatasync p99",
                format!(
                    "{id}: 1 appender, {} B batch ({:?}); vs {FIO_SYNC} write p99 + fdatasync p99 \
                     (an upper bound of fio's combined p99)",
                    plan.durable_batch.len(),
                    sync_mode(id)
                ),
                log_p99,
                fio_p99.clone(),
                "us",
                false,
                1.3,
            ));
        }
    }
    for (group, single) in [
        (GROUP_1K_FDATASYNC, DURABLE_1K_FDATASYNC),
        (GROUP_1K_DSYNC, DURABLE_1K_DSYNC),
    ] {
        let g = series(results, group, |r| {
            log_result(r).map(LogCaseResult::ops_per_s)
        });
        let s = series(results, single, |r| {
            log_result(r).map(LogCaseResult::ops_per_s)
        });
        if let (Some(g), Some(s)) = (g, s) {
            out.push(ratio_target(
                "group commit with 16 appenders >= 8 x durable appends/s of one appender",
                format!(
                    "{group} ({} appenders) vs {single} (1 appender), both 1 record x 1 KiB, {:?}",
                    plan.args.group,
                    sync_mode(group)
                ),
                g,
                s,
                "ops/s",
                true,
                8.0,
            ));
        }
    }
    out
}

fn fmt(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let runs = report.runs;
    let _ = writeln!(out, "## Cases\n");
    for label in &report.labels {
        let _ = writeln!(
            out,
            "- `{}`: {}; durability: {}; record: {}; batch: {}",
            label.id, label.what, label.durability, label.record, label.batch
        );
    }
    let _ = writeln!(out, "\n## Results (every run, and the median)\n");
    let mut header = String::from("| case | durability | record | batch | metric | unit |");
    let mut rule = String::from("|---|---|---|---|---|---|");
    for run in 1..=runs {
        let _ = write!(header, " run {run} |");
        rule.push_str("---:|");
    }
    header.push_str(" median |");
    rule.push_str("---:|");
    let _ = writeln!(out, "{header}\n{rule}");
    for row in &report.rows {
        let mut line = format!(
            "| {} | {} | {} | {} | {} | {} |",
            row.case, row.durability, row.record, row.batch, row.metric, row.unit
        );
        for value in &row.runs {
            let _ = write!(line, " {} |", fmt(*value));
        }
        let _ = write!(line, " **{}** |", fmt(row.median));
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "\n## Targets (from the medians)\n");
    let _ = writeln!(
        out,
        "| target | compared | measured | baseline | ratio | required | per-run ratios | result |\n|---|---|---:|---:|---:|---|---|---|"
    );
    for t in &report.targets {
        let per_run: Vec<String> = t.per_run_ratios.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} {} | {:.2} | {} | {} | **{}** |",
            t.name,
            t.detail,
            fmt(t.measured),
            t.unit,
            fmt(t.baseline),
            t.unit,
            t.ratio,
            t.required,
            per_run.join(", "),
            if t.pass { "PASS" } else { "MISS" }
        );
    }
    let _ = writeln!(
        out,
        "\nfio's write+fdatasync figure is write p99 + fdatasync p99, an upper bound of the p99 \
         of the combined operation. \"CPU of everything else\" counts other processes and kernel \
         threads during the window (including jbd2/kworker work the case itself causes); large \
         values mean the figures were disturbed. Load average (1 min) at the end: {:.2}.",
        report.loadavg_1m_end
    );
    out
}
