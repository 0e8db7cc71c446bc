//! The ringmq broker engine.
//!
//! One shard per configured core: a pinned glommio executor that owns its connections, its
//! partition replicas and their logs. Nothing on the hot path is shared between shards; data
//! crosses cores only through the bounded mailboxes in [`shard::mailbox`].
//!
//! Imports run downhill: [`broker`] -> [`server`] -> [`replication`] -> [`log`] -> `protocol`,
//! with [`control`], [`shard`] (mailboxes, routing) and [`config`] below the server.
//!
//! - [`broker`]: checks the machine, starts one executor per shard and wires them.
//! - [`server`]: listeners, connections, request dispatch, cross-shard messages.
//! - [`control`]: the topic catalogue, owned by shard 0.
//! - [`replication`]: a partition's replicas across shards: the leader (its log plus what
//!   produce and fetch mean for it: acks, high watermarks, the in-sync set) and its
//!   followers, with leader epochs and reconciliation, as a pure state machine
//!   ([`replication::state`]) plus I/O edges generic over storage, transport and clock (the
//!   simulation drives the same code).
//! - [`log`]: the append-only segmented log on O_DIRECT files, with group commit, crash
//!   recovery and retention, behind the [`log::storage::Storage`] seam.
//! - [`shard`]: mailboxes between cores and routing.
//! - [`config`]: per-core profiles, parsed and validated.
#![deny(unsafe_code)]

pub mod broker;
pub mod config;
pub mod control;
pub mod limits;
pub mod log;
pub mod preflight;
pub mod replication;
pub mod server;
pub mod shard;
mod sync;
