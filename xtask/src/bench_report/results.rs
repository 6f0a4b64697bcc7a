//! The runner's output, parsed: one tab-separated record a line (see
//! `benches/src/bin/bench-report-runner.rs` for the format). A report of
//! several whole runs (`--repeat`) concatenates their outputs, each after a
//! `run N` line that xtask writes; parsed whole, every point's samples span
//! all runs, and [`split_runs`] gives each run on its own.

use std::collections::BTreeMap;

/// The runner's name for the cache-line round trip in its `lat` records.
pub(super) const CACHE_LINE: &str = "cache-line";

/// Parsed runner output.
#[derive(Default)]
pub(super) struct Results {
    /// `info` records: what the runner measured with (sizes, timings,
    /// region and ring sizes, features) and what failed to start.
    pub(super) info: BTreeMap<String, String>,
    /// Message sizes measured for throughput (`info sizes`), in bytes.
    pub(super) sizes: Vec<u64>,
    /// Message sizes measured for round-trip latency (`info latency_sizes`).
    pub(super) latency_sizes: Vec<u64>,
    /// (scope, name, size) -> messages/s: the median over the rounds.
    pub(super) tput: BTreeMap<(String, String, u64), f64>,
    /// (scope, name, size) -> messages/s of each round, in round order.
    pub(super) samples: BTreeMap<(String, String, u64), Vec<f64>>,
    /// Each round's cache-line round trip and load.
    pub(super) rounds: Vec<Round>,
    /// (name, wait, size) -> stats.
    pub(super) lat: Vec<Lat>,
}

/// One round of the interleaved throughput measurements.
pub(super) struct Round {
    /// The whole run it belongs to (`run` lines; 1 when there are none).
    pub(super) run: u64,
    pub(super) round: u64,
    /// Median cache-line round trip measured at the round's start, ns.
    pub(super) cache_line_p50: f64,
    /// 1-minute load average at the round's start.
    pub(super) load: String,
}

/// Median, minimum and maximum of a point's rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) rounds: usize,
}

pub(super) struct Lat {
    /// The whole run it belongs to (`run` lines; 1 when there are none).
    pub(super) run: u64,
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
        let mut run = 1;
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            let int = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            match f.first().copied() {
                Some("run") if f.len() >= 2 => run = int(1),
                Some("info") if f.len() >= 3 => {
                    r.info.insert(f[1].to_owned(), f[2].to_owned());
                }
                Some("tput") if f.len() >= 6 => {
                    r.samples
                        .entry((f[1].to_owned(), f[2].to_owned(), int(3)))
                        .or_default()
                        .push(num(4));
                }
                Some("round") if f.len() >= 4 => r.rounds.push(Round {
                    run,
                    round: int(1),
                    cache_line_p50: num(2),
                    load: f[3].to_owned(),
                }),
                Some("lat") if f.len() >= 10 => r.lat.push(Lat {
                    run,
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
                    if let Some(l) = r.lat.iter_mut().rev().find(|l| {
                        l.run == run && l.name == name && l.wait == wait && l.size == size
                    }) {
                        l.curve.push((num(4), num(5)));
                    }
                }
                _ => {}
            }
        }
        for (key, values) in &r.samples {
            if let Some(spread) = spread_of(values) {
                r.tput.insert(key.clone(), spread.median);
            }
        }
        r.sizes = r.info_sizes("sizes");
        r.latency_sizes = r.info_sizes("latency_sizes");
        r
    }

    /// An `info` list of sizes as the runner prints it: `[8, 64, 1024]`.
    fn info_sizes(&self, key: &str) -> Vec<u64> {
        self.info.get(key).map_or_else(Vec::new, |v| {
            v.trim_matches(['[', ']'])
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
    }

    /// An `info` number (a size in bytes, a count, milliseconds).
    pub(super) fn info_u64(&self, key: &str) -> Option<u64> {
        self.info.get(key)?.parse().ok()
    }

    pub(super) fn msgs(&self, scope: &str, name: &str, size: u64) -> Option<f64> {
        self.tput
            .get(&(scope.to_owned(), name.to_owned(), size))
            .copied()
    }

    /// A point's median, minimum and maximum over the rounds.
    pub(super) fn spread(&self, scope: &str, name: &str, size: u64) -> Option<Spread> {
        spread_of(
            self.samples
                .get(&(scope.to_owned(), name.to_owned(), size))?,
        )
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

    /// The cache-line round trip: the latency limit every transport is
    /// compared with (of the first run, when there are several: compare
    /// within a run with [`Results::cache_line_of`]).
    pub(super) fn cache_line(&self) -> Option<&Lat> {
        self.lat.iter().find(|l| l.name == CACHE_LINE)
    }

    /// The cache-line round trip measured in whole run `run`.
    pub(super) fn cache_line_of(&self, run: u64) -> Option<&Lat> {
        self.lat
            .iter()
            .find(|l| l.run == run && l.name == CACHE_LINE)
    }
}

/// The runner output of each whole run, in order: the text after each
/// `run N` line (all of `text` when it has none).
pub(super) fn split_runs(text: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("run\t") {
            starts.push(at);
        }
        at += line.len();
    }
    if starts.is_empty() {
        return vec![text];
    }
    starts.push(text.len());
    starts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

fn spread_of(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        rounds: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runner_records() {
        let r = Results::parse(
            "info\tsizes\t[8, 64, 1048576]\n\
             info\tlatency_sizes\t[64]\n\
             info\treps\t5\n\
             tput\txproc\tunix-socket\t64\t10.0\t640.0\n\
             tput\txproc\tivchan-copy\t64\t1000.0\t64000.0\n\
             lat\tcache-line\tbusy-poll\t8\t100\t383.3\t411\t591\t681\t2013183\n\
             curve\tcache-line\tbusy-poll\t8\t50\t411\n\
             curve\tnobody\tbusy-poll\t8\t50\t1\n\
             not a record\n",
        );
        assert_eq!(r.sizes, [8, 64, 1 << 20]);
        assert_eq!(r.latency_sizes, [64]);
        assert_eq!(r.info_u64("reps"), Some(5));
        assert_eq!(r.info_u64("per_run_ms"), None);
        assert_eq!(r.msgs("xproc", "ivchan-copy", 64), Some(1000.0));
        assert_eq!(r.msgs("xproc", "ivchan-copy", 8), None);
        assert_eq!(r.names("xproc"), ["ivchan-copy", "unix-socket"]);
        let cl = r.cache_line().expect("the cache-line record");
        assert_eq!((cl.count, cl.p50, cl.max), (100, 411.0, 2_013_183.0));
        assert_eq!(cl.curve, [(50.0, 411.0)]);
    }

    #[test]
    fn rounds_give_a_median_and_a_spread() {
        let r = Results::parse(
            "round\t0\t180\t0.52\n\
             tput\txproc\tivchan-copy\t64\t30.0\t1920.0\t0\n\
             round\t1\t390\t1.10\n\
             tput\txproc\tivchan-copy\t64\t10.0\t640.0\t1\n\
             tput\txproc\tivchan-copy\t64\t20.0\t1280.0\t2\n\
             tput\txproc\tivchan-copy\t64\t40.0\t2560.0\t3\n",
        );
        assert_eq!(r.msgs("xproc", "ivchan-copy", 64), Some(25.0));
        assert_eq!(
            r.spread("xproc", "ivchan-copy", 64),
            Some(Spread {
                median: 25.0,
                min: 10.0,
                max: 40.0,
                rounds: 4
            })
        );
        assert_eq!(r.rounds.len(), 2);
        assert_eq!(r.rounds[1].cache_line_p50, 390.0);
        assert_eq!(r.rounds[1].load, "1.10");
        assert!(r.rounds.iter().all(|round| round.run == 1));
    }

    #[test]
    fn repeated_runs_pool_their_samples_and_split_apart() {
        let text = "run\t1\n\
                    info\tsizes\t[64]\n\
                    round\t0\t200\t0.30\n\
                    tput\txproc\tivchan-copy\t64\t10.0\t640.0\t0\n\
                    lat\tcache-line\tbusy-poll\t8\t100\t200\t200\t300\t400\t900\n\
                    curve\tcache-line\tbusy-poll\t8\t50\t200\n\
                    run\t2\n\
                    info\tsizes\t[64]\n\
                    round\t0\t400\t0.90\n\
                    tput\txproc\tivchan-copy\t64\t30.0\t1920.0\t0\n\
                    lat\tcache-line\tbusy-poll\t8\t100\t400\t400\t500\t600\t900\n\
                    curve\tcache-line\tbusy-poll\t8\t50\t400\n";
        let all = Results::parse(text);
        let runs: Vec<u64> = all.rounds.iter().map(|round| round.run).collect();
        assert_eq!(runs, [1, 2]);
        assert_eq!(all.msgs("xproc", "ivchan-copy", 64), Some(20.0));
        assert_eq!(all.cache_line_of(2).map(|l| l.p50), Some(400.0));
        assert_eq!(
            all.cache_line_of(2).map(|l| l.curve.clone()),
            Some(vec![(50.0, 400.0)])
        );
        assert_eq!(
            all.cache_line_of(1).map(|l| l.curve.clone()),
            Some(vec![(50.0, 200.0)])
        );
        let runs = split_runs(text);
        assert_eq!(runs.len(), 2);
        let second = Results::parse(runs[1]);
        assert_eq!(second.msgs("xproc", "ivchan-copy", 64), Some(30.0));
        assert_eq!(second.rounds[0].run, 2);
        assert_eq!(split_runs("info\tsizes\t[8]\n"), ["info\tsizes\t[8]\n"]);
    }
}
