//! fio baselines: what the device and kernel give a plain program, measured the way the log
//! uses the disk, so the log's figures can be read as a fraction of them.
//!
//! fio runs as a subprocess with `--output-format=json`. Both jobs pass `--overwrite=1`: fio
//! then lays its file out with real writes before measuring, so every measured write is an
//! overwrite, as in ringmq's pre-zeroed segments. Without it fio only fallocates (unwritten
//! extents, checked with `filefrag -v`), and the first pass of writes pays for extent
//! conversion.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

/// How to install fio, for the error when it is missing.
pub const INSTALL_HINT: &str = "fio not found: install it with `apt-get install -y fio` \
     (Debian/Ubuntu; run `apt-get update` first if the package is unknown)";

/// fio's version string, or an error saying how to install it.
pub fn version() -> anyhow::Result<String> {
    let output = Command::new("fio")
        .arg("--version")
        .output()
        .context(INSTALL_HINT)?;
    if !output.status.success() {
        bail!("`fio --version` failed; {INSTALL_HINT}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Sequential O_DIRECT write: 1 MiB blocks, io_uring, queue depth 4, no sync.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SeqWrite {
    /// Bytes per second (10^6 B = 1 MB in the report).
    pub bytes_per_s: f64,
    /// Bytes written in the measured run.
    pub io_bytes: f64,
    pub iops: f64,
    /// fio's own CPU use, user + system, percent of one CPU.
    pub cpu_pct: f64,
}

/// 4 KiB O_DIRECT write followed by fdatasync, queue depth 1, sync engine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriteSync {
    pub write_p50_ns: f64,
    pub write_p99_ns: f64,
    pub write_p999_ns: f64,
    pub sync_p50_ns: f64,
    pub sync_p99_ns: f64,
    pub sync_p999_ns: f64,
    /// Writes per second; each write is followed by its fdatasync, so this is durable
    /// 4 KiB writes per second.
    pub iops: f64,
    pub cpu_pct: f64,
    /// Bytes written in the measured run.
    pub io_bytes: f64,
}

impl WriteSync {
    /// write p99 + fdatasync p99: an upper bound of the p99 of one write+fdatasync pair
    /// (fio reports the two latencies separately, not their per-operation sum).
    pub fn total_p99_bound_ns(&self) -> f64 {
        self.write_p99_ns + self.sync_p99_ns
    }
}

/// Runs the sequential-write job on `file` for `seconds`, pinned to CPU `core`.
pub fn seq_write(file: &Path, seconds: u64, core: usize) -> anyhow::Result<SeqWrite> {
    let json = run(file, seconds, core, &SEQ_JOB)?;
    let job = first_job(&json)?;
    Ok(SeqWrite {
        bytes_per_s: number(job, &["write", "bw_bytes"])?,
        io_bytes: number(job, &["write", "io_bytes"])?,
        iops: number(job, &["write", "iops"])?,
        cpu_pct: number(job, &["usr_cpu"])? + number(job, &["sys_cpu"])?,
    })
}

/// Runs the 4 KiB write+fdatasync job on `file` for `seconds`, pinned to CPU `core`.
pub fn write_fdatasync(file: &Path, seconds: u64, core: usize) -> anyhow::Result<WriteSync> {
    let json = run(file, seconds, core, &SYNC_JOB)?;
    let job = first_job(&json)?;
    let write = ["write", "clat_ns", "percentile"];
    let sync = ["sync", "lat_ns", "percentile"];
    let at = |path: &[&str], pct: &str| -> anyhow::Result<f64> {
        let mut keys = path.to_vec();
        keys.push(pct);
        number(job, &keys)
    };
    Ok(WriteSync {
        write_p50_ns: at(&write, "50.000000")?,
        write_p99_ns: at(&write, "99.000000")?,
        write_p999_ns: at(&write, "99.900000")?,
        sync_p50_ns: at(&sync, "50.000000")?,
        sync_p99_ns: at(&sync, "99.000000")?,
        sync_p999_ns: at(&sync, "99.900000")?,
        iops: number(job, &["write", "iops"])?,
        cpu_pct: number(job, &["usr_cpu"])? + number(job, &["sys_cpu"])?,
        io_bytes: number(job, &["write", "io_bytes"])?,
    })
}

const SEQ_JOB: [&str; 7] = [
    "--name=seq-1m",
    "--rw=write",
    "--bs=1M",
    "--direct=1",
    "--ioengine=io_uring",
    "--iodepth=4",
    "--size=1G",
];

const SYNC_JOB: [&str; 7] = [
    "--name=write-4k-fdatasync",
    "--rw=write",
    "--bs=4k",
    "--direct=1",
    "--fdatasync=1",
    "--ioengine=sync",
    "--size=256M",
];

/// Lays out the sequential-write job's 1 GiB file (fio `--create_only=1`), so the first
/// measured run does not include writing it.
pub fn lay_out_seq_write(file: &Path, core: usize) -> anyhow::Result<()> {
    lay_out(file, &SEQ_JOB, core)
}

/// Lays out the write+fdatasync job's 256 MiB file, as `lay_out_seq_write` does.
pub fn lay_out_write_fdatasync(file: &Path, core: usize) -> anyhow::Result<()> {
    lay_out(file, &SYNC_JOB, core)
}

fn lay_out(file: &Path, job: &[&str], core: usize) -> anyhow::Result<()> {
    let mut args = job.to_vec();
    args.push("--create_only=1");
    run(file, 1, core, &args).map(drop)
}

fn run(file: &Path, seconds: u64, core: usize, job: &[&str]) -> anyhow::Result<Value> {
    let mut command = Command::new("fio");
    command
        .args(job)
        .arg(format!("--filename={}", file.display()))
        .arg("--overwrite=1")
        .arg("--time_based")
        .arg(format!("--runtime={seconds}"))
        .arg(format!("--cpus_allowed={core}"))
        .arg("--percentile_list=50:99:99.9")
        .arg("--output-format=json");
    let output = command
        .output()
        .with_context(|| format!("running {command:?}; {INSTALL_HINT}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "fio failed ({}): {command:?}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    // fio may print notes before the JSON document.
    let Some(start) = stdout.find('{') else {
        bail!("no JSON in fio output: {stdout}");
    };
    let json: Value = serde_json::from_str(stdout.get(start..).unwrap_or_default())
        .with_context(|| format!("parsing fio JSON output of {command:?}"))?;
    Ok(json)
}

fn first_job(json: &Value) -> anyhow::Result<&Value> {
    let job = json
        .get("jobs")
        .and_then(|jobs| jobs.get(0))
        .context("fio JSON has no jobs[0]")?;
    let error = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if error != 0 {
        bail!("fio job reported error {error}");
    }
    Ok(job)
}

fn number(value: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut at = value;
    for key in path {
        at = at
            .get(key)
            .with_context(|| format!("fio JSON lacks {}", path.join(".")))?;
    }
    at.as_f64()
        .with_context(|| format!("fio JSON {} is not a number: {at}", path.join(".")))
}
