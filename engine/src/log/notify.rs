//! A shard-local "something changed" signal: tasks wait for the next change, the changer
//! wakes them all. The log's group commit and segment roll wait on it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Owner: one shard (`!Send`, `!Sync`). Each `notify` bumps an epoch; a waiter that saw epoch
/// `e` is ready as soon as the epoch is no longer `e`, so a change between reading the epoch
/// and waiting is never missed.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    pub(crate) fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once `notify` has been called after the epoch `seen` was read.
    pub(crate) fn changed(&self, seen: u64) -> Changed<'_> {
        Changed { notify: self, seen }
    }
}

pub(crate) struct Changed<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
