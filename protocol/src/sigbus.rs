//! A region file truncated under its mapping: a `SIGBUS` turned into an
//! error instead of a crash.
//!
//! Touching a page of a file mapping beyond the file's end raises `SIGBUS`,
//! and the file's owner (or QEMU's user, where it may write the file) can
//! truncate a region at any moment. A handler installed once per process
//! looks the faulting address up among the live file mappings; if it is in
//! one, it maps anonymous zeroed memory over that whole mapping (`MAP_FIXED`,
//! so every address stays valid), marks it truncated and returns: the access
//! is retried against the zeros. The channel then finds no header and a
//! ring whose positions went backwards, which poisons it with a typed error,
//! and [`Mapping::was_truncated`](crate::Mapping::was_truncated) says why.
//! A `SIGBUS` anywhere else goes to the handler that was there before (by
//! default: the process ends, as it would have).
//!
//! The table of mappings is a fixed array of atomics, so the handler reads
//! it without locks or allocation; `mmap` is async-signal-safe.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Live file mappings watched at once; more are mapped unwatched.
const SLOTS: usize = 256;

struct Slot {
    /// Start address; 0 while the slot is free.
    start: AtomicUsize,
    len: AtomicUsize,
    truncated: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    truncated: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// The `SIGBUS` action before ours, for faults that are not ours.
static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();

/// A watched mapping; stops watching on drop (before the unmap).
#[derive(Debug)]
pub(crate) struct Watch {
    slot: usize,
}

impl Watch {
    /// Whether a fault in the mapping found its file truncated.
    pub(crate) fn truncated(&self) -> bool {
        TABLE[self.slot].truncated.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Start first: a slot is reusable once its length is 0, and by then
        // nothing may still match addresses against the old start.
        let slot = &TABLE[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.len.store(0, Ordering::Release);
    }
}

/// Watches `start..start+len` (a file mapping); `None` when the table is
/// full or the handler could not be installed (the mapping then works as
/// before, unguarded).
pub(crate) fn watch(start: usize, len: usize) -> Option<Watch> {
    if start == 0 || len == 0 || install().is_none() {
        return None;
    }
    for (i, slot) in TABLE.iter().enumerate() {
        // Claim the slot with the length first: a free slot has len 0.
        if slot
            .len
            .compare_exchange(0, len, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot.truncated.store(false, Ordering::Release);
            slot.start.store(start, Ordering::Release);
            return Some(Watch { slot: i });
        }
    }
    None
}

/// Installs the handler once; `None` if `sigaction` failed.
fn install() -> Option<()> {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask"
            // value; the handler below only touches atomics and calls the
            // async-signal-safe `mmap` and `sigaction`.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0).then_some(previous)
            }
        })
        .map(|_| ())
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: `start..start+len` is a live mapping of ours (watched
        // until its `Mapping` unmaps it); replacing it in place with
        // private zeroed memory keeps every address in it valid.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped as usize == start {
            slot.truncated.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours (or the remap failed): the previous action decides.
    match PREVIOUS.get().copied().flatten() {
        Some(previous)
            if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
        {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with
                // SA_SIGINFO, so it has this signature.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: a plain handler takes the signal number only.
                let handler: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // Restore the default and return: the access faults again and
            // the process ends as it would have without us.
            // SAFETY: a zeroed sigaction with SIG_DFL is valid.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}
