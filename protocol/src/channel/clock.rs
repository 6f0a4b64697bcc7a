//! The heartbeat's clock. Every channel call checks whether a beat is due,
//! so the check must cost next to nothing: the precise monotonic clock
//! (`Instant::now`) costs 26-40 ns per read on the machines we measure,
//! as much as moving a small message; the kernel's coarse monotonic clock
//! is a vDSO read of the last tick (5-7 ns), good to one tick (1-10 ms),
//! which is plenty for beats 100 ms apart. Timeouts and the peer watch
//! keep the precise clock: they run only once a call has to wait.

use std::time::Duration;

/// Time since an arbitrary fixed point, at the kernel tick's resolution.
/// Only ever compared with other readings of this clock.
pub(super) fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer,
    // which points at a local we own, and keeps no reference to it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        // Every Linux since 2.6.32 has it; a kernel without it gets the
        // precise clock, which is slower but never wrong.
        return precise_now();
    }
    // A monotonic clock never reads negative, and tv_nsec stays below 1e9.
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The precise clock, on the same scale (from the first call).
fn precise_now() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // sleeps for real time
    fn the_coarse_clock_moves_forward_within_a_tick() {
        let before = coarse_now();
        std::thread::sleep(Duration::from_millis(30));
        let after = coarse_now();
        // 30 ms passed; a tick is at most 10 ms, so at least 20 ms show.
        let seen = after.checked_sub(before).expect("monotonic");
        assert!(seen >= Duration::from_millis(20), "saw {seen:?}");
        assert!(seen < Duration::from_secs(5), "saw {seen:?}");
    }
}
