//! The synchronization primitives that cross-core code uses: std normally, loom under
//! `--cfg loom`.
//!
//! Every atomic, fence and shared cell of a cross-core primitive (the mailbox ring and its
//! doorbells) comes from here, so that `RUSTFLAGS="--cfg loom"` swaps all of them for loom's
//! model-checked versions at once. Code inside one shard is single-threaded and does not use
//! this module.
//!
//! A busy-wait calls `spin_loop`: a pause instruction normally, and under loom a yield that
//! tells the model checker this thread cannot progress until another one runs.
//!
//! `UnsafeCell` always has loom's closure API (`with` / `with_mut`), so the same code compiles
//! against both; the std stand-in below adds nothing at run time.

#![allow(unused_imports)] // a shim: each build uses the subset its primitives need

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    hint::spin_loop,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
    },
    thread,
};

#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
    },
    thread,
};

/// std stand-in for `loom::cell::UnsafeCell`: the same closure API over
/// `std::cell::UnsafeCell`.
///
/// The closures receive raw pointers; dereferencing them is `unsafe` at the call site, where
/// the caller states which protocol gives it exclusive (`with_mut`) or shared (`with`) access.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer for reading the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
