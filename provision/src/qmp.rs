//! Route 5: hot-add the device through the QEMU monitor.
//!
//! Over a QMP socket ([`Qmp`]) or through `virsh qemu-monitor-command`
//! ([`VirshMonitor`], which makes libvirt mark the domain tainted,
//! "custom-monitor"): `object-add` of a `memory-backend-file` with
//! `share=on` (or `chardev-add` for the doorbell model), then `device_add`,
//! then `query-pci` to confirm.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ivchan_protocol::VmUuid;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::spec::{Model, Spec, CHR_ID, DEV_ID, MEM_ID};
use crate::virsh::Virsh;

/// Red Hat's PCI vendor id, used by ivshmem.
pub const IVSHMEM_VENDOR: u64 = 0x1af4;
/// ivshmem's PCI device id.
pub const IVSHMEM_DEVICE: u64 = 0x1110;

/// The warning printed for the `virsh qemu-monitor-command` route.
pub const TAINT_MONITOR_WARNING: &str = "libvirt marks a domain changed through qemu-monitor-command as tainted (\"custom-monitor\"), and it does not know about the device: it is lost on restart and may confuse later libvirt hotplug; prefer `ivchan-provision hotplug`";

/// Something that executes QMP commands and returns their `return` value.
pub trait Monitor {
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value>;
}

/// A QMP connection over a UNIX socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let s = UnixStream::connect(path)
            .map_err(|e| Error::Qmp(format!("cannot connect to {}: {e}", path.display())))?;
        let t = Some(Duration::from_secs(15));
        s.set_read_timeout(t)
            .map_err(|e| Error::Qmp(e.to_string()))?;
        s.set_write_timeout(t)
            .map_err(|e| Error::Qmp(e.to_string()))?;
        let writer = s.try_clone().map_err(|e| Error::Qmp(e.to_string()))?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Qmp(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::Qmp(format!("reading: {e}")))?;
        if n == 0 {
            return Err(Error::Qmp("connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Qmp(format!("bad JSON from QEMU: {e}")))
    }
}

fn result_of(v: Value, command: &str) -> Result<Value> {
    if let Some(e) = v.get("error") {
        let desc = e
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(Error::Qmp(format!("{command}: {desc}")));
    }
    v.get("return")
        .cloned()
        .ok_or_else(|| Error::Qmp(format!("{command}: unexpected reply {v}")))
}

impl Monitor for Qmp {
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::Qmp(format!("writing: {e}")))?;
        loop {
            let v = self.read_message()?;
            if v.get("event").is_some() {
                continue;
            }
            return result_of(v, command);
        }
    }
}

/// QMP through `virsh qemu-monitor-command` (taints the domain).
pub struct VirshMonitor<'a> {
    pub virsh: &'a Virsh,
    pub domain: String,
}

impl Monitor for VirshMonitor<'_> {
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let out = self.virsh.monitor_command(&self.domain, &msg.to_string())?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| Error::Qmp(format!("bad JSON from virsh: {e}")))?;
        result_of(v, command)
    }
}

/// An ivshmem function found by `query-pci`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub bus: u64,
    pub slot: u64,
    pub qdev_id: String,
}

/// All PCI devices (bus, slot, vendor, device, qdev id) in a `query-pci` answer, recursing into bridges.
fn pci_devices(v: &Value) -> Vec<(u64, u64, u64, u64, String)> {
    fn walk(devs: &[Value], out: &mut Vec<(u64, u64, u64, u64, String)>) {
        for d in devs {
            let g = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(u64::MAX);
            let id = d.get("id");
            let n = |k: &str| {
                id.and_then(|i| i.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let qdev = d
                .get("qdev_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            out.push((g("bus"), g("slot"), n("vendor"), n("device"), qdev));
            if let Some(b) = d
                .get("pci_bridge")
                .and_then(|b| b.get("devices"))
                .and_then(Value::as_array)
            {
                walk(b, out);
            }
        }
    }
    let mut out = Vec::new();
    for bus in v.as_array().into_iter().flatten() {
        if let Some(devs) = bus.get("devices").and_then(Value::as_array) {
            walk(devs, &mut out);
        }
    }
    out
}

/// ivshmem devices in a `query-pci` answer.
pub fn find_ivshmem(query_pci: &Value) -> Vec<PciDevice> {
    pci_devices(query_pci)
        .into_iter()
        .filter(|d| d.2 == IVSHMEM_VENDOR && d.3 == IVSHMEM_DEVICE)
        .map(|(bus, slot, _, _, qdev_id)| PciDevice { bus, slot, qdev_id })
        .collect()
}

/// What [`hot_add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotAdd {
    /// The device as `query-pci` reports it.
    pub device: PciDevice,
    /// `true` if an ivshmem device was already there and nothing was added.
    pub already_present: bool,
}

/// Hot-add the device for `uuid` and confirm it with `query-pci`. Idempotent:
/// if an ivshmem device is already present nothing is added.
pub fn hot_add(m: &mut dyn Monitor, spec: &Spec, uuid: &VmUuid) -> Result<HotAdd> {
    spec.validate()?;
    let pci = m.execute("query-pci", None)?;
    if let Some(d) = find_ivshmem(&pci).into_iter().next() {
        return Ok(HotAdd {
            device: d,
            already_present: true,
        });
    }
    let (bus, wanted) = (spec.bus_or_default(), spec.slot_or_default());
    let used: Vec<u64> = pci_devices(&pci)
        .iter()
        .filter(|d| d.0 == u64::from(bus))
        .map(|d| d.1)
        .collect();
    let slot = if !used.contains(&u64::from(wanted)) {
        wanted
    } else if spec.pick_free_slot {
        (3u8..=0x1f)
            .rev()
            .find(|s| !used.contains(&u64::from(*s)))
            .ok_or(Error::NoFreeSlot(bus))?
    } else {
        return Err(Error::SlotConflict {
            bus,
            slot: wanted,
            holder: "a device already present in the running VM".into(),
        });
    };
    let mut dev = json!({ "id": DEV_ID, "addr": format!("0x{slot:02x}") });
    if bus != 0 {
        dev["bus"] = json!(format!("pci.{bus}"));
    }
    let (backend_cmd, backend_id) = match &spec.model {
        Model::Plain => {
            let path = spec.region_path(uuid);
            m.execute(
                "object-add",
                Some(json!({
                    "qom-type": "memory-backend-file",
                    "id": MEM_ID,
                    "mem-path": path.to_string_lossy(),
                    "size": spec.size,
                    "share": true,
                })),
            )?;
            dev["driver"] = json!("ivshmem-plain");
            dev["memdev"] = json!(MEM_ID);
            ("object-del", MEM_ID)
        }
        Model::Doorbell { server, vectors } => {
            m.execute(
                "chardev-add",
                Some(json!({
                    "id": CHR_ID,
                    "backend": { "type": "socket", "data": {
                        "addr": { "type": "unix", "data": { "path": server.to_string_lossy() } },
                        "server": false,
                    }},
                })),
            )?;
            dev["driver"] = json!("ivshmem-doorbell");
            dev["chardev"] = json!(CHR_ID);
            dev["vectors"] = json!(vectors);
            ("chardev-remove", CHR_ID)
        }
    };
    if let Err(e) = m.execute("device_add", Some(dev)) {
        // Roll back the backend so a retry starts clean.
        let _ = m.execute(backend_cmd, Some(json!({ "id": backend_id })));
        return Err(e);
    }
    let pci = m.execute("query-pci", None)?;
    let device = find_ivshmem(&pci)
        .into_iter()
        .find(|d| d.qdev_id == DEV_ID)
        .ok_or_else(|| {
            Error::Qmp("device_add succeeded but query-pci does not show the ivshmem device".into())
        })?;
    Ok(HotAdd {
        device,
        already_present: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Vec<(String, Option<Value>)>, Value);
    impl Monitor for Fake {
        fn execute(&mut self, c: &str, a: Option<Value>) -> Result<Value> {
            self.0.push((c.to_string(), a));
            match c {
                "query-pci" => Ok(self.1.clone()),
                "device_add" => {
                    self.1 = json!([{"bus":0,"devices":[{"bus":0,"slot":31,"qdev_id":DEV_ID,"id":{"vendor":0x1af4,"device":0x1110}}]}]);
                    Ok(json!({}))
                }
                _ => Ok(json!({})),
            }
        }
    }

    #[test]
    fn hot_add_sequence() {
        let u = crate::spec::parse_uuid("6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b").unwrap();
        let mut f = Fake(Vec::new(), json!([{"bus":0,"devices":[]}]));
        let r = hot_add(&mut f, &Spec::default(), &u).unwrap();
        assert_eq!(r.device.slot, 31);
        let cmds: Vec<_> = f.0.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(cmds, ["query-pci", "object-add", "device_add", "query-pci"]);
        assert_eq!(f.0[1].1.as_ref().unwrap()["share"], true);
        // Second time: already present, nothing added.
        let r = hot_add(&mut f, &Spec::default(), &u).unwrap();
        assert!(r.already_present);
    }
}
