//! What the CLI tests share.

/// Compares `actual` with the golden file `cli/tests/golden/NAME`; with
/// `IVCHAN_BLESS=1` in the environment, writes it instead.
pub fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("IVCHAN_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).expect("golden file");
    assert!(
        actual == expected,
        "{name} changed (IVCHAN_BLESS=1 rewrites it):\n{actual}"
    );
}
