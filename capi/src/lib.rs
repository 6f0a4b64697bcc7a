//! ivchan for C: `libivchan.so` / `libivchan.a` and `include/ivchan.h`.
//!
//! The host's and the guest's ends of an ivchan channel (QEMU's ivshmem
//! device, [`PROTOCOL.md`](https://github.com/ivchan-rs/ivchan/blob/main/protocol/docs/PROTOCOL.md))
//! behind one opaque handle, `ivchan_channel`:
//!
//! - open: `ivchan_guest_open` (the device under sysfs, by this VM's
//!   identity, a PCI address or a channel name), `ivchan_guest_attach_file`
//!   (a host region file mapped the way a guest maps BAR2: tests without a
//!   VM), `ivchan_host_open` (a VM's region file, opened or created);
//! - copy: `ivchan_send`, `ivchan_recv`, with timeouts in milliseconds
//!   (negative: no limit; 0: try once);
//! - zero-copy: `ivchan_reserve` → pointer → `ivchan_commit`;
//!   `ivchan_peek` → pointer + length → `ivchan_release`;
//! - the peer: `ivchan_wait_for_peer`, `ivchan_poll_peer`,
//!   `ivchan_peer_epoch`;
//! - errors: every call returns an `ivchan_error`; `ivchan_strerror` names
//!   it and `ivchan_last_error_message` gives the thread's last details.
//!
//! At the boundary: no panic crosses into C (each call catches it and
//! returns `IVCHAN_ERR_PANIC`), every pointer is checked for NULL and
//! alignment, every length against the channel. A handle is used by one
//! thread at a time (it may move between threads).
//!
//! **Bytes in place are shared memory.** The pointers `ivchan_peek` and
//! `ivchan_reserve` return point into the region, which the peer can write
//! at any moment (the host does not trust the guest, and a guest should not
//! trust the host either). Copy the bytes out once, then validate and use
//! the copy; never check a length in place and then use it in place.

#![warn(missing_docs)]

mod channel;
mod error;

use std::ffi::c_char;

pub use channel::*;
pub use error::ivchan_error;

/// The library's version, `MAJOR.MINOR.PATCH` (the crate's), NUL-terminated.
const VERSION: &std::ffi::CStr = {
    let bytes = concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes();
    match std::ffi::CStr::from_bytes_with_nul(bytes) {
        Ok(v) => v,
        Err(_) => panic!("version has a NUL"),
    }
};

/// The library's version as a string (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn ivchan_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The region protocol version this library speaks: `major << 16 | minor`
/// (`0x00010001` for 1.1).
#[no_mangle]
pub extern "C" fn ivchan_protocol_version() -> u32 {
    u32::from(ivchan_protocol::layout::VERSION_MAJOR) << 16
        | u32::from(ivchan_protocol::layout::VERSION_MINOR)
}

/// A static description of `code` (never NULL; unknown codes get
/// "unknown error").
#[no_mangle]
pub extern "C" fn ivchan_strerror(code: i32) -> *const c_char {
    // Taken as an int: C may pass any value.
    error::code_from_int(code).map_or(c"unknown error".as_ptr(), |c| c.describe().as_ptr())
}

/// The calling thread's last failure in detail (which file, which device,
/// what the peer wrote), or `""` after a success. Valid until the thread's
/// next `ivchan_*` call; never NULL.
#[no_mangle]
pub extern "C" fn ivchan_last_error_message() -> *const c_char {
    error::last_message()
}
