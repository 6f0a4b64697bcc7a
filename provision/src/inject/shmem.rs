//! Route 1: libvirt's `<shmem>` device, spliced into `<devices>`.

use super::domain::Domain;
use super::layout::{removal, Layout};
use super::placement::{Placement, When, PORT_ALIAS};
use super::Outcome;
use crate::error::{Error, Result};
use crate::spec::{parse_pci_number, Model, Spec};
use crate::xml::escape_attr;

/// The `<shmem>` element lines (depth, text) for this spec.
fn shmem_lines(spec: &Spec, name: &str, place: &Placement, q: char) -> Vec<(usize, String)> {
    let a = |v: &str| escape_attr(v, q);
    // A validated size is a power of two of at least 1 MiB: whole MiB.
    let mib = spec.size >> 20;
    let mut lines = vec![
        (
            0,
            format!(
                "<shmem name={q}{}{q} role={q}{}{q}>",
                a(name),
                spec.role.name()
            ),
        ),
        (1, format!("<model type={q}{}{q}/>", spec.model.name())),
    ];
    if matches!(spec.model, Model::Plain) {
        lines.push((1, format!("<size unit={q}M{q}>{mib}</size>")));
    }
    if let Model::Doorbell { server, vectors } = &spec.model {
        // No <size>: the region comes from the ivshmem server's fd, and
        // libvirt refuses a size for ivshmem-doorbell ("does not support
        // size setting").
        lines.push((
            1,
            format!("<server path={q}{}{q}/>", a(&server.to_string_lossy())),
        ));
        lines.push((
            1,
            format!("<msi vectors={q}{vectors}{q} ioeventfd={q}on{q}/>"),
        ));
    }
    lines.push((
        1,
        format!(
            "<address type={q}pci{q} domain={q}0x0000{q} bus={q}0x{:02x}{q} slot={q}0x{:02x}{q} function={q}0x0{q}/>",
            place.bus, place.slot
        ),
    ));
    lines.push((0, "</shmem>".to_string()));
    lines
}

/// The `<controller>` lines of a `pcie-root-port` the tool adds.
pub(super) fn port_lines(index: u8, q: char) -> Vec<(usize, String)> {
    vec![
        (
            0,
            format!("<controller type={q}pci{q} index={q}{index}{q} model={q}pcie-root-port{q}>"),
        ),
        (1, format!("<alias name={q}{PORT_ALIAS}{q}/>")),
        (0, "</controller>".to_string()),
    ]
}

/// The device a live hotplug attaches, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotplugDevice {
    /// The `<shmem>` element, standalone.
    pub xml: String,
    /// Where it goes.
    pub placement: Placement,
    /// Things the operator should know (a BAR that may not fit).
    pub warnings: Vec<String>,
}

/// The prefetchable memory SeaBIOS reserves behind an empty hot-pluggable
/// PCIe port (its `PCI_BRIDGE_MEM_MIN`, when QEMU gives no reservation
/// hint); a BAR hot-plugged behind it must fit in it.
pub const PORT_WINDOW: u64 = 2 << 20;

/// The warning for a region that may not fit behind a hot-plugged port.
pub fn port_window_warning(size: u64) -> Option<String> {
    (size > PORT_WINDOW).then(|| {
        format!(
            "the region ({} MiB) is larger than the 2 MiB of prefetchable memory SeaBIOS reserves behind an empty pcie-root-port: the guest kernel may then report \"BAR 2 … can't assign; no space\" and have no resource2 for the device (measured with QEMU 7.2 and SeaBIOS). For live hotplug on q35 use --size 2M (or 1M), or add the device to the definition (`apply`) and restart the domain, where the firmware sizes the port for it",
            size >> 20
        )
    })
}

/// The `<shmem>` element (as standalone XML) to hotplug into the running
/// domain whose live XML is `text`, placed where hotplug reaches it: on
/// i440fx bus 0, on q35 a free `pcie-root-port` ([`Error::NoHotplugPort`]
/// when there is none: libvirt cannot add one live). `None` if the domain
/// already has it.
pub fn shmem_device_xml(text: &str, spec: &Spec) -> Result<Option<HotplugDevice>> {
    spec.validate()?;
    let d = Domain::parse(text)?;
    let name = spec.shmem_name(&d.uuid)?;
    if d.has_shmem(&name) {
        return Ok(None);
    }
    let placement = d.place(spec, When::Live, &[], &mut Vec::new())?;
    let on_port = d
        .pci_controllers()
        .iter()
        .any(|c| c.index == placement.bus && c.is_port());
    let warnings = if on_port {
        port_window_warning(spec.size).into_iter().collect()
    } else {
        Vec::new()
    };
    let layout = Layout {
        pos: 0,
        line: Some(("\n", String::new())),
        unit: "  ".to_string(),
    };
    let mut s = layout.render(&shmem_lines(spec, &name, &placement, '\''));
    s.remove(0);
    s.push('\n');
    Ok(Some(HotplugDevice {
        xml: s,
        placement,
        warnings,
    }))
}

/// What an existing `<shmem>` says.
#[derive(Debug, Default)]
struct Existing {
    role: Option<String>,
    model: Option<String>,
    bytes: Option<u64>,
    server: Option<String>,
    vectors: Option<u32>,
    bus: Option<u8>,
    slot: Option<u8>,
}

fn scale(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "b" | "bytes" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1_000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return None,
    })
}

impl Existing {
    fn read(d: &Domain<'_>, el: usize) -> Existing {
        let attr = |child: &str, key: &str| {
            d.doc
                .child(el, child)
                .and_then(|c| d.doc.elements[c].attr_value(key).ok().flatten())
        };
        let bytes = d.doc.child(el, "size").and_then(|c| {
            let n: u64 = d.doc.text_of(c).ok()?.trim().parse().ok()?;
            let unit = d.doc.elements[c].attr_value("unit").ok().flatten();
            n.checked_mul(scale(unit.as_deref().unwrap_or(""))?)
        });
        let num = |key: &str| {
            attr("address", key)
                .and_then(|v| parse_pci_number(&v))
                .and_then(|v| u8::try_from(v).ok())
        };
        Existing {
            role: d.doc.elements[el].attr_value("role").ok().flatten(),
            model: attr("model", "type"),
            bytes,
            server: attr("server", "path"),
            vectors: attr("msi", "vectors").and_then(|v| v.parse().ok()),
            bus: num("bus"),
            slot: num("slot"),
        }
    }

    /// What differs from `spec`, as `what: have -> want` items.
    fn differences(&self, spec: &Spec) -> Vec<String> {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        let mut out = Vec::new();
        if self.model.as_deref() != Some(spec.model.name()) {
            out.push(format!(
                "model: {} -> {}",
                show(&self.model),
                spec.model.name()
            ));
        }
        if self.role.as_deref() != Some(spec.role.name()) {
            out.push(format!(
                "role: {} -> {}",
                show(&self.role),
                spec.role.name()
            ));
        }
        match &spec.model {
            Model::Plain => {
                if self.bytes != Some(spec.size) {
                    let have = self
                        .bytes
                        .map_or_else(|| "none".to_string(), |b| format!("{b} bytes"));
                    out.push(format!("size: {have} -> {} bytes", spec.size));
                }
            }
            Model::Doorbell { server, vectors } => {
                let want = server.to_string_lossy();
                if self.server.as_deref() != Some(&*want) {
                    out.push(format!("server: {} -> {want}", show(&self.server)));
                }
                if self.vectors != Some(*vectors) {
                    let have = self.vectors.map_or("none".into(), |v| v.to_string());
                    out.push(format!("vectors: {have} -> {vectors}"));
                }
            }
        }
        if let Some(bus) = spec.bus.filter(|b| Some(*b) != self.bus) {
            let have = self.bus.map_or("none".into(), |b| format!("0x{b:02x}"));
            out.push(format!("bus: {have} -> 0x{bus:02x}"));
        }
        if let Some(slot) = spec.slot.filter(|s| Some(*s) != self.slot) {
            let have = self.slot.map_or("none".into(), |s| format!("0x{s:02x}"));
            out.push(format!("slot: {have} -> 0x{slot:02x}"));
        }
        out
    }
}

/// Route 1: add the `<shmem>` device as the last child of `<devices>`
/// (after a `pcie-root-port` for it, on q35 when none is free), or update
/// the tool's `<shmem>` in place when the spec changed.
pub(super) fn inject(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let name = spec.shmem_name(&d.uuid)?;
    if let Some((el, _)) = d.shmems().into_iter().find(|(_, n)| *n == name) {
        return update(d, spec, &name, el);
    }
    if d.commandline().is_some_and(|c| d.cmdline_has_ivshmem(c)) {
        return Err(Error::OtherRoute("<qemu:commandline>"));
    }
    let devices = d.devices.ok_or(Error::NoDevices)?;
    if d.doc.elements[devices].self_closing {
        return Err(Error::Unsupported(
            "the domain's <devices/> element is empty and self-closing; give it at least an <emulator> first".into(),
        ));
    }
    let mut warnings = Vec::new();
    let place = d.place(spec, When::Cold, &[], &mut warnings)?;
    let layout = d.layout(devices);
    let q = d.quote();
    let mut add = String::new();
    if let Some(index) = place.add_port {
        add.push_str(&layout.render(&port_lines(index, q)));
    }
    add.push_str(&layout.render(&shmem_lines(spec, &name, &place, q)));
    let mut o = Outcome::edited(d.text(), vec![(layout.pos..layout.pos, add)], warnings);
    o.placement = Some(place);
    Ok(o)
}

/// The tool's `<shmem>` is there: nothing to do if it matches the spec,
/// else rewrite it in place (moving it only if an explicit bus or slot
/// changed), with the differences reported.
fn update(d: &Domain<'_>, spec: &Spec, name: &str, el: usize) -> Result<Outcome> {
    let have = Existing::read(d, el);
    // With --pick-free-slot, a requested slot that another device holds was
    // never going to be used: where the device went instead is right.
    let mut spec = spec.clone();
    if let Some(slot) = spec.slot.filter(|_| spec.pick_free_slot) {
        let bus = spec.bus_or_default();
        if d.used_slots(bus, &[el]).iter().any(|(s, _)| *s == slot) && have.bus == Some(bus) {
            spec.slot = None;
        }
    }
    let spec = &spec;
    let diff = have.differences(spec);
    if diff.is_empty() {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
    }
    let mut warnings = vec![format!(
        "updating the existing <shmem name='{name}'>: {}",
        diff.join(", ")
    )];
    let moved = spec.bus.is_some_and(|b| Some(b) != have.bus)
        || spec.slot.is_some_and(|s| Some(s) != have.slot);
    let place = match (moved, have.bus, have.slot) {
        (false, Some(bus), Some(slot)) => Placement {
            bus,
            slot,
            bus_id: None,
            add_port: None,
            what: "where it was".into(),
        },
        _ => d.place(spec, When::Cold, &[el], &mut warnings)?,
    };
    let e = &d.doc.elements[el];
    let indent = d.line_indent(e.start);
    let layout = Layout {
        pos: e.start,
        line: indent.clone().map(|i| (d.newline(), i)),
        unit: d.unit(),
    };
    let mut text = layout.render(&shmem_lines(spec, name, &place, d.quote()));
    if let Some(i) = &indent {
        // render() starts with the line break and indentation already there.
        text.drain(..d.newline().len() + i.len());
    }
    let mut edits = vec![(e.start..e.end, text)];
    if let Some(index) = place.add_port {
        let devices = d.devices.ok_or(Error::NoDevices)?;
        let l = d.layout(devices);
        edits.push((l.pos..l.pos, l.render(&port_lines(index, d.quote()))));
    }
    let mut o = Outcome::edited(d.text(), edits, warnings);
    o.placement = Some(place);
    Ok(o)
}

/// Remove the `<shmem>` devices named for this domain, and a
/// `pcie-root-port` the tool added when nothing else is behind it.
pub(super) fn undo(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let name = spec.shmem_name(&d.uuid)?;
    let ours: Vec<usize> = d
        .shmems()
        .into_iter()
        .filter(|(_, n)| *n == name)
        .map(|(i, _)| i)
        .collect();
    if ours.is_empty() {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
    }
    let mut edits: Vec<_> = ours
        .iter()
        .map(|&i| {
            let e = &d.doc.elements[i];
            (removal(d.text(), e.start, e.end), String::new())
        })
        .collect();
    edits.extend(d.our_ports(&ours));
    Ok(Outcome::edited(d.text(), edits, Vec::new()))
}

impl Domain<'_> {
    /// Removals of the `pcie-root-port`s the tool added that nothing but
    /// `going` (elements being removed) sits behind.
    pub(super) fn our_ports(&self, going: &[usize]) -> Vec<(std::ops::Range<usize>, String)> {
        self.pci_controllers()
            .into_iter()
            .filter(|c| c.alias.as_deref() == Some(PORT_ALIAS))
            .filter(|c| self.used_slots(c.index, going).is_empty())
            .map(|c| {
                let e = &self.doc.elements[c.el];
                (removal(self.text(), e.start, e.end), String::new())
            })
            .collect()
    }
}
