//! Partition log tests: on the real disk through glommio (`disk`), and on the simulated disk
//! with crashes, torn writes and injected faults (`sim`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod disk;
mod memory;
mod pipeline;
mod sim;
