//! Where the device goes: which PCI bus and slot, and whether a
//! `pcie-root-port` must be added for it.
//!
//! On i440fx (`pc`) machines the device goes to bus 0, slot 0x1f, unless
//! told otherwise. On q35 the root bus (`pcie.0`) takes no hotplug and its
//! slot 0x1f is the chipset's, so by default a `<shmem>` goes to slot 0 of
//! a free `pcie-root-port` (nothing on it, hotplug not turned off), and a
//! new port is added for it when none is free. A live hotplug cannot add a
//! port (libvirt cannot hotplug controllers), so it refuses instead. The
//! `<qemu:commandline>` route's device is invisible to libvirt, which would
//! put one of its own devices on a port that looks free, so on q35 it goes
//! to the highest free slot of `pcie.0` (libvirt fills that bus from the
//! bottom). An explicit `--bus`/`--slot` is always honoured or refused.

use super::domain::{Controller, Domain};
use crate::error::{Error, Result};
use crate::spec::Spec;

/// The user alias of a `pcie-root-port` the tool adds; libvirt keeps it
/// (and gives it to QEMU as the bus id), so the tool finds the port again
/// after `virsh define` and `dumpxml`.
pub const PORT_ALIAS: &str = "ua-ivchan-port";

/// A place for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Bus number in the `<address>`.
    pub bus: u8,
    /// Slot on that bus.
    pub slot: u8,
    /// QEMU's id of the bus (`None`: the root bus).
    pub bus_id: Option<String>,
    /// Index of a `pcie-root-port` to add for the device.
    pub add_port: Option<u8>,
    /// What the place is, for the operator.
    pub what: String,
}

impl Placement {
    /// `0000:BB:SS.0 (what)`, the address the tool reports.
    pub fn describe(&self) -> String {
        format!(
            "PCI address 0000:{:02x}:{:02x}.0 ({})",
            self.bus, self.slot, self.what
        )
    }
}

/// Whether the placement is for a running domain (hotplug) or a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// A `<shmem>` in a definition.
    Cold,
    /// A `<shmem>` hotplugged into a running domain.
    Live,
    /// QEMU arguments libvirt does not see (`<qemu:commandline>`).
    Argv,
}

impl Domain<'_> {
    /// Choose the device's place (see the module docs). Elements in
    /// `ignore` (the tool's own device, when updating it) do not count as
    /// taking a slot.
    pub(super) fn place(
        &self,
        spec: &Spec,
        when: When,
        ignore: &[usize],
        warnings: &mut Vec<String>,
    ) -> Result<Placement> {
        let controllers = self.pci_controllers();
        if self.is_pcie() && spec.bus.is_none() && spec.slot.is_none() && when != When::Argv {
            let free = controllers
                .iter()
                .filter(|c| c.is_port() && !c.hotplug_off)
                .filter(|c| self.used_slots(c.index, ignore).is_empty())
                .max_by_key(|c| c.index);
            if let Some(c) = free {
                return Ok(Placement {
                    bus: c.index,
                    slot: 0,
                    bus_id: Some(c.bus_id()),
                    add_port: None,
                    what: format!("the free {} with index {}", c.model, c.index),
                });
            }
            if when == When::Live {
                return Err(Error::NoHotplugPort {
                    dom: self.name().unwrap_or_else(|| self.uuid.to_string()),
                });
            }
            let index = self.next_controller_index(&controllers);
            return Ok(Placement {
                bus: index,
                slot: 0,
                bus_id: Some(PORT_ALIAS.to_string()),
                add_port: Some(index),
                what: format!("a pcie-root-port with index {index} added for it"),
            });
        }
        let bus = spec.bus_or_default();
        let ctl = controllers.iter().find(|c| c.index == bus);
        if bus != 0 && ctl.is_none() {
            let mut have: Vec<String> = controllers
                .iter()
                .map(|c| format!("{} ({})", c.index, c.model))
                .collect();
            if !controllers.iter().any(|c| c.index == 0) {
                have.insert(0, "0 (the root bus)".into());
            }
            return Err(Error::NoSuchBus {
                bus,
                have: have.join(", "),
            });
        }
        let bus_id = ctl.filter(|_| bus != 0).map(Controller::bus_id);
        let used = self.used_slots(bus, ignore);
        let holder = |s: u8| used.iter().find(|(u, _)| *u == s).map(|(_, h)| h.clone());
        if let Some(port) = ctl.filter(|c| c.is_port()) {
            let slot = spec.slot.unwrap_or(0);
            if slot != 0 {
                return Err(Error::PortHasOneSlot {
                    bus,
                    model: port.model.clone(),
                    slot,
                });
            }
            if let Some(h) = holder(0) {
                return Err(Error::SlotConflict {
                    bus,
                    slot,
                    holder: h,
                });
            }
            return Ok(Placement {
                bus,
                slot,
                bus_id,
                add_port: None,
                what: format!("the {} with index {bus}", port.model),
            });
        }
        let wanted = spec.slot_or_default();
        let Some(h) = holder(wanted) else {
            return Ok(Placement {
                bus,
                slot: wanted,
                bus_id,
                add_port: None,
                what: if bus == 0 {
                    "the root bus".into()
                } else {
                    format!("bus {bus}")
                },
            });
        };
        // An explicit slot is refused when taken, unless told to pick; on
        // q35, bus 0 without a slot means "a free one" (0x1f is the chipset's).
        let pick = spec.pick_free_slot || (spec.slot.is_none() && self.is_pcie());
        if !pick {
            return Err(Error::SlotConflict {
                bus,
                slot: wanted,
                holder: h,
            });
        }
        // Slot 2 is left to the primary video device, which libvirt places there.
        let top = if self.is_pcie() && bus == 0 {
            0x1e
        } else {
            0x1f
        };
        let free = (3u8..=top).rev().find(|&s| holder(s).is_none());
        match free {
            Some(s) => {
                if spec.slot.is_some() || !self.is_pcie() {
                    warnings.push(format!(
                        "PCI slot 0x{wanted:02x} is used by {h}; using free slot 0x{s:02x} instead"
                    ));
                }
                Ok(Placement {
                    bus,
                    slot: s,
                    bus_id,
                    add_port: None,
                    what: if bus == 0 {
                        "the root bus".into()
                    } else {
                        format!("bus {bus}")
                    },
                })
            }
            None => Err(Error::NoFreeSlot(bus)),
        }
    }

    /// The lowest controller index above every bus in use. libvirt fills
    /// gaps below a controller's index with ports of its own, so the next
    /// index after the highest one wastes none.
    fn next_controller_index(&self, controllers: &[Controller]) -> u8 {
        let top_ctl = controllers.iter().map(|c| c.index).max().unwrap_or(0);
        let top_bus = (0..=u8::MAX)
            .rev()
            .find(|&b| b > top_ctl && !self.used_slots(b, &[]).is_empty())
            .unwrap_or(0);
        top_ctl.max(top_bus).saturating_add(1)
    }
}
