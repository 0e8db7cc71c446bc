//! The per-shard server: one `Shard` per executor owns its listeners, connections, partition
//! replicas and mailboxes. `run` is the body of a shard's executor.

pub mod connection;
pub mod dispatch;
pub mod messages;
pub mod replicas;
pub mod subscription;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use glommio::{Latency, Shares, TaskQueueHandle};
use protocol::api::ShardAddress;

use crate::config::{LogSection, ShardConfig};
use crate::control::catalog::Catalog;
use crate::limits::{IO_STALL_WARN, MAINTENANCE_INTERVAL, SHUTDOWN_DRAIN_MAX};
use crate::log::Log;
use crate::log::memory::MemStorage;
use crate::log::notify::Notify;
use crate::log::storage::ShardStorage;
use crate::replication::state::LagBounds;
use crate::replication::{Follower, Leader, ReplicaKey};
use crate::shard::mailbox::{Receiver, Sender};
use crate::shard::router::{Replies, ShardId};
use messages::{Control, ShardMessage};

/// Broker-wide settings every shard needs.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub host: IpAddr,
    pub shared_port: u16,
    pub max_connections_per_shard: usize,
    pub idle_timeout: Duration,
    pub frame_read_timeout: Duration,
    pub connection_buffer_bytes: usize,
    /// When a follower leaves the in-sync set (`[replication]`).
    pub lag_bounds: LagBounds,
}

/// Everything a shard's executor starts from. Built on the main thread, moved to the shard.
pub struct ShardInit {
    pub id: ShardId,
    pub shards: u16,
    pub config: ShardConfig,
    pub log: LogSection,
    pub settings: BrokerSettings,
    pub addresses: Vec<ShardAddress>,
    pub catalog: Catalog,
    /// Shard 0: where the catalogue is persisted.
    pub catalog_dir: Option<PathBuf>,
    /// Indexed by target shard; `None` at this shard's own index.
    pub outboxes: Vec<Option<Sender<ShardMessage>>>,
    /// Indexed by source shard; `None` at this shard's own index.
    pub inboxes: Vec<Option<Receiver<ShardMessage>>>,
    pub control: Receiver<Control>,
    /// Reports start-up success or the reason for failure to the main thread.
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// Counters of one shard. Plain integers: only this shard writes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub frames_rejected: u64,
    pub requests: u64,
    pub requests_forwarded: u64,
}

/// Replicas of one role on a shard: topic name -> partition index -> replica. Looked up by
/// a borrowed name for every request and replication message.
pub(crate) struct Replicas<T> {
    by_topic: AHashMap<String, AHashMap<u32, Rc<T>>>,
}

impl<T> Default for Replicas<T> {
    fn default() -> Self {
        Replicas {
            by_topic: AHashMap::new(),
        }
    }
}

impl<T> Replicas<T> {
    pub(crate) fn get(&self, topic: &str, index: u32) -> Option<Rc<T>> {
        self.by_topic.get(topic)?.get(&index).cloned()
    }

    pub(crate) fn insert(&mut self, topic: &str, index: u32, replica: Rc<T>) {
        self.by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(index, replica);
    }

    pub(crate) fn remove(&mut self, topic: &str, index: u32) -> Option<Rc<T>> {
        let partitions = self.by_topic.get_mut(topic)?;
        let removed = partitions.remove(&index);
        if partitions.is_empty() {
            self.by_topic.remove(topic);
        }
        removed
    }

    pub(crate) fn all(&self) -> Vec<Rc<T>> {
        self.by_topic
            .values()
            .flat_map(|p| p.values().cloned())
            .collect()
    }
}

/// A replica on this shard in either role, for the upkeep every replica gets alike
/// (maintenance, close at shutdown, removal with its topic).
enum Replica {
    Leader(Rc<Leader<ShardStorage>>),
    Follower(Rc<Follower<ShardStorage>>),
}

impl Replica {
    fn key(&self) -> &ReplicaKey {
        match self {
            Replica::Leader(leader) => &leader.key,
            Replica::Follower(follower) => &follower.key,
        }
    }

    fn log(&self) -> Rc<Log<ShardStorage>> {
        match self {
            Replica::Leader(leader) => Rc::clone(leader.log()),
            Replica::Follower(follower) => follower.log(),
        }
    }

    fn stop(&self) {
        match self {
            Replica::Leader(leader) => leader.stop(),
            Replica::Follower(follower) => follower.stop(),
        }
    }

    /// Stops the replica and returns once none of its tasks touches the log any more (a
    /// follower may be truncating or reopening it): only then is `log()` final.
    async fn stop_and_join(&self) {
        match self {
            Replica::Leader(leader) => leader.stop_and_join().await,
            Replica::Follower(follower) => follower.stop_and_join().await,
        }
    }
}

/// One shard's state.
///
/// Owner: its executor (`!Send`); shared by its tasks through `Rc`.
pub struct Shard {
    pub id: ShardId,
    pub shards: u16,
    pub config: ShardConfig,
    pub settings: BrokerSettings,
    pub addresses: Vec<ShardAddress>,
    log: LogSection,
    catalog: RefCell<Rc<Catalog>>,
    /// Partitions this shard leads (serves produce and fetch for).
    leaders: RefCell<Replicas<Leader<ShardStorage>>>,
    /// Partitions this shard follows.
    followers: RefCell<Replicas<Follower<ShardStorage>>>,
    /// Start of the replication clock.
    started: std::time::Instant,
    outboxes: Vec<Option<Sender<ShardMessage>>>,
    pub(crate) replies: Replies<ShardMessage>,
    catalog_dir: Option<PathBuf>,
    /// The files of this shard's memory-topic replicas.
    memory: MemStorage,
    /// Serializes catalogue changes on shard 0.
    control_lock: glommio::sync::Semaphore,
    shutting_down: Cell<bool>,
    /// Fires once, at shutdown: wakes listeners and idle connections.
    pub(crate) shutdown: Notify,
    /// Fires as requests end: wakes the shutdown drain.
    pub(crate) requests_done: Notify,
    pub(crate) connections: Cell<usize>,
    pub(crate) requests_in_flight: Cell<usize>,
    pub(crate) hot: TaskQueueHandle,
    pub stats: RefCell<ShardStats>,
}

impl Shard {
    pub fn catalog(&self) -> Rc<Catalog> {
        Rc::clone(&self.catalog.borrow())
    }

    /// The leader replica of `topic`'s `partition` if this shard leads it.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<Rc<Leader<ShardStorage>>> {
        self.leaders.borrow().get(topic, partition)
    }

    /// Every replica on this shard, leaders first (a snapshot: no borrow is held).
    fn replicas(&self) -> impl Iterator<Item = Replica> {
        let leaders = self.leaders.borrow().all().into_iter().map(Replica::Leader);
        let followers = self.followers.borrow().all().into_iter();
        leaders.chain(followers.map(Replica::Follower))
    }

    /// The profile's `[log]` section: defaults for every partition log.
    pub fn log_defaults(&self) -> &LogSection {
        &self.log
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    pub(crate) fn outbox(&self, shard: u16) -> Option<&Sender<ShardMessage>> {
        self.outboxes.get(usize::from(shard))?.as_ref()
    }

    pub(crate) fn catalog_dir(&self) -> Option<&PathBuf> {
        self.catalog_dir.as_ref()
    }

    pub(crate) fn control_lock(&self) -> &glommio::sync::Semaphore {
        &self.control_lock
    }

    /// Brings this shard's replicas in line with `next`: opens the ones it now leads or
    /// follows, promotes and demotes on a change of leader, closes and deletes the ones whose
    /// topic is gone. Then `next` becomes the routing view.
    pub async fn apply_catalog(self: &Rc<Self>, next: Catalog) -> Result<(), String> {
        let mut errors = Vec::new();
        self.apply_replicas(&next, &mut errors).await;
        let gone = |key: &ReplicaKey| next.topic(&key.topic).is_none_or(|t| t.id != key.topic_id);
        let doomed: Vec<Replica> = self.replicas().filter(|r| gone(r.key())).collect();
        for replica in &doomed {
            let key = replica.key();
            match replica {
                Replica::Leader(_) => {
                    self.leaders.borrow_mut().remove(&key.topic, key.partition);
                }
                Replica::Follower(_) => {
                    self.followers
                        .borrow_mut()
                        .remove(&key.topic, key.partition);
                }
            }
            replica.stop(); // all at once; each is joined below
        }
        for replica in doomed {
            replica.stop_and_join().await;
            let log = replica.log();
            let _ = log.close().await;
            let dir = log.dir();
            if let Err(error) = log.storage().remove_tree(dir) {
                errors.push(format!("removing {}: {error}", dir.display()));
            }
        }
        *self.catalog.borrow_mut() = Rc::new(next);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.config.data_dir.join(format!("{topic}-{partition}"))
    }

    /// Stops the shard: refuse new work, let in-flight requests finish (bounded), then
    /// commit, sync and close every log.
    async fn drain_and_close(&self) {
        self.shutting_down.set(true);
        self.shutdown.notify();
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN_MAX;
        while self.requests_in_flight.get() > 0 && std::time::Instant::now() < deadline {
            let seen = self.requests_done.epoch();
            let _ = glommio::timer::timeout(Duration::from_millis(50), async {
                self.requests_done.changed(seen).await;
                Ok(())
            })
            .await;
        }
        let replicas: Vec<Replica> = self.replicas().collect();
        replicas.iter().for_each(Replica::stop); // all at once; each is joined below
        for replica in replicas {
            replica.stop_and_join().await;
            if let Err(error) = replica.log().close().await {
                let key = replica.key();
                tracing::error!(shard = %self.id, topic = %key.topic, partition = key.partition, %error, "close failed");
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for retention by age.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The body of a shard's executor: start, serve until told to stop, drain, close.
pub async fn run(init: ShardInit) {
    let ShardInit {
        id,
        shards,
        config,
        log,
        settings,
        addresses,
        catalog,
        catalog_dir,
        outboxes,
        inboxes,
        control,
        ready,
    } = init;
    let executor = glommio::executor();
    let hot = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_micros(200)),
        "hot",
    );
    let background =
        executor.create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    if let Err(error) = crate::log::storage::probe_dir(&config.data_dir).await {
        let _ = ready.send(Err(format!(
            "{id}: probing {}: {error}",
            config.data_dir.display()
        )));
        return;
    }
    let shard = Rc::new(Shard {
        id,
        shards,
        config,
        settings,
        addresses,
        log,
        catalog: RefCell::new(Rc::new(Catalog::default())),
        leaders: RefCell::new(Replicas::default()),
        followers: RefCell::new(Replicas::default()),
        started: std::time::Instant::now(),
        outboxes,
        replies: Replies::default(),
        catalog_dir,
        memory: MemStorage::default(),
        control_lock: glommio::sync::Semaphore::new(1),
        shutting_down: Cell::new(false),
        shutdown: Notify::default(),
        requests_done: Notify::default(),
        connections: Cell::new(0),
        requests_in_flight: Cell::new(0),
        hot,
        stats: RefCell::new(ShardStats::default()),
    });
    if let Err(error) = shard.apply_catalog(catalog).await {
        let _ = ready.send(Err(format!("{id}: opening partitions: {error}")));
        return;
    }
    let listeners = match connection::bind_listeners(&shard) {
        Ok(listeners) => listeners,
        Err(error) => {
            let _ = ready.send(Err(format!("{id}: {error}")));
            return;
        }
    };
    for listener in listeners {
        let shard = Rc::clone(&shard);
        glommio::spawn_local_into(connection::accept_loop(shard, listener), hot)
            .ok()
            .map(|t| t.detach());
    }
    for (source, inbox) in inboxes.into_iter().enumerate() {
        if let Some(inbox) = inbox {
            let shard = Rc::clone(&shard);
            glommio::spawn_local_into(messages::receive_loop(shard, source as u16, inbox), hot)
                .ok()
                .map(|t| t.detach());
        }
    }
    let maintenance = glommio::spawn_local_into(maintain_loop(Rc::clone(&shard)), background).ok();
    let io_watch = glommio::spawn_local_into(io_watch_loop(Rc::clone(&shard)), background).ok();
    let _ = ready.send(Ok(()));
    tracing::info!(shard = %shard.id, core = shard.config.core, port = shard.config.port, "shard serving");

    // Serve until the broker says stop (or the control channel closes: the broker is gone).
    match control.recv().await {
        Some(Control::Shutdown) | None => {}
    }
    tracing::info!(shard = %shard.id, "shard stopping");
    shard.drain_and_close().await;
    for task in [maintenance, io_watch].into_iter().flatten() {
        task.cancel().await;
    }
}

/// Warns about each log write or fdatasync that has run longer than `IO_STALL_WARN`, once per
/// `IO_STALL_WARN` while it lasts: a produce stuck behind a stalled disk then says why. A task
/// of its own, so upkeep stuck on the same disk does not silence it.
async fn io_watch_loop(shard: Rc<Shard>) {
    while !shard.is_shutting_down() {
        glommio::timer::sleep(IO_STALL_WARN).await;
        for replica in shard.replicas() {
            if let Some(io) = replica.log().io_in_flight()
                && io.age >= IO_STALL_WARN
            {
                let key = replica.key();
                tracing::warn!(shard = %shard.id, topic = %key.topic, partition = key.partition,
                    op = io.op, age_ms = io.age.as_millis() as u64, "log I/O still in flight");
            }
        }
    }
}

async fn maintain_loop(shard: Rc<Shard>) {
    while !shard.is_shutting_down() {
        glommio::timer::sleep(MAINTENANCE_INTERVAL).await;
        for replica in shard.replicas() {
            if shard.is_shutting_down() {
                return;
            }
            if let Err(error) = replica.log().maintain(now_ms()).await {
                let key = replica.key();
                tracing::warn!(shard = %shard.id, topic = %key.topic, partition = key.partition, %error, "log upkeep failed");
            }
        }
    }
}
