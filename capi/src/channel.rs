//! The channel handle and its calls.

use std::ffi::{c_char, c_void, CStr};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use ivchan_guest::{GuestChannel, Selector};
use ivchan_host::{RegionOptions, VmChannel, VmUuid};
use ivchan_protocol::{
    poll_until, Channel, ChannelError, ChannelOptions, Header, LayoutError, Mapping, OwnedChannel,
    PeerEvent, PeerState, Side, WaitStrategy,
};

use crate::error::{guard, ivchan_error, Failure};
use ivchan_error::*;

/// An open channel: the host's or the guest's end. Opaque; made by the
/// `ivchan_*_open`/`attach` calls, freed by `ivchan_close`. One thread at a
/// time.
#[allow(non_camel_case_types)]
pub struct ivchan_channel {
    inner: Inner,
    held: Held,
}

/// What the handle holds the channel through.
enum Inner {
    /// A guest's device (BAR2 under sysfs).
    Guest(GuestChannel),
    /// The host's region file for a VM.
    Host(VmChannel),
    /// A host region file mapped as a guest maps BAR2.
    File(OwnedChannel<Mapping>),
}

/// The zero-copy grant C holds between two calls. The Rust grants borrow
/// the channel, so the handle keeps only their place and takes the grant
/// again when C finishes: a reservation or a peek is found again at the
/// same place, because only this side moves its own position.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Nothing,
    Reserved { ptr: usize, len: usize },
    Peeked { ptr: usize, len: usize },
}

/// Runs `$body` with `$ch` bound to the handle's `OwnedChannel`, whatever
/// memory it runs over.
macro_rules! with_channel {
    ($inner:expr, $ch:ident => $body:expr) => {
        match $inner {
            Inner::Guest(g) => {
                let $ch = &mut **g;
                $body
            }
            Inner::Host(h) => {
                let $ch = &mut **h;
                $body
            }
            Inner::File(f) => {
                let $ch = f;
                $body
            }
        }
    };
}

/// How `ivchan_guest_open` picks the device (its `select` argument).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ivchan_select {
    /// The device whose header carries this VM's UUID (DMI
    /// `product_uuid`); `value` is ignored.
    IVCHAN_SELECT_IDENTITY = 0,
    /// The device at the PCI address `value` (`"0000:00:1f.0"`).
    IVCHAN_SELECT_ADDRESS = 1,
    /// The device whose header carries the channel name `value`.
    IVCHAN_SELECT_NAME = 2,
}

/// How `ivchan_host_open` treats the region file (its `mode` argument).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ivchan_host_mode {
    /// Open the VM's region file, creating it if it does not exist.
    IVCHAN_HOST_OPEN_OR_CREATE = 0,
    /// Open an existing region file only (QEMU or a hook made it).
    IVCHAN_HOST_OPEN_EXISTING = 1,
    /// Create the region file; fail if it exists.
    IVCHAN_HOST_CREATE = 2,
}

/// What `ivchan_poll_peer` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ivchan_peer_event_kind {
    /// Nothing changed since the last poll.
    IVCHAN_PEER_NONE = 0,
    /// The peer attached (or was found attached); `epoch` is its session.
    IVCHAN_PEER_ATTACHED = 1,
    /// The peer attached again: `old_epoch` ended, `epoch` began. Messages
    /// in flight are kept.
    IVCHAN_PEER_RESTARTED = 2,
    /// The peer detached cleanly.
    IVCHAN_PEER_CLOSED = 3,
    /// The peer's heartbeat has not moved for `silent_ms`.
    IVCHAN_PEER_SILENT = 4,
    /// A silent peer's heartbeat moved again.
    IVCHAN_PEER_RESUMED = 5,
}

/// A change in the peer's life (`ivchan_poll_peer`). Fields a kind does
/// not use are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ivchan_peer_event {
    /// What happened.
    pub kind: ivchan_peer_event_kind,
    /// The peer's session epoch (ATTACHED, RESTARTED).
    pub epoch: u64,
    /// The session that ended (RESTARTED).
    pub old_epoch: u64,
    /// Milliseconds since the peer's heartbeat last moved (SILENT).
    pub silent_ms: u64,
}

/// A millisecond timeout from C: negative means no limit.
fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// An open deadline from C, bounded: negative means "for as long as it
/// takes", which is a century.
fn open_wait(ms: i64) -> Duration {
    timeout(ms).unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600))
}

/// `p` as a reference, if it is non-NULL and aligned.
///
/// # Safety
///
/// A non-NULL, aligned `p` points to a valid `T` that nothing else uses
/// for `'a`.
unsafe fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    if p.is_null() || !p.is_aligned() {
        return Err(Failure::new(
            IVCHAN_ERR_NULL_POINTER,
            format!("{what} is NULL or misaligned"),
        ));
    }
    // SAFETY: non-NULL and aligned (checked); valid and unaliased by the
    // caller's contract.
    Ok(unsafe { &mut *p })
}

/// The handle behind `ch`.
///
/// # Safety
///
/// A non-NULL `ch` came from an `ivchan_*` open call and was not closed,
/// and no other thread uses it meanwhile.
unsafe fn handle<'a>(ch: *mut ivchan_channel) -> Result<&'a mut ivchan_channel, Failure> {
    // SAFETY: the caller's contract is `out`'s.
    unsafe { out(ch, "the channel") }
}

/// A C string argument as UTF-8; NULL is `None`.
///
/// # Safety
///
/// A non-NULL `s` points to a NUL-terminated string that lives for `'a`.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL (checked), NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().map(Some).map_err(|_| {
        Failure::new(
            IVCHAN_ERR_INVALID_ARGUMENT,
            format!("{what} is not UTF-8: {s:?}"),
        )
    })
}

/// A required C string argument.
///
/// # Safety
///
/// As for [`text`].
unsafe fn required<'a>(s: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's contract is `text`'s.
    unsafe { text(s, what) }?
        .ok_or_else(|| Failure::new(IVCHAN_ERR_NULL_POINTER, format!("{what} is NULL")))
}

/// Stores a new handle into `*out`.
fn give(out: &mut *mut ivchan_channel, inner: Inner) {
    *out = Box::into_raw(Box::new(ivchan_channel {
        inner,
        held: Held::Nothing,
    }));
}

/// Opens the guest's end over an ivshmem device found under sysfs,
/// waiting up to `timeout_ms` for the device and the host's header
/// (negative: no limit).
///
/// - `sysfs_root`: NULL for `/sys` (tests pass a fake tree);
/// - `select`: an `ivchan_select`; `value` the address or name it needs;
/// - `*out` receives the handle on success (NULL otherwise).
///
/// Needs root: sysfs `resource2` is 0600.
///
/// # Safety
///
/// Strings are NULL or NUL-terminated; `out` is NULL or points to a
/// writable `ivchan_channel *`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_guest_open(
    sysfs_root: *const c_char,
    select: u32,
    value: *const c_char,
    timeout_ms: i64,
    out: *mut *mut ivchan_channel,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let out = unsafe { self::out(out, "out") }?;
        *out = std::ptr::null_mut();
        let selector = match select {
            0 => Selector::Identity,
            // SAFETY: as the caller promised.
            1 => Selector::Address(unsafe { required(value, "the address") }?.to_owned()),
            // SAFETY: as the caller promised.
            2 => Selector::Name(unsafe { required(value, "the name") }?.to_owned()),
            other => {
                return Err(Failure::new(
                    IVCHAN_ERR_INVALID_ARGUMENT,
                    format!("select {other} is not an ivchan_select"),
                ))
            }
        };
        let mut builder = GuestChannel::builder()
            .selector(selector)
            .timeout(open_wait(timeout_ms));
        // SAFETY: as the caller promised.
        if let Some(root) = unsafe { text(sysfs_root, "sysfs_root") }? {
            builder = builder.sysfs_root(root);
        }
        give(out, Inner::Guest(builder.open()?));
        Ok(())
    })
}

/// Opens the guest's end over a host region file (`/dev/shm/fg_<uuid>`)
/// mapped shared, the way a guest maps BAR2: a guest agent tested on the
/// host, without a VM. Waits up to `timeout_ms` for the host's header.
/// A symbolic link at `path` is refused.
///
/// # Safety
///
/// `path` is NULL or NUL-terminated; `out` is NULL or points to a
/// writable `ivchan_channel *`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_guest_attach_file(
    path: *const c_char,
    timeout_ms: i64,
    out: *mut *mut ivchan_channel,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let out = unsafe { self::out(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: as the caller promised.
        let path = Path::new(unsafe { required(path, "the path") }?);
        let fail = |code, e: &dyn std::fmt::Display| {
            Failure::new(code, format!("{}: {e}", path.display()))
        };
        let io = |e: std::io::Error| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => IVCHAN_ERR_NO_DEVICE,
                std::io::ErrorKind::PermissionDenied => IVCHAN_ERR_PERMISSION,
                _ if e.raw_os_error() == Some(libc::ELOOP) => IVCHAN_ERR_PERMISSION,
                _ => IVCHAN_ERR_IO,
            };
            fail(code, &e)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|e| fail(IVCHAN_ERR_INVALID_ARGUMENT, &e))?;
        let mapping = Mapping::shared(&file, len).map_err(io)?;
        let wait = open_wait(timeout_ms);
        let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(50));
        let channel = OwnedChannel::new(mapping, |region| {
            let header = poll_until(strategy, Some(wait), || match Header::open(region) {
                Ok(header) => Ok(Some(header)),
                Err(LayoutError::NotInitialized) => Ok(None),
                Err(e) => Err(ChannelError::Layout(e)),
            })?
            .ok_or(ChannelError::Timeout { waited: wait })?;
            Channel::attach(header, Side::Guest, ChannelOptions::default())
        })
        .map_err(|e| fail(crate::error::channel_code(&e), &e))?;
        give(out, Inner::File(channel));
        Ok(())
    })
}

/// Opens the host's end for the VM `uuid` (`"5b7e6a0c-…"`): its region
/// file `DIR/fg_<uuid>`, checked (owner, mode, size, header) and locked.
///
/// - `dir`: NULL for `/dev/shm`;
/// - `name`: the channel name a new header gets (NULL: `"ivchan"`);
/// - `size`: bytes of a new region, a power of two from 1 MiB to 16 GiB
///   (0: 8 MiB);
/// - `mode`: an `ivchan_host_mode`.
///
/// # Safety
///
/// Strings are NULL or NUL-terminated; `out` is NULL or points to a
/// writable `ivchan_channel *`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_host_open(
    uuid: *const c_char,
    dir: *const c_char,
    name: *const c_char,
    size: u64,
    mode: u32,
    out: *mut *mut ivchan_channel,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let out = unsafe { self::out(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: as the caller promised.
        let uuid_text = unsafe { required(uuid, "the uuid") }?;
        let uuid: VmUuid = uuid_text.parse().map_err(|e| {
            Failure::new(
                IVCHAN_ERR_INVALID_ARGUMENT,
                format!("{uuid_text:?} is not a VM UUID: {e}"),
            )
        })?;
        let mut regions = RegionOptions::new();
        // SAFETY: as the caller promised.
        if let Some(dir) = unsafe { text(dir, "dir") }? {
            regions = regions.dir(dir);
        }
        if size != 0 {
            ivchan_protocol::naming::RegionSize::new(size)
                .map_err(|e| Failure::new(IVCHAN_ERR_INVALID_ARGUMENT, e.to_string()))?;
            regions = regions.size(size);
        }
        let mut builder = VmChannel::builder(&uuid).regions(regions);
        // SAFETY: as the caller promised.
        if let Some(name) = unsafe { text(name, "name") }? {
            builder = builder.name(name);
        }
        let vm = match mode {
            0 => builder.open(),
            1 => builder.open_existing(),
            2 => builder.create(),
            other => {
                return Err(Failure::new(
                    IVCHAN_ERR_INVALID_ARGUMENT,
                    format!("mode {other} is not an ivchan_host_mode"),
                ))
            }
        }?;
        give(out, Inner::Host(vm));
        Ok(())
    })
}

/// Closes a channel: publishes what is staged, marks this side closed (the
/// peer sees it), unmaps and frees the handle. NULL is ignored. A held
/// reservation is dropped unsent; a held peek stays unreleased (the message
/// is read again next time).
///
/// # Safety
///
/// `ch` is NULL or a handle not yet closed; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ivchan_close(ch: *mut ivchan_channel) {
    if ch.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: a handle from `give` (Box::into_raw), closed once, by the
        // caller's contract.
        drop(unsafe { Box::from_raw(ch) });
        Ok(())
    });
}

/// The largest message the channel sends, in bytes (0 for NULL).
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivchan_max_message(ch: *mut ivchan_channel) -> usize {
    let mut max = 0;
    let _ = guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        max = with_channel!(&mut h.inner, c => c.max_message());
        Ok(())
    });
    max
}

/// This side's session epoch (0 for NULL).
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivchan_epoch(ch: *mut ivchan_channel) -> u64 {
    let mut epoch = 0;
    let _ = guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        epoch = with_channel!(&mut h.inner, c => c.epoch());
        Ok(())
    });
    epoch
}

fn refuse_if(held: bool, what: &str) -> Result<(), Failure> {
    if held {
        return Err(Failure::new(IVCHAN_ERR_GRANT_STATE, what.to_owned()));
    }
    Ok(())
}

impl ivchan_channel {
    fn reserved(&self) -> bool {
        matches!(self.held, Held::Reserved { .. })
    }

    fn peeked(&self) -> bool {
        matches!(self.held, Held::Peeked { .. })
    }
}

/// Sends a copy of `len` bytes at `msg`, waiting up to `timeout_ms` for
/// room (negative: no limit; 0: only if there is room now).
///
/// # Safety
///
/// `ch` is NULL or an open handle; `msg` is NULL (then `len` is 0) or
/// points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ivchan_send(
    ch: *mut ivchan_channel,
    msg: *const c_void,
    len: usize,
    timeout_ms: i64,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        refuse_if(
            h.reserved(),
            "send while a reservation is held: commit it first",
        )?;
        let msg: &[u8] = match (msg.is_null(), len) {
            (_, 0) => &[],
            (true, _) => {
                return Err(Failure::new(
                    IVCHAN_ERR_NULL_POINTER,
                    format!("msg is NULL with len {len}"),
                ))
            }
            // SAFETY: non-NULL, `len` readable bytes by the caller's contract,
            // private to the caller (not the region).
            (false, _) => unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) },
        };
        with_channel!(&mut h.inner, c => c.send(msg, timeout(timeout_ms)))?;
        Ok(())
    })
}

/// Receives a copy of the next message into `buf` (`cap` bytes), waiting
/// up to `timeout_ms` (negative: no limit; 0: only if one is queued).
/// `*len` receives its length; with `IVCHAN_ERR_BUFFER_TOO_SMALL` the
/// message stays queued and `*len` is the size it needs.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `buf` is NULL (then `cap` is 0) or
/// points to `cap` writable bytes; `len` is NULL or points to a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_recv(
    ch: *mut ivchan_channel,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    timeout_ms: i64,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        // SAFETY: as the caller promised.
        let len = unsafe { out(len, "len") }?;
        *len = 0;
        refuse_if(
            h.peeked(),
            "recv while a peeked message is held: release it first",
        )?;
        let buf: &mut [u8] = match (buf.is_null(), cap) {
            (_, 0) => &mut [],
            (true, _) => {
                return Err(Failure::new(
                    IVCHAN_ERR_NULL_POINTER,
                    format!("buf is NULL with cap {cap}"),
                ))
            }
            // SAFETY: non-NULL, `cap` writable bytes private to the caller
            // by its contract.
            (false, _) => unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) },
        };
        match with_channel!(&mut h.inner, c => c.recv(buf, timeout(timeout_ms))) {
            Ok(n) => {
                *len = n;
                Ok(())
            }
            Err(e) => {
                if let ChannelError::Ring(ivchan_protocol::RingError::BufferTooSmall {
                    needed,
                    ..
                }) = e
                {
                    *len = needed;
                }
                Err(e.into())
            }
        }
    })
}

/// Zero-copy send, step 1: reserves room for a message of up to `len`
/// bytes in the ring, waiting up to `timeout_ms`, and stores the address
/// of its payload in `*ptr`. Write the message there, then
/// `ivchan_commit` (or `ivchan_abandon`). One reservation at a time; no
/// `ivchan_send` meanwhile.
///
/// The bytes are shared memory: the peer can read (and a hostile one
/// write) them while you fill them. Do not keep anything there you would
/// read back and trust. The pointer is valid until the commit.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `ptr` is NULL or points to a `void *`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_reserve(
    ch: *mut ivchan_channel,
    len: usize,
    timeout_ms: i64,
    ptr: *mut *mut c_void,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        // SAFETY: as the caller promised.
        let ptr = unsafe { out(ptr, "ptr") }?;
        *ptr = std::ptr::null_mut();
        refuse_if(h.reserved(), "a reservation is already held")?;
        let at = with_channel!(&mut h.inner, c => {
            let mut grant = c.reserve(len, timeout(timeout_ms))?;
            // The grant ends here without a commit: the record is written
            // again, at the same place, by `ivchan_commit`.
            grant.volatile_mut().as_mut_ptr()
        });
        h.held = Held::Reserved {
            ptr: at as usize,
            len,
        };
        *ptr = at.cast();
        Ok(())
    })
}

/// Zero-copy send, step 2: sends the first `len` bytes of the reservation
/// (at most the length reserved) and rings the peer if it sleeps.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivchan_commit(ch: *mut ivchan_channel, len: usize) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        let Held::Reserved { ptr, len: reserved } = h.held else {
            return Err(Failure::new(
                IVCHAN_ERR_GRANT_STATE,
                "commit without a reservation",
            ));
        };
        if len > reserved {
            return Err(Failure::new(
                IVCHAN_ERR_INVALID_ARGUMENT,
                format!("commit of {len} bytes, but {reserved} were reserved"),
            ));
        }
        h.held = Held::Nothing;
        with_channel!(&mut h.inner, c => {
            // Room only grows while we hold it (the consumer releases,
            // never takes back), so the same reservation is there again.
            let mut grant = c.try_reserve(reserved)?.ok_or_else(|| {
                Failure::new(IVCHAN_ERR_PROTOCOL, "the reserved room is gone")
            })?;
            if grant.volatile_mut().as_mut_ptr() as usize != ptr {
                return Err(Failure::new(
                    IVCHAN_ERR_PROTOCOL,
                    "the reservation moved (ring reset?); message not sent",
                ));
            }
            grant.stage(len).map_err(ChannelError::from)?;
            c.publish();
        });
        Ok(())
    })
}

/// Drops a held reservation without sending anything.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivchan_abandon(ch: *mut ivchan_channel) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        refuse_if(!h.reserved(), "abandon without a reservation")?;
        h.held = Held::Nothing;
        Ok(())
    })
}

/// Zero-copy receive, step 1: waits up to `timeout_ms` for the next
/// message and stores the address and length of its payload, in place,
/// in `*ptr` and `*len`. Then `ivchan_release` it. One peek at a time; no
/// `ivchan_recv` meanwhile.
///
/// **The bytes are shared memory a hostile peer may change at any moment,
/// even while you read them.** Copy what you need out once, then validate
/// and use the copy; never check a value in place and use it in place
/// again. The length is checked against the ring and is safe to use. The
/// pointer is valid until the release.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `ptr` and `len` are NULL or point to a
/// `const void *` and a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_peek(
    ch: *mut ivchan_channel,
    timeout_ms: i64,
    ptr: *mut *const c_void,
    len: *mut usize,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        // SAFETY: as the caller promised.
        let ptr = unsafe { out(ptr, "ptr") }?;
        // SAFETY: as the caller promised.
        let len = unsafe { out(len, "len") }?;
        *ptr = std::ptr::null();
        *len = 0;
        refuse_if(h.peeked(), "a peeked message is already held")?;
        let (at, n) = with_channel!(&mut h.inner, c => {
            let grant = c.peek(timeout(timeout_ms))?;
            (grant.volatile().as_ptr(), grant.len())
        });
        h.held = Held::Peeked {
            ptr: at as usize,
            len: n,
        };
        *ptr = at.cast();
        *len = n;
        Ok(())
    })
}

/// Zero-copy receive, step 2: consumes the peeked message (its room goes
/// back to the peer).
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivchan_release(ch: *mut ivchan_channel) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        let Held::Peeked { ptr, len } = h.held else {
            return Err(Failure::new(
                IVCHAN_ERR_GRANT_STATE,
                "release without a peeked message",
            ));
        };
        h.held = Held::Nothing;
        with_channel!(&mut h.inner, c => {
            let grant = c.try_peek()?.ok_or_else(|| {
                Failure::new(IVCHAN_ERR_PROTOCOL, "the peeked message is gone")
            })?;
            // The record's header is the peer's to rewrite: the message is
            // found again only if it still says what it said.
            if grant.volatile().as_ptr() as usize != ptr || grant.len() != len {
                return Err(Failure::new(
                    IVCHAN_ERR_PROTOCOL,
                    format!(
                        "the peer rewrote a published record (length {len}, now {}); not released",
                        grant.len()
                    ),
                ));
            }
            grant.release();
        });
        Ok(())
    })
}

/// Waits up to `timeout_ms` for a live peer (ready, heartbeat moving);
/// `*epoch` (if not NULL) receives its session epoch.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `epoch` is NULL or points to a
/// `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_wait_for_peer(
    ch: *mut ivchan_channel,
    timeout_ms: i64,
    epoch: *mut u64,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        let e = with_channel!(&mut h.inner, c => c.wait_for_peer(timeout(timeout_ms)))?;
        if !epoch.is_null() {
            // SAFETY: non-NULL; a `uint64_t` by the caller's contract.
            *unsafe { out(epoch, "epoch") }? = e;
        }
        Ok(())
    })
}

/// Reports the next change in the peer's life since the last poll
/// (attached, restarted, closed, silent, resumed), or
/// `IVCHAN_PEER_NONE`. Never waits. Also keeps this side's heartbeat
/// moving: a side that makes no call for longer than the peer timeout
/// looks silent to its peer.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `event` is NULL or points to an
/// `ivchan_peer_event`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_poll_peer(
    ch: *mut ivchan_channel,
    event: *mut ivchan_peer_event,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        // SAFETY: as the caller promised.
        let event = unsafe { out(event, "event") }?;
        use ivchan_peer_event_kind::*;
        *event = ivchan_peer_event {
            kind: IVCHAN_PEER_NONE,
            epoch: 0,
            old_epoch: 0,
            silent_ms: 0,
        };
        let got = with_channel!(&mut h.inner, c => c.poll_peer())?;
        match got {
            None => {}
            Some(PeerEvent::Attached { epoch }) => {
                event.kind = IVCHAN_PEER_ATTACHED;
                event.epoch = epoch;
            }
            Some(PeerEvent::Restarted {
                old_epoch,
                new_epoch,
            }) => {
                event.kind = IVCHAN_PEER_RESTARTED;
                event.epoch = new_epoch;
                event.old_epoch = old_epoch;
            }
            Some(PeerEvent::Closed) => event.kind = IVCHAN_PEER_CLOSED,
            Some(PeerEvent::Silent { since }) => {
                event.kind = IVCHAN_PEER_SILENT;
                event.silent_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
            }
            Some(PeerEvent::Resumed) => event.kind = IVCHAN_PEER_RESUMED,
        }
        Ok(())
    })
}

/// The peer's session epoch, as last observed (by `ivchan_poll_peer` and
/// the waiting calls), into `*epoch`; `IVCHAN_ERR_PEER_CLOSED` when it was
/// absent or closed, or not observed yet. For a fresh look, drain
/// `ivchan_poll_peer` first.
///
/// # Safety
///
/// `ch` is NULL or an open handle; `epoch` is NULL or points to a
/// `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ivchan_peer_epoch(
    ch: *mut ivchan_channel,
    epoch: *mut u64,
) -> ivchan_error {
    guard(|| {
        // SAFETY: as the caller promised.
        let h = unsafe { handle(ch) }?;
        // SAFETY: as the caller promised.
        let epoch = unsafe { out(epoch, "epoch") }?;
        *epoch = 0;
        let status = with_channel!(&mut h.inner, c => c.peer_status());
        match status {
            Some(s) if s.state == PeerState::Ready => {
                *epoch = s.epoch;
                Ok(())
            }
            Some(_) => Err(ChannelError::PeerClosed.into()),
            None => Err(Failure::new(
                IVCHAN_ERR_PEER_CLOSED,
                "the peer was not observed yet: call ivchan_poll_peer",
            )),
        }
    })
}
