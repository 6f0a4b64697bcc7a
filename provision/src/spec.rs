//! What device to give a VM: model, size, PCI address, region path, and the
//! QEMU arguments that express it.

use std::path::{Path, PathBuf};

use ivchan_protocol::naming::{self, RegionSize};
use ivchan_protocol::VmUuid;

use crate::error::{Error, Result};

/// Default region path template, `/dev/shm/fg_{uuid}`: the protocol's
/// [`naming`] directory and prefix, with `{uuid}` standing for the
/// domain's UUID.
pub fn default_region() -> String {
    format!("{}/{}{{uuid}}", naming::REGION_DIR, naming::REGION_PREFIX)
}

/// Default PCI slot on bus 0.
pub const DEFAULT_SLOT: u8 = 0x1f;
/// QEMU id of the memory backend the tool adds.
pub const MEM_ID: &str = "ivchan-mem";
/// QEMU id of the ivshmem device the tool adds.
pub const DEV_ID: &str = "ivchan-shm";
/// QEMU id of the chardev (doorbell model) the tool adds.
pub const CHR_ID: &str = "ivchan-chr";

/// The ivshmem flavour.
/// The ivshmem device model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// `ivshmem-plain`: shared memory only, backed by the region file.
    Plain,
    /// `ivshmem-doorbell`: memory and interrupts from an ivshmem server socket.
    Doorbell {
        /// The ivshmem server's UNIX socket.
        server: PathBuf,
        /// MSI-X vectors.
        vectors: u32,
    },
}

impl Model {
    /// Parse a model name; `server` is required for the doorbell model and
    /// refused (like `vectors`) for the plain one, which has no server and
    /// no interrupts. `vectors` defaults to 1.
    pub fn parse(name: &str, server: Option<PathBuf>, vectors: Option<u32>) -> Result<Model> {
        match name {
            "ivshmem-plain" | "plain" => {
                if let Some(server) = server {
                    return Err(Error::PlainWithServer(server));
                }
                if vectors.is_some() {
                    return Err(Error::PlainWithVectors);
                }
                Ok(Model::Plain)
            }
            "ivshmem-doorbell" | "doorbell" => Ok(Model::Doorbell {
                server: server.ok_or(Error::DoorbellNeedsServer)?,
                vectors: vectors.unwrap_or(1),
            }),
            other => Err(Error::UnknownModel(other.to_string())),
        }
    }

    /// The QEMU/libvirt model name.
    pub fn name(&self) -> &'static str {
        match self {
            Model::Plain => "ivshmem-plain",
            Model::Doorbell { .. } => "ivshmem-doorbell",
        }
    }
}

/// How `-object`/`-device` values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArgForm {
    /// `{"qom-type":…}` JSON (QEMU >= 6.2; what libvirt >= 7.9 itself uses).
    #[default]
    Json,
    /// `memory-backend-file,id=…` key=value form.
    Legacy,
}

/// Everything configurable about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Plain or doorbell.
    pub model: Model,
    /// Region size in bytes: a power of two from
    /// [`naming::MIN_REGION_SIZE`] (1 MiB) to [`naming::MAX_REGION_SIZE`]
    /// (16 GiB), checked by [`Spec::validate`].
    pub size: u64,
    /// PCI bus number (0 is the root bus); `None` places the device
    /// automatically: bus 0 on i440fx (`pc`) machines, a free (or added)
    /// `pcie-root-port` on q35.
    pub bus: Option<u8>,
    /// PCI slot on that bus; `None` is automatic: [`DEFAULT_SLOT`] on
    /// i440fx, slot 0 of the port on q35.
    pub slot: Option<u8>,
    /// Pick another free slot when `slot` is taken, instead of refusing.
    pub pick_free_slot: bool,
    /// Region path template; `{uuid}` is replaced by the domain's UUID.
    pub region: String,
    /// Form of generated QEMU arguments.
    pub arg_form: ArgForm,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            model: Model::Plain,
            size: naming::DEFAULT_REGION_SIZE,
            bus: None,
            slot: None,
            pick_free_slot: false,
            region: default_region(),
            arg_form: ArgForm::Json,
        }
    }
}

impl Spec {
    /// Check the values that cannot be checked by their types.
    pub fn validate(&self) -> Result<()> {
        RegionSize::new(self.size)?;
        if let Some(slot) = self.slot.filter(|&s| s > 0x1f) {
            return Err(Error::BadPciNumber {
                what: "slot",
                value: format!("0x{slot:x}"),
            });
        }
        // Every VM needs its own region: a template without {uuid} would
        // give them all the same file. (The doorbell model's region comes
        // from the ivshmem server, so its template is not used.)
        if self.model == Model::Plain {
            let name = Path::new(&self.region)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            if !name.contains("{uuid}") {
                return Err(Error::RegionWithoutUuid(self.region.clone()));
            }
        }
        Ok(())
    }

    /// The bus, with the i440fx default (bus 0).
    pub fn bus_or_default(&self) -> u8 {
        self.bus.unwrap_or(0)
    }

    /// The slot, with the i440fx default ([`DEFAULT_SLOT`]).
    pub fn slot_or_default(&self) -> u8 {
        self.slot.unwrap_or(DEFAULT_SLOT)
    }

    /// The region path for a domain.
    pub fn region_path(&self, uuid: &VmUuid) -> PathBuf {
        PathBuf::from(self.region.replace("{uuid}", &uuid.to_string()))
    }

    /// The `<shmem name=…>` for a domain: the region's file name. libvirt
    /// always puts ivshmem-plain regions at `/dev/shm/NAME`
    /// ([`naming::REGION_DIR`]).
    pub fn shmem_name(&self, uuid: &VmUuid) -> Result<String> {
        let path = self.region_path(uuid);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Unsupported(format!("region path {path:?} has no file name")))?;
        if self.model == Model::Plain && path.parent() != Some(Path::new(naming::REGION_DIR)) {
            return Err(Error::Unsupported(format!(
                "the <shmem> route always uses {}/NAME, but the region is {}; use the cmdline route for other paths",
                naming::REGION_DIR,
                path.display()
            )));
        }
        Ok(name)
    }

    /// QEMU arguments (`-object …`, `-device …`) that add the device for
    /// `uuid` at `slot` on the QEMU bus `bus` (its id, e.g. `pci.3`; `None`
    /// is the machine's root bus).
    pub fn qemu_args(&self, uuid: &VmUuid, bus: Option<&str>, slot: u8) -> Vec<String> {
        let addr = format!("0x{slot:02x}");
        match (&self.model, self.arg_form) {
            (Model::Plain, ArgForm::Json) => {
                let path = self.region_path(uuid);
                let path = path.to_string_lossy();
                vec![
                    "-object".into(),
                    format!(
                        r#"{{"qom-type":"memory-backend-file","id":"{MEM_ID}","mem-path":{},"size":{},"share":true}}"#,
                        json_str(&path),
                        self.size
                    ),
                    "-device".into(),
                    format!(
                        r#"{{"driver":"ivshmem-plain","id":"{DEV_ID}","memdev":"{MEM_ID}",{}"addr":"{addr}"}}"#,
                        bus.map(|b| format!(r#""bus":"{b}","#)).unwrap_or_default()
                    ),
                ]
            }
            (Model::Plain, ArgForm::Legacy) => {
                let path = self.region_path(uuid);
                vec![
                    "-object".into(),
                    format!(
                        "memory-backend-file,id={MEM_ID},mem-path={},size={},share=on",
                        path.to_string_lossy().replace(',', ",,"),
                        self.size
                    ),
                    "-device".into(),
                    format!(
                        "ivshmem-plain,id={DEV_ID},memdev={MEM_ID},{}addr={addr}",
                        bus.map(|b| format!("bus={b},")).unwrap_or_default()
                    ),
                ]
            }
            (Model::Doorbell { server, vectors }, form) => {
                // -chardev has no JSON form on QEMU 7.2; libvirt writes it as key=value too.
                let chardev = format!(
                    "socket,id={CHR_ID},path={}",
                    server.to_string_lossy().replace(',', ",,")
                );
                let device = match form {
                    ArgForm::Json => format!(
                        r#"{{"driver":"ivshmem-doorbell","id":"{DEV_ID}","chardev":"{CHR_ID}","vectors":{vectors},{}"addr":"{addr}"}}"#,
                        bus.map(|b| format!(r#""bus":"{b}","#)).unwrap_or_default()
                    ),
                    ArgForm::Legacy => format!(
                        "ivshmem-doorbell,id={DEV_ID},chardev={CHR_ID},vectors={vectors},{}addr={addr}",
                        bus.map(|b| format!("bus={b},")).unwrap_or_default()
                    ),
                };
                vec!["-chardev".into(), chardev, "-device".into(), device]
            }
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Parse a region size given by the operator (`8M`, `8MiB`, `1G`,
/// `1048576`; binary units) into bytes, with the protocol's limits: see
/// [`RegionSize`].
pub fn parse_size(s: &str) -> Result<u64> {
    Ok(s.parse::<RegionSize>()?.bytes())
}

/// Parse a number the way libvirt does for PCI addresses: `0x` hex, leading `0` octal, else decimal.
pub fn parse_pci_number(s: &str) -> Option<u32> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

/// Parse a PCI slot (0..=0x1f) given by the operator.
pub fn parse_slot(s: &str) -> Result<u8> {
    parse_pci_number(s)
        .filter(|&v| v <= 0x1f)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| Error::BadPciNumber {
            what: "slot",
            value: s.to_string(),
        })
}

/// Parse a PCI bus number (0..=0xff) given by the operator.
pub fn parse_bus(s: &str) -> Result<u8> {
    parse_pci_number(s)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| Error::BadPciNumber {
            what: "bus",
            value: s.to_string(),
        })
}

/// Parse a domain UUID the way libvirt writes it (surrounding whitespace,
/// either case, canonical dashes or none; see [`VmUuid::parse_lenient`]).
/// Its [`Display`](std::fmt::Display) is the canonical lowercase form used
/// in region names.
pub fn parse_uuid(s: &str) -> Result<VmUuid> {
    VmUuid::parse_lenient(s).map_err(|_| Error::BadUuid(s.to_string()))
}

/// Region sizes at and past the protocol's limits, and whether each is
/// valid: the cases every size check in this crate is tested with.
#[cfg(test)]
pub(crate) const SIZE_CASES: [(u64, bool); 8] = [
    (4096, false),
    (64 << 10, false),
    (512 << 10, false),
    (3 << 20, false),
    (64 << 30, false),
    (1 << 20, true),
    (8 << 20, true),
    (16 << 30, true),
];

#[cfg(test)]
mod tests {
    use super::*;

    use ivchan_protocol::naming::SizeError;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert!(matches!(
            parse_size("3M"),
            Err(Error::Size(SizeError::NotPowerOfTwo { .. }))
        ));
        // The protocol refuses regions under 1 MiB and over 16 GiB.
        for (small, bytes) in [("512K", 512u64 << 10), ("4096", 4096), ("1024", 1024)] {
            let e = parse_size(small).unwrap_err();
            assert!(
                matches!(e, Error::Size(SizeError::TooSmall { bytes: b }) if b == bytes),
                "{small}: {e}"
            );
            assert!(e.to_string().contains("below the 1 MiB minimum"), "{e}");
        }
        let e = parse_size("64G").unwrap_err();
        assert!(
            matches!(e, Error::Size(SizeError::TooLarge { bytes }) if bytes == 64 << 30),
            "{e}"
        );
        assert!(e.to_string().contains("above the 16 GiB maximum"), "{e}");
        assert!(matches!(
            parse_size("8Q"),
            Err(Error::Size(SizeError::Malformed { .. }))
        ));
        assert!(matches!(
            parse_size("99999999999999999999G"),
            Err(Error::Size(SizeError::Malformed { .. }))
        ));
    }

    #[test]
    fn validate_applies_the_protocol_limits() {
        for (size, ok) in SIZE_CASES {
            let spec = Spec {
                size,
                ..Spec::default()
            };
            assert_eq!(spec.validate().is_ok(), ok, "{size}");
        }
    }

    #[test]
    fn default_region_is_the_protocols_path() {
        let u = parse_uuid("6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b").unwrap();
        assert_eq!(default_region(), "/dev/shm/fg_{uuid}");
        assert_eq!(
            Spec::default().region_path(&u),
            naming::default_region_path(&u)
        );
    }

    #[test]
    fn uuids() {
        let u = parse_uuid(" 6B9E1E0A5C1F4B7E9A511D2C3E4F5A6B ").unwrap();
        assert_eq!(u.to_string(), "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b");
        assert!(matches!(parse_uuid("nope"), Err(Error::BadUuid(s)) if s == "nope"));
        assert!(parse_uuid("6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6").is_err());
    }

    #[test]
    fn slots() {
        assert_eq!(parse_slot("0x1f").unwrap(), 0x1f);
        assert_eq!(parse_slot("31").unwrap(), 31);
        assert_eq!(parse_slot("037").unwrap(), 31);
        assert!(parse_slot("0x20").is_err());
        assert!(parse_slot("x").is_err());
    }

    #[test]
    fn args() {
        let u = parse_uuid("6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b").unwrap();
        let s = Spec::default();
        let a = s.qemu_args(&u, None, 0x1f);
        assert_eq!(a[0], "-object");
        let v: serde_json::Value = serde_json::from_str(&a[1]).unwrap();
        assert_eq!(
            v["mem-path"],
            "/dev/shm/fg_6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b"
        );
        assert_eq!(v["size"], 8388608);
        let d: serde_json::Value = serde_json::from_str(&a[3]).unwrap();
        assert_eq!(d["addr"], "0x1f");
        let legacy = Spec {
            arg_form: ArgForm::Legacy,
            ..Spec::default()
        };
        let a = legacy.qemu_args(&u, None, 3);
        assert_eq!(
            a[3],
            "ivshmem-plain,id=ivchan-shm,memdev=ivchan-mem,addr=0x03"
        );
        let a = legacy.qemu_args(&u, Some("pci.4"), 0);
        assert_eq!(
            a[3],
            "ivshmem-plain,id=ivchan-shm,memdev=ivchan-mem,bus=pci.4,addr=0x00"
        );
    }

    #[test]
    fn contradictory_options_are_refused() {
        assert!(matches!(
            Model::parse("ivshmem-plain", Some("/run/s.sock".into()), None),
            Err(Error::PlainWithServer(_))
        ));
        assert!(matches!(
            Model::parse("ivshmem-plain", None, Some(2)),
            Err(Error::PlainWithVectors)
        ));
        assert_eq!(
            Model::parse("ivshmem-doorbell", Some("/s".into()), None).unwrap(),
            Model::Doorbell {
                server: "/s".into(),
                vectors: 1
            }
        );
        for fixed in ["/dev/shm/no-uuid", "/dev/shm/{uuid}/x"] {
            let spec = Spec {
                region: fixed.into(),
                ..Spec::default()
            };
            let e = spec.validate().unwrap_err();
            assert!(
                matches!(e, Error::RegionWithoutUuid(ref r) if r == fixed),
                "{e}"
            );
            assert!(e.to_string().contains("same region"), "{e}");
        }
    }
}
