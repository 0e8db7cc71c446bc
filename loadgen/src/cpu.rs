//! CPU time of a process from `/proc/<pid>/stat`, and the process listening on a port.

use std::time::Instant;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ). The kernel fixes it at 100 on
/// every architecture Linux exports to user space, whatever CONFIG_HZ is.
const USER_HZ: f64 = 100.0;

/// Why a CPU figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading /proc/{pid}/stat: {source}")]
    Read {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/stat has no utime/stime fields")]
    Malformed { pid: u32 },
}

/// User plus system CPU seconds a process (all its threads) has used.
pub fn cpu_seconds(pid: u32) -> Result<f64, CpuError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| CpuError::Read { pid, source })?;
    parse_cpu_seconds(&stat).ok_or(CpuError::Malformed { pid })
}

/// Fields 14 (utime) and 15 (stime) of a stat line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A CPU meter over an interval: `start`, then `percent` of one core since then.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    cpu_start: f64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<CpuMeter, CpuError> {
        Ok(CpuMeter {
            pid,
            cpu_start: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU used since `start`, in percent of one core (200 = two cores busy).
    pub fn percent(&self) -> Result<f64, CpuError> {
        let used = cpu_seconds(self.pid)? - self.cpu_start;
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Ok(used / wall * 100.0)
    }
}

/// The process with a TCP socket listening on `port` (IPv4 or IPv6), if this user may see
/// it. Reads `/proc/net/tcp*` for the socket's inode, then looks for it among processes'
/// file descriptors.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && targets.iter().any(|t| link.as_os_str() == t.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Inodes of sockets in LISTEN state (0A) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *state == "0A" && inode != 0).then_some(inode)
        })
        .collect()
}

/// The CPUs a process may run on (`Cpus_allowed_list` in `/proc/<pid>/status`).
pub fn allowed_cpus(pid: u32) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list.trim())
}

/// Parses `0-3,6,8-9`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        match part.trim().split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_cpu_seconds(line), Some(3.0));
        assert_eq!(parse_cpu_seconds("4242 (x) S 1 2"), None);
    }

    #[test]
    fn own_cpu_time_grows_while_busy() {
        let pid = std::process::id();
        let meter = CpuMeter::start(pid).unwrap();
        let before = cpu_seconds(pid).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        // Spin until the kernel has charged us 50 ms (bounded: a busy machine gives us less).
        while cpu_seconds(pid).unwrap() - before < 0.05 && started.elapsed().as_secs() < 20 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid).unwrap() - before >= 0.05);
        assert!(meter.percent().unwrap() > 0.0);
    }

    #[test]
    fn listener_is_found_by_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
