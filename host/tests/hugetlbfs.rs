//! Region files on a real hugetlbfs mount (mounted by the test; needs root
//! and free huge pages). Skipped when that is impossible, unless
//! IVCHAN_REQUIRE_REAL=1 (as in CI), where it fails instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ivchan_host::{ChannelOptions, PeerMapping, RegionError, RegionOptions, VmChannel, VmUuid};
use ivchan_protocol::{Channel, Header, Side};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A hugetlbfs mount with enough 2 MiB pages, undone on drop.
struct HugeMount {
    dir: PathBuf,
    old_pages: Option<String>,
}

impl HugeMount {
    fn new() -> Result<Self, String> {
        let old = fs::read_to_string(NR_HUGEPAGES).map_err(|e| e.to_string())?;
        let have: u64 = old
            .trim()
            .parse()
            .map_err(|_| format!("odd {NR_HUGEPAGES}"))?;
        let old_pages = if have < 16 {
            fs::write(NR_HUGEPAGES, "16").map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
            Some(old)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("ivchan-huge-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mount = Self { dir, old_pages };
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "ivchan-test"])
            .arg(&mount.dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err("mount -t hugetlbfs failed".into());
        }
        Ok(mount)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HugeMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
        if let Some(old) = &self.old_pages {
            let _ = fs::write(NR_HUGEPAGES, old.trim());
        }
    }
}

#[test]
fn regions_live_on_hugetlbfs() {
    let mount = match HugeMount::new() {
        Ok(m) => m,
        Err(e) if std::env::var("IVCHAN_REQUIRE_REAL").as_deref() != Ok("1") => {
            eprintln!("skipped: cannot mount hugetlbfs here ({e})");
            return;
        }
        Err(e) => panic!("IVCHAN_REQUIRE_REAL=1 but hugetlbfs is unavailable: {e}"),
    };
    let uuid: VmUuid = "00000000-0000-4000-8000-0000000004ee".parse().unwrap();

    // A size that is not a whole number of huge pages is refused up front.
    let err = RegionOptions::new()
        .dir(mount.path())
        .size(1 << 20)
        .create(&uuid)
        .unwrap_err();
    assert!(
        matches!(err, RegionError::NotHugePageMultiple { page_size, .. } if page_size == 2 << 20),
        "{err}"
    );
    assert!(
        !mount.path().join(format!("fg_{uuid}")).exists(),
        "refused file left behind"
    );

    // An 8 MiB region works end to end, host and peer.
    let opts = RegionOptions::new().dir(mount.path()).size(8 << 20);
    let mut host = VmChannel::builder(&uuid)
        .regions(opts)
        .name("huge")
        .options(ChannelOptions::default())
        .open()
        .unwrap();
    let peer = PeerMapping::open(host.path()).unwrap();
    let header = Header::open(peer.region()).unwrap();
    assert_eq!(header.layout().region_size, 8 << 20);
    let mut guest = Channel::attach(header, Side::Guest, ChannelOptions::default()).unwrap();
    let big = vec![0x5au8; 512 << 10];
    guest.send(&big, None).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(host.recv(&mut buf, None).unwrap(), big.len());
    assert!(buf[..big.len()] == big[..]);
    drop(guest);
    drop(host);
    fs::remove_file(mount.path().join(format!("fg_{uuid}"))).unwrap();
}
