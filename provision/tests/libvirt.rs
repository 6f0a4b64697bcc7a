//! Against a real libvirtd (qemu:///system, TCG domains without disks that
//! idle in firmware): define + start from injected XML, `apply`, the
//! cmdline route, live hotplug, the monitor route and the wrapper as
//! `<emulator>`. Tests take a file lock so they run one at a time, use unique
//! domain names, and a Drop guard destroys + undefines what they made.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

const URI: &str = "qemu:///system";
const BIN: &str = env!("CARGO_BIN_EXE_ivchan-provision");

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .expect("run virsh")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Make sure libvirtd runs (DESIGN.md set-up), and serialise the tests.
fn setup() -> Option<Flock<File>> {
    for p in ["virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"] {
        if !common::require(p) {
            return None;
        }
    }
    let lock = File::create("/tmp/ivchan-libvirt-tests.lock").expect("lock file");
    let lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    if !virsh(&["version"]).status.success() {
        if !sh("id libvirt-qemu >/dev/null 2>&1") {
            sh("getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu");
            sh("useradd -r -g libvirt-qemu libvirt-qemu");
        }
        fs::create_dir_all("/var/log/libvirt").unwrap();
        fs::create_dir_all("/var/run/libvirt").unwrap();
        sh("pgrep -x virtlogd >/dev/null || virtlogd -d");
        sh("pgrep -x libvirtd >/dev/null || libvirtd -d");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !virsh(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "libvirtd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // libvirt re-probes QEMU (~4 s, ~10 times per define) when /dev/kvm is
    // not accessible to the qemu user ("KVM was enabled when probing ... but it
    // is not available now"). Opt in to granting that access (domains here are
    // type='qemu', TCG, so KVM is never used).
    if std::env::var("IVCHAN_LIBVIRT_KVM_ACCESS").as_deref() == Ok("1")
        && Path::new("/dev/kvm").exists()
    {
        sh("id libvirt-qemu >/dev/null 2>&1 && chgrp libvirt-qemu /dev/kvm && chmod g+rw /dev/kvm");
    }
    Some(lock)
}

/// A test domain; destroyed, undefined and its region removed on drop.
struct Dom {
    name: String,
    uuid: String,
    dir: tempfile::TempDir,
}

impl Drop for Dom {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
        let _ = fs::remove_file(format!("/dev/shm/fg_{}", self.uuid));
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Dom {
    fn new(acpi: bool, emulator: &str) -> Dom {
        Dom::with(acpi, emulator, "pc", "")
    }

    /// A domain of `machine` type with `devices` (XML lines) after its console.
    fn with(acpi: bool, emulator: &str, machine: &str, devices: &str) -> Dom {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let pid = std::process::id();
        let uuid = format!(
            "{pid:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n & 0xffff,
            (t >> 12) & 0xfff,
            t & 0xfff,
            t >> 16 & 0xffff_ffff_ffff
        );
        let name = format!("ivchan-test-{pid}-{n}");
        let dir = tempfile::tempdir().unwrap();
        let features = if acpi {
            "\n  <features>\n    <acpi/>\n  </features>"
        } else {
            ""
        };
        let xml = format!(
            "<domain type='qemu'>\n  <!-- ivchan test domain -->\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type arch='x86_64' machine='{machine}'>hvm</type>\n  </os>{features}\n  <devices>\n    <emulator>{emulator}</emulator>\n    <console type='pty'/>\n{devices}  </devices>\n</domain>\n"
        );
        fs::write(dir.path().join("dom.xml"), xml).unwrap();
        Dom { name, uuid, dir }
    }

    fn file(&self) -> String {
        self.dir
            .path()
            .join("dom.xml")
            .to_string_lossy()
            .into_owned()
    }

    fn define(&self) {
        ok(&virsh(&["define", &self.file()]));
    }

    fn start(&self) {
        ok(&virsh(&["start", &self.name]));
    }

    /// The running QEMU's argv.
    fn qemu_cmdline(&self) -> Vec<String> {
        let pid = fs::read_to_string(format!("/var/run/libvirt/qemu/{}.pid", self.name))
            .expect("pid file");
        let raw = fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn log(&self) -> String {
        fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", self.name)).unwrap_or_default()
    }
}

fn tool(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn has_device(args: &[String], uuid: &str) -> bool {
    args.iter()
        .any(|a| a.contains("\"driver\":\"ivshmem-plain\""))
        && args.iter().any(|a| {
            a.contains(&format!("/dev/shm/fg_{uuid}")) || a.contains(&format!("fg_{uuid}"))
        })
}

#[test]
fn inject_define_start_and_apply() {
    let Some(_lock) = setup() else { return };
    // Route 1 on a file, then define + start: QEMU gets the device.
    let d = Dom::new(true, "/usr/bin/qemu-system-x86_64");
    ok(&tool(&["inject", &d.file()]));
    if common::require("virt-xml-validate") {
        common::validate(Path::new(&d.file())).expect("virt-xml-validate");
    }
    d.define();
    d.start();
    let args = d.qemu_cmdline();
    assert!(has_device(&args, &d.uuid), "{args:?}");
    assert!(
        args.iter().any(|a| a.contains("\"addr\":\"0x1f\"")),
        "{args:?}"
    );
    println!(
        "libvirt started QEMU with the <shmem> device: {}",
        args.iter()
            .filter(|a| a.contains("ivshmem"))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Route 4: apply to a defined domain (dump -> inject -> define).
    let e = Dom::new(true, "/usr/bin/qemu-system-x86_64");
    e.define();
    let o = tool(&["apply", &e.name]);
    ok(&o);
    let again = tool(&["apply", &e.name]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to change"));
    e.start();
    assert!(has_device(&e.qemu_cmdline(), &e.uuid));
    // Undo through libvirt removes it from the definition again.
    ok(&tool(&["apply", "--undo", &e.name]));
    let inactive = ok(&virsh(&["dumpxml", "--inactive", &e.name]));
    assert!(!inactive.contains("<shmem"), "{inactive}");
}

#[test]
fn cmdline_route_through_libvirt_is_tainted() {
    let Some(_lock) = setup() else { return };
    let d = Dom::new(true, "/usr/bin/qemu-system-x86_64");
    d.define();
    let o = tool(&["apply", "--route", "cmdline", &d.name]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("custom-argv"));
    d.start();
    let args = d.qemu_cmdline();
    assert!(has_device(&args, &d.uuid), "{args:?}");
    assert!(args.iter().any(|a| a.contains("ivchan-shm")));
    assert!(d.log().contains("custom-argv"), "log: {}", d.log());
    // The tool sees the route and the taint in libvirt's own XML.
    let xml = ok(&virsh(&["dumpxml", &d.name]));
    let st = ivchan_provision::status(&xml, &ivchan_provision::Spec::default()).unwrap();
    assert!(st.cmdline && st.tainted.contains(&"custom-argv"), "{st}");
}

#[test]
fn hotplug_into_running_domain() {
    let Some(_lock) = setup() else { return };
    let d = Dom::new(true, "/usr/bin/qemu-system-x86_64");
    d.define();
    d.start();
    let o = tool(&["hotplug", &d.name]);
    ok(&o);
    let live = ok(&virsh(&["dumpxml", &d.name]));
    assert!(live.contains(&format!("fg_{}", d.uuid)), "{live}");
    let st = ivchan_provision::status(&live, &ivchan_provision::Spec::default()).unwrap();
    assert!(st.shmem.is_some() && st.tainted.is_empty(), "{st}");
    // Idempotent.
    let again = tool(&["hotplug", &d.name]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has"));
    // Without ACPI: a clear refusal.
    let n = Dom::new(false, "/usr/bin/qemu-system-x86_64");
    n.define();
    n.start();
    let o = tool(&["hotplug", &n.name]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no ACPI"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn monitor_route_hot_adds_and_taints() {
    let Some(_lock) = setup() else { return };
    let d = Dom::new(true, "/usr/bin/qemu-system-x86_64");
    d.define();
    d.start();
    let o = tool(&["monitor", &d.name]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("custom-monitor") && err.contains("confirmed by query-pci"),
        "{err}"
    );
    assert!(d.log().contains("custom-monitor"), "log: {}", d.log());
}

#[test]
fn wrapper_as_emulator() {
    let Some(_lock) = setup() else { return };
    let d = Dom::new(true, env!("CARGO_BIN_EXE_ivchan-qemu-wrapper"));
    d.define();
    d.start();
    let args = d.qemu_cmdline();
    assert!(has_device(&args, &d.uuid), "{args:?}");
    assert!(args.iter().any(|a| a.contains("ivchan-shm")), "{args:?}");
    let xml = ok(&virsh(&["dumpxml", &d.name]));
    let st = ivchan_provision::status(&xml, &ivchan_provision::Spec::default()).unwrap();
    assert!(st.wrapper.is_some(), "{st}");
}

/// Every document of the corpus (tests/data: both machine types, root
/// ports and switches, explicit addresses, full buses, every namespace
/// form, CRLF/tabs/BOM/comments/CDATA), through both XML routes and several
/// specs: libvirt defines each output and keeps the device (a dropped
/// `<qemu:arg>` or `<shmem>` would show in its own XML); undo gives the
/// input back.
#[test]
fn libvirt_defines_every_corpus_output() {
    let Some(_lock) = setup() else { return };
    use ivchan_provision::{inject, status, undo, ArgForm, Model, Route, Spec};
    let specs = [
        Spec::default(),
        Spec {
            model: Model::Doorbell {
                server: "/run/ivchan-test.sock".into(),
                vectors: 2,
            },
            ..Spec::default()
        },
        Spec {
            arg_form: ArgForm::Legacy,
            size: 16 << 20,
            ..Spec::default()
        },
        Spec {
            pick_free_slot: true,
            ..Spec::default()
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let (mut defined, mut refused) = (0, Vec::new());
    for input in common::inputs() {
        let text = fs::read_to_string(&input).unwrap();
        for spec in &specs {
            for route in [Route::Shmem, Route::Cmdline] {
                let o = match inject(&text, spec, route) {
                    Ok(o) => o,
                    Err(e) => {
                        // Only the corpus's bad documents and its full bus.
                        let stem = input.file_stem().unwrap().to_string_lossy().into_owned();
                        assert!(
                            [
                                "bad-uuid",
                                "malformed",
                                "no-uuid",
                                "not-domain",
                                "slot-taken",
                                "i440fx-full-bus"
                            ]
                            .contains(&stem.as_str()),
                            "{stem} refused: {e}"
                        );
                        refused.push(stem);
                        continue;
                    }
                };
                assert_eq!(undo(&o.xml, spec, route).unwrap().xml, text);
                // Test domains run under TCG: libvirt refuses type='kvm'
                // without usable KVM; nothing else is changed.
                let xml = o.xml.replacen("type='kvm'", "type='qemu'", 1);
                let f = dir.path().join("dom.xml");
                fs::write(&f, &xml).unwrap();
                let out = virsh(&["define", f.to_str().unwrap()]);
                assert!(
                    out.status.success(),
                    "{} via {} ({spec:?}): libvirt refused it: {}\n{xml}",
                    input.display(),
                    route.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let uuid = status(&xml, spec).unwrap().uuid;
                let back = ok(&virsh(&["dumpxml", "--inactive", &uuid]));
                let _ = virsh(&["undefine", &uuid]);
                let st = status(&back, spec).unwrap();
                match route {
                    Route::Shmem => assert!(st.shmem.is_some(), "{}: {back}", input.display()),
                    Route::Cmdline => assert!(st.cmdline, "{}: {back}", input.display()),
                }
                // libvirt's own rewrite of it still undoes cleanly.
                let un = undo(&back, spec, route).unwrap();
                assert!(!status(&un.xml, spec).unwrap().provisioned(), "{}", un.xml);
                assert!(!un.xml.contains(ivchan_provision::inject::PORT_ALIAS));
                defined += 1;
            }
        }
    }
    refused.dedup();
    println!("libvirt defined {defined} corpus outputs; the tool refused {refused:?}");
    assert!(defined >= 100, "only {defined} defined");
}

/// q35 through libvirt: `apply` puts the device behind a pcie-root-port it
/// adds; QEMU starts with it there; `apply --undo` takes both away.
/// `hotplug` refuses a domain with no free port, and plugs into a free one.
#[test]
fn q35_apply_and_hotplug() {
    let Some(_lock) = setup() else { return };
    // No PCI devices: libvirt adds no root port of its own.
    let bare = "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n";
    let d = Dom::with(true, "/usr/bin/qemu-system-x86_64", "q35", bare);
    d.define();
    let o = tool(&["apply", &d.name]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("pcie-root-port"), "{err}");
    let inactive = ok(&virsh(&["dumpxml", "--inactive", &d.name]));
    assert!(inactive.contains("ua-ivchan-port"), "{inactive}");
    d.start();
    let args = d.qemu_cmdline();
    assert!(
        args.iter()
            .any(|a| a.contains("ivshmem-plain") && a.contains("\"bus\":\"ua-ivchan-port\"")),
        "{args:?}"
    );
    let _ = virsh(&["destroy", &d.name]);
    ok(&tool(&["apply", "--undo", &d.name]));
    let inactive = ok(&virsh(&["dumpxml", "--inactive", &d.name]));
    assert!(
        !inactive.contains("<shmem") && !inactive.contains("ua-ivchan-port"),
        "{inactive}"
    );

    // A running q35 domain with no free port: a clear refusal, nothing attached.
    let full = Dom::with(true, "/usr/bin/qemu-system-x86_64", "q35", bare);
    full.define();
    full.start();
    let o = tool(&["hotplug", &full.name]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("no free hot-pluggable PCIe port"),
        "{err}"
    );
    assert!(!ok(&virsh(&["dumpxml", &full.name])).contains("<shmem"));

    // With a spare port, hotplug puts it there.
    let spare = Dom::with(
        true,
        "/usr/bin/qemu-system-x86_64",
        "q35",
        &format!("{bare}    <controller type='pci' index='1' model='pcie-root-port'/>\n"),
    );
    spare.define();
    spare.start();
    let o = tool(&["hotplug", &spare.name]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0000:01:00.0"), "{err}");
    // 8 MiB behind a port the firmware sized at 2 MiB: warned.
    assert!(err.contains("2 MiB of prefetchable memory"), "{err}");
    let live = ok(&virsh(&["dumpxml", &spare.name]));
    assert!(live.contains("bus='0x01' slot='0x00'"), "{live}");

    // libvirt's own q35 domain (it adds a spare root port): hotplug just works.
    let plain = Dom::with(true, "/usr/bin/qemu-system-x86_64", "q35", "");
    plain.define();
    plain.start();
    let o = tool(&["hotplug", &plain.name]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = tool(&["hotplug", &spare.name]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has"));
}
