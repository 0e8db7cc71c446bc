#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The executor never parks while a task is runnable, even when it is preempted before running
//! anything (vendor/glommio/RINGMQ.md). Stock glommio 0.9.0 parked then: each shard could sleep
//! with runnable tasks until an unrelated timer fired (the 33-345 ms stalls under load), or for
//! good when no timer was armed.

use std::sync::mpsc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

/// Zero: every turn of the executor starts preempted (the deadline has passed by the time it
/// looks for work), which is the case that parked stock glommio. Earlier, with a preempt timer
/// of 25 us, the case came only by chance, and ringmq's reactor change made it rare enough
/// that the test stopped failing without the fix.
const PREEMPT_TIMER: Duration = Duration::ZERO;
const ROUNDS: u32 = 2_000;

/// Each `run` spawns its future and must run it, although every turn starts preempted: the
/// executor neither parks with the task runnable (stock glommio) nor only polls without ever
/// running it (glommio with only the parking fixed).
#[test]
fn a_preempted_executor_still_runs_its_runnable_tasks() {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .preempt_timer(PREEMPT_TIMER)
            .make()
            .unwrap();
        for round in 0..ROUNDS {
            let ran = executor.run(async move { round });
            assert_eq!(ran, round);
        }
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a runnable task never ran: the executor parked, or only polled");
    worker.join().unwrap();
}
