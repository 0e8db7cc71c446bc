//! Partition log tests: on the real disk through glommio (`disk`), and on the simulated disk
//! with crashes, torn writes and injected faults (`sim`).

mod common;
mod disk;
