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

/// Checks and normalises a PCI address: `0000:00:1f.0`, or `00:1f.0` (domain
/// 0), hex digits in either case; returned as sysfs spells it (lower case,
/// with the domain).
pub fn parse_pci_address(text: &str) -> Result<String, GuestError> {
    let bad = || GuestError::BadAddress {
        text: text.to_owned(),
    };
    let lower = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split(':').collect();
    let (domain, bus, rest) = match parts.as_slice() {
        [domain, bus, rest] => (*domain, *bus, *rest),
        [bus, rest] => ("0000", *bus, *rest),
        _ => return Err(bad()),
    };
    let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
    let field = |s: &str, width: usize, max: u32| -> Result<u32, GuestError> {
        if s.is_empty() || s.len() > width || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(s, 16)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(bad)
    };
    let domain = field(domain, 4, 0xffff)?;
    let bus = field(bus, 2, 0xff)?;
    let slot = field(slot, 2, 0x1f)?;
    let function = field(function, 1, 7)?;
    Ok(format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"))
}

/// Whether mapping failed because a sysfs file of the device is missing:
/// a hotplugged device whose directory is there before its `resource*`
/// and `enable` files.
fn still_appearing(e: &GuestError) -> bool {
    matches!(e, GuestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
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
    // A malformed address is the caller's mistake, not a missing device.
    let wanted_address = match selector {
        Selector::Address(text) => Some(parse_pci_address(text)?),
        _ => None,
    };
    let devices = discover(sysfs_root)?;
    if devices.is_empty() {
        return Err(GuestError::NoDevice {
            root: sysfs_root.to_path_buf(),
        });
    }
    if let Some(address) = &wanted_address {
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
        return MappedBar::map(device, options).map_err(|e| {
            if still_appearing(&e) {
                GuestError::NoMatch {
                    wanted: format!("address {address}"),
                    reasons: format!("{address}: {e}"),
                    waiting: vec![address.clone()],
                }
            } else {
                e
            }
        });
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
            // Hotplug: the device's directory shows up a moment before its
            // resource files; a later attempt may map it.
            Err(e) if still_appearing(&e) => {
                log::debug!("{address}: still appearing: {e}");
                reasons.push(format!("{address}: still appearing ({e})"));
                waiting.push(address);
                continue;
            }
            // An unrelated, unusable device does not stop the search.
            Err(e @ GuestError::BarTooSmall { .. }) => {
                log::debug!("{address}: passed over: {e}");
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
                log::debug!("{address}: no header yet");
                reasons.push(format!("{address}: no header yet"));
                waiting.push(address);
                continue;
            }
            Err(e) => {
                log::debug!("{address}: passed over: {e}");
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
        let what = format!(
            "{address}: channel {:?} of VM {found}",
            layout.name_str().unwrap_or("(not UTF-8)")
        );
        if is_match {
            log::debug!("{what}: matches {wanted}");
            matches.push(bar);
        } else {
            log::debug!("{what}: passed over (looking for {wanted})");
            reasons.push(what);
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

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn pci_addresses_are_checked_and_normalised() {
        assert_eq!(parse_pci_address("0000:00:1f.0").unwrap(), "0000:00:1f.0");
        assert_eq!(parse_pci_address("00:1F.0").unwrap(), "0000:00:1f.0");
        assert_eq!(parse_pci_address("0001:0a:03.7").unwrap(), "0001:0a:03.7");
        for bad in [
            "garbage",
            "",
            "0000:00:1f",
            "0000:00:20.0",
            "00:1f.8",
            "0:0:0:0.0",
            "00:1g.0",
        ] {
            let err = parse_pci_address(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not a PCI address: expected DOMAIN:BUS:SLOT.FUNCTION in hex, e.g. 0000:00:1f.0")
            );
        }
    }
}
