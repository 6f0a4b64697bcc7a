//! `LD_PRELOAD` `execve` shim: adds the ivchan ivshmem device to QEMU.
//!
//! Loaded into libvirtd (`LD_PRELOAD=/usr/lib/ivchan/libivchan_preload.so`),
//! it intercepts `execve`, `execv` and `execvp`. When the program being
//! executed is a QEMU system emulator (file name starting with
//! `qemu-system-`), its argv has `-uuid UUID` and no ivshmem device yet, it
//! appends
//!
//! ```text
//! -object {"qom-type":"memory-backend-file","id":"ivchan-mem","mem-path":"/dev/shm/fg_UUID","size":8388608,"share":true}
//! -device {"driver":"ivshmem-plain","id":"ivchan-shm","memdev":"ivchan-mem","addr":"0x1f"}
//! ```
//!
//! and calls the real function (found with `dlsym(RTLD_NEXT)` when the
//! library is loaded). Any other exec passes through untouched.
//!
//! libvirtd execs after `fork` in a multi-threaded process, where only
//! async-signal-safe work is allowed: this code never allocates and never
//! takes a lock. It works in fixed-size stack buffers, reads its settings by
//! walking `environ` (no `getenv`), and fails open: on any problem (too many
//! arguments, a value too long, a bad setting) it execs the original argv
//! unchanged. A bad setting is also reported with one line on standard
//! error (for a QEMU that libvirt starts, the domain's log).
//!
//! Settings, from libvirtd's own environment (the defaults and the size
//! limits are `ivchan_protocol::naming`'s):
//!
//! | variable | default |
//! |----------|---------|
//! | `IVCHAN_REGION` | `/dev/shm/fg_{uuid}` |
//! | `IVCHAN_SIZE` | `8M` (power of two from 1M to 16G; bytes or a K, M or G suffix) |
//! | `IVCHAN_SLOT` | `0x1f` (bus 0); on q35 the highest `pcie.0` slot below the chipset's that no `-device` takes |
//! | `IVCHAN_ARG_FORM` | `json`, or `legacy` for `key=value` arguments |

#![warn(missing_docs)]

use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use ivchan_protocol::naming::{self, RegionSize};

/// Most arguments we rewrite; longer command lines pass through unchanged.
const MAX_ARGS: usize = 2048;
/// Room for each generated argument.
const ARG_BUF: usize = 4096;

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;

// The real functions, resolved once when the library is loaded (before any
// fork), so the hot path never calls dlsym. 0 = not resolved.
static REAL_EXECVE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECV: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVP: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    static environ: *const *const c_char;
}

fn resolve(name: &CStr, slot: &AtomicUsize) -> usize {
    let cur = slot.load(Ordering::Acquire);
    if cur != 0 {
        return cur;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other
    // preconditions; it returns null when the symbol is missing.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    // Release pairs with the Acquire above: whoever sees p sees a resolved symbol.
    slot.store(p, Ordering::Release);
    p
}

extern "C" fn init() {
    resolve(c"execve", &REAL_EXECVE);
    resolve(c"execv", &REAL_EXECV);
    resolve(c"execvp", &REAL_EXECVP);
}

// Run `init` when the library is loaded, like a C constructor.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// A fixed-size byte buffer that refuses to overflow.
struct Buf<const N: usize> {
    b: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf { b: [0; N], len: 0 }
    }

    fn push(&mut self, s: &[u8]) -> Option<()> {
        // Keep one byte for the terminating NUL.
        let end = self.len.checked_add(s.len()).filter(|&e| e < N)?;
        self.b[self.len..end].copy_from_slice(s);
        self.len = end;
        Some(())
    }

    fn push_u64(&mut self, mut v: u64) -> Option<()> {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..])
    }

    /// The bytes written so far.
    fn bytes(&self) -> &[u8] {
        &self.b[..self.len]
    }

    /// NUL-terminate and return a C string pointer into the buffer.
    fn as_cstr(&mut self) -> *const c_char {
        self.b[self.len] = 0;
        self.b.as_ptr().cast()
    }
}

/// Bytes of a C string, or `None` for a null pointer.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that outlives `'a`.
unsafe fn cbytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Value of `name` in the process environment, found by walking `environ`.
fn env(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: `environ` is libc's environment array; reading the pointer is
    // a plain load of a global that nothing changes in the forked child.
    let mut e = unsafe { environ };
    if e.is_null() {
        return None;
    }
    for _ in 0..65536 {
        // SAFETY: `e` points into the NULL-terminated environ array; we stop at NULL.
        let p = unsafe { *e };
        // SAFETY: entries of environ are NUL-terminated strings that live as long as the process.
        let entry = unsafe { cbytes(p) }?;
        if entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=' {
            return Some(&entry[name.len() + 1..]);
        }
        // SAFETY: the entry was not NULL, so the array continues at least one more element.
        e = unsafe { e.add(1) };
    }
    None
}

fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// `IVCHAN_SIZE`: bytes or a `K`/`M`/`G` suffix (binary units), parsed here
/// without allocating (so not with `naming::parse_bytes`), then held to the
/// protocol's limits by [`RegionSize::new`], which does not allocate either.
fn parse_size(s: &[u8]) -> Option<u64> {
    let (num, shift) = match s.last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let v = parse_num(num)?.checked_mul(1u64 << shift)?;
    RegionSize::new(v).ok().map(RegionSize::bytes)
}

/// Say on standard error that setting `var` (`value`) is refused and why,
/// then fail open (`None`). One `write(2)`: async-signal-safe, no allocation.
fn refuse<T>(var: &[u8], value: &[u8], expected: &[&[u8]]) -> Option<T> {
    let mut m = Buf::<1024>::new();
    let _ = (|| {
        m.push(b"ivchan-preload: ")?;
        m.push(var)?;
        m.push(b"=")?;
        m.push(&value[..value.len().min(256)])?;
        m.push(b" refused (expected ")?;
        for e in expected {
            m.push(e)?;
        }
        m.push(b"); QEMU starts without the ivchan device\n")
    })();
    // SAFETY: write(2) to fd 2 from a live buffer of `m.len` bytes; a failed
    // or short write only loses the message.
    unsafe { libc::write(2, m.b.as_ptr().cast(), m.len) };
    None
}

/// Refuse an `IVCHAN_SIZE` outside the protocol's limits, naming them.
fn refuse_size<T>(value: &[u8]) -> Option<T> {
    let (mut min, mut max) = (Buf::<24>::new(), Buf::<24>::new());
    min.push_u64(naming::MIN_REGION_SIZE >> 20)?;
    max.push_u64(naming::MAX_REGION_SIZE >> 30)?;
    refuse(
        b"IVCHAN_SIZE",
        value,
        &[
            b"a power of two from ",
            min.bytes(),
            b" MiB to ",
            max.bytes(),
            b" GiB, e.g. 8M",
        ],
    )
}

/// Append `template` to `path` with every `{uuid}` replaced; `None` for a
/// character that JSON or QEMU's key=value syntax would need escaped (a
/// `,` is doubled in legacy form) or when `path` is full.
fn push_template(
    path: &mut Buf<ARG_BUF>,
    template: &[u8],
    uuid: &[u8],
    legacy: bool,
) -> Option<()> {
    let mut rest = template;
    while !rest.is_empty() {
        if rest.starts_with(b"{uuid}") {
            path.push(uuid)?;
            rest = &rest[6..];
        } else {
            let c = rest[0];
            if c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f {
                return None;
            }
            if legacy && c == b',' {
                path.push(b",,")?;
            } else {
                path.push(&[c])?;
            }
            rest = &rest[1..];
        }
    }
    Some(())
}

/// Canonical lowercase 8-4-4-4-12 form of a UUID written with or without dashes.
fn canonical_uuid(s: &[u8]) -> Option<[u8; 36]> {
    let mut hex = [0u8; 32];
    let mut n = 0;
    for &c in s {
        if c.is_ascii_hexdigit() {
            *hex.get_mut(n)? = c.to_ascii_lowercase();
            n += 1;
        } else if c != b'-' {
            return None;
        }
    }
    if n != 32 {
        return None;
    }
    let mut out = [b'-'; 36];
    let mut j = 0;
    for (i, h) in hex.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            j += 1;
        }
        out[j] = *h;
        j += 1;
    }
    Some(out)
}

fn is_qemu(path: &[u8]) -> bool {
    let base = path.rsplit(|&c| c == b'/').next().unwrap_or(path);
    base.starts_with(b"qemu-system-")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The bytes after the first `needle` in `hay`.
fn after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    let at = hay.windows(needle.len()).position(|w| w == needle)?;
    Some(&hay[at + needle.len()..])
}

/// Is a `-machine` value (`pc-q35-7.2,usb=off`, `type=q35`, `q35`) a q35
/// machine? (The QEMU wrapper's rule, without allocating.)
fn machine_is_q35(value: &[u8]) -> bool {
    for (i, part) in value.split(|&c| c == b',').enumerate() {
        if let Some(t) = part.strip_prefix(b"type=") {
            return contains(t, b"q35");
        }
        if i == 0 && !part.contains(&b'=') {
            return contains(part, b"q35");
        }
    }
    false
}

/// The slot a `-device` value takes on q35's root bus `pcie.0`, JSON
/// (`"bus":"pcie.0",…,"addr":"0x1e"`) or `key=value` (`bus=pcie.0,addr=0x1e`).
fn root_bus_slot(value: &[u8]) -> Option<u64> {
    let addr = if contains(value, br#""bus":"pcie.0""#) {
        after(value, br#""addr":""#)?
    } else if contains(value, b"bus=pcie.0,") || value.ends_with(b"bus=pcie.0") {
        after(value, b"addr=")?
    } else {
        return None;
    };
    let end = addr
        .iter()
        .position(|&c| matches!(c, b'"' | b'.' | b','))
        .unwrap_or(addr.len());
    parse_num(&addr[..end])
}

/// Storage for a rewritten argv; lives on the caller's stack.
struct Rewrite {
    argv: [*const c_char; MAX_ARGS + 5],
    object: Buf<ARG_BUF>,
    device: Buf<ARG_BUF>,
}

/// Fill `rw` with the new argv if this exec should get the device.
///
/// # Safety
/// `path` must be null or a C string; `argv` must be null or a
/// NULL-terminated array of C strings (the `execve` contract).
unsafe fn rewrite(path: *const c_char, argv: *const *const c_char, rw: &mut Rewrite) -> Option<()> {
    // SAFETY: forwarded from this function's contract.
    if !is_qemu(unsafe { cbytes(path) }?) || argv.is_null() {
        return None;
    }
    let mut argc = 0;
    let mut uuid = None;
    let mut q35 = false;
    // Slots of q35's root bus taken by devices on the command line.
    let mut taken = [false; 32];
    let mut prev: &[u8] = b"";
    loop {
        if argc >= MAX_ARGS {
            return None;
        }
        // SAFETY: argv is NULL-terminated and we have not passed the NULL yet.
        let p = unsafe { *argv.add(argc) };
        if p.is_null() {
            break;
        }
        // SAFETY: argv entries are C strings that outlive this call.
        let a = unsafe { cbytes(p) }?;
        if prev == b"-uuid" || prev == b"--uuid" {
            uuid = Some(canonical_uuid(a)?);
        }
        if (prev == b"-device" || prev == b"--device") && contains(a, b"ivshmem") {
            return None;
        }
        if prev == b"-device" || prev == b"--device" {
            if let Some(slot) = root_bus_slot(a).filter(|&s| s < 32) {
                taken[slot as usize] = true;
            }
        }
        if matches!(prev, b"-machine" | b"--machine" | b"-M") {
            q35 |= machine_is_q35(a);
        }
        rw.argv[argc] = p;
        prev = a;
        argc += 1;
    }
    let uuid = uuid?;

    let size = match env(b"IVCHAN_SIZE") {
        Some(s) => match parse_size(s) {
            Some(size) => size,
            None => return refuse_size(s),
        },
        None => naming::DEFAULT_REGION_SIZE,
    };
    let slot = match env(b"IVCHAN_SLOT") {
        Some(s) => match parse_num(s).filter(|&v| v <= 0x1f) {
            Some(slot) => slot,
            None => return refuse(b"IVCHAN_SLOT", s, &[b"0 to 0x1f, e.g. 0x1f"]),
        },
        // On q35, 0x1f is the chipset's (ICH9 LPC, SATA, SMBus): the
        // highest root-bus slot nothing on the command line takes.
        None if q35 => (3u64..=0x1e).rev().find(|&s| !taken[s as usize])?,
        None => 0x1f,
    };
    let legacy = match env(b"IVCHAN_ARG_FORM") {
        None | Some(b"json") => false,
        Some(b"legacy") => true,
        Some(s) => return refuse(b"IVCHAN_ARG_FORM", s, &[b"json or legacy"]),
    };
    // Path: the template with every {uuid} replaced; by default naming's
    // directory and prefix, /dev/shm/fg_{uuid}.
    let mut path = Buf::<ARG_BUF>::new();
    match env(b"IVCHAN_REGION") {
        Some(t) => {
            if push_template(&mut path, t, &uuid, legacy).is_none() {
                return refuse(
                    b"IVCHAN_REGION",
                    t,
                    &[b"a path of printable characters other than \" and \\, under 4 KiB"],
                );
            }
        }
        None => {
            for part in [naming::REGION_DIR, "/", naming::REGION_PREFIX, "{uuid}"] {
                push_template(&mut path, part.as_bytes(), &uuid, legacy)?;
            }
        }
    }
    let path = path.bytes();
    let hex = b"0123456789abcdef";
    let addr = [
        b'0',
        b'x',
        hex[(slot >> 4) as usize],
        hex[(slot & 15) as usize],
    ];

    let (o, d) = (&mut rw.object, &mut rw.device);
    if legacy {
        o.push(b"memory-backend-file,id=ivchan-mem,mem-path=")?;
        o.push(path)?;
        o.push(b",size=")?;
        o.push_u64(size)?;
        o.push(b",share=on")?;
        d.push(b"ivshmem-plain,id=ivchan-shm,memdev=ivchan-mem,addr=")?;
        d.push(&addr)?;
    } else {
        o.push(br#"{"qom-type":"memory-backend-file","id":"ivchan-mem","mem-path":""#)?;
        o.push(path)?;
        o.push(br#"","size":"#)?;
        o.push_u64(size)?;
        o.push(br#","share":true}"#)?;
        d.push(br#"{"driver":"ivshmem-plain","id":"ivchan-shm","memdev":"ivchan-mem","addr":""#)?;
        d.push(&addr)?;
        d.push(br#""}"#)?;
    }
    rw.argv[argc] = c"-object".as_ptr();
    rw.argv[argc + 1] = rw.object.as_cstr();
    rw.argv[argc + 2] = c"-device".as_ptr();
    rw.argv[argc + 3] = rw.device.as_cstr();
    rw.argv[argc + 4] = std::ptr::null();
    Some(())
}

fn new_rewrite() -> Rewrite {
    Rewrite {
        argv: [std::ptr::null(); MAX_ARGS + 5],
        object: Buf::new(),
        device: Buf::new(),
    }
}

/// The argv to use: the rewritten one if [`rewrite`] succeeded, else the original.
///
/// # Safety
/// As for [`rewrite`].
unsafe fn choose(
    path: *const c_char,
    argv: *const *const c_char,
    rw: &mut Rewrite,
) -> *const *const c_char {
    // SAFETY: forwarded from this function's contract.
    match unsafe { rewrite(path, argv, rw) } {
        Some(()) => rw.argv.as_ptr(),
        None => argv,
    }
}

/// Interposed `execve(2)`.
///
/// # Safety
/// The C `execve` contract: `path` a C string, `argv` and `envp`
/// NULL-terminated arrays of C strings.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let mut rw = new_rewrite();
    // SAFETY: the caller upholds the execve contract.
    let args = unsafe { choose(path, argv, &mut rw) };
    match resolve(c"execve", &REAL_EXECVE) {
        0 => {
            // SAFETY: the raw execve system call with the caller's valid arguments.
            unsafe { libc::syscall(libc::SYS_execve, path, args, envp) as c_int }
        }
        f => {
            // SAFETY: `f` is the address of the next `execve` (libc's), whose
            // type is ExecveFn; fn pointers and usize have the same size.
            let real: ExecveFn = unsafe { std::mem::transmute::<usize, ExecveFn>(f) };
            // SAFETY: the caller's arguments, with argv possibly replaced by our
            // NULL-terminated array whose strings live on this stack frame.
            unsafe { real(path, args, envp) }
        }
    }
}

/// Interposed `execv(3)`.
///
/// # Safety
/// The C `execv` contract.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    let mut rw = new_rewrite();
    // SAFETY: the caller upholds the execv contract.
    let args = unsafe { choose(path, argv, &mut rw) };
    match resolve(c"execv", &REAL_EXECV) {
        // SAFETY: without the real execv, execve with the current environment is equivalent.
        0 => unsafe { execve(path, args, environ) },
        f => {
            // SAFETY: `f` is the address of the next `execv`, of type ExecvFn.
            let real: ExecvFn = unsafe { std::mem::transmute::<usize, ExecvFn>(f) };
            // SAFETY: valid arguments as above.
            unsafe { real(path, args) }
        }
    }
}

/// Interposed `execvp(3)`.
///
/// # Safety
/// The C `execvp` contract.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    let mut rw = new_rewrite();
    // SAFETY: the caller upholds the execvp contract.
    let args = unsafe { choose(file, argv, &mut rw) };
    match resolve(c"execvp", &REAL_EXECVP) {
        0 => {
            // SAFETY: report failure like a missing libc function would.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        }
        f => {
            // SAFETY: `f` is the address of the next `execvp`, of type ExecvFn.
            let real: ExecvFn = unsafe { std::mem::transmute::<usize, ExecvFn>(f) };
            // SAFETY: valid arguments as above.
            unsafe { real(file, args) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            &canonical_uuid(b"0E8C2F4A3B5D4C6E8F7091A2B3C4D5E6").unwrap()[..],
            b"0e8c2f4a-3b5d-4c6e-8f70-91a2b3c4d5e6"
        );
        assert!(canonical_uuid(b"x").is_none());
        assert_eq!(parse_num(b"0x1f"), Some(31));
        assert!(is_qemu(b"/usr/bin/qemu-system-x86_64"));
        assert!(!is_qemu(b"/usr/bin/qemu-img"));
        assert!(machine_is_q35(b"pc-q35-7.2,usb=off"));
        assert!(machine_is_q35(b"accel=tcg,type=q35"));
        assert!(!machine_is_q35(b"pc-i440fx-7.2"));
        assert!(!machine_is_q35(b"pc,dump-guest-core=q35"));
        assert_eq!(
            root_bus_slot(br#"{"driver":"virtio-net","bus":"pcie.0","addr":"0x1e"}"#),
            Some(0x1e)
        );
        assert_eq!(root_bus_slot(b"e1000,bus=pcie.0,addr=0x1d.0"), Some(0x1d));
        assert_eq!(
            root_bus_slot(br#"{"driver":"x","bus":"pci.1","addr":"0x1"}"#),
            None
        );
        let mut b = Buf::<8>::new();
        assert!(b.push(b"1234567").is_some());
        assert!(b.push(b"8").is_none());
    }

    #[test]
    fn sizes_are_held_to_the_protocol_limits() {
        assert_eq!(parse_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_size(b"8M"), Some(8 << 20));
        assert_eq!(parse_size(b"1048576"), Some(1 << 20));
        assert_eq!(parse_size(b"0x800000"), Some(8 << 20));
        assert_eq!(parse_size(b"16G"), Some(16 << 30));
        for refused in [&b"3M"[..], b"512K", b"4096", b"64G", b"17G", b"8X", b""] {
            assert_eq!(
                parse_size(refused),
                None,
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
        // The message names the limits in whole MiB and GiB.
        assert_eq!(naming::MIN_REGION_SIZE % (1 << 20), 0);
        assert_eq!(naming::MAX_REGION_SIZE % (1 << 30), 0);
    }
}
