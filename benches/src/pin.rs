//! CPU pinning: the producer (or the ping side) runs on core 0, the
//! consumer (or the echo side) on core 1, for every transport alike.

/// Core of the producing / pinging side.
pub const PRODUCER_CORE: usize = 0;
/// Core of the consuming / echoing side.
pub const CONSUMER_CORE: usize = 1;

/// Number of online CPUs (not the calling thread's affinity mask, which a
/// child inherits from its pinned parent).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Pins the calling thread to `core` (modulo the number of online CPUs).
/// Returns false when the kernel refused.
pub fn pin_current(core: usize) -> bool {
    let core = core % online_cpus();
    // SAFETY: `cpu_set_t` is plain data and all-zero is the empty set;
    // `CPU_SET` writes a bit inside it (core < CPU_SETSIZE for any machine
    // this runs on); `sched_setaffinity(0, ..)` reads the set and changes
    // only the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}
