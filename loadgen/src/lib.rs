//! loadgen: the open-loop load generator for ringmq and its peers.
//!
//! How a run works, top down:
//!
//! - [`workload`]: what to send (OpenMessaging Benchmark's YAML fields plus ours), checked
//!   field by field.
//! - [`plan`]: the run's shared clock, measured window (after warm-up), stop flag and totals.
//! - [`rate`]: the open-loop schedule. Every message has an intended send time fixed in
//!   advance; latency runs from it, so a stall counts against every message it delayed.
//! - Targets: [`ringmq`] (pinned workers, one raw io_uring ring each, pre-built frames patched
//!   per send, over [`uring`]) and [`nats`] (core NATS and JetStream through async-nats).
//! - [`stats`]: per-worker hdrhistograms, merged (never averaged) at the end; [`cpu`]: CPU of
//!   the broker and of loadgen from `/proc`.
//! - [`run`]: one run from start to result, with the live progress line; [`compare`]: the
//!   Kafka-style and NATS-style profiles against ringmq, core NATS and JetStream side by side;
//!   [`report`] and [`plot`]: tables, JSON, CSV and the SVG percentile plot.
//!
//! `unsafe` is denied crate-wide; only [`uring`] opts back in, to lend buffers to the kernel.
#![deny(unsafe_code)]

pub mod compare;
pub mod cpu;
pub mod nats;
pub mod plan;
pub mod plot;
pub mod rate;
pub mod report;
pub mod ringmq;
pub mod run;
pub mod server;
pub mod stats;
#[allow(unsafe_code)]
pub mod uring;
pub mod workload;
