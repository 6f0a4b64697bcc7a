//! The runner's output, parsed: one tab-separated record a line (see
//! `benches/src/bin/bench-report-runner.rs` for the format).

use std::collections::BTreeMap;

/// Parsed runner output.
#[derive(Default)]
pub(super) struct Results {
    pub(super) info: BTreeMap<String, String>,
    /// (scope, name, size) -> messages/s.
    pub(super) tput: BTreeMap<(String, String, u64), f64>,
    /// (name, wait, size) -> stats.
    pub(super) lat: Vec<Lat>,
}

pub(super) struct Lat {
    pub(super) name: String,
    pub(super) wait: String,
    pub(super) size: u64,
    pub(super) count: u64,
    pub(super) mean: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) max: f64,
    pub(super) curve: Vec<(f64, f64)>,
}

impl Results {
    pub(super) fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            let int = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            match f.first().copied() {
                Some("info") if f.len() >= 3 => {
                    r.info.insert(f[1].to_owned(), f[2].to_owned());
                }
                Some("tput") if f.len() >= 6 => {
                    r.tput
                        .insert((f[1].to_owned(), f[2].to_owned(), int(3)), num(4));
                }
                Some("lat") if f.len() >= 10 => r.lat.push(Lat {
                    name: f[1].to_owned(),
                    wait: f[2].to_owned(),
                    size: int(3),
                    count: int(4),
                    mean: num(5),
                    p50: num(6),
                    p99: num(7),
                    p999: num(8),
                    max: num(9),
                    curve: Vec::new(),
                }),
                Some("curve") if f.len() >= 6 => {
                    let (name, wait, size) = (f[1], f[2], int(3));
                    if let Some(l) = r
                        .lat
                        .iter_mut()
                        .find(|l| l.name == name && l.wait == wait && l.size == size)
                    {
                        l.curve.push((num(4), num(5)));
                    }
                }
                _ => {}
            }
        }
        r
    }

    pub(super) fn msgs(&self, scope: &str, name: &str, size: u64) -> Option<f64> {
        self.tput
            .get(&(scope.to_owned(), name.to_owned(), size))
            .copied()
    }

    pub(super) fn names(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (s, n, _) in self.tput.keys() {
            if s == scope && !out.contains(n) {
                out.push(n.clone());
            }
        }
        // ivchan first, then the peers in a stable order.
        out.sort_by_key(|n| (!n.starts_with("ivchan"), n.clone()));
        out
    }

    pub(super) fn lat(&self, name: &str, wait: &str, size: u64) -> Option<&Lat> {
        self.lat
            .iter()
            .find(|l| l.name == name && l.wait == wait && l.size == size)
    }
}
