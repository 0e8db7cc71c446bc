//! Every hard bound of the broker, each with its reason. Profiles pick values at or below
//! these; `config` holds the bounds of profile fields themselves.

use std::time::Duration;

use protocol::limits::FRAME_BYTES_MAX;

/// Requests one connection may have in flight (pipelining). Past it the connection stops
/// reading until responses go out, so one client cannot queue unbounded work on a shard.
pub const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// Response bytes one connection may have queued but not yet written. Past it the
/// connection stops reading requests (a consumer that stops reading its socket is slowed,
/// not buffered for without bound).
pub const CONNECTION_PENDING_OUTPUT_BYTES_MAX: usize = 16 << 20;

/// Receive buffer capacity: one whole frame of the largest size, plus one header of the next.
pub const CONNECTION_RECEIVE_BYTES_MAX: usize = FRAME_BYTES_MAX as usize + 32;

/// Longest a graceful shutdown waits for in-flight requests before closing logs anyway.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(5);

/// Forwarded requests one shard may have waiting for replies from other shards. Each holds
/// a frame, so this bounds memory; past it the connection waits.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 4096;

/// A log write or fdatasync running longer than this is reported as stalled (and again
/// every as long while it lasts). fdatasync on a healthy disk takes well under 100 ms.
pub const IO_STALL_WARN: Duration = Duration::from_secs(1);

/// How often each shard runs log upkeep (retention, checkpoints; each log prepares its next
/// segment itself).
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

const _: () = assert!(CONNECTION_PENDING_OUTPUT_BYTES_MAX >= 2 * FRAME_BYTES_MAX as usize);

/// A connection's subscriptions send their next delivery only while its unsent responses
/// stay under this: a consumer that does not read holds its deliveries back, and the
/// connection still has room for the answers to its other requests.
pub const SUBSCRIPTION_WINDOW_BYTES: usize = 4 << 20;
const _: () = assert!(SUBSCRIPTION_WINDOW_BYTES < CONNECTION_PENDING_OUTPUT_BYTES_MAX);
const _: () = assert!(CONNECTION_RECEIVE_BYTES_MAX > FRAME_BYTES_MAX as usize);

/// Retention of a memory topic's partitions when neither the topic nor the profile sets
/// `retention_bytes`: a memory topic always has a bound, so producers cannot fill the
/// shard's memory.
pub const MEMORY_RETENTION_BYTES_DEFAULT: u64 = 64 << 20;
