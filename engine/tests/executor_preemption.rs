#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Preemption in ringmq's copy of glommio (vendor/glommio/RINGMQ.md).
//!
//! The executor never parks while a task is runnable, even when it is preempted before running
//! anything. Stock glommio 0.9.0 parked then: each shard could sleep with runnable tasks until
//! an unrelated timer fired (the 33-345 ms stalls under load), or for good when no timer was
//! armed. And preemption wakes no kernel thread.

use std::sync::mpsc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
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

/// Round trips over a loopback connection between two tasks of one executor: each read that
/// finds no data parks on a poll whose completion lands on the main ring, so this many make
/// several thousand completions, dozens of times the ring's depth.
const ROUND_TRIPS: u32 = 4_000;
const RING_DEPTH: usize = 64;

/// The io_uring worker threads that serve the thread `tid` (`iou-wrk-<tid>`), by name.
fn io_workers_of(tid: &str) -> Vec<String> {
    let name = format!("iou-wrk-{tid}");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .filter(|comm| *comm == name)
        .collect()
}

/// Many completions make the running task queue yield without waking a kernel thread. Stock
/// glommio armed a `TIMEOUT` that fired after `ring_depth` completions, linked with a write to
/// the executor's eventfd; the kernel runs such a write on an io_uring worker thread, created
/// for it and woken on the executor's core at every firing (about 250 times a second at
/// 10,000 durable records a second). Nothing here needs a worker: sockets complete through
/// polls.
#[test]
fn completions_in_bulk_start_no_io_uring_worker() {
    let worker = std::thread::spawn(|| {
        let executor = LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .ring_depth(RING_DEPTH)
            .make()
            .unwrap();
        executor.run(async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let echo = glommio::spawn_local(async move {
                let mut stream = listener.accept().await.unwrap();
                let mut byte = [0_u8; 1];
                for _ in 0..ROUND_TRIPS {
                    stream.read_exact(&mut byte).await.unwrap();
                    stream.write_all(&byte).await.unwrap();
                }
            });
            let mut stream = glommio::net::TcpStream::connect(address).await.unwrap();
            let mut byte = [7_u8; 1];
            for _ in 0..ROUND_TRIPS {
                stream.write_all(&byte).await.unwrap();
                stream.read_exact(&mut byte).await.unwrap();
            }
            echo.await;
        });
        let me = std::fs::read_link("/proc/thread-self").unwrap();
        let tid = me.file_name().unwrap().to_string_lossy().into_owned();
        io_workers_of(&tid)
    });
    let workers = worker.join().unwrap();
    assert!(
        workers.is_empty(),
        "the executor's thread has io_uring workers {workers:?} although nothing it did \
         needs one"
    );
}

/// A task that keeps running is told to yield once `ring_depth` completions wait on the main
/// ring, long before its preemption deadline: the preemption that replaced stock glommio's
/// throughput timer (a `TIMEOUT` counting completions, linked with an eventfd write).
#[test]
fn a_backlog_of_completions_preempts_the_running_task() {
    const DEPTH: usize = 16;
    let worker = std::thread::spawn(|| {
        let executor = LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .ring_depth(DEPTH)
            .preempt_timer(Duration::from_secs(60))
            .make()
            .unwrap();
        executor.run(async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let mut clients = Vec::new();
            let mut readers = Vec::new();
            for _ in 0..2 * DEPTH {
                clients.push(std::net::TcpStream::connect(address).unwrap());
                let mut server = listener.accept().await.unwrap();
                readers.push(glommio::spawn_local(async move {
                    let mut byte = [0_u8; 1];
                    server.read_exact(&mut byte).await.unwrap();
                }));
            }
            // The readers find nothing to read and arm their polls; the reactor submits them.
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let told_before = glommio::executor().need_preempt();
            for client in &mut clients {
                std::io::Write::write_all(client, b"x").unwrap();
            }
            // Each write's poll completion is posted as the write returns; spin as a task
            // that never yields would.
            let spun = std::time::Instant::now();
            while !glommio::executor().need_preempt() && spun.elapsed() < Duration::from_secs(2) {
                std::hint::spin_loop();
            }
            let told = glommio::executor().need_preempt();
            for reader in readers {
                reader.await;
            }
            (told_before, told)
        })
    });
    let (told_before, told) = worker.join().unwrap();
    assert!(!told_before, "preempted before any completion was due");
    assert!(
        told,
        "{} completions waited and the running task was not told to yield",
        2 * DEPTH
    );
}
