//! One test per failure reported against the routes on real-world domains
//! (q35 defaults, PCIe hotplug, default-namespace `<commandline>`,
//! commands that did not do what was asked, rewrites that changed the
//! file's owner or type, mistakes accepted, a hook that failed open). Each
//! fails on the code before the fix.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};

use ivchan_provision::xml::{Doc, QEMU_NS};
use ivchan_provision::{inject, status, undo, Error, Route, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_ivchan-provision");
const UUID: &str = "c0ffee00-0000-4000-8000-000000000012";

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut si = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // A command that refuses its options exits before reading stdin.
        let _ = si.write_all(s.as_bytes());
    }
    drop(si);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn domain(machine: &str, devices: &str, tail: &str) -> String {
    format!(
        "<domain type='qemu'>\n  <name>f</name>\n  <uuid>{UUID}</uuid>\n  <os>\n    <type arch='x86_64' machine='{machine}'>hvm</type>\n  </os>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}  </devices>\n{tail}</domain>\n"
    )
}

fn q35() -> String {
    domain("pc-q35-7.2", "", "")
}

/// The qemu-namespace elements named `local` in a document, as a parser
/// that resolves namespaces sees them.
fn qemu_elements(xml: &str, local: &str) -> usize {
    let d = Doc::parse(xml).unwrap();
    (0..d.elements.len())
        .filter(|&i| d.is_ns_element(i, QEMU_NS, local))
        .count()
}

#[test]
fn q35_default_route_succeeds_through_the_filter() {
    // The nova and VDSM examples run `filter`/`inject` with no options.
    let o = run(&["filter"], Some(&q35()));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("model='pcie-root-port'"), "{out}");
    assert!(out.contains("bus='0x01' slot='0x00'"), "{out}");
    assert!(
        stderr(&o).contains("PCI address 0000:01:00.0"),
        "{}",
        stderr(&o)
    );
    // i440fx keeps slot 0x1f on bus 0.
    let o = run(&["filter"], Some(&domain("pc-i440fx-7.2", "", "")));
    assert!(
        stdout(&o).contains("bus='0x00' slot='0x1f'"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("pcie-root-port"));
}

#[test]
fn q35_uses_a_free_root_port_before_adding_one() {
    let ports = "    <controller type='pci' index='0' model='pcie-root'/>\n    <controller type='pci' index='1' model='pcie-root-port'>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0' multifunction='on'/>\n    </controller>\n    <controller type='pci' index='2' model='pcie-root-port'>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x1'/>\n    </controller>\n    <controller type='pci' index='3' model='pcie-root-port'>\n      <target hotplug='off'/>\n    </controller>\n    <interface type='network'>\n      <source network='default'/>\n      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n    </interface>\n";
    let x = domain("q35", ports, "");
    let spec = Spec::default();
    let o = inject(&x, &spec, Route::Shmem).unwrap();
    let p = o.placement.clone().unwrap();
    // Port 1 is taken, port 3 has hotplug off: port 2.
    assert_eq!((p.bus, p.slot, p.add_port), (2, 0, None), "{p:?}");
    assert!(o.xml.contains("bus='0x02' slot='0x00'"));
    assert_eq!(undo(&o.xml, &spec, Route::Shmem).unwrap().xml, x);
    // Live, the same free port; with none free, a clear refusal.
    let live = ivchan_provision::inject::shmem_device_xml(&x, &spec)
        .unwrap()
        .unwrap();
    assert_eq!(live.placement.bus, 2);
    assert!(live.xml.contains("bus='0x02' slot='0x00'"), "{}", live.xml);
    let e = ivchan_provision::inject::shmem_device_xml(&q35(), &spec).unwrap_err();
    assert!(matches!(e, Error::NoHotplugPort { .. }), "{e}");
    assert!(e.to_string().contains("pcie-root-port"), "{e}");
    // The next index after the highest controller: libvirt fills gaps.
    let full = x.replace("index='2' model", "index='5' model").replace(
        "<interface type='network'>",
        "<rng model='virtio'>\n      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>\n    </rng>\n    <interface type='network'>",
    );
    let o = inject(&full, &spec, Route::Shmem).unwrap();
    assert_eq!(o.placement.unwrap().add_port, Some(6));
}

#[test]
fn default_namespace_commandline_gets_valid_args() {
    let forms = [
        // Default namespace on the element.
        "  <commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'>\n    <arg value='-msg'/>\n    <arg value='timestamp=on'/>\n  </commandline>\n",
        // Self-closing, default namespace.
        "  <commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'/>\n",
        // A prefix declared on the element itself.
        "  <qq:commandline xmlns:qq='http://libvirt.org/schemas/domain/qemu/1.0'>\n    <qq:arg value='-msg'/>\n  </qq:commandline>\n",
    ];
    for tail in forms {
        let x = domain("pc", "", tail);
        let spec = Spec::default();
        let o = inject(&x, &spec, Route::Cmdline).unwrap();
        assert!(!o.xml.contains("<:"), "{}", o.xml);
        assert!(Doc::parse(&o.xml).is_ok(), "{}", o.xml);
        let before = qemu_elements(&x, "arg");
        assert_eq!(qemu_elements(&o.xml, "arg"), before + 4, "{}", o.xml);
        assert!(status(&o.xml, &spec).unwrap().cmdline);
        assert!(!inject(&o.xml, &spec, Route::Cmdline).unwrap().changed);
        assert_eq!(undo(&o.xml, &spec, Route::Cmdline).unwrap().xml, x);
    }
}

#[test]
fn undo_without_a_route_finds_the_cmdline_device() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d.xml");
    let x = domain("pc", "", "");
    fs::write(&f, &x).unwrap();
    let p = f.to_str().unwrap();
    assert!(run(&["inject", "--route", "cmdline", p], None)
        .status
        .success());
    assert_ne!(fs::read_to_string(&f).unwrap(), x);
    let o = run(&["undo", p], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("nothing to change"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(&f).unwrap(), x);
    // The filter's --undo too.
    let injected = stdout(&run(&["filter", "--route", "cmdline"], Some(&x)));
    assert_eq!(stdout(&run(&["filter", "--undo"], Some(&injected))), x);
}

#[test]
fn a_changed_option_updates_the_device() {
    let x = domain("pc", "", "");
    for route in ["shmem", "cmdline"] {
        let first = stdout(&run(&["filter", "--route", route], Some(&x)));
        for (args, want) in [
            (&["--size", "16M"][..], ["16", "16777216"]),
            (
                &["--slot", "0x10"][..],
                ["slot='0x10'", "\"addr\":\"0x10\""],
            ),
            (
                &["--model", "ivshmem-doorbell", "--server", "/run/s.sock"][..],
                ["ivshmem-doorbell", "ivshmem-doorbell"],
            ),
        ] {
            let mut a = vec!["filter", "--route", route];
            a.extend(args);
            let o = run(&a, Some(&first));
            assert!(o.status.success(), "{route} {args:?}: {}", stderr(&o));
            let out = stdout(&o);
            assert_ne!(out, first, "{route} {args:?}: nothing changed");
            let want = if route == "shmem" { want[0] } else { want[1] };
            assert!(out.contains(want), "{route} {args:?}: {out}");
            assert!(stderr(&o).contains("updating"), "{}", stderr(&o));
            // Still one device, and undo still restores the original.
            let one = if route == "shmem" {
                "<shmem "
            } else {
                "value='-device'"
            };
            assert_eq!(out.matches(one).count(), 1, "{route} {args:?}: {out}");
            let mut u = vec!["filter", "--undo"];
            u.extend(args);
            assert_eq!(stdout(&run(&u, Some(&out))), x, "{route} {args:?}");
        }
    }
}

#[test]
fn contradictory_or_impossible_options_are_refused() {
    let x = domain("pc", "", "");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--region", "/dev/shm/no-uuid"],
            "every VM would get the same region",
        ),
        (
            &["--server", "/run/s.sock"],
            "only for model ivshmem-doorbell",
        ),
        (&["--vectors", "2"], "only for model ivshmem-doorbell"),
        (&["--bus", "3"], "no PCI bus 3"),
        (&["--size", "512K"], "below the 1 MiB minimum"),
        (&["--size", "3M"], "not a power of two"),
    ];
    for (args, msg) in cases {
        for route in ["shmem", "cmdline"] {
            let mut a = vec!["filter", "--route", route];
            a.extend(*args);
            let o = run(&a, Some(&x));
            assert!(!o.status.success(), "{args:?} accepted");
            assert!(o.stdout.is_empty());
            assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
        }
    }
    // A bus the domain has is fine, and a port has only slot 0.
    let with_bus = domain(
        "q35",
        "    <controller type='pci' index='3' model='pcie-root-port'/>\n",
        "",
    );
    let o = run(&["filter", "--bus", "3"], Some(&with_bus));
    assert!(
        stdout(&o).contains("bus='0x03' slot='0x00'"),
        "{}",
        stderr(&o)
    );
    let o = run(&["filter", "--bus", "3", "--slot", "4"], Some(&with_bus));
    assert!(stderr(&o).contains("single slot 0"), "{}", stderr(&o));
}

#[test]
fn rewrites_follow_symlinks_and_refuse_read_only_files() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.xml");
    let link = dir.path().join("link.xml");
    let x = domain("pc", "", "");
    fs::write(&real, &x).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = run(&["inject", link.to_str().unwrap(), "--backup"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&real).unwrap().contains("<shmem"));
    assert_eq!(fs::metadata(&real).unwrap().mode() & 0o777, 0o640);
    assert_eq!(
        fs::read_to_string(dir.path().join("real.xml.bak")).unwrap(),
        x
    );

    let ro = dir.path().join("ro.xml");
    fs::write(&ro, &x).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
    let o = run(&["inject", ro.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(&ro).unwrap(), x);
    let o = run(&["inject", "--force", ro.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::metadata(&ro).unwrap().mode() & 0o777, 0o444);
}

#[test]
fn rewrites_keep_another_users_ownership() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: needs root to own files as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("theirs.xml");
    fs::write(&f, domain("pc", "", "")).unwrap();
    std::os::unix::fs::chown(&f, Some(4242), Some(4343)).unwrap();
    let o = run(&["inject", "--backup", f.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    for p in [f.clone(), dir.path().join("theirs.xml.bak")] {
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p:?}");
    }
}

#[test]
fn the_hook_fails_closed_on_a_squatted_region() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: needs root to plant a file owned by another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region = format!("{}/fg_{{uuid}}", dir.path().display());
    let file = dir.path().join(format!("fg_{UUID}"));
    // Another local user got there first.
    let f = fs::File::create(&file).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    std::os::unix::fs::chown(&file, Some(4242), Some(4242)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let base = [
        "hook", "--region", &region, "--size", "1M", "--owner", "0:0",
    ];
    let mut a = base.to_vec();
    a.extend(["--", "dom", "prepare", "begin", "-"]);
    let o = run(&a, Some(&domain("pc", "", "")));
    assert!(!o.status.success(), "the VM would start: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("refusing to start the VM")
            && err.contains("owned by")
            && err.contains("4242"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Opting out still logs it.
    let mut a = base.to_vec();
    a.extend(["--fail-open", "--", "dom", "prepare", "begin", "-"]);
    let o = run(&a, Some(&domain("pc", "", "")));
    assert!(o.status.success());
    assert!(stderr(&o).contains("4242"), "{}", stderr(&o));
}
