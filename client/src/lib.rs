//! The ringmq client library: connect, metadata, produce and fetch over the `protocol` crate.
//!
//! Built out with the broker (issue "the shard-per-core broker"); until then this crate holds
//! nothing, so nothing here can be mistaken for a working client.
#![forbid(unsafe_code)]
