//! The ringmq client library (blocking): connect, metadata, produce, fetch and push
//! subscriptions over the `protocol` crate. It never depends on `engine`, so a client cannot
//! share a server code path by accident.
//!
//! - [`Connection`]: one TCP connection; pipelined requests matched by correlation id, with
//!   read and write timeouts and a bound on requests in flight, and streams of responses to
//!   one request (`Subscribe`).
//! - [`Client`]: bootstrap, metadata cache, a connection per leader shard
//!   ([`Routing::ShardAware`]) or everything through the shared port
//!   ([`Routing::SharedPort`]); create, delete and list topics, list offsets.
//! - [`Producer`]: per-partition batching by size and linger, `acks`, pipelining, retries
//!   with backoff, `flush` with per-batch results.
//! - [`Consumer`]: assigned partitions, long-poll fetches, zero-copy record iteration,
//!   leader following, `OffsetOutOfRange` reported rather than reset.
//! - [`Subscription`]: one partition's records pushed by the broker as they are committed
//!   (`Subscribe`, no request per delivery), on a connection of its own to the leader's shard
//!   port; resubscribes at its position after `NotLeader`, `ShuttingDown` or a lost
//!   connection, so no record is returned twice or skipped. A broker silent for a few seconds
//!   is probed, so a dead host that never closed the connection counts as a lost one.
//!
//! Everything is blocking std sockets, owned by one thread per object. Every error is a
//! [`ClientError`]; none of this code panics on what a broker sends.
//!
//! ```no_run
//! use client::{
//!     Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, StartOffset,
//!     Subscription,
//! };
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut admin = Client::connect("127.0.0.1:9092", ClientConfig::default())?;
//! admin.create_topic("orders", 4, 1)?;
//!
//! let client = Client::connect("127.0.0.1:9092", ClientConfig::default())?;
//! let mut producer = Producer::new(client, ProducerConfig::default())?;
//! producer.send("orders", 0, b"key", b"value")?;
//! for ack in producer.flush()? {
//!     println!("{}/{} stored at {:?}", ack.topic, ack.partition, ack.base_offset);
//! }
//!
//! let client = Client::connect("127.0.0.1:9092", ClientConfig::default())?;
//! let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
//! consumer.assign("orders", 0, StartOffset::Earliest)?;
//! for record in consumer.poll(Duration::from_millis(500))? {
//!     println!("{} {:?}", record.offset, record.value);
//! }
//!
//! let client = Client::connect("127.0.0.1:9092", ClientConfig::default())?;
//! let mut subscription = Subscription::new(client, "orders", 0, StartOffset::Latest)?;
//! for record in subscription.next_records(Duration::from_millis(500))? {
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! subscription.close()?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod accumulator;
mod client;
pub mod connection;
mod consumer;
pub mod error;
pub mod limits;
pub mod metadata;
mod producer;
mod reader;
mod records;
pub mod retry;
mod subscription;

pub use client::{Client, ClientConfig, ConnectionId, Routing, topic_request};
pub use connection::{Connection, ConnectionConfig, OwnedReply, Reply, Request, Response};
pub use consumer::{Consumer, ConsumerConfig, StartOffset};
pub use error::ClientError;
pub use metadata::Metadata;
pub use producer::{BatchAck, FailedBatch, FlushError, Producer, ProducerConfig, ProducerStats};
pub use reader::{FrameReader, OwnedFrame, ReadError};
pub use records::ConsumedRecord;
pub use retry::RetryPolicy;
pub use subscription::Subscription;

/// Re-exported so callers need not depend on `protocol` for the common types.
pub use protocol::{Acks, ErrorCode, Header, OffsetSpec, Record};
