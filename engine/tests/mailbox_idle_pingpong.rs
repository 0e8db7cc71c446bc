#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Two executors that park between messages: every hop needs a cross-core wake-up.

use std::time::Duration;

use engine::shard::mailbox::channel;
use glommio::{LocalExecutorBuilder, Placement};

#[test]
fn idle_executors_are_woken_by_every_message() {
    let (to_b, from_a) = channel::<u64>(16);
    let (to_a, from_b) = channel::<u64>(16);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let b = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            while let Some(n) = from_a.recv().await {
                to_a.send(n + 1).await.unwrap();
            }
        })
        .unwrap();
    let a = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            for i in 0..300u64 {
                to_b.send(i).await.unwrap();
                let back = from_b.recv().await.unwrap();
                assert_eq!(back, i + 1);
                glommio::timer::sleep(Duration::from_micros(500 + (i % 7) * 300)).await;
            }
            done_tx.send(()).unwrap();
        })
        .unwrap();
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a wake-up was lost: ping-pong stalled");
    a.join().unwrap();
    b.join().unwrap();
}
