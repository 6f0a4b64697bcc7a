//! The one place that chooses between real atomics and loom's.
//!
//! Code that is model-checked (the ring core and the heap-backed ring memory)
//! takes its atomics, fences and cells from here; under `cfg(loom)` they are
//! loom's. The mapped [`Region`](crate::Region) is the one exception: it
//! reinterprets foreign memory as `core` atomics, which loom cannot model, so
//! the models run the ring over [`HeapRing`](crate::HeapRing) instead.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64};

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{fence, AtomicU64};

pub use core::sync::atomic::Ordering;

/// An `UnsafeCell` with loom's closure API, so the same code runs under loom
/// (which then tracks every access) and without it.
#[cfg(all(loom, feature = "alloc"))]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(all(not(loom), feature = "alloc"))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(all(not(loom), feature = "alloc"))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
