//! Discovery, selection and mapping against fake sysfs trees made of plain
//! files (a regular `resource2` file of the right length maps like a BAR).

use std::fs;
use std::time::Duration;

use ivchan_guest::{
    discover, select, select_waiting, DeviceKind, GuestError, MapOptions, MappedBar, Selector,
    VmUuid,
};
use ivchan_protocol::{Header, InitParams, LayoutError, Side};
use ivchan_testkit::sysfs::{Dev, FakeSysfs};

const MIB: u64 = 1 << 20;
const VM_A: &str = "5b7e6a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const VM_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// Writes an ivchan header into a device's fake BAR.
fn write_header(sys: &FakeSysfs, address: &str, uuid: &str, name: &str) {
    let bar = select(
        sys.root(),
        &Selector::Address(address.into()),
        &MapOptions::default(),
    )
    .expect("map");
    let uuid: VmUuid = uuid.parse().expect("uuid");
    let params = InitParams {
        uuid: *uuid.as_bytes(),
        name,
        ring_size: None,
    };
    Header::create(bar.region(), &params).expect("header");
}

#[test]
fn finds_one_device_with_its_facts() {
    let sys = FakeSysfs::new();
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    let devices = discover(sys.root()).expect("discover");
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d.address, "0000:00:1f.0");
    assert_eq!(d.revision, 1);
    assert_eq!((d.subsystem_vendor, d.subsystem_device), (0x1af4, 0x1100));
    assert_eq!(d.kind, DeviceKind::Plain);
    assert_eq!(d.bar2_size, 8 * MIB);
    assert!(d.enabled);
    // The PCI ID repository's names for 1af4:1110 (pci.ids).
    assert_eq!(d.vendor_name(), "Red Hat, Inc.");
    assert_eq!(d.device_name(), "QEMU Inter-VM shared memory device");

    let bar = select(
        sys.root(),
        &Selector::Address(d.address.clone()),
        &MapOptions::default(),
    )
    .expect("map");
    assert_eq!(bar.len() as u64, 8 * MIB);
    assert!(!bar.write_combining());
    assert_eq!(bar.device().address, "0000:00:1f.0");
}

#[test]
fn no_device_is_a_clear_error() {
    let sys = FakeSysfs::new();
    assert!(discover(sys.root()).expect("discover").is_empty());
    let err = select(sys.root(), &Selector::Identity, &MapOptions::default()).unwrap_err();
    assert!(matches!(err, GuestError::NoDevice { .. }), "{err}");
    assert!(err.to_string().contains("no ivshmem device"), "{err}");
}

#[test]
fn other_pci_devices_are_ignored() {
    let sys = FakeSysfs::new();
    let mut host_bridge = Dev::ivshmem("0000:00:00.0");
    host_bridge.vendor = 0x8086;
    host_bridge.device = 0x1237;
    sys.add(&host_bridge);
    let mut virtio = Dev::ivshmem("0000:00:03.0");
    virtio.device = 0x1000; // same vendor, another device
    sys.add(&virtio);
    // A device directory with no readable files at all.
    fs::create_dir_all(sys.root().join("bus/pci/devices/0000:00:04.0")).expect("mkdir");
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    let devices = discover(sys.root()).expect("discover");
    let addresses: Vec<_> = devices.iter().map(|d| d.address.as_str()).collect();
    assert_eq!(addresses, ["0000:00:1f.0"]);
}

#[test]
fn doorbell_device_is_recognised_by_its_msix_bar() {
    let sys = FakeSysfs::new();
    let mut dev = Dev::ivshmem("0000:00:05.0");
    dev.bar1 = 4096;
    sys.add(&dev);
    let devices = discover(sys.root()).expect("discover");
    assert_eq!(devices[0].kind, DeviceKind::Doorbell);
}

#[test]
fn identity_picks_the_right_device_among_several() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(&VM_B.to_uppercase());
    for address in [
        "0000:00:1d.0",
        "0000:00:1e.0",
        "0000:00:1f.0",
        "0000:00:10.0",
    ] {
        sys.add(&Dev::ivshmem(address));
    }
    write_header(&sys, "0000:00:1d.0", VM_A, "other-vm");
    write_header(&sys, "0000:00:1e.0", VM_B, "mine");
    // 0000:00:1f.0 has no header; 0000:00:10.0 has garbage.
    fs::write(
        sys.root().join("bus/pci/devices/0000:00:10.0/resource2"),
        vec![0xa5u8; MIB as usize],
    )
    .expect("write");

    let bar = select(sys.root(), &Selector::Identity, &MapOptions::default()).expect("select");
    assert_eq!(bar.device().address, "0000:00:1e.0");
    let header = bar.header().expect("header");
    assert_eq!(header.layout().name_str(), Some("mine"));
    bar.check_identity(&header, &VM_B.parse().expect("uuid"))
        .expect("identity");

    let by_name = select(
        sys.root(),
        &Selector::Name("other-vm".into()),
        &MapOptions::default(),
    )
    .expect("by name");
    assert_eq!(by_name.device().address, "0000:00:1d.0");
}

#[test]
fn several_matches_are_an_error() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1e.0", VM_A, "a");
    write_header(&sys, "0000:00:1f.0", VM_A, "b");
    let err = select(sys.root(), &Selector::Identity, &MapOptions::default()).unwrap_err();
    assert!(matches!(err, GuestError::Ambiguous { .. }), "{err}");
    assert!(
        err.to_string().contains("0000:00:1e.0, 0000:00:1f.0"),
        "{err}"
    );
}

#[test]
fn header_from_another_vm_is_refused() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1f.0", VM_B, "theirs");

    let err = select(sys.root(), &Selector::Identity, &MapOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GuestError::NoMatch { .. }), "{text}");
    assert!(text.contains(VM_A) && text.contains(VM_B), "{text}");

    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &MapOptions::default(),
    )
    .expect("map");
    let header = bar.header().expect("header");
    let err = bar
        .check_identity(&header, &VM_A.parse().expect("uuid"))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GuestError::WrongVm { .. }), "{text}");
    assert!(text.contains(VM_A) && text.contains(VM_B), "{text}");
}

#[test]
fn too_small_bar_is_refused_and_skipped() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    let mut small = Dev::ivshmem("0000:00:1e.0");
    small.bar2 = 512 * 1024;
    sys.add(&small);
    let devices = discover(sys.root()).expect("discover");
    let err = MappedBar::map(devices[0].clone(), &MapOptions::default()).unwrap_err();
    assert!(
        matches!(err, GuestError::BarTooSmall { size: 524288, .. }),
        "{err}"
    );

    // Selection passes over it and still finds the good one.
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1f.0", VM_A, "ok");
    let bar = select(sys.root(), &Selector::Identity, &MapOptions::default()).expect("select");
    assert_eq!(bar.device().address, "0000:00:1f.0");
}

#[test]
fn disabled_device_gets_enabled() {
    let sys = FakeSysfs::new();
    let mut dev = Dev::ivshmem("0000:00:1f.0");
    dev.enabled = false;
    let dir = sys.add(&dev);
    let devices = discover(sys.root()).expect("discover");
    assert!(!devices[0].enabled);
    let bar = MappedBar::map(devices[0].clone(), &MapOptions::default()).expect("map");
    assert!(bar.device().enabled);
    assert_eq!(
        fs::read_to_string(dir.join("enable")).expect("read").trim(),
        "1"
    );
}

#[test]
fn memory_decoding_comes_from_the_command_register() {
    let sys = FakeSysfs::new();
    let mut dev = Dev::ivshmem("0000:00:1f.0");
    dev.enabled = false; // no driver bound: enable count 0
    let dir = sys.add(&dev);
    let mut config = vec![0u8; 64];
    config[4] = 0x03; // I/O + Memory Space, as SeaBIOS leaves it
    fs::write(dir.join("config"), &config).expect("write");
    let d = &discover(sys.root()).expect("discover")[0];
    assert_eq!((d.enabled, d.memory_decoding), (false, Some(true)));
    assert!(d.readable());
    config[4] = 0x01;
    fs::write(dir.join("config"), &config).expect("write");
    let d = &discover(sys.root()).expect("discover")[0];
    assert!(!d.readable());
}

#[test]
fn write_combining_mapping_is_flagged_or_refused() {
    let sys = FakeSysfs::new();
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    let mut wc = Dev::ivshmem("0000:00:1f.0");
    wc.wc = true;
    sys.add(&wc);
    let options = MapOptions {
        write_combining: true,
        ..MapOptions::default()
    };
    let err = select(
        sys.root(),
        &Selector::Address("0000:00:1e.0".into()),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, GuestError::NoWriteCombining { .. }), "{err}");
    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &options,
    )
    .expect("map");
    assert!(bar.write_combining());
}

#[test]
fn unknown_address_names_the_ones_present() {
    let sys = FakeSysfs::new();
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    let err = select(
        sys.root(),
        &Selector::Address("0000:00:02.0".into()),
        &MapOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("0000:00:1f.0"), "{err}");
}

#[test]
fn waiting_for_a_header_times_out_or_sees_it_arrive() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &MapOptions::default(),
    )
    .expect("map");
    let err = bar.wait_for_header(Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, GuestError::Timeout { .. }), "{err}");
    let err = select_waiting(
        sys.root(),
        &Selector::Identity,
        &MapOptions::default(),
        Duration::from_millis(30),
    )
    .unwrap_err();
    assert!(matches!(err, GuestError::Timeout { .. }), "{err}");

    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            write_header(&sys, "0000:00:1f.0", VM_A, "late");
        });
        let header = bar.wait_for_header(Duration::from_secs(5)).expect("header");
        assert_eq!(header.layout().name_str(), Some("late"));
        let status = header.status(Side::Host).expect("status");
        assert_eq!(status.epoch, 0);
    });
    let found = select_waiting(
        sys.root(),
        &Selector::Identity,
        &MapOptions::default(),
        Duration::from_secs(1),
    )
    .expect("select");
    assert_eq!(found.device().address, "0000:00:1f.0");
}

#[test]
fn garbage_header_is_reported_not_waited_for() {
    let sys = FakeSysfs::new();
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    fs::write(
        sys.root().join("bus/pci/devices/0000:00:1f.0/resource2"),
        vec![0xffu8; MIB as usize],
    )
    .expect("write");
    let bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &MapOptions::default(),
    )
    .expect("map");
    let err = bar.wait_for_header(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(
            err,
            GuestError::Layout {
                source: LayoutError::BadMagic { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn malformed_sysfs_values_are_typed_errors() {
    let sys = FakeSysfs::new();
    let dir = sys.add(&Dev::ivshmem("0000:00:1f.0"));
    fs::write(dir.join("resource"), "garbage\n").expect("write");
    let err = discover(sys.root()).unwrap_err();
    assert!(matches!(err, GuestError::BadSysfsValue { .. }), "{err}");
    assert!(err.to_string().contains("garbage"), "{err}");
}

#[test]
fn a_device_whose_resource_files_are_not_there_yet_is_waited_for() {
    // Seen under TCG hotplug: the device directory is listed before sysfs
    // creates its resource files.
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    sys.add(&Dev::ivshmem("0000:00:1f.0"));
    write_header(&sys, "0000:00:1f.0", VM_A, "ours");
    let bar_file = sys.root().join("bus/pci/devices/0000:00:1f.0/resource2");
    let hidden = sys.root().join("resource2.later");
    fs::rename(&bar_file, &hidden).unwrap();
    for selector in [Selector::Identity, Selector::Address("00:1f.0".into())] {
        match select(sys.root(), &selector, &MapOptions::default()) {
            Err(GuestError::NoMatch { waiting, .. }) => assert_eq!(waiting, ["0000:00:1f.0"]),
            other => panic!("{selector:?}: expected a device still appearing, got {other:?}"),
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            fs::rename(&hidden, &bar_file).unwrap();
        });
        let bar = select_waiting(
            sys.root(),
            &Selector::Identity,
            &MapOptions::default(),
            Duration::from_secs(10),
        )
        .expect("mapped once the files are there");
        assert_eq!(bar.device().address, "0000:00:1f.0");
    });
}

#[test]
fn guest_channel_waits_for_a_hotplugged_device_and_talks_to_its_host() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    // Another VM's device is there from the start; ours is hotplugged later.
    sys.add(&Dev::ivshmem("0000:00:1e.0"));
    write_header(&sys, "0000:00:1e.0", VM_B, "other");
    std::fs::remove_dir_all(sys.root().join("bus/pci/devices/0000:00:1e.0")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            sys.add(&Dev::ivshmem("0000:00:1e.0"));
            write_header(&sys, "0000:00:1e.0", VM_B, "other");
            sys.add(&Dev::ivshmem("0000:00:05.0"));
            write_header(&sys, "0000:00:05.0", VM_A, "ours");
            let bar = select(
                sys.root(),
                &Selector::Address("0000:00:05.0".into()),
                &MapOptions::default(),
            )
            .expect("map");
            let header = Header::open(bar.region()).expect("header");
            let mut host = ivchan_protocol::Channel::attach(
                header,
                Side::Host,
                ivchan_protocol::ChannelOptions::default(),
            )
            .expect("attach");
            let mut buf = [0u8; 16];
            let n = host
                .recv(&mut buf, Some(Duration::from_secs(10)))
                .expect("hello");
            assert_eq!(&buf[..n], b"hello");
            host.send(b"welcome", None).expect("reply");
            // Wait for the guest to close before unmapping.
            let err = host
                .recv(&mut buf, Some(Duration::from_secs(10)))
                .unwrap_err();
            assert_eq!(err, ivchan_protocol::ChannelError::PeerClosed);
        });
        let mut guest = ivchan_guest::GuestChannel::builder()
            .sysfs_root(sys.root())
            .timeout(Duration::from_secs(10))
            .open()
            .expect("guest channel");
        assert_eq!(guest.address(), "0000:00:05.0");
        guest.send(b"hello", None).expect("send");
        let mut buf = [0u8; 16];
        let n = guest
            .recv(&mut buf, Some(Duration::from_secs(10)))
            .expect("reply");
        assert_eq!(&buf[..n], b"welcome");
    });
}

#[test]
fn doorbell_registers_read_the_peer_id_and_ring() {
    let sys = FakeSysfs::new();
    let mut dev = Dev::ivshmem("0000:00:1f.0");
    dev.bar1 = 4096;
    let dir = sys.add(&dev);
    // A fake BAR0: IVPosition = 3.
    let mut bar0 = vec![0u8; 256];
    bar0[8..12].copy_from_slice(&3u32.to_le_bytes());
    fs::write(dir.join("resource0"), &bar0).unwrap();
    let found = discover(sys.root()).unwrap();
    assert_eq!(found[0].kind, DeviceKind::Doorbell);
    let regs = ivchan_guest::Registers::map(&found[0]).unwrap();
    assert_eq!(regs.iv_position(), 3);
    regs.ring(0, 1);
    let raw = fs::read(dir.join("resource0")).unwrap();
    assert_eq!(&raw[12..16], &0x0000_0001u32.to_le_bytes());
    regs.ring(7, 2);
    let raw = fs::read(dir.join("resource0")).unwrap();
    assert_eq!(&raw[12..16], &0x0007_0002u32.to_le_bytes());
    // A truncated BAR0 is a typed error, not a fault.
    fs::write(dir.join("resource0"), [0u8; 8]).unwrap();
    assert!(matches!(
        ivchan_guest::Registers::map(&found[0]),
        Err(GuestError::BadSysfsValue { .. })
    ));
}

#[test]
fn guest_channel_on_a_doorbell_device_publishes_its_peer_id_and_rings_when_asked() {
    let sys = FakeSysfs::new();
    sys.set_product_uuid(VM_A);
    let mut dev = Dev::ivshmem("0000:00:1f.0");
    dev.bar1 = 4096;
    let dir = sys.add(&dev);
    let mut bar0 = vec![0u8; 256];
    bar0[8..12].copy_from_slice(&5u32.to_le_bytes()); // IVPosition
    bar0[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // no ring yet
    fs::write(dir.join("resource0"), &bar0).unwrap();
    write_header(&sys, "0000:00:1f.0", VM_A, "bell");
    let doorbell = || {
        u32::from_le_bytes(
            fs::read(dir.join("resource0")).unwrap()[12..16]
                .try_into()
                .unwrap(),
        )
    };

    let host_bar = select(
        sys.root(),
        &Selector::Address("0000:00:1f.0".into()),
        &MapOptions::default(),
    )
    .unwrap();
    let header = Header::open(host_bar.region()).unwrap();
    header.set_doorbell(
        Side::Host,
        Some(ivchan_protocol::DoorbellAddress {
            peer: 0,
            vectors: 1,
        }),
    );
    let mut host =
        ivchan_protocol::Channel::attach(header, Side::Host, Default::default()).unwrap();

    let mut guest = ivchan_guest::GuestChannel::builder()
        .sysfs_root(sys.root())
        .timeout(Duration::from_secs(5))
        .open()
        .unwrap();
    assert_eq!(
        header.doorbell(Side::Guest),
        Some(ivchan_protocol::DoorbellAddress {
            peer: 5,
            vectors: 1
        })
    );
    // The host is busy: no ring.
    guest.send(b"one", None).unwrap();
    assert_eq!(doorbell(), u32::MAX);
    let mut buf = [0u8; 8];
    assert_eq!(host.recv(&mut buf, None).unwrap(), 3);
    // The host is about to sleep: the next send rings peer 0, vector 0.
    assert!(host.prepare_to_sleep().unwrap());
    guest.send(b"two", None).unwrap();
    assert_eq!(doorbell(), 0);
}
