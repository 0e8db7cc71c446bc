//! Facts about the machine a benchmark ran on, CPU accounting that tells whether other work
//! disturbed a case, and the scratch directory benchmarks write into.
//!
//! Everything here reads Linux procfs; on other systems the facts come back as "unknown".

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a reader needs to judge a figure: kernel, file system under the data, CPUs.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    pub kernel: String,
    pub cpu_model: String,
    /// CPUs online in the machine.
    pub cpus_online: usize,
    /// CPUs this process may run on (sched_getaffinity), as core ids.
    pub cpus_allowed: Vec<usize>,
    /// File system type of the data directory (`ext4`, `xfs`, `tmpfs`, ...).
    pub data_fs: String,
    /// Device or source mounted under the data directory.
    pub data_device: String,
    /// Mount point holding the data directory.
    pub data_mount: String,
    /// 1-minute load average when the facts were taken.
    pub loadavg_1m: f64,
    /// RLIMIT_MEMLOCK soft limit as `/proc/self/limits` shows it.
    pub memlock_limit: String,
}

impl MachineFacts {
    /// Reads the facts for a data directory `dir` (which must exist).
    pub fn read(dir: &Path) -> MachineFacts {
        let (data_fs, data_device, data_mount) =
            mount_of(dir).unwrap_or_else(|| unknown3("not found in /proc/self/mountinfo"));
        MachineFacts {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(),
            cpus_online: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpus_allowed: engine::config::allowed_cores(),
            data_fs,
            data_device,
            data_mount,
            loadavg_1m: loadavg_1m(),
            memlock_limit: memlock_limit(),
        }
    }
}

/// Pins the calling thread to CPU `core`; does nothing if the process may not run there.
/// Returns whether the thread is now pinned.
pub fn pin(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|id| id.id == core))
        .is_some_and(core_affinity::set_for_current)
}

fn unknown3(why: &str) -> (String, String, String) {
    (format!("unknown ({why})"), String::new(), String::new())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown".to_owned();
    };
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned())
}

/// 1-minute load average, or -1 when unreadable.
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}

fn memlock_limit() -> String {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return "unknown".to_owned();
    };
    limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .map_or_else(
            || "unknown".to_owned(),
            |l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                // "Max locked memory  <soft>  <hard>  bytes"
                fields.get(3).map_or("unknown", |v| v).to_owned()
            },
        )
}

/// Memory this process has pinned (`VmPin` in kB): glommio's registered io_memory shows up
/// here when registration succeeded (PLATFORM §1.8: 3 x io_memory per executor).
pub fn pinned_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPin:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (fs type, source, mount point) of the mount holding `dir`: the longest mount point that
/// is a prefix of its canonical path.
fn mount_of(dir: &Path) -> Option<(String, String, String)> {
    let path = std::fs::canonicalize(dir).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in info.lines() {
        let Some((fs, source, mount_point)) = parse_mount_line(line) else {
            continue;
        };
        if path.starts_with(&mount_point) {
            let depth = mount_point.len();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, (fs, source, mount_point)));
            }
        }
    }
    best.map(|(_, found)| found)
}

/// (fs type, source, mount point) of one mountinfo line, e.g.
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
fn parse_mount_line(line: &str) -> Option<(String, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = unescape_mount(left.split_whitespace().nth(4)?);
    let mut right = right.split_whitespace();
    let fs = right.next()?.to_owned();
    let source = right.next().unwrap_or("").to_owned();
    Some((fs, source, mount_point))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mount(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (USER_HZ, fixed at 100 on
/// every Linux architecture this runs on).
const USER_HZ: f64 = 100.0;

/// A snapshot of CPU time: the whole machine's and this process's (its threads, including
/// io_uring workers, plus children it has waited for, such as fio).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// Busy ticks of all CPUs: user, nice, system, irq, softirq.
    machine_busy_ticks: u64,
    /// Ticks the hypervisor ran someone else while this VM wanted a CPU.
    machine_steal_ticks: u64,
    /// utime + stime + cutime + cstime of this process.
    process_ticks: u64,
}

/// CPU time spent between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// CPU seconds of this process (and waited-for children) in the window.
    pub ours_s: f64,
    /// CPU seconds of everything else: other processes and kernel threads (which include
    /// work we cause: jbd2, block-layer completions, kworkers).
    pub others_s: f64,
    /// Seconds of CPU the hypervisor took away.
    pub steal_s: f64,
}

impl CpuSample {
    pub fn now() -> CpuSample {
        let (machine_busy_ticks, machine_steal_ticks) = machine_ticks().unwrap_or((0, 0));
        CpuSample {
            machine_busy_ticks,
            machine_steal_ticks,
            process_ticks: process_ticks().unwrap_or(0),
        }
    }

    /// CPU used from `self` until `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let busy = later
            .machine_busy_ticks
            .saturating_sub(self.machine_busy_ticks);
        let ours = later.process_ticks.saturating_sub(self.process_ticks);
        CpuUse {
            ours_s: ours as f64 / USER_HZ,
            others_s: busy.saturating_sub(ours) as f64 / USER_HZ,
            steal_s: later
                .machine_steal_ticks
                .saturating_sub(self.machine_steal_ticks) as f64
                / USER_HZ,
        }
    }
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Some((busy, field(7)))
}

fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime..cstime are fields 14..17.
    let tick = |field: usize| -> u64 {
        fields
            .get(field - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(tick(14) + tick(15) + tick(16) + tick(17))
}

/// A directory this process creates and removes again, with everything in it.
///
/// Removal happens on drop, so an early `?` return cleans up too (a panic does not: release
/// builds abort).
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<parent>/<prefix>-<pid>` and returns it as an absolute path; fails if it
    /// already exists, so nothing that was there before is ever removed.
    pub fn create_in(parent: &Path, prefix: &str) -> std::io::Result<ScratchDir> {
        std::fs::create_dir_all(parent)?;
        let path = parent.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir(&path)?;
        // Absolute, because glommio 0.9's `Directory::open` (the log's directory fsync)
        // opens with dirfd -1 and fails with EBADF on a relative path.
        match std::fs::canonicalize(&path) {
            Ok(path) => Ok(ScratchDir { path }),
            Err(error) => {
                let _ = std::fs::remove_dir(&path);
                Err(error)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {error}", self.path.display());
        }
    }
}

/// Scheduler counters of the calling thread: how long it sat runnable but not running
/// (another task held its CPU) and how often it was preempted. On a pinned shard thread
/// these measure CPU contention from other work directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSched {
    /// Time spent waiting on a run queue, ns (`/proc/thread-self/schedstat`, field 2).
    run_delay_ns: u64,
    nonvoluntary_switches: u64,
}

/// Scheduler contention suffered by one thread between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SchedDelay {
    /// Milliseconds the thread was runnable but waited for its CPU.
    pub runqueue_wait_ms: f64,
    /// Times the thread was preempted.
    pub preemptions: u64,
}

impl ThreadSched {
    /// The calling thread's counters (zero where the kernel does not expose them).
    pub fn now() -> ThreadSched {
        let run_delay_ns = std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let nonvoluntary_switches = std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("nonvoluntary_ctxt_switches:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0);
        ThreadSched {
            run_delay_ns,
            nonvoluntary_switches,
        }
    }

    pub fn until(&self, later: &ThreadSched) -> SchedDelay {
        SchedDelay {
            runqueue_wait_ms: later.run_delay_ns.saturating_sub(self.run_delay_ns) as f64 / 1e6,
            preemptions: later
                .nonvoluntary_switches
                .saturating_sub(self.nonvoluntary_switches),
        }
    }
}

/// Bytes written to one block device so far (`/proc/diskstats`), by everyone.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskSample {
    sectors_written: Option<u64>,
}

impl DiskSample {
    /// Reads the counters of `device` (a name like `vda` or a path like `/dev/vda`); empty
    /// when the device is unknown or has no entry.
    pub fn now(device: &str) -> DiskSample {
        let name = device.rsplit('/').next().unwrap_or(device);
        let sectors_written = std::fs::read_to_string("/proc/diskstats")
            .ok()
            .and_then(|stats| {
                stats.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // major minor name reads merged sectors ms writes merged sectors_written ...
                    if fields.get(2) == Some(&name) {
                        fields.get(9).and_then(|v| v.parse().ok())
                    } else {
                        None
                    }
                })
            });
        DiskSample { sectors_written }
    }

    /// MB (10^6 B) written to the device from `self` until `later`, by everyone.
    pub fn written_mb_until(&self, later: &DiskSample) -> Option<f64> {
        let (Some(before), Some(after)) = (self.sectors_written, later.sectors_written) else {
            return None;
        };
        // diskstats sectors are always 512 bytes.
        Some(after.saturating_sub(before) as f64 * 512.0 / 1e6)
    }
}
