//! The client against scripted peers and fake brokers on loopback, written with `protocol`
//! directly. The real broker is exercised by the workspace's `tests` crate.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod cluster;
mod connection;
mod consumer;
mod peer;
mod producer;
mod subscription;
