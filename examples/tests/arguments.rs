//! The agents' command lines: what a script can rely on (versions, exit
//! codes) and the exact message for each malformed argument.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args)
        // Log output is what -v/-q choose, not the caller's environment.
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HOST: &str = env!("CARGO_BIN_EXE_ivchan-host-agent");
const GUEST: &str = env!("CARGO_BIN_EXE_ivchan-guest-agent");
const DEMO: &str = env!("CARGO_BIN_EXE_ivchan-demo");

#[test]
fn every_binary_has_a_version() {
    for (bin, name) in [
        (HOST, "ivchan-host-agent"),
        (GUEST, "ivchan-guest-agent"),
        (DEMO, "ivchan-demo"),
    ] {
        let (code, out, _) = run(bin, &["--version"]);
        assert_eq!(code, Some(0));
        assert_eq!(out, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn malformed_arguments_get_exact_messages() {
    let uuid = "00000000-0000-4000-8000-000000000001";
    for (bin, args, message) in [
        (
            HOST,
            vec!["--uuid", uuid, "--size", "3M"],
            "error: invalid value '3M' for '--size <SIZE>': region size 3145728 is not a power \
             of two (1 MiB to 16 GiB, e.g. 8M)\n\nFor more information, try '--help'.\n",
        ),
        (
            HOST,
            vec!["--uuid", uuid, "--allow-owner", "no-such-user-ivchan"],
            "error: invalid value 'no-such-user-ivchan' for '--allow-owner <USER>': no user \
             named \"no-such-user-ivchan\" (give a user name or a numeric uid)\n\nFor more \
             information, try '--help'.\n",
        ),
        (
            HOST,
            vec!["--uuid", uuid, "--allow-group", "no-such-group-ivchan"],
            "error: invalid value 'no-such-group-ivchan' for '--allow-group <GROUP>': no group \
             named \"no-such-group-ivchan\" (give a group name or a numeric gid)\n\nFor more \
             information, try '--help'.\n",
        ),
        (
            HOST,
            vec!["--uuid", "not-a-uuid"],
            "error: invalid value 'not-a-uuid' for '--uuid <UUID>': \"not-a-uuid\" is not a \
             UUID (expected 8-4-4-4-12 hex digits, e.g. \
             5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c)\n\nFor more information, try '--help'.\n",
        ),
        (
            GUEST,
            vec!["--address", "garbage"],
            "error: invalid value 'garbage' for '--address <ADDRESS>': \"garbage\" is not a PCI \
             address: expected DOMAIN:BUS:SLOT.FUNCTION in hex, e.g. 0000:00:1f.0\n\nFor more \
             information, try '--help'.\n",
        ),
    ] {
        let (code, _, err) = run(bin, &args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err, message, "{args:?}");
    }
}

#[test]
fn names_are_accepted_where_numbers_are() {
    // Parsing succeeds (root and its group exist everywhere); the run then
    // stops at the missing directory, after the arguments were accepted.
    let (code, _, err) = run(
        HOST,
        &[
            "--uuid",
            "00000000-0000-4000-8000-000000000001",
            "--dir",
            "/nonexistent-ivchan-dir",
            "--allow-owner",
            "root",
            "--allow-group",
            "root",
            "--size",
            "2M",
            "--wait",
            "1",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent-ivchan-dir"), "{err}");
}

#[test]
fn a_guest_agent_says_what_it_waits_for() {
    let (code, _, err) = run(
        GUEST,
        &[
            "--sysfs",
            "/nonexistent-ivchan-sysfs",
            "--address",
            "00:1f.0",
            "--wait",
            "0",
        ],
    );
    assert_eq!(code, Some(1));
    let first = err.lines().next().unwrap_or("");
    assert_eq!(
        first,
        "ivchan-guest-agent: waiting up to 0ns for the ivshmem device at 0000:00:1f.0"
    );
}

#[test]
fn agents_generate_their_man_pages_and_completions() {
    for (bin, name) in [(HOST, "ivchan-host-agent"), (GUEST, "ivchan-guest-agent")] {
        // Alone: no --uuid or device needed.
        let (code, page, err) = run(bin, &["--man"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(page.contains(&format!(".TH {name} 1")), "{page}");
        assert!(page.contains("\\-\\-version"), "{page}");
        // The generation flags themselves stay out of the page.
        assert!(!page.contains("completions"), "{page}");
        let (code, script, err) = run(bin, &["--completions", "bash"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            script.contains("complete -F") && script.contains(name) && script.contains("--wait"),
            "{script}"
        );
        // Only alone.
        let (code, _, err) = run(bin, &["--man", "--wait", "5"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("cannot be used with"), "{err}");
    }
}

#[test]
fn guest_agent_verbose_says_why_it_passed_a_device_over() {
    use ivchan_guest::{select, MapOptions, Selector, VmUuid};
    use ivchan_protocol::{Header, InitParams};
    use ivchan_testkit::sysfs::{Dev, FakeSysfs};

    let ours = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
    let theirs: VmUuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        .parse()
        .expect("uuid");
    let sys = FakeSysfs::new();
    sys.set_product_uuid(ours);
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    // Only another VM's region: no match, nothing to wait for.
    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &MapOptions::default(),
    )
    .expect("map");
    let params = InitParams {
        uuid: *theirs.as_bytes(),
        name: "theirs",
        ring_size: None,
    };
    Header::create(bar.region(), &params).expect("header");
    drop(bar);

    let root = sys.root().to_str().expect("utf-8 path");
    let (code, _, err) = run(GUEST, &["--sysfs", root, "--wait", "1", "-vv"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "DEBUG ivchan_guest::select] 0000:00:1f.0: channel \"theirs\" of VM \
             0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0: passed over"
        ),
        "{err}"
    );
    // Without -v, the same failure and no log records.
    let (code, _, err) = run(GUEST, &["--sysfs", root, "--wait", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("DEBUG"), "{err}");
}
