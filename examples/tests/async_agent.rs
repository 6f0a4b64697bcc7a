//! The async host agent serves several guest agents (region-file mode, no
//! VM) from one runtime: each VM's session, checked echo and quit.

use std::process::{Command, Stdio};

const VMS: u32 = 3;

#[test]
fn the_async_host_agent_serves_several_guest_agents() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let host = Command::new(env!("CARGO_BIN_EXE_ivchan-host-agent-async"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--count", &VMS.to_string(), "--echo", "200", "--wait", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guests = Vec::new();
    for i in 1..=VMS {
        // What QEMU does: an empty file, then sized.
        let path = dir
            .path()
            .join(format!("fg_00000000-0000-4000-8000-{i:012x}"));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(8 << 20).unwrap();
        drop(file);
        guests.push(
            Command::new(env!("CARGO_BIN_EXE_ivchan-guest-agent"))
                .arg("--region-file")
                .arg(&path)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let out = host.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.matches("echo of 200 messages").count(),
        VMS as usize,
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("all {VMS} VMs served")),
        "{stdout}"
    );
    for mut guest in guests {
        assert!(guest.wait().unwrap().success(), "a guest agent failed");
    }
}
