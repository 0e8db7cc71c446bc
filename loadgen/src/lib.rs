//! loadgen: the open-loop load generator for ringmq and its peers.
//!
//! Built out in the loadgen issue; until then this crate holds nothing.
#![forbid(unsafe_code)]
