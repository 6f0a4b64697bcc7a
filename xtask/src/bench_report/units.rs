//! Numbers as the report and the plots write them.

/// `64 B`, `4 KiB`, `1 MiB`: the binary units ivchan's tools print sizes in.
pub(super) use ivchan_protocol::report::human_size as size_name;

pub(super) fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0} "),
    }
}

pub(super) fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            if a / b >= 10.0 {
                format!("{:.0}×", a / b)
            } else {
                format!("{:.2}×", a / b)
            }
        }
        _ => "–".into(),
    }
}

/// `150 ms`, `1.5 s`: a duration given in milliseconds.
pub(super) fn millis(ms: u64) -> String {
    if ms >= 1000 {
        format!("{} s", ms as f64 / 1e3)
    } else {
        format!("{ms} ms")
    }
}
