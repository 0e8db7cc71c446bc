//! Every hard bound of the wire format, each with its reason.
//!
//! The broker, the client and the fuzzers all check input against these constants before
//! they allocate or loop on it. A `tuning` profile may pick smaller values, never larger.

/// Bytes of the fixed frame header. A multiple of 16, so an rkyv body that follows it in a
/// 16-aligned receive buffer is itself 16-aligned.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Frames (header, body and padding) are padded to a multiple of this, so back-to-back frames
/// in one receive buffer keep their bodies aligned for rkyv.
pub const FRAME_ALIGN: usize = 16;

/// Largest frame either side may send; bounds one connection's receive buffer. A peer that
/// announces more is disconnected before anything of that size is allocated.
pub const FRAME_BYTES_MAX: u32 = 4 << 20;

/// Largest record batch a producer may send, header included. Kafka's default
/// `max.message.bytes` is about 1 MiB; larger batches stop helping throughput long before this.
pub const BATCH_BYTES_MAX: u32 = 1 << 20;

/// Most records in one batch. With `BATCH_BYTES_MAX` this still allows 16-byte records, and
/// keeps the offset delta of any record well inside `u32`.
pub const BATCH_RECORDS_MAX: u32 = 1 << 16;

/// Most headers on one record. Kafka and NATS put no hard bound here; one keeps a hostile
/// batch from making every consumer walk millions of empty headers.
pub const RECORD_HEADERS_MAX: u32 = 64;

/// Largest fetch response payload (concatenated batches). Leaves room in a frame for the
/// response's own fields and the rkyv archive overhead.
pub const FETCH_BYTES_MAX: u32 = FRAME_BYTES_MAX - FRAME_OVERHEAD_BYTES_MAX;

/// Bytes a frame may spend on everything but its batch or records payload: the header,
/// the fixed fields of the archived body, a topic name and padding.
pub const FRAME_OVERHEAD_BYTES_MAX: u32 = 64 << 10;

/// Longest topic name. Topic names become directory names (with a partition suffix), so they
/// must stay well under the 255-byte file name limit of ext4 and XFS. Kafka uses 249.
pub const TOPIC_NAME_BYTES_MAX: usize = 200;

/// Longest consumer-group name. Group names are stored in the offsets log, not on the file
/// system, but are still bounded so a commit stays small.
pub const GROUP_NAME_BYTES_MAX: usize = 200;

/// Most partitions one topic may have; bounds the catalogue and the metadata response.
pub const TOPIC_PARTITIONS_MAX: u32 = 4096;

/// Longest opaque metadata string a consumer may commit with an offset (Kafka's default
/// `offset.metadata.max.bytes` is 4096).
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;

/// Longest a fetch may wait for data. Clients that want longer re-issue the fetch; the broker
/// keeps no request parked for longer than this.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;

/// Longest a produce may wait for its acknowledgement policy before it answers `Timeout`.
pub const PRODUCE_TIMEOUT_MS_MAX: u32 = 300_000;

/// Bytes of the fixed record-batch header (see `batch`).
pub const BATCH_HEADER_BYTES: usize = 64;

const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!((FRAME_BYTES_MAX as usize).is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_ALIGN.is_power_of_two());
// A produce frame carrying a full batch must fit in a frame.
const _: () = assert!(BATCH_BYTES_MAX + FRAME_OVERHEAD_BYTES_MAX <= FRAME_BYTES_MAX);
// A fetch response must be able to carry at least one full batch, or a consumer could get
// stuck behind a batch it can never receive.
const _: () = assert!(FETCH_BYTES_MAX >= BATCH_BYTES_MAX);
// Topic name, fixed fields and rkyv's relative pointers fit in the overhead budget.
const _: () = assert!(
    TOPIC_NAME_BYTES_MAX + GROUP_NAME_BYTES_MAX + COMMIT_METADATA_BYTES_MAX + 1024
        <= FRAME_OVERHEAD_BYTES_MAX as usize
);
// The smallest record is 5 bytes (one byte each for length, timestamp delta, key length,
// value length and header count). The record bound is the tighter of the two, so walking a
// batch is bounded by BATCH_RECORDS_MAX iterations whatever its bytes say.
const _: () = assert!(BATCH_RECORDS_MAX as usize <= BATCH_BYTES_MAX as usize / 5);
const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(8));
