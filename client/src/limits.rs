//! Every hard bound of the client, each with its reason. Configurations pick values at or
//! below these; `validate` on each config names the field that is out of range.

use protocol::limits::{FRAME_ALIGN, FRAME_BYTES_MAX};

/// Bytes of a connection's shared receive buffer. Frames up to this size are decoded in place
/// and copied out (a produce acknowledgement is 64 bytes, and one read brings many); a larger
/// frame (a big fetch response) is read straight into a buffer of its own, so it is never
/// copied.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Most requests in flight on one connection. Bounds the correlation table and the queue of
/// responses that arrived before anyone asked for them (at most this many frames).
pub const IN_FLIGHT_MAX: usize = 1024;

/// Most batch outcomes (acks and failures) a producer keeps for its next `flush`. A producer
/// that never flushes (fire and forget with `Acks::None`) would otherwise grow without bound;
/// past this, outcomes are only counted. 64 Ki outcomes are a few MiB.
pub const OUTCOMES_KEPT_MAX: usize = 1 << 16;

/// Longest a consumer blocks on one connection before it looks at the next one, when its
/// fetches are spread over several connections. A blocking socket cannot wait on two at once;
/// this is the latency a record on a second connection may wait (the async client has none).
pub const POLL_SLICE_MS: u64 = 1;

const _: () = assert!(READ_BUFFER_BYTES.is_multiple_of(FRAME_ALIGN));
// A frame that fits the shared buffer must be decodable there; anything bigger takes the
// dedicated path, which is bounded by FRAME_BYTES_MAX.
const _: () = assert!(READ_BUFFER_BYTES < FRAME_BYTES_MAX as usize);
const _: () = assert!(IN_FLIGHT_MAX >= 2);
