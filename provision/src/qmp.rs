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
/// QEMU's `pcie-root-port` (vendor Red Hat 0x1b36, device 0x000c).
const ROOT_PORT: (u64, u64) = (0x1b36, 0x000c);
/// The q35 chipset's ICH9 LPC bridge at 00:1f.0 (vendor Intel): its
/// presence on bus 0 means the root bus is `pcie.0`, which takes no hotplug.
const ICH9_LPC: (u64, u64) = (0x8086, 0x2918);

/// The warning printed for the `virsh qemu-monitor-command` route.
pub const TAINT_MONITOR_WARNING: &str = "libvirt marks a domain changed through qemu-monitor-command as tainted (\"custom-monitor\"), and it does not know about the device: it is lost on restart and may confuse later libvirt hotplug; prefer `ivchan-provision hotplug`";

/// Something that executes QMP commands and returns their `return` value.
pub trait Monitor {
    /// Runs `command` with `arguments`; returns its `return` value or the
    /// monitor's error.
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
    /// The connection.
    pub virsh: &'a Virsh,
    /// The domain whose monitor is used.
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
    /// PCI bus number.
    pub bus: u64,
    /// PCI slot number.
    pub slot: u64,
    /// The device's QEMU id (`device_del` takes it).
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

/// The QEMU ids of the `pcie-root-port`s in a `query-pci` answer that may
/// take a device: first those known to be empty (last first, like the XML
/// routes), then those whose secondary bus the firmware has not numbered
/// yet (`query-pci` lists no devices behind them, taken or not).
fn root_port_candidates(v: &Value) -> Vec<String> {
    fn walk(devs: &[Value], free: &mut Vec<String>, unknown: &mut Vec<String>) {
        for d in devs {
            let id = |k: &str| {
                d.get("id")
                    .and_then(|i| i.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let Some(bridge) = d.get("pci_bridge") else {
                continue;
            };
            let qdev = d.get("qdev_id").and_then(Value::as_str).unwrap_or("");
            let is_port = (id("vendor"), id("device")) == ROOT_PORT && !qdev.is_empty();
            match bridge.get("devices").and_then(Value::as_array) {
                Some(behind) => {
                    if is_port && behind.is_empty() {
                        free.push(qdev.to_string());
                    }
                    walk(behind, free, unknown);
                }
                None if is_port => unknown.push(qdev.to_string()),
                None => {}
            }
        }
    }
    let (mut free, mut unknown) = (Vec::new(), Vec::new());
    for bus in v.as_array().into_iter().flatten() {
        if let Some(devs) = bus.get("devices").and_then(Value::as_array) {
            walk(devs, &mut free, &mut unknown);
        }
    }
    free.reverse();
    unknown.reverse();
    free.extend(unknown);
    free
}

/// ivshmem devices in a `query-pci` answer.
pub fn find_ivshmem(query_pci: &Value) -> Vec<PciDevice> {
    pci_devices(query_pci)
        .into_iter()
        .filter(|d| d.2 == IVSHMEM_VENDOR && d.3 == IVSHMEM_DEVICE)
        .map(|(bus, slot, _, _, qdev_id)| PciDevice { bus, slot, qdev_id })
        .collect()
}

const NO_FREE_PORT: &str = "this q35 VM has no free pcie-root-port, and its root bus pcie.0 takes no hotplug; start it with a spare one (-device pcie-root-port,id=…,chassis=…) or use the XML routes";

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
    let q35 = pci_devices(&pci)
        .iter()
        .any(|d| d.0 == 0 && (d.2, d.3) == ICH9_LPC);
    // On q35, pcie.0 takes no hotplug: slot 0 of a free root port, trying
    // each candidate in turn.
    let ports = if q35 && spec.bus.is_none() && spec.slot.is_none() {
        let ports = root_port_candidates(&pci);
        if ports.is_empty() {
            return Err(Error::Qmp(NO_FREE_PORT.into()));
        }
        ports
    } else {
        Vec::new()
    };
    let mut dev = if let Some(first) = ports.first() {
        json!({ "id": DEV_ID, "bus": first, "addr": "0x0" })
    } else {
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
        dev
    };
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
    let mut added = m.execute("device_add", Some(dev.clone()));
    for port in ports.iter().skip(1) {
        if added.is_ok() {
            break;
        }
        dev["bus"] = json!(port);
        added = m.execute("device_add", Some(dev.clone()));
    }
    if let Err(e) = added {
        // Roll back the backend so a retry starts clean.
        let _ = m.execute(backend_cmd, Some(json!({ "id": backend_id })));
        return Err(if ports.len() > 1 {
            Error::Qmp(format!(
                "{NO_FREE_PORT} (every pcie-root-port refused it; the last: {e})"
            ))
        } else {
            e
        });
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

    #[test]
    fn q35_hot_adds_behind_a_free_root_port() {
        let u = crate::spec::parse_uuid("6b9e1e0a-5c1f-4b7e-9a51-1d2c3e4f5a6b").unwrap();
        let lpc = json!({"bus":0,"slot":31,"function":0,"id":{"vendor":0x8086,"device":0x2918}});
        let port = |qdev: &str, slot: u64, behind: Value| {
            json!({"bus":0,"slot":slot,"qdev_id":qdev,"id":{"vendor":0x1b36,"device":0x000c},
                   "pci_bridge":{"bus":{"number":slot},"devices":behind}})
        };
        let taken = json!([{"bus":1,"slot":0,"id":{"vendor":0x1af4,"device":0x1041}}]);
        let pci = json!([{"bus":0,"devices":[lpc, port("pci.1", 1, taken), port("pci.2", 2, json!([]))]}]);
        let mut f = Fake(Vec::new(), pci);
        hot_add(&mut f, &Spec::default(), &u).unwrap();
        let dev = f.0[2].1.as_ref().unwrap();
        assert_eq!(
            (dev["bus"].as_str(), dev["addr"].as_str()),
            (Some("pci.2"), Some("0x0"))
        );
        // Ports whose bus the firmware has not numbered come after the
        // known-free ones.
        let unknown = json!({"bus":0,"slot":5,"qdev_id":"rp5","id":{"vendor":0x1b36,"device":0x000c},
                             "pci_bridge":{"bus":{"number":0}}});
        let pci = json!([{"bus":0,"devices":[unknown, port("pci.2", 2, json!([])), port("pci.3", 3, json!([]))]}]);
        assert_eq!(root_port_candidates(&pci), ["pci.3", "pci.2", "rp5"]);
        // No free port: refused before anything is added.
        let pci = json!([{"bus":0,"devices":[lpc]}]);
        let mut f = Fake(Vec::new(), pci);
        let e = hot_add(&mut f, &Spec::default(), &u).unwrap_err();
        assert!(e.to_string().contains("no free pcie-root-port"), "{e}");
        assert_eq!(f.0.len(), 1);
    }
}
