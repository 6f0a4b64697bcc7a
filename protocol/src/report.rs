//! Human-readable report of a region's header, rings and sides, shared by
//! the `ivchan` (host) and `ivchan-guest` inspect commands.
//!
//! It only reads the region, and everything it reads may come from an
//! untrusted peer: positions are shown as found, with fill levels computed
//! without overflow and marked invalid when they make no sense.
//!
//! This belongs in `ivchan-protocol` behind its `std` feature; until it moves
//! there, `ivchan-host` depends on this crate for it.

use std::fmt::Write as _;

use crate::layout::{HEADER_SIZE, VERSION_MAJOR};
use crate::{Direction, Header, PeerState, RingPlace, Side};

use crate::uuid::VmUuid;

/// `1536 B`, `64 KiB`, `8 MiB`: exact binary units when they fit, bytes otherwise.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

/// One line per fact: version, UUID, name, size, the layout parts, each
/// ring's positions and fill level, each side's state, epoch and heartbeat.
pub fn describe(header: &Header<'_>) -> String {
    let layout = header.layout();
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for brevity.
    let _ = writeln!(
        out,
        "protocol  {VERSION_MAJOR}.{} (compatible features 0x{:08x})",
        layout.version_minor, layout.compat_features
    );
    let _ = writeln!(out, "vm uuid   {}", VmUuid::from_bytes(layout.uuid));
    let _ = writeln!(
        out,
        "name      {}",
        display_name(layout.name_str(), &layout.name)
    );
    let _ = writeln!(
        out,
        "size      {} ({} bytes)",
        human_size(layout.region_size as u64),
        layout.region_size
    );
    let _ = writeln!(out, "layout");
    let _ = writeln!(
        out,
        "  {:<20} {:#010x} {:>10}",
        "header",
        0,
        human_size(HEADER_SIZE as u64)
    );
    for (label, direction) in [
        ("host->guest", Direction::HostToGuest),
        ("guest->host", Direction::GuestToHost),
    ] {
        let place = layout.ring(direction);
        let _ = writeln!(
            out,
            "  {:<20} {:#010x} {:>10}",
            format!("{label} control"),
            place.control,
            human_size(crate::layout::CONTROL_SIZE as u64)
        );
        let _ = writeln!(
            out,
            "  {:<20} {:#010x} {:>10}",
            format!("{label} data"),
            place.data,
            human_size(place.size as u64)
        );
    }
    let _ = writeln!(out, "rings");
    for (label, direction) in [
        ("host->guest", Direction::HostToGuest),
        ("guest->host", Direction::GuestToHost),
    ] {
        let (head, tail) = header.ring_positions(direction);
        let _ = writeln!(
            out,
            "  {label}  head {head}  tail {tail}  {}",
            fill(head, tail, layout.ring(direction))
        );
    }
    let _ = writeln!(out, "sides");
    for (label, side) in [("host", Side::Host), ("guest", Side::Guest)] {
        match header.status(side) {
            Ok(status) => {
                let doorbell = header.doorbell(side).map_or(String::new(), |d| {
                    format!("  doorbell peer {} ({} vectors)", d.peer, d.vectors)
                });
                let _ = writeln!(
                    out,
                    "  {label:<5}  state {:<6}  epoch {}  heartbeat {}{doorbell}",
                    state_name(status.state),
                    status.epoch,
                    status.heartbeat
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {label:<5}  invalid: {e}");
            }
        }
    }
    out
}

/// A one-line summary: `"name" uuid, 8 MiB, protocol 1.1`.
pub fn summary(header: &Header<'_>) -> String {
    let layout = header.layout();
    format!(
        "{} vm {}, {}, protocol {VERSION_MAJOR}.{}",
        display_name(layout.name_str(), &layout.name),
        VmUuid::from_bytes(layout.uuid),
        human_size(layout.region_size as u64),
        layout.version_minor
    )
}

fn display_name(name: Option<&str>, raw: &[u8]) -> String {
    match name {
        Some(name) => format!("{name:?}"),
        None => format!("(not UTF-8: {raw:02x?})"),
    }
}

fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Absent => "absent",
        PeerState::Ready => "ready",
        PeerState::Closed => "closed",
    }
}

/// Fill level of a ring from raw (untrusted) positions.
fn fill(head: u64, tail: u64, place: RingPlace) -> String {
    let capacity = place.size as u64;
    match tail.checked_sub(head) {
        Some(used) if used <= capacity => {
            // Display only: precision loss on huge values does not matter.
            #[allow(clippy::cast_precision_loss)]
            let percent = used as f64 * 100.0 / capacity.max(1) as f64;
            format!("used {used} of {capacity} bytes ({percent:.1}%)")
        }
        _ => format!("INVALID: tail-head is outside 0..={capacity}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitParams, Region};

    #[test]
    fn describes_a_fresh_region_with_traffic() {
        let mut memory = vec![0u64; (1 << 20) / 8];
        let region = Region::from_words(&mut memory);
        let uuid: VmUuid = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"
            .parse()
            .expect("uuid");
        let params = InitParams {
            uuid: *uuid.as_bytes(),
            name: "demo",
            ring_size: None,
        };
        let header = Header::create(region, &params).expect("create");
        header.begin_session(Side::Host);
        let (mut tx, _rx) = header.split(Side::Host).expect("split");
        assert!(tx.send(b"hello").expect("send"));
        let text = describe(&header);
        assert!(
            text.contains("vm uuid   5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c"),
            "{text}"
        );
        assert!(text.contains("name      \"demo\""), "{text}");
        assert!(text.contains("size      1 MiB"), "{text}");
        assert!(text.contains("host   state ready"), "{text}");
        assert!(text.contains("guest  state absent"), "{text}");
        assert!(text.contains("host->guest  head 0  tail 16"), "{text}");
        assert!(summary(&header).starts_with("\"demo\" vm 5b7e6a0c"));
    }

    #[test]
    fn hostile_positions_do_not_panic() {
        let place = RingPlace {
            control: 0,
            data: 0,
            size: 4096,
        };
        assert!(fill(10, 5, place).starts_with("INVALID"));
        assert!(fill(0, u64::MAX, place).starts_with("INVALID"));
        assert!(fill(0, 2048, place).contains("50.0%"));
        assert_eq!(human_size(8 << 20), "8 MiB");
        assert_eq!(human_size(1536), "1536 B");
    }
}
