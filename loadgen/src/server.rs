//! Brokers `loadgen compare` starts for itself: `nats-server` and the `ringmq` binary, each on
//! a free loopback port with a temporary data directory, pinned to one core, stopped on drop.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// Longest a started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ringmq profile the started broker runs: the repository's default profile with its
/// cores replaced by the one core the broker gets.
const RINGMQ_DEFAULT_PROFILE: &str = include_str!("../../tuning/default.toml");

/// A program found on PATH (or `None`).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1 (the OS picks; free when this returns).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns `command` from a thread pinned to `core`, so the child inherits that affinity.
fn spawn_pinned(mut command: Command, core: Option<usize>) -> anyhow::Result<Child> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                if let (Some(core), Some(ids)) = (core, core_affinity::get_core_ids())
                    && let Some(id) = ids.into_iter().find(|id| id.id == core)
                {
                    core_affinity::set_for_current(id);
                }
                command.spawn()
            })
            .join()
            .map_err(|_| anyhow!("the spawning thread panicked"))?
            .map_err(anyhow::Error::from)
    })
}

/// A fresh directory under `data_parent` for one started server, removed on drop.
fn data_dir(data_parent: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(data_parent)
        .with_context(|| format!("creating a data directory under {}", data_parent.display()))
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            bail!("server exited ({status}) before listening:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("server did not listen on port {port} within {READY_TIMEOUT:?}")
}

/// A `nats-server` with JetStream, owned by this process.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    /// `sync_interval: always`, or why not.
    pub sync: String,
    pub version: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `binary` on a free port with JetStream storing under `data_parent`, syncing
    /// every write when the server understands `sync_interval: always`.
    pub fn start(
        binary: &Path,
        data_parent: &Path,
        core: Option<usize>,
    ) -> anyhow::Result<NatsServer> {
        let version_output = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", binary.display()))?;
        let version = String::from_utf8_lossy(&version_output.stdout)
            .trim()
            .to_string();
        let dir = data_dir(data_parent, "loadgen-nats-")?;
        let port = free_port()?;
        let store = dir.path().join("jetstream");
        let config = |sync: bool| {
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{}}}\n",
                store.display(),
                if sync {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            )
        };
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config(true))?;
        // `-t` checks a configuration and exits: older servers reject `always`.
        let check = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("-t")
            .output()
            .with_context(|| {
                format!(
                    "checking the nats-server configuration with {}",
                    binary.display()
                )
            })?;
        let sync = if check.status.success() {
            "sync_interval: always (fsync before every ack)".to_string()
        } else {
            std::fs::write(&config_path, config(false))?;
            format!("server default sync (every 2 min; {version} lacks sync_interval: always)")
        };
        let log = dir.path().join("nats.log");
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("nats.err"))?);
        let mut child = spawn_pinned(command, core)?;
        if let Err(error) = wait_for_port(port, &mut child, &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error.context("starting nats-server"));
        }
        Ok(NatsServer {
            child,
            port,
            sync,
            version,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        crate::cpu::pid_listening_on(self.port).unwrap_or(self.child.id())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `ringmq serve` owned by this process.
pub struct RingmqServer {
    child: Child,
    /// Held open: the broker may print again (at shutdown), and a closed pipe would fail it.
    _stdout: Option<BufReader<std::process::ChildStdout>>,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl RingmqServer {
    /// The ringmq binary: `explicit`, else next to this executable, else on PATH.
    pub fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(path) = explicit {
            return Ok(path.to_path_buf());
        }
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("ringmq")));
        if let Some(sibling) = sibling.filter(|p| p.is_file()) {
            return Ok(sibling);
        }
        find_on_path("ringmq").ok_or_else(|| {
            anyhow!(
                "no ringmq binary next to loadgen or on PATH: build it with \
                 `cargo build --release -p ringmq`, pass --ringmq-bin, or give --target ringmq://HOST:PORT"
            )
        })
    }

    /// Starts `binary serve` on OS-assigned ports with the default profile on one core.
    pub fn start(
        binary: &Path,
        data_parent: &Path,
        core: Option<usize>,
    ) -> anyhow::Result<RingmqServer> {
        let dir = data_dir(data_parent, "loadgen-ringmq-")?;
        let profile = match core {
            Some(core) => {
                RINGMQ_DEFAULT_PROFILE.replace("cores = \"all\"", &format!("cores = [{core}]"))
            }
            None => RINGMQ_DEFAULT_PROFILE.to_string(),
        };
        let profile_path = dir.path().join("profile.toml");
        std::fs::write(&profile_path, profile)?;
        let stderr_path = dir.path().join("ringmq.err");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&profile_path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--port")
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?);
        let mut child = spawn_pinned(command, core)
            .with_context(|| format!("starting {}", binary.display()))?;
        // The first line says where it listens: "ringmq serving on ADDRESS ...".
        let mut line = String::new();
        let mut stdout = child.stdout.take().map(BufReader::new);
        if let Some(stdout) = &mut stdout {
            let _ = stdout.read_line(&mut line);
        }
        let address = line
            .strip_prefix("ringmq serving on ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        let Some(address) = address else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("ringmq did not start (first line {line:?}):\n{stderr}");
        };
        Ok(RingmqServer {
            child,
            _stdout: stdout,
            address,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RingmqServer {
    fn drop(&mut self) {
        // SIGTERM first: ringmq shuts down gracefully and releases its data directory.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
