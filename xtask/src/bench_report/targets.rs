//! The targets of issue 15, evaluated on one whole run: the report shows a
//! column per run, since a target counts only when every run meets it.

use super::results::Results;
use super::units::{ns, si, size_name};

/// The ivchan APIs every per-message target applies to.
const APIS: [&str; 2] = ["ivchan-copy", "ivchan-zero-copy"];

/// One target: what it asks, what one run measured, and whether that met
/// it (`None`: not measured in that run).
pub(super) struct Target {
    pub(super) what: String,
    pub(super) measured: String,
    pub(super) met: Option<bool>,
}

impl Target {
    fn new(what: String, measured: Option<(String, bool)>) -> Self {
        let (measured, met) = match measured {
            Some((m, ok)) => (m, Some(ok)),
            None => ("not measured".to_owned(), None),
        };
        Self {
            what,
            measured,
            met,
        }
    }
}

/// The lowest ratio `a / b` over the run's sizes, with its size.
fn worst(r: &Results, a: &str, b: &str) -> Option<(u64, f64)> {
    r.sizes
        .iter()
        .filter_map(|&s| Some((s, r.msgs("xproc", a, s)? / r.msgs("xproc", b, s)?)))
        .min_by(|x, y| x.1.total_cmp(&y.1))
}

fn at_least_everywhere(r: &Results, a: &str, b: &str, want: f64) -> Option<(String, bool)> {
    let (size, f) = worst(r, a, b)?;
    Some((format!("worst {f:.2}× (at {})", size_name(size)), f >= want))
}

/// Every target, in a fixed order (the same rows for every run).
pub(super) fn evaluate(r: &Results) -> Vec<Target> {
    let x = |n: &str, s: u64| r.msgs("xproc", n, s);
    let mut t = Vec::new();
    for api in APIS {
        t.push(Target::new(
            format!("{api} ≥ 2× the Unix socket at every size, 8 B – 1 MiB"),
            at_least_everywhere(r, api, "unix-socket", 2.0),
        ));
        t.push(Target::new(
            format!("{api} ≥ 1× iceoryx2 at every size"),
            at_least_everywhere(r, api, "iceoryx2", 1.0),
        ));
    }
    t.push(Target::new(
        "zero-copy ≥ 0.9× copy at every size".to_owned(),
        at_least_everywhere(r, "ivchan-zero-copy", "ivchan-copy", 0.9),
    ));
    for size in [65536u64, 1 << 20] {
        for api in APIS {
            let measured = x(api, size)
                .zip(r.msgs("limit", "memcpy", size))
                .map(|(m, l)| {
                    (
                        format!(
                            "{:.0}% ({}B/s of {}B/s)",
                            m / l * 100.0,
                            si(m * size as f64),
                            si(l * size as f64)
                        ),
                        m / l >= 0.5,
                    )
                });
            t.push(Target::new(
                format!("{} {api} ≥ 50% of one-core memcpy", size_name(size)),
                measured,
            ));
        }
    }
    t.push(Target::new(
        "64 B batched (ivchan-batched) ≥ 100 M msg/s".to_owned(),
        x("ivchan-batched", 64).map(|m| (format!("{}msg/s", si(m)), m >= 100e6)),
    ));
    for api in APIS {
        t.push(Target::new(
            format!("64 B one commit per message ({api}) ≥ 30 M msg/s"),
            x(api, 64).map(|m| (format!("{}msg/s", si(m)), m >= 30e6)),
        ));
    }
    let cl = r.cache_line();
    for api in APIS {
        let l = r.lat(api, "busy-poll", 64);
        let pair = cl.zip(l);
        t.push(Target::new(
            format!("round trip 64 B busy-poll ({api}): p50 ≤ 2× the cache-line round trip"),
            pair.map(|(cl, l)| {
                (
                    format!("{} = {:.2}× {}", ns(l.p50), l.p50 / cl.p50, ns(cl.p50)),
                    l.p50 <= 2.0 * cl.p50,
                )
            }),
        ));
        t.push(Target::new(
            format!("… p99.9 ≤ 10× the cache-line round trip ({api})"),
            pair.map(|(cl, l)| {
                (
                    format!("{} = {:.1}×", ns(l.p999), l.p999 / cl.p50),
                    l.p999 <= 10.0 * cl.p50,
                )
            }),
        ));
    }
    for api in APIS {
        t.push(Target::new(
            format!("64 KiB spread (max / min over rounds, {api}) ≤ 1.5×"),
            r.spread("xproc", api, 65536).map(|s| {
                let f = s.max / s.min.max(f64::MIN_POSITIVE);
                (format!("{f:.2}× over {} rounds", s.rounds), f <= 1.5)
            }),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn met(r: &Results, what: &str) -> Option<bool> {
        evaluate(r)
            .into_iter()
            .find(|t| t.what.starts_with(what))
            .unwrap_or_else(|| panic!("no target {what:?}"))
            .met
    }

    #[test]
    fn a_target_holds_only_at_every_size() {
        let r = Results::parse(
            "info\tsizes\t[8, 64]\n\
             tput\txproc\tivchan-copy\t8\t30.0\t0\t0\n\
             tput\txproc\tivchan-copy\t64\t19.0\t0\t0\n\
             tput\txproc\tunix-socket\t8\t10.0\t0\t0\n\
             tput\txproc\tunix-socket\t64\t10.0\t0\t0\n\
             tput\txproc\tivchan-zero-copy\t8\t27.0\t0\t0\n\
             tput\txproc\tivchan-zero-copy\t64\t18.0\t0\t0\n",
        );
        assert_eq!(met(&r, "ivchan-copy ≥ 2× the Unix socket"), Some(false));
        assert_eq!(met(&r, "zero-copy ≥ 0.9× copy"), Some(true));
        assert_eq!(met(&r, "ivchan-copy ≥ 1× iceoryx2"), None);
        let t = evaluate(&r);
        let row = t
            .iter()
            .find(|t| t.what.starts_with("ivchan-copy ≥ 2×"))
            .unwrap();
        assert_eq!(row.measured, "worst 1.90× (at 64 B)");
    }

    #[test]
    fn spread_and_latency_targets_use_the_run_s_own_figures() {
        let r = Results::parse(
            "info\tsizes\t[65536]\n\
             tput\txproc\tivchan-copy\t65536\t100.0\t0\t0\n\
             tput\txproc\tivchan-copy\t65536\t160.0\t0\t1\n\
             tput\txproc\tivchan-zero-copy\t65536\t100.0\t0\t0\n\
             tput\txproc\tivchan-zero-copy\t65536\t140.0\t0\t1\n\
             lat\tcache-line\tbusy-poll\t8\t10\t200\t200\t300\t400\t900\n\
             lat\tivchan-copy\tbusy-poll\t64\t10\t300\t390\t500\t2100\t9000\n",
        );
        assert_eq!(
            met(&r, "64 KiB spread (max / min over rounds, ivchan-copy)"),
            Some(false)
        );
        assert_eq!(
            met(
                &r,
                "64 KiB spread (max / min over rounds, ivchan-zero-copy)"
            ),
            Some(true)
        );
        assert_eq!(
            met(&r, "round trip 64 B busy-poll (ivchan-copy)"),
            Some(true)
        );
        assert_eq!(
            met(&r, "… p99.9 ≤ 10× the cache-line round trip (ivchan-copy)"),
            Some(false)
        );
        assert_eq!(
            met(&r, "round trip 64 B busy-poll (ivchan-zero-copy)"),
            None
        );
    }
}
