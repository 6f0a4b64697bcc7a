//! The contrib examples (nova wrapper, VDSM hook, migrate/restore hook) run
//! as their platforms run them, against an i440fx and a q35 domain, with
//! the tool under test standing in for /usr/bin/ivchan-provision. Their
//! output must carry the device, validate, and be idempotent.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ivchan_provision::{status, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_ivchan-provision");

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name)
}

/// An i440fx and a q35 domain, as an orchestrator generates them (no
/// controllers or addresses: libvirt adds those at define).
fn domains() -> Vec<(&'static str, String)> {
    ["pc-i440fx-7.2", "pc-q35-7.2"]
        .iter()
        .map(|m| {
            (
                *m,
                format!(
                    "<domain type='qemu'>\n  <name>contrib</name>\n  <uuid>c0ffee00-0000-4000-8000-0000000000cc</uuid>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type arch='x86_64' machine='{m}'>hvm</type>\n  </os>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    <interface type='network'>\n      <source network='default'/>\n      <model type='virtio'/>\n    </interface>\n  </devices>\n</domain>\n"
                ),
            )
        })
        .collect()
}

/// The script with the tool under test in place of /usr/bin/ivchan-provision.
fn patched(name: &str, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(contrib(name)).unwrap();
    assert!(text.contains("/usr/bin/ivchan-provision"), "{name}");
    let p = dir.join(name);
    fs::write(&p, text.replace("/usr/bin/ivchan-provision", BIN)).unwrap();
    p
}

/// Checks a provisioned document: the device is there, on q35 not at the
/// chipset's slot, and it validates.
fn check(machine: &str, xml: &str, dir: &Path) {
    let st = status(xml, &Spec::default()).unwrap();
    assert!(st.shmem.is_some(), "{machine}: {xml}");
    if machine.contains("q35") {
        assert!(
            xml.contains("pcie-root-port") && !xml.contains("slot='0x1f'"),
            "{xml}"
        );
    } else {
        assert!(xml.contains("bus='0x00' slot='0x1f'"), "{xml}");
    }
    if common::require("virt-xml-validate") {
        let f = dir.join("check.xml");
        fs::write(&f, xml).unwrap();
        common::validate(&f).unwrap_or_else(|e| panic!("{machine}: {e}\n{xml}"));
    }
}

#[test]
fn vdsm_before_vm_start_hook() {
    let dir = tempfile::tempdir().unwrap();
    let script = patched("vdsm_before_vm_start.sh", dir.path());
    for (machine, xml) in domains() {
        let f = dir.path().join("domxml");
        fs::write(&f, &xml).unwrap();
        for round in 0..2 {
            let o = Command::new("sh")
                .arg(&script)
                .env("_hook_domxml", &f)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{machine} round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let out = fs::read_to_string(&f).unwrap();
        check(machine, &out, dir.path());
        assert_eq!(out.matches("<shmem ").count(), 1, "{out}");
    }
}

#[test]
fn libvirt_migrate_restore_hook() {
    let dir = tempfile::tempdir().unwrap();
    let script = patched("libvirt_migrate_restore_hook.sh", dir.path());
    let hook = |op: &str, sub: &str, xml: &str| {
        let mut child = Command::new("sh")
            .arg(&script)
            .args(["contrib", op, sub, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{op} {sub}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    for (machine, xml) in domains() {
        for op in ["migrate", "restore"] {
            let out = hook(op, "begin", &xml);
            check(machine, &out, dir.path());
            assert_eq!(
                hook(op, "begin", &out),
                out,
                "{machine} {op}: not idempotent"
            );
        }
        // Other operations leave the XML alone (no output).
        assert_eq!(hook("prepare", "begin", &xml), "");
    }
}

#[test]
fn nova_get_guest_xml_wrapper() {
    if !common::require("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for nova: LibvirtDriver._get_guest_xml returns the domain
    // XML the test puts in the environment.
    let pkg = dir.path().join("nova/virt/libvirt");
    fs::create_dir_all(&pkg).unwrap();
    for p in ["nova", "nova/virt", "nova/virt/libvirt"] {
        fs::write(dir.path().join(p).join("__init__.py"), "").unwrap();
    }
    fs::write(
        pkg.join("driver.py"),
        "import os\nclass LibvirtDriver:\n    def _get_guest_xml(self, *a, **k):\n        return os.environ['DOMAIN_XML']\n",
    )
    .unwrap();
    fs::copy(
        contrib("nova_get_guest_xml.py"),
        dir.path().join("nova_get_guest_xml.py"),
    )
    .unwrap();
    for (machine, xml) in domains() {
        let o = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, nova_get_guest_xml as m\n\
                 from nova.virt.libvirt import driver\n\
                 m.IVCHAN = sys.argv[1]\n\
                 sys.stdout.write(driver.LibvirtDriver()._get_guest_xml())\n",
            )
            .arg(BIN)
            .env("PYTHONPATH", dir.path())
            .env("DOMAIN_XML", &xml)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{machine}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        check(machine, &String::from_utf8(o.stdout).unwrap(), dir.path());
    }
}
