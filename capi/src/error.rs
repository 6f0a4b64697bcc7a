//! Error codes, the thread's last error message, and the guard every
//! exported function runs its body in (no panic crosses into C).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ivchan_guest::GuestError;
use ivchan_host::region_file::RegionError;
use ivchan_host::HostError;
use ivchan_protocol::{ChannelError, RingError};

/// What an `ivchan_*` call returns: `IVCHAN_OK` (0) or the kind of failure.
/// `ivchan_strerror` names a code; `ivchan_last_error_message` gives the
/// details of the calling thread's last failure.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ivchan_error {
    /// Success.
    IVCHAN_OK = 0,
    /// A pointer argument that must not be NULL was NULL (or misaligned).
    IVCHAN_ERR_NULL_POINTER = 1,
    /// An argument is out of range or malformed: a UUID, a PCI address, a
    /// selector, a size, a string that is not UTF-8, a commit longer than
    /// the reservation.
    IVCHAN_ERR_INVALID_ARGUMENT = 2,
    /// Nothing happened within the timeout (with a timeout of 0: the ring
    /// is empty, or full).
    IVCHAN_ERR_TIMEOUT = 3,
    /// The message is longer than `ivchan_max_message`.
    IVCHAN_ERR_TOO_LARGE = 4,
    /// The receive buffer is smaller than the message; the message stays
    /// queued and `*len` says how long it is.
    IVCHAN_ERR_BUFFER_TOO_SMALL = 5,
    /// The peer detached cleanly.
    IVCHAN_ERR_PEER_CLOSED = 6,
    /// The peer's heartbeat stood still longer than the peer timeout.
    IVCHAN_ERR_PEER_SILENT = 7,
    /// The peer attached again (a new epoch) while the call waited:
    /// resynchronise with it.
    IVCHAN_ERR_PEER_RESTARTED = 8,
    /// The peer broke the protocol (ring positions, record headers, the
    /// region header): the channel is poisoned, every later call fails
    /// the same way at once. Close it.
    IVCHAN_ERR_PROTOCOL = 9,
    /// No ivshmem device (or region) matches what was asked for.
    IVCHAN_ERR_NO_DEVICE = 10,
    /// The region belongs to another VM.
    IVCHAN_ERR_WRONG_VM = 11,
    /// Permission denied: sysfs resources need root, a region file is not
    /// trusted (owner, group, mode, symlink), or kernel lockdown.
    IVCHAN_ERR_PERMISSION = 12,
    /// Another host agent holds the region's lock.
    IVCHAN_ERR_BUSY = 13,
    /// A system call failed.
    IVCHAN_ERR_IO = 14,
    /// A zero-copy call out of turn: commit without a reservation, release
    /// without a peek, or send/reserve (recv/peek) while a reservation
    /// (peek) is still held.
    IVCHAN_ERR_GRANT_STATE = 15,
    /// The call was cancelled.
    IVCHAN_ERR_CANCELLED = 16,
    /// A bug in ivchan: the library caught a panic. The handle may be
    /// closed, nothing else.
    IVCHAN_ERR_PANIC = 17,
    /// Any other failure (see `ivchan_last_error_message`).
    IVCHAN_ERR_OTHER = 18,
}

use ivchan_error::*;

impl ivchan_error {
    /// The code's fixed description (NUL-terminated).
    pub(crate) fn describe(self) -> &'static CStr {
        match self {
            IVCHAN_OK => c"success",
            IVCHAN_ERR_NULL_POINTER => c"null or misaligned pointer argument",
            IVCHAN_ERR_INVALID_ARGUMENT => c"invalid argument",
            IVCHAN_ERR_TIMEOUT => c"timed out",
            IVCHAN_ERR_TOO_LARGE => c"message too large for the ring",
            IVCHAN_ERR_BUFFER_TOO_SMALL => c"buffer too small for the message",
            IVCHAN_ERR_PEER_CLOSED => c"peer closed",
            IVCHAN_ERR_PEER_SILENT => c"peer silent (heartbeat stopped)",
            IVCHAN_ERR_PEER_RESTARTED => c"peer restarted",
            IVCHAN_ERR_PROTOCOL => c"protocol violation by the peer; channel poisoned",
            IVCHAN_ERR_NO_DEVICE => c"no matching ivshmem device or region",
            IVCHAN_ERR_WRONG_VM => c"region belongs to another VM",
            IVCHAN_ERR_PERMISSION => c"permission denied",
            IVCHAN_ERR_BUSY => c"region in use by another host agent",
            IVCHAN_ERR_IO => c"I/O error",
            IVCHAN_ERR_GRANT_STATE => c"zero-copy call out of turn",
            IVCHAN_ERR_CANCELLED => c"cancelled",
            IVCHAN_ERR_PANIC => c"internal error (panic caught)",
            IVCHAN_ERR_OTHER => c"error",
        }
    }
}

/// A failure on its way to C: the code and the message for
/// `ivchan_last_error_message`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: ivchan_error,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: ivchan_error, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The code of a channel error.
pub(crate) fn channel_code(e: &ChannelError) -> ivchan_error {
    match e {
        ChannelError::Ring(RingError::TooLarge { .. }) => IVCHAN_ERR_TOO_LARGE,
        ChannelError::Ring(RingError::BufferTooSmall { .. }) => IVCHAN_ERR_BUFFER_TOO_SMALL,
        ChannelError::Ring(RingError::OutOfGrant { .. }) => IVCHAN_ERR_INVALID_ARGUMENT,
        ChannelError::Ring(_) | ChannelError::Layout(_) => IVCHAN_ERR_PROTOCOL,
        ChannelError::Timeout { .. } => IVCHAN_ERR_TIMEOUT,
        ChannelError::PeerClosed => IVCHAN_ERR_PEER_CLOSED,
        ChannelError::PeerSilent { .. } => IVCHAN_ERR_PEER_SILENT,
        ChannelError::PeerRestarted { .. } => IVCHAN_ERR_PEER_RESTARTED,
        ChannelError::Cancelled => IVCHAN_ERR_CANCELLED,
    }
}

impl From<ChannelError> for Failure {
    fn from(e: ChannelError) -> Self {
        Self::new(channel_code(&e), e.to_string())
    }
}

impl From<GuestError> for Failure {
    fn from(e: GuestError) -> Self {
        let code = match &e {
            GuestError::BadAddress { .. } => IVCHAN_ERR_INVALID_ARGUMENT,
            GuestError::PermissionDenied { .. } | GuestError::Lockdown { .. } => {
                IVCHAN_ERR_PERMISSION
            }
            GuestError::Channel { source, .. } => channel_code(source),
            GuestError::NoDevice { .. }
            | GuestError::NoSuchAddress { .. }
            | GuestError::NoMatch { .. }
            | GuestError::Ambiguous { .. }
            | GuestError::BarTooSmall { .. }
            | GuestError::NoWriteCombining { .. } => IVCHAN_ERR_NO_DEVICE,
            GuestError::Layout { .. } => IVCHAN_ERR_PROTOCOL,
            GuestError::Timeout { .. } => IVCHAN_ERR_TIMEOUT,
            GuestError::WrongVm { .. } => IVCHAN_ERR_WRONG_VM,
            GuestError::Io { .. } | GuestError::BadSysfsValue { .. } => IVCHAN_ERR_IO,
            _ => IVCHAN_ERR_OTHER,
        };
        Self::new(code, e.to_string())
    }
}

fn region_code(e: &RegionError) -> ivchan_error {
    match e {
        RegionError::Uuid(_) | RegionError::BadSize { .. } => IVCHAN_ERR_INVALID_ARGUMENT,
        RegionError::Symlink { .. }
        | RegionError::NotRegular { .. }
        | RegionError::UntrustedOwner { .. }
        | RegionError::UntrustedGroup { .. }
        | RegionError::OtherWritable { .. } => IVCHAN_ERR_PERMISSION,
        RegionError::Busy { .. } => IVCHAN_ERR_BUSY,
        RegionError::Layout { .. }
        | RegionError::IncompatibleVersion { .. }
        | RegionError::UuidMismatch { .. } => IVCHAN_ERR_PROTOCOL,
        RegionError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            IVCHAN_ERR_NO_DEVICE
        }
        RegionError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            IVCHAN_ERR_PERMISSION
        }
        _ => IVCHAN_ERR_IO,
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        let code = match &e {
            HostError::Region(r) => region_code(r),
            HostError::Channel { source, .. } => channel_code(source),
            _ => IVCHAN_ERR_IO,
        };
        Self::new(code, e.to_string())
    }
}

thread_local! {
    /// The calling thread's last failure message.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last(message: &str) {
    // A message with an interior NUL keeps the part before it.
    let text = message.split('\0').next().unwrap_or_default();
    let text = CString::new(text).unwrap_or_default();
    LAST.with(|last| *last.borrow_mut() = text);
}

/// The calling thread's last failure message; valid until the thread's
/// next `ivchan_*` call.
pub(crate) fn last_message() -> *const c_char {
    LAST.with(|last| last.borrow().as_ptr())
}

/// Runs an exported function's body: a panic becomes `IVCHAN_ERR_PANIC`,
/// a failure sets the thread's last message; success clears it.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> ivchan_error {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last("");
            IVCHAN_OK
        }
        Ok(Err(failure)) => {
            set_last(&failure.message);
            failure.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last(&format!("internal error: panic in ivchan: {what}"));
            IVCHAN_ERR_PANIC
        }
    }
}

/// The code an `int` from C names, if any.
pub(crate) fn code_from_int(code: i32) -> Option<ivchan_error> {
    const ALL: [ivchan_error; 19] = [
        IVCHAN_OK,
        IVCHAN_ERR_NULL_POINTER,
        IVCHAN_ERR_INVALID_ARGUMENT,
        IVCHAN_ERR_TIMEOUT,
        IVCHAN_ERR_TOO_LARGE,
        IVCHAN_ERR_BUFFER_TOO_SMALL,
        IVCHAN_ERR_PEER_CLOSED,
        IVCHAN_ERR_PEER_SILENT,
        IVCHAN_ERR_PEER_RESTARTED,
        IVCHAN_ERR_PROTOCOL,
        IVCHAN_ERR_NO_DEVICE,
        IVCHAN_ERR_WRONG_VM,
        IVCHAN_ERR_PERMISSION,
        IVCHAN_ERR_BUSY,
        IVCHAN_ERR_IO,
        IVCHAN_ERR_GRANT_STATE,
        IVCHAN_ERR_CANCELLED,
        IVCHAN_ERR_PANIC,
        IVCHAN_ERR_OTHER,
    ];
    ALL.into_iter().find(|c| *c as i32 == code)
}
