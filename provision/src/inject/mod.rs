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
//!
//! One file per concern: `domain` reads the parsed document, `layout`
//! places and indents edits, `shmem` and `cmdline` are the two routes,
//! `status` reports which of them are in place.

mod cmdline;
mod domain;
mod layout;
mod placement;
mod shmem;
mod status;

use std::ops::Range;

use ivchan_protocol::VmUuid;

use crate::error::Result;
use crate::spec::Spec;
use domain::Domain;

pub use cmdline::TAINT_ARGV_WARNING;
pub use placement::{Placement, PORT_ALIAS};
pub use shmem::{port_window_warning, shmem_device_xml, HotplugDevice, PORT_WINDOW};
pub use status::{status, Status};

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
    /// Things the operator should know (taint, picked slot, an update).
    pub warnings: Vec<String>,
    /// Where the device was put, when this edit placed it.
    pub placement: Option<Placement>,
}

impl Outcome {
    pub(super) fn unchanged(text: &str, warnings: Vec<String>) -> Outcome {
        Outcome {
            xml: text.to_string(),
            changed: false,
            warnings,
            placement: None,
        }
    }

    /// `text` with `edits` spliced in.
    pub(super) fn edited(
        text: &str,
        edits: Vec<(Range<usize>, String)>,
        warnings: Vec<String>,
    ) -> Outcome {
        Outcome {
            xml: crate::xml::splice(text, edits),
            changed: true,
            warnings,
            placement: None,
        }
    }
}

/// Add the device to domain XML by `route`. Idempotent; when the tool's
/// device is already there with other settings (size, model, server,
/// vectors, an explicit bus or slot), it is rewritten in place and the
/// warnings say what changed. Where the device goes depends on the machine
/// (see [`Placement`]): bus 0 slot 0x1f on i440fx; on q35 a free
/// `pcie-root-port` for `<shmem>` (one is added when none is free) and the
/// highest free `pcie.0` slot for `<qemu:commandline>`. The outcome's
/// `placement` says which.
pub fn inject(text: &str, spec: &Spec, route: Route) -> Result<Outcome> {
    spec.validate()?;
    let d = Domain::parse(text)?;
    match route {
        Route::Shmem => shmem::inject(&d, spec),
        Route::Cmdline => cmdline::inject(&d, spec),
    }
}

/// Remove what [`inject`] added by `route`; the original bytes come back.
pub fn undo(text: &str, spec: &Spec, route: Route) -> Result<Outcome> {
    let d = Domain::parse(text)?;
    match route {
        Route::Shmem => shmem::undo(&d, spec),
        Route::Cmdline => cmdline::undo(&d),
    }
}

/// Remove what [`inject`] added, by whichever XML route added it (one
/// route per domain; both are tried). The warnings name the route found,
/// and a QEMU wrapper left as the domain's `<emulator>`, which no XML edit
/// of this tool undoes.
pub fn undo_any(text: &str, spec: &Spec) -> Result<Outcome> {
    let mut out = Outcome::unchanged(text, Vec::new());
    for route in [Route::Shmem, Route::Cmdline] {
        let o = undo(&out.xml, spec, route)?;
        if o.changed {
            out.warnings
                .push(format!("removed the {} route", route.name()));
            out.xml = o.xml;
            out.changed = true;
        }
    }
    if let Some(w) = status(&out.xml, spec)?.wrapper {
        out.warnings.push(format!(
            "the domain still runs the QEMU wrapper as its emulator ({w}), which adds the device at start; point <emulator> back at QEMU to remove it"
        ));
    }
    Ok(out)
}

/// The domain UUID of a domain XML (used by the hook).
pub fn domain_uuid(text: &str) -> Result<VmUuid> {
    Ok(Domain::parse(text)?.uuid)
}

/// The ivshmem server sockets (`<shmem><server path=…>`, the doorbell
/// model) the domain's QEMU will connect to when it starts.
pub fn shmem_servers(text: &str) -> Result<Vec<std::path::PathBuf>> {
    let d = Domain::parse(text)?;
    Ok(d.shmems()
        .into_iter()
        .filter_map(|(el, _)| {
            let server = d.doc.child(el, "server")?;
            d.doc.elements[server].attr_value("path").ok().flatten()
        })
        .map(std::path::PathBuf::from)
        .collect())
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
    use crate::error::Error;
    use crate::spec::Model;
    use ivchan_protocol::naming::SizeError;

    const DOM: &str = "<domain type='qemu'>\n  <name>t</name>\n  <uuid>6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b</uuid>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n  </devices>\n</domain>\n";

    #[test]
    fn shmem_roundtrip() {
        let s = Spec::default();
        let o = inject(DOM, &s, Route::Shmem).unwrap();
        assert!(o.changed);
        assert!(o.xml.contains("\n    <shmem name='fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b' role='master'>\n      <model type='ivshmem-plain'/>\n      <size unit='M'>8</size>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/>\n    </shmem>\n  </devices>"), "{}", o.xml);
        let again = inject(&o.xml, &s, Route::Shmem).unwrap();
        assert!(!again.changed);
        assert_eq!(undo(&o.xml, &s, Route::Shmem).unwrap().xml, DOM);
        // A device from before roles (no role attribute) becomes migratable
        // in place, and says so; asking for peer changes it back.
        let old = o.xml.replace(" role='master'", "");
        let up = inject(&old, &s, Route::Shmem).unwrap();
        assert!(up.changed && up.xml == o.xml, "{}", up.xml);
        assert!(
            up.warnings[0].contains("role: none -> master"),
            "{:?}",
            up.warnings
        );
        let peer = Spec {
            role: crate::spec::Role::Peer,
            ..Spec::default()
        };
        let down = inject(&o.xml, &peer, Route::Shmem).unwrap();
        assert!(down.xml.contains(" role='peer'>"), "{}", down.xml);
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
    fn undo_any_finds_either_route_and_names_the_wrapper() {
        let s = Spec::default();
        for route in [Route::Shmem, Route::Cmdline] {
            let o = inject(DOM, &s, route).unwrap();
            let u = undo_any(&o.xml, &s).unwrap();
            assert!(u.changed && u.xml == DOM, "{route:?}");
            assert!(u.warnings[0].contains(route.name()), "{:?}", u.warnings);
        }
        let u = undo_any(DOM, &s).unwrap();
        assert!(!u.changed && u.warnings.is_empty());
        let wrapped = DOM.replace(
            "/usr/bin/qemu-system-x86_64",
            "/usr/bin/ivchan-qemu-wrapper",
        );
        let u = undo_any(&wrapped, &s).unwrap();
        assert!(!u.changed);
        assert!(u.warnings[0].contains("QEMU wrapper"), "{:?}", u.warnings);
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
            Err(Error::Size(SizeError::NotPowerOfTwo { .. }))
        ));
        for (size, refused) in [
            (512 << 10, "below the 1 MiB minimum"),
            (64 << 30, "above the 16 GiB maximum"),
        ] {
            let bad = Spec {
                size,
                ..Spec::default()
            };
            for route in [Route::Shmem, Route::Cmdline] {
                let e = inject(DOM, &bad, route).unwrap_err();
                assert!(e.to_string().contains(refused), "{size}: {e}");
            }
            assert!(shmem_device_xml(DOM, &bad).is_err());
        }
    }
}
