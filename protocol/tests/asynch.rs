//! Async channels: a receive that sleeps on a doorbell is woken by the
//! peer's ring (not by a timer), byte streams with partial reads, the
//! blocking and async stream adapters talking to each other, `Stream` and
//! `Sink`, and a closed peer ending the stream.

#![cfg(feature = "tokio")]

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ivchan_protocol::asynch::{AsyncChannel, PollOptions, Readiness};
use ivchan_protocol::{ChannelOptions, Header, InitParams, Mapping, Notifier, OwnedChannel, Side};
use ivchan_testkit::checksum::checksum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Owned = OwnedChannel<Arc<Mapping>>;

fn pair(ring: usize) -> (Owned, Owned) {
    let memory = Arc::new(Mapping::anonymous((4 * ring).max(1 << 20)).unwrap());
    let params = InitParams {
        uuid: [9; 16],
        name: "async",
        ring_size: Some(ring),
    };
    Header::create(memory.region(), &params).unwrap();
    let host = OwnedChannel::attach(memory.clone(), Side::Host, ChannelOptions::default()).unwrap();
    let guest = OwnedChannel::attach(memory, Side::Guest, ChannelOptions::default()).unwrap();
    (host, guest)
}

/// A doorbell in one process: the peer's `ring` wakes the async side.
#[derive(Debug, Default)]
struct Bell {
    state: Mutex<(u64, Option<Waker>)>,
    rings: AtomicU64,
}

#[derive(Debug, Clone)]
struct Ringer(Arc<Bell>);

impl Notifier for Ringer {
    fn ring(&self) {
        self.0.rings.fetch_add(1, Ordering::Relaxed);
        let mut state = self.0.state.lock().unwrap();
        state.0 += 1;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }
    fn can_wait(&self) -> bool {
        false
    }
    fn wait(&self, _timeout: Duration) {}
}

#[derive(Debug)]
struct Listener(Arc<Bell>);

impl Readiness for Listener {
    fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.0.state.lock().unwrap();
        if state.0 > 0 {
            state.0 = 0;
            return Poll::Ready(Ok(()));
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The timer fallback is made too slow to matter (an hour): only the
/// WAKE_ME handshake and the peer's ring can end the receive.
#[test]
fn a_sleeping_receive_is_woken_by_the_peers_ring() {
    let (host, mut guest) = pair(1 << 16);
    let bell = Arc::new(Bell::default());
    guest.set_notifier(Some(Box::new(Ringer(bell.clone()))));
    let slow = PollOptions {
        yield_for: Duration::from_micros(50),
        max_yield_for: Duration::from_micros(50),
        min_interval: Duration::from_secs(3600),
        max_interval: Duration::from_secs(3600),
    };
    let mut host = AsyncChannel::with_options(host, slow);
    host.set_readiness(Some(Box::new(Listener(bell.clone()))));
    let rt = runtime();
    rt.block_on(async {
        let sender = std::thread::spawn(move || {
            for i in 0..100u32 {
                std::thread::sleep(Duration::from_millis(2));
                guest.send(&i.to_le_bytes(), None).unwrap();
            }
            guest
        });
        let mut buf = [0u8; 4];
        for i in 0..100u32 {
            let n = tokio::time::timeout(Duration::from_secs(30), host.recv(&mut buf))
                .await
                .expect("a ring wakes the receive")
                .unwrap();
            assert_eq!(&buf[..n], i.to_le_bytes());
        }
        let guest = sender.join().unwrap();
        // Each message found the host asleep (2 ms apart): it asked, and
        // the guest rang, for (nearly) every one.
        let rings = bell.rings.load(Ordering::Relaxed);
        assert!(rings >= 50, "the guest rang only {rings} times");
        drop(guest);
    });
}

#[test]
fn byte_streams_cross_with_partial_reads_and_the_blocking_adapters() {
    let rt = runtime();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let sum = checksum(&data);

    // Async writer -> blocking reader.
    let (host, mut guest) = pair(1 << 16);
    let mut host = AsyncChannel::new(host);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        guest
            .reader(Some(Duration::from_secs(30)))
            .read_to_end(&mut out)
            .unwrap();
        out
    });
    rt.block_on(async {
        host.write_all(&data).await.unwrap();
        host.shutdown().await.unwrap();
    });
    assert_eq!(checksum(&reader.join().unwrap()), sum);

    // Blocking writer -> async reader with odd small reads (a message is
    // read in place across several reads).
    let (host, mut guest) = pair(1 << 16);
    let mut host = AsyncChannel::new(host);
    let writer_data = data.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = guest.writer(Some(Duration::from_secs(30)));
        w.write_all(&writer_data).unwrap();
        w.finish().unwrap();
        guest
    });
    let got = rt.block_on(async {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = host.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        // End of stream stays the end.
        assert_eq!(host.read(&mut buf).await.unwrap(), 0);
        out
    });
    drop(writer.join().unwrap());
    assert_eq!(got.len(), data.len());
    assert_eq!(checksum(&got), sum);
}

fn len(i: u32) -> usize {
    1 + (i as usize * 37) % 4000
}

#[test]
fn messages_flow_through_sink_and_stream_until_the_peer_closes() {
    let rt = runtime();
    let (host, guest) = pair(1 << 14);
    let mut host = AsyncChannel::new(host);
    let mut guest = AsyncChannel::new(guest);
    rt.block_on(async {
        let count = 2000u32;
        let send = async move {
            for i in 0..count {
                // Some larger than the ring holds at once: the sink waits.
                host.feed(vec![i as u8; len(i)]).await.unwrap();
            }
            SinkExt::<Vec<u8>>::flush(&mut host).await.unwrap();
            // Closing the channel ends the peer's stream.
            drop(host.into_inner());
        };
        let recv = async move {
            let mut got = 0u32;
            while let Some(msg) = guest.next().await {
                assert_eq!(msg.unwrap(), vec![got as u8; len(got)]);
                got += 1;
            }
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert_eq!(got, count);
    });
}

#[test]
fn zero_copy_send_and_receive_in_place() {
    let rt = runtime();
    let (host, guest) = pair(1 << 16);
    let mut host = AsyncChannel::new(host);
    let mut guest = AsyncChannel::new(guest);
    rt.block_on(async {
        for i in 0..500u64 {
            host.send_with(8, |view| view.write_u64_le(0, i).unwrap())
                .await
                .unwrap();
            let got = guest
                .recv_with(|view| (view.len(), view.read_u64_le(0).unwrap()))
                .await
                .unwrap();
            assert_eq!(got, (8, i));
        }
    });
}

/// A doorbell that is always rung (a peer ringing without sending).
#[derive(Debug, Default)]
struct Storm(Arc<AtomicU64>);

impl Readiness for Storm {
    fn poll_rung(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// Empty wakes back off (1 ms doubling to 64 ms after a few): a ringing
/// peer costs a handful of looks, not a spinning task. Unbounded, this
/// loop would look millions of times in the same 300 ms.
#[test]
fn a_peer_that_rings_without_sending_is_not_looked_at_in_a_loop() {
    let (host, guest) = pair(1 << 16);
    let looks = Arc::new(AtomicU64::new(0));
    let mut host = AsyncChannel::with_readiness(host, Storm(looks.clone()));
    let rt = runtime();
    rt.block_on(async {
        let mut buf = [0u8; 8];
        let waited = tokio::time::timeout(Duration::from_millis(300), host.recv(&mut buf)).await;
        assert!(waited.is_err(), "nothing was sent");
    });
    let looks = looks.load(Ordering::Relaxed);
    assert!(looks < 1000, "{looks} looks at a ringing, silent peer");
    drop(guest);
}

/// A receive asleep on its doorbell keeps this side's heartbeat going, so
/// the peer (with a short peer timeout) never sees it fall silent.
#[test]
fn a_waiting_receive_keeps_the_heartbeat_beating() {
    let memory = Arc::new(Mapping::anonymous(1 << 20).unwrap());
    let params = InitParams {
        uuid: [9; 16],
        name: "beat",
        ring_size: None,
    };
    Header::create(memory.region(), &params).unwrap();
    let quick = ChannelOptions {
        heartbeat_interval: Duration::from_millis(5),
        peer_timeout: Some(Duration::from_millis(100)),
        ..ChannelOptions::default()
    };
    let host = OwnedChannel::attach(memory.clone(), Side::Host, quick).unwrap();
    let mut guest = OwnedChannel::attach(memory, Side::Guest, quick).unwrap();
    let bell = Arc::new(Bell::default());
    let mut host = AsyncChannel::with_readiness(host, Listener(bell));
    let rt = runtime();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut events = Vec::new();
        while !watching.load(Ordering::SeqCst) {
            events.extend(guest.poll_peer().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
        (events, guest)
    });
    rt.block_on(async {
        let mut buf = [0u8; 8];
        let waited = tokio::time::timeout(Duration::from_millis(500), host.recv(&mut buf)).await;
        assert!(waited.is_err(), "nothing was sent: {waited:?}");
    });
    done.store(true, Ordering::SeqCst);
    let (events, guest) = watcher.join().unwrap();
    drop(guest);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ivchan_protocol::PeerEvent::Silent { .. })),
        "the host fell silent while waiting: {events:?}"
    );
}
