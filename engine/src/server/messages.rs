//! What shards say to each other through the mailboxes, and the loop that listens.

use std::rc::Rc;

use protocol::FrameBuf;

use crate::control::catalog::Catalog;
use crate::replication::{ReplMessage, ReplicaKey, ReplicaStatus};
use crate::shard::mailbox::Receiver;

use super::{Shard, dispatch};

/// A message between two shards. Everything in it is owned (it crosses cores).
pub enum ShardMessage {
    /// A request frame for a partition the receiver leads; answer with `Reply`.
    Forward {
        token: u64,
        frame: FrameBuf,
    },
    /// The encoded response to a `Forward` (`None`: the request wants no response).
    Reply {
        token: u64,
        frame: Option<FrameBuf>,
    },
    /// Adopt this catalogue (open and close partitions); answer with `Applied`.
    Apply {
        token: u64,
        catalog: Catalog,
    },
    Applied {
        token: u64,
        error: Option<String>,
    },
    /// Replication status (log start, high watermark, in-sync set, lag) of partitions the
    /// receiver leads, for Metadata.
    OffsetsQuery {
        token: u64,
        partitions: Vec<(String, u32)>,
    },
    OffsetsReply {
        token: u64,
        offsets: Vec<Option<ReplicaStatus>>,
    },
    /// Replication between a partition's leader and followers.
    Repl(ReplMessage),
    /// To shard 0: the leader of `key` in `epoch` failed; move leadership to one of
    /// `in_sync`.
    MoveLeader {
        key: ReplicaKey,
        epoch: u32,
        in_sync: Vec<u16>,
    },
}

/// From the broker's main thread to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Shutdown,
}

/// Handles everything arriving from shard `source`. Never waits on a send itself: answers
/// go out from tasks of their own, so two shards with full mailboxes cannot deadlock.
pub async fn receive_loop(shard: Rc<Shard>, source: u16, inbox: Receiver<ShardMessage>) {
    while let Some(message) = inbox.recv().await {
        match message {
            ShardMessage::Forward { token, frame } => {
                let shard = Rc::clone(&shard);
                spawn_hot(&Rc::clone(&shard), async move {
                    let reply = dispatch::handle(&shard, frame).await;
                    shard
                        .reply(
                            source,
                            ShardMessage::Reply {
                                token,
                                frame: reply,
                            },
                        )
                        .await;
                });
            }
            ShardMessage::Apply { token, catalog } => {
                let shard = Rc::clone(&shard);
                spawn_hot(&Rc::clone(&shard), async move {
                    let error = shard.apply_catalog(catalog).await.err();
                    shard
                        .reply(source, ShardMessage::Applied { token, error })
                        .await;
                });
            }
            ShardMessage::OffsetsQuery { token, partitions } => {
                let offsets = partitions
                    .iter()
                    .map(|(topic, index)| shard.leader(topic, *index).map(|l| l.status()))
                    .collect();
                let shard = Rc::clone(&shard);
                spawn_hot(&Rc::clone(&shard), async move {
                    shard
                        .reply(source, ShardMessage::OffsetsReply { token, offsets })
                        .await;
                });
            }
            ShardMessage::Repl(message) => shard.on_repl(message),
            ShardMessage::MoveLeader {
                key,
                epoch,
                in_sync,
            } => {
                let shard = Rc::clone(&shard);
                spawn_hot(&Rc::clone(&shard), async move {
                    super::replicas::move_leader(&shard, key, epoch, in_sync).await;
                });
            }
            reply @ (ShardMessage::Reply { .. }
            | ShardMessage::Applied { .. }
            | ShardMessage::OffsetsReply { .. }) => {
                let token = match &reply {
                    ShardMessage::Reply { token, .. }
                    | ShardMessage::Applied { token, .. }
                    | ShardMessage::OffsetsReply { token, .. } => *token,
                    _ => continue,
                };
                // A waiter that gave up (closed connection) is not an error.
                shard.replies.deliver(token, reply);
            }
        }
    }
}

pub(crate) fn spawn_hot(shard: &Rc<Shard>, task: impl std::future::Future<Output = ()> + 'static) {
    if let Ok(task) = glommio::spawn_local_into(task, shard.hot) {
        task.detach();
    }
}

impl Shard {
    async fn reply(&self, target: u16, message: ShardMessage) {
        if let Some(outbox) = self.outbox(target) {
            // Fails only when the target shard stopped; its waiter is gone with it.
            let _ = outbox.send(message).await;
        }
    }

    /// Sends `message` (built with the token) to shard `target` and waits for the answer.
    pub(crate) async fn ask(
        &self,
        target: u16,
        message: impl FnOnce(u64) -> ShardMessage,
    ) -> Option<ShardMessage> {
        let outbox = self.outbox(target)?;
        let (token, reply) = self.replies.register();
        if outbox.send(message(token)).await.is_err() {
            self.replies.cancel(token);
            return None;
        }
        Some(reply.await)
    }
}
