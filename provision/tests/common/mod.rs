//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Is `program` runnable? If not: fail when IVCHAN_REQUIRE_REAL=1, else print
/// "skipped: <program> not installed" and return false.
pub fn require(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg("command -v \"$1\"")
        .arg("sh")
        .arg(program)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || Path::new(program).is_file();
    if found {
        return true;
    }
    if std::env::var("IVCHAN_REQUIRE_REAL").as_deref() == Ok("1") {
        panic!("{program} is required (IVCHAN_REQUIRE_REAL=1) but not installed");
    }
    println!("skipped: {program} not installed");
    false
}

/// tests/data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Input documents of the golden corpus (tests/data/*.xml).
pub fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data_dir())
        .expect("tests/data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    v.sort();
    v
}

/// Run `virt-xml-validate FILE domain`; Err with its output on failure.
pub fn validate(file: &Path) -> Result<(), String> {
    let o = Command::new("virt-xml-validate")
        .arg(file)
        .arg("domain")
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}
