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
            spec.bus = parse_bus(&v)?;
        }
        if let Some(v) = get("IVCHAN_SLOT") {
            spec.slot = parse_slot(&v)?;
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
            spec.model = Model::parse(&v, get("IVCHAN_SERVER").map(PathBuf::from), 1)?;
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

/// The argv (without argv\[0\]) to pass to the real QEMU: `None` means pass
/// through unchanged (no `-uuid`, an invalid one, or an ivshmem device already present).
pub fn augment(args: &[OsString], spec: &Spec) -> Option<Vec<OsString>> {
    let s = |a: &OsString| a.to_str().map(str::to_string);
    let mut uuid = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let a = a.as_os_str();
        if a == OsStr::new("-uuid") || a == OsStr::new("--uuid") {
            uuid = it.peek().and_then(|v| s(v));
        }
        let is_device = a == OsStr::new("-device") || a == OsStr::new("--device");
        if is_device
            && it
                .peek()
                .is_some_and(|v| v.to_string_lossy().contains("ivshmem"))
        {
            return None;
        }
    }
    let uuid = parse_uuid(&uuid?).ok()?;
    let mut out = args.to_vec();
    out.extend(
        spec.qemu_args(&uuid, spec.slot)
            .into_iter()
            .map(OsString::from),
    );
    Some(out)
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
    fn config() {
        let file = parse_config_file("# c\nIVCHAN_SIZE = 16M\nIVCHAN_SLOT=0x10\n");
        let c = WrapperConfig::from_lookup(|k| file.get(k).cloned()).unwrap();
        assert_eq!(c.spec.size, 16 << 20);
        assert_eq!(c.spec.slot, 0x10);
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
