//! Route 7: the QEMU wrapper (`ivchan-qemu-wrapper`).
//!
//! Put in the emulator's place (`<emulator>` in the domain XML, or by
//! renaming `qemu-system-x86_64` to `qemu-system-x86_64.real` and installing
//! the wrapper under the old name). It reads `-uuid` from argv, appends the
//! `-object`/`-device` arguments and execs the real QEMU with an argv, never a
//! shell. Without `-uuid` (libvirt's capability probes), or when an ivshmem
//! device is already on the command line, everything passes through
//! unchanged.
//!
//! Configuration, from the environment or, because libvirt clears QEMU's
//! environment, from `KEY=VALUE` lines in [`DEFAULT_CONFIG`] (path overridable
//! with `IVCHAN_WRAPPER_CONFIG`); the environment wins:
//!
//! | key | default |
//! |-----|---------|
//! | `IVCHAN_REAL_QEMU` | `/usr/bin/qemu-system-x86_64.real`, else `/usr/bin/qemu-system-x86_64` if that is not the wrapper itself |
//! | `IVCHAN_REGION` | `/dev/shm/fg_{uuid}` |
//! | `IVCHAN_SIZE` | `8M` |
//! | `IVCHAN_BUS`, `IVCHAN_SLOT` | `0`, `0x1f` |
//! | `IVCHAN_MODEL`, `IVCHAN_SERVER` | `ivshmem-plain`, none |
//! | `IVCHAN_ARG_FORM` | `json` (or `legacy`) |

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::{parse_bus, parse_size, parse_slot, parse_uuid, ArgForm, Model, Spec};

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/ivchan/qemu-wrapper.conf";
/// Default real QEMU when the wrapper replaced it by rename.
pub const DEFAULT_REAL_QEMU: &str = "/usr/bin/qemu-system-x86_64.real";
/// The QEMU the wrapper stands in for through `<emulator>`.
pub const SYSTEM_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// Wrapper settings.
#[derive(Debug, Clone)]
pub struct WrapperConfig {
    /// The QEMU to exec (`IVCHAN_REAL_QEMU`); `None`: see
    /// [`resolve_real_qemu`](Self::resolve_real_qemu).
    pub real_qemu: Option<PathBuf>,
    /// The device to add.
    pub spec: Spec,
}

/// Parse `KEY=VALUE` lines (`#` comments, blank lines ignored).
pub fn parse_config_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

impl WrapperConfig {
    /// Build from a lookup (environment first, then file).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<WrapperConfig> {
        let mut spec = Spec::default();
        if let Some(v) = get("IVCHAN_REGION") {
            spec.region = v;
        }
        if let Some(v) = get("IVCHAN_SIZE") {
            spec.size = parse_size(&v)?;
        }
        if let Some(v) = get("IVCHAN_BUS") {
            spec.bus = Some(parse_bus(&v)?);
        }
        if let Some(v) = get("IVCHAN_SLOT") {
            spec.slot = Some(parse_slot(&v)?);
        }
        if let Some(v) = get("IVCHAN_ARG_FORM") {
            spec.arg_form = match v.as_str() {
                "json" => ArgForm::Json,
                "legacy" => ArgForm::Legacy,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "IVCHAN_ARG_FORM={v:?}: expected json or legacy"
                    )))
                }
            };
        }
        if let Some(v) = get("IVCHAN_MODEL") {
            spec.model = Model::parse(&v, get("IVCHAN_SERVER").map(PathBuf::from), None)?;
        }
        spec.validate()?;
        Ok(WrapperConfig {
            real_qemu: get("IVCHAN_REAL_QEMU").map(PathBuf::from),
            spec,
        })
    }

    /// Load from the process environment and the config file.
    pub fn load() -> Result<WrapperConfig> {
        let path = std::env::var("IVCHAN_WRAPPER_CONFIG").unwrap_or_else(|_| DEFAULT_CONFIG.into());
        let file = std::fs::read_to_string(&path)
            .map(|t| parse_config_file(&t))
            .unwrap_or_default();
        Self::from_lookup(|k| std::env::var(k).ok().or_else(|| file.get(k).cloned()))
    }

    /// The QEMU to exec: configured, else [`DEFAULT_REAL_QEMU`] if it exists,
    /// else [`SYSTEM_QEMU`] unless that is this very wrapper.
    pub fn resolve_real_qemu(&self, me: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = &self.real_qemu {
            return Ok(p.clone());
        }
        if Path::new(DEFAULT_REAL_QEMU).exists() {
            return Ok(DEFAULT_REAL_QEMU.into());
        }
        let sys = std::fs::canonicalize(SYSTEM_QEMU).ok();
        let me = me.and_then(|m| std::fs::canonicalize(m).ok());
        match sys {
            Some(s) if Some(&s) != me.as_ref() => Ok(SYSTEM_QEMU.into()),
            _ => Err(Error::Unsupported(format!(
                "cannot find the real QEMU: set IVCHAN_REAL_QEMU (environment or {DEFAULT_CONFIG}), or rename it to {DEFAULT_REAL_QEMU}"
            ))),
        }
    }
}

/// What the wrapper does with a QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Exec the real QEMU with these arguments (the device added).
    Add(Vec<OsString>),
    /// Pass the arguments through unchanged, for this reason.
    PassThrough(PassReason),
}

/// Why the wrapper adds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// No `-uuid`: not a VM start (libvirt's capability probes), or one
    /// that names no VM.
    NoUuid,
    /// A `-uuid` that is not a UUID.
    BadUuid,
    /// An ivshmem device is already on the command line.
    HasIvshmem,
    /// q35, and every slot of `pcie.0` below the chipset's is taken.
    NoFreeSlot,
}

/// The argv (without argv\[0\]) to pass to the real QEMU: `None` means pass
/// through unchanged (no `-uuid`, an invalid one, an ivshmem device already
/// present, or no free slot); [`plan`] says which.
pub fn augment(args: &[OsString], spec: &Spec) -> Option<Vec<OsString>> {
    match plan(args, spec) {
        Plan::Add(a) => Some(a),
        Plan::PassThrough(_) => None,
    }
}

/// Decide what to do with QEMU's argv (without argv\[0\]).
///
/// On i440fx the device goes to bus 0 slot 0x1f by default. On q35
/// (`-machine`/`-M` naming a q35 type), slot 0x1f is the chipset's: by
/// default the device goes to the highest slot of `pcie.0` that no
/// `-device` on the command line takes (an explicit slot is kept).
pub fn plan(args: &[OsString], spec: &Spec) -> Plan {
    let s = |a: &OsString| a.to_str().map(str::to_string);
    let mut uuid = None;
    let mut q35 = false;
    let mut root_slots_used: Vec<u8> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let a = a.as_os_str();
        if a == OsStr::new("-uuid") || a == OsStr::new("--uuid") {
            uuid = it.peek().and_then(|v| s(v));
        }
        let is_machine = ["-machine", "--machine", "-M"]
            .iter()
            .any(|m| a == OsStr::new(m));
        if is_machine {
            q35 |= it
                .peek()
                .and_then(|v| s(v))
                .is_some_and(|m| machine_is_q35(&m));
        }
        let is_device = a == OsStr::new("-device") || a == OsStr::new("--device");
        if is_device {
            let Some(v) = it.peek().map(|v| v.to_string_lossy().into_owned()) else {
                continue;
            };
            if v.contains("ivshmem") {
                return Plan::PassThrough(PassReason::HasIvshmem);
            }
            if let Some(slot) = root_bus_slot(&v) {
                root_slots_used.push(slot);
            }
        }
    }
    let Some(uuid) = uuid else {
        return Plan::PassThrough(PassReason::NoUuid);
    };
    let Ok(uuid) = parse_uuid(&uuid) else {
        return Plan::PassThrough(PassReason::BadUuid);
    };
    let bus_id = spec.bus.filter(|&b| b != 0).map(|b| format!("pci.{b}"));
    let slot = match spec.slot {
        Some(slot) => slot,
        None if q35 && bus_id.is_none() => {
            match (3u8..=0x1e).rev().find(|s| !root_slots_used.contains(s)) {
                Some(s) => s,
                None => return Plan::PassThrough(PassReason::NoFreeSlot),
            }
        }
        None => spec.slot_or_default(),
    };
    let mut out = args.to_vec();
    out.extend(
        spec.qemu_args(&uuid, bus_id.as_deref(), slot)
            .into_iter()
            .map(OsString::from),
    );
    Plan::Add(out)
}

/// Is a `-machine` value (`pc-q35-7.2,usb=off`, `type=q35`, `q35`) a q35 machine?
fn machine_is_q35(value: &str) -> bool {
    value
        .split(',')
        .enumerate()
        .find_map(|(i, p)| match p.strip_prefix("type=") {
            Some(t) => Some(t),
            None if i == 0 && !p.contains('=') => Some(p),
            None => None,
        })
        .is_some_and(|t| t.contains("q35"))
}

/// The slot a `-device` value (JSON or key=value) takes on the PCIe root
/// bus `pcie.0`, if it names that bus and an address.
fn root_bus_slot(value: &str) -> Option<u8> {
    let (bus, addr) = if value.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        (
            v.get("bus")?.as_str()?.to_string(),
            v.get("addr")?.as_str()?.to_string(),
        )
    } else {
        let kv = |k: &str| {
            value
                .split(',')
                .find_map(|p| p.strip_prefix(k)?.strip_prefix('=').map(str::to_string))
        };
        (kv("bus")?, kv("addr")?)
    };
    if bus != "pcie.0" {
        return None;
    }
    let slot = crate::spec::parse_pci_number(addr.split('.').next()?)?;
    u8::try_from(slot).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn augments_only_vm_starts() {
        let s = Spec::default();
        assert!(augment(&v(&["-machine", "none", "-qmp", "stdio"]), &s).is_none());
        let out = augment(
            &v(&[
                "-uuid",
                "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b",
                "-name",
                "x;rm -rf /",
            ]),
            &s,
        )
        .unwrap();
        assert_eq!(out.len(), 8);
        assert_eq!(out[3], "x;rm -rf /");
        assert_eq!(out[4], "-object");
        assert!(augment(
            &v(&[
                "-uuid",
                "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b",
                "-device",
                "{\"driver\":\"ivshmem-plain\"}"
            ]),
            &s
        )
        .is_none());
        assert!(augment(&v(&["-uuid", "bogus"]), &s).is_none());
    }

    #[test]
    fn q35_gets_a_free_root_bus_slot_not_the_chipsets() {
        let s = Spec::default();
        let u = "6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b";
        let device = |out: &[OsString]| out.last().unwrap().to_string_lossy().into_owned();
        // i440fx (and no -machine): 0x1f.
        let out = augment(&v(&["-machine", "pc-i440fx-7.2,usb=off", "-uuid", u]), &s).unwrap();
        assert!(device(&out).contains("\"addr\":\"0x1f\""), "{out:?}");
        // q35 as libvirt starts it: root ports on pcie.0 slots 1 and 2, a
        // device on 0x1e; the device goes to the highest free slot.
        let out = augment(
            &v(&[
                "-machine",
                "pc-q35-7.2,usb=off,dump-guest-core=off",
                "-uuid",
                u,
                "-device",
                r#"{"driver":"pcie-root-port","id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x1"}"#,
                "-device",
                "virtio-rng-pci,bus=pcie.0,addr=0x1e",
            ]),
            &s,
        )
        .unwrap();
        let d = device(&out);
        assert!(
            d.contains("\"addr\":\"0x1d\"") && !d.contains("\"bus\""),
            "{d}"
        );
        for m in [["-M", "q35"], ["-machine", "type=pc-q35-7.2,accel=tcg"]] {
            let out = augment(&v(&[m[0], m[1], "-uuid", u]), &s).unwrap();
            assert!(device(&out).contains("\"addr\":\"0x1e\""), "{m:?}: {out:?}");
        }
        // Every pcie.0 slot taken: nothing added, and the reason is known.
        let mut full = v(&["-M", "q35", "-uuid", u]);
        for slot in 3..=0x1e {
            full.push("-device".into());
            full.push(format!("virtio-rng-pci,bus=pcie.0,addr=0x{slot:x}").into());
        }
        assert_eq!(plan(&full, &s), Plan::PassThrough(PassReason::NoFreeSlot));
        // An explicit slot is kept.
        let explicit = Spec {
            slot: Some(0x10),
            ..Spec::default()
        };
        let out = augment(&v(&["-M", "q35", "-uuid", u]), &explicit).unwrap();
        assert!(device(&out).contains("\"addr\":\"0x10\""), "{out:?}");
    }

    #[test]
    fn config() {
        let file = parse_config_file("# c\nIVCHAN_SIZE = 16M\nIVCHAN_SLOT=0x10\n");
        let c = WrapperConfig::from_lookup(|k| file.get(k).cloned()).unwrap();
        assert_eq!(c.spec.size, 16 << 20);
        assert_eq!(c.spec.slot, Some(0x10));
        let size = |v: &str| {
            WrapperConfig::from_lookup(|k| (k == "IVCHAN_SIZE").then(|| v.into()))
                .map(|c| c.spec.size)
        };
        assert_eq!(size("1M").unwrap(), 1 << 20);
        assert_eq!(size("8M").unwrap(), 8 << 20);
        for bad in ["3M", "512K", "4096", "64G"] {
            let e = size(bad).unwrap_err();
            assert!(matches!(e, Error::Size(_)), "{bad}: {e}");
        }
    }
}
