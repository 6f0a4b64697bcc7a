//! A hostile peer: garbage in the header, positions and records must only
//! ever produce typed errors — no panic, no out-of-bounds access, no hang.

use ivchan_protocol::{
    Consumer, Header, HeapRing, InitParams, LayoutError, Ordering, Producer, Region, RingError,
    RingMemory, Side, Violation, Word,
};
use proptest::prelude::*;

const REGION: usize = 1 << 20;

fn params() -> InitParams<'static> {
    InitParams {
        uuid: [0xab; 16],
        name: "hostile",
        ring_size: Some(4096),
    }
}

fn cases() -> u32 {
    if cfg!(miri) {
        3
    } else {
        512
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Random words written anywhere in the first pages: `Header::open`
    /// either accepts a layout that lies inside the region or names the
    /// problem.
    #[test]
    fn scribbled_header_gives_typed_errors(writes in proptest::collection::vec((0usize..(2 * 4096 / 8), any::<u64>()), 1..16)) {
        let mut words = vec![0u64; REGION / 8];
        let region = Region::from_words(&mut words);
        Header::create(region, &params()).unwrap();
        for (word, value) in writes {
            region.store(word * 8, value, Ordering::Relaxed);
        }
        if let Ok(header) = Header::open(region) {
            for side in [Side::Host, Side::Guest] {
                let _ = header.status(side);
            }
            let layout = header.layout();
            for place in [layout.host_to_guest, layout.guest_to_host] {
                prop_assert!(place.data + place.size <= REGION);
                prop_assert!(place.control + 256 <= REGION);
            }
            // Whatever the positions say, using the rings only errs.
            if let Ok((mut tx, mut rx)) = header.split(Side::Host) {
                let mut buf = [0u8; 64];
                for _ in 0..4 {
                    let _ = tx.send(b"x");
                    let _ = rx.recv_into(&mut buf);
                }
            }
        }
    }

    /// Random positions and record headers: the consumer returns messages
    /// whose length it checked, or a violation, within bounded steps.
    #[test]
    fn garbage_ring_state_is_contained(
        tail in any::<u64>(),
        head in any::<u64>(),
        headers in proptest::collection::vec((0usize..16, any::<u32>(), any::<u32>()), 0..8),
        small_tail in 0u64..512,
    ) {
        let ring = HeapRing::new(128).unwrap();
        for (slot, len, tag) in headers {
            ring.store_header(slot * 8, u64::from(len) | u64::from(tag) << 32);
        }
        for t in [tail, small_tail & !7, small_tail] {
            ring.store(Word::Head, head & 7, Ordering::Relaxed);
            ring.store(Word::Tail, 0, Ordering::Relaxed);
            let Ok(mut rx) = Consumer::attach(&ring) else { continue };
            ring.store(Word::Tail, t, Ordering::Release);
            let mut buf = [0u8; 128];
            for _ in 0..64 {
                match rx.recv_into(&mut buf) {
                    Ok(Some(n)) => prop_assert!(n <= rx.max_message()),
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(e.is_fatal());
                        prop_assert_eq!(rx.recv_into(&mut buf), Err(e));
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn each_header_check_names_its_problem() {
    let mut words = vec![0u64; REGION / 8];
    let region = Region::from_words(&mut words);
    assert_eq!(
        Header::open(region).unwrap_err(),
        LayoutError::NotInitialized
    );
    Header::create(region, &params()).unwrap();

    let version_word = region.load(8, Ordering::Relaxed);
    region.store(
        8,
        (version_word & !0xffff_ffff) | 2 | 7 << 16,
        Ordering::Relaxed,
    );
    let err = Header::open(region).unwrap_err();
    assert_eq!(
        err,
        LayoutError::IncompatibleVersion {
            found_major: 2,
            found_minor: 7,
            supported_major: 1,
            supported_minor: 1
        }
    );
    assert!(err.to_string().contains("2.7") && err.to_string().contains("1.1"));
    region.store(8, version_word, Ordering::Relaxed);

    let features = region.load(0x10, Ordering::Relaxed);
    region.store(0x10, features | 1 << 3, Ordering::Relaxed);
    assert_eq!(
        Header::open(region).unwrap_err(),
        LayoutError::UnsupportedFeatures { bits: 8 }
    );
    region.store(0x10, features, Ordering::Relaxed);

    region.store(0x18, 2 * REGION as u64, Ordering::Relaxed);
    assert!(matches!(
        Header::open(region).unwrap_err(),
        LayoutError::SizeMismatch { .. }
    ));
    region.store(0x18, REGION as u64, Ordering::Relaxed);

    // Make the guest→host data area overlap the host→guest one.
    let h2g_data = region.load(0x58 + 16, Ordering::Relaxed);
    let g2h_data = region.load(0x58 + 48, Ordering::Relaxed);
    region.store(0x58 + 48, h2g_data + 8, Ordering::Relaxed);
    assert!(matches!(
        Header::open(region).unwrap_err(),
        LayoutError::BadPart { index: 3, .. }
    ));
    // A data area running past the end of the region.
    region.store(0x58 + 48, REGION as u64 - 8, Ordering::Relaxed);
    assert!(matches!(
        Header::open(region).unwrap_err(),
        LayoutError::BadPart { index: 3, .. }
    ));
    region.store(0x58 + 48, g2h_data, Ordering::Relaxed);

    region.store(0x180 + 0x10, 9, Ordering::Relaxed);
    let header = Header::open(region).unwrap();
    assert_eq!(
        header.status(Side::Guest),
        Err(LayoutError::BadState { value: 9 })
    );

    region.store(0, 0x1234, Ordering::Relaxed);
    assert_eq!(
        Header::open(region).unwrap_err(),
        LayoutError::BadMagic { found: 0x1234 }
    );
}

#[test]
fn header_checks_survive_re_reads_of_a_changing_region() {
    // The layout is a private copy: changing the shared table afterwards
    // does not move the rings.
    let mut words = vec![0u64; REGION / 8];
    let region = Region::from_words(&mut words);
    let header = Header::create(region, &params()).unwrap();
    let before = *header.layout();
    region.store(0x58 + 16, 8, Ordering::Relaxed);
    assert_eq!(*header.layout(), before);
    let (mut tx, _) = header.split(Side::Host).unwrap();
    assert!(tx.send(b"still in the right place").unwrap());
}

#[test]
fn each_record_violation_is_typed() {
    let mut buf = [0u8; 64];
    let cases: Vec<(u64, u64, Violation)> = vec![
        (
            0,
            4096,
            Violation::TailOutOfRange {
                tail: 4096,
                min: 0,
                max: 128,
            },
        ),
        (0, 12, Violation::Misaligned { position: 12 }),
        (
            0x1234_5678_0000_0008,
            16,
            Violation::BadTag {
                position: 0,
                tag: 0x1234_5678,
            },
        ),
        (
            u64::from(ivchan_protocol::ring::TAG_MESSAGE) << 32 | 57,
            64,
            Violation::LengthTooLarge {
                position: 0,
                len: 57,
                max: 56,
            },
        ),
        (
            u64::from(ivchan_protocol::ring::TAG_MESSAGE) << 32 | 40,
            16,
            Violation::RecordPastTail {
                position: 0,
                needed: 48,
                available: 16,
            },
        ),
        (
            u64::from(ivchan_protocol::ring::TAG_PADDING) << 32 | 120,
            128,
            Violation::BadPadding {
                position: 0,
                len: 120,
            },
        ),
    ];
    for (header_word, tail, expected) in cases {
        let ring = HeapRing::new(128).unwrap();
        ring.store_header(0, header_word);
        let mut rx = Consumer::attach(&ring).unwrap();
        ring.store(Word::Tail, tail, Ordering::Release);
        assert_eq!(rx.recv_into(&mut buf), Err(RingError::Corrupt(expected)));
    }
}

#[test]
fn message_running_past_the_wrap_is_refused() {
    let ring = HeapRing::new(128).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    let mut rx = Consumer::attach(&ring).unwrap();
    let mut buf = [0u8; 64];
    assert!(tx.send(&[0; 48]).unwrap()); // 56-byte record
    assert!(tx.send(&[0; 48]).unwrap()); // next at 56
    assert_eq!(rx.recv_into(&mut buf).unwrap(), Some(48));
    // Rewrite the second record's header: 56 bytes from offset 56 would end
    // at 120 (fine); claim 64 bytes instead, ending past 128.
    ring.store_header(56, u64::from(ivchan_protocol::ring::TAG_MESSAGE) << 32 | 64);
    ring.store(Word::Tail, 56 + 128 - 56, Ordering::Release);
    let err = rx.recv_into(&mut buf).unwrap_err();
    assert!(err.is_fatal(), "{err}");
}

#[test]
fn consumer_lying_about_head_poisons_the_producer() {
    let ring = HeapRing::new(64).unwrap();
    let mut tx = Producer::attach(&ring).unwrap();
    assert!(tx.send(&[1; 24]).unwrap());
    assert!(tx.send(&[1; 24]).unwrap());
    // Head beyond what was ever published.
    ring.store(Word::Head, 1024, Ordering::Release);
    assert_eq!(
        tx.send(&[1; 8]),
        Err(RingError::Corrupt(Violation::HeadOutOfRange {
            head: 1024,
            min: 0,
            max: 64
        }))
    );
    assert!(tx.poisoned().is_some());
}

/// A peer thread rewriting every shared word of a ring while a consumer
/// runs. The consumer reads payloads only through race-safe copies, so this
/// runs under Miri too (smaller), where any non-atomic access that races the
/// scribbler is reported as a data race.
#[test]
fn concurrent_scribbler_only_causes_typed_errors() {
    use std::sync::atomic::{AtomicBool, Ordering as O};
    use std::sync::Arc;
    let mut words = vec![0u64; REGION / 8];
    let region = Region::from_words(&mut words);
    let header = Header::create(region, &params()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ring = header.layout().guest_to_host;
    std::thread::scope(|s| {
        let stop2 = stop.clone();
        s.spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop2.load(O::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = if x & 1 == 0 {
                    // Mostly the two positions, sometimes the rest.
                    ring.control + [0, 0x80, 8 * ((x >> 8) as usize % 32)][(x >> 4) as usize % 3]
                } else {
                    ring.data + 8 * ((x >> 8) as usize % (ring.size / 8))
                };
                region.store(
                    off,
                    x >> 3 & if x & 2 == 0 { 0xffff } else { u64::MAX },
                    Ordering::Relaxed,
                );
            }
        });
        let mut buf = vec![0u8; 4096];
        let mut errors = 0;
        // Bounded: stop after enough errors or 200,000 attaches.
        let (attaches, receives) = if cfg!(miri) { (30, 10) } else { (200_000, 100) };
        for _ in 0..attaches {
            if errors >= 200 {
                break;
            }
            let Ok((_, mut rx)) = header.split(Side::Host) else {
                errors += 1;
                continue;
            };
            for _ in 0..receives {
                match rx.recv_into(&mut buf) {
                    Ok(Some(n)) => assert!(n <= rx.max_message()),
                    Ok(None) => {}
                    Err(e) => {
                        errors += 1;
                        assert!(e.is_fatal() || matches!(e, RingError::BufferTooSmall { .. }));
                        break;
                    }
                }
            }
        }
        stop.store(true, O::Relaxed);
        // Under Miri the run is too short to be sure of a trip; what it
        // checks there is that no access raced.
        assert!(
            cfg!(miri) || errors > 0,
            "the scribbler never tripped a check"
        );
    });
}
