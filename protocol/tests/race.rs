//! A peer that writes the bytes we read in place, and reads the bytes we
//! write in place, at the same moment, from another thread.
//!
//! Nothing a peer does may make our side undefined behaviour. Run under
//! Miri (`cargo +nightly miri test -p ivchan-protocol --test race`) these
//! tests are the proof: Miri's data-race detector reports any non-atomic
//! access that races the peer's writes. Before the volatile views, the same
//! races through `ReadGrant`'s `&[u8]` and through the copy path's memcpy
//! made Miri stop with "Undefined Behavior: Data race detected between (1)
//! atomic store on thread `unnamed-2` and (2) retag read of type `[u8]`"
//! (`Region::slice`) and "… (1) non-atomic read … and (2) atomic store"
//! (`Region::copy_out`).

use ivchan_protocol::{Direction, Header, InitParams, Ordering, Region, Side};

const REGION: usize = 1 << 20;

fn rounds() -> u64 {
    if cfg!(miri) {
        40
    } else {
        20_000
    }
}

fn params() -> InitParams<'static> {
    InitParams {
        uuid: [0x5a; 16],
        name: "race",
        ring_size: Some(4096),
    }
}

/// Message lengths: unaligned tails for the word path and, off Miri, the
/// bulk path (512 bytes and more).
const LENS: [usize; 3] = [13, 64, 700];

#[test]
fn a_peer_rewriting_a_message_we_read_in_place_is_defined_behaviour() {
    let mut words = vec![0u64; REGION / 8];
    let region = Region::from_words(&mut words);
    let header = Header::create(region, &params()).unwrap();
    let data = header.layout().ring(Direction::HostToGuest).data;
    let (mut tx, _) = header.split(Side::Host).unwrap();
    let (_, mut rx) = header.split(Side::Guest).unwrap();
    for len in LENS {
        assert!(tx.send(&vec![0x11; len]).unwrap());
        // The payload follows the record header at the consumer's position
        // (the ring is far from wrapping in this test).
        let start = (rx.position() % 4096) as usize + 8;
        let msg = rx.peek().unwrap().unwrap();
        std::thread::scope(|s| {
            // The hostile producer: rewrites the payload under our feet,
            // with the aligned word stores any C peer would use.
            s.spawn(|| {
                for i in 0..rounds() {
                    let word = (i as usize * 8) % len.next_multiple_of(8);
                    region.store(
                        data + start + word,
                        i.wrapping_mul(0x9e37),
                        Ordering::Relaxed,
                    );
                }
            });
            let mut buf = vec![0u8; len];
            for i in 0..rounds() {
                let view = msg.volatile();
                // In place: typed reads, sub-views, snapshots, io::Read.
                let _ = view.read_u64_le(0).unwrap();
                let _ = view.read_u16_le((i as usize) % (len - 1)).unwrap();
                let tail = view.subslice(len / 2, len - len / 2).unwrap();
                let _ = tail.snapshot();
                view.snapshot_into(&mut buf).unwrap();
                // The copy path.
                msg.read(0, &mut buf).unwrap();
                std::io::Read::read(&mut msg.reader(), &mut buf).unwrap();
            }
        });
        msg.release();
    }
}

#[test]
fn a_peer_reading_and_writing_a_grant_we_fill_is_defined_behaviour() {
    let mut words = vec![0u64; REGION / 8];
    let region = Region::from_words(&mut words);
    let header = Header::create(region, &params()).unwrap();
    let data = header.layout().ring(Direction::GuestToHost).data;
    let (mut tx, _) = header.split(Side::Guest).unwrap();
    for len in LENS {
        let record = (tx.position() % 4096) as usize;
        let mut grant = tx.reserve(len).unwrap().unwrap();
        std::thread::scope(|s| {
            // The hostile consumer: reads and scribbles on the record we
            // are filling, before we published it.
            s.spawn(|| {
                let mut sum = 0u64;
                for i in 0..rounds() {
                    let word = record + (i as usize * 8) % (len + 8).next_multiple_of(8);
                    sum = sum.wrapping_add(region.load(data + word, Ordering::Relaxed));
                    region.store(data + word, sum, Ordering::Relaxed);
                }
                sum
            });
            let src = vec![0x22u8; len];
            for i in 0..rounds() {
                let mut view = grant.volatile_mut();
                view.write_u32_le((i as usize) % (len - 3), 7).unwrap();
                view.copy_from_slice(&src).unwrap();
                let _ = view.as_volatile().read_u8(len - 1).unwrap();
                // The copy path.
                grant.write(0, &src).unwrap();
                std::io::Write::write(&mut grant.writer(), &src).unwrap();
            }
        });
        grant.commit(len).unwrap();
    }
}
