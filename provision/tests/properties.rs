//! Property tests: over generated domain XMLs (comments, namespaces, devices
//! at many addresses, CDATA, odd whitespace, CRLF, compact documents),
//! inject is idempotent and undo restores the original bytes, for both XML
//! routes.

use proptest::prelude::*;

use ivchan_provision::xml::Doc;
use ivchan_provision::{inject, status, undo, Route, Spec};

#[derive(Debug, Clone)]
struct Style {
    nl: &'static str,
    unit: &'static str,
    q: char,
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop_oneof![Just("\n"), Just("\r\n")],
        prop_oneof![Just("  "), Just("    "), Just("\t"), Just(" "), Just("")],
        prop_oneof![Just('\''), Just('"')],
    )
        .prop_map(|(nl, unit, q)| Style { nl, unit, q })
}

fn uuid_text() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>(), any::<bool>()).prop_map(|(n, dashes, upper)| {
        let h = format!("{n:032x}");
        let s = if dashes {
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        } else {
            h
        };
        if upper {
            s.to_uppercase()
        } else {
            s
        }
    })
}

/// One device element (as lines at relative depth) with an optional PCI address.
fn device() -> impl Strategy<Value = Vec<(usize, String)>> {
    (
        0usize..6,
        prop::option::of(0u8..=0x1f),
        any::<bool>(),
        prop_oneof![Just(""), Just(" "), Just("\n      ")],
    )
        .prop_map(|(kind, slot, hex, tail_ws)| {
            let addr = slot.map(|s| {
                let sv = if hex { format!("0x{s:02x}") } else { s.to_string() };
                format!("<address type='pci' domain='0x0000' bus='0x00' slot='{sv}' function='0x0'{tail_ws}/>")
            });
            let (open, inner, close): (String, Vec<String>, String) = match kind {
                0 => ("<disk type='file' device='disk'>".into(), vec!["<source file='/x.img'/>".into(), "<target dev='vda' bus='virtio'/>".into()], "</disk>".into()),
                1 => ("<interface type='network'>".into(), vec!["<source network='default'/>".into(), "<model type='virtio'/>".into()], "</interface>".into()),
                2 => ("<rng model='virtio'>".into(), vec!["<backend model='random'>/dev/urandom</backend>".into()], "</rng>".into()),
                3 => ("<!-- a comment with <shmem> and </devices> inside -->".into(), vec![], String::new()),
                4 => ("<video>".into(), vec!["<model type='cirrus'/>".into()], "</video>".into()),
                _ => ("<memballoon model='virtio'>".into(), vec![], "</memballoon>".into()),
            };
            if kind == 3 {
                return vec![(0, open)];
            }
            let mut v = vec![(0, open)];
            v.extend(inner.into_iter().map(|l| (1, l)));
            if let Some(a) = addr {
                v.push((1, a));
            }
            v.push((0, close));
            v
        })
}

#[derive(Debug, Clone)]
enum Cmdline {
    None,
    WithArgs(&'static str),
    SelfClosing(&'static str),
    Empty(&'static str),
}

fn cmdline() -> impl Strategy<Value = Cmdline> {
    let prefix = prop_oneof![Just("qemu"), Just("q"), Just("qe")];
    (0usize..4, prefix).prop_map(|(k, p)| match k {
        0 => Cmdline::None,
        1 => Cmdline::WithArgs(p),
        2 => Cmdline::SelfClosing(p),
        _ => Cmdline::Empty(p),
    })
}

prop_compose! {
    fn domain()(
        st in style(),
        decl in any::<bool>(),
        lead_comment in any::<bool>(),
        ns in prop::option::of(prop_oneof![Just("qemu"), Just("q"), Just("qe")]),
        ns_newline in any::<bool>(),
        uuid in uuid_text(),
        cdata in any::<bool>(),
        devices in prop::collection::vec(device(), 0..8),
        cmd in cmdline(),
        open_ws in prop_oneof![Just(""), Just(" "), Just("  ")],
        trailing_nl in any::<bool>(),
        machine in prop_oneof![Just(None), Just(Some("pc-i440fx-7.2")), Just(Some("pc-q35-7.2"))],
        ports in prop::collection::vec((1u8..8, any::<bool>()), 0..4),
    ) -> String {
        let Style { nl, unit, q } = st;
        let compact = unit.is_empty();
        let (nl, unit) = if compact { ("", "") } else { (nl, unit) };
        let line = |depth: usize, s: &str| -> String {
            format!("{nl}{}{s}", unit.repeat(depth))
        };
        let mut out = String::new();
        if decl {
            out.push_str(&format!("<?xml version={q}1.0{q}?>{}", if compact { "" } else { "\n" }));
        }
        if lead_comment {
            out.push_str("<!-- generated, not by libvirt -->");
            out.push_str(if compact { "" } else { nl });
        }
        // A commandline needs its prefix bound: on the root, or on itself.
        let cmd_prefix = match &cmd {
            Cmdline::None => None,
            Cmdline::WithArgs(p) | Cmdline::SelfClosing(p) | Cmdline::Empty(p) => Some(*p),
        };
        let root_ns = ns.or(cmd_prefix);
        out.push_str(&format!("<domain type={q}qemu{q}"));
        if let Some(p) = root_ns {
            let sep = if ns_newline && !compact { format!("{nl}        ") } else { " ".into() };
            out.push_str(&format!("{sep}xmlns:{p}={q}http://libvirt.org/schemas/domain/qemu/1.0{q}"));
        }
        out.push_str(&format!(" xmlns:m={q}urn:x{q}{open_ws}>"));
        out.push_str(&line(1, "<name>gen</name>"));
        out.push_str(&line(1, &format!("<uuid>{uuid}</uuid>")));
        if cdata {
            out.push_str(&line(1, "<description><![CDATA[<devices></devices> <shmem name='fg_x'/> ]]></description>"));
        }
        out.push_str(&line(1, "<metadata><m:x a='1'/></metadata>"));
        if let Some(m) = machine {
            out.push_str(&line(1, &format!("<os><type arch={q}x86_64{q} machine={q}{m}{q}>hvm</type></os>")));
        }
        out.push_str(&line(1, "<devices>"));
        out.push_str(&line(2, "<emulator>/usr/bin/qemu-system-x86_64</emulator>"));
        // PCIe root ports (some with a device behind them), on any machine.
        let mut seen = Vec::new();
        for (index, taken) in ports {
            if seen.contains(&index) {
                continue;
            }
            seen.push(index);
            out.push_str(&line(2, &format!("<controller type={q}pci{q} index={q}{index}{q} model={q}pcie-root-port{q}/>")));
            if taken {
                out.push_str(&line(2, &format!("<rng model={q}virtio{q}><address type={q}pci{q} domain={q}0x0000{q} bus={q}0x{index:02x}{q} slot={q}0x00{q} function={q}0x0{q}/></rng>")));
            }
        }
        for d in &devices {
            for (depth, l) in d {
                out.push_str(&line(2 + depth, l));
            }
        }
        out.push_str(&line(1, "</devices>"));
        let p = root_ns.unwrap_or("qemu");
        match cmd {
            Cmdline::None => {}
            Cmdline::WithArgs(_) => {
                out.push_str(&line(1, &format!("<{p}:commandline>")));
                out.push_str(&line(2, &format!("<{p}:arg value={q}-msg{q}/>")));
                out.push_str(&line(2, &format!("<{p}:arg value={q}timestamp=on{q}/>")));
                out.push_str(&line(1, &format!("</{p}:commandline>")));
            }
            Cmdline::SelfClosing(_) => out.push_str(&line(1, &format!("<{p}:commandline{open_ws}/>"))),
            Cmdline::Empty(_) => {
                out.push_str(&line(1, &format!("<{p}:commandline>")));
                out.push_str(&line(1, &format!("</{p}:commandline>")));
            }
        }
        out.push_str(&line(0, "</domain>"));
        if trailing_nl && !compact {
            out.push_str(nl);
        }
        out
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        prop::option::of(0u8..=0x1f),
        20u32..=34,
        any::<bool>(),
    )
        .prop_map(|(pick, slot, shift, legacy)| Spec {
            pick_free_slot: pick,
            slot: slot.map(|s| s.max(3)),
            size: 1u64 << shift,
            arg_form: if legacy {
                ivchan_provision::ArgForm::Legacy
            } else {
                ivchan_provision::ArgForm::Json
            },
            ..Spec::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn inject_is_idempotent_and_undo_restores_bytes(xml in domain(), spec in spec(), cmd_route in any::<bool>()) {
        prop_assert!(Doc::parse(&xml).is_ok(), "generator produced malformed XML:\n{}", xml);
        let route = if cmd_route { Route::Cmdline } else { Route::Shmem };
        match inject(&xml, &spec, route) {
            Ok(o) => {
                prop_assert!(o.changed);
                prop_assert!(Doc::parse(&o.xml).is_ok(), "output is malformed:\n{}", o.xml);
                let again = inject(&o.xml, &spec, route).unwrap();
                prop_assert!(!again.changed);
                prop_assert_eq!(&again.xml, &o.xml);
                let st = status(&o.xml, &spec).unwrap();
                prop_assert!(st.provisioned());
                let back = undo(&o.xml, &spec, route).unwrap();
                prop_assert!(back.changed);
                prop_assert_eq!(&back.xml, &xml);
                // Undo of the original is a no-op.
                prop_assert_eq!(undo(&xml, &spec, route).unwrap().xml, xml);
            }
            Err(ivchan_provision::Error::SlotConflict { .. }) => prop_assert!(!spec.pick_free_slot),
            Err(e) => prop_assert!(false, "unexpected error {e} for\n{}", xml),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(s in "\\PC{0,200}") {
        let _ = inject(&s, &Spec::default(), Route::Shmem);
        let _ = inject(&s, &Spec::default(), Route::Cmdline);
        let _ = status(&s, &Spec::default());
    }
}
