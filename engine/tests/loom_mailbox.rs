//! loom models of the cross-core mailbox: the ring, the doorbell handshake and drop.
//!
//! Run with (a separate target dir keeps `--cfg loom` from rebuilding the normal one):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p ringmq-engine --release --test loom_mailbox -- --nocapture
//! ```
//!
//! Models stay tiny (two threads, at most three messages, capacity one or two) so each one
//! explores every interleaving in seconds; only the end-to-end model is preemption-bounded.
//! Each prints how many executions it explored. Every model fails on some planted bug (a
//! Relaxed publish or release, a missing fence, a missing ring, a double drop).
#![cfg(loom)]

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::task::{Context, Poll, Wake, Waker};

use engine::shard::mailbox::{SendError, TrySendError, channel};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Notify};
use loom::thread;

/// Runs `model` under loom, exploring every interleaving, and prints how many executions it
/// explored.
fn check(name: &str, model: impl Fn() + Sync + Send + 'static) {
    check_bounded(name, None, model);
}

/// Like [`check`], but explores only interleavings with at most `preemptions` forced thread
/// switches (loom's `preemption_bound`; `LOOM_MAX_PREEMPTIONS` overrides it). Bugs in small
/// protocols almost always show within two or three preemptions.
fn check_bounded(name: &str, preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let executions = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    let bound = builder.preemption_bound;
    builder.check(move || {
        counted.fetch_add(1, StdOrdering::Relaxed);
        model();
    });
    let executions = executions.load(StdOrdering::Relaxed);
    eprintln!("{name}: {executions} executions (preemption bound {bound:?})");
}

/// Wakes a loom thread blocked in [`block_on`]. loom's own `future::block_on` needs its
/// `futures` feature, which engine's loom dependency does not enable.
struct Unpark(Notify);

impl Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.notify();
    }
}

/// Polls `future` to completion on the current loom thread, blocking between polls until
/// its waker is woken. A wake-up that never comes is reported by loom as a deadlock.
fn block_on<F: Future>(future: F) -> F::Output {
    let unpark = std::sync::Arc::new(Unpark(Notify::new()));
    let waker = Waker::from(std::sync::Arc::clone(&unpark));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        unpark.0.wait();
    }
}

/// A waker that only counts its rings, so a model can tell "woken" from "never woken".
struct Bell(AtomicUsize);

impl Wake for Bell {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn bell() -> (std::sync::Arc<Bell>, Waker) {
    let bell = std::sync::Arc::new(Bell(AtomicUsize::new(0)));
    let waker = Waker::from(std::sync::Arc::clone(&bell));
    (bell, waker)
}

/// (1) Three messages through two slots: the producer fills the ring, waits for a free slot,
/// and wraps around; the consumer finds it empty in between. Every message arrives once, in
/// order. Catches a Relaxed publish (`tail`) or release (`head`) as a causality violation on
/// the slot.
#[test]
fn ring_wraps_and_delivers_each_message_once_in_order() {
    check("ring", || {
        let (tx, rx) = channel::<u32>(2);
        let producer = thread::spawn(move || {
            for message in 0..3 {
                let mut message = message;
                loop {
                    match tx.try_send(message) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => message = back,
                        Err(TrySendError::Closed(_)) => panic!("receiver is alive"),
                    }
                    thread::yield_now();
                }
            }
        });
        let mut received = Vec::new();
        while received.len() < 3 {
            match rx.try_recv() {
                Some(message) => received.push(message),
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(received, [0, 1, 2]);
        assert_eq!(rx.try_recv(), None);
    });
}

/// (1b) The batch drain frees several slots with one store: same ring, drained two at a time.
#[test]
fn batch_drain_wraps_and_delivers_each_message_once_in_order() {
    check("ring, batch drain", || {
        let (tx, rx) = channel::<u32>(2);
        let producer = thread::spawn(move || {
            for message in 0..3 {
                let mut message = message;
                while let Err(error) = tx.try_send(message) {
                    message = error.into_inner();
                    thread::yield_now();
                }
            }
        });
        let mut received = Vec::new();
        while received.len() < 3 {
            if rx.try_recv_many(&mut received, 2) == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(received, [0, 1, 2]);
    });
}

/// (2) Doorbell, empty side: the consumer polls `recv` on an empty mailbox while the producer
/// pushes. Either the consumer sees the message (first check or the re-check after parking),
/// or it parked first and the push rang it exactly once. Catches a missing fence on either
/// side as a lost wake-up.
#[test]
fn a_push_never_misses_a_parked_receiver() {
    check("doorbell, receiver parks", || {
        let (tx, rx) = channel::<u32>(2);
        // The producer hands its sender back: dropping it would ring too and hide a lost
        // wake-up of the push.
        let producer = thread::spawn(move || {
            tx.try_send(7).unwrap();
            tx
        });
        let (bell, waker) = bell();
        let mut cx = Context::from_waker(&waker);
        let mut recv = pin!(rx.recv());
        let first = recv.as_mut().poll(&mut cx);
        let tx = producer.join().unwrap();
        let rings = bell.0.load(Ordering::SeqCst);
        match first {
            Poll::Ready(message) => {
                assert_eq!(message, Some(7));
                assert!(rings <= 1);
            }
            Poll::Pending => {
                assert_eq!(rings, 1, "lost wake-up: parked receiver never rung");
                assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
            }
        }
        drop(tx);
    });
}

/// (3) Doorbell, full side: the producer polls `send` on a full mailbox while the consumer
/// frees the slot. Either the send goes through at once, or the producer parked and the pop
/// rang it exactly once.
#[test]
fn a_pop_never_misses_a_parked_sender() {
    check("doorbell, sender parks", || {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        let consumer = thread::spawn(move || {
            assert_eq!(rx.try_recv(), Some(1));
            rx
        });
        let (bell, waker) = bell();
        let mut cx = Context::from_waker(&waker);
        let mut send = pin!(tx.send(2));
        let first = send.as_mut().poll(&mut cx);
        let rx = consumer.join().unwrap();
        let rings = bell.0.load(Ordering::SeqCst);
        match first {
            Poll::Ready(result) => {
                assert_eq!(result, Ok(()));
                assert!(rings <= 1);
            }
            Poll::Pending => {
                assert_eq!(rings, 1, "lost wake-up: parked sender never rung");
                assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
            }
        }
        assert_eq!(rx.try_recv(), Some(2));
    });
}

/// (2') `None` never overtakes a message: the producer pushes one message and drops its
/// sender while the consumer polls `recv`. The consumer gets the message first, and `None`
/// only after it; if it parked, the push or the drop rang it. Catches a missing fence on either
/// side (never rung) and a Relaxed publish (causality violation on the slot).
#[test]
fn recv_ends_only_after_every_message_sent_before_the_drop() {
    check("close after send", || {
        let (tx, rx) = channel::<u32>(2);
        let producer = thread::spawn(move || tx.try_send(1).unwrap());
        let (bell, waker) = bell();
        let mut cx = Context::from_waker(&waker);
        let mut recv = pin!(rx.recv());
        let first = recv.as_mut().poll(&mut cx);
        producer.join().unwrap();
        match first {
            Poll::Ready(message) => assert_eq!(message, Some(1), "recv ended before the message"),
            Poll::Pending => {
                assert!(
                    bell.0.load(Ordering::SeqCst) >= 1,
                    "lost wake-up: parked receiver never rung"
                );
                assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Some(1)));
            }
        }
        assert_eq!(pin!(rx.recv()).poll(&mut cx), Poll::Ready(None));
    });
}

/// The end-to-end model is too big to explore in full (over 15 minutes with two messages).
const PREEMPTIONS_END_TO_END: usize = 3;

/// (2+3) End to end with real wakers: two messages through one slot with `send` and `recv`,
/// so both sides can park and be rung (and be woken spuriously, and re-park); then the
/// sender's drop ends `recv`. A lost wake-up shows as a loom deadlock. The only model that
/// catches a Relaxed hand-back of the doorbell's waker slot (the waiter re-parks after a ring)
/// and a missing dropped-flag re-check after parking. Bounded to
/// [`PREEMPTIONS_END_TO_END`] preemptions; the unbounded protocol checks are the models above.
#[test]
fn send_and_recv_wait_for_each_other_and_end_on_drop() {
    check_bounded("send/recv end to end", Some(PREEMPTIONS_END_TO_END), || {
        let (tx, rx) = channel::<u32>(1);
        let producer = thread::spawn(move || {
            block_on(async {
                for message in 0..2 {
                    tx.send(message).await.unwrap();
                }
            });
        });
        let received = block_on(async {
            let mut received = Vec::new();
            while let Some(message) = rx.recv().await {
                received.push(message);
            }
            received
        });
        producer.join().unwrap();
        assert_eq!(received, [0, 1]);
    });
}

/// (3') A sender waiting on a full mailbox is released when the receiver leaves: it gets its
/// message back, or, if the receiver's drop freed the slot before the sender saw it leave, the
/// message goes into the ring and the ring's drop drops it. Never a hang (a loom deadlock).
#[test]
fn a_parked_sender_is_released_when_the_receiver_drops() {
    check("sender released by receiver drop", || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let tracked = |id| Tracked {
            id,
            dropped: Arc::clone(&dropped),
        };
        let (tx, rx) = channel::<Tracked>(1);
        assert!(tx.try_send(tracked(0)).is_ok());
        let consumer = thread::spawn(move || drop(rx));
        match block_on(tx.send(tracked(1))) {
            Ok(()) => {}
            Err(SendError(back)) => assert_eq!(back.id, 1),
        }
        consumer.join().unwrap();
        drop(tx);
        assert_eq!(dropped.load(Ordering::SeqCst), 0b11);
    });
}

/// Marks its bit in a shared mask when dropped and fails on a second drop.
struct Tracked {
    id: u32,
    dropped: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let bit = 1 << self.id;
        let before = self.dropped.fetch_or(bit, Ordering::SeqCst);
        assert_eq!(before & bit, 0, "message {} dropped twice", self.id);
    }
}

/// (4) Both halves go away with messages in flight, in either order: every message is dropped
/// exactly once, whether by the receiver, by the ring's drop, or handed back to the sender.
#[test]
fn in_flight_messages_are_dropped_exactly_once() {
    check("drop in flight", || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel::<Tracked>(2);
        let producer = {
            let dropped = Arc::clone(&dropped);
            thread::spawn(move || {
                for id in 0..2 {
                    let message = Tracked {
                        id,
                        dropped: Arc::clone(&dropped),
                    };
                    // Full cannot happen (two slots); Closed hands the message back to drop.
                    drop(tx.try_send(message));
                }
            })
        };
        drop(rx.try_recv());
        drop(rx);
        producer.join().unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 0b11);
    });
}
