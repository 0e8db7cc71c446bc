//! The ringmq broker engine.
//!
//! One shard per configured core: a pinned glommio executor that owns its connections, its
//! partition replicas and their logs. Nothing on the hot path is shared between shards; data
//! crosses cores only through the bounded mailboxes in [`shard::mailbox`].
//!
//! - [`log`]: a partition replica's append-only, segmented log on O_DIRECT files, with group
//!   commit, crash recovery and retention, behind the [`log::storage::Storage`] seam.
//! - [`shard`]: mailboxes between cores and routing.
//! - [`config`]: per-core profiles, parsed and validated.
#![deny(unsafe_code)]

pub mod config;
pub mod log;
pub mod shard;
mod sync;
