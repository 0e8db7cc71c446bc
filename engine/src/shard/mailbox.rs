//! Bounded single-producer single-consumer mailbox from one shard to another.
//!
//! A full mailbox makes the sender wait; memory never grows. Slots are allocated once, in
//! [`channel`], and each message moves through exactly one of them.
//!
//! # Shape
//!
//! - `Ring`: the slots plus a free-running `head` (next position to read, written by the
//!   consumer only) and `tail` (next position to write, written by the producer only). A slot
//!   write is published by a Release store of `tail` and read after an Acquire load of it; a
//!   slot is handed back by a Release store of `head` and reused after an Acquire load of it.
//!   Each side caches the other side's position so that it touches the other cache line only
//!   when the cached value says "empty" (consumer) or "full" (producer).
//! - `Doorbell`: where one side parks its task's [`Waker`] while it waits (the receiver while
//!   the ring is empty, the sender while it is full). The other side rings it after it makes
//!   progress, and rings only if the waiter announced that it is parked, so the fast path costs
//!   one fence and one load of a line that changes only when the peer parks.
//! - [`Sender`] / [`Receiver`]: the halves; `try_*` never wait, `send` / `recv` wait.
//!
//! # No lost wake-ups
//!
//! Waiting and ringing are a Dekker handshake (PLATFORM §5), written so that loom checks it
//! exactly:
//!
//! ```text
//! waiter: state.store(PARKED)   fence(SeqCst)  re-check the ring and the peer's dropped flag
//! ringer: publish tail or head  fence(SeqCst)  if state.load() == PARKED: take waker, wake it
//! ```
//!
//! The two SeqCst fences are totally ordered: whichever comes second sees the other side's
//! store, so either the waiter's re-check sees the progress or the ringer sees `PARKED`.
//!
//! # Wakers across cores
//!
//! The ringer wakes the parked task from its own thread. glommio 0.9 supports this: waking a
//! task owned by another executor queues the waker to that executor and writes its eventfd if
//! the executor sleeps (`task/raw.rs` `do_wake` -> `SleepNotifier::queue_waker`; the sleeping
//! side pairs it with `prepare_to_sleep` + `membarrier`). So this file needs no glommio type,
//! compiles unchanged under `--cfg loom`, and `tests/loom_mailbox.rs` checks the async paths
//! too, with loom's own wakers.
//!
//! # Several tasks on one half
//!
//! A half is used by one thread, but several tasks of that shard may share it (e.g. behind an
//! `Rc`) and wait at once. The doorbell holds one waker, so each half also keeps the wakers of
//! its waiting tasks. Whenever a wait ends (the future finishes or is dropped) it withdraws
//! the doorbell and wakes the other local waiters, which re-check and, if they still have to
//! wait, park again.
#![allow(unsafe_code)] // the ring hands raw slots between two threads; each block says why

use std::cell::Cell;
use std::fmt;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell, fence, spin_loop};

/// Slots per (source, target) shard pair. When the mailbox is full, the sender waits; the
/// mailbox never grows.
///
/// 1024 slots at the measured 14-16 M msg/s of one cross-core stream (PLATFORM §2c) absorb
/// about 65 µs of consumer stall, more than one parked wake-up (23-26 µs), before the sender
/// has to wait. Messages carry batches, not records, so 1024 pointer-sized slots (8-16 KiB per
/// pair) stay small next to L2.
pub const MAILBOX_SLOTS: usize = 1024;

const _: () = assert!(MAILBOX_SLOTS.is_power_of_two());

/// Creates a mailbox of `capacity` slots, allocated now and never grown.
///
/// Both halves are created here, on any thread, and then moved to their executors; each is
/// used from that one thread afterwards.
///
/// # Panics
///
/// If `capacity` is not a power of two (our own bug: capacities are constants).
pub fn channel<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(
        capacity.is_power_of_two(),
        "mailbox capacity {capacity} is not a power of two"
    );
    let shared = Arc::new(Shared {
        ring: Ring::new(capacity),
        sender: CachePadded(Side::default()),
        receiver: CachePadded(Side::default()),
    });
    let sender = Sender {
        shared: Arc::clone(&shared),
        cursor: ProducerCursor::default(),
        waiters: LocalWaiters::default(),
    };
    let receiver = Receiver {
        shared,
        cursor: ConsumerCursor::default(),
        waiters: LocalWaiters::default(),
    };
    (sender, receiver)
}

/// Why [`Sender::try_send`] handed the message back.
///
/// `Debug` never prints the message: payloads stay out of logs, and `T` need not be `Debug`.
#[derive(PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// Every slot holds a message the receiver has not taken yet.
    #[error("mailbox full")]
    Full(T),
    /// The receiver is gone; nothing will ever read the message.
    #[error("mailbox receiver dropped")]
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(message) | Self::Closed(message) => message,
        }
    }
}

/// [`Sender::send`] failed because the receiver is gone; carries the message back.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("mailbox receiver dropped")]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

/// The sending half of a mailbox.
///
/// Owner: the source shard. `Send`, so it can be moved to that shard's executor once; not
/// `Sync` and not `Clone`, so only one thread ever pushes (the ring's single-producer
/// invariant). Tasks of the owning shard may share it and call `send` concurrently.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    cursor: ProducerCursor,
    waiters: LocalWaiters,
}

/// The receiving half of a mailbox.
///
/// Owner: the target shard. `Send` but not `Sync` or `Clone`, so only one thread ever pops
/// (the ring's single-consumer invariant).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    cursor: ConsumerCursor,
    waiters: LocalWaiters,
}

impl<T: Send> Sender<T> {
    /// Pushes `message` if a slot is free, and rings the receiver if it is parked.
    ///
    /// Never waits. Gives the message back as [`TrySendError::Full`] when every slot is taken
    /// and as [`TrySendError::Closed`] once the receiver has been dropped.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        // Relaxed: advisory. A message pushed just after the receiver left stays in its slot
        // and `Ring::drop` drops it once the sender goes too.
        if self.shared.receiver.dropped.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed(message));
        }
        self.shared
            .ring
            .push(&self.cursor, message)
            .map_err(TrySendError::Full)?;
        self.shared.receiver.bell.ring();
        Ok(())
    }

    /// Pushes `message`, waiting while the mailbox is full.
    ///
    /// Woken by the receiver when it frees a slot. Gives the message back if the receiver has
    /// been dropped. Dropping the future before it completes sends nothing.
    pub async fn send(&self, message: T) -> Result<(), SendError<T>> {
        let mut wait = Wait::new(&self.shared.sender.bell, &self.waiters);
        let mut message = message;
        loop {
            match self.try_send(message) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(SendError(back)),
                Err(TrySendError::Full(back)) => message = back,
            }
            poll_fn(|cx| self.poll_writable(cx, &mut wait)).await;
        }
    }

    /// Slots in this mailbox.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }

    /// Ready once a slot is free or the receiver is gone; otherwise parks `cx`'s waker.
    fn poll_writable(&self, cx: &Context<'_>, wait: &mut Wait<'_>) -> Poll<()> {
        if self.writable() {
            return Poll::Ready(());
        }
        if !wait.park(cx.waker()) {
            // The receiver is ringing this doorbell right now, for a few instructions: let it
            // finish, and poll again at once without blocking this shard's other tasks.
            spin_loop();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Dekker re-check: `park` fenced after announcing, so a slot freed before the
        // receiver's fence is visible here, and one freed after it rings us.
        if self.writable() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn writable(&self) -> bool {
        self.shared.ring.has_free_slot(&self.cursor)
            || self.shared.receiver.dropped.load(Ordering::Relaxed)
    }
}

impl<T: Send> Receiver<T> {
    /// Pops the oldest message, if any, and rings the sender if it is parked.
    ///
    /// Never waits.
    pub fn try_recv(&self) -> Option<T> {
        let message = self.shared.ring.pop(&self.cursor)?;
        self.shared.sender.bell.ring();
        Some(message)
    }

    /// Moves up to `max` messages, oldest first, to the end of `out`; returns how many.
    ///
    /// Never waits. Frees all their slots with one store and rings the sender at most once, so
    /// a busy consumer pays one fence per batch rather than per message.
    pub fn try_recv_many(&self, out: &mut Vec<T>, max: usize) -> usize {
        let count = self.shared.ring.pop_many(&self.cursor, out, max);
        if count > 0 {
            self.shared.sender.bell.ring();
        }
        count
    }

    /// Pops the oldest message, waiting while the mailbox is empty.
    ///
    /// Woken by the sender when it pushes. Returns `None` once the sender has been dropped
    /// and every message it sent has been received. Dropping the future before it completes
    /// takes nothing.
    pub async fn recv(&self) -> Option<T> {
        let mut wait = Wait::new(&self.shared.receiver.bell, &self.waiters);
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            // Acquire: pairs with the Release store in `Sender::drop`, so every push the
            // sender made is visible to the last `try_recv`.
            if self.shared.sender.dropped.load(Ordering::Acquire) {
                return self.try_recv();
            }
            poll_fn(|cx| self.poll_readable(cx, &mut wait)).await;
        }
    }

    /// Slots in this mailbox.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }

    /// Ready once a message is there or the sender is gone; otherwise parks `cx`'s waker.
    fn poll_readable(&self, cx: &Context<'_>, wait: &mut Wait<'_>) -> Poll<()> {
        if self.readable() {
            return Poll::Ready(());
        }
        if !wait.park(cx.waker()) {
            // The sender is ringing this doorbell right now, for a few instructions: let it
            // finish, and poll again at once without blocking this shard's other tasks.
            spin_loop();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Dekker re-check: `park` fenced after announcing, so a push (or the sender's drop)
        // before the sender's fence is visible here, and one after it rings us.
        if self.readable() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn readable(&self) -> bool {
        self.shared.ring.has_message(&self.cursor)
            || self.shared.sender.dropped.load(Ordering::Relaxed)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Release: publishes every push before it to the receiver's Acquire load in `recv`.
        self.shared.sender.dropped.store(true, Ordering::Release);
        self.shared.receiver.bell.ring();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver.dropped.store(true, Ordering::Release);
        // Drop what is in flight now, on this shard, instead of whenever the sender goes.
        // Messages pushed after this are dropped by `Ring::drop`.
        while let Some(message) = self.shared.ring.pop(&self.cursor) {
            drop(message);
        }
        // A sender waiting for a slot must wake up to learn that the receiver is gone.
        self.shared.sender.bell.ring();
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.ring.capacity())
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.ring.capacity())
            .finish_non_exhaustive()
    }
}

/// State both halves point at. Dropped by whichever half goes last.
struct Shared<T> {
    ring: Ring<T>,
    /// The sender's parking spot (it waits for a free slot) and its dropped flag.
    sender: CachePadded<Side>,
    /// The receiver's parking spot (it waits for a message) and its dropped flag.
    receiver: CachePadded<Side>,
}

/// One half's cross-core state: written by that half only when it parks or is dropped, read
/// by the other half on every push or pop. One cache line, so one miss covers both fields.
#[derive(Default)]
struct Side {
    bell: Doorbell,
    dropped: AtomicBool,
}

/// The producer's private positions. Exactly one exists per ring: [`channel`] puts it in the
/// one [`Sender`], which is neither `Clone` nor `Sync`.
#[derive(Default)]
struct ProducerCursor {
    /// Equal to `Ring::tail`; kept here so pushing does not read back our own store.
    tail: Cell<usize>,
    /// Some past value of `Ring::head`, so at most the real one: a slot it calls free is free.
    head_seen: Cell<usize>,
}

/// The consumer's private positions. Exactly one exists per ring, in the one [`Receiver`].
#[derive(Default)]
struct ConsumerCursor {
    /// Equal to `Ring::head`.
    head: Cell<usize>,
    /// Some past value of `Ring::tail`, so at most the real one: a slot it calls full is full.
    tail_seen: Cell<usize>,
}

/// The slots and the two positions of a bounded SPSC ring.
///
/// Positions run freely and wrap at `usize::MAX`; position `p` lives in slot `p & mask`.
/// Invariant: `0 <= tail - head <= capacity` (wrapping), and exactly the positions in
/// `head..tail` hold initialized messages.
/// Owner: shared by one producer (through its [`ProducerCursor`]) and one consumer (through
/// its [`ConsumerCursor`]).
struct Ring<T> {
    /// Next position to read. Stored by the consumer only, with Release, after it has moved
    /// the message out of the slot.
    head: CachePadded<AtomicUsize>,
    /// Next position to write. Stored by the producer only, with Release, after it has written
    /// the slot.
    tail: CachePadded<AtomicUsize>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
}

// SAFETY: the ring only moves `T`s between threads (hence `T: Send`), never shares a `&T`.
// Each slot is accessed by one side at a time: the producer writes slot `p` only while
// `p - head < capacity` (checked in `push` against an Acquire load of `head`), the consumer
// reads it only while `p < tail` (checked in `pop`/`pop_many` against an Acquire load of
// `tail`), and the Release stores of `tail`/`head` hand it over. There is one producer and one
// consumer because `channel` creates exactly one `ProducerCursor` and one `ConsumerCursor`,
// each inside a non-`Clone`, non-`Sync` half.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn new(capacity: usize) -> Self {
        assert!(capacity.is_power_of_two());
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            mask: capacity - 1,
        }
    }

    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, position: usize) -> &UnsafeCell<MaybeUninit<T>> {
        match self.slots.get(position & self.mask) {
            Some(slot) => slot,
            // `slots.len() == mask + 1`, so `position & mask` is always in bounds.
            None => unreachable!("slot {} out of {}", position & self.mask, self.slots.len()),
        }
    }

    /// Producer: is a slot free? Refreshes the cached head only when it says "full".
    fn has_free_slot(&self, cursor: &ProducerCursor) -> bool {
        let tail = cursor.tail.get();
        if tail.wrapping_sub(cursor.head_seen.get()) < self.capacity() {
            return true;
        }
        // Acquire: pairs with the consumer's Release store of `head`, so its move out of the
        // slot happens before we write the slot again.
        let head = self.head.load(Ordering::Acquire);
        cursor.head_seen.set(head);
        tail.wrapping_sub(head) < self.capacity()
    }

    /// Producer: writes `message` into the next slot and publishes it, or hands it back if
    /// the ring is full.
    fn push(&self, cursor: &ProducerCursor, message: T) -> Result<(), T> {
        if !self.has_free_slot(cursor) {
            return Err(message);
        }
        let tail = cursor.tail.get();
        self.slot(tail).with_mut(|slot| {
            // SAFETY: `has_free_slot` saw `tail - head < capacity` with an Acquire load of
            // `head` (or a cached, older, smaller value of it), so the consumer has moved the
            // previous message out of this slot and will not read it until it sees a `tail`
            // above this position, which we store only below. We are the only producer (see
            // `unsafe impl Sync for Ring`). The slot holds no initialized value, so
            // overwriting it leaks nothing.
            unsafe { slot.write(MaybeUninit::new(message)) };
        });
        let next = tail.wrapping_add(1);
        // Release: publishes the slot write to the consumer's Acquire load of `tail`.
        self.tail.store(next, Ordering::Release);
        cursor.tail.set(next);
        Ok(())
    }

    /// Consumer: how many messages are ready? Refreshes the cached tail only when it says
    /// "empty".
    fn ready_count(&self, cursor: &ConsumerCursor) -> usize {
        let head = cursor.head.get();
        let ready = cursor.tail_seen.get().wrapping_sub(head);
        if ready > 0 {
            return ready;
        }
        // Acquire: pairs with the producer's Release store of `tail`, so its slot writes
        // happen before our reads.
        let tail = self.tail.load(Ordering::Acquire);
        cursor.tail_seen.set(tail);
        tail.wrapping_sub(head)
    }

    fn has_message(&self, cursor: &ConsumerCursor) -> bool {
        self.ready_count(cursor) > 0
    }

    /// Consumer: moves the oldest message out and frees its slot.
    fn pop(&self, cursor: &ConsumerCursor) -> Option<T> {
        if self.ready_count(cursor) == 0 {
            return None;
        }
        let head = cursor.head.get();
        // SAFETY: see `read`; `ready_count` > 0 means `head < tail`.
        let message = unsafe { self.read(head) };
        self.release_to(cursor, head.wrapping_add(1));
        Some(message)
    }

    /// Consumer: moves up to `max` of the oldest messages to `out` and frees their slots with
    /// one store.
    fn pop_many(&self, cursor: &ConsumerCursor, out: &mut Vec<T>, max: usize) -> usize {
        let count = self.ready_count(cursor).min(max);
        if count == 0 {
            return 0;
        }
        // Reserve first: from the first read until `release_to`, the moved-out messages
        // still count as in the ring, so nothing in between may unwind.
        out.reserve(count);
        let head = cursor.head.get();
        for offset in 0..count {
            // SAFETY: see `read`; `offset < count <= tail - head`.
            out.push(unsafe { self.read(head.wrapping_add(offset)) });
        }
        self.release_to(cursor, head.wrapping_add(count));
        count
    }

    /// Consumer: moves the message at `position` out of its slot.
    ///
    /// # Safety
    ///
    /// The caller is the single consumer, `position` is in `head..tail` for a `tail` it loaded
    /// with Acquire (via `ready_count`), and it calls `release_to` past `position` before
    /// reading the ring again, so the message is moved out exactly once.
    unsafe fn read(&self, position: usize) -> T {
        self.slot(position).with(|slot| {
            // SAFETY: the producer initialized this slot and published it with the Release
            // store of a `tail` above `position`, which the caller loaded with Acquire; the
            // producer does not write the slot again until `head` passes `position`, which
            // only the caller's later `release_to` does.
            unsafe { slot.read().assume_init() }
        })
    }

    /// Consumer: hands the slots below `head` back to the producer.
    fn release_to(&self, cursor: &ConsumerCursor, head: usize) {
        // Release: our reads of the freed slots happen before the producer's next writes.
        self.head.store(head, Ordering::Release);
        cursor.head.set(head);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self` means both halves are gone, and `Arc`'s drop ordered their
        // last stores before this.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut position = head;
        while position != tail {
            self.slot(position).with_mut(|slot| {
                // SAFETY: positions in `head..tail` hold initialized messages that no pop
                // moved out (the ring invariant), and `&mut self` excludes every other access,
                // so each is dropped here exactly once.
                unsafe { (*slot).assume_init_drop() };
            });
            position = position.wrapping_add(1);
        }
    }
}

const IDLE: usize = 0;
const PARKED: usize = 1;
const RINGING: usize = 2;

/// Where one side parks its waker while it waits; the other side rings it.
///
/// `state` moves IDLE -> PARKED (waiter: `park`), PARKED -> IDLE (waiter: `park` replacing
/// the waker, or `withdraw`), PARKED -> RINGING -> IDLE (ringer: `ring`). Whoever moved the
/// state out of PARKED owns `waker`: the waiter in IDLE, the ringer in RINGING.
/// Invariant: `waker` is `None` whenever the state is IDLE outside `park`.
/// Owner: one waiter thread and one ringer thread (the two halves of one mailbox).
struct Doorbell {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: `waker` is accessed only by the thread that owns it per the state machine above:
// the waiter writes it in `park` and takes it in `withdraw` only after it saw IDLE with
// Acquire (so the ringer's take, published by its Release store of IDLE, is done) or itself
// moved PARKED -> IDLE (so the ringer's CAS from PARKED fails); the ringer takes it in `ring`
// only after its CAS PARKED -> RINGING (Acquire, pairing with the waiter's Release store of
// PARKED), and the waiter does not touch it while the state is RINGING. `Waker` is Send + Sync.
unsafe impl Sync for Doorbell {}

impl Default for Doorbell {
    fn default() -> Self {
        Self {
            state: AtomicUsize::new(IDLE),
            waker: UnsafeCell::new(None),
        }
    }
}

impl Doorbell {
    /// Waiter: announces that the task behind `waker` is parked, then fences.
    ///
    /// The caller must re-check its condition after this returns `true`: that re-check and
    /// the ringer's `ring` form the Dekker handshake. Returns `false` if the ringer is taking
    /// the previous waker right now; the caller should poll again.
    fn park(&self, waker: &Waker) -> bool {
        // Acquire: if the ringer moved RINGING -> IDLE, its take of the old waker happens
        // before our write below.
        match self.state.load(Ordering::Acquire) {
            IDLE => {}
            PARKED => {
                // Take the spot back to replace the waker; fails if the ringer got there first.
                if self
                    .state
                    .compare_exchange(PARKED, IDLE, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    return false;
                }
            }
            _ => return false,
        }
        self.waker.with_mut(|slot| {
            // SAFETY: the state is IDLE and only this waiter moves it out of IDLE, so the
            // ringer does not touch the slot (see `unsafe impl Sync for Doorbell`).
            let slot = unsafe { &mut *slot };
            match slot {
                Some(parked) if parked.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        });
        // Release: publishes the waker to the ringer's Acquire CAS.
        self.state.store(PARKED, Ordering::Release);
        fence(Ordering::SeqCst);
        true
    }

    /// Waiter: stops waiting; returns the parked waker if the ringer has not taken it.
    fn withdraw(&self) -> Option<Waker> {
        self.state
            .compare_exchange(PARKED, IDLE, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.waker.with_mut(|slot| {
            // SAFETY: we moved PARKED -> IDLE, so the ringer's CAS from PARKED fails and the
            // slot is ours (see `unsafe impl Sync for Doorbell`).
            unsafe { (*slot).take() }
        })
    }

    /// Ringer: after publishing progress, wakes the waiter if it announced it is parked.
    fn ring(&self) {
        // Dekker: orders our publishing store (tail, head or dropped flag) before the load of
        // `state`, against the waiter's store of PARKED before its re-check.
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) != PARKED {
            return;
        }
        // Acquire: pairs with the waiter's Release store of PARKED, so its waker write
        // happens before our take.
        if self
            .state
            .compare_exchange(PARKED, RINGING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // The waiter withdrew or is replacing its waker; its re-check sees our progress.
            return;
        }
        let waker = self.waker.with_mut(|slot| {
            // SAFETY: the state is RINGING, which only we leave, and the waiter does not
            // touch the slot in it (see `unsafe impl Sync for Doorbell`).
            unsafe { (*slot).take() }
        });
        // Release: our take happens before the waiter's next write (its Acquire in `park`).
        self.state.store(IDLE, Ordering::Release);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Wakers of the tasks of one shard that wait on the same half.
///
/// Owner: the half's thread; `Cell`, so never shared across threads.
#[derive(Default)]
struct LocalWaiters {
    wakers: Cell<Vec<Waker>>,
}

impl LocalWaiters {
    fn add(&self, waker: &Waker) {
        let mut wakers = self.wakers.take();
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.wakers.set(wakers);
    }

    /// Wakes every waiter except `own` and forgets them all; each re-checks and re-parks.
    fn wake_all_except(&self, own: &Waker) {
        for waker in self.wakers.take() {
            if !waker.will_wake(own) {
                waker.wake();
            }
        }
    }
}

/// One `send` or `recv` call's stay in the waiting room.
///
/// On drop (the call finished or was cancelled) it withdraws the doorbell and wakes the
/// half's other waiting tasks: the doorbell may hold only one of their wakers, and the ring
/// went to this one.
struct Wait<'a> {
    bell: &'a Doorbell,
    waiters: &'a LocalWaiters,
    /// Set once this call has parked.
    own: Option<Waker>,
}

impl<'a> Wait<'a> {
    fn new(bell: &'a Doorbell, waiters: &'a LocalWaiters) -> Self {
        Self {
            bell,
            waiters,
            own: None,
        }
    }

    /// See [`Doorbell::park`].
    fn park(&mut self, waker: &Waker) -> bool {
        self.waiters.add(waker);
        if !self.own.as_ref().is_some_and(|own| own.will_wake(waker)) {
            self.own = Some(waker.clone());
        }
        self.bell.park(waker)
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            drop(self.bell.withdraw());
            self.waiters.wake_all_except(&own);
        }
    }
}

/// Aligns `T` to its own pair of cache lines: x86's adjacent-line prefetcher pulls lines in
/// 128-byte pairs, so 64-byte padding would still let the two sides' stores collide.
#[repr(align(128))]
#[derive(Default)]
struct CachePadded<T>(T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::pin::pin;
    use std::sync::Arc as StdArc;
    use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct CountingWaker(StdAtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: StdArc<Self>) {
            self.0.fetch_add(1, StdOrdering::SeqCst);
        }
    }

    fn counting_waker() -> (StdArc<CountingWaker>, Waker) {
        let count = StdArc::new(CountingWaker::default());
        let waker = Waker::from(StdArc::clone(&count));
        (count, waker)
    }

    fn wakes(count: &CountingWaker) -> usize {
        count.0.load(StdOrdering::SeqCst)
    }

    /// Counts drops of messages, so tests see each one dropped exactly once.
    struct Tracked(StdArc<StdAtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, StdOrdering::SeqCst);
        }
    }

    #[test]
    #[should_panic(expected = "not a power of two")]
    fn capacity_not_a_power_of_two_is_rejected() {
        let _ = channel::<u8>(3);
    }

    #[test]
    fn try_send_on_a_full_ring_hands_the_message_back() {
        let (tx, rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Some(1));
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn try_send_after_the_receiver_is_dropped_is_closed() {
        let (tx, rx) = channel::<u32>(2);
        drop(rx);
        assert!(matches!(tx.try_send(7), Err(TrySendError::Closed(7))));
    }

    #[test]
    fn try_recv_many_takes_at_most_max_in_order_across_the_wrap() {
        let (tx, rx) = channel::<u32>(4);
        let mut out = Vec::new();
        for round in 0..5u32 {
            for i in 0..3 {
                tx.try_send(round * 3 + i).unwrap();
            }
            assert_eq!(rx.try_recv_many(&mut out, 2), 2);
            assert_eq!(rx.try_recv_many(&mut out, 8), 1);
            assert_eq!(rx.try_recv_many(&mut out, 8), 0);
        }
        assert_eq!(out, (0..15).collect::<Vec<_>>());
    }

    #[test]
    fn recv_after_the_sender_is_dropped_drains_then_ends() {
        let (tx, rx) = channel::<u32>(4);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        drop(tx);
        let mut cx = Context::from_waker(Waker::noop());
        for expected in [Some(1), Some(2), None, None] {
            let recv = pin!(rx.recv());
            assert_eq!(recv.poll(&mut cx), Poll::Ready(expected));
        }
    }

    #[test]
    fn in_flight_messages_are_dropped_once_whichever_half_goes_first() {
        for receiver_first in [false, true] {
            let drops = StdArc::new(StdAtomicUsize::new(0));
            let (tx, rx) = channel::<Tracked>(4);
            for _ in 0..3 {
                tx.try_send(Tracked(StdArc::clone(&drops))).unwrap();
            }
            drop(rx.try_recv());
            assert_eq!(drops.load(StdOrdering::SeqCst), 1);
            if receiver_first {
                drop(rx);
                assert_eq!(
                    drops.load(StdOrdering::SeqCst),
                    3,
                    "receiver drains on drop"
                );
                // Pushed after the receiver left: handed back, dropped by the caller.
                drop(tx.try_send(Tracked(StdArc::clone(&drops))));
                drop(tx);
            } else {
                drop(tx);
                drop(rx);
            }
            assert_eq!(
                drops.load(StdOrdering::SeqCst),
                if receiver_first { 4 } else { 3 }
            );
        }
    }

    #[test]
    fn a_parked_receiver_is_woken_by_a_push_and_only_then() {
        let (tx, rx) = channel::<u32>(2);
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut recv = pin!(rx.recv());
        assert_eq!(recv.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(wakes(&count), 0);
        tx.try_send(5).unwrap();
        assert_eq!(wakes(&count), 1);
        // The bell is IDLE again: the next push costs no wake.
        tx.try_send(6).unwrap();
        assert_eq!(wakes(&count), 1);
        assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Some(5)));
    }

    #[test]
    fn a_parked_sender_is_woken_when_a_slot_frees_or_the_receiver_goes() {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        {
            let mut send = pin!(tx.send(2));
            assert_eq!(send.as_mut().poll(&mut cx), Poll::Pending);
            assert_eq!(rx.try_recv(), Some(1));
            assert_eq!(wakes(&count), 1);
            assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        }
        let mut send = pin!(tx.send(3));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Pending);
        drop(rx);
        assert_eq!(wakes(&count), 2);
        // The receiver drained 2 on drop; 3 comes back.
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Err(SendError(3))));
    }

    #[test]
    fn tasks_sharing_a_sender_all_wake_when_one_is_rung() {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(0).unwrap();
        let (count_a, waker_a) = counting_waker();
        let (count_b, waker_b) = counting_waker();
        let mut send_a = pin!(tx.send(1));
        let mut send_b = pin!(tx.send(2));
        assert!(
            send_a
                .as_mut()
                .poll(&mut Context::from_waker(&waker_a))
                .is_pending()
        );
        assert!(
            send_b
                .as_mut()
                .poll(&mut Context::from_waker(&waker_b))
                .is_pending()
        );
        // The doorbell holds the last waker, b's.
        assert_eq!(rx.try_recv(), Some(0));
        assert_eq!((wakes(&count_a), wakes(&count_b)), (0, 1));
        // b finishes and passes the wake on to a, which finds the ring full and parks again.
        let ready_b = send_b.as_mut().poll(&mut Context::from_waker(&waker_b));
        assert_eq!(ready_b, Poll::Ready(Ok(())));
        assert_eq!(wakes(&count_a), 1);
        assert!(
            send_a
                .as_mut()
                .poll(&mut Context::from_waker(&waker_a))
                .is_pending()
        );
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(wakes(&count_a), 2);
        let ready_a = send_a.as_mut().poll(&mut Context::from_waker(&waker_a));
        assert_eq!(ready_a, Poll::Ready(Ok(())));
        assert_eq!(rx.try_recv(), Some(1));
    }

    #[test]
    fn a_cancelled_waiter_passes_the_wake_on() {
        let (tx, rx) = channel::<u32>(1);
        let (count_a, waker_a) = counting_waker();
        let (count_b, waker_b) = counting_waker();
        let mut recv_a = pin!(rx.recv());
        assert!(
            recv_a
                .as_mut()
                .poll(&mut Context::from_waker(&waker_a))
                .is_pending()
        );
        {
            let mut recv_b = pin!(rx.recv());
            assert!(
                recv_b
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker_b))
                    .is_pending()
            );
        }
        // b was dropped while it held the doorbell: a is told to re-check...
        assert_eq!((wakes(&count_a), wakes(&count_b)), (1, 0));
        assert!(
            recv_a
                .as_mut()
                .poll(&mut Context::from_waker(&waker_a))
                .is_pending()
        );
        // ...and, parked again, it is the one the next push rings.
        tx.try_send(9).unwrap();
        assert_eq!((wakes(&count_a), wakes(&count_b)), (2, 0));
        let ready = recv_a.as_mut().poll(&mut Context::from_waker(&waker_a));
        assert_eq!(ready, Poll::Ready(Some(9)));
    }
}
