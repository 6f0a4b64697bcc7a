//! Routes 1–3: edit domain XML text.
//!
//! Every function here is a pure `&str -> Result<…>` transformation. Edits are
//! spliced into the original text at byte offsets, matching the indentation,
//! line endings and attribute quoting of the surrounding document; nothing
//! else changes. What is added is recognisable afterwards (the `<shmem>` name,
//! the `ivchan-*` QEMU ids, and an `<!--ivchan-provision:…-->` marker comment
//! when the tool had to create the `<qemu:commandline>` element or declare
//! its namespace), so [`undo`] removes exactly that and restores the
//! original bytes.

use std::fmt;
use std::ops::Range;

use ivchan_protocol::VmUuid;

use crate::error::{Error, Result};
use crate::spec::{parse_pci_number, parse_uuid, Model, Spec, CHR_ID, DEV_ID, MEM_ID};
use crate::xml::{escape_attr, qname, Doc, Node, QEMU_NS};

/// Which XML route to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// libvirt's `<shmem>` device (recommended).
    Shmem,
    /// `<qemu:commandline>` passthrough (taints the domain: "custom-argv").
    Cmdline,
}

impl Route {
    /// Human name of the route.
    pub fn name(self) -> &'static str {
        match self {
            Route::Shmem => "<shmem>",
            Route::Cmdline => "<qemu:commandline>",
        }
    }
}

/// Result of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The new document (equal to the input when nothing changed).
    pub xml: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Things the operator should know (taint, picked slot).
    pub warnings: Vec<String>,
}

impl Outcome {
    fn unchanged(text: &str, warnings: Vec<String>) -> Outcome {
        Outcome {
            xml: text.to_string(),
            changed: false,
            warnings,
        }
    }
}

/// The warning printed for the `<qemu:commandline>` route.
pub const TAINT_ARGV_WARNING: &str = "libvirt marks a domain with <qemu:commandline> as tainted (\"custom-argv\"): it is logged and such domains are unsupported by some distributions; prefer the <shmem> route";

const MARKER: &str = "ivchan-provision:";

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// A parsed domain with the facts every route needs.
struct Domain<'a> {
    doc: Doc<'a>,
    uuid: VmUuid,
    devices: Option<usize>,
    q35: bool,
}

impl<'a> Domain<'a> {
    fn parse(text: &'a str) -> Result<Domain<'a>> {
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

    fn text(&self) -> &'a str {
        self.doc.text
    }

    /// `<shmem>` children of `<devices>` with their names.
    fn shmems(&self) -> Vec<(usize, String)> {
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

    fn commandline(&self) -> Option<usize> {
        self.doc
            .child_elements(0)
            .find(|&c| self.doc.is_ns_element(c, QEMU_NS, "commandline"))
    }

    /// `<qemu:arg>` children of the commandline element, with their values.
    fn args(&self, cmd: usize) -> Vec<(usize, String)> {
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
    fn our_args(&self, cmd: usize) -> Vec<usize> {
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
    fn cmdline_has_ivshmem(&self, cmd: usize) -> bool {
        let args = self.args(cmd);
        args.windows(2)
            .any(|w| w[0].1 == "-device" && w[1].1.contains("ivshmem"))
            || args.iter().any(|(_, v)| is_our_value(v))
    }

    /// The marker comment inside the commandline element, with its flags.
    fn marker(&self, cmd: usize) -> Option<(Range<usize>, Vec<String>)> {
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

    /// Slots in use on `bus`, with a description of the holder.
    fn used_slots(&self, bus: u8) -> Vec<(u8, String)> {
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
                for key in ["type", "name", "model"] {
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

    /// The slot to use: the requested one, or a free one if allowed.
    fn choose_slot(&self, spec: &Spec, warnings: &mut Vec<String>) -> Result<u8> {
        let used = self.used_slots(spec.bus);
        let holder = |s: u8| used.iter().find(|(u, _)| *u == s).map(|(_, h)| h.clone());
        let Some(h) = holder(spec.slot) else {
            return Ok(spec.slot);
        };
        if !spec.pick_free_slot {
            return Err(Error::SlotConflict {
                bus: spec.bus,
                slot: spec.slot,
                holder: h,
            });
        }
        // Slot 2 is left to the primary video device, which libvirt places there.
        let free = (3u8..=0x1f).rev().find(|&s| holder(s).is_none());
        match free {
            Some(s) => {
                warnings.push(format!(
                    "PCI slot 0x{:02x} is used by {h}; using free slot 0x{s:02x} instead",
                    spec.slot
                ));
                Ok(s)
            }
            None => Err(Error::NoFreeSlot(spec.bus)),
        }
    }

    /// Quote character used by the document's attributes (`'` by default).
    fn quote(&self) -> char {
        self.doc
            .root()
            .attrs
            .first()
            .and_then(|a| self.text()[..a.span.end].chars().last())
            .filter(|&c| c == '"')
            .unwrap_or('\'')
    }

    fn newline(&self) -> &'static str {
        if self.text().contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// Whitespace that indents the line `pos` sits on, if only whitespace precedes it.
    fn line_indent(&self, pos: usize) -> Option<String> {
        let before = &self.text()[..pos];
        let ws_start = before.trim_end_matches(is_ws).len();
        let ws = &before[ws_start..];
        ws.rfind('\n')
            .map(|i| ws[i + 1..].trim_end_matches('\r').to_string())
    }

    /// Indentation unit guessed from the root's first child.
    fn unit(&self) -> String {
        let root_indent = self.line_indent(0).unwrap_or_default();
        self.doc
            .child_elements(0)
            .next()
            .and_then(|c| self.line_indent(self.doc.elements[c].start))
            .and_then(|ci| ci.strip_prefix(&root_indent).map(str::to_string))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "  ".to_string())
    }

    /// Where and how to append a new last child to element `parent`.
    fn layout(&self, parent: usize) -> Layout {
        let p = &self.doc.elements[parent];
        let text = self.text();
        let lo = p.start_tag_end;
        let hi = p.content_end;
        let pos = lo + text[lo..hi].trim_end_matches(is_ws).len();
        let parent_indent = self.line_indent(p.start).unwrap_or_default();
        let unit = self.unit();
        let last_el = self.doc.child_elements(parent).last();
        let indent = if let Some(e) = last_el {
            self.line_indent(self.doc.elements[e].start)
        } else if pos > lo {
            // Only text or comments: indent like the first of them.
            let lead = &text[lo..hi];
            let ws = &lead[..lead.len() - lead.trim_start_matches(is_ws).len()];
            ws.rfind('\n')
                .map(|i| ws[i + 1..].trim_end_matches('\r').to_string())
        } else if text[lo..hi].contains('\n') {
            Some(format!("{parent_indent}{unit}"))
        } else {
            None
        };
        let unit = match &indent {
            Some(ind) if ind.len() > parent_indent.len() && ind.starts_with(&parent_indent) => {
                ind[parent_indent.len()..].to_string()
            }
            _ => unit,
        };
        Layout {
            pos,
            line: indent.map(|ind| (self.newline(), ind)),
            unit,
        }
    }
}

fn is_our_value(v: &str) -> bool {
    [MEM_ID, DEV_ID, CHR_ID].iter().any(|id| v.contains(id))
}

/// Where to insert and how to indent.
struct Layout {
    pos: usize,
    /// `Some((newline, indent))` when children sit on their own lines.
    line: Option<(&'static str, String)>,
    unit: String,
}

impl Layout {
    /// Render one element given as lines with nesting depths (0 = the element itself).
    fn render(&self, lines: &[(usize, String)]) -> String {
        let mut out = String::new();
        for (depth, l) in lines {
            if let Some((nl, ind)) = &self.line {
                out.push_str(nl);
                out.push_str(ind);
                for _ in 0..*depth {
                    out.push_str(&self.unit);
                }
            }
            out.push_str(l);
        }
        out
    }
}

/// The range that removes element `[start, end)` and the line break plus
/// indentation that [`Layout::render`] put before it.
fn removal(text: &str, start: usize, end: usize) -> Range<usize> {
    let before = &text[..start];
    let ws_start = before.trim_end_matches(is_ws).len();
    let ws = &before[ws_start..];
    match ws.rfind('\n') {
        Some(i) => {
            let mut s = ws_start + i;
            if s > 0 && text.as_bytes()[s - 1] == b'\r' && s > ws_start {
                s -= 1;
            }
            s..end
        }
        None => start..end,
    }
}

/// The `<shmem>` element lines (depth, text) for this spec.
fn shmem_lines(spec: &Spec, name: &str, slot: u8, q: char) -> Vec<(usize, String)> {
    let a = |v: &str| escape_attr(v, q);
    let (unit, n) = if spec.size % (1 << 20) == 0 {
        ("M", spec.size >> 20)
    } else {
        ("K", spec.size >> 10)
    };
    let mut lines = vec![
        (0, format!("<shmem name={q}{}{q}>", a(name))),
        (1, format!("<model type={q}{}{q}/>", spec.model.name())),
    ];
    if matches!(spec.model, Model::Plain) {
        lines.push((1, format!("<size unit={q}{unit}{q}>{n}</size>")));
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

/// Add the device to domain XML by `route`. Idempotent.
pub fn inject(text: &str, spec: &Spec, route: Route) -> Result<Outcome> {
    spec.validate()?;
    let d = Domain::parse(text)?;
    match route {
        Route::Shmem => inject_shmem(&d, spec),
        Route::Cmdline => inject_cmdline(&d, spec),
    }
}

/// Remove what [`inject`] added by `route`; the original bytes come back.
pub fn undo(text: &str, spec: &Spec, route: Route) -> Result<Outcome> {
    let d = Domain::parse(text)?;
    match route {
        Route::Shmem => undo_shmem(&d, spec),
        Route::Cmdline => undo_cmdline(&d),
    }
}

/// The `<shmem>` element (as standalone XML) that [`inject`] would add, with
/// its slot resolved against the domain's devices; `None` if already present.
/// Used for live hotplug.
pub fn shmem_device_xml(text: &str, spec: &Spec) -> Result<Option<String>> {
    spec.validate()?;
    let d = Domain::parse(text)?;
    let name = spec.shmem_name(&d.uuid)?;
    if d.shmems().iter().any(|(_, n)| *n == name) {
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

fn inject_shmem(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let name = spec.shmem_name(&d.uuid)?;
    if d.shmems().iter().any(|(_, n)| *n == name) {
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
    let xml = crate::xml::splice(d.text(), vec![(layout.pos..layout.pos, add)]);
    Ok(Outcome {
        xml,
        changed: true,
        warnings,
    })
}

fn undo_shmem(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
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
    Ok(Outcome {
        xml: crate::xml::splice(d.text(), edits),
        changed: true,
        warnings: Vec::new(),
    })
}

fn inject_cmdline(d: &Domain<'_>, spec: &Spec) -> Result<Outcome> {
    let warnings = vec![TAINT_ARGV_WARNING.to_string()];
    let cmd = d.commandline();
    if let Some(c) = cmd {
        if !d.our_args(c).is_empty() {
            return Ok(Outcome::unchanged(d.text(), warnings));
        }
        if d.cmdline_has_ivshmem(c) {
            return Err(Error::OtherRoute(
                "<qemu:commandline> (an ivshmem device not added by this tool)",
            ));
        }
    }
    if let Ok(name) = spec.shmem_name(&d.uuid) {
        if d.shmems().iter().any(|(_, n)| *n == name) {
            return Err(Error::OtherRoute("<shmem>"));
        }
    }
    let mut warnings = warnings;
    let slot = d.choose_slot(spec, &mut warnings)?;
    let q = d.quote();
    let root = d.doc.root();
    let mut edits = Vec::new();
    let mut flags: Vec<&str> = Vec::new();

    // Which prefix is bound to the qemu namespace?
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
    let arg_el = |v: &str| format!("<{}:arg value={q}{}{q}/>", prefix, escape_attr(v, q));
    let args: Vec<String> = spec
        .qemu_args(&d.uuid, slot)
        .iter()
        .map(|v| arg_el(v))
        .collect();

    match cmd {
        None => {
            flags.push("elem");
            flags.reverse();
            let layout = d.layout(0);
            let mut lines = vec![(0, format!("<{prefix}:commandline>"))];
            lines.push((1, format!("<!--{MARKER}{}-->", flags.join(","))));
            lines.extend(args.into_iter().map(|a| (1, a)));
            lines.push((0, format!("</{prefix}:commandline>")));
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
            add.push_str(&format!("</{}:commandline>", prefix));
            edits.push((e.end - 2..e.end, add));
        }
        Some(c) => {
            let layout = d.layout(c);
            let lines: Vec<_> = args.into_iter().map(|a| (0, a)).collect();
            edits.push((layout.pos..layout.pos, layout.render(&lines)));
        }
    }
    Ok(Outcome {
        xml: crate::xml::splice(d.text(), edits),
        changed: true,
        warnings,
    })
}

fn undo_cmdline(d: &Domain<'_>) -> Result<Outcome> {
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
    Ok(Outcome {
        xml: crate::xml::splice(text, edits),
        changed: true,
        warnings: Vec::new(),
    })
}

/// Which routes are in place for a domain, and whether it is tainted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub uuid: String,
    /// Name of the tool's `<shmem>` if present.
    pub shmem: Option<String>,
    /// Other `<shmem>` devices (name, model).
    pub other_shmem: Vec<String>,
    /// The tool's `<qemu:commandline>` arguments are present.
    pub cmdline: bool,
    /// Some other ivshmem device is passed through `<qemu:commandline>`.
    pub cmdline_foreign: bool,
    /// `<emulator>` points at the ivchan QEMU wrapper.
    pub wrapper: Option<String>,
    /// Taint reasons libvirt will record ("custom-argv").
    pub tainted: Vec<&'static str>,
}

impl Status {
    /// Whether some route gives the domain an ivshmem device.
    pub fn provisioned(&self) -> bool {
        self.shmem.is_some() || self.cmdline || self.wrapper.is_some()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "uuid: {}", self.uuid)?;
        match &self.shmem {
            Some(n) => writeln!(f, "shmem route: yes (<shmem name='{n}'>)")?,
            None => writeln!(f, "shmem route: no")?,
        }
        for o in &self.other_shmem {
            writeln!(f, "other shmem device: {o}")?;
        }
        writeln!(f, "qemu:commandline route: {}", yn(self.cmdline))?;
        if self.cmdline_foreign {
            writeln!(f, "other ivshmem device in qemu:commandline: yes")?;
        }
        match &self.wrapper {
            Some(e) => writeln!(f, "wrapper route: yes (<emulator>{e}</emulator>)")?,
            None => writeln!(f, "wrapper route: no")?,
        }
        writeln!(f, "provisioned: {}", yn(self.provisioned()))?;
        if self.tainted.is_empty() {
            writeln!(f, "tainted: no")
        } else {
            writeln!(f, "tainted: yes ({})", self.tainted.join(", "))
        }
    }
}

/// Report which routes are in place for a domain XML.
pub fn status(text: &str, spec: &Spec) -> Result<Status> {
    let d = Domain::parse(text)?;
    let name = spec.shmem_name(&d.uuid).ok();
    let mut shmem = None;
    let mut other_shmem = Vec::new();
    for (i, n) in d.shmems() {
        if Some(&n) == name.as_ref() {
            shmem = Some(n);
        } else {
            let model = d
                .doc
                .child(i, "model")
                .and_then(|m| d.doc.elements[m].attr_value("type").ok().flatten())
                .unwrap_or_else(|| "ivshmem".into());
            other_shmem.push(format!("{n} ({model})"));
        }
    }
    let cmd = d.commandline();
    let cmdline = cmd.is_some_and(|c| !d.our_args(c).is_empty());
    let cmdline_foreign = cmd.is_some_and(|c| d.cmdline_has_ivshmem(c) && d.our_args(c).is_empty());
    let mut tainted = Vec::new();
    if cmd.is_some_and(|c| d.doc.child_elements(c).next().is_some()) {
        tainted.push("custom-argv");
    }
    let wrapper = d
        .devices
        .and_then(|dev| d.doc.child(dev, "emulator"))
        .and_then(|e| d.doc.text_of(e).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.contains("ivchan-qemu-wrapper"));
    Ok(Status {
        uuid: d.uuid.to_string(),
        shmem,
        other_shmem,
        cmdline,
        cmdline_foreign,
        wrapper,
        tainted,
    })
}

/// The domain UUID of a domain XML (used by the hook).
pub fn domain_uuid(text: &str) -> Result<VmUuid> {
    Ok(Domain::parse(text)?.uuid)
}

/// Whether the domain XML has `<features><acpi/></features>`.
pub fn has_acpi(text: &str) -> Result<bool> {
    let d = Domain::parse(text)?;
    Ok(d.doc
        .child(0, "features")
        .is_some_and(|f| d.doc.child(f, "acpi").is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOM: &str = "<domain type='qemu'>\n  <name>t</name>\n  <uuid>6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b</uuid>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n  </devices>\n</domain>\n";

    #[test]
    fn shmem_roundtrip() {
        let s = Spec::default();
        let o = inject(DOM, &s, Route::Shmem).unwrap();
        assert!(o.changed);
        assert!(o.xml.contains("\n    <shmem name='fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b'>\n      <model type='ivshmem-plain'/>\n      <size unit='M'>8</size>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/>\n    </shmem>\n  </devices>"), "{}", o.xml);
        let again = inject(&o.xml, &s, Route::Shmem).unwrap();
        assert!(!again.changed);
        assert_eq!(undo(&o.xml, &s, Route::Shmem).unwrap().xml, DOM);
    }

    #[test]
    fn doorbell_shmem_names_its_server_and_has_no_size() {
        let s = Spec {
            model: Model::Doorbell {
                server: "/run/ivchan/vm.sock".into(),
                vectors: 2,
            },
            ..Spec::default()
        };
        let o = inject(DOM, &s, Route::Shmem).unwrap();
        assert!(o.xml.contains("\n      <model type='ivshmem-doorbell'/>\n      <server path='/run/ivchan/vm.sock'/>\n      <msi vectors='2' ioeventfd='on'/>\n"), "{}", o.xml);
        // libvirt refuses <size> for ivshmem-doorbell.
        assert!(!o.xml.contains("<size"), "{}", o.xml);
        assert_eq!(undo(&o.xml, &s, Route::Shmem).unwrap().xml, DOM);
    }

    #[test]
    fn cmdline_roundtrip() {
        let s = Spec::default();
        let o = inject(DOM, &s, Route::Cmdline).unwrap();
        assert!(o.xml.starts_with(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        ));
        assert!(o.xml.contains("  <qemu:commandline>\n    <!--ivchan-provision:elem,ns-->\n    <qemu:arg value='-object'/>"), "{}", o.xml);
        assert!(!inject(&o.xml, &s, Route::Cmdline).unwrap().changed);
        assert_eq!(undo(&o.xml, &s, Route::Cmdline).unwrap().xml, DOM);
        let st = status(&o.xml, &s).unwrap();
        assert!(st.cmdline && st.tainted == vec!["custom-argv"]);
        // The other route refuses while this one is in place.
        assert!(matches!(
            inject(&o.xml, &s, Route::Shmem),
            Err(Error::OtherRoute(_))
        ));
    }

    #[test]
    fn slot_conflict_and_pick() {
        let dom = DOM.replace(
            "  </devices>",
            "    <disk type='file'><address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/></disk>\n  </devices>",
        );
        let s = Spec::default();
        let e = inject(&dom, &s, Route::Shmem).unwrap_err();
        assert!(matches!(e, Error::SlotConflict { slot: 0x1f, .. }), "{e}");
        assert!(e.to_string().contains("<disk type='file'>"));
        let s = Spec {
            pick_free_slot: true,
            ..Spec::default()
        };
        let o = inject(&dom, &s, Route::Shmem).unwrap();
        assert!(o.xml.contains("slot='0x1e'"));
        assert_eq!(undo(&o.xml, &s, Route::Shmem).unwrap().xml, dom);
    }

    #[test]
    fn bad_inputs() {
        let s = Spec::default();
        assert!(matches!(
            inject("<domain>", &s, Route::Shmem),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            inject("<network/>", &s, Route::Shmem),
            Err(Error::NotDomain(_))
        ));
        assert!(matches!(
            inject("<domain/>", &s, Route::Shmem),
            Err(Error::NoUuid)
        ));
        assert!(matches!(
            inject("<domain><uuid>zz</uuid></domain>", &s, Route::Shmem),
            Err(Error::BadUuid(_))
        ));
        let bad = Spec {
            size: 3 << 20,
            ..Spec::default()
        };
        assert!(matches!(
            inject(DOM, &bad, Route::Shmem),
            Err(Error::SizeNotPowerOfTwo(_))
        ));
    }
}
