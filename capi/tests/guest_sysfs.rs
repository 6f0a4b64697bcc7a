//! `ivchan_guest_open` against fake sysfs trees (plain files stand in for
//! the BARs), called as C calls it.

use std::ffi::{CStr, CString};
use std::ptr;

use ivchan::*;
use ivchan_guest::{select, MapOptions, Selector, VmUuid};
use ivchan_protocol::{Header, InitParams};
use ivchan_testkit::sysfs::{Dev, FakeSysfs};

const VM_A: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const VM_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

fn write_header(sys: &FakeSysfs, address: &str, uuid: &str, name: &str) {
    let bar = select(
        sys.root(),
        &Selector::Address(address.into()),
        &MapOptions::default(),
    )
    .expect("map");
    let uuid: VmUuid = uuid.parse().expect("uuid");
    let params = InitParams {
        uuid: *uuid.as_bytes(),
        name,
        ring_size: None,
    };
    Header::create(bar.region(), &params).expect("header");
}

/// Two devices: this VM's (A, channel "alpha") and another VM's (B, "beta").
fn two_vms() -> FakeSysfs {
    let sys = FakeSysfs::new();
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1e.0", VM_B, "beta");
    write_header(&sys, "0000:00:1f.0", VM_A, "alpha");
    sys.set_product_uuid(VM_A);
    sys
}

fn open(sys: &FakeSysfs, select: ivchan_select, value: Option<&str>) -> (ivchan_error, String) {
    let root = CString::new(sys.root().to_str().expect("UTF-8")).expect("path");
    let value = value.map(|v| CString::new(v).expect("value"));
    let mut ch: *mut ivchan_channel = ptr::null_mut();
    // SAFETY: valid strings and out pointer; the handle is closed below.
    let rc = unsafe {
        ivchan_guest_open(
            root.as_ptr(),
            select as u32,
            value.as_ref().map_or(ptr::null(), |v| v.as_ptr()),
            200,
            &mut ch,
        )
    };
    // SAFETY: a NUL-terminated string owned by this thread's state.
    let message = unsafe { CStr::from_ptr(ivchan_last_error_message()) }
        .to_string_lossy()
        .into_owned();
    assert_eq!(rc == ivchan_error::IVCHAN_OK, !ch.is_null(), "{message}");
    if !ch.is_null() {
        // SAFETY: an open handle, closed once.
        unsafe {
            assert!(ivchan_max_message(ch) > 0);
            ivchan_close(ch);
        }
    }
    (rc, message)
}

#[test]
fn opens_this_vms_device_by_identity_name_and_address() {
    let sys = two_vms();
    use ivchan_select::*;
    assert_eq!(
        open(&sys, IVCHAN_SELECT_IDENTITY, None).0,
        ivchan_error::IVCHAN_OK
    );
    assert_eq!(
        open(&sys, IVCHAN_SELECT_NAME, Some("alpha")).0,
        ivchan_error::IVCHAN_OK
    );
    assert_eq!(
        open(&sys, IVCHAN_SELECT_ADDRESS, Some("0000:00:1f.0")).0,
        ivchan_error::IVCHAN_OK
    );
}

#[test]
fn refuses_what_does_not_match_with_typed_codes() {
    let sys = two_vms();
    use ivchan_select::*;
    let (rc, message) = open(&sys, IVCHAN_SELECT_NAME, Some("gamma"));
    assert_eq!(rc, ivchan_error::IVCHAN_ERR_NO_DEVICE, "{message}");
    assert!(message.contains("gamma"), "{message}");
    let (rc, message) = open(&sys, IVCHAN_SELECT_ADDRESS, Some("0000:00:03.0"));
    assert_eq!(rc, ivchan_error::IVCHAN_ERR_NO_DEVICE, "{message}");
    let (rc, _) = open(&sys, IVCHAN_SELECT_ADDRESS, Some("not an address"));
    assert_eq!(rc, ivchan_error::IVCHAN_ERR_INVALID_ARGUMENT);
    // A VM with no device of its own: neither region is picked.
    sys.set_product_uuid("11111111-2222-3333-4444-555555555555");
    let (rc, message) = open(&sys, IVCHAN_SELECT_IDENTITY, None);
    assert_eq!(rc, ivchan_error::IVCHAN_ERR_NO_DEVICE, "{message}");
    // No device at all.
    let empty = FakeSysfs::new();
    assert_eq!(
        open(&empty, IVCHAN_SELECT_IDENTITY, None).0,
        ivchan_error::IVCHAN_ERR_NO_DEVICE
    );
}
