//! An async guest channel over a fake device talks to a blocking host:
//! the timer fallback carries requests and replies both ways, and the
//! stream of messages ends when the host closes.

#![cfg(feature = "tokio")]

use std::time::Duration;

use ivchan_guest::{select, MapOptions, Selector, VmUuid};
use ivchan_protocol::{Header, InitParams, Side};
use ivchan_testkit::sysfs::{Dev, FakeSysfs};

const VM: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";

#[test]
fn an_async_guest_exchanges_with_a_blocking_host() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM);
    sys.add(&Dev::ivshmem("0000:00:05.0"));
    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:05.0".into()),
        &MapOptions::default(),
    )
    .unwrap();
    let uuid: VmUuid = VM.parse().unwrap();
    let params = InitParams {
        uuid: *uuid.as_bytes(),
        name: "async",
        ring_size: None,
    };
    let header = Header::create(bar.region(), &params).unwrap();
    let mut host =
        ivchan_protocol::Channel::attach(header, Side::Host, Default::default()).unwrap();

    let guest = ivchan_guest::GuestChannel::builder()
        .sysfs_root(sys.root())
        .timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut buf = vec![0u8; 64];
            for i in 0..200u32 {
                let n = host.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
                assert_eq!(&buf[..n], i.to_le_bytes());
                host.send(&(i * 2).to_le_bytes(), None).unwrap();
            }
            // Dropping the host closes the channel.
        });
        rt.block_on(async {
            let mut ch = guest.into_async();
            assert!(!ch.has_readiness(), "no interrupt: the timer fallback");
            for i in 0..200u32 {
                ch.send(&i.to_le_bytes()).await.unwrap();
                assert_eq!(ch.recv_vec().await.unwrap(), (i * 2).to_le_bytes());
            }
            let err = tokio::time::timeout(Duration::from_secs(30), ch.recv_vec())
                .await
                .expect("a closed host ends the wait")
                .unwrap_err();
            assert_eq!(err, ivchan_protocol::ChannelError::PeerClosed);
        });
    });
}
