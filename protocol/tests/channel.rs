//! Channels: handshake and liveness events, blocking calls, timeouts and the
//! byte-stream adapters.

#![cfg(feature = "std")]

use std::io::{Read, Write};
use std::time::Duration;

use ivchan_protocol::{
    CancelToken, Channel, ChannelError, ChannelOptions, Header, InitParams, PeerEvent, Region,
    Side, WaitStrategy,
};

fn params() -> InitParams<'static> {
    InitParams {
        uuid: [3; 16],
        name: "chan",
        ring_size: Some(16 * 1024),
    }
}

fn quick() -> ChannelOptions {
    ChannelOptions {
        wait: WaitStrategy::adaptive(),
        heartbeat_interval: Duration::from_millis(1),
        peer_timeout: Some(Duration::from_millis(if cfg!(miri) { 2000 } else { 50 })),
        ..ChannelOptions::default()
    }
}

#[test]
fn handshake_restart_and_close_are_reported_once_each() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    assert_eq!(host.poll_peer().unwrap(), None, "no guest yet");

    let guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    assert_eq!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Attached { epoch: 1 })
    );
    assert_eq!(host.poll_peer().unwrap(), None);

    // The guest crashes (no clean close) and restarts: a new session on
    // the same region.
    std::mem::forget(guest);
    let guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    assert_eq!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Restarted {
            old_epoch: 1,
            new_epoch: 2
        })
    );
    guest.close();
    assert_eq!(host.poll_peer().unwrap(), Some(PeerEvent::Closed));
    assert_eq!(host.poll_peer().unwrap(), None);
}

#[test]
#[cfg_attr(miri, ignore)] // sleeps for real time
fn silent_peer_fires_the_timeout_and_resumes() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    assert!(matches!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Attached { .. })
    ));
    // The guest stops calling in; a blocked receive notices.
    let mut buf = [0u8; 16];
    let err = host
        .recv(&mut buf, Some(Duration::from_secs(10)))
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::PeerSilent { since } if since >= Duration::from_millis(50)),
        "{err:?}"
    );
    assert!(!err.is_fatal());
    // The event the blocked call saw is kept for poll_peer, once.
    assert!(matches!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Silent { .. })
    ));
    assert_eq!(host.poll_peer().unwrap(), None);
    std::thread::sleep(Duration::from_millis(2));
    guest.tick();
    assert_eq!(host.poll_peer().unwrap(), Some(PeerEvent::Resumed));
    // And the channel still works.
    guest.send(b"back", None).unwrap();
    assert_eq!(host.recv(&mut buf, None).unwrap(), 4);
}

#[test]
fn every_call_advances_the_heartbeat_however_soon_after_the_last() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    // The default interval (100 ms) is far longer than these calls take:
    // each call still beats, so a sender that never waits stays alive to
    // its peer however few or many calls it makes.
    let mut host = Channel::attach(header, Side::Host, ChannelOptions::default()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, ChannelOptions::default()).unwrap();
    let beats = |side| header.status(side).unwrap().heartbeat;
    let (host_before, guest_before) = (beats(Side::Host), beats(Side::Guest));
    assert!(guest.try_send(b"one").unwrap());
    guest.send(b"two", None).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(guest.try_recv(&mut buf).unwrap(), None);
    assert_eq!(beats(Side::Guest), guest_before + 3, "one beat per call");
    assert_eq!(host.try_recv(&mut buf).unwrap(), Some(3));
    assert_eq!(host.recv(&mut buf, None).unwrap(), 3);
    assert_eq!(beats(Side::Host), host_before + 2, "one beat per call");
}

#[test]
fn receive_times_out_and_closed_peer_is_an_error() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    let mut buf = [0u8; 8];
    let err = host
        .recv(&mut buf, Some(Duration::from_millis(5)))
        .unwrap_err();
    assert!(matches!(err, ChannelError::Timeout { waited } if waited >= Duration::from_millis(5)));

    let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
    guest.send(b"last words", None).unwrap();
    guest.close();
    // Queued messages still arrive after the peer closed...
    assert_eq!(
        host.recv(&mut buf[..], None),
        Err(ChannelError::Ring(
            ivchan_protocol::RingError::BufferTooSmall {
                needed: 10,
                available: 8
            }
        ))
    );
    let mut big = [0u8; 16];
    assert_eq!(host.recv(&mut big, None).unwrap(), 10);
    // ...then waiting on a closed peer says so instead of hanging.
    assert_eq!(host.recv(&mut big, None), Err(ChannelError::PeerClosed));
}

#[test]
fn full_ring_send_waits_for_the_reader() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    let max = host.max_message();
    let msg = vec![1u8; max];
    // Two largest messages fill the 16 KiB ring exactly.
    assert!(host.try_send(&msg).unwrap());
    assert!(host.try_send(&msg).unwrap());
    assert!(!host.try_send(&msg).unwrap());
    let err = host.send(&msg, Some(Duration::from_millis(2))).unwrap_err();
    assert!(matches!(err, ChannelError::Timeout { .. }));
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
            let mut buf = vec![0u8; max];
            for _ in 0..3 {
                assert_eq!(guest.recv(&mut buf, None).unwrap(), max);
            }
        });
        // Blocks until the guest drains one.
        host.send(&msg, Some(Duration::from_secs(30))).unwrap();
    });
}

#[test]
fn the_byte_stream_writer_batches_until_flush_and_the_reader_drains_a_batch_at_once() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    let mut buf = [0u8; 64];

    let mut w = guest.writer(None);
    for i in 0..10u8 {
        w.write_all(&[i; 10]).unwrap();
    }
    // Staged, not published: a small write shares the next publish.
    assert_eq!(host.try_recv(&mut buf).unwrap(), None);
    w.flush().unwrap();
    drop(w);
    assert_eq!(host.try_recv(&mut buf).unwrap(), Some(10));
    assert_eq!(buf[..10], [0; 10]);

    // One read takes every queued message that fits (nine, 90 bytes),
    // not one message per call; then a message read across two calls.
    let mut r = host.reader(Some(Duration::from_secs(1)));
    let mut got = [0u8; 95];
    assert_eq!(r.read(&mut got).unwrap(), 90);
    assert_eq!(got[..10], [1; 10]);
    assert_eq!(got[80..90], [9; 10]);
    drop(r);

    let mut w = guest.writer(None);
    w.write_all(b"0123456789").unwrap();
    w.finish().unwrap();
    let mut r = host.reader(Some(Duration::from_secs(1)));
    let mut part = [0u8; 4];
    assert_eq!(r.read(&mut part).unwrap(), 4);
    assert_eq!(&part, b"0123");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"456789");
}

#[test]
fn a_byte_stream_writer_facing_a_full_ring_times_out_after_publishing_what_fits() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
    let mut w = guest.writer(Some(Duration::from_millis(50)));
    // More than the 16 KiB ring holds, and nobody reads.
    let data = vec![7u8; 64 * 1024];
    let n = w.write(&data).unwrap();
    assert!(n > 0 && n < data.len(), "wrote {n}");
    let err = w.write(&data[n..]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    drop(w);
    // What was accepted is all published, byte for byte.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Some(len) = host.try_recv(&mut buf).unwrap() {
        got.extend_from_slice(&buf[..len]);
    }
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|&b| b == 7));
}

#[test]
fn a_long_batch_is_published_in_parts_while_it_is_written() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut words = vec![0u64; (1 << 20) / 8];
    let params = InitParams {
        ring_size: Some(256 * 1024),
        ..params()
    };
    let header = Header::create(Region::from_words(&mut words), &params).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let seen_first = AtomicBool::new(false);
    let msg = [9u8; 1024];
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut host = Channel::attach(header, Side::Host, options).unwrap();
            let mut buf = [0u8; 1024];
            let n = host.recv(&mut buf, Some(Duration::from_secs(30))).unwrap();
            assert_eq!(n, 1024);
            seen_first.store(true, Ordering::Release);
        });
        let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
        // The batch's last message is produced only once the reader has
        // seen its first, which it can only once part of the batch is
        // published: the ring has room for all of it, so only the
        // PUBLISH_EVERY rule publishes before the end.
        let count = ivchan_protocol::PUBLISH_EVERY / msg.len() + 4;
        let mut waited_out = false;
        let batch = (0..count).map(|i| {
            if i == count - 1 {
                let start = std::time::Instant::now();
                while !seen_first.load(Ordering::Acquire) {
                    if start.elapsed() > Duration::from_secs(10) {
                        waited_out = true;
                        break;
                    }
                    std::thread::yield_now();
                }
            }
            &msg[..]
        });
        assert_eq!(guest.send_batch(batch, None).unwrap(), count);
        assert!(!waited_out, "the reader saw nothing until the batch ended");
    });
}

#[test]
fn byte_stream_round_trip_across_threads() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let total = if cfg!(miri) { 20_000 } else { 3_000_000 };
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    std::thread::scope(|s| {
        let data = &data;
        s.spawn(move || {
            let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
            let mut w = guest.writer(None);
            // Odd-sized writes, larger than one message at a time.
            for chunk in data.chunks(9_999) {
                w.write_all(chunk).unwrap();
            }
            w.flush().unwrap();
            w.finish().unwrap();
        });
        let mut host = Channel::attach(header, Side::Host, options).unwrap();
        let mut got = Vec::new();
        host.reader(None).read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == *data);
    });
}

#[test]
fn zero_copy_through_a_channel() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    let mut g = host.reserve(5, None).unwrap();
    g.write(0, b"hello").unwrap();
    g.commit(5).unwrap();
    let m = guest.peek(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(m.to_vec(), b"hello");
    m.release();
    assert!(matches!(
        guest.peek(Some(Duration::from_millis(1))),
        Err(ChannelError::Timeout { .. })
    ));
}

#[test]
fn a_restart_inside_a_blocking_call_ends_it_and_keeps_the_messages() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    let guest = Channel::attach(header, Side::Guest, options).unwrap();
    assert_eq!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Attached { epoch: 1 })
    );
    std::thread::scope(|s| {
        s.spawn(move || {
            // Crash, restart, and only then say something.
            std::mem::forget(guest);
            let mut again = Channel::attach(header, Side::Guest, options).unwrap();
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 50 } else { 100 }));
            again.send(b"back", None).unwrap();
            std::mem::forget(again);
        });
        let mut buf = [0u8; 8];
        // The restart happens while this call waits (it polls the peer):
        // the wait ends with it, so the caller can resynchronise.
        assert_eq!(
            host.recv(&mut buf, Some(Duration::from_secs(30))),
            Err(ChannelError::PeerRestarted {
                old_epoch: 1,
                new_epoch: 2
            })
        );
        // What the new session sends is kept, and read next.
        assert_eq!(
            host.recv(&mut buf, Some(Duration::from_secs(30))).unwrap(),
            4
        );
        assert_eq!(&buf[..4], b"back");
    });
    // Reported once, as the error.
    assert_eq!(host.poll_peer().unwrap(), None);
}

#[test]
fn a_cancelled_token_stops_blocked_calls() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let options = ChannelOptions {
        peer_timeout: None,
        ..quick()
    };
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    let _guest = Channel::attach(header, Side::Guest, options).unwrap();
    let token = CancelToken::new();
    host.set_cancel(Some(token.clone()));
    let mut buf = [0u8; 8];
    assert!(matches!(
        host.recv(&mut buf, Some(Duration::from_millis(1))),
        Err(ChannelError::Timeout { .. })
    ));
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 20 } else { 50 }));
            token.cancel();
        });
        // No timeout: only the token ends this wait.
        assert_eq!(host.recv(&mut buf, None), Err(ChannelError::Cancelled));
    });
    assert_eq!(host.wait_for_peer(None), Err(ChannelError::Cancelled));
    assert_eq!(host.poll_peer(), Err(ChannelError::Cancelled));
    // Non-blocking calls still work: the caller can drain before it leaves.
    assert_eq!(host.try_recv(&mut buf), Ok(None));
}

/// An in-process doorbell: a flag and a condvar per side, counting rings
/// and sleeps.
#[derive(Debug, Default)]
struct Bell {
    rung: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    rings: std::sync::atomic::AtomicUsize,
    sleeps: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct BellPair {
    mine: std::sync::Arc<Bell>,
    peer: std::sync::Arc<Bell>,
}

impl ivchan_protocol::channel::Notifier for BellPair {
    fn ring(&self) {
        self.peer
            .rings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.peer.rung.lock().unwrap() = true;
        self.peer.cv.notify_all();
    }
    fn can_wait(&self) -> bool {
        true
    }
    fn wait(&self, timeout: Duration) {
        self.mine
            .sleeps
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let rung = self.mine.rung.lock().unwrap();
        let (mut rung, _) = self
            .mine
            .cv
            .wait_timeout_while(rung, timeout, |r| !*r)
            .unwrap();
        *rung = false;
    }
}

fn bells() -> (
    BellPair,
    BellPair,
    std::sync::Arc<Bell>,
    std::sync::Arc<Bell>,
) {
    let (h, g) = (
        std::sync::Arc::new(Bell::default()),
        std::sync::Arc::new(Bell::default()),
    );
    (
        BellPair {
            mine: h.clone(),
            peer: g.clone(),
        },
        BellPair {
            mine: g.clone(),
            peer: h.clone(),
        },
        h,
        g,
    )
}

#[test]
#[cfg_attr(miri, ignore)] // real sleeps
fn a_sleeping_receiver_is_woken_by_the_senders_ring() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    // Naps as long as the whole receive timeout: only a ring can wake it in
    // time, so a lost wakeup fails the receive.
    let options = ChannelOptions {
        wait: WaitStrategy::sleep_only(Duration::from_millis(1)),
        heartbeat_interval: Duration::from_secs(60),
        peer_timeout: None,
        ..ChannelOptions::default()
    };
    let (host_bell, guest_bell, host_side, _) = bells();
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    host.set_notifier(Some(Box::new(host_bell)));
    let host_side_for_guest = host_side.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
            guest.set_notifier(Some(Box::new(guest_bell)));
            // Let the host fall asleep first.
            while host_side_for_guest
                .sleeps
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                std::thread::yield_now();
            }
            guest.send(b"wake up", None).unwrap();
        });
        let mut buf = [0u8; 16];
        assert_eq!(
            host.recv(&mut buf, Some(Duration::from_secs(30))).unwrap(),
            7
        );
    });
}

#[test]
fn a_busy_receiver_gets_no_rings() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let options = ChannelOptions {
        wait: WaitStrategy::busy_poll(),
        peer_timeout: None,
        ..ChannelOptions::default()
    };
    let (host_bell, guest_bell, host_side, _) = bells();
    let mut host = Channel::attach(header, Side::Host, options).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, options).unwrap();
    host.set_notifier(Some(Box::new(host_bell)));
    guest.set_notifier(Some(Box::new(guest_bell)));
    let count = if cfg!(miri) { 50 } else { 10_000 };
    let mut buf = [0u8; 64];
    for i in 0..count {
        guest.send(&[i as u8; 40], None).unwrap();
        assert_eq!(host.recv(&mut buf, None).unwrap(), 40);
    }
    // The host never slept, so it never asked, so nobody rang.
    assert_eq!(host_side.rings.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        host_side.sleeps.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn wait_for_peer_wants_a_live_peer_not_a_stale_ready_state() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    // A guest that crashed: its side still says ready, its heartbeat stands.
    std::mem::forget(Channel::attach(header, Side::Guest, quick()).unwrap());
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let waited = host.wait_for_peer(Some(Duration::from_millis(30)));
    assert!(
        matches!(waited, Err(ChannelError::Timeout { .. })),
        "a stale ready state is not a peer: {waited:?}"
    );
    // A guest that comes back (new epoch) is.
    let guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    assert_eq!(host.wait_for_peer(Some(Duration::from_secs(5))), Ok(2));
    drop(guest);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot mmap")]
fn owned_channels_carry_zero_copy_and_streams_directly() {
    use ivchan_protocol::{Mapping, OwnedChannel};
    use std::sync::Arc;

    let memory = Arc::new(Mapping::anonymous(1 << 20).unwrap());
    Header::create(memory.region(), &params()).unwrap();
    let mut host = OwnedChannel::attach(memory.clone(), Side::Host, quick()).unwrap();
    let mut guest = OwnedChannel::attach(memory.clone(), Side::Guest, quick()).unwrap();

    let mut grant = host.reserve(4, None).unwrap();
    grant.write(0, b"ping").unwrap();
    grant.commit(4).unwrap();
    let msg = guest.peek(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(msg.to_vec(), b"ping");
    msg.release();

    let mut w = guest.writer(None);
    // Less than the ring holds: one thread writes, then reads.
    w.write_all(&[5u8; 6_000]).unwrap();
    w.finish().unwrap();
    let mut got = Vec::new();
    host.reader(Some(Duration::from_secs(1)))
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, vec![5u8; 6_000]);

    // Detaching the guest hands its memory back; the host sees it close.
    assert_eq!(
        host.poll_peer().unwrap(),
        Some(PeerEvent::Attached { epoch: 1 })
    );
    let memory_back = guest.into_memory();
    assert!(Arc::ptr_eq(&memory_back, &memory));
    assert_eq!(host.poll_peer().unwrap(), Some(PeerEvent::Closed));
}

/// A notifier that counts its waits and never sleeps: a peer ringing
/// without pause.
#[derive(Debug, Default)]
struct Storm {
    waits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ivchan_protocol::Notifier for Storm {
    fn ring(&self) {}
    fn can_wait(&self) -> bool {
        true
    }
    fn wait(&self, _timeout: Duration) {
        self.waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn an_invalid_peer_state_poisons_and_nothing_spins_on_it() {
    use ivchan_protocol::layout::offsets::{GUEST_SIDE, SIDE_STATE};
    use ivchan_protocol::Ordering;

    let mut words = vec![0u64; (1 << 20) / 8];
    let region = Region::from_words(&mut words);
    let header = Header::create(region, &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    std::mem::forget(guest);
    // A hostile guest writes a state the spec does not have.
    region.store(GUEST_SIDE + SIDE_STATE, 99, Ordering::Release);
    let err = host.poll_peer().unwrap_err();
    assert!(err.is_fatal(), "{err}");
    // Poisoned: it stays broken even if the word is mended, and a
    // blocking call fails at once instead of waiting out its timeout.
    region.store(GUEST_SIDE + SIDE_STATE, 1, Ordering::Release);
    let mut buf = [0u8; 8];
    assert_eq!(host.recv(&mut buf, None).unwrap_err(), err);
    assert_eq!(host.try_send(b"x").unwrap_err(), err);
    assert_eq!(host.wait_for_peer(None).unwrap_err(), err);
}

#[test]
fn a_ringing_storm_without_data_backs_off() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, ChannelOptions::default()).unwrap();
    let _guest = Channel::attach(header, Side::Guest, ChannelOptions::default()).unwrap();
    let storm = Storm::default();
    let waits = storm.waits.clone();
    host.set_notifier(Some(Box::new(storm)));
    let mut buf = [0u8; 8];
    let budget = Duration::from_millis(300);
    assert!(matches!(
        host.recv(&mut buf, Some(budget)),
        Err(ChannelError::Timeout { .. })
    ));
    // Every wake returned at once with nothing to read. Without a back-off
    // this is a busy loop of millions of wakes; with it, a few hundred.
    let woken = waits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(woken < 2_000, "{woken} wakes in {budget:?}");
    assert_eq!(host.spurious_wakes(), woken);
}

#[test]
fn batches_publish_once_and_release_once() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + i as usize]).collect();
    assert_eq!(
        host.send_batch(msgs.iter().map(|m| &m[..]), None).unwrap(),
        20
    );
    // Published: the tail covers the whole batch.
    let (head, tail) = header.ring_positions(ivchan_protocol::Direction::HostToGuest);
    assert_eq!((head, tail), (0, records_size(&msgs)));
    let mut got = Vec::new();
    let n = guest
        .recv_batch(8, Some(Duration::from_secs(1)), |m| got.push(m.snapshot()))
        .unwrap();
    assert_eq!(n, 8);
    // Released together: head moved past all eight at once.
    let (head, _) = header.ring_positions(ivchan_protocol::Direction::HostToGuest);
    assert_eq!(head, records_size(&msgs[..8]));
    let n = guest
        .recv_batch(100, Some(Duration::from_secs(1)), |m| {
            got.push(m.snapshot())
        })
        .unwrap();
    assert_eq!(n, 12);
    assert_eq!(got, msgs);
    assert!(matches!(
        guest.recv_batch(1, Some(Duration::from_millis(5)), |_| {}),
        Err(ChannelError::Timeout { .. })
    ));
}

#[test]
fn a_long_batch_is_released_in_parts_while_it_is_read() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    // Fifteen 1008-byte records nearly fill the 16 KiB ring; a quarter of
    // it (4 KiB) is the release chunk here.
    let msgs: Vec<Vec<u8>> = (0..15u8).map(|i| vec![i; 1000]).collect();
    assert_eq!(
        host.send_batch(msgs.iter().map(|m| &m[..]), None).unwrap(),
        15
    );
    // The shared head as the reader's callback sees it, message by message.
    let mut heads = Vec::new();
    let n = guest
        .recv_batch(usize::MAX, Some(Duration::from_secs(1)), |_| {
            heads.push(
                header
                    .ring_positions(ivchan_protocol::Direction::HostToGuest)
                    .0,
            );
        })
        .unwrap();
    assert_eq!(n, 15);
    let record = records_size(&msgs[..1]);
    // Space goes back every quarter ring (five records), not at the end.
    let chunk = 5 * record;
    let expect: Vec<u64> = (0..15u64).map(|i| i / 5 * chunk).collect();
    assert_eq!(heads, expect);
    let (head, _) = header.ring_positions(ivchan_protocol::Direction::HostToGuest);
    assert_eq!(head, records_size(&msgs));
}

/// Bytes the records of `msgs` occupy in a ring that has not wrapped.
fn records_size(msgs: &[Vec<u8>]) -> u64 {
    msgs.iter()
        .map(|m| ivchan_protocol::ring::record_size(m.len()) as u64)
        .sum()
}

#[test]
fn a_batch_larger_than_the_ring_drains_through_a_reader() {
    let mut words = vec![0u64; (1 << 20) / 8];
    let header = Header::create(Region::from_words(&mut words), &params()).unwrap();
    let mut host = Channel::attach(header, Side::Host, quick()).unwrap();
    let mut guest = Channel::attach(header, Side::Guest, quick()).unwrap();
    let count = if cfg!(miri) { 40 } else { 2000 };
    // 16 KiB ring, 1000-byte messages: the batch waits for room many times.
    let msgs: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; 1000]).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut seen = 0usize;
            while seen < count {
                seen += guest
                    .recv_batch(usize::MAX, Some(Duration::from_secs(10)), |m| {
                        assert_eq!(m.len(), 1000);
                        assert_eq!(m.read_u8(999).unwrap(), m.read_u8(0).unwrap());
                    })
                    .unwrap();
            }
        });
        let sent = host
            .send_batch(msgs.iter().map(|m| &m[..]), Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(sent, count);
    });
}

#[test]
#[cfg_attr(miri, ignore)] // sleeps for real time
fn a_sender_that_never_waits_still_beats() {
    use std::sync::Arc;

    use ivchan_protocol::{Mapping, OwnedChannel};

    // Telemetry at a steady pace: the ring always has room, so `send`
    // never waits, for longer than the peer timeout. The receiver waits
    // between messages and watches the sender's heartbeat meanwhile.
    // A timeout well above a loaded machine's scheduling hiccups, and three
    // times shorter than the conversation.
    let options = ChannelOptions {
        peer_timeout: Some(Duration::from_millis(200)),
        ..quick()
    };
    let memory = Arc::new(Mapping::anonymous(1 << 20).unwrap());
    Header::create(memory.region(), &params()).unwrap();
    let mut host = OwnedChannel::attach(memory.clone(), Side::Host, options).unwrap();
    let mut guest = OwnedChannel::attach(memory, Side::Guest, options).unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..60u32 {
            host.send(&i.to_le_bytes(), None).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        host
    });
    let mut buf = [0u8; 4];
    for i in 0..60u32 {
        let got = guest.recv(&mut buf, Some(Duration::from_secs(10)));
        assert_eq!(
            got.map(|n| &buf[..n]),
            Ok(&i.to_le_bytes()[..]),
            "message {i}"
        );
    }
    drop(sender.join().unwrap());
}
