//! The targets of issue 6, each with what was measured and a verdict.

use std::fmt::Write as _;

use super::results::Results;
use super::units::{ns, si, size_name};

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

pub(super) fn targets(r: &Results, out: &mut String) {
    let x = |n: &str, s: u64| r.msgs("xproc", n, s);
    let mem = |s: u64| r.msgs("limit", "memcpy", s);
    let _ = writeln!(out, "| target | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    for api in ["ivchan-copy", "ivchan-zero-copy"] {
        if let (Some(m), Some(u)) = (x(api, 64), x("unix-socket", 64)) {
            let _ = writeln!(
                out,
                "| cross-process 64 B, one commit per message ({api}): ≥ 50 M msg/s | {} msg/s ({:.0}% of target) | {} |",
                si(m),
                m / 50e6 * 100.0,
                verdict(m >= 50e6)
            );
            let _ = writeln!(
                out,
                "| … and ≥ 50× the Unix socket ({api}) | {:.1}× | {} |",
                m / u,
                verdict(m / u >= 50.0)
            );
        }
    }
    for size in [65536u64, 1 << 20] {
        for (api, want) in [("ivchan-copy", 0.30), ("ivchan-zero-copy", 0.50)] {
            if let (Some(m), Some(l)) = (x(api, size), mem(size)) {
                let f = m / l;
                let _ = writeln!(
                    out,
                    "| {} streaming, {api}: ≥ {:.0}% of one-core memcpy | {:.0}% ({}B/s vs {}B/s) | {} |",
                    size_name(size),
                    want * 100.0,
                    f * 100.0,
                    si(m * size as f64),
                    si(l * size as f64),
                    verdict(f >= want)
                );
            }
        }
    }
    for api in ["ivchan-copy", "ivchan-zero-copy"] {
        if let (Some(m), Some(u)) = (x(api, 65536), x("unix-socket", 65536)) {
            let _ = writeln!(
                out,
                "| 64 KiB, {api}: ≥ 5× the Unix socket | {:.1}× | {} |",
                m / u,
                verdict(m / u >= 5.0)
            );
        }
    }
    if let Some(cl) = r.cache_line() {
        for api in ["ivchan-copy", "ivchan-zero-copy"] {
            if let Some(l) = r.lat(api, "busy-poll", 64) {
                let _ = writeln!(
                    out,
                    "| round trip 64 B busy-poll, {api}: p50 ≤ 2× cache-line round trip (p50 {}) | p50 {} = {:.2}× | {} |",
                    ns(cl.p50),
                    ns(l.p50),
                    l.p50 / cl.p50,
                    verdict(l.p50 <= 2.0 * cl.p50)
                );
                let _ = writeln!(
                    out,
                    "| … and p99.9 ≤ 10× it | p99.9 {} = {:.1}× | {} |",
                    ns(l.p999),
                    l.p999 / cl.p50,
                    verdict(l.p999 <= 10.0 * cl.p50)
                );
            }
        }
    }
    if r.names("xproc").iter().any(|n| n == "iceoryx2") {
        for api in ["ivchan-copy", "ivchan-zero-copy"] {
            let worst = r
                .sizes
                .iter()
                .filter_map(|&s| Some((s, x(api, s)? / x("iceoryx2", s)?)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((s, f)) = worst {
                let _ = writeln!(
                    out,
                    "| cross-process, {api}: no worse than iceoryx2 at any size | worst {:.1}× (at {}) | {} |",
                    f,
                    size_name(s),
                    verdict(f >= 1.0)
                );
            }
        }
    } else {
        let _ = writeln!(
            out,
            "| cross-process: no worse than iceoryx2 | iceoryx2 not measured in this run | – |"
        );
    }
}
