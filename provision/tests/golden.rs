//! Golden files: every input in tests/data/ through both XML routes, compared
//! with tests/data/golden/ (regenerate with UPDATE_GOLDEN=1), plus
//! idempotence, exact undo, and virt-xml-validate on everything written.

mod common;

use std::fs;
use std::path::PathBuf;

use ivchan_provision::{inject, undo, Route, Spec};

fn golden_path(input: &std::path::Path, route: &str, ext: &str) -> PathBuf {
    let stem = input.file_stem().unwrap().to_string_lossy();
    common::data_dir()
        .join("golden")
        .join(format!("{stem}.{route}.{ext}"))
}

fn routes() -> [(Route, &'static str); 2] {
    [(Route::Shmem, "shmem"), (Route::Cmdline, "cmdline")]
}

#[test]
fn golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let spec = Spec::default();
    let mut checked = 0;
    for input in common::inputs() {
        let text = fs::read_to_string(&input).unwrap();
        for (route, rname) in routes() {
            let (actual, path, other) = match inject(&text, &spec, route) {
                Ok(o) => {
                    assert!(o.changed, "{input:?} {rname}: nothing changed");
                    let again = inject(&o.xml, &spec, route).unwrap();
                    assert!(
                        !again.changed && again.xml == o.xml,
                        "{input:?} {rname}: not idempotent"
                    );
                    let back = undo(&o.xml, &spec, route).unwrap();
                    assert_eq!(
                        back.xml, text,
                        "{input:?} {rname}: undo does not restore the bytes"
                    );
                    (
                        o.xml,
                        golden_path(&input, rname, "xml"),
                        golden_path(&input, rname, "err"),
                    )
                }
                Err(e) => (
                    format!("{e}\n"),
                    golden_path(&input, rname, "err"),
                    golden_path(&input, rname, "xml"),
                ),
            };
            if update {
                fs::write(&path, &actual).unwrap();
                let _ = fs::remove_file(&other);
            }
            let expected = fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!("missing golden file {path:?}; run with UPDATE_GOLDEN=1")
            });
            assert_eq!(
                actual, expected,
                "{path:?} differs; run with UPDATE_GOLDEN=1 to update and review the diff"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} golden cases");
}

#[test]
fn virt_xml_validate_accepts_everything_written() {
    if !common::require("virt-xml-validate") {
        return;
    }
    let spec = Spec::default();
    let doorbell = Spec {
        model: ivchan_provision::Model::Doorbell {
            server: "/run/ivshmem.sock".into(),
            vectors: 2,
        },
        ..Spec::default()
    };
    let picked = Spec {
        pick_free_slot: true,
        ..Spec::default()
    };
    let legacy = Spec {
        arg_form: ivchan_provision::ArgForm::Legacy,
        ..Spec::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for input in common::inputs() {
        let text = fs::read_to_string(&input).unwrap();
        for s in [&spec, &doorbell, &picked, &legacy] {
            for (route, rname) in routes() {
                let Ok(o) = inject(&text, s, route) else {
                    continue;
                };
                let f = dir.path().join(format!("{n}.xml"));
                fs::write(&f, &o.xml).unwrap();
                if let Err(e) = common::validate(&f) {
                    panic!(
                        "{input:?} via {rname} ({s:?}) does not validate:\n{e}\n{}",
                        o.xml
                    );
                }
                n += 1;
            }
        }
    }
    println!("virt-xml-validate accepted {n} generated documents");
    assert!(n >= 30);
}
