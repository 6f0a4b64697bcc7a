//! `ivchan-provision completions` and `man`: generated from the CLI's clap
//! definitions.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ivchan-provision"))
        .args(args)
        .output()
        .expect("run ivchan-provision");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let (ok, script, err) = run(&["completions", "bash"]);
    assert!(ok, "{err}");
    for word in [
        "inject",
        "undo",
        "hotplug",
        "install-hook",
        "--pick-free-slot",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, err) = run(&["man", "--dir", d]);
    assert!(ok, "{err}");
    let top = std::fs::read_to_string(dir.path().join("ivchan-provision.1")).expect("page");
    assert!(top.contains(".TH ivchan-provision 1"), "{top}");
    let inject = std::fs::read_to_string(dir.path().join("ivchan-provision-inject.1"))
        .expect("a page per subcommand");
    assert!(inject.contains("\\-\\-pick\\-free\\-slot"), "{inject}");
}
