//! Memory that owns a region: the [`SharedMemory`] contract, and
//! [`Mapping`], the one owner of an `mmap` in ivchan (region files on the
//! host, a BAR's sysfs `resource2` in the guest, anonymous memory for
//! in-process channels). The `mmap` calls and the `Send`/`Sync` reasoning
//! for mapped memory are written here once.

use std::fmt;
use std::fs::File;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use crate::sigbus::Watch;
use crate::Region;

/// Something that owns a mapped region and keeps it in place.
///
/// # Safety
///
/// [`region`](Self::region) must return the same memory on every call, and
/// that memory must stay mapped, readable and writable, at the same address,
/// for as long as the value lives, *even when the value itself is moved*
/// (a mapping or a heap allocation, never a buffer stored inline). This
/// process may touch the memory only through [`Region`]s.
/// [`OwnedChannel`](crate::OwnedChannel) relies on this to keep a channel
/// beside the memory it points into.
pub unsafe trait SharedMemory: Send + Sync + fmt::Debug {
    /// The memory as an ivchan region.
    fn region(&self) -> Region<'_>;
}

// SAFETY: an `Arc` keeps its value (and so the value's memory) alive and in
// place for as long as any clone lives; `region` forwards to it.
unsafe impl<T: SharedMemory + ?Sized> SharedMemory for Arc<T> {
    fn region(&self) -> Region<'_> {
        (**self).region()
    }
}

// SAFETY: as for `Arc`: the boxed value never moves while the box lives.
unsafe impl<T: SharedMemory + ?Sized> SharedMemory for Box<T> {
    fn region(&self) -> Region<'_> {
        (**self).region()
    }
}

/// An owned memory mapping, unmapped on drop.
pub struct Mapping {
    /// Taken once from `map` with write provenance; `map` is not touched
    /// again until drop.
    base: NonNull<u8>,
    len: usize,
    /// File mappings are watched for truncation (`SIGBUS`); dropped before
    /// the mapping below.
    watch: Option<Watch>,
    /// Owns the mapping; never accessed directly.
    _map: MmapMut,
}

// SAFETY: `base` points into the mapping this value owns for its whole life
// and is only used to build `Region`s, which are `Send + Sync` themselves
// (atomic word access; byte access is `unsafe` under the ring protocol).
// `MmapMut` is `Send + Sync`.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; `&Mapping` only hands out `Region` copies.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    /// Maps `len` bytes of `file` shared, read and write: stores reach the
    /// file, and the peer's stores (another process, the guest through
    /// QEMU) show up here. `file` must be open for reading and writing.
    ///
    /// Every page is faulted in now (`MAP_POPULATE`; for a file on tmpfs
    /// or hugetlbfs that also allocates it), so that the rings' first lap
    /// pays no page faults: a 64 B round trip between two processes over a
    /// fresh region had its p99.9 at 9.3-9.6 µs, one fault per page on
    /// each side, and at 0.49-1.69 µs with the pages faulted in at map time
    /// (docs/bench/notes.md). A device BAR is mapped whole by the kernel
    /// anyway. [`shared_lazy`](Self::shared_lazy) leaves the pages to be
    /// faulted in as they are touched.
    pub fn shared(file: &File, len: usize) -> io::Result<Self> {
        Self::map_shared(file, 0, len, true)
    }

    /// As [`shared`](Self::shared), but pages are faulted in (and a tmpfs
    /// file's memory allocated) only when first touched: for a process
    /// that keeps many mostly idle regions mapped.
    pub fn shared_lazy(file: &File, len: usize) -> io::Result<Self> {
        Self::map_shared(file, 0, len, false)
    }

    /// As [`shared`](Self::shared), `len` bytes from byte `offset` (a
    /// multiple of the page size): one region of a device file, such as a
    /// BAR of a VFIO device.
    pub fn shared_at(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        Self::map_shared(file, offset, len, true)
    }

    fn map_shared(file: &File, offset: u64, len: usize, prefault: bool) -> io::Result<Self> {
        let mut options = MmapOptions::new();
        options.offset(offset).len(len);
        if prefault {
            options.populate();
        }
        // SAFETY: a MAP_SHARED mapping of a file that other processes write
        // concurrently. That is sound only because nothing in this process
        // reads it as ordinary Rust memory: it is reached solely through
        // `Region` (atomic words, byte copies under the ring protocol).
        let map = unsafe { options.map_mut(file) }?;
        Self::own(map).map(Self::watched)
    }

    /// Maps `len` bytes of `file` private copy-on-write, for inspection:
    /// `file` may be open read-only, pages this process never writes keep
    /// showing the file's contents (Linux), and no store ever reaches it.
    pub fn private(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: MAP_PRIVATE of a file others write; reached only through
        // `Region`, as above.
        let map = unsafe { MmapOptions::new().len(len).map_copy(file) }?;
        Self::own(map).map(Self::watched)
    }

    /// Maps `len` bytes of zeroed anonymous memory: a region for channels
    /// between threads of one process (tests, benchmarks). Its pages are
    /// faulted in now, as [`shared`](Self::shared)'s are.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        let mut options = MmapOptions::new();
        options.len(len);
        // Miri's mmap takes exactly MAP_PRIVATE | MAP_ANONYMOUS.
        if !cfg!(miri) {
            options.populate();
        }
        Self::own(options.map_anon()?)
    }

    fn own(mut map: MmapMut) -> io::Result<Self> {
        let len = map.len();
        let ptr = map.as_mut_ptr();
        // mmap returns page-aligned, non-null addresses; checked anyway,
        // since `Region` needs both.
        let base = NonNull::new(ptr)
            .filter(|p| p.as_ptr() as usize % 8 == 0)
            .ok_or_else(|| io::Error::other(format!("mmap returned unusable address {ptr:p}")))?;
        Ok(Self {
            base,
            len,
            watch: None,
            _map: map,
        })
    }

    /// A file mapping: a `SIGBUS` from the file shrinking under it turns
    /// into zeros and [`was_truncated`](Self::was_truncated).
    fn watched(mut self) -> Self {
        #[cfg(not(miri))]
        {
            self.watch = crate::sigbus::watch(self.base.as_ptr() as usize, self.len);
        }
        self
    }

    /// True once an access found the file truncated under the mapping
    /// (another process shrank it). Its contents then read as zeros, which
    /// the channel reports as a broken header and ring; this says why.
    pub fn was_truncated(&self) -> bool {
        self.watch.as_ref().is_some_and(Watch::truncated)
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as an ivchan region.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: `base..base+len` is this value's live mapping, readable and
        // writable (shared, anonymous, or private copy-on-write), and the
        // region borrows `self`, so it cannot outlive the mapping. This
        // process touches it only through `Region`s.
        let region = unsafe { Region::from_raw_parts(self.base.as_ptr(), self.len) };
        region.expect("mapping checked non-null and 8-byte aligned when made")
    }
}

// SAFETY: the mapping lives, at the same address, until the `Mapping` is
// dropped, wherever the `Mapping` value moves; it is reached only through
// `Region`s.
unsafe impl SharedMemory for Mapping {
    fn region(&self) -> Region<'_> {
        Mapping::region(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Ordering;
    use std::path::Path;

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot mmap")]
    fn shared_mappings_of_one_file_see_each_other() {
        let file = tempfile_in_shm();
        file.set_len(1 << 20).expect("size");
        let a = Mapping::shared(&file, 1 << 20).expect("map a");
        let b = Mapping::shared(&file, 1 << 20).expect("map b");
        a.region().store(4096, 0xfeed, Ordering::Release);
        assert_eq!(b.region().load(4096, Ordering::Acquire), 0xfeed);
        // A private mapping sees the file but never writes it.
        let c = Mapping::private(&file, 1 << 20).expect("map c");
        assert_eq!(c.region().load(4096, Ordering::Acquire), 0xfeed);
        c.region().store(4096, 1, Ordering::Release);
        assert_eq!(a.region().load(4096, Ordering::Acquire), 0xfeed);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot mmap")]
    fn a_mapping_at_an_offset_starts_there() {
        let file = tempfile_in_shm();
        file.set_len(3 * 4096).expect("size");
        let whole = Mapping::shared(&file, 3 * 4096).expect("map whole");
        let part = Mapping::shared_at(&file, 4096, 2 * 4096).expect("map part");
        assert_eq!(part.len(), 2 * 4096);
        whole.region().store(4096 + 8, 0xbeef, Ordering::Release);
        assert_eq!(part.region().load(8, Ordering::Acquire), 0xbeef);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot mmap")]
    fn anonymous_memory_is_zeroed_and_moves_with_its_owner() {
        let m = Mapping::anonymous(1 << 20).expect("map");
        assert_eq!(m.len(), 1 << 20);
        let addr = m.region().addr();
        let moved = Box::new(m);
        assert_eq!(moved.region().addr(), addr);
        assert_eq!(moved.region().load(0, Ordering::Relaxed), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot mmap")]
    fn a_file_truncated_under_the_mapping_reads_as_zeros_instead_of_crashing() {
        let file = tempfile_in_shm();
        file.set_len(1 << 20).expect("size");
        let shared = Mapping::shared(&file, 1 << 20).expect("map");
        let private = Mapping::private(&file, 1 << 20).expect("map private");
        shared.region().store(8192, 7, Ordering::Release);
        assert_eq!(private.region().load(8192, Ordering::Acquire), 7);
        assert!(!shared.was_truncated());
        // Another process (here: another descriptor) shrinks the file.
        file.set_len(4096).expect("truncate");
        assert_eq!(shared.region().load(8192, Ordering::Acquire), 0);
        shared.region().store(65536, 1, Ordering::Release);
        assert!(shared.was_truncated());
        assert_eq!(private.region().load(8192, Ordering::Acquire), 0);
        assert!(private.was_truncated());
        // An untouched mapping of another file is not affected.
        let other = tempfile_in_shm();
        other.set_len(1 << 20).expect("size");
        let fine = Mapping::shared(&other, 1 << 20).expect("map other");
        fine.region().store(8192, 9, Ordering::Release);
        assert!(!fine.was_truncated());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot mmap")]
    fn shared_and_anonymous_mappings_are_faulted_in_when_made_lazy_ones_when_touched() {
        const LEN: usize = 1 << 20;
        let pages = LEN / page_size();
        // tmpfs, as region files are: a fault there brings in one page (a
        // disk file's first fault reads ahead).
        let file = tempfile_in(Path::new("/dev/shm"));
        file.set_len(LEN as u64).expect("size");
        // A fresh file has no pages; a lazy mapping adds only those touched.
        let lazy = Mapping::shared_lazy(&file, LEN).expect("map lazy");
        assert_eq!(resident_pages(&lazy), 0);
        lazy.region().store(3 * page_size(), 1, Ordering::Release);
        assert_eq!(resident_pages(&lazy), 1);
        // The default mapping brings every page in before it returns.
        let eager = Mapping::shared(&file, LEN).expect("map");
        assert_eq!(resident_pages(&eager), pages);
        assert_eq!(eager.region().load(3 * page_size(), Ordering::Acquire), 1);
        let anonymous = Mapping::anonymous(LEN).expect("map anonymous");
        assert_eq!(resident_pages(&anonymous), pages);
    }

    fn page_size() -> usize {
        // SAFETY: sysconf has no memory-safety preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).expect("page size")
    }

    /// Pages of the mapping in memory, as `mincore` reports them.
    fn resident_pages(m: &Mapping) -> usize {
        let mut flags = vec![0u8; m.len().div_ceil(page_size())];
        // SAFETY: the address and length are the live mapping's; `flags`
        // has one byte per page, as mincore writes.
        let rc = unsafe { libc::mincore(m.region().addr() as *mut _, m.len(), flags.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        flags.iter().filter(|&&f| f & 1 != 0).count()
    }

    fn tempfile_in_shm() -> File {
        tempfile_in(&std::env::temp_dir())
    }

    fn tempfile_in(dir: &Path) -> File {
        let path = dir.join(format!(
            "ivchan-mapping-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("unlink");
        file
    }
}
