//! The ringmq wire protocol: everything a client and the broker must agree on, as bytes.
//!
//! - [`frame`]: the 32-byte frame header, incremental decoding, encoding.
//! - [`api`]: api keys, error codes and the rkyv request/response bodies.
//! - [`batch`]: the record-batch format, stored and served as the producer sent it.
//! - [`crc`]: joining two crc32cs, so a produce's batch is hashed once.
//! - [`limits`]: every hard bound, with its reason.
//! - [`names`]: what topic and group names may contain.
//!
//! No I/O, no async, no `unsafe`. Every decoder returns an error for any input; the lints
//! below forbid the calls that could panic on it.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod api;
pub mod batch;
pub mod crc;
pub mod frame;
pub mod limits;
pub mod names;
mod varint;

pub use api::{Acks, ApiKey, Body, ErrorCode, OffsetSpec, StorageKind};
pub use batch::{
    BatchBuilder, BatchError, BatchHeader, BatchView, Batches, BuildError, Header, Record,
};
pub use frame::{
    DecodeError, EncodeError, Frame, FrameBuf, FrameHeader, decode_frame, encode_frame,
    patch_correlation_id, split_frame, trusted_frame,
};
