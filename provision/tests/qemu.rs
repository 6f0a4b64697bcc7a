//! Against a real `qemu-system-x86_64` (TCG, no kernel: it idles in firmware,
//! which is enough for QMP): QMP hot-add, and the wrapper in the emulator's place.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ivchan_provision::qmp::{find_ivshmem, Monitor, Qmp};

const QEMU: &str = "qemu-system-x86_64";
const UUID: &str = "0e8c2f4a-3b5d-4c6e-8f70-91a2b3c4d5e6";

/// Kills the QEMU it holds, whatever happens in the test.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn base_args(sock: &Path) -> Vec<String> {
    [
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-nographic",
        "-nodefaults",
        "-m",
        "64",
        "-uuid",
        UUID,
        "-qmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("unix:{},server=on,wait=off", sock.display())])
    .collect()
}

fn start(program: &str, args: &[String], env: &[(&str, String)]) -> Vm {
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Vm(c.spawn().expect("start QEMU"))
}

fn connect(vm: &mut Vm, sock: &Path) -> Qmp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(q) = Qmp::connect(sock) {
            return q;
        }
        if let Ok(Some(st)) = vm.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = vm.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("QEMU exited early ({st}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "QMP socket {sock:?} never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Migrates the VM to nowhere (`exec:cat > /dev/null`): what QEMU says
/// about the device's migratability, without a second QEMU. `Ok` once the
/// migration completed, `Err` with QEMU's reason when it refused or failed.
fn migrate_to_nowhere(q: &mut Qmp) -> Result<(), String> {
    q.execute(
        "migrate",
        Some(serde_json::json!({ "uri": "exec:cat > /dev/null" })),
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = q
            .execute("query-migrate", None)
            .map_err(|e| e.to_string())?;
        match st["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") => return Err(st.to_string()),
            _ if Instant::now() > deadline => return Err(format!("still migrating: {st}")),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn region(dir: &Path) -> PathBuf {
    dir.join(format!("fg_{UUID}"))
}

#[test]
fn qmp_hot_add_against_real_qemu() {
    if !common::require(QEMU) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut vm = start(QEMU, &base_args(&sock), &[]);
    drop(connect(&mut vm, &sock));
    let region_t = format!("{}/fg_{{uuid}}", dir.path().display());
    let provision_qmp = || {
        Command::new(env!("CARGO_BIN_EXE_ivchan-provision"))
            .args([
                "qmp",
                sock.to_str().unwrap(),
                "--uuid",
                UUID,
                "--region",
                &region_t,
            ])
            .output()
            .unwrap()
    };
    let out = provision_qmp();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("slot 0x1f (confirmed by query-pci)"), "{err}");
    let mut q = connect(&mut vm, &sock);
    let pci = q.execute("query-pci", None).unwrap();
    let found = find_ivshmem(&pci);
    assert_eq!(found.len(), 1, "{pci}");
    assert_eq!(
        (found[0].bus, found[0].slot, found[0].qdev_id.as_str()),
        (0, 0x1f, "ivchan-shm")
    );
    assert_eq!(
        std::fs::metadata(region(dir.path())).unwrap().len(),
        8 << 20
    );
    // QEMU serves one QMP client at a time.
    drop(q);
    // Idempotent: a second run adds nothing.
    let again = provision_qmp();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already present"));
    // The hot-added device is a master: QEMU migrates the VM.
    let mut q = connect(&mut vm, &sock);
    migrate_to_nowhere(&mut q).expect("QEMU refused to migrate a VM with the hot-added device");
    println!("QMP hot-add: {found:?}");
}

#[test]
fn wrapper_starts_real_qemu_with_the_device() {
    if !common::require(QEMU) {
        return;
    }
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v qemu-system-x86_64"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let env = [
        ("IVCHAN_REAL_QEMU", real.clone()),
        (
            "IVCHAN_REGION",
            format!("{}/fg_{{uuid}}", dir.path().display()),
        ),
        ("IVCHAN_WRAPPER_CONFIG", "/nonexistent".to_string()),
    ];
    let wrapper = env!("CARGO_BIN_EXE_ivchan-qemu-wrapper");
    // Pass-through: no -uuid, nothing added.
    let v = Command::new(wrapper)
        .arg("-version")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("QEMU emulator version"));
    // A VM start: the device is added.
    let mut vm = start(wrapper, &base_args(&sock), &env);
    let mut q = connect(&mut vm, &sock);
    let pci = q.execute("query-pci", None).unwrap();
    let found = find_ivshmem(&pci);
    assert_eq!(found.len(), 1, "{pci}");
    assert_eq!(
        (found[0].slot, found[0].qdev_id.as_str()),
        (0x1f, "ivchan-shm")
    );
    assert_eq!(
        std::fs::metadata(region(dir.path())).unwrap().len(),
        8 << 20
    );
    // The process is QEMU itself (exec, no shell in between), with the added arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.0.id())).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        args.iter()
            .any(|a| a.contains("\"driver\":\"ivshmem-plain\"")),
        "{args:?}"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", vm.0.id())).unwrap();
    assert_eq!(std::fs::canonicalize(&real).unwrap(), exe);
    // The default role is master: QEMU migrates the VM.
    migrate_to_nowhere(&mut q).expect("QEMU refused to migrate the wrapper's VM");
    drop(q);
    drop(vm);
    // IVCHAN_ROLE=peer: the device QEMU's own default gives; QEMU refuses
    // to migrate, which is why it is not ivchan's default.
    let _ = std::fs::remove_file(region(dir.path()));
    let mut env = env.to_vec();
    env.push(("IVCHAN_ROLE", "peer".to_string()));
    let mut vm = start(wrapper, &base_args(&sock), &env);
    let mut q = connect(&mut vm, &sock);
    let refused = migrate_to_nowhere(&mut q).expect_err("QEMU migrated a peer-mode VM");
    assert!(refused.contains("peer mode"), "{refused}");
    println!("wrapper: {found:?}; peer role refused: {refused}");
}

/// q35: QMP hot-add goes to slot 0 of a free pcie-root-port (pcie.0 takes
/// no hotplug, 00:1f is the chipset's); without one it is refused.
#[test]
fn qmp_hot_add_on_q35_uses_a_free_root_port() {
    if !common::require(QEMU) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let region_t = format!("{}/fg_{{uuid}}", dir.path().display());
    let q35_args = |sock: &Path, ports: &[&str]| {
        let mut a = base_args(sock);
        a[1] = "q35".into();
        for p in ports {
            a.extend(["-device".to_string(), p.to_string()]);
        }
        a
    };
    let provision_qmp = |sock: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ivchan-provision"))
            .args(["qmp", sock.to_str().unwrap(), "--uuid", UUID])
            .args(["--region", &region_t])
            .output()
            .unwrap()
    };
    // No root port: refused, nothing added.
    let sock = dir.path().join("bare.sock");
    let mut vm = start(QEMU, &q35_args(&sock, &[]), &[]);
    drop(connect(&mut vm, &sock));
    let out = provision_qmp(&sock);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("no free pcie-root-port"),
        "{err}"
    );
    drop(vm);

    // Two root ports, one taken: the free one.
    let sock = dir.path().join("ports.sock");
    let ports = [
        "pcie-root-port,id=rp1,bus=pcie.0,addr=0x5,chassis=1",
        "pcie-root-port,id=rp2,bus=pcie.0,addr=0x6,chassis=2",
        "virtio-rng-pci,bus=rp2,addr=0x0",
    ];
    let mut vm = start(QEMU, &q35_args(&sock, &ports), &[]);
    // Until the firmware numbers the ports' buses, query-pci lists nothing
    // behind them (taken or not); a running guest is past that.
    let mut q = connect(&mut vm, &sock);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !q
        .execute("query-pci", None)
        .unwrap()
        .to_string()
        .contains("\"devices\":[]")
    {
        assert!(
            Instant::now() < deadline,
            "the firmware never numbered the ports"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(q);
    let out = provision_qmp(&sock);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("added ivshmem device ivchan-shm"), "{err}");
    let mut q = connect(&mut vm, &sock);
    let pci = q.execute("query-pci", None).unwrap();
    let found = find_ivshmem(&pci);
    assert_eq!(found.len(), 1, "{pci}");
    assert_eq!(found[0].slot, 0, "{found:?}");
    assert_ne!(found[0].bus, 0, "{found:?}");
    // Behind rp1 (rp2 holds the rng).
    let rp1 = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["qdev_id"] == "rp1")
        .unwrap();
    assert_eq!(
        rp1["pci_bridge"]["devices"][0]["qdev_id"], "ivchan-shm",
        "{pci}"
    );
    let bus = found[0].bus;
    println!("QMP hot-add on q35: behind {bus} ({err})");
}

/// The wrapper on a q35 machine: not the chipset's 00:1f, the highest free
/// pcie.0 slot; QEMU starts with it.
#[test]
fn wrapper_on_q35_takes_a_free_root_bus_slot() {
    if !common::require(QEMU) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let env = [
        ("IVCHAN_REAL_QEMU", "qemu-system-x86_64".to_string()),
        (
            "IVCHAN_REGION",
            format!("{}/fg_{{uuid}}", dir.path().display()),
        ),
        ("IVCHAN_WRAPPER_CONFIG", "/nonexistent".to_string()),
    ];
    let mut args = base_args(&sock);
    args[1] = "pc-q35-7.2".into();
    args.extend([
        "-device".into(),
        "virtio-rng-pci,bus=pcie.0,addr=0x1e".into(),
    ]);
    let mut vm = start(env!("CARGO_BIN_EXE_ivchan-qemu-wrapper"), &args, &env);
    let mut q = connect(&mut vm, &sock);
    let found = find_ivshmem(&q.execute("query-pci", None).unwrap());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].bus, found[0].slot), (0, 0x1d), "{found:?}");
}
