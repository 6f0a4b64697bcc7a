//! Route 2: `<qemu:commandline>` passthrough of the QEMU arguments. What
//! the tool had to create (the element, its namespace declaration, the
//! contents of a self-closing element) is recorded in a marker comment so
//! that undo removes exactly that.

use super::domain::{Domain, MARKER};
use super::layout::{is_ws, removal, Layout};
use super::placement::{Placement, When};
use super::Outcome;
use crate::error::{Error, Result};
use crate::spec::{parse_pci_number, Spec, DEV_ID};
use crate::xml::{escape_attr, qname, Node, QEMU_NS};

/// The warning printed for the `<qemu:commandline>` route.
pub const TAINT_ARGV_WARNING: &str = "libvirt marks a domain with <qemu:commandline> as tainted (\"custom-argv\"): it is logged and such domains are unsupported by some distributions; prefer the <shmem> route";

/// Where the tool's `-device` argument puts the device: its `bus` (QEMU
/// id, `None` for the root bus) and `addr` slot, in JSON or key=value form.
fn device_address(value: &str) -> Option<(Option<String>, u8)> {
    let (bus, addr) = if value.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        (
            v.get("bus").and_then(|b| b.as_str()).map(str::to_string),
            v.get("addr")?.as_str()?.to_string(),
        )
    } else {
        let kv = |k: &str| {
            value
                .split(',')
                .find_map(|p| p.strip_prefix(k)?.strip_prefix('=').map(str::to_string))
        };
        (kv("bus"), kv("addr")?)
    };
    let slot = parse_pci_number(addr.split('.').next()?)?;
    Some((bus, u8::try_from(slot).ok()?))
}

/// Route 2: add the QEMU arguments to `<qemu:commandline>`, creating the
/// element and declaring its namespace if needed; or update the tool's
/// arguments in place when the spec changed.
pub(super) fn inject(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let warnings = vec![TAINT_ARGV_WARNING.to_string()];
    let cmd = d.commandline();
    if let Some(c) = cmd {
        if !d.our_args(c).is_empty() {
            return update(d, spec, c, warnings);
        }
        if d.cmdline_has_ivshmem(c) {
            return Err(Error::OtherRoute(
                "<qemu:commandline> (an ivshmem device not added by this tool)",
            ));
        }
    }
    if let Ok(name) = spec.shmem_name(&d.uuid) {
        if d.has_shmem(&name) {
            return Err(Error::OtherRoute("<shmem>"));
        }
    }
    let mut warnings = warnings;
    let place = d.place(spec, When::Argv, &[], &mut warnings)?;
    let q = d.quote();
    let root = d.doc.root();
    let mut edits = Vec::new();
    let mut flags: Vec<&str> = Vec::new();

    // Which prefix is bound to the qemu namespace? An existing element's
    // own (possibly none: a default namespace declared on it), else one
    // declared on the root, else a new declaration.
    let prefix = match cmd {
        Some(c) => d.doc.elements[c].prefix.to_string(),
        None => {
            let bound = root
                .attrs
                .iter()
                .find(|a| a.prefix == "xmlns" && a.value().ok().as_deref() == Some(QEMU_NS));
            match bound {
                Some(a) => a.local.to_string(),
                None => {
                    let taken = |p: &str| {
                        root.attrs
                            .iter()
                            .any(|a| a.prefix == "xmlns" && a.local == p)
                    };
                    let p = if taken("qemu") { "ivchanqemu" } else { "qemu" };
                    let pos = root
                        .attrs
                        .last()
                        .map_or(root.start + 1 + qname(root.prefix, root.local).len(), |a| {
                            a.span.end
                        });
                    edits.push((pos..pos, format!(" xmlns:{p}={q}{QEMU_NS}{q}")));
                    flags.push("ns");
                    p.to_string()
                }
            }
        }
    };
    let args: Vec<String> = spec
        .qemu_args(&d.uuid, place.bus_id.as_deref(), place.slot)
        .iter()
        .map(|v| arg_el(&prefix, v, q))
        .collect();

    match cmd {
        None => {
            flags.push("elem");
            flags.reverse();
            let layout = d.layout(0);
            let mut lines = vec![(0, format!("<{}>", qname(&prefix, "commandline")))];
            lines.push((1, format!("<!--{MARKER}{}-->", flags.join(","))));
            lines.extend(args.into_iter().map(|a| (1, a)));
            lines.push((0, format!("</{}>", qname(&prefix, "commandline"))));
            edits.push((layout.pos..layout.pos, layout.render(&lines)));
        }
        Some(c) if d.doc.elements[c].self_closing => {
            let e = &d.doc.elements[c];
            let own_indent = d.line_indent(e.start);
            let unit = d.unit();
            let child = Layout {
                pos: 0,
                line: own_indent
                    .clone()
                    .map(|i| (d.newline(), format!("{i}{unit}"))),
                unit: unit.clone(),
            };
            let mut lines = vec![(0, format!("<!--{MARKER}selfclosing-->"))];
            lines.extend(args.into_iter().map(|a| (0, a)));
            let mut add = String::from(">");
            add.push_str(&child.render(&lines));
            if let Some(i) = own_indent {
                add.push_str(d.newline());
                add.push_str(&i);
            }
            add.push_str(&format!("</{}>", qname(&prefix, "commandline")));
            // `/>`, or `/ >`… : replace from the `/` on.
            let slash = d.text()[..e.end].rfind('/').unwrap_or(e.end - 2);
            edits.push((slash..e.end, add));
        }
        Some(c) => {
            let layout = d.layout(c);
            let lines: Vec<_> = args.into_iter().map(|a| (0, a)).collect();
            edits.push((layout.pos..layout.pos, layout.render(&lines)));
        }
    }
    let mut o = Outcome::edited(d.text(), edits, warnings);
    o.placement = Some(place);
    Ok(o)
}

/// One `<PREFIX:arg value='…'/>` (`<arg …/>` under a default namespace).
fn arg_el(prefix: &str, value: &str, q: char) -> String {
    format!(
        "<{} value={q}{}{q}/>",
        qname(prefix, "arg"),
        escape_attr(value, q)
    )
}

/// The tool's arguments are there: nothing to do if they are what `spec`
/// gives, else rewrite them in place (keeping the device's bus and slot
/// unless an explicit one changed), with the differences reported.
fn update(d: &Domain<'_>, spec: &Spec, c: usize, mut warnings: Vec<String>) -> Result<Outcome> {
    let ours = d.our_args(c);
    let values: Vec<String> = d
        .args(c)
        .into_iter()
        .filter(|(i, _)| ours.contains(i))
        .map(|(_, v)| v)
        .collect();
    let cannot = |why: String| Error::CannotUpdate {
        route: "<qemu:commandline>",
        why,
    };
    let old_place = values
        .iter()
        .filter(|v| v.contains(DEV_ID))
        .find_map(|v| device_address(v));
    let place = match old_place {
        Some((bus_id, slot)) if spec.bus.is_none() && spec.slot.is_none() => Placement {
            // The bus number behind a QEMU bus id, for the report.
            bus: bus_id
                .as_deref()
                .and_then(|id| {
                    d.pci_controllers()
                        .into_iter()
                        .find(|c| c.bus_id() == id)
                        .map(|c| c.index)
                })
                .unwrap_or(0),
            slot,
            bus_id,
            add_port: None,
            what: "where it was".into(),
        },
        _ => d.place(spec, When::Argv, &[], &mut warnings)?,
    };
    let want = spec.qemu_args(&d.uuid, place.bus_id.as_deref(), place.slot);
    if want == values {
        return Ok(Outcome::unchanged(d.text(), warnings));
    }
    if want.len() != ours.len() {
        return Err(cannot(format!(
            "it has {} arguments where {} are expected",
            ours.len(),
            want.len()
        )));
    }
    let diff: Vec<String> = values
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    warnings.push(format!(
        "updating the existing <qemu:commandline> arguments: {}",
        diff.join("; ")
    ));
    let prefix = d.doc.elements[c].prefix;
    let q = d.quote();
    let edits = ours
        .iter()
        .zip(&want)
        .map(|(&i, v)| {
            let e = &d.doc.elements[i];
            (e.start..e.end, arg_el(prefix, v, q))
        })
        .collect();
    let mut o = Outcome::edited(d.text(), edits, warnings);
    o.placement = Some(place);
    Ok(o)
}

/// Remove the tool's arguments, and the element or namespace declaration
/// if the marker says the tool created them.
pub(super) fn undo(d: &Domain<'_>) -> Result<Outcome> {
    let Some(c) = d.commandline() else {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
    };
    let ours = d.our_args(c);
    let marker = d.marker(c);
    if ours.is_empty() && marker.is_none() {
        return Ok(Outcome::unchanged(d.text(), Vec::new()));
    }

    let text = d.text();
    let e = &d.doc.elements[c];
    let flags = marker.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let only_ours = d.doc.child_elements(c).all(|i| ours.contains(&i))
        && e.children.iter().all(|n| match n {
            Node::Text(r) => text[r.clone()].trim_matches(is_ws).is_empty(),
            Node::Element(_) => true,
            Node::Comment { span, .. } => marker.as_ref().is_some_and(|(m, _)| m == span),
            _ => false,
        });
    let mut edits = Vec::new();
    if only_ours && has("selfclosing") {
        edits.push((e.start_tag_end - 1..e.end, "/>".to_string()));
    } else if only_ours && has("elem") {
        edits.push((removal(text, e.start, e.end), String::new()));
        if has("ns") {
            let root = d.doc.root();
            if let Some(a) = root
                .attrs
                .iter()
                .find(|a| a.prefix == "xmlns" && a.local == e.prefix)
            {
                let s = if a.span.start > 0 && text[..a.span.start].ends_with(is_ws) {
                    a.span.start - 1
                } else {
                    a.span.start
                };
                edits.push((s..a.span.end, String::new()));
            }
        }
    } else {
        for i in &ours {
            let a = &d.doc.elements[*i];
            edits.push((removal(text, a.start, a.end), String::new()));
        }
        if let Some((span, _)) = marker {
            edits.push((removal(text, span.start, span.end), String::new()));
        }
    }
    Ok(Outcome::edited(text, edits, Vec::new()))
}
