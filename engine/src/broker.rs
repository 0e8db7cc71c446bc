//! The top of the house: checks the machine, starts one pinned executor per configured core,
//! and wires the shards' mailboxes, listeners, catalogue and partitions together.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use ahash::AHashMap;
use glommio::{LocalExecutorBuilder, Placement};
use protocol::StorageKind;
use protocol::api::ShardAddress;

use crate::config::{Profile, ShardConfig, allowed_cores};
use crate::control::catalog::{Catalog, CatalogError};
use crate::log::epochs::EpochCache;
use crate::log::storage::DmaStorage;
use crate::log::{Log, Retention};
use crate::preflight;
use crate::replication::state::LagBounds;
use crate::server::messages::{Control, ShardMessage};
use crate::server::{BrokerSettings, ShardInit};
use crate::shard::mailbox::{self, MAILBOX_SLOTS, Sender};
use crate::shard::router::ShardId;

/// Longest a shard may take to open its partitions and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start a broker beyond its profile.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Replaces `broker.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Replaces `broker.port`. `Some(0)` picks free ports for the shared and every shard
    /// port (tests run many brokers side by side this way).
    pub port: Option<u16>,
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "{dir} holds partition data but {catalog} is missing; refusing to start with an empty \
         catalogue (restore the file, or move the data away)"
    )]
    CatalogMissing { dir: String, catalog: String },
    #[error("starting shard {shard}: {reason}")]
    Shard { shard: u16, reason: String },
}

/// A running broker. Dropping it does not stop it: call `shutdown`.
pub struct BrokerHandle {
    /// The shared address (every shard accepts on it).
    pub address: SocketAddr,
    /// Each shard's own address, for shard-aware clients.
    pub shards: Vec<ShardAddress>,
    controls: Vec<Sender<Control>>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    _locks: Vec<std::fs::File>,
}

impl BrokerHandle {
    /// Graceful stop: every shard stops accepting, finishes in-flight requests (bounded),
    /// commits and syncs every log and closes. Returns when all executors ended.
    pub fn shutdown(self) -> Result<(), String> {
        for control in &self.controls {
            let _ = control.try_send(Control::Shutdown);
        }
        self.wait()
    }

    /// Waits for the shards to end (after `shutdown`, or a shard's own failure).
    pub fn wait(self) -> Result<(), String> {
        let mut errors = Vec::new();
        for (index, executor) in self.executors.into_iter().enumerate() {
            if let Err(error) = executor.join() {
                errors.push(format!("shard {index}: {error}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Starts a broker: preflight checks, catalogue, mailboxes, one executor per shard.
/// Returns once every shard listens and has opened its partitions.
pub fn start(mut profile: Profile, options: BrokerOptions) -> Result<BrokerHandle, StartError> {
    if let Some(dir) = &options.data_dir {
        profile.broker.data_dir = dir.clone();
    }
    let host: IpAddr = profile.listen_ip()?;
    let ephemeral = options.port == Some(0);
    if let Some(port) = options.port.filter(|p| *p != 0) {
        profile.broker.port = port;
        profile.broker.shard_port_base = port.saturating_add(1);
    }
    let mut shard_configs = profile.resolve(&allowed_cores())?;
    // Absolute data directories: glommio opens directories without resolving relative paths.
    for shard in &mut shard_configs {
        shard.data_dir = std::path::absolute(&shard.data_dir).map_err(|error| {
            preflight::PreflightError::DataDir {
                dir: shard.data_dir.display().to_string(),
                error,
            }
        })?;
    }
    for shard in &shard_configs {
        if let Some(caution) = shard.caution() {
            tracing::warn!(shard = shard.index, core = shard.core, "{caution}");
        }
    }
    let idle = preflight::IdlePolicy::read();
    if let Some(advice) = idle.advice() {
        tracing::warn!(idle = %idle, "{advice}");
    }
    preflight::check_memory_lock(&shard_configs)?;
    preflight::check_io_uring()?;
    let locks = shard_configs
        .iter()
        .map(|shard| preflight::lock_data_dir(&shard.data_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut disks: Vec<preflight::DiskQueue> = Vec::new();
    for shard in &shard_configs {
        if let Some(queue) = preflight::DiskQueue::of(&shard.data_dir)
            && !disks.contains(&queue)
        {
            if let Some(advice) = queue.advice() {
                tracing::warn!(data_dir = %shard.data_dir.display(), "{advice}");
            }
            disks.push(queue);
        }
    }

    // Ports: reserved ones in ephemeral mode, checked free otherwise.
    let mut reservations = Vec::new();
    let shared_port = if ephemeral {
        let (socket, port) = preflight::reserve_port(host).map_err(port_error(host))?;
        reservations.push(socket);
        for shard in &mut shard_configs {
            let (socket, port) = preflight::reserve_port(host).map_err(port_error(host))?;
            reservations.push(socket);
            shard.port = port;
        }
        port
    } else {
        preflight::check_port_free(host, profile.broker.port)?;
        for shard in &shard_configs {
            preflight::check_port_free(host, shard.port)?;
        }
        profile.broker.port
    };

    let catalog_dir = shard_configs
        .first()
        .map(|s| s.data_dir.clone())
        .unwrap_or_default();
    let catalog = match Catalog::load(&catalog_dir)? {
        Some(catalog) => {
            // Each replicated partition is led by its most advanced replica (one that lost
            // its unsynced tail must not truncate away what another kept), and every leader
            // term gets a new epoch, a restart included: durably, before any replica
            // applies it.
            let positions = replica_positions(&catalog, &shard_configs, &profile)?;
            let chosen = catalog.with_leaders_chosen(|topic, partition, shard| {
                positions
                    .get(&(topic.to_string(), partition, shard))
                    .copied()
            });
            for (before, after) in catalog.topics().iter().zip(chosen.topics()) {
                for (index, (b, a)) in before.partitions.iter().zip(&after.partitions).enumerate() {
                    if b.replicas.first() != a.replicas.first() {
                        tracing::warn!(topic = %before.name, partition = index, from = ?b.replicas.first(),
                            to = ?a.replicas.first(), "at start-up, leadership moves to the most advanced replica");
                    }
                }
            }
            let restarted = chosen.for_restart()?;
            restarted.persist_blocking(&catalog_dir)?;
            restarted
        }
        None => {
            refuse_orphan_data(&shard_configs, &catalog_dir)?;
            Catalog::default()
        }
    };

    let shards = shard_configs.len();
    let addresses: Vec<ShardAddress> = shard_configs
        .iter()
        .map(|s| ShardAddress {
            shard: s.index,
            host: host.to_string(),
            port: s.port,
        })
        .collect();
    let settings = BrokerSettings {
        host,
        shared_port,
        max_connections_per_shard: profile.broker.max_connections_per_shard as usize,
        idle_timeout: Duration::from_millis(profile.broker.idle_timeout_ms),
        frame_read_timeout: Duration::from_millis(profile.broker.frame_read_timeout_ms),
        connection_buffer_bytes: profile.broker.connection_buffer_bytes as usize,
        lag_bounds: LagBounds {
            time_us: profile.replication.lag_time_ms.saturating_mul(1000),
            bytes: profile.replication.lag_bytes,
        },
    };

    // A full mesh of bounded single-producer single-consumer mailboxes.
    let mut outboxes: Vec<Vec<Option<Sender<ShardMessage>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut inboxes: Vec<Vec<Option<mailbox::Receiver<ShardMessage>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    for from in 0..shards {
        for to in (0..shards).filter(|to| *to != from) {
            let (sender, receiver) = mailbox::channel(MAILBOX_SLOTS);
            if let Some(slot) = outboxes.get_mut(from).and_then(|row| row.get_mut(to)) {
                *slot = Some(sender);
            }
            if let Some(slot) = inboxes.get_mut(to).and_then(|row| row.get_mut(from)) {
                *slot = Some(receiver);
            }
        }
    }

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut controls = Vec::new();
    let mut executors = Vec::new();
    for ((config, outbox), inbox) in shard_configs.into_iter().zip(outboxes).zip(inboxes) {
        let (control_tx, control_rx) = mailbox::channel(4);
        controls.push(control_tx);
        let init = ShardInit {
            id: ShardId(config.index),
            shards: shards as u16,
            catalog_dir: (config.index == 0).then(|| catalog_dir.clone()),
            config: config.clone(),
            log: profile.log.clone(),
            settings: settings.clone(),
            addresses: addresses.clone(),
            catalog: catalog.clone(),
            outboxes: outbox,
            inboxes: inbox,
            control: control_rx,
            ready: ready_tx.clone(),
        };
        let spawned = executor_builder(&config).spawn(move || crate::server::run(init));
        match spawned {
            Ok(executor) => executors.push(executor),
            Err(error) => {
                stop(&controls, executors);
                return Err(StartError::Shard {
                    shard: config.index,
                    reason: error.to_string(),
                });
            }
        }
    }
    drop(ready_tx);
    for _ in 0..shards {
        let outcome = ready_rx.recv_timeout(START_TIMEOUT);
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(reason)) => reason,
            Err(_) => "a shard neither started nor reported an error".to_string(),
        };
        stop(&controls, executors);
        return Err(StartError::Shard {
            shard: 0,
            reason: failure,
        });
    }
    drop(reservations); // the shards listen on those ports now
    Ok(BrokerHandle {
        address: SocketAddr::new(host, shared_port),
        shards: addresses,
        controls,
        executors,
        _locks: locks,
    })
}

/// `(topic, partition, shard)` -> `(epoch of its last record, log end)`.
type ReplicaPositions = AHashMap<(String, u32, u16), (u32, u64)>;

/// Where each replica of a replicated partition stands: `(epoch of its last record, log
/// end)`, read by opening its log (recovering it, as its shard then does again) on a
/// temporary executor. A replica without a directory stands at `(0, 0)`, as does every
/// replica of a memory topic (a restart empties it); one whose log does not open is no
/// candidate (its shard reports the error).
fn replica_positions(
    catalog: &Catalog,
    shard_configs: &[ShardConfig],
    profile: &Profile,
) -> Result<ReplicaPositions, StartError> {
    let mut jobs = Vec::new();
    let mut positions = ReplicaPositions::default();
    for topic in catalog.topics() {
        let retention = Retention {
            ms: topic.retention_ms,
            bytes: topic.retention_bytes,
        };
        for (index, placement) in topic.partitions.iter().enumerate() {
            if placement.replicas.len() < 2 {
                continue;
            }
            for &shard in &placement.replicas {
                let key = (topic.name.clone(), index as u32, shard);
                if topic.storage == StorageKind::Memory {
                    positions.insert(key, (0, 0));
                    continue;
                }
                let Some(config) = shard_configs.iter().find(|c| c.index == shard) else {
                    continue;
                };
                let dir = config.data_dir.join(format!("{}-{index}", topic.name));
                let log_config = profile.log.log_config(config, retention);
                jobs.push((key, dir, log_config));
            }
        }
    }
    if jobs.is_empty() {
        return Ok(positions);
    }
    let io_memory = shard_configs
        .first()
        .map_or(1 << 20, |c| c.io_memory_bytes as usize);
    let joined = LocalExecutorBuilder::new(Placement::Unbound)
        .name("replica-positions")
        .io_memory(io_memory)
        .spawn(move || async move {
            for (key, dir, config) in jobs {
                if !dir.exists() {
                    positions.insert(key, (0, 0));
                    continue;
                }
                let Ok((log, _)) = Log::open(DmaStorage, &dir, config).await else {
                    continue;
                };
                let end = log.offsets().next;
                let epochs = EpochCache::load(&DmaStorage, &dir).await;
                let _ = log.close().await;
                if let Ok(mut epochs) = epochs {
                    epochs.clamp(end);
                    positions.insert(key, (epochs.last_epoch().unwrap_or(0), end));
                }
            }
            positions
        })
        .map_err(|error| StartError::Shard {
            shard: 0,
            reason: format!("reading replica positions: {error}"),
        })?
        .join();
    joined.map_err(|error| StartError::Shard {
        shard: 0,
        reason: format!("reading replica positions: {error:?}"),
    })
}

fn port_error(host: IpAddr) -> impl Fn(std::io::Error) -> StartError {
    move |error| {
        StartError::Preflight(preflight::PreflightError::PortInUse {
            addr: SocketAddr::new(host, 0),
            error,
        })
    }
}

fn executor_builder(config: &ShardConfig) -> LocalExecutorBuilder {
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(config.core))
        .name(&format!("shard-{}", config.index))
        .io_memory(config.io_memory_bytes as usize)
        .ring_depth(config.ring_depth as usize)
        .preempt_timer(Duration::from_micros(config.preempt_timer_us));
    if config.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
    }
    builder
}

fn stop(controls: &[Sender<Control>], executors: Vec<glommio::ExecutorJoinHandle<()>>) {
    for control in controls {
        let _ = control.try_send(Control::Shutdown);
    }
    for executor in executors {
        let _ = executor.join();
    }
}

/// Without a catalogue, partition directories in any shard's data directory mean the
/// catalogue was lost, not that the broker is new.
fn refuse_orphan_data(
    shards: &[ShardConfig],
    catalog_dir: &std::path::Path,
) -> Result<(), StartError> {
    for shard in shards {
        let Ok(entries) = std::fs::read_dir(&shard.data_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let holds_log = std::fs::read_dir(entry.path())
                .map(|inner| {
                    inner
                        .flatten()
                        .any(|f| f.file_name().to_string_lossy().ends_with(".log"))
                })
                .unwrap_or(false);
            if holds_log {
                return Err(StartError::CatalogMissing {
                    dir: shard.data_dir.display().to_string(),
                    catalog: catalog_dir
                        .join(crate::control::catalog::CATALOG_FILE)
                        .display()
                        .to_string(),
                });
            }
        }
    }
    Ok(())
}
