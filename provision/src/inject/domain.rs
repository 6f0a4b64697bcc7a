//! A parsed domain and the facts every route reads from it: its UUID, its
//! `<devices>`, the `<shmem>` devices, the `<qemu:commandline>` arguments
//! and the PCI slots in use.

use std::ops::Range;

use ivchan_protocol::VmUuid;

use crate::error::{Error, Result};
use crate::spec::{parse_pci_number, parse_uuid, CHR_ID, DEV_ID, MEM_ID};
use crate::xml::{qname, Doc, Node, QEMU_NS};

/// Starts the comment that records what the tool had to create.
pub(super) const MARKER: &str = "ivchan-provision:";

/// A parsed domain with the facts every route needs.
pub(super) struct Domain<'a> {
    pub(super) doc: Doc<'a>,
    pub(super) uuid: VmUuid,
    pub(super) devices: Option<usize>,
    q35: bool,
}

impl<'a> Domain<'a> {
    pub(super) fn parse(text: &'a str) -> Result<Domain<'a>> {
        let doc = Doc::parse(text)?;
        let root = doc.root();
        if root.local != "domain" || !root.prefix.is_empty() {
            return Err(Error::NotDomain(qname(root.prefix, root.local)));
        }
        let uuid_el = doc.child(0, "uuid").ok_or(Error::NoUuid)?;
        let uuid = parse_uuid(&doc.text_of(uuid_el)?)?;
        let devices = doc.child(0, "devices");
        let q35 = doc
            .child(0, "os")
            .and_then(|os| doc.child(os, "type"))
            .and_then(|t| doc.elements[t].attr_value("machine").ok().flatten())
            .is_some_and(|m| m.contains("q35"));
        Ok(Domain {
            doc,
            uuid,
            devices,
            q35,
        })
    }

    pub(super) fn text(&self) -> &'a str {
        self.doc.text
    }

    /// The domain's `<name>`, if it has one.
    pub(super) fn name(&self) -> Option<String> {
        let n = self.doc.child(0, "name")?;
        Some(self.doc.text_of(n).ok()?.trim().to_string())
    }

    /// `<shmem>` children of `<devices>` with their names.
    pub(super) fn shmems(&self) -> Vec<(usize, String)> {
        let Some(dev) = self.devices else {
            return Vec::new();
        };
        self.doc
            .child_elements(dev)
            .filter(|&c| {
                let e = &self.doc.elements[c];
                e.prefix.is_empty() && e.local == "shmem"
            })
            .map(|c| {
                let name = self.doc.elements[c]
                    .attr_value("name")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (c, name)
            })
            .collect()
    }

    /// Is there a `<shmem name=NAME>`?
    pub(super) fn has_shmem(&self, name: &str) -> bool {
        self.shmems().iter().any(|(_, n)| n == name)
    }

    pub(super) fn commandline(&self) -> Option<usize> {
        self.doc
            .child_elements(0)
            .find(|&c| self.doc.is_ns_element(c, QEMU_NS, "commandline"))
    }

    /// `<qemu:arg>` children of the commandline element, with their values.
    pub(super) fn args(&self, cmd: usize) -> Vec<(usize, String)> {
        self.doc
            .child_elements(cmd)
            .filter(|&c| self.doc.is_ns_element(c, QEMU_NS, "arg"))
            .map(|c| {
                let v = self.doc.elements[c]
                    .attr_value("value")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (c, v)
            })
            .collect()
    }

    /// Arg elements this tool added: values naming its ids, plus the option
    /// (`-object`, `-device`, `-chardev`) just before each.
    pub(super) fn our_args(&self, cmd: usize) -> Vec<usize> {
        let args = self.args(cmd);
        let mut ours = Vec::new();
        for (i, (idx, v)) in args.iter().enumerate() {
            if is_our_value(v) {
                if i > 0 {
                    let (pidx, pv) = &args[i - 1];
                    if matches!(pv.as_str(), "-object" | "-device" | "-chardev")
                        && !ours.contains(pidx)
                    {
                        ours.push(*pidx);
                    }
                }
                ours.push(*idx);
            }
        }
        ours
    }

    /// Does the commandline pass any ivshmem device (ours or not)?
    pub(super) fn cmdline_has_ivshmem(&self, cmd: usize) -> bool {
        let args = self.args(cmd);
        args.windows(2)
            .any(|w| w[0].1 == "-device" && w[1].1.contains("ivshmem"))
            || args.iter().any(|(_, v)| is_our_value(v))
    }

    /// The marker comment inside the commandline element, with its flags.
    pub(super) fn marker(&self, cmd: usize) -> Option<(Range<usize>, Vec<String>)> {
        self.doc.elements[cmd]
            .children
            .iter()
            .find_map(|n| match n {
                Node::Comment { span, text } => {
                    let t = self.text()[text.clone()].trim();
                    t.strip_prefix(MARKER).map(|flags| {
                        (
                            span.clone(),
                            flags
                                .split(',')
                                .map(|f| f.trim().to_string())
                                .filter(|f| !f.is_empty())
                                .collect(),
                        )
                    })
                }
                _ => None,
            })
    }

    /// Whether the machine is PCI Express (q35): its root bus takes no
    /// hotplug, slot 0x1f is the chipset's, and devices go behind ports.
    pub(super) fn is_pcie(&self) -> bool {
        self.q35
    }

    /// The `<controller type='pci'>` elements of `<devices>`.
    pub(super) fn pci_controllers(&self) -> Vec<Controller> {
        let Some(dev) = self.devices else {
            return Vec::new();
        };
        self.doc
            .child_elements(dev)
            .filter_map(|c| {
                let e = &self.doc.elements[c];
                if !e.prefix.is_empty() || e.local != "controller" {
                    return None;
                }
                if e.attr_value("type").ok().flatten().as_deref() != Some("pci") {
                    return None;
                }
                let index = e
                    .attr_value("index")
                    .ok()
                    .flatten()
                    .and_then(|v| parse_pci_number(&v))
                    .and_then(|v| u8::try_from(v).ok())?;
                let model = e.attr_value("model").ok().flatten().unwrap_or_default();
                let alias = self
                    .doc
                    .child(c, "alias")
                    .and_then(|a| self.doc.elements[a].attr_value("name").ok().flatten());
                let hotplug_off = self.doc.child(c, "target").is_some_and(|t| {
                    self.doc.elements[t]
                        .attr_value("hotplug")
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some("off")
                });
                Some(Controller {
                    el: c,
                    index,
                    model,
                    alias,
                    hotplug_off,
                })
            })
            .collect()
    }

    /// Slots in use on `bus`, with a description of the holder; elements
    /// in `ignore` (the tool's own device, when it is being updated) do
    /// not count.
    pub(super) fn used_slots(&self, bus: u8, ignore: &[usize]) -> Vec<(u8, String)> {
        let mut used = Vec::new();
        if bus == 0 {
            used.push((0, "the host bridge".to_string()));
            if self.q35 {
                used.push((
                    0x1f,
                    "the q35 chipset's ICH9 LPC/SATA/SMBus functions".to_string(),
                ));
            } else {
                used.push((1, "the PIIX3 ISA/IDE/USB bridge".to_string()));
            }
        }
        let Some(dev) = self.devices else {
            return used;
        };
        for c in self.doc.child_elements(dev) {
            if ignore.contains(&c) {
                continue;
            }
            for a in self.doc.child_elements(c) {
                let ae = &self.doc.elements[a];
                if !ae.prefix.is_empty() || ae.local != "address" {
                    continue;
                }
                if ae.attr_value("type").ok().flatten().as_deref() != Some("pci") {
                    continue;
                }
                let num = |n: &str| {
                    ae.attr_value(n)
                        .ok()
                        .flatten()
                        .map_or(Some(0), |v| parse_pci_number(&v))
                };
                if num("domain") != Some(0) || num("bus") != Some(u32::from(bus)) {
                    continue;
                }
                let Some(slot) = num("slot").and_then(|s| u8::try_from(s).ok()) else {
                    continue;
                };
                let ce = &self.doc.elements[c];
                let mut holder = format!("<{}", qname(ce.prefix, ce.local));
                for key in ["type", "name", "model", "index"] {
                    if let Ok(Some(v)) = ce.attr_value(key) {
                        holder.push_str(&format!(" {key}='{v}'"));
                    }
                }
                holder.push('>');
                used.push((slot, holder));
            }
        }
        used
    }
}

/// One `<controller type='pci'>`.
#[derive(Debug, Clone)]
pub(super) struct Controller {
    pub(super) el: usize,
    pub(super) index: u8,
    pub(super) model: String,
    /// `<alias name=…>` (a user alias `ua-…` is QEMU's id for the bus).
    pub(super) alias: Option<String>,
    /// `<target hotplug='off'/>`.
    pub(super) hotplug_off: bool,
}

impl Controller {
    /// A PCIe port: one slot (0), hot-pluggable unless turned off.
    pub(super) fn is_port(&self) -> bool {
        matches!(
            self.model.as_str(),
            "pcie-root-port" | "pcie-switch-downstream-port"
        )
    }

    /// The QEMU id of the bus behind this controller: its user alias, or
    /// `pci.INDEX` as libvirt names it.
    pub(super) fn bus_id(&self) -> String {
        match &self.alias {
            Some(a) if a.starts_with("ua-") => a.clone(),
            _ => format!("pci.{}", self.index),
        }
    }
}

fn is_our_value(v: &str) -> bool {
    [MEM_ID, DEV_ID, CHR_ID].iter().any(|id| v.contains(id))
}
