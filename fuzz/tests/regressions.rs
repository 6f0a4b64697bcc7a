//! Every input kept under `regressions/<target>/` (crashes found once, and
//! seeds worth keeping), replayed through the target's check on stable.

use std::fs;
use std::path::Path;
use std::sync::Mutex;

/// One replay at a time: the doorbell check counts this process's open
/// descriptors before and after its script, and another test's replay
/// (holding its directory or an input file open) would count as a leak.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = fs::read(&path).expect("read input");
        check(&data);
        count += 1;
    }
    count
}

#[test]
fn ring_consumer_inputs() {
    assert!(replay("ring_consumer", ivchan_fuzz::ring_consumer) > 0);
}

#[test]
fn header_inputs() {
    assert!(replay("header", ivchan_fuzz::header) > 0);
}

#[test]
fn domain_xml_inputs() {
    assert!(replay("domain_xml", ivchan_fuzz::domain_xml) > 0);
}

#[test]
fn qmp_reply_inputs() {
    assert!(replay("qmp_reply", ivchan_fuzz::qmp_reply) > 0);
}

#[test]
fn doorbell_clients_inputs() {
    assert!(replay("doorbell_clients", ivchan_fuzz::doorbell_clients) > 0);
}
