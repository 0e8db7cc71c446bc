//! A produce whose acknowledgement times out must not take the log down with it.
//!
//! The log's group commit runs inside the future of whichever waiter drives it. If a produce
//! that timed out dropped that future half-way through a write or a sync, the log would wait
//! for that write forever: every later produce on the partition would time out too. Here
//! produces with a timeout that fires at once alternate with produces that may wait, on the
//! simulated disk (whose writes and syncs take a random number of executor turns), so drops
//! land mid-write and mid-sync; every patient produce must still be acknowledged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::rc::Rc;
use std::time::Duration;

use engine::log::sim::SimStorage;
use engine::replication::{Leader, LocalFuture, ReplError, ReplMessage, Runtime, Transport};
use protocol::{Acks, BatchBuilder};

mod common;
use common::{leader_init, open_log};

/// A runtime whose timers last a number of executor turns: a timeout of 0 fires on the
/// second poll, while the produce it races is inside the log's commit.
struct Turns;

impl Runtime for Turns {
    fn now_us(&self) -> u64 {
        0
    }
    fn sleep(&self, duration: Duration) -> LocalFuture<()> {
        let turns = 1 + duration.as_millis() as u64 * 100;
        Box::pin(async move {
            for _ in 0..turns {
                futures_lite::future::yield_now().await;
            }
        })
    }
    fn spawn(&self, task: LocalFuture<()>) {
        glommio::spawn_local(task).detach();
    }
}

/// Replication factor 1: nothing is ever sent.
struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _to: u16, _message: ReplMessage) -> LocalFuture<bool> {
        Box::pin(async { false })
    }
}

fn batch(i: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder
        .append(
            1_700_000_000_000,
            b"",
            format!("record {i}").as_bytes(),
            &[],
        )
        .unwrap();
    builder.seal().unwrap().to_vec()
}

#[test]
fn timed_out_produces_never_wedge_the_log() {
    for seed in 0..20u64 {
        common::run(move || async move {
            let storage = SimStorage::new(seed);
            let log = open_log(&storage, 0).await;
            let leader = Leader::start(
                leader_init(&storage, 0, log),
                Rc::new(Turns),
                Rc::new(Nowhere),
            )
            .await
            .unwrap();
            let mut timed_out = 0;
            for i in 0..40 {
                let acks = if i % 2 == 0 {
                    Acks::LeaderFsync
                } else {
                    Acks::Leader
                };
                match leader.produce(&batch(i), acks, Duration::ZERO).await {
                    Err(ReplError::InDoubt(_)) => timed_out += 1,
                    Ok(_) => {}
                    Err(error) => panic!("seed {seed}: produce {i}: {error}"),
                }
                let patient = leader
                    .produce(&batch(i), acks, Duration::from_millis(50))
                    .await;
                assert!(
                    patient.is_ok(),
                    "seed {seed}: produce {i} after a timed-out one: {patient:?} \
                     (the log is stuck behind an abandoned commit)"
                );
            }
            leader.stop();
            assert!(
                timed_out > 0,
                "seed {seed}: no produce timed out, so nothing was tested"
            );
        });
    }
}
