//! The SVG plots in `docs/bench/`: throughput against message size and
//! round-trip latency against percentile.

use std::fmt::Write as _;

use super::results::{Lat, Results, CACHE_LINE};
use super::units::{ns, si, size_name};

const PALETTE: &[&str] = &[
    "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf", "#bcbd22",
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// A line chart with a linear x axis (already transformed) and a log10 y
/// axis.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[(f64, String)],
    series: &[Series],
    y_fmt: fn(f64) -> String,
) -> String {
    let (w, h) = (860.0, 520.0);
    let (left, right, top, bottom) = (80.0, 230.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = x_ticks.iter().map(|t| t.0).collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|&y| y > 0.0)
        .collect();
    let ymin = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-9);
    let ymax = ys
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(ymin * 10.0);
    let (lo, hi) = (ymin.log10().floor(), ymax.log10().ceil());
    let px = |x: f64| left + (x - xmin) / (xmax - xmin).max(1e-9) * pw;
    let py = |y: f64| top + (hi - y.max(1e-12).log10()) / (hi - lo).max(1e-9) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and y ticks at every decade.
    #[allow(clippy::cast_possible_truncation)]
    let (lo_i, hi_i) = (lo as i32, hi as i32);
    for d in lo_i..=hi_i {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            esc(&y_fmt(10f64.powi(d)))
        );
    }
    for (x, label) in x_ticks {
        let xp = px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{top}" x2="{xp:.1}" y2="{:.1}" stroke="#eee"/><text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 15.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        #[allow(clippy::cast_precision_loss)]
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// File name of `scope`'s throughput plot in `docs/bench/`.
pub(super) fn throughput_file(scope: &str) -> String {
    format!("throughput-{scope}.svg")
}

/// File name of the latency plot for `size`-byte messages in `docs/bench/`.
pub(super) fn latency_file(size: u64) -> String {
    format!("latency-{size}.svg")
}

/// Payload bytes per second against log2(size) for one transport or limit.
fn rate_points(r: &Results, scope: &str, name: &str) -> Vec<(f64, f64)> {
    r.sizes
        .iter()
        .filter_map(|&s| Some(((s as f64).log2(), r.msgs(scope, name, s)? * s as f64)))
        .collect()
}

pub(super) fn throughput(r: &Results, scope: &str, title: &str) -> String {
    let mut series: Vec<Series> = r
        .names(scope)
        .into_iter()
        .map(|n| Series {
            points: rate_points(r, scope, &n),
            name: n,
            dashed: false,
        })
        .collect();
    series.push(Series {
        name: "memcpy, one core".into(),
        points: rate_points(r, "limit", "memcpy"),
        dashed: true,
    });
    let ticks: Vec<(f64, String)> = r
        .sizes
        .iter()
        .map(|&s| ((s as f64).log2(), size_name(s)))
        .collect();
    line_chart(
        title,
        "message size",
        "payload bytes per second",
        &ticks,
        &series,
        |v| format!("{}B/s", si(v)),
    )
}

/// Percentile to the "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3 …
fn nines(p: f64) -> f64 {
    let rest = (100.0 - p) / 100.0;
    if rest <= 1e-5 {
        5.0
    } else {
        -rest.log10()
    }
}

/// A latency distribution on the "nines" axis, below p100.
fn curve_points(l: &Lat) -> Vec<(f64, f64)> {
    l.curve
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|&(p, v)| (nines(p), v))
        .collect()
}

pub(super) fn latency(r: &Results, size: u64) -> String {
    let mut series: Vec<Series> = r
        .lat
        .iter()
        .filter(|l| l.size == size && l.name != CACHE_LINE)
        .map(|l| Series {
            name: format!("{} ({})", l.name, l.wait),
            points: curve_points(l),
            dashed: false,
        })
        .collect();
    if let Some(cl) = r.cache_line() {
        series.push(Series {
            name: "cache-line round trip".into(),
            points: curve_points(cl),
            dashed: true,
        });
    }
    let ticks: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|&p| (nines(p), format!("p{p}")))
        .collect();
    line_chart(
        &format!("Round-trip latency distribution, {}", size_name(size)),
        "percentile",
        "round trip",
        &ticks,
        &series,
        ns,
    )
}
