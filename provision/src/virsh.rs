//! Route 4 (and the virsh half of route 5): a defined or running domain
//! through `virsh`, always run with an argv (never a shell).

use std::ffi::OsStr;
use std::io::Write;
use std::process::Command;

use crate::error::{Error, Result};
use crate::inject::{self, Outcome, Route};
use crate::spec::Spec;

/// Default libvirt connection.
pub const DEFAULT_URI: &str = "qemu:///system";

/// A `virsh` bound to one connection URI.
#[derive(Debug, Clone)]
pub struct Virsh {
    /// libvirt connection URI (`qemu:///system`).
    pub uri: String,
    /// The `virsh` program to run.
    pub program: String,
}

impl Virsh {
    /// `virsh -c URI`.
    pub fn new(uri: &str) -> Virsh {
        Virsh {
            uri: uri.to_string(),
            program: "virsh".to_string(),
        }
    }

    /// Run `virsh -c URI ARGS…` and return its stdout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = Command::new(&self.program)
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()
            .map_err(|source| Error::MissingProgram {
                program: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            return String::from_utf8(out.stdout).map_err(|_| Error::Libvirt {
                args: display_args(args),
                msg: "virsh printed non-UTF-8 output".into(),
            });
        }
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.contains("failed to connect") || msg.contains("Failed to connect") {
            return Err(Error::NoConnection {
                uri: self.uri.clone(),
                msg,
            });
        }
        Err(Error::Libvirt {
            args: display_args(args),
            msg,
        })
    }

    /// Domain XML, live or persistent (`--inactive`), with secrets so a
    /// re-define loses nothing.
    pub fn dumpxml(&self, dom: &str, inactive: bool) -> Result<String> {
        let mut a = vec!["dumpxml", "--security-info"];
        if inactive {
            a.push("--inactive");
        }
        a.push("--domain");
        a.push(dom);
        self.run(&a)
    }

    /// `virsh define` from XML text.
    pub fn define(&self, xml: &str) -> Result<()> {
        let f = temp_with(xml)?;
        self.run(&[OsStr::new("define"), f.path().as_os_str()])
            .map(drop)
    }

    /// `virsh domstate`, e.g. "running", "shut off".
    pub fn domstate(&self, dom: &str) -> Result<String> {
        Ok(self.run(&["domstate", "--domain", dom])?.trim().to_string())
    }

    /// `virsh qemu-monitor-command DOM JSON`: taints the domain ("custom-monitor").
    pub fn monitor_command(&self, dom: &str, json: &str) -> Result<String> {
        self.run(&["qemu-monitor-command", "--domain", dom, "--cmd", json])
    }
}

fn display_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn temp_with(text: &str) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix("ivchan-")
        .suffix(".xml")
        .tempfile()
        .map_err(Error::io("creating a temp file"))?;
    f.write_all(text.as_bytes())
        .map_err(Error::io("writing a temp file"))?;
    f.flush().map_err(Error::io("writing a temp file"))?;
    Ok(f)
}

/// Dump the persistent definition, inject (or undo) by `route`, define it
/// again if anything changed. Takes effect at the domain's next start.
/// Undo without a route removes the device whichever route added it.
pub fn apply(
    v: &Virsh,
    dom: &str,
    spec: &Spec,
    route: Option<Route>,
    undo: bool,
) -> Result<Outcome> {
    let xml = v.dumpxml(dom, true)?;
    let out = match (undo, route) {
        (true, Some(r)) => inject::undo(&xml, spec, r)?,
        (true, None) => inject::undo_any(&xml, spec)?,
        (false, r) => inject::inject(&xml, spec, r.unwrap_or(Route::Shmem))?,
    };
    if out.changed {
        v.define(&out.xml)?;
    }
    Ok(out)
}

/// Hotplug the `<shmem>` device into a running domain
/// (`virsh attach-device --live`, plus `--config` if asked), where hotplug
/// reaches it (on q35 a free `pcie-root-port`; see
/// [`shmem_device_xml`](inject::shmem_device_xml)). Returns the device
/// attached and its place, or `None` if the live domain already has it.
pub fn hotplug(
    v: &Virsh,
    dom: &str,
    spec: &Spec,
    config: bool,
) -> Result<Option<inject::HotplugDevice>> {
    let state = v.domstate(dom)?;
    if state != "running" && state != "paused" {
        return Err(Error::NotRunning(dom.to_string()));
    }
    let live = v.dumpxml(dom, false)?;
    if !inject::has_acpi(&live)? {
        return Err(Error::NoAcpi(dom.to_string()));
    }
    let dev = match inject::shmem_device_xml(&live, spec) {
        Ok(Some(dev)) => dev,
        Ok(None) => return Ok(None),
        Err(Error::NoHotplugPort { .. }) => {
            return Err(Error::NoHotplugPort {
                dom: dom.to_string(),
            })
        }
        Err(e) => return Err(e),
    };
    let f = temp_with(&dev.xml)?;
    let mut args = vec![
        OsStr::new("attach-device"),
        OsStr::new("--domain"),
        OsStr::new(dom),
        OsStr::new("--file"),
        f.path().as_os_str(),
        OsStr::new("--live"),
    ];
    if config {
        args.push(OsStr::new("--config"));
    }
    v.run(&args)?;
    Ok(Some(dev))
}
