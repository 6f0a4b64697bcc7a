//! Which routes are in place for a domain.

use std::fmt;

use super::domain::Domain;
use crate::error::Result;
use crate::spec::Spec;

/// Which routes are in place for a domain, and whether it is tainted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The domain's UUID.
    pub uuid: String,
    /// Name of the tool's `<shmem>` if present.
    pub shmem: Option<String>,
    /// Other `<shmem>` devices (name, model).
    pub other_shmem: Vec<String>,
    /// The tool's `<qemu:commandline>` arguments are present.
    pub cmdline: bool,
    /// Some other ivshmem device is passed through `<qemu:commandline>`.
    pub cmdline_foreign: bool,
    /// `<emulator>` points at the ivchan QEMU wrapper.
    pub wrapper: Option<String>,
    /// Taint reasons libvirt will record ("custom-argv").
    pub tainted: Vec<&'static str>,
}

impl Status {
    /// Whether some route gives the domain an ivshmem device.
    pub fn provisioned(&self) -> bool {
        self.shmem.is_some() || self.cmdline || self.wrapper.is_some()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "uuid: {}", self.uuid)?;
        match &self.shmem {
            Some(n) => writeln!(f, "shmem route: yes (<shmem name='{n}'>)")?,
            None => writeln!(f, "shmem route: no")?,
        }
        for o in &self.other_shmem {
            writeln!(f, "other shmem device: {o}")?;
        }
        writeln!(f, "qemu:commandline route: {}", yn(self.cmdline))?;
        if self.cmdline_foreign {
            writeln!(f, "other ivshmem device in qemu:commandline: yes")?;
        }
        match &self.wrapper {
            Some(e) => writeln!(f, "wrapper route: yes (<emulator>{e}</emulator>)")?,
            None => writeln!(f, "wrapper route: no")?,
        }
        writeln!(f, "provisioned: {}", yn(self.provisioned()))?;
        if self.tainted.is_empty() {
            writeln!(f, "tainted: no")
        } else {
            writeln!(f, "tainted: yes ({})", self.tainted.join(", "))
        }
    }
}

/// Report which routes are in place for a domain XML.
pub fn status(text: &str, spec: &Spec) -> Result<Status> {
    let d = Domain::parse(text)?;
    let name = spec.shmem_name(&d.uuid).ok();
    let mut shmem = None;
    let mut other_shmem = Vec::new();
    for (i, n) in d.shmems() {
        if Some(&n) == name.as_ref() {
            shmem = Some(n);
        } else {
            let model = d
                .doc
                .child(i, "model")
                .and_then(|m| d.doc.elements[m].attr_value("type").ok().flatten())
                .unwrap_or_else(|| "ivshmem".into());
            other_shmem.push(format!("{n} ({model})"));
        }
    }
    let cmd = d.commandline();
    let cmdline = cmd.is_some_and(|c| !d.our_args(c).is_empty());
    let cmdline_foreign = cmd.is_some_and(|c| d.cmdline_has_ivshmem(c) && d.our_args(c).is_empty());
    let mut tainted = Vec::new();
    if cmd.is_some_and(|c| d.doc.child_elements(c).next().is_some()) {
        tainted.push("custom-argv");
    }
    let wrapper = d
        .devices
        .and_then(|dev| d.doc.child(dev, "emulator"))
        .and_then(|e| d.doc.text_of(e).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.contains("ivchan-qemu-wrapper"));
    Ok(Status {
        uuid: d.uuid.to_string(),
        shmem,
        other_shmem,
        cmdline,
        cmdline_foreign,
        wrapper,
        tainted,
    })
}
