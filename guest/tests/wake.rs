//! Which wake source the guest would use, from a fake sysfs tree: the
//! driver a device is bound to, whether vfio-pci is loaded and the device
//! has an IOMMU group.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use ivchan_guest::wake::likely_source;
use ivchan_guest::{discover, IvshmemDevice, WakeSource};
use ivchan_testkit::sysfs::{Dev, FakeSysfs};

fn doorbell(sysfs: &FakeSysfs) -> std::path::PathBuf {
    sysfs.add(&Dev {
        bar1: 4096,
        ..Dev::ivshmem("0000:00:1f.0")
    })
}

fn device(sysfs: &FakeSysfs) -> IvshmemDevice {
    discover(sysfs.root()).unwrap().remove(0)
}

/// Binds the device directory `dir` to driver `name` (a `driver` link).
fn bind(root: &Path, dir: &Path, name: &str) {
    let driver = root.join("bus/pci/drivers").join(name);
    fs::create_dir_all(&driver).unwrap();
    symlink(&driver, dir.join("driver")).unwrap();
}

#[test]
fn a_plain_device_polls() {
    let sysfs = FakeSysfs::new();
    sysfs.add(&Dev::ivshmem("0000:00:1f.0"));
    let (source, why) = likely_source(&device(&sysfs));
    assert_eq!(source, WakeSource::Polling);
    assert_eq!(why, "ivshmem-plain has no interrupts");
}

#[test]
fn an_unbound_doorbell_polls_and_says_what_to_load() {
    let sysfs = FakeSysfs::new();
    doorbell(&sysfs);
    let (source, why) = likely_source(&device(&sysfs));
    assert_eq!(source, WakeSource::Polling);
    assert_eq!(
        why,
        "no driver bound: load ivshmem_doorbell (or vfio-pci with an IOMMU)"
    );
}

#[test]
fn a_doorbell_bound_to_ivchans_driver_wakes_by_it() {
    let sysfs = FakeSysfs::new();
    let dir = doorbell(&sysfs);
    bind(sysfs.root(), &dir, "ivshmem_doorbell");
    assert_eq!(likely_source(&device(&sysfs)).0, WakeSource::Driver);
}

#[test]
fn a_doorbell_bound_to_vfio_pci_wakes_by_vfio() {
    let sysfs = FakeSysfs::new();
    let dir = doorbell(&sysfs);
    bind(sysfs.root(), &dir, "vfio-pci");
    let (source, why) = likely_source(&device(&sysfs));
    assert_eq!(source, WakeSource::Vfio);
    assert_eq!(why, "bound to vfio-pci");
}

#[test]
fn another_driver_is_left_alone() {
    let sysfs = FakeSysfs::new();
    let dir = doorbell(&sysfs);
    bind(sysfs.root(), &dir, "uio_pci_generic");
    let (source, why) = likely_source(&device(&sysfs));
    assert_eq!(source, WakeSource::Polling);
    assert_eq!(
        why,
        "bound to uio_pci_generic, which offers no interrupts to ivchan"
    );
}

#[test]
fn wake_sources_parse_by_name() {
    for source in [WakeSource::Vfio, WakeSource::Driver, WakeSource::Polling] {
        assert_eq!(source.as_str().parse::<WakeSource>(), Ok(source));
    }
    assert_eq!(
        "irq".parse::<WakeSource>(),
        Err("\"irq\" is not a wake source: vfio, driver or polling".to_owned())
    );
}
