//! Checks made before any shard starts. Each failure stops the broker with a message that
//! says what to change; glommio itself would only warn and run without its fast path.

use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, opcode};

use crate::config::{ShardConfig, check_memlock, memlock_budget_bytes};

/// Why the broker refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Memlock(String),
    #[error(
        "io_uring is not available ({0}); ringmq needs Linux 5.8 or newer with io_uring enabled \
         (check /proc/sys/kernel/io_uring_disabled and the container's seccomp profile)"
    )]
    IoUring(std::io::Error),
    #[error("io_uring lacks opcode {0}; ringmq needs Linux 5.8 or newer")]
    Opcode(&'static str),
    #[error("data directory {dir}: {error}")]
    DataDir { dir: String, error: std::io::Error },
    #[error(
        "data directory {dir} is in use by another ringmq process (it holds {dir}/ringmq.lock); \
         stop it or use another --data-dir"
    )]
    DataDirLocked { dir: String },
    #[error(
        "port {addr} is already in use (another ringmq would silently share it through \
         SO_REUSEPORT); stop it or use another --port: {error}"
    )]
    PortInUse {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The memlock budget (3 x io_memory per shard) against `ulimit -l` and CAP_IPC_LOCK.
pub fn check_memory_lock(shards: &[ShardConfig]) -> Result<(), PreflightError> {
    check_memlock(memlock_budget_bytes(shards))
        .map_err(|error| PreflightError::Memlock(error.to_string()))
}

/// Creates a ring and checks the opcodes glommio and the log use.
pub fn check_io_uring() -> Result<(), PreflightError> {
    let ring = IoUring::new(8).map_err(PreflightError::IoUring)?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(PreflightError::IoUring)?;
    let needed = [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::OpenAt::CODE, "OPENAT"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(PreflightError::Opcode(name));
        }
    }
    Ok(())
}

/// Creates `dir` and takes its lock file, held for as long as the returned file lives, so
/// two brokers never share a data directory.
pub fn lock_data_dir(dir: &Path) -> Result<File, PreflightError> {
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|error| PreflightError::DataDir {
        dir: shown.clone(),
        error,
    })?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("ringmq.lock"))
        .map_err(|error| PreflightError::DataDir {
            dir: shown.clone(),
            error,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(PreflightError::DataDirLocked { dir: shown }),
        Err(TryLockError::Error(error)) => Err(PreflightError::DataDir { dir: shown, error }),
    }
}

/// How long a busy port is tried again before the broker gives up on it: a broker that has
/// just exited (a restart) may still hold its listeners for a few milliseconds after its
/// process was reaped (measured: up to 4.5 ms, in 4 of 30 restarts).
const PORT_BUSY_GRACE: Duration = Duration::from_millis(500);

/// Fails if something already listens on (or holds) `host:port` for longer than
/// `PORT_BUSY_GRACE`. Binding without SO_REUSEPORT fails even against a socket that set it,
/// which is the point.
pub fn check_port_free(host: IpAddr, port: u16) -> Result<(), PreflightError> {
    let addr = SocketAddr::new(host, port);
    let deadline = Instant::now() + PORT_BUSY_GRACE;
    // Each turn sleeps a little, and the deadline ends the turns.
    loop {
        match TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(PreflightError::PortInUse { addr, error }),
        }
    }
}

/// Reserves a free port for the shards to bind with SO_REUSEPORT: a socket bound but never
/// listening, so it takes no connections. Hold it until the shards are listening.
///
/// The port comes from a plain `bind(0)`: with SO_REUSEPORT set, `bind(0)` may hand out a
/// port another reuse-port socket of this user already holds, and two brokers would then
/// share it silently.
pub fn reserve_port(host: IpAddr) -> std::io::Result<(socket2::Socket, u16)> {
    let mut last_error = None;
    for _ in 0..16 {
        let port = TcpListener::bind(SocketAddr::new(host, 0))?
            .local_addr()?
            .port();
        let domain = if host.is_ipv6() {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        match socket.bind(&SocketAddr::new(host, port).into()) {
            Ok(()) => return Ok((socket, port)),
            // Someone took it between the two binds: pick another.
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// How this machine's idle cores sleep, as far as produce-to-ack latency cares: the cpuidle
/// driver, and for a virtual machine's `haltpoll` driver how long an idle core polls before
/// it halts (`guest_halt_poll_ns`; the kernel's default is 200 us).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdlePolicy {
    /// `/sys/devices/system/cpu/cpuidle/current_driver`, when there is one.
    pub driver: Option<String>,
    /// `/sys/module/haltpoll/parameters/guest_halt_poll_ns`, when the module is there.
    pub halt_poll_ns: Option<u64>,
}

impl IdlePolicy {
    /// Reads it from sysfs; what is missing or unreadable is `None`.
    pub fn read() -> IdlePolicy {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        IdlePolicy::parse(
            read("/sys/devices/system/cpu/cpuidle/current_driver").as_deref(),
            read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").as_deref(),
        )
    }

    fn parse(driver: Option<&str>, halt_poll_ns: Option<&str>) -> IdlePolicy {
        IdlePolicy {
            driver: driver
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            halt_poll_ns: halt_poll_ns.and_then(|ns| ns.trim().parse().ok()),
        }
    }

    /// What to tell an operator when a virtual machine's haltpoll driver is set to halt
    /// idle cores at once: every wake-up for a request, a write's or a sync's completion
    /// then exits to the hypervisor and back, which a VM here measured as most of the gap
    /// between a durable ack and the disk (`tuning/README.md`). Other drivers (or none, as
    /// on most guests) have no such knob, so they get no advice.
    pub fn advice(&self) -> Option<&'static str> {
        (self.driver.as_deref() == Some("haltpoll") && self.halt_poll_ns == Some(0)).then_some(
            "idle cores halt at once on this virtual machine: each wake-up adds tens of \
             microseconds to produce-to-ack. For low latency, set the VM's \
             /sys/module/haltpoll/parameters/guest_halt_poll_ns to 200000 (as root, or \
             haltpoll.guest_halt_poll_ns=200000 on its kernel command line; see \
             tuning/README.md, \"Idle cores on a virtual machine\")",
        )
    }
}

impl std::fmt::Display for IdlePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.driver, self.halt_poll_ns) {
            (Some(driver), Some(ns)) if driver == "haltpoll" => {
                write!(f, "cpuidle {driver}, guest_halt_poll_ns {ns}")
            }
            (Some(driver), _) => write!(f, "cpuidle {driver}"),
            (None, _) => write!(f, "cpuidle unknown"),
        }
    }
}

/// The I/O queue of the disk a data directory lives on: the disk's name under `/sys/block`
/// and the I/O scheduler its requests pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskQueue {
    pub disk: String,
    pub scheduler: String,
}

impl DiskQueue {
    /// The queue of the block device that holds `path` (which must exist). `None` on a file
    /// system with no block device of its own (tmpfs, overlay, NFS) or where sysfs says
    /// nothing readable.
    pub fn of(path: &Path) -> Option<DiskQueue> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let device = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
        // A partition's requests go through its disk's queue.
        let disk = if device.join("partition").exists() {
            device.parent()?.to_path_buf()
        } else {
            device
        };
        let listed = std::fs::read_to_string(disk.join("queue/scheduler")).ok()?;
        Some(DiskQueue {
            disk: disk.file_name()?.to_string_lossy().into_owned(),
            scheduler: active_scheduler(&listed)?,
        })
    }

    /// What to tell an operator when the disk queues requests in a scheduler. `mq-deadline`
    /// is the kernel's choice for a disk that says it spins, as virtual disks often do; with
    /// `none` replication kept more of its throughput on a VM here (`tuning/README.md`, "The
    /// disk's I/O scheduler"). A disk that really spins may do better with one, so this is
    /// advice, not a refusal.
    pub fn advice(&self) -> Option<String> {
        let DiskQueue { disk, scheduler } = self;
        (scheduler != "none").then(|| {
            format!(
                "disk {disk} queues the log's writes in the {scheduler} I/O scheduler. \
                 Unless it is a spinning disk, set it to none (as root: echo none > \
                 /sys/block/{disk}/queue/scheduler; see tuning/README.md, \"The disk's I/O \
                 scheduler\")"
            )
        })
    }
}

impl std::fmt::Display for DiskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, I/O scheduler {}", self.disk, self.scheduler)
    }
}

/// The scheduler in use from a `queue/scheduler` file, which lists the choices with the
/// active one in brackets (`none [mq-deadline] kyber bfq`), or only `none` where the
/// queue offers no choice.
fn active_scheduler(listed: &str) -> Option<String> {
    let listed = listed.trim();
    let bracketed = listed
        .split_whitespace()
        .find_map(|name| name.strip_prefix('[')?.strip_suffix(']'));
    match bracketed {
        Some(name) if !name.is_empty() => Some(name.to_owned()),
        Some(_) => None,
        None if !listed.is_empty() && !listed.contains(char::is_whitespace) => {
            Some(listed.to_owned())
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bracketed entry is the active scheduler; a queue with no choice lists one name.
    #[test]
    fn active_scheduler_is_the_bracketed_one() {
        assert_eq!(
            active_scheduler("none [mq-deadline] kyber bfq \n").as_deref(),
            Some("mq-deadline")
        );
        assert_eq!(
            active_scheduler("[none] mq-deadline\n").as_deref(),
            Some("none")
        );
        assert_eq!(active_scheduler("none\n").as_deref(), Some("none"));
        assert_eq!(active_scheduler(""), None);
        assert_eq!(active_scheduler("none mq-deadline"), None);
        assert_eq!(active_scheduler("[] none"), None);
    }

    /// Only a queue with a scheduler is advised, and the advice names the disk's own file.
    #[test]
    fn scheduler_advice_names_the_disk() {
        let queue = |scheduler: &str| DiskQueue {
            disk: "vda".to_owned(),
            scheduler: scheduler.to_owned(),
        };
        assert_eq!(queue("none").advice(), None);
        let advice = queue("mq-deadline").advice().unwrap();
        assert!(advice.contains("mq-deadline"), "{advice}");
        assert!(
            advice.contains("/sys/block/vda/queue/scheduler"),
            "{advice}"
        );
        assert_eq!(queue("bfq").to_string(), "vda, I/O scheduler bfq");
    }

    /// A path on a disk has the queue of the whole disk (a partition has none of its own),
    /// where sysfs shows one; tmpfs has none.
    #[test]
    fn disk_queue_of_a_path() {
        let here = std::env::current_dir().unwrap();
        if let Some(queue) = DiskQueue::of(&here) {
            let listed = Path::new("/sys/block")
                .join(&queue.disk)
                .join("queue/scheduler");
            let listed = std::fs::read_to_string(&listed).unwrap();
            let active = format!("[{}]", queue.scheduler);
            assert!(
                listed.contains(&active) || listed.trim() == queue.scheduler,
                "{queue:?} {listed}"
            );
        }
        if Path::new("/dev/shm").exists() {
            assert_eq!(DiskQueue::of(Path::new("/dev/shm")), None);
        }
        assert_eq!(DiskQueue::of(Path::new("/no/such/dir")), None);
    }

    /// Only a haltpoll guest that polls for nothing is advised; sysfs values carry newlines.
    #[test]
    fn idle_advice_only_for_a_guest_that_halts_at_once() {
        let halts = IdlePolicy::parse(Some("haltpoll\n"), Some("0\n"));
        assert_eq!(halts.to_string(), "cpuidle haltpoll, guest_halt_poll_ns 0");
        assert!(halts.advice().unwrap().contains("guest_halt_poll_ns"));
        let polls = IdlePolicy::parse(Some("haltpoll\n"), Some("200000\n"));
        assert_eq!(polls.advice(), None);
        let metal = IdlePolicy::parse(Some("intel_idle\n"), None);
        assert_eq!(metal.to_string(), "cpuidle intel_idle");
        assert_eq!(metal.advice(), None);
        // Most guests: no driver, so a plain halt and no knob to turn.
        let guest = IdlePolicy::parse(Some("none\n"), None);
        assert_eq!(guest.to_string(), "cpuidle none");
        assert_eq!(guest.advice(), None);
        // haltpoll's module loaded but another driver in charge: its knob does nothing.
        assert_eq!(
            IdlePolicy::parse(Some("acpi_idle"), Some("0")).advice(),
            None
        );
        assert_eq!(IdlePolicy::parse(None, None).to_string(), "cpuidle unknown");
        assert_eq!(
            IdlePolicy::parse(Some(""), Some("x")),
            IdlePolicy::parse(None, None)
        );
    }

    #[test]
    fn second_lock_on_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(PreflightError::DataDirLocked { .. })
        ));
        drop(held);
        assert!(lock_data_dir(dir.path()).is_ok());
    }

    #[test]
    fn busy_port_is_refused_even_with_reuseport_holders() {
        let (_held, port) = reserve_port(IpAddr::from([127, 0, 0, 1])).unwrap();
        let error = check_port_free(IpAddr::from([127, 0, 0, 1]), port).unwrap_err();
        assert!(error.to_string().contains("already in use"), "{error}");
    }

    /// SO_REUSEADDR, which the broker's listeners set, never lets a bind past a listening
    /// socket: another broker's start-up check still finds the port busy.
    #[test]
    fn a_port_a_broker_listens_on_is_refused() {
        let host = IpAddr::from([127, 0, 0, 1]);
        let listened = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind((host, 0)).unwrap();
                let port = listener.local_addr().unwrap().port();
                check_port_free(host, port).map_err(|error| error.to_string())
            })
            .unwrap()
            .join()
            .unwrap();
        let error = listened.unwrap_err();
        assert!(error.contains("already in use"), "{error}");
    }

    #[test]
    fn io_uring_is_available_here() {
        check_io_uring().unwrap();
    }
}
