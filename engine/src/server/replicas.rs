//! The shard's side of replication: which replicas it leads or follows (brought in line
//! with each catalogue), the mailbox transport and glommio runtime the replication code
//! runs on, routing of replication messages, and failover requests to the control plane.

use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::TaskQueueHandle;

use crate::control::catalog::{Catalog, PartitionEntry, TopicEntry};
use crate::log::memory;
use crate::log::storage::{DmaStorage, ShardStorage};
use crate::log::{Log, LogConfig, Retention};
use crate::replication::{
    Follower, FollowerInit, FollowerStatus, Leader, LeaderInit, LocalFuture, ReplMessage,
    ReplicaKey, Runtime, Transport,
};
use protocol::StorageKind;

use super::Shard;
use super::messages::ShardMessage;

/// glommio as the replication runtime: the hot task queue, the monotonic clock.
pub(crate) struct ShardRuntime {
    pub hot: TaskQueueHandle,
    pub start: Instant,
}

impl Runtime for ShardRuntime {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn sleep(&self, duration: Duration) -> LocalFuture<()> {
        Box::pin(async move {
            glommio::timer::sleep(duration).await;
        })
    }

    fn spawn(&self, task: LocalFuture<()>) {
        if let Ok(task) = glommio::spawn_local_into(task, self.hot) {
            task.detach();
        }
    }
}

/// The shard mailboxes as the replication transport.
pub(crate) struct MailboxTransport {
    pub shard: Weak<Shard>,
}

impl Transport for MailboxTransport {
    fn send(&self, to: u16, message: ReplMessage) -> LocalFuture<bool> {
        let shard = self.shard.clone();
        Box::pin(async move {
            let Some(shard) = shard.upgrade() else {
                return false;
            };
            match shard.outbox(to) {
                Some(outbox) => outbox.send(ShardMessage::Repl(message)).await.is_ok(),
                None => false,
            }
        })
    }
}

impl Shard {
    fn runtime(&self) -> Rc<dyn Runtime> {
        Rc::new(ShardRuntime {
            hot: self.hot,
            start: self.started,
        })
    }

    fn transport(self: &Rc<Self>) -> Rc<dyn Transport> {
        Rc::new(MailboxTransport {
            shard: Rc::downgrade(self),
        })
    }

    /// Routes a replication message from another shard. Never waits (receive loop).
    pub(crate) fn on_repl(self: &Rc<Self>, message: ReplMessage) {
        let key = message.key();
        match &message {
            ReplMessage::Progress { .. } => {
                if let Some(leader) = self.leader(&key.topic, key.partition)
                    && leader.key.topic_id == key.topic_id
                {
                    leader.on_message(message);
                }
            }
            &ReplMessage::Probe {
                from, probe, epoch, ..
            }
            | &ReplMessage::Append {
                from, probe, epoch, ..
            } => {
                let follower = self
                    .followers
                    .borrow()
                    .get(&key.topic, key.partition)
                    .filter(|f| f.key.topic_id == key.topic_id);
                if let Some(follower) = follower {
                    return follower.deliver(message);
                }
                // Not opened yet (start-up) or not a follower here: the leader probes again
                // later.
                let answer = ReplMessage::Progress {
                    key: key.clone(),
                    epoch,
                    from: self.id.0,
                    probe,
                    status: FollowerStatus::NotReady,
                    next: 0,
                    written: 0,
                    synced: 0,
                };
                let transport = self.transport();
                super::messages::spawn_hot(self, async move {
                    let _ = transport.send(from, answer).await;
                });
            }
        }
    }

    /// Opens, promotes, demotes and starts the replicas this shard holds in `next`.
    pub(crate) async fn apply_replicas(self: &Rc<Self>, next: &Catalog, errors: &mut Vec<String>) {
        for topic in next.topics() {
            for (index, placement) in topic.partitions.iter().enumerate() {
                let index = index as u32;
                let Some(position) = placement.replicas.iter().position(|s| *s == self.id.0) else {
                    continue;
                };
                let outcome = if position == 0 {
                    self.ensure_leader(topic, index, placement).await
                } else {
                    self.ensure_follower(topic, index).await
                };
                if let Err(error) = outcome {
                    errors.push(format!("{}-{index}: {error}", topic.name));
                }
            }
        }
    }

    /// The configuration of `topic`'s replica logs on this shard.
    fn replica_log_config(&self, topic: &TopicEntry) -> LogConfig {
        let retention = Retention {
            ms: topic.retention_ms,
            bytes: topic.retention_bytes,
        };
        let config = self.log.log_config(&self.config, retention);
        match topic.storage {
            StorageKind::Disk => config,
            StorageKind::Memory => memory::log_config(config),
        }
    }

    /// Where `topic`'s replicas on this shard keep their files.
    fn replica_storage(&self, topic: &TopicEntry) -> ShardStorage {
        match topic.storage {
            StorageKind::Disk => ShardStorage::Disk(DmaStorage),
            StorageKind::Memory => ShardStorage::Memory(self.memory.clone()),
        }
    }

    async fn open_replica_log(
        &self,
        topic: &TopicEntry,
        index: u32,
    ) -> Result<Rc<Log<ShardStorage>>, String> {
        let dir = self.partition_dir(&topic.name, index);
        let storage = self.replica_storage(topic);
        let (log, recovery) = Log::open(storage, &dir, self.replica_log_config(topic))
            .await
            .map_err(|error| error.to_string())?;
        if let Some(cut) = &recovery.truncated {
            tracing::warn!(shard = %self.id, topic = %topic.name, partition = index,
                position = cut.position, offset = cut.offset, reason = %cut.reason,
                "recovery ended the log before bytes it cannot trust; a new segment takes the appends");
        }
        Ok(Rc::new(log))
    }

    async fn ensure_leader(
        self: &Rc<Self>,
        topic: &TopicEntry,
        index: u32,
        placement: &PartitionEntry,
    ) -> Result<(), String> {
        if let Some(existing) = self.leader(&topic.name, index)
            && existing.key.topic_id == topic.id
        {
            return Ok(());
        }
        let promoted = self
            .followers
            .borrow_mut()
            .remove(&topic.name, index)
            .filter(|f| f.key.topic_id == topic.id);
        let (log, hw) = match promoted {
            Some(follower) => {
                let log = follower
                    .hand_over()
                    .await
                    .map_err(|error| format!("promoting the follower: {error}"))?;
                tracing::warn!(shard = %self.id, topic = %topic.name, partition = index,
                    epoch = placement.leader_epoch, "follower promoted to leader");
                (log, follower.known_hw())
            }
            None => (self.open_replica_log(topic, index).await?, 0),
        };
        let key = replica_key(topic, index);
        let init = LeaderInit {
            key: key.clone(),
            shard: self.id.0,
            epoch: placement.leader_epoch,
            storage: self.replica_storage(topic),
            log,
            followers: placement.replicas.iter().skip(1).copied().collect(),
            min_insync: topic.min_insync,
            bounds: self.settings.lag_bounds,
            hw,
        };
        let leader = Leader::start(init, self.runtime(), self.transport())
            .await
            .map_err(|error| error.to_string())?;
        let weak = Rc::downgrade(self);
        let epoch = placement.leader_epoch;
        leader.on_failed(Box::new(move |in_sync| {
            if let Some(shard) = weak.upgrade() {
                let task_shard = Rc::clone(&shard);
                super::messages::spawn_hot(&shard, async move {
                    task_shard.request_move(key, epoch, in_sync).await;
                });
            }
        }));
        self.leaders.borrow_mut().insert(&topic.name, index, leader);
        Ok(())
    }

    async fn ensure_follower(
        self: &Rc<Self>,
        topic: &TopicEntry,
        index: u32,
    ) -> Result<(), String> {
        let existing = self
            .followers
            .borrow()
            .get(&topic.name, index)
            .is_some_and(|f| f.key.topic_id == topic.id);
        if existing {
            return Ok(());
        }
        let demoted = self.leaders.borrow_mut().remove(&topic.name, index);
        let log = match demoted {
            Some(leader) if leader.key.topic_id == topic.id => {
                leader.stop_and_join().await;
                tracing::warn!(shard = %self.id, topic = %topic.name, partition = index, "leader demoted to follower");
                Rc::clone(leader.log())
            }
            _ => self.open_replica_log(topic, index).await?,
        };
        let init = FollowerInit {
            key: replica_key(topic, index),
            shard: self.id.0,
            storage: self.replica_storage(topic),
            config: self.replica_log_config(topic),
            log,
            known_hw: 0,
        };
        let follower = Follower::start(init, self.runtime(), self.transport())
            .await
            .map_err(|error| error.to_string())?;
        self.followers
            .borrow_mut()
            .insert(&topic.name, index, follower);
        Ok(())
    }

    /// Asks the control plane (shard 0) to move leadership of a partition whose leader log
    /// failed to one of `in_sync`.
    async fn request_move(self: &Rc<Self>, key: ReplicaKey, epoch: u32, in_sync: Vec<u16>) {
        if self.id.0 == 0 {
            move_leader(self, key, epoch, in_sync).await;
        } else if let Some(outbox) = self.outbox(0) {
            let _ = outbox
                .send(ShardMessage::MoveLeader {
                    key,
                    epoch,
                    in_sync,
                })
                .await;
        }
    }
}

fn replica_key(topic: &TopicEntry, index: u32) -> ReplicaKey {
    ReplicaKey {
        topic: topic.name.clone(),
        topic_id: topic.id,
        partition: index,
    }
}

/// On shard 0: moves leadership of `key` (whose leader in `epoch` failed) to an in-sync
/// follower, persists the catalogue and has every shard apply it.
pub(crate) async fn move_leader(shard: &Rc<Shard>, key: ReplicaKey, epoch: u32, in_sync: Vec<u16>) {
    let change = |catalog: &Catalog| {
        catalog.with_leader_moved(&key.topic, key.topic_id, key.partition, epoch, &in_sync)
    };
    match super::dispatch::change_catalog(shard, change).await {
        Ok(()) => {
            tracing::warn!(topic = %key.topic, partition = key.partition, from_epoch = epoch, "leadership moved")
        }
        Err((code, message)) => {
            tracing::error!(topic = %key.topic, partition = key.partition, epoch, code = code.0, %message, "leadership not moved; the partition is unavailable")
        }
    }
}
