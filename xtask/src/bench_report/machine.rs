//! The machine the benchmarks run on: its load (waited on before measuring
//! and recorded around it) and what it is (CPU, caches, kernel, rustc).

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

/// The 1-minute load average below which the machine counts as quiet.
const MAX_LOAD: f64 = 0.7;

pub(super) fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub(super) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Waits until the 1-minute load is below [`MAX_LOAD`], up to ten minutes.
pub(super) fn wait_for_quiet() -> String {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let l = load1();
        if l < MAX_LOAD {
            return format!("{l:.2} (below {MAX_LOAD})");
        }
        if Instant::now() >= deadline {
            eprintln!("xtask: load still {l:.2} after 10 minutes; measuring anyway");
            return format!("{l:.2} (still above {MAX_LOAD} after waiting 10 minutes)");
        }
        eprintln!("xtask: 1-minute load {l:.2} >= {MAX_LOAD}; waiting 30 s");
        std::thread::sleep(Duration::from_secs(30));
    }
}

/// (property, value) rows: CPU, cores, caches, hypervisor, kernel, rustc.
pub(super) fn describe() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let caches = ["index2", "index3"]
        .iter()
        .filter_map(|i| {
            let base = format!("/sys/devices/system/cpu/cpu0/cache/{i}");
            let level = fs::read_to_string(format!("{base}/level")).ok()?;
            let size = fs::read_to_string(format!("{base}/size")).ok()?;
            Some(format!("L{} {}", level.trim(), size.trim()))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hyper = if cpuinfo.contains(" hypervisor") {
        "yes (virtual machine)"
    } else {
        "no"
    };
    vec![
        ("CPU".into(), model),
        ("cores (online)".into(), cores.to_string()),
        ("caches (per core / shared)".into(), caches),
        ("hypervisor".into(), hyper.into()),
        ("kernel".into(), kernel),
        ("rustc".into(), rustc),
    ]
}
