//! Routing between shards: which shard owns a partition, and the table of requests waiting
//! for a reply from another shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use ahash::AHashMap;

/// Index of a shard: 0..shards, in profile order. Shard 0 runs the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// Requests of this shard waiting for another shard's reply, by token.
///
/// Owner: one shard (`!Send`). Each entry is a one-shot slot: the mailbox receiver fills it,
/// the waiting task takes it. Bounded by the caller (`limits::FORWARDS_IN_FLIGHT_MAX`).
pub struct Replies<T> {
    next_token: Cell<u64>,
    waiting: RefCell<AHashMap<u64, Rc<Slot<T>>>>,
}

struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies {
            next_token: Cell::new(1),
            waiting: RefCell::new(AHashMap::new()),
        }
    }
}

impl<T> Replies<T> {
    /// Registers a new waiter; returns its token and the future that resolves to the reply.
    pub fn register(&self) -> (u64, Reply<T>) {
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1));
        let slot = Rc::new(Slot {
            value: RefCell::new(None),
            waker: RefCell::new(None),
        });
        self.waiting.borrow_mut().insert(token, Rc::clone(&slot));
        (token, Reply { slot })
    }

    /// Delivers a reply; false if nobody waits for `token` (it gave up).
    pub fn deliver(&self, token: u64, value: T) -> bool {
        let Some(slot) = self.waiting.borrow_mut().remove(&token) else {
            return false;
        };
        *slot.value.borrow_mut() = Some(value);
        if let Some(waker) = slot.waker.borrow_mut().take() {
            waker.wake();
        }
        true
    }

    /// Forgets a waiter that gave up (its connection closed, or it timed out).
    pub fn cancel(&self, token: u64) {
        self.waiting.borrow_mut().remove(&token);
    }

    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resolves to the reply delivered for its token.
pub struct Reply<T> {
    slot: Rc<Slot<T>>,
}

impl<T> Future for Reply<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.slot.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_reach_their_waiter_once() {
        let replies: Replies<&str> = Replies::default();
        let (a, reply_a) = replies.register();
        let (b, reply_b) = replies.register();
        assert_ne!(a, b);
        assert!(replies.deliver(b, "for b"));
        assert!(!replies.deliver(b, "again"), "a token is answered once");
        assert!(replies.deliver(a, "for a"));
        assert_eq!(futures_lite::future::block_on(reply_a), "for a");
        assert_eq!(futures_lite::future::block_on(reply_b), "for b");
        let (c, _) = replies.register();
        replies.cancel(c);
        assert!(!replies.deliver(c, "late"));
        assert!(replies.is_empty());
    }
}
