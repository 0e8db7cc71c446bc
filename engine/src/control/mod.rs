//! The control plane, run by shard 0: the topic catalogue and its changes.

pub mod catalog;
