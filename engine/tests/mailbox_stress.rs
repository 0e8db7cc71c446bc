//! The mailbox under real threads: std threads spinning on `try_*`, and glommio executors
//! awaiting `send` / `recv` so that both sides park and are rung many times.
//!
//! Every test runs under a deadline, so a lost wake-up fails the test instead of hanging it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg(not(loom))]

use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use engine::shard::mailbox::{Receiver, SendError, Sender, TrySendError, channel};
use glommio::{LocalExecutorBuilder, Placement};

/// Generous: each test takes well under a second here, even with other tests on both cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `test` on its own thread; fails if it panics or is still running at the deadline.
fn with_deadline(name: &'static str, test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            test();
            done_tx.send(()).unwrap();
        })
        .unwrap();
    match done_rx.recv_timeout(DEADLINE) {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => {
            panic!("{name} still running after {DEADLINE:?}: lost wake-up?")
        }
        Err(RecvTimeoutError::Disconnected) => panic!("{name} panicked"),
    }
}

/// Runs `shard` on a fresh, unpinned glommio executor (the test machine has two cores and
/// tests run in parallel) and returns the thread's join handle.
fn spawn_shard<F, Fut, R>(name: &str, shard: F) -> glommio::ExecutorJoinHandle<R>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        // Small: nothing here does disk I/O, and memlock may be 8 MiB (PLATFORM §1.8).
        .io_memory(1 << 20)
        .spawn(shard)
        .unwrap()
}

/// Spins a little, then lets the other thread run: the two threads may share one core.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if (*spins).is_multiple_of(64) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn spsc_threads(messages: u64, capacity: usize, batch: usize) {
    let (tx, rx) = channel::<u64>(capacity);
    let producer = thread::spawn(move || {
        let mut spins = 0;
        for message in 0..messages {
            let mut message = message;
            loop {
                match tx.try_send(message) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => message = back,
                    Err(TrySendError::Closed(_)) => panic!("receiver dropped early"),
                }
                backoff(&mut spins);
            }
        }
    });
    let mut spins = 0;
    let mut expected = 0;
    let mut batch_out = Vec::with_capacity(batch);
    while expected < messages {
        batch_out.clear();
        let count = if batch == 1 {
            rx.try_recv()
                .map(|message| batch_out.push(message))
                .is_some() as usize
        } else {
            rx.try_recv_many(&mut batch_out, batch)
        };
        if count == 0 {
            backoff(&mut spins);
        }
        for &message in &batch_out {
            assert_eq!(message, expected, "lost, duplicated or reordered");
            expected += 1;
        }
    }
    producer.join().unwrap();
    assert_eq!(rx.try_recv(), None, "more messages than were sent");
}

#[test]
fn threads_move_a_million_messages_through_64_slots_in_order() {
    with_deadline("spsc-threads", || spsc_threads(1_000_000, 64, 1));
}

#[test]
fn threads_move_a_million_messages_through_64_slots_in_batches() {
    with_deadline("spsc-threads-batch", || spsc_threads(1_000_000, 64, 32));
}

const SHARD_MESSAGES: u64 = 200_000;

#[test]
fn shards_await_send_and_recv_through_16_slots() {
    with_deadline("spsc-shards", || {
        let (tx, rx): (Sender<u64>, Receiver<u64>) = channel(16);
        let producer = spawn_shard("mailbox-producer", move || async move {
            // Count how often the mailbox was full, so we know `send` really waited.
            let mut full = 0u64;
            for message in 0..SHARD_MESSAGES {
                if let Err(TrySendError::Full(back)) = tx.try_send(message) {
                    full += 1;
                    tx.send(back).await.unwrap();
                }
            }
            full
        });
        let consumer = spawn_shard("mailbox-consumer", move || async move {
            // Count how often the mailbox was empty, so we know `recv` really waited.
            let mut empty = 0u64;
            let mut expected = 0u64;
            loop {
                let message = match rx.try_recv() {
                    Some(message) => message,
                    None => {
                        empty += 1;
                        match rx.recv().await {
                            Some(message) => message,
                            None => break,
                        }
                    }
                };
                assert_eq!(message, expected, "lost, duplicated or reordered");
                expected += 1;
            }
            (expected, empty)
        });
        let full = producer.join().unwrap();
        let (received, empty) = consumer.join().unwrap();
        eprintln!("shards: {received} messages, sender found it full {full} times, empty {empty}");
        assert_eq!(received, SHARD_MESSAGES);
        assert!(
            full > 0,
            "the sender never waited; the test did not exercise a full ring"
        );
        assert!(
            empty > 1,
            "the receiver never waited; the test did not exercise an empty ring"
        );
    });
}

#[test]
fn tasks_of_one_shard_share_a_sender() {
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 25_000;
    with_deadline("spsc-shared-sender", || {
        let (tx, rx) = channel::<u64>(4);
        let producer = spawn_shard("mailbox-tasks", move || async move {
            let tx = Rc::new(tx);
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let tx = Rc::clone(&tx);
                    glommio::spawn_local(async move {
                        for seq in 0..PER_TASK {
                            tx.send(task << 32 | seq).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        });
        let consumer = spawn_shard("mailbox-drain", move || async move {
            let mut next = [0u64; TASKS as usize];
            while let Some(message) = rx.recv().await {
                let (task, seq) = ((message >> 32) as usize, message & 0xffff_ffff);
                assert_eq!(
                    seq, next[task],
                    "task {task}: lost, duplicated or reordered"
                );
                next[task] += 1;
            }
            next
        });
        producer.join().unwrap();
        assert_eq!(consumer.join().unwrap(), [PER_TASK; TASKS as usize]);
    });
}

#[test]
fn a_receiver_dropped_on_another_shard_releases_a_waiting_sender() {
    with_deadline("spsc-receiver-gone", || {
        let (tx, rx) = channel::<u64>(2);
        tx.try_send(0).unwrap();
        tx.try_send(1).unwrap();
        let producer = spawn_shard("mailbox-blocked", move || async move { tx.send(2).await });
        let consumer = spawn_shard("mailbox-leaver", move || async move {
            // Give the sender time to park first (if it has not, its first try sees the
            // receiver gone).
            glommio::timer::sleep(Duration::from_millis(20)).await;
            drop(rx);
        });
        consumer.join().unwrap();
        // Almost always the message comes back. If the sender was descheduled between its
        // dropped-flag check and its slot check while the receiver left and drained, the send
        // lands in the freed slot and the ring's drop drops it; that is correct too. What
        // matters is that the sender returns (the deadline fails the test otherwise).
        let result = producer.join().unwrap();
        assert!(matches!(result, Err(SendError(2)) | Ok(())), "{result:?}");
    });
}
