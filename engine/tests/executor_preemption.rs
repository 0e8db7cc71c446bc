#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The executor never parks while a task is runnable, even when it is preempted before running
//! anything (vendor/glommio/RINGMQ.md). Stock glommio 0.9.0 parked then: each shard could sleep
//! with runnable tasks until an unrelated timer fired (the 33-345 ms stalls under load), or for
//! good when no timer was armed.

use std::sync::mpsc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

/// Short enough that it often fires between arming it and the executor's first look for
/// work (stock glommio hung within 2,000 rounds at 10 and 30 us here), long enough that a turn
/// is not always preempted before any task runs (at 1-3 us every turn is, and the executor
/// only polls).
const PREEMPT_TIMER: Duration = Duration::from_micros(25);
const ROUNDS: u32 = 2_000;

/// Each `run` spawns its future and must run it, however often a turn starts preempted.
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
        .expect("the executor parked with a runnable task and never woke");
    worker.join().unwrap();
}
