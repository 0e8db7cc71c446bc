//! Per-core profiles: parse, validate, name the bad field.
//!
//! A profile (`tuning/*.toml`) configures the broker process (`[broker]`), the defaults of
//! every partition log (`[log]`), when a follower replica leaves the in-sync set
//! (`[replication]`), the defaults of every shard (`[shards]`) and optional per-core overrides
//! (`[[shard]]`). `tuning/README.md` documents every knob.
//!
//! - [`Profile::parse`] reads TOML and validates it; a typo, a wrong type or a value out of
//!   bounds is a [`ConfigError`] that names the file, the field and what to change.
//! - [`Profile::resolve`] turns the profile into one [`ShardConfig`] per shard, checked
//!   against the CPUs this process may run on ([`allowed_cores`]).
//! - [`memlock_budget_bytes`] and [`check_memlock`] are the start-up preflight for the
//!   memory glommio pins: glommio itself only warns when it cannot pin, and silently loses
//!   the registered-buffer fast path.
//!
//! Every field of `[broker]`, `[log]`, `[replication]` and `[shards]` is required, so a profile file states
//! every value the broker runs with; copy `tuning/default.toml` to start a new one. Only the
//! retention defaults (absent = unbounded) and the `[[shard]]` overrides are optional.
//!
//! Owner: read once at start-up, before any executor exists; the resolved [`ShardConfig`]s
//! are plain values that move into their shards.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::log::{Durability, LogConfig, Preallocate, Retention};
use protocol::limits::{BATCH_BYTES_MAX, FRAME_BYTES_MAX};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

// ---------------------------------------------------------------------------------------------
// Bounds. A profile picks values inside these; `Profile::validate` names the field otherwise.
// ---------------------------------------------------------------------------------------------

/// Direct-I/O block (the log's `BLOCK_BYTES`, as a `u64` for the byte fields here).
pub const BLOCK_BYTES: u64 = crate::log::storage::BLOCK_BYTES as u64;

pub use crate::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WRITE_BUFFER_BYTES_MIN};

/// Largest tail buffer. Every busy partition replica's tail grows to `write_buffer_bytes`, so
/// this bounds a shard's log memory per busy replica; 1 MiB writes already reach the device's
/// bandwidth (PLATFORM §2b).
pub const WRITE_BUFFER_BYTES_MAX: u64 = 64 << 20;

/// Densest sparse index: one entry per block. Reads are block-aligned, so a denser index
/// cannot save a read.
pub const INDEX_INTERVAL_BYTES_MIN: u64 = BLOCK_BYTES;

/// Sparsest index: a fetch by offset scans at most this many bytes past the index entry it
/// lands on.
pub const INDEX_INTERVAL_BYTES_MAX: u64 = 1 << 20;

/// Least registered I/O memory per shard: one full batch fits in registered memory. glommio's
/// own floor is 64 KiB.
pub const IO_MEMORY_BYTES_MIN: u64 = 1 << 20;

/// Most registered I/O memory per shard. glommio pins 3 x this per shard (one registration per
/// ring), so 256 MiB pins 768 MiB per core, more than a few write buffers in flight ever use.
pub const IO_MEMORY_BYTES_MAX: u64 = 256 << 20;

/// glommio floor for `io_memory` (it rounds anything smaller up to this).
const GLOMMIO_IO_MEMORY_BYTES_MIN: u64 = 64 << 10;

/// Shallowest io_uring: a group commit of 16 concurrent 4 KiB writes (PLATFORM §2b) must fit
/// in one submission.
pub const RING_DEPTH_MIN: u32 = 16;

/// Deepest io_uring. glommio creates three rings of this depth per shard; 4096 entries is far
/// more than a shard keeps in flight, and every entry costs kernel memory.
pub const RING_DEPTH_MAX: u32 = 4096;

/// Longest busy-poll before an idle core parks. Spinning burns the whole core; after one idle
/// second, the 4-5 us it takes to wake a parked core (PLATFORM, machine limits) is noise.
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 1_000_000;

/// Shortest preemption timer: about twice the ~50 us of CPU a task may run before it must
/// yield (PLATFORM §1.7); shorter slices would interrupt well-behaved tasks mid-work.
pub const PREEMPT_TIMER_US_MIN: u64 = 100;

/// Longest preemption timer. glommio's default is 100 ms; a task queue that holds its core
/// for longer than a second starves every other queue on the shard.
pub const PREEMPT_TIMER_US_MAX: u64 = 1_000_000;

/// Longest group-commit window. The window adds to every durable ack's latency; past 10 ms a
/// flush costs less than the wait even on disks without power-loss protection (0.5-5 ms).
pub const GROUP_COMMIT_WINDOW_US_MAX: u64 = 10_000;

/// Smallest group-commit threshold: one block, the smallest write the log issues.
pub const GROUP_COMMIT_BYTES_MIN: u64 = BLOCK_BYTES;

/// Most shards (cores) in one broker. Shards talk through a full mesh of mailboxes, one per
/// (from, to) pair: 64 shards already means 4096 mailboxes.
pub const SHARDS_MAX: usize = 64;

/// Most connections one shard serves. Each holds a socket, a receive buffer and per-connection
/// state on its shard.
pub const CONNECTIONS_PER_SHARD_MAX: u32 = 16_384;

/// Smallest initial receive buffer: one page, which holds any frame header.
pub const CONNECTION_BUFFER_BYTES_MIN: u64 = BLOCK_BYTES;

/// Largest initial receive buffer: a buffer never needs to outgrow the largest frame.
pub const CONNECTION_BUFFER_BYTES_MAX: u64 = FRAME_BYTES_MAX as u64;

/// Most memory the initial receive buffers of one shard may take together
/// (`max_connections_per_shard x connection_buffer_bytes`).
pub const CONNECTION_BUFFERS_BYTES_MAX: u64 = 1 << 30;

/// Shortest idle timeout, short enough for tests to watch a connection being closed.
pub const IDLE_TIMEOUT_MS_MIN: u64 = 100;

/// Longest idle timeout: a day. A dead peer without keepalive holds its slot this long.
pub const IDLE_TIMEOUT_MS_MAX: u64 = 86_400_000;

/// Shortest frame-read timeout: a frame started must be allowed a few scheduler ticks (4 ms at
/// HZ=250) to arrive on a loaded machine.
pub const FRAME_READ_TIMEOUT_MS_MIN: u64 = 10;

/// Longest frame-read timeout. A peer that starts a frame and stalls holds a buffer of up to
/// `FRAME_BYTES_MAX` on its shard for this long.
pub const FRAME_READ_TIMEOUT_MS_MAX: u64 = 600_000;

/// A follower may fall behind for at least this long before it leaves the in-sync set: the
/// leader checks lag every 50 ms, and a shorter bound would eject followers on a busy disk's
/// ordinary sync.
pub const LAG_TIME_MS_MIN: u64 = 100;
pub const LAG_TIME_MS_MAX: u64 = 600_000;
/// At least one replication message of batches (1 MiB): a follower one message behind is not
/// lagging.
pub const LAG_BYTES_MIN: u64 = 1 << 20;
pub const LAG_BYTES_MAX: u64 = 1 << 40;

/// Largest profile file `Profile::load` reads; the shipped ones are a few KiB.
pub const PROFILE_BYTES_MAX: u64 = 1 << 20;

/// glommio registers `io_memory` with each of an executor's three rings (main, latency, poll),
/// and the kernel charges every registration against RLIMIT_MEMLOCK (PLATFORM §1.8).
pub const MEMLOCK_RINGS_PER_SHARD: u64 = 3;

/// glommio refuses to create an executor when RLIMIT_MEMLOCK is below this, even for a process
/// with CAP_IPC_LOCK (glommio 0.9 `Reactor::new`).
pub const GLOMMIO_MEMLOCK_FLOOR_BYTES: u64 = 512 << 10;

/// CAP_IPC_LOCK's bit in the capability sets of /proc/self/status (linux/capability.h).
const CAP_IPC_LOCK_BIT: u32 = 14;

const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
// The smallest legal tail buffer fits in the smallest legal segment, so a minimal profile exists.
const _: () = assert!(WRITE_BUFFER_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(WRITE_BUFFER_BYTES_MIN <= SEGMENT_BYTES_MIN);
const _: () = assert!(WRITE_BUFFER_BYTES_MIN <= WRITE_BUFFER_BYTES_MAX);
const _: () = assert!(WRITE_BUFFER_BYTES_MAX <= SEGMENT_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_BYTES_MIN <= WRITE_BUFFER_BYTES_MIN);
const _: () = assert!(INDEX_INTERVAL_BYTES_MIN <= INDEX_INTERVAL_BYTES_MAX);
const _: () = assert!(INDEX_INTERVAL_BYTES_MAX <= SEGMENT_BYTES_MIN);
const _: () = assert!(IO_MEMORY_BYTES_MIN >= GLOMMIO_IO_MEMORY_BYTES_MIN);
const _: () = assert!(IO_MEMORY_BYTES_MIN >= BATCH_BYTES_MAX as u64);
const _: () = assert!(IO_MEMORY_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(IO_MEMORY_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
// Even the smallest budget clears glommio's floor, so a limit that fits the budget fits it too.
const _: () = assert!(MEMLOCK_RINGS_PER_SHARD * IO_MEMORY_BYTES_MIN >= GLOMMIO_MEMLOCK_FLOOR_BYTES);
const _: () = assert!(RING_DEPTH_MIN.is_power_of_two() && RING_DEPTH_MAX.is_power_of_two());
const _: () = assert!(RING_DEPTH_MIN <= RING_DEPTH_MAX);
const _: () = assert!(PREEMPT_TIMER_US_MIN <= PREEMPT_TIMER_US_MAX);
// A shard index is a u16 (`ShardId`), and every shard port must fit next to the shared port.
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);
const _: () = assert!(CONNECTION_BUFFER_BYTES_MIN <= CONNECTION_BUFFER_BYTES_MAX);
const _: () = assert!(CONNECTION_BUFFERS_BYTES_MAX >= CONNECTION_BUFFER_BYTES_MAX);
// `frame_read_timeout_ms <= idle_timeout_ms` must be satisfiable at the lower bounds.
const _: () = assert!(FRAME_READ_TIMEOUT_MS_MIN <= IDLE_TIMEOUT_MS_MIN);
const _: () = assert!(FRAME_READ_TIMEOUT_MS_MAX <= IDLE_TIMEOUT_MS_MAX);

/// The shipped profiles, embedded so the binary runs without the `tuning/` folder.
const DEFAULT_PROFILE_TOML: &str = include_str!("../../tuning/default.toml");
const TINY_PROFILE_TOML: &str = include_str!("../../tuning/tiny.toml");

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A profile that cannot be read, parsed or used. Each variant displays as one line that starts
/// with the file name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{source_name}: cannot read profile: {source}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than `PROFILE_BYTES_MAX`.
    #[error("{source_name}: profile is larger than {bytes_max} bytes; is this the right file?")]
    TooLarge { source_name: String, bytes_max: u64 },
    /// Not TOML, or not a profile: a syntax error, an unknown or missing field, a wrong type.
    /// `line` and `column` are 1-based (columns count characters); both are 0 when the TOML
    /// parser gave no position.
    #[error("{source_name}{}: {message}", position(.line, .column))]
    Parse {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A well-formed profile with a value the broker cannot run with. `field` is a path such
    /// as `shards.io_memory_bytes` or `shard[core=1].spin_before_park_us`; `reason` says what
    /// to change and ends with the value found.
    #[error("{source_name}: {field}: {reason}")]
    Invalid {
        source_name: String,
        field: String,
        reason: String,
    },
}

fn position(line: &usize, column: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

// ---------------------------------------------------------------------------------------------
// The profile
// ---------------------------------------------------------------------------------------------

/// A parsed and validated profile. Build it with [`Profile::parse`], [`Profile::load`],
/// [`Profile::default`] or [`Profile::tiny`]; fields are public so a caller (the test harness)
/// can override them, and [`Profile::resolve`] validates again before it uses them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub broker: BrokerConfig,
    pub log: LogSection,
    pub replication: ReplicationSection,
    pub shards: ShardDefaults,
    /// `[[shard]]` sections: per-core overrides of `[shards]`.
    #[serde(default, rename = "shard")]
    pub shard_overrides: Vec<ShardOverride>,
    /// File name used in error messages.
    #[serde(skip)]
    source_name: String,
}

/// `[broker]`: the process and its listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Listen address, an IP literal (host names are not resolved).
    pub host: String,
    /// Shared port: every shard listens on it (SO_REUSEPORT) and the kernel spreads
    /// connections over them.
    pub port: u16,
    /// Shard `i` also listens on `shard_port_base + i`, for shard-aware clients.
    pub shard_port_base: u16,
    /// Shard `i` keeps its data in `data_dir/shard-<i>` unless its `[[shard]]` section names
    /// another directory. Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Connections a shard accepts at once; it refuses more.
    pub max_connections_per_shard: u32,
    /// A connection with no request in progress that receives nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// A frame whose first byte arrived must be complete within this, or the connection closes.
    pub frame_read_timeout_ms: u64,
    /// Initial receive buffer per connection; it grows up to `FRAME_BYTES_MAX` for big frames.
    pub connection_buffer_bytes: u64,
}

/// `[log]`: defaults for every partition log. [`LogSection::log_config`] turns it, with a
/// shard's durability, into the `log::LogConfig` a partition log opens with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Size of one segment file; segments are created at this size.
    pub segment_bytes: u64,
    /// Bytes of log between two sparse-index entries.
    pub index_interval_bytes: u64,
    /// The largest in-memory tail buffer of a partition (it starts at 64 KiB and grows with
    /// its writes): the most bytes one group-commit write carries.
    pub write_buffer_bytes: u64,
    /// How a new segment gets its blocks before the first append.
    pub preallocate: Preallocate,
    /// A closed segment that retention lets go of becomes the next segment file instead of
    /// being deleted. Absent: true.
    #[serde(default = "recycle_segments_default")]
    pub recycle_segments: bool,
    /// Topic default: delete a closed segment once its newest record is this old. Absent: keep.
    #[serde(default)]
    pub retention_ms: Option<u64>,
    /// Topic default: delete the oldest closed segments while a partition holds more than this.
    /// Absent: unbounded.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

fn recycle_segments_default() -> bool {
    true
}

impl LogSection {
    /// The settings of one partition log on `shard` (its durability and group-commit window),
    /// with the topic's `retention` (the `[log]` defaults fill what the topic leaves unset).
    pub fn log_config(&self, shard: &ShardConfig, retention: Retention) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            index_interval_bytes: self.index_interval_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            durability: shard.durability,
            preallocate: self.preallocate,
            recycle_segments: self.recycle_segments,
            retention: Retention {
                ms: retention.ms.or(self.retention_ms),
                bytes: retention.bytes.or(self.retention_bytes),
            },
            group_commit_window_us: shard.group_commit_window_us,
            group_commit_bytes: shard.group_commit_bytes,
        }
    }
}

/// Which cores run shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    /// Every CPU the process may run on, in ascending order.
    All,
    /// These cores, in this order: the i-th entry runs shard i.
    List(Vec<usize>),
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CoresVisitor;

        impl<'de> Visitor<'de> for CoresVisitor {
            type Value = Cores;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("\"all\" or a list of core numbers such as [0, 1]")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Cores, E> {
                if value == "all" {
                    Ok(Cores::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cores, A::Error> {
                let mut cores = Vec::new();
                // Bounded by the parsed document; `validate` rejects more than SHARDS_MAX.
                while let Some(core) = seq.next_element::<usize>()? {
                    cores.push(core);
                }
                Ok(Cores::List(cores))
            }
        }

        deserializer.deserialize_any(CoresVisitor)
    }
}

/// `[replication]`: when a follower replica leaves the in-sync set (it rejoins once it has
/// caught up). While it is in the set, `all` and `all+fsync` produces wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// A follower that has not held the leader's end for this long leaves.
    pub lag_time_ms: u64,
    /// A follower more than this many bytes of batches behind the leader's end leaves.
    pub lag_bytes: u64,
}

/// `[shards]`: defaults for every shard.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardDefaults {
    /// Which cores run a shard: `"all"` or a list.
    pub cores: Cores,
    /// glommio `io_memory`: the registered buffer arena. glommio pins 3 x this per shard.
    pub io_memory_bytes: u64,
    /// Entries in each of the shard's io_uring rings.
    pub ring_depth: u32,
    /// Busy-poll this long before parking an idle core (0 = park at once).
    pub spin_before_park_us: u64,
    /// glommio preemption timer: how long a task queue may run before others get a turn.
    pub preempt_timer_us: u64,
    pub durability: Durability,
    /// Wait up to this long to gather more appends before a write (0 = write at once).
    pub group_commit_window_us: u64,
    /// ... or until this many bytes are pending.
    pub group_commit_bytes: u64,
}

/// `[[shard]]`: overrides for the shard on one core. Absent knobs come from `[shards]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardOverride {
    /// The core this section applies to; it must be one of `shards.cores`.
    pub core: usize,
    /// Used as is (no `shard-<i>` suffix); must not be shared with or nested in another
    /// shard's directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub io_memory_bytes: Option<u64>,
    #[serde(default)]
    pub ring_depth: Option<u32>,
    #[serde(default)]
    pub spin_before_park_us: Option<u64>,
    #[serde(default)]
    pub preempt_timer_us: Option<u64>,
    #[serde(default)]
    pub durability: Option<Durability>,
    #[serde(default)]
    pub group_commit_window_us: Option<u64>,
    #[serde(default)]
    pub group_commit_bytes: Option<u64>,
}

/// Everything one shard needs, with its overrides applied.
///
/// Owner: built on the main thread by [`Profile::resolve`], then moved into the shard's
/// executor. A test harness that wants OS-assigned ports overwrites `port` after resolving
/// (validation rejects port 0 in a profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// Shard index, 0-based, in the order of `shards.cores`.
    pub index: u16,
    /// CPU the shard's executor is pinned to (`Placement::Fixed`).
    pub core: usize,
    pub data_dir: PathBuf,
    pub io_memory_bytes: u64,
    pub ring_depth: u32,
    pub spin_before_park_us: u64,
    pub preempt_timer_us: u64,
    pub durability: Durability,
    pub group_commit_window_us: u64,
    pub group_commit_bytes: u64,
    /// This shard's own port: `broker.shard_port_base + index`.
    pub port: u16,
}

impl ShardConfig {
    /// A combination of knobs that validates but is known to hurt, and why, for the broker
    /// to warn about at start.
    pub fn caution(&self) -> Option<&'static str> {
        (self.spin_before_park_us > 0 && self.durability == Durability::Dsync).then_some(
            "spin_before_park_us with durability \"dsync\": where the disk cannot flush \
             inline, each O_DSYNC write runs on the shard's io_uring worker thread, which \
             shares the shard's core and waits out the spinning (produce-to-ack p50 measured \
             2.8-5.4 ms instead of 0.35 ms on a virtio disk); use \"fdatasync\" or no spin, \
             unless measured on this disk",
        )
    }
}

impl Default for Profile {
    /// The embedded `tuning/default.toml`.
    fn default() -> Self {
        // The text is compiled in and `shipped_profiles_parse_and_validate` parses it, so a
        // failure here is our bug, not bad input.
        #[allow(clippy::expect_used)]
        Self::parse(DEFAULT_PROFILE_TOML, "tuning/default.toml (embedded)")
            .expect("embedded tuning/default.toml is valid")
    }
}

impl Profile {
    /// The embedded `tuning/tiny.toml`: small limits that tests reach within milliseconds. Tests
    /// override `broker.data_dir` and the ports.
    pub fn tiny() -> Self {
        // As for `default`: compiled-in text, checked by a unit test.
        #[allow(clippy::expect_used)]
        Self::parse(TINY_PROFILE_TOML, "tuning/tiny.toml (embedded)")
            .expect("embedded tuning/tiny.toml is valid")
    }

    /// Parses and validates `text`. `source_name` (usually the file name) starts every error
    /// message.
    pub fn parse(text: &str, source_name: &str) -> Result<Profile, ConfigError> {
        let mut profile: Profile = toml::from_str(text).map_err(|error| {
            let (line, column) = match error.span() {
                Some(span) => line_column(text, span.start),
                None => (0, 0),
            };
            ConfigError::Parse {
                source_name: source_name.to_owned(),
                line,
                column,
                // toml's messages are one line today; keep the error one line regardless.
                message: error.message().trim().replace('\n', " "),
            }
        })?;
        profile.source_name = source_name.to_owned();
        profile.validate()?;
        Ok(profile)
    }

    /// Reads, parses and validates the profile at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, ConfigError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let read_error = |source| ConfigError::Read {
            source_name: source_name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        file.take(PROFILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > PROFILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                source_name,
                bytes_max: PROFILE_BYTES_MAX,
            });
        }
        Profile::parse(&text, &source_name)
    }

    /// The name errors start with: the file name given to `parse` or `load`.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// `broker.host` as an address.
    pub fn listen_ip(&self) -> Result<IpAddr, ConfigError> {
        self.broker.host.parse::<IpAddr>().map_err(|_| {
            self.invalid(
                "broker.host",
                format!(
                    "must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1 (host names are not \
                     resolved); got {:?}",
                    self.broker.host
                ),
            )
        })
    }

    /// Checks every bound. `parse` calls it; call it again after changing fields by hand.
    /// Checks that need the allowed cores (for `cores = "all"`) happen in [`Profile::resolve`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        // First: the port checks below depend on the shard count.
        if let Cores::List(cores) = &self.shards.cores {
            self.check_core_list(cores)?;
        }
        self.validate_broker()?;
        self.validate_log()?;
        self.validate_replication()?;
        self.validate_shards()?;
        self.validate_overrides()
    }

    /// One [`ShardConfig`] per shard, in the order of `shards.cores`. `"all"` expands to
    /// `allowed_cores` in order; an explicit core must be one of `allowed_cores` (pass
    /// [`allowed_cores()`] in production).
    pub fn resolve(&self, allowed_cores: &[usize]) -> Result<Vec<ShardConfig>, ConfigError> {
        self.validate()?;
        let cores: Vec<usize> = match &self.shards.cores {
            Cores::All => {
                if allowed_cores.is_empty() {
                    return Err(self.invalid(
                        "shards.cores",
                        "\"all\" found no CPU this process may run on; list the cores \
                         explicitly"
                            .to_owned(),
                    ));
                }
                allowed_cores.to_vec()
            }
            Cores::List(cores) => {
                if let Some(core) = cores.iter().find(|core| !allowed_cores.contains(core)) {
                    return Err(self.invalid(
                        "shards.cores",
                        format!(
                            "core {core} is not one this process may run on (affinity mask, \
                             taskset or cpuset); allowed cores: {allowed_cores:?}"
                        ),
                    ));
                }
                cores.clone()
            }
        };
        self.check_core_list(&cores)?;
        self.check_ports(cores.len())?;
        for shard_override in &self.shard_overrides {
            if !cores.contains(&shard_override.core) {
                return Err(self.invalid(
                    format!("shard[core={}].core", shard_override.core),
                    format!(
                        "core {} is not one of shards.cores, which resolve to {cores:?}; add it \
                         there or remove this [[shard]] section",
                        shard_override.core
                    ),
                ));
            }
        }

        let mut shards = Vec::with_capacity(cores.len());
        for (position, &core) in cores.iter().enumerate() {
            let shard_override = self.shard_overrides.iter().find(|o| o.core == core);
            let defaults = &self.shards;
            let (index, port) = self.shard_index_and_port(position)?;
            let data_dir = match shard_override.and_then(|o| o.data_dir.clone()) {
                Some(data_dir) => data_dir,
                None => self.broker.data_dir.join(format!("shard-{index}")),
            };
            let knob = |pick: fn(&ShardOverride) -> Option<u64>, default: u64| {
                shard_override.and_then(pick).unwrap_or(default)
            };
            shards.push(ShardConfig {
                index,
                core,
                data_dir,
                io_memory_bytes: knob(|o| o.io_memory_bytes, defaults.io_memory_bytes),
                ring_depth: shard_override
                    .and_then(|o| o.ring_depth)
                    .unwrap_or(defaults.ring_depth),
                spin_before_park_us: knob(|o| o.spin_before_park_us, defaults.spin_before_park_us),
                preempt_timer_us: knob(|o| o.preempt_timer_us, defaults.preempt_timer_us),
                durability: shard_override
                    .and_then(|o| o.durability)
                    .unwrap_or(defaults.durability),
                group_commit_window_us: knob(
                    |o| o.group_commit_window_us,
                    defaults.group_commit_window_us,
                ),
                group_commit_bytes: knob(|o| o.group_commit_bytes, defaults.group_commit_bytes),
                port,
            });
        }
        self.check_data_dirs(&shards)?;
        Ok(shards)
    }

    fn invalid(&self, field: impl Into<String>, reason: String) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source_name.clone(),
            field: field.into(),
            reason,
        }
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        let broker = &self.broker;
        self.listen_ip()?;
        // With `cores = "all"` the shard count is known only in `resolve`; check what we can.
        let shard_count = match &self.shards.cores {
            Cores::List(cores) => cores.len().max(1),
            Cores::All => 1,
        };
        self.check_ports(shard_count)?;
        if broker.data_dir.as_os_str().is_empty() {
            return Err(self.invalid(
                "broker.data_dir",
                "must name a directory, such as \"./ringmq-data\"; got \"\"".to_owned(),
            ));
        }
        self.check_range(
            "broker.max_connections_per_shard",
            u64::from(broker.max_connections_per_shard),
            1,
            u64::from(CONNECTIONS_PER_SHARD_MAX),
            "",
        )?;
        self.check_range(
            "broker.connection_buffer_bytes",
            broker.connection_buffer_bytes,
            CONNECTION_BUFFER_BYTES_MIN,
            CONNECTION_BUFFER_BYTES_MAX,
            " bytes",
        )?;
        let buffers_bytes =
            u64::from(broker.max_connections_per_shard) * broker.connection_buffer_bytes;
        if buffers_bytes > CONNECTION_BUFFERS_BYTES_MAX {
            return Err(self.invalid(
                "broker.connection_buffer_bytes",
                format!(
                    "times broker.max_connections_per_shard ({}) must be at most {}, so idle \
                     connections cannot take more than that per shard; got {}, which makes {}",
                    broker.max_connections_per_shard,
                    bytes_text(CONNECTION_BUFFERS_BYTES_MAX),
                    broker.connection_buffer_bytes,
                    bytes_text(buffers_bytes),
                ),
            ));
        }
        self.check_range(
            "broker.idle_timeout_ms",
            broker.idle_timeout_ms,
            IDLE_TIMEOUT_MS_MIN,
            IDLE_TIMEOUT_MS_MAX,
            " ms",
        )?;
        self.check_range(
            "broker.frame_read_timeout_ms",
            broker.frame_read_timeout_ms,
            FRAME_READ_TIMEOUT_MS_MIN,
            FRAME_READ_TIMEOUT_MS_MAX,
            " ms",
        )?;
        if broker.frame_read_timeout_ms > broker.idle_timeout_ms {
            // Otherwise a peer keeps a connection open longer by sending half a frame than by
            // staying silent.
            return Err(self.invalid(
                "broker.frame_read_timeout_ms",
                format!(
                    "must be at most broker.idle_timeout_ms ({}); got {}",
                    broker.idle_timeout_ms, broker.frame_read_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    fn validate_replication(&self) -> Result<(), ConfigError> {
        let replication = &self.replication;
        self.check_range(
            "replication.lag_time_ms",
            replication.lag_time_ms,
            LAG_TIME_MS_MIN,
            LAG_TIME_MS_MAX,
            " ms",
        )?;
        self.check_range(
            "replication.lag_bytes",
            replication.lag_bytes,
            LAG_BYTES_MIN,
            LAG_BYTES_MAX,
            " bytes",
        )
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        let log = &self.log;
        self.check_multiple("log.segment_bytes", log.segment_bytes, BLOCK_BYTES)?;
        self.check_range(
            "log.segment_bytes",
            log.segment_bytes,
            SEGMENT_BYTES_MIN,
            SEGMENT_BYTES_MAX,
            " bytes",
        )?;
        self.check_multiple(
            "log.write_buffer_bytes",
            log.write_buffer_bytes,
            BLOCK_BYTES,
        )?;
        self.check_range(
            "log.write_buffer_bytes",
            log.write_buffer_bytes,
            WRITE_BUFFER_BYTES_MIN,
            WRITE_BUFFER_BYTES_MAX,
            " bytes",
        )?;
        if log.write_buffer_bytes > log.segment_bytes {
            return Err(self.invalid(
                "log.write_buffer_bytes",
                format!(
                    "must be at most log.segment_bytes ({}), since one write never spans two \
                     segments; got {}",
                    log.segment_bytes, log.write_buffer_bytes
                ),
            ));
        }
        self.check_range(
            "log.index_interval_bytes",
            log.index_interval_bytes,
            INDEX_INTERVAL_BYTES_MIN,
            INDEX_INTERVAL_BYTES_MAX,
            " bytes",
        )?;
        if log.retention_ms == Some(0) {
            return Err(self.invalid(
                "log.retention_ms",
                "must be at least 1 (0 would delete every closed segment at once); omit the \
                 key to keep data forever; got 0"
                    .to_owned(),
            ));
        }
        if let Some(retention_bytes) = log.retention_bytes
            && retention_bytes < log.segment_bytes
        {
            return Err(self.invalid(
                "log.retention_bytes",
                format!(
                    "must be at least log.segment_bytes ({}), since retention deletes whole \
                     segments; omit the key for no size limit; got {retention_bytes}",
                    log.segment_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), ConfigError> {
        let shards = &self.shards;
        self.check_io_memory_bytes("shards.io_memory_bytes", shards.io_memory_bytes)?;
        self.check_ring_depth("shards.ring_depth", shards.ring_depth)?;
        self.check_spin_before_park_us("shards.spin_before_park_us", shards.spin_before_park_us)?;
        self.check_preempt_timer_us("shards.preempt_timer_us", shards.preempt_timer_us)?;
        self.check_group_commit_window_us(
            "shards.group_commit_window_us",
            shards.group_commit_window_us,
        )?;
        self.check_group_commit_bytes("shards.group_commit_bytes", shards.group_commit_bytes)
    }

    fn validate_overrides(&self) -> Result<(), ConfigError> {
        for (position, shard_override) in self.shard_overrides.iter().enumerate() {
            let path = format!("shard[core={}]", shard_override.core);
            let field = |name: &str| format!("{path}.{name}");
            let earlier = self.shard_overrides.iter().take(position);
            if earlier.clone().any(|o| o.core == shard_override.core) {
                return Err(self.invalid(
                    field("core"),
                    format!(
                        "appears in two [[shard]] sections; merge them into one; got core {}",
                        shard_override.core
                    ),
                ));
            }
            if let Cores::List(cores) = &self.shards.cores
                && !cores.contains(&shard_override.core)
            {
                return Err(self.invalid(
                    field("core"),
                    format!(
                        "must be one of shards.cores {cores:?}; add it there or remove this \
                         [[shard]] section; got {}",
                        shard_override.core
                    ),
                ));
            }
            if let Some(data_dir) = &shard_override.data_dir
                && data_dir.as_os_str().is_empty()
            {
                return Err(self.invalid(
                    field("data_dir"),
                    "must name a directory, or be left out to use broker.data_dir/shard-<i>; \
                     got \"\""
                        .to_owned(),
                ));
            }
            if let Some(value) = shard_override.io_memory_bytes {
                self.check_io_memory_bytes(&field("io_memory_bytes"), value)?;
            }
            if let Some(value) = shard_override.ring_depth {
                self.check_ring_depth(&field("ring_depth"), value)?;
            }
            if let Some(value) = shard_override.spin_before_park_us {
                self.check_spin_before_park_us(&field("spin_before_park_us"), value)?;
            }
            if let Some(value) = shard_override.preempt_timer_us {
                self.check_preempt_timer_us(&field("preempt_timer_us"), value)?;
            }
            if let Some(value) = shard_override.group_commit_window_us {
                self.check_group_commit_window_us(&field("group_commit_window_us"), value)?;
            }
            if let Some(value) = shard_override.group_commit_bytes {
                self.check_group_commit_bytes(&field("group_commit_bytes"), value)?;
            }
        }
        Ok(())
    }

    fn check_range(
        &self,
        field: &str,
        value: u64,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Result<(), ConfigError> {
        if (min..=max).contains(&value) {
            return Ok(());
        }
        let bounds = if unit == " bytes" {
            format!("{} and {}", bytes_text(min), bytes_text(max))
        } else {
            format!("{min} and {max}{unit}")
        };
        Err(self.invalid(field, format!("must be between {bounds}; got {value}")))
    }

    fn check_multiple(&self, field: &str, value: u64, of: u64) -> Result<(), ConfigError> {
        if value.is_multiple_of(of) {
            return Ok(());
        }
        Err(self.invalid(field, format!("must be a multiple of {of}; got {value}")))
    }

    fn check_io_memory_bytes(&self, field: &str, value: u64) -> Result<(), ConfigError> {
        self.check_multiple(field, value, BLOCK_BYTES)?;
        self.check_range(
            field,
            value,
            IO_MEMORY_BYTES_MIN,
            IO_MEMORY_BYTES_MAX,
            " bytes",
        )
    }

    fn check_ring_depth(&self, field: &str, value: u32) -> Result<(), ConfigError> {
        if value.is_power_of_two() && (RING_DEPTH_MIN..=RING_DEPTH_MAX).contains(&value) {
            return Ok(());
        }
        Err(self.invalid(
            field,
            format!(
                "must be a power of two between {RING_DEPTH_MIN} and {RING_DEPTH_MAX}; got {value}"
            ),
        ))
    }

    fn check_spin_before_park_us(&self, field: &str, value: u64) -> Result<(), ConfigError> {
        self.check_range(field, value, 0, SPIN_BEFORE_PARK_US_MAX, " us")
    }

    fn check_preempt_timer_us(&self, field: &str, value: u64) -> Result<(), ConfigError> {
        self.check_range(
            field,
            value,
            PREEMPT_TIMER_US_MIN,
            PREEMPT_TIMER_US_MAX,
            " us",
        )
    }

    fn check_group_commit_window_us(&self, field: &str, value: u64) -> Result<(), ConfigError> {
        self.check_range(field, value, 0, GROUP_COMMIT_WINDOW_US_MAX, " us")
    }

    fn check_group_commit_bytes(&self, field: &str, value: u64) -> Result<(), ConfigError> {
        // One write carries at most the tail buffer, so a larger threshold would never be met.
        let max = self.log.write_buffer_bytes;
        if (GROUP_COMMIT_BYTES_MIN..=max).contains(&value) {
            return Ok(());
        }
        Err(self.invalid(
            field,
            format!(
                "must be between {GROUP_COMMIT_BYTES_MIN} and log.write_buffer_bytes ({max}); \
                 got {value}"
            ),
        ))
    }

    fn check_core_list(&self, cores: &[usize]) -> Result<(), ConfigError> {
        if cores.is_empty() {
            return Err(self.invalid(
                "shards.cores",
                "must name at least one core, or be \"all\"; got []".to_owned(),
            ));
        }
        if cores.len() > SHARDS_MAX {
            return Err(self.invalid(
                "shards.cores",
                format!(
                    "must name at most {SHARDS_MAX} cores (one shard each); got {}",
                    cores.len()
                ),
            ));
        }
        for (position, core) in cores.iter().enumerate() {
            if cores.iter().take(position).any(|earlier| earlier == core) {
                return Err(self.invalid(
                    "shards.cores",
                    format!("must not name a core twice; core {core} appears twice in {cores:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Ports for `shard_count` shards: none zero, every shard port inside u16, and the shared
    /// port outside the shard port range.
    fn check_ports(&self, shard_count: usize) -> Result<(), ConfigError> {
        let broker = &self.broker;
        if broker.port == 0 {
            return Err(self.invalid(
                "broker.port",
                "must be between 1 and 65535; got 0".to_owned(),
            ));
        }
        if broker.shard_port_base == 0 {
            return Err(self.invalid(
                "broker.shard_port_base",
                "must be between 1 and 65535; got 0".to_owned(),
            ));
        }
        let first = u64::from(broker.shard_port_base);
        let last = first + shard_count.saturating_sub(1) as u64;
        if last > u64::from(u16::MAX) {
            return Err(self.invalid(
                "broker.shard_port_base",
                format!(
                    "must leave room for {shard_count} shard ports (shard_port_base + index), \
                     so at most {}; got {first}",
                    (u64::from(u16::MAX) + 1).saturating_sub(shard_count as u64)
                ),
            ));
        }
        if (first..=last).contains(&u64::from(broker.port)) {
            return Err(self.invalid(
                "broker.port",
                format!(
                    "collides with the shard ports {first}..={last} (broker.shard_port_base + \
                     index for {shard_count} shards); pick a port outside that range; got {}",
                    broker.port
                ),
            ));
        }
        Ok(())
    }

    fn shard_index_and_port(&self, position: usize) -> Result<(u16, u16), ConfigError> {
        // `check_core_list` and `check_ports` bound both; this only avoids a cast.
        let index = u16::try_from(position).ok();
        let port = index.and_then(|index| self.broker.shard_port_base.checked_add(index));
        match (index, port) {
            (Some(index), Some(port)) => Ok((index, port)),
            _ => Err(self.invalid(
                "broker.shard_port_base",
                format!("leaves no port for shard {position}"),
            )),
        }
    }

    /// Two shards must never write into the same directory tree.
    fn check_data_dirs(&self, shards: &[ShardConfig]) -> Result<(), ConfigError> {
        for (position, shard) in shards.iter().enumerate() {
            for earlier in shards.iter().take(position) {
                let nested = shard.data_dir.starts_with(&earlier.data_dir)
                    || earlier.data_dir.starts_with(&shard.data_dir);
                if nested {
                    return Err(self.invalid(
                        format!("shard[core={}].data_dir", shard.core),
                        format!(
                            "must not be or contain another shard's directory; shard {} (core \
                             {}) uses {}; got {}",
                            earlier.index,
                            earlier.core,
                            earlier.data_dir.display(),
                            shard.data_dir.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `1048576` reads as "1048576 (1 MiB)", so bounds in messages are easy to check by eye.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit_bytes, unit) in UNITS {
        if bytes >= unit_bytes && bytes.is_multiple_of(unit_bytes) {
            return format!("{bytes} ({} {unit})", bytes / unit_bytes);
        }
    }
    bytes.to_string()
}

/// 1-based line and column (in characters) of `byte_offset` in `text`.
fn line_column(text: &str, byte_offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (offset, character) in text.char_indices() {
        if offset >= byte_offset {
            break;
        }
        if character == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// The CPUs this process may run on (its `sched_getaffinity` mask), ascending. Unlike glommio's
/// own discovery, this respects taskset, cgroup cpusets and container `--cpuset-cpus`. Empty
/// when the mask cannot be read.
pub fn allowed_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Memlock preflight
// ---------------------------------------------------------------------------------------------

/// The soft RLIMIT_MEMLOCK, the one the kernel checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemlockLimit {
    Unlimited,
    Bytes(u64),
}

/// Why the shards' pinned memory will not fit. Displays as one line that says what to change.
#[derive(Debug, thiserror::Error)]
pub enum MemlockError {
    #[error(
        "memlock limit (ulimit -l) is {} KiB but the shards pin {} KiB (3 x io_memory_bytes per \
         shard) and the process lacks CAP_IPC_LOCK: raise `ulimit -l` to at least {} KiB, \
         grant CAP_IPC_LOCK, or lower shards.io_memory_bytes",
        .limit_bytes / 1024, .budget_bytes.div_ceil(1024), .budget_bytes.div_ceil(1024)
    )]
    TooLow { limit_bytes: u64, budget_bytes: u64 },
    #[error(
        "memlock limit (ulimit -l) is {} KiB, below the {} KiB glommio needs to start any \
         executor even with CAP_IPC_LOCK: raise `ulimit -l` to at least {} KiB",
        .limit_bytes / 1024, GLOMMIO_MEMLOCK_FLOOR_BYTES / 1024, GLOMMIO_MEMLOCK_FLOOR_BYTES / 1024
    )]
    BelowGlommioFloor { limit_bytes: u64 },
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no readable {what} line")]
    Unparsable {
        path: &'static str,
        what: &'static str,
    },
}

/// Bytes the shards pin: glommio registers each shard's `io_memory` with its 3 rings.
pub fn memlock_budget_bytes(shards: &[ShardConfig]) -> u64 {
    shards
        .iter()
        .map(|shard| MEMLOCK_RINGS_PER_SHARD.saturating_mul(shard.io_memory_bytes))
        .fold(0, u64::saturating_add)
}

/// Start-up preflight: fails when `budget_bytes` (see [`memlock_budget_bytes`]) will not fit
/// under this process's RLIMIT_MEMLOCK and the process lacks CAP_IPC_LOCK. glommio would only
/// warn and run without registered buffers. Reads `/proc/self/limits` and `/proc/self/status`.
///
/// The kernel charges pinned memory per user, across processes, and releases it
/// asynchronously, so passing this check leaves no room for a second broker of the same user.
pub fn check_memlock(budget_bytes: u64) -> Result<(), MemlockError> {
    const LIMITS_PATH: &str = "/proc/self/limits";
    const STATUS_PATH: &str = "/proc/self/status";
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| MemlockError::Unreadable { path, source })
    };
    let limit = parse_memlock_limit(&read(LIMITS_PATH)?).ok_or(MemlockError::Unparsable {
        path: LIMITS_PATH,
        what: "\"Max locked memory\"",
    })?;
    let has_cap_ipc_lock =
        parse_cap_ipc_lock(&read(STATUS_PATH)?).ok_or(MemlockError::Unparsable {
            path: STATUS_PATH,
            what: "\"CapEff:\"",
        })?;
    check_memlock_limit(limit, has_cap_ipc_lock, budget_bytes)
}

/// The decision of [`check_memlock`], without the reads.
pub fn check_memlock_limit(
    limit: MemlockLimit,
    has_cap_ipc_lock: bool,
    budget_bytes: u64,
) -> Result<(), MemlockError> {
    match limit {
        MemlockLimit::Bytes(limit_bytes) if limit_bytes < GLOMMIO_MEMLOCK_FLOOR_BYTES => {
            Err(MemlockError::BelowGlommioFloor { limit_bytes })
        }
        _ if has_cap_ipc_lock => Ok(()),
        MemlockLimit::Unlimited => Ok(()),
        MemlockLimit::Bytes(limit_bytes) if limit_bytes >= budget_bytes => Ok(()),
        MemlockLimit::Bytes(limit_bytes) => Err(MemlockError::TooLow {
            limit_bytes,
            budget_bytes,
        }),
    }
}

/// The soft limit from the "Max locked memory" line of `/proc/self/limits` text:
/// `Max locked memory         8388608              8388608              bytes`.
pub fn parse_memlock_limit(proc_self_limits: &str) -> Option<MemlockLimit> {
    let line = proc_self_limits
        .lines()
        .find_map(|line| line.strip_prefix("Max locked memory"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(MemlockLimit::Unlimited),
        soft => soft.parse::<u64>().ok().map(MemlockLimit::Bytes),
    }
}

/// Whether the effective capability set (the hex `CapEff:` line of `/proc/self/status` text)
/// holds CAP_IPC_LOCK.
pub fn parse_cap_ipc_lock(proc_self_status: &str) -> Option<bool> {
    let hex = proc_self_status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let capabilities = u64::from_str_radix(hex, 16).ok()?;
    Some(capabilities & (1 << CAP_IPC_LOCK_BIT) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_log_sections_make_valid_log_configs() {
        let profiles = ["default", "low-latency", "throughput", "tiny"].map(|name| {
            let path = format!("{}/../tuning/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            Profile::load(path).unwrap()
        });
        for profile in &profiles {
            for shard in profile.resolve(&[0, 1]).unwrap() {
                let config = profile.log.log_config(&shard, Retention::default());
                assert_eq!(config.validate(), Ok(()), "{}", profile.source_name());
                assert_eq!(config.durability, shard.durability);
                assert_eq!(config.group_commit_window_us, shard.group_commit_window_us);
                assert_eq!(config.retention.ms, profile.log.retention_ms);
            }
        }
        let topic = Retention {
            ms: Some(5),
            bytes: None,
        };
        let shard = &Profile::default().resolve(&[0]).unwrap()[0];
        let config = Profile::default().log.log_config(shard, topic);
        assert_eq!(config.retention.ms, Some(5), "the topic's retention wins");
    }

    const LOW_LATENCY_PROFILE_TOML: &str = include_str!("../../tuning/low-latency.toml");
    const THROUGHPUT_PROFILE_TOML: &str = include_str!("../../tuning/throughput.toml");

    fn invalid_field(result: Result<impl fmt::Debug, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected ConfigError::Invalid, got {other:?}"),
        }
    }

    fn assert_invalid(result: Result<impl fmt::Debug, ConfigError>, expected_field: &str) {
        let error = match result {
            Err(error) => error,
            Ok(value) => panic!("expected {expected_field} to be rejected, got {value:?}"),
        };
        assert!(
            matches!(&error, ConfigError::Invalid { field, .. } if field == expected_field),
            "expected Invalid {{ field: {expected_field} }}, got: {error}"
        );
    }

    fn override_for(core: usize) -> ShardOverride {
        ShardOverride {
            core,
            ..ShardOverride::default()
        }
    }

    /// Tiny with an explicit core list, for rules that depend on the shard count.
    fn tiny_on(cores: &[usize]) -> Profile {
        let mut profile = Profile::tiny();
        profile.shards.cores = Cores::List(cores.to_vec());
        profile
    }

    // --- shipped profiles ---------------------------------------------------------------------

    #[test]
    fn shipped_profiles_parse_and_validate() {
        for (name, text) in [
            ("default.toml", DEFAULT_PROFILE_TOML),
            ("low-latency.toml", LOW_LATENCY_PROFILE_TOML),
            ("throughput.toml", THROUGHPUT_PROFILE_TOML),
            ("tiny.toml", TINY_PROFILE_TOML),
        ] {
            let profile = match Profile::parse(text, name) {
                Ok(profile) => profile,
                Err(error) => panic!("{error}"),
            };
            for allowed in [&[0][..], &[0, 1], &[0, 1, 2, 3, 4, 5, 6, 7]] {
                let shards = profile
                    .resolve(allowed)
                    .unwrap_or_else(|error| panic!("{name} on {allowed:?}: {error}"));
                assert_eq!(shards.len(), allowed.len(), "{name}");
            }
        }
    }

    #[test]
    fn spinning_with_dsync_is_cautioned_and_no_shipped_profile_does_it() {
        let shard = |spin, durability| ShardConfig {
            spin_before_park_us: spin,
            durability,
            ..Profile::default().resolve(&[0]).unwrap().remove(0)
        };
        assert!(shard(50_000, Durability::Dsync).caution().is_some());
        assert_eq!(shard(0, Durability::Dsync).caution(), None);
        assert_eq!(shard(50_000, Durability::Fdatasync).caution(), None);
        for (name, text) in [
            ("default.toml", DEFAULT_PROFILE_TOML),
            ("low-latency.toml", LOW_LATENCY_PROFILE_TOML),
            ("throughput.toml", THROUGHPUT_PROFILE_TOML),
            ("tiny.toml", TINY_PROFILE_TOML),
        ] {
            let shards = Profile::parse(text, name)
                .unwrap()
                .resolve(&[0, 1])
                .unwrap();
            for shard in shards {
                assert_eq!(shard.caution(), None, "{name}");
            }
        }
    }

    #[test]
    fn default_profile_is_loopback_on_all_cores_with_fdatasync_and_no_spin() {
        let profile = Profile::default();
        assert_eq!(profile.source_name(), "tuning/default.toml (embedded)");
        assert_eq!(profile.listen_ip().unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(profile.shards.cores, Cores::All);
        assert_eq!(profile.shards.durability, Durability::Fdatasync);
        assert_eq!(profile.shards.spin_before_park_us, 0);
        assert_eq!(profile.broker.data_dir, PathBuf::from("./ringmq-data"));
        assert!(profile.shard_overrides.is_empty());
    }

    #[test]
    fn tiny_profile_uses_the_smallest_segment_and_fits_default_memlock_on_two_shards() {
        let profile = Profile::tiny();
        assert_eq!(profile.log.segment_bytes, SEGMENT_BYTES_MIN);
        let shards = profile.resolve(&[0, 1]).unwrap();
        // 8 MiB is the usual non-root default; tests must not need more.
        let budget_bytes = memlock_budget_bytes(&shards);
        assert!(
            budget_bytes <= 8 << 20,
            "tiny pins {budget_bytes} bytes on two shards"
        );
        assert!(check_memlock_limit(MemlockLimit::Bytes(8 << 20), false, budget_bytes).is_ok());
    }

    #[test]
    fn low_latency_profile_spins_with_fdatasync() {
        let profile = Profile::parse(LOW_LATENCY_PROFILE_TOML, "low-latency.toml").unwrap();
        assert!(profile.shards.spin_before_park_us > 0);
        assert!(profile.shards.preempt_timer_us < Profile::default().shards.preempt_timer_us);
        // Not dsync: see ShardConfig::caution.
        assert_eq!(profile.shards.durability, Durability::Fdatasync);
        assert_eq!(profile.shards.group_commit_window_us, 0);
    }

    #[test]
    fn throughput_profile_batches_more_than_default() {
        let profile = Profile::parse(THROUGHPUT_PROFILE_TOML, "throughput.toml").unwrap();
        let default = Profile::default();
        assert!(profile.log.segment_bytes > default.log.segment_bytes);
        assert!(profile.shards.group_commit_window_us > default.shards.group_commit_window_us);
        // Writes are handed out at `write_bytes_max`: more pending than that is never seen, so
        // a larger `group_commit_bytes` would never skip the window.
        let pipeline = crate::log::WritePipeline::default();
        assert!(profile.shards.group_commit_bytes <= pipeline.write_bytes_max);
        // Each write in flight holds a tail buffer: those of a few busy partitions fit in the
        // registered memory.
        let per_partition = (pipeline.writes_in_flight as u64 + 1) * profile.log.write_buffer_bytes;
        assert!(profile.shards.io_memory_bytes >= 3 * per_partition);
    }

    // --- parse errors -------------------------------------------------------------------------

    #[test]
    fn unknown_field_is_rejected_with_its_name_line_and_column() {
        let text =
            DEFAULT_PROFILE_TOML.replacen("[shards]\n", "[shards]\nspin_before_park = 5\n", 1);
        assert_ne!(
            text, DEFAULT_PROFILE_TOML,
            "default.toml has a [shards] line"
        );
        let expected_line = text
            .lines()
            .position(|line| line.starts_with("spin_before_park ="))
            .unwrap()
            + 1;
        let error = Profile::parse(&text, "x.toml").unwrap_err();
        assert!(
            matches!(
                &error,
                ConfigError::Parse { source_name, line, column, message }
                    if source_name == "x.toml"
                        && *line == expected_line
                        && *column == 1
                        && message.contains("unknown field `spin_before_park`")
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("x.toml:{expected_line}:1: unknown field"))
        );
    }

    #[test]
    fn wrong_type_is_rejected_with_line_and_column() {
        let text = "[broker]\nhost = \"127.0.0.1\"\nport = \"9092\"\n";
        let error = Profile::parse(text, "x.toml").unwrap_err();
        assert!(
            matches!(
                &error,
                ConfigError::Parse { line: 3, column: 8, message, .. }
                    if message.contains("invalid type") && message.contains("u16")
            ),
            "{error:?}"
        );
    }

    #[test]
    fn out_of_range_integer_is_a_parse_error_at_the_value() {
        let text = DEFAULT_PROFILE_TOML.replacen("port = 9092", "port = 70000", 1);
        assert_ne!(text, DEFAULT_PROFILE_TOML);
        let error = Profile::parse(&text, "x.toml").unwrap_err();
        assert!(
            matches!(&error, ConfigError::Parse { line, message, .. }
                if *line > 0 && message.contains("70000")),
            "{error:?}"
        );
    }

    #[test]
    fn missing_field_is_rejected_by_name() {
        let text = DEFAULT_PROFILE_TOML.replacen("ring_depth = 128", "", 1);
        assert_ne!(text, DEFAULT_PROFILE_TOML);
        let error = Profile::parse(&text, "x.toml").unwrap_err();
        assert!(
            matches!(&error, ConfigError::Parse { message, .. }
                if message.contains("missing field `ring_depth`")),
            "{error:?}"
        );
    }

    #[test]
    fn cores_accepts_only_all_or_a_list() {
        for bad in ["\"every\"", "3", "[\"a\"]", "[-1]"] {
            let text =
                DEFAULT_PROFILE_TOML.replacen("cores = \"all\"", &format!("cores = {bad}"), 1);
            assert_ne!(text, DEFAULT_PROFILE_TOML);
            let error = Profile::parse(&text, "x.toml").unwrap_err();
            assert!(
                matches!(&error, ConfigError::Parse { line, .. } if *line > 0),
                "{bad}: {error:?}"
            );
        }
        let text = DEFAULT_PROFILE_TOML.replacen("cores = \"all\"", "cores = [1, 0]", 1);
        let profile = Profile::parse(&text, "x.toml").unwrap();
        assert_eq!(profile.shards.cores, Cores::List(vec![1, 0]));
    }

    #[test]
    fn bad_enum_value_is_a_parse_error() {
        let text = DEFAULT_PROFILE_TOML.replacen(
            "durability = \"fdatasync\"",
            "durability = \"fsync\"",
            1,
        );
        assert_ne!(text, DEFAULT_PROFILE_TOML);
        let error = Profile::parse(&text, "x.toml").unwrap_err();
        assert!(
            matches!(&error, ConfigError::Parse { message, .. } if message.contains("fsync")),
            "{error:?}"
        );
    }

    #[test]
    fn syntax_error_reports_position() {
        let error = Profile::parse("[broker\nport = 1\n", "x.toml").unwrap_err();
        assert!(
            matches!(&error, ConfigError::Parse { line: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\nçd\nx";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 2)); // after the two-byte 'ç'
        assert_eq!(line_column(text, text.len()), (3, 2));
    }

    // --- validation ---------------------------------------------------------------------------

    #[test]
    fn invalid_error_displays_as_one_line_with_file_field_and_value() {
        let mut profile = Profile::parse(DEFAULT_PROFILE_TOML, "tuning/x.toml").unwrap();
        profile.shards.ring_depth = 100;
        let error = profile.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "tuning/x.toml: shards.ring_depth: must be a power of two between 16 and 4096; got 100"
        );
    }

    #[test]
    fn validation_runs_during_parse() {
        let text = DEFAULT_PROFILE_TOML.replacen("ring_depth = 128", "ring_depth = 100", 1);
        assert_ne!(text, DEFAULT_PROFILE_TOML);
        assert_invalid(Profile::parse(&text, "x.toml"), "shards.ring_depth");
    }

    #[test]
    fn segment_bytes_must_be_block_multiple_within_bounds() {
        for bad in [
            SEGMENT_BYTES_MIN + 1,
            SEGMENT_BYTES_MIN - BLOCK_BYTES,
            SEGMENT_BYTES_MAX + BLOCK_BYTES,
        ] {
            let mut profile = Profile::default();
            profile.log.segment_bytes = bad;
            assert_invalid(profile.validate(), "log.segment_bytes");
        }
        let mut profile = Profile::tiny();
        profile.log.segment_bytes = SEGMENT_BYTES_MAX;
        assert!(profile.validate().is_ok());
    }

    #[test]
    fn write_buffer_bytes_must_hold_a_batch_and_fit_a_segment() {
        let mut profile = Profile::default();
        profile.log.write_buffer_bytes = WRITE_BUFFER_BYTES_MIN + 100;
        assert_invalid(profile.validate(), "log.write_buffer_bytes");
        profile.log.write_buffer_bytes = WRITE_BUFFER_BYTES_MIN - BLOCK_BYTES;
        assert_invalid(profile.validate(), "log.write_buffer_bytes");
        profile.log.write_buffer_bytes = WRITE_BUFFER_BYTES_MAX + BLOCK_BYTES;
        assert_invalid(profile.validate(), "log.write_buffer_bytes");

        let mut profile = Profile::tiny();
        profile.log.write_buffer_bytes = profile.log.segment_bytes + BLOCK_BYTES;
        assert_invalid(profile.validate(), "log.write_buffer_bytes");
    }

    #[test]
    fn index_interval_bytes_must_be_in_range() {
        for bad in [INDEX_INTERVAL_BYTES_MIN - 1, INDEX_INTERVAL_BYTES_MAX + 1] {
            let mut profile = Profile::default();
            profile.log.index_interval_bytes = bad;
            assert_invalid(profile.validate(), "log.index_interval_bytes");
        }
    }

    #[test]
    fn retention_must_be_positive_and_at_least_one_segment() {
        let mut profile = Profile::default();
        profile.log.retention_ms = Some(0);
        assert_invalid(profile.validate(), "log.retention_ms");

        let mut profile = Profile::default();
        profile.log.retention_bytes = Some(profile.log.segment_bytes - 1);
        assert_invalid(profile.validate(), "log.retention_bytes");
        profile.log.retention_bytes = Some(profile.log.segment_bytes);
        assert!(profile.validate().is_ok());
    }

    #[test]
    fn io_memory_bytes_must_be_block_multiple_within_bounds() {
        for bad in [
            IO_MEMORY_BYTES_MIN - BLOCK_BYTES,
            IO_MEMORY_BYTES_MAX + BLOCK_BYTES,
            10_000_000,
        ] {
            let mut profile = Profile::default();
            profile.shards.io_memory_bytes = bad;
            assert_invalid(profile.validate(), "shards.io_memory_bytes");
        }
        let mut profile = Profile::default();
        profile.shards.io_memory_bytes = 10_000;
        let error = profile.validate().unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("shards.io_memory_bytes: must be a multiple of 4096; got 10000"),
            "{error}"
        );
    }

    #[test]
    fn ring_depth_must_be_a_power_of_two_within_bounds() {
        for bad in [0, 100, RING_DEPTH_MIN / 2, RING_DEPTH_MAX * 2] {
            let mut profile = Profile::default();
            profile.shards.ring_depth = bad;
            assert_invalid(profile.validate(), "shards.ring_depth");
        }
        for good in [RING_DEPTH_MIN, RING_DEPTH_MAX] {
            let mut profile = Profile::default();
            profile.shards.ring_depth = good;
            assert!(profile.validate().is_ok());
        }
    }

    #[test]
    fn polling_and_preemption_times_must_be_within_bounds() {
        let mut profile = Profile::default();
        profile.shards.spin_before_park_us = SPIN_BEFORE_PARK_US_MAX + 1;
        assert_invalid(profile.validate(), "shards.spin_before_park_us");

        for bad in [PREEMPT_TIMER_US_MIN - 1, PREEMPT_TIMER_US_MAX + 1] {
            let mut profile = Profile::default();
            profile.shards.preempt_timer_us = bad;
            assert_invalid(profile.validate(), "shards.preempt_timer_us");
        }
    }

    #[test]
    fn group_commit_must_fit_the_window_and_the_write_buffer() {
        let mut profile = Profile::default();
        profile.shards.group_commit_window_us = GROUP_COMMIT_WINDOW_US_MAX + 1;
        assert_invalid(profile.validate(), "shards.group_commit_window_us");

        let mut profile = Profile::default();
        profile.shards.group_commit_bytes = profile.log.write_buffer_bytes + 1;
        assert_invalid(profile.validate(), "shards.group_commit_bytes");
        profile.shards.group_commit_bytes = GROUP_COMMIT_BYTES_MIN - 1;
        assert_invalid(profile.validate(), "shards.group_commit_bytes");
    }

    #[test]
    fn ports_must_be_non_zero() {
        let mut profile = Profile::default();
        profile.broker.port = 0;
        assert_invalid(profile.validate(), "broker.port");
        let mut profile = Profile::default();
        profile.broker.shard_port_base = 0;
        assert_invalid(profile.validate(), "broker.shard_port_base");
    }

    #[test]
    fn shard_ports_must_not_collide_with_the_shared_port() {
        let mut profile = tiny_on(&[0, 1, 2]);
        profile.broker.shard_port_base = 9100;
        profile.broker.port = 9102;
        assert_invalid(profile.validate(), "broker.port");
        profile.broker.port = 9103;
        assert!(profile.validate().is_ok());

        // With "all" the collision shows only once the core count is known.
        profile.shards.cores = Cores::All;
        assert!(profile.validate().is_ok());
        assert_invalid(profile.resolve(&[0, 1, 2, 3]), "broker.port");
    }

    #[test]
    fn shard_ports_must_fit_in_u16() {
        let mut profile = tiny_on(&[0, 1, 2]);
        profile.broker.port = 9092;
        profile.broker.shard_port_base = u16::MAX - 1;
        assert_invalid(profile.validate(), "broker.shard_port_base");
        profile.broker.shard_port_base = u16::MAX - 2;
        assert!(profile.validate().is_ok());
    }

    #[test]
    fn data_dir_must_not_be_empty() {
        let mut profile = Profile::default();
        profile.broker.data_dir = PathBuf::new();
        assert_invalid(profile.validate(), "broker.data_dir");

        let mut profile = tiny_on(&[0, 1]);
        profile.shard_overrides.push(ShardOverride {
            data_dir: Some(PathBuf::new()),
            ..override_for(1)
        });
        assert_invalid(profile.validate(), "shard[core=1].data_dir");
    }

    #[test]
    fn host_must_be_an_ip_address() {
        for bad in ["localhost", "", "127.0.0.1:9092"] {
            let mut profile = Profile::default();
            profile.broker.host = bad.to_owned();
            assert_invalid(profile.validate(), "broker.host");
        }
        let mut profile = Profile::default();
        profile.broker.host = "::1".to_owned();
        assert!(profile.validate().is_ok());
    }

    #[test]
    fn connection_limits_must_be_within_bounds() {
        let mut profile = Profile::default();
        profile.broker.max_connections_per_shard = 0;
        assert_invalid(profile.validate(), "broker.max_connections_per_shard");
        profile.broker.max_connections_per_shard = CONNECTIONS_PER_SHARD_MAX + 1;
        assert_invalid(profile.validate(), "broker.max_connections_per_shard");

        let mut profile = Profile::default();
        profile.broker.connection_buffer_bytes = CONNECTION_BUFFER_BYTES_MIN - 1;
        assert_invalid(profile.validate(), "broker.connection_buffer_bytes");
        profile.broker.connection_buffer_bytes = CONNECTION_BUFFER_BYTES_MAX + 1;
        assert_invalid(profile.validate(), "broker.connection_buffer_bytes");

        // Each alone is fine; together they would let idle connections take 64 GiB.
        let mut profile = Profile::default();
        profile.broker.max_connections_per_shard = CONNECTIONS_PER_SHARD_MAX;
        profile.broker.connection_buffer_bytes = CONNECTION_BUFFER_BYTES_MAX;
        assert_invalid(profile.validate(), "broker.connection_buffer_bytes");
    }

    #[test]
    fn timeouts_must_be_in_range_and_frame_read_within_idle() {
        let mut profile = Profile::default();
        profile.broker.idle_timeout_ms = IDLE_TIMEOUT_MS_MIN - 1;
        assert_invalid(profile.validate(), "broker.idle_timeout_ms");

        let mut profile = Profile::default();
        profile.broker.frame_read_timeout_ms = FRAME_READ_TIMEOUT_MS_MIN - 1;
        assert_invalid(profile.validate(), "broker.frame_read_timeout_ms");

        let mut profile = Profile::default();
        profile.broker.frame_read_timeout_ms = profile.broker.idle_timeout_ms + 1;
        assert_invalid(profile.validate(), "broker.frame_read_timeout_ms");
    }

    #[test]
    fn replication_lag_bounds_must_be_in_range_and_are_required() {
        for (time, bytes, field) in [
            (
                LAG_TIME_MS_MIN - 1,
                LAG_BYTES_MIN,
                "replication.lag_time_ms",
            ),
            (
                LAG_TIME_MS_MAX + 1,
                LAG_BYTES_MIN,
                "replication.lag_time_ms",
            ),
            (LAG_TIME_MS_MIN, LAG_BYTES_MIN - 1, "replication.lag_bytes"),
            (LAG_TIME_MS_MIN, LAG_BYTES_MAX + 1, "replication.lag_bytes"),
        ] {
            let profile = Profile {
                replication: ReplicationSection {
                    lag_time_ms: time,
                    lag_bytes: bytes,
                },
                ..Profile::default()
            };
            assert_invalid(profile.validate(), field);
        }
        let without = DEFAULT_PROFILE_TOML.replacen("lag_time_ms = 2000\n", "", 1);
        assert_ne!(
            without, DEFAULT_PROFILE_TOML,
            "setup: the key is in default.toml"
        );
        let error = Profile::parse(&without, "x.toml").unwrap_err().to_string();
        assert!(error.contains("lag_time_ms"), "{error}");
    }

    #[test]
    fn core_list_must_be_non_empty_unique_and_bounded() {
        assert_invalid(tiny_on(&[]).validate(), "shards.cores");
        assert_invalid(tiny_on(&[0, 1, 0]).validate(), "shards.cores");
        let too_many: Vec<usize> = (0..=SHARDS_MAX).collect();
        assert_invalid(tiny_on(&too_many).validate(), "shards.cores");
    }

    #[test]
    fn override_knobs_are_checked_under_their_own_path() {
        let mut profile = tiny_on(&[0, 1]);
        profile.shard_overrides.push(ShardOverride {
            ring_depth: Some(100),
            ..override_for(1)
        });
        assert_invalid(profile.validate(), "shard[core=1].ring_depth");

        type SetKnob = fn(&mut ShardOverride);
        let cases: [(&str, SetKnob); 5] = [
            ("io_memory_bytes", |o| o.io_memory_bytes = Some(1)),
            ("spin_before_park_us", |o| {
                o.spin_before_park_us = Some(SPIN_BEFORE_PARK_US_MAX + 1)
            }),
            ("preempt_timer_us", |o| o.preempt_timer_us = Some(0)),
            ("group_commit_window_us", |o| {
                o.group_commit_window_us = Some(GROUP_COMMIT_WINDOW_US_MAX + 1)
            }),
            ("group_commit_bytes", |o| o.group_commit_bytes = Some(0)),
        ];
        for (knob, set) in cases {
            let mut profile = tiny_on(&[0, 1]);
            let mut shard_override = override_for(0);
            set(&mut shard_override);
            profile.shard_overrides.push(shard_override);
            assert_invalid(profile.validate(), &format!("shard[core=0].{knob}"));
        }
    }

    #[test]
    fn override_sections_must_be_unique_and_for_a_listed_core() {
        let mut profile = tiny_on(&[0, 1]);
        profile.shard_overrides.push(override_for(1));
        profile.shard_overrides.push(override_for(1));
        assert_invalid(profile.validate(), "shard[core=1].core");

        let mut profile = tiny_on(&[0, 1]);
        profile.shard_overrides.push(override_for(5));
        assert_invalid(profile.validate(), "shard[core=5].core");
    }

    #[test]
    fn override_sections_parse_from_toml() {
        let text = format!(
            "{DEFAULT_PROFILE_TOML}\n[[shard]]\ncore = 1\ndata_dir = \"/mnt/disk2/ringmq\"\n\
             spin_before_park_us = 50\ndurability = \"dsync\"\n"
        );
        let profile = Profile::parse(&text, "x.toml").unwrap();
        assert_eq!(
            profile.shard_overrides,
            vec![ShardOverride {
                data_dir: Some(PathBuf::from("/mnt/disk2/ringmq")),
                spin_before_park_us: Some(50),
                durability: Some(Durability::Dsync),
                ..override_for(1)
            }]
        );
        let bad = format!("{text}typo = 1\n");
        assert!(matches!(
            Profile::parse(&bad, "x.toml"),
            Err(ConfigError::Parse { .. })
        ));
    }

    // --- resolve ------------------------------------------------------------------------------

    #[test]
    fn all_cores_expand_to_the_allowed_list_in_order() {
        let shards = Profile::tiny().resolve(&[3, 1, 2]).unwrap();
        let cores: Vec<usize> = shards.iter().map(|shard| shard.core).collect();
        let indexes: Vec<u16> = shards.iter().map(|shard| shard.index).collect();
        assert_eq!(cores, [3, 1, 2]);
        assert_eq!(indexes, [0, 1, 2]);
    }

    #[test]
    fn all_cores_with_nothing_allowed_is_rejected() {
        assert_invalid(Profile::tiny().resolve(&[]), "shards.cores");
    }

    #[test]
    fn all_cores_beyond_shards_max_is_rejected() {
        let allowed: Vec<usize> = (0..=SHARDS_MAX).collect();
        assert_invalid(Profile::tiny().resolve(&allowed), "shards.cores");
    }

    #[test]
    fn core_outside_the_allowed_list_is_rejected_with_the_list() {
        let error = tiny_on(&[0, 7]).resolve(&[0, 1]).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { field, reason, .. }
                if field == "shards.cores" && reason.contains("core 7") && reason.contains("[0, 1]")),
            "{error}"
        );
    }

    #[test]
    fn duplicate_cores_are_rejected_by_resolve() {
        // "all" passes `validate`; a duplicate in the allowed list reaches resolve's own check.
        assert_invalid(Profile::tiny().resolve(&[1, 1]), "shards.cores");
        assert_invalid(tiny_on(&[1, 1]).resolve(&[0, 1]), "shards.cores");
    }

    #[test]
    fn override_for_a_core_without_a_shard_is_rejected() {
        let mut profile = Profile::tiny();
        profile.shard_overrides.push(override_for(9));
        // With "all" validate cannot know; resolve can.
        assert!(profile.validate().is_ok());
        let error = profile.resolve(&[0, 1]).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { field, reason, .. }
                if field == "shard[core=9].core" && reason.contains("[0, 1]")),
            "{error}"
        );
    }

    #[test]
    fn per_core_override_wins_over_shard_defaults() {
        let mut profile = tiny_on(&[0, 1]);
        profile.shard_overrides.push(ShardOverride {
            data_dir: Some(PathBuf::from("/mnt/disk2/ringmq")),
            io_memory_bytes: Some(2 << 20),
            ring_depth: Some(256),
            spin_before_park_us: Some(50),
            preempt_timer_us: Some(500),
            durability: Some(Durability::Dsync),
            group_commit_window_us: Some(20),
            group_commit_bytes: Some(8192),
            ..override_for(1)
        });
        let shards = profile.resolve(&[0, 1]).unwrap();
        let defaults = &profile.shards;
        let untouched = &shards[0];
        assert_eq!(untouched.core, 0);
        assert_eq!(untouched.io_memory_bytes, defaults.io_memory_bytes);
        assert_eq!(untouched.ring_depth, defaults.ring_depth);
        assert_eq!(untouched.spin_before_park_us, defaults.spin_before_park_us);
        assert_eq!(untouched.durability, defaults.durability);

        let expected = ShardConfig {
            index: 1,
            core: 1,
            data_dir: PathBuf::from("/mnt/disk2/ringmq"),
            io_memory_bytes: 2 << 20,
            ring_depth: 256,
            spin_before_park_us: 50,
            preempt_timer_us: 500,
            durability: Durability::Dsync,
            group_commit_window_us: 20,
            group_commit_bytes: 8192,
            port: profile.broker.shard_port_base + 1,
        };
        assert_eq!(shards[1], expected);
        assert_ne!(
            defaults.spin_before_park_us, 50,
            "the override must differ to prove anything"
        );
    }

    #[test]
    fn data_dir_defaults_to_a_shard_directory_under_broker_data_dir() {
        let mut profile = tiny_on(&[4, 2]);
        profile.broker.data_dir = PathBuf::from("/srv/ringmq");
        let shards = profile.resolve(&[2, 4]).unwrap();
        assert_eq!(shards[0].data_dir, PathBuf::from("/srv/ringmq/shard-0"));
        assert_eq!(shards[1].data_dir, PathBuf::from("/srv/ringmq/shard-1"));
    }

    #[test]
    fn shard_ports_are_the_base_plus_the_index() {
        let mut profile = Profile::tiny();
        profile.broker.port = 9092;
        profile.broker.shard_port_base = 9100;
        let ports: Vec<u16> = profile
            .resolve(&[0, 1, 2])
            .unwrap()
            .iter()
            .map(|shard| shard.port)
            .collect();
        assert_eq!(ports, [9100, 9101, 9102]);
    }

    #[test]
    fn shards_sharing_or_nesting_a_data_dir_are_rejected() {
        let mut profile = tiny_on(&[0, 1]);
        profile.broker.data_dir = PathBuf::from("/srv/ringmq");
        profile.shard_overrides.push(ShardOverride {
            data_dir: Some(PathBuf::from("/srv/ringmq/shard-0")),
            ..override_for(1)
        });
        assert_invalid(profile.resolve(&[0, 1]), "shard[core=1].data_dir");

        let mut profile = tiny_on(&[0, 1]);
        profile.broker.data_dir = PathBuf::from("/srv/ringmq");
        profile.shard_overrides.push(ShardOverride {
            data_dir: Some(PathBuf::from("/srv")),
            ..override_for(1)
        });
        assert_invalid(profile.resolve(&[0, 1]), "shard[core=1].data_dir");
    }

    #[test]
    fn resolve_revalidates_fields_changed_after_parse() {
        let mut profile = Profile::tiny();
        profile.shards.io_memory_bytes = 0;
        assert_eq!(
            invalid_field(profile.resolve(&[0])),
            "shards.io_memory_bytes"
        );
    }

    #[test]
    fn allowed_cores_lists_cpus_of_this_process() {
        let cores = allowed_cores();
        assert!(!cores.is_empty());
        assert!(cores.windows(2).all(|pair| pair[0] < pair[1]), "{cores:?}");
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            TINY_PROFILE_TOML.replacen("ring_depth = 32", "ring_depth = 33", 1),
        )
        .unwrap();
        let error = Profile::load(&path).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { source_name, field, .. }
                if *source_name == path.display().to_string() && field == "shards.ring_depth"),
            "{error}"
        );
        std::fs::write(&path, TINY_PROFILE_TOML).unwrap();
        assert_eq!(Profile::load(&path).unwrap().shards, Profile::tiny().shards);

        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            Profile::load(&missing),
            Err(ConfigError::Read { .. })
        ));

        let huge = dir.path().join("huge.toml");
        std::fs::write(&huge, "#".repeat(PROFILE_BYTES_MAX as usize + 1)).unwrap();
        assert!(matches!(
            Profile::load(&huge),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    // --- memlock ------------------------------------------------------------------------------

    const LIMITS_8_MIB: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max stack size            8388608              unlimited            bytes     
Max locked memory         8388608              16777216             bytes     
Max address space         unlimited            unlimited            bytes     
";

    #[test]
    fn memlock_limit_parses_the_soft_limit() {
        assert_eq!(
            parse_memlock_limit(LIMITS_8_MIB),
            Some(MemlockLimit::Bytes(8 << 20))
        );
        let unlimited = LIMITS_8_MIB.replace(
            "Max locked memory         8388608              16777216",
            "Max locked memory         unlimited            unlimited",
        );
        assert_ne!(unlimited, LIMITS_8_MIB);
        assert_eq!(
            parse_memlock_limit(&unlimited),
            Some(MemlockLimit::Unlimited)
        );
        assert_eq!(parse_memlock_limit("Max stack size 1 1 bytes\n"), None);
        assert_eq!(
            parse_memlock_limit("Max locked memory  lots  lots bytes\n"),
            None
        );
    }

    #[test]
    fn cap_ipc_lock_is_bit_14_of_cap_eff() {
        let status = |cap_eff: &str| {
            format!("Name:\tringmq\nCapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\n")
        };
        assert_eq!(parse_cap_ipc_lock(&status("000001fffeffffff")), Some(true));
        assert_eq!(parse_cap_ipc_lock(&status("0000000000004000")), Some(true));
        assert_eq!(parse_cap_ipc_lock(&status("0000000000000000")), Some(false));
        assert_eq!(parse_cap_ipc_lock(&status("ffffffffffffbfff")), Some(false));
        assert_eq!(parse_cap_ipc_lock("Name:\tringmq\n"), None);
    }

    #[test]
    fn memlock_budget_is_three_times_io_memory_per_shard() {
        let mut profile = tiny_on(&[0, 1]);
        profile.shards.io_memory_bytes = 2 << 20;
        profile.shard_overrides.push(ShardOverride {
            io_memory_bytes: Some(10 << 20),
            ..override_for(1)
        });
        let shards = profile.resolve(&[0, 1]).unwrap();
        assert_eq!(
            memlock_budget_bytes(&shards),
            3 * (2 << 20) + 3 * (10 << 20)
        );
        assert_eq!(memlock_budget_bytes(&[]), 0);
    }

    #[test]
    fn memlock_check_fails_only_without_room_and_without_cap_ipc_lock() {
        let budget_bytes = 60 << 20;
        let eight_mib = MemlockLimit::Bytes(8 << 20);
        assert!(check_memlock_limit(MemlockLimit::Unlimited, false, budget_bytes).is_ok());
        assert!(
            check_memlock_limit(MemlockLimit::Bytes(budget_bytes), false, budget_bytes).is_ok()
        );
        assert!(check_memlock_limit(eight_mib, true, budget_bytes).is_ok());

        let error = check_memlock_limit(eight_mib, false, budget_bytes).unwrap_err();
        assert!(
            matches!(error, MemlockError::TooLow { limit_bytes, budget_bytes: 62_914_560 }
                if limit_bytes == 8 << 20),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("raise `ulimit -l` to at least 61440 KiB"),
            "{message}"
        );
        assert!(message.contains("grant CAP_IPC_LOCK"), "{message}");
        assert!(
            message.contains("lower shards.io_memory_bytes"),
            "{message}"
        );
    }

    #[test]
    fn memlock_below_glommio_floor_fails_even_with_cap_ipc_lock() {
        let error = check_memlock_limit(MemlockLimit::Bytes(256 << 10), true, 0).unwrap_err();
        assert!(
            matches!(
                error,
                MemlockError::BelowGlommioFloor {
                    limit_bytes: 262_144
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn memlock_check_reads_this_process() {
        // Whatever this machine allows, an empty budget fits unless the limit is below
        // glommio's floor, and the files must be readable on Linux.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let limit = parse_memlock_limit(&limits).unwrap();
        let result = check_memlock(0);
        match limit {
            MemlockLimit::Bytes(bytes) if bytes < GLOMMIO_MEMLOCK_FLOOR_BYTES => {
                assert!(matches!(
                    result,
                    Err(MemlockError::BelowGlommioFloor { .. })
                ));
            }
            _ => assert!(result.is_ok(), "{result:?}"),
        }
    }
}
