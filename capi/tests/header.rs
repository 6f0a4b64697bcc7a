//! `include/ivchan.h` is what cbindgen makes of the sources now: the test
//! regenerates it and fails on any difference. `IVCHAN_BLESS=1` rewrites
//! the checked-in header instead.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = dir.join("include/ivchan.h");
    if std::env::var_os("IVCHAN_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is out of date with capi/src: regenerate it with \
         `IVCHAN_BLESS=1 cargo test -p ivchan-c --test header` and commit it",
        path.display()
    );
}
