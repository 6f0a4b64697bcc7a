//! Picking the right ivshmem device: by PCI address, by channel name, or by
//! identity (the header's VM UUID equals this VM's `product_uuid`).
//!
//! With several devices present, name and identity selection look at every
//! device and return the single match; they never fall back to the first
//! device, and several matches are an error.

use std::path::Path;
use std::time::Duration;

use ivchan_protocol::{poll_until, WaitStrategy};

use crate::discovery::{discover, product_uuid};
use crate::mapping::{MapOptions, MappedBar};
use crate::{GuestError, VmUuid};

/// Which device to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The device at this PCI address (`0000:00:1f.0`); no header needed.
    Address(String),
    /// The device whose header carries this channel name.
    Name(String),
    /// The device whose header carries this VM's UUID (`product_uuid`).
    Identity,
}

impl Selector {
    fn describe(&self, vm: Option<&VmUuid>) -> String {
        match (self, vm) {
            (Self::Address(a), _) => format!("address {a}"),
            (Self::Name(n), _) => format!("channel name {n:?}"),
            (Self::Identity, Some(vm)) => format!("this VM's UUID {vm}"),
            (Self::Identity, None) => "this VM's UUID".to_owned(),
        }
    }
}

/// Finds and maps the device `selector` names (see the module docs).
///
/// [`GuestError::NoMatch`] lists why each device was passed over; its
/// `waiting` field names devices whose header is not written yet.
pub fn select(
    sysfs_root: &Path,
    selector: &Selector,
    options: &MapOptions,
) -> Result<MappedBar, GuestError> {
    let devices = discover(sysfs_root)?;
    if devices.is_empty() {
        return Err(GuestError::NoDevice {
            root: sysfs_root.to_path_buf(),
        });
    }
    if let Selector::Address(address) = selector {
        let available = devices
            .iter()
            .map(|d| d.address.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let device = devices
            .into_iter()
            .find(|d| d.address == *address)
            .ok_or_else(|| GuestError::NoSuchAddress {
                address: address.clone(),
                available,
            })?;
        return MappedBar::map(device, options);
    }
    let vm = match selector {
        Selector::Identity => Some(product_uuid(sysfs_root)?),
        _ => None,
    };
    let wanted = selector.describe(vm.as_ref());
    let mut matches = Vec::new();
    let mut reasons = Vec::new();
    let mut waiting = Vec::new();
    for device in devices {
        let address = device.address.clone();
        let bar = match MappedBar::map(device, options) {
            Ok(bar) => bar,
            // An unrelated, unusable device does not stop the search.
            Err(e @ GuestError::BarTooSmall { .. }) => {
                reasons.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let header = match bar.header() {
            Ok(header) => header,
            Err(GuestError::Layout {
                source: ivchan_protocol::LayoutError::NotInitialized,
                ..
            }) => {
                reasons.push(format!("{address}: no header yet"));
                waiting.push(address);
                continue;
            }
            Err(e) => {
                reasons.push(e.to_string());
                continue;
            }
        };
        let layout = *header.layout();
        let found = VmUuid::from_bytes(layout.uuid);
        let is_match = match (selector, &vm) {
            (Selector::Name(name), _) => layout.name_str() == Some(name.as_str()),
            (_, Some(vm)) => found == *vm,
            _ => false,
        };
        if is_match {
            matches.push(bar);
        } else {
            reasons.push(format!(
                "{address}: channel {:?} of VM {found}",
                layout.name_str().unwrap_or("(not UTF-8)")
            ));
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(GuestError::NoMatch {
            wanted,
            reasons: reasons.join("; "),
            waiting,
        }),
        _ => Err(GuestError::Ambiguous {
            wanted,
            addresses: matches
                .iter()
                .map(|b| b.device().address.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// [`select`], retrying (1 ms backoff up to 100 ms) while no device matches
/// but some have no header yet, for at most `timeout`; then
/// [`GuestError::Timeout`]. Other errors return at once.
pub fn select_waiting(
    sysfs_root: &Path,
    selector: &Selector,
    options: &MapOptions,
    timeout: Duration,
) -> Result<MappedBar, GuestError> {
    let strategy = WaitStrategy::backoff(Duration::from_millis(1), Duration::from_millis(100));
    let mut last_waiting = Vec::new();
    let found = poll_until(strategy, Some(timeout), || {
        match select(sysfs_root, selector, options) {
            Err(GuestError::NoMatch { waiting, .. }) if !waiting.is_empty() => {
                last_waiting = waiting;
                Ok(None)
            }
            other => other.map(Some),
        }
    })?;
    found.ok_or_else(|| GuestError::Timeout {
        address: last_waiting.join(", "),
        waited: timeout,
    })
}
