//! ringmq integration tests: one binary, one module per area. Each test starts a broker in
//! this process on 127.0.0.1 with OS-assigned ports and the `tiny` profile.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod clients;
mod common;
mod hostile;
mod memory;
mod raw;
mod subscribe;
mod subscription;
