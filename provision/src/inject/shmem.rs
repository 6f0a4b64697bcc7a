//! Route 1: libvirt's `<shmem>` device, spliced into `<devices>`.

use super::domain::Domain;
use super::layout::{removal, Layout};
use super::Outcome;
use crate::error::{Error, Result};
use crate::spec::{Model, Spec};
use crate::xml::escape_attr;

/// The `<shmem>` element lines (depth, text) for this spec.
fn shmem_lines(spec: &Spec, name: &str, slot: u8, q: char) -> Vec<(usize, String)> {
    let a = |v: &str| escape_attr(v, q);
    // A validated size is a power of two of at least 1 MiB: whole MiB.
    let mib = spec.size >> 20;
    let mut lines = vec![
        (0, format!("<shmem name={q}{}{q}>", a(name))),
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
            "<address type={q}pci{q} domain={q}0x0000{q} bus={q}0x{:02x}{q} slot={q}0x{slot:02x}{q} function={q}0x0{q}/>",
            spec.bus
        ),
    ));
    lines.push((0, "</shmem>".to_string()));
    lines
}

/// The `<shmem>` element (as standalone XML) that [`inject`](super::inject()) would add, with
/// its slot resolved against the domain's devices; `None` if already present.
/// Used for live hotplug.
pub fn shmem_device_xml(text: &str, spec: &Spec) -> Result<Option<String>> {
    spec.validate()?;
    let d = Domain::parse(text)?;
    let name = spec.shmem_name(&d.uuid)?;
    if d.has_shmem(&name) {
        return Ok(None);
    }
    let slot = d.choose_slot(spec, &mut Vec::new())?;
    let layout = Layout {
        pos: 0,
        line: Some(("\n", String::new())),
        unit: "  ".to_string(),
    };
    let mut s = layout.render(&shmem_lines(spec, &name, slot, '\''));
    s.remove(0);
    s.push('\n');
    Ok(Some(s))
}

/// Route 1: add the `<shmem>` device as the last child of `<devices>`.
pub(super) fn inject(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let name = spec.shmem_name(&d.uuid)?;
    if d.has_shmem(&name) {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
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
    let slot = d.choose_slot(spec, &mut warnings)?;
    let layout = d.layout(devices);
    let add = layout.render(&shmem_lines(spec, &name, slot, d.quote()));
    Ok(Outcome::edited(
        d.text(),
        vec![(layout.pos..layout.pos, add)],
        warnings,
    ))
}

/// Remove the `<shmem>` devices named for this domain.
pub(super) fn undo(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let name = spec.shmem_name(&d.uuid)?;
    let edits: Vec<_> = d
        .shmems()
        .into_iter()
        .filter(|(_, n)| *n == name)
        .map(|(i, _)| {
            let e = &d.doc.elements[i];
            (removal(d.text(), e.start, e.end), String::new())
        })
        .collect();
    if edits.is_empty() {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
    }
    Ok(Outcome::edited(d.text(), edits, Vec::new()))
}
