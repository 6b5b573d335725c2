//! Results: a table on the terminal, JSON for machines, and a self-contained HTML page with
//! one latency-percentile chart (SVG) per operation.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// One measured cell.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// `pkcs11`, `proxy` or `http`.
    pub mode: String,
    /// The operation or scenario.
    pub op: String,
    /// Threads, tasks or connections in flight.
    pub concurrency: usize,
    /// Operations per frame (the proxy), 1 elsewhere.
    pub batch: usize,
    /// Throughput and percentiles.
    #[serde(flatten)]
    pub summary: Summary,
    /// (quantile, µs) points of the latency distribution.
    pub curve: Vec<(f64, u64)>,
}

/// A pair of cells measured back to back, direct and through the proxy.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The operation.
    pub op: String,
    /// Threads (direct) and in-flight requests (proxy).
    pub concurrency: usize,
    /// Through the proxy ÷ direct, operations per second.
    pub throughput_ratio: f64,
    /// Median latency through the proxy minus direct, µs.
    pub added_p50_us: i64,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// What was measured, for the reader.
    pub title: String,
    /// The machine and versions.
    pub environment: Vec<String>,
    /// Every cell.
    pub cells: Vec<Cell>,
    /// Same-run ratios, for `compare`.
    pub comparisons: Vec<Comparison>,
}

impl Report {
    /// The table printed on the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        for line in &self.environment {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(
            out,
            "{:<7} {:<16} {:>5} {:>5} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "mode",
            "operation",
            "conc",
            "batch",
            "ops/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p999 µs",
            "errors"
        );
        for c in &self.cells {
            let s = &c.summary;
            let errors: u64 = s.errors.values().sum();
            let _ = writeln!(
                out,
                "{:<7} {:<16} {:>5} {:>5} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>7}",
                c.mode,
                c.op,
                c.concurrency,
                c.batch,
                s.ops_per_s,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p999_us,
                errors
            );
            for (kind, n) in &s.errors {
                let _ = writeln!(out, "        {n} × {kind}");
            }
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(out, "\nthrough the proxy ÷ direct, same run:");
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>10} {:>14}",
                "operation", "conc", "ratio", "added p50 µs"
            );
            for c in &self.comparisons {
                let _ = writeln!(
                    out,
                    "{:<16} {:>5} {:>9.2}× {:>14}",
                    c.op, c.concurrency, c.throughput_ratio, c.added_p50_us
                );
            }
        }
        out
    }

    /// A self-contained HTML page: the table and a latency chart per operation.
    pub fn html(&self) -> String {
        let mut ops: Vec<&str> = self.cells.iter().map(|c| c.op.as_str()).collect();
        ops.dedup();
        let mut charts = String::new();
        for op in ops {
            let cells: Vec<&Cell> = self.cells.iter().filter(|c| c.op == op).collect();
            charts.push_str(&format!("<h2>{}</h2>\n{}\n", escape(op), svg(&cells)));
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
             body{{font-family:sans-serif;margin:2em;max-width:1100px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
             </style></head><body><h1>{title}</h1><pre>{table}</pre>{charts}</body></html>\n",
            title = escape(&self.title),
            table = escape(&self.table()),
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const COLOURS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Latency against percentile, both on log scales: x in "nines" (0 = p0, 1 = p90, 2 = p99,
/// 3 = p99.9, 4 = p99.99), y in µs by decades.
pub fn svg(cells: &[&Cell]) -> String {
    let (w, h, left, bottom, top, right) = (900.0, 420.0, 70.0, 40.0, 20.0, 230.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max = cells.iter().flat_map(|c| c.curve.iter().map(|p| p.1)).max().unwrap_or(1).max(10);
    let min = cells.iter().flat_map(|c| c.curve.iter().map(|p| p.1)).min().unwrap_or(1).max(1);
    let (lo, hi) = ((min as f64).log10().floor(), (max as f64).log10().ceil().max(1.0));
    let x = |q: f64| left + pw * ((-(1.0 - q).max(1e-4).log10()) / 4.0);
    let y = |us: u64| top + ph * (1.0 - ((us.max(1) as f64).log10() - lo) / (hi - lo).max(1.0));
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"12\">"
    );
    let _ = write!(
        out,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for (n, label) in ["p0", "p90", "p99", "p99.9", "p99.99"].iter().enumerate() {
        let px = left + pw * n as f64 / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{px}\" x2=\"{px}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            top + ph,
            h - 20.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let us = 10f64.powf(decade) as u64;
        let py = y(us);
        let label = if us >= 1_000_000 {
            format!("{} s", us / 1_000_000)
        } else if us >= 1000 {
            format!("{} ms", us / 1000)
        } else {
            format!("{us} µs")
        };
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{py}\" y2=\"{py}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            left + pw,
            left - 6.0,
            py + 4.0
        );
        decade += 1.0;
    }
    for (i, c) in cells.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> =
            c.curve.iter().map(|(q, us)| format!("{:.1},{:.1}", x(*q), y(*us))).collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = top + 16.0 * (i as f64 + 1.0);
        let name = if c.batch > 1 {
            format!("{} ×{} batch {}", c.mode, c.concurrency, c.batch)
        } else {
            format!("{} ×{}", c.mode, c.concurrency)
        };
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{} ({:.0}/s)</text>",
            left + pw + 10.0,
            left + pw + 30.0,
            ly - 4.0,
            ly - 4.0,
            left + pw + 36.0,
            ly,
            escape(&name),
            c.summary.ops_per_s
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Latencies, Summary};
    use std::time::Duration;

    fn cell(mode: &str, us: u64) -> Cell {
        let mut l = Latencies::new();
        l.record_n(Duration::from_micros(us), 100);
        l.record(Duration::from_micros(us * 10));
        Cell {
            mode: mode.into(),
            op: "decrypt-32".into(),
            concurrency: 4,
            batch: 1,
            summary: Summary::of(101, Duration::from_secs(1), &l),
            curve: l.curve(),
        }
    }

    #[test]
    fn the_report_shows_every_cell_and_ratio() {
        let report = Report {
            title: "t <&>".into(),
            environment: vec!["machine".into()],
            cells: vec![cell("pkcs11", 10), cell("proxy", 40)],
            comparisons: vec![Comparison {
                op: "decrypt-32".into(),
                concurrency: 4,
                throughput_ratio: 0.93,
                added_p50_us: 30,
            }],
        };
        let table = report.table();
        assert!(
            table.contains("pkcs11") && table.contains("proxy") && table.contains("0.93×"),
            "{table}"
        );
        let html = report.html();
        assert!(
            html.contains("<svg") && html.contains("polyline") && html.contains("t &lt;&amp;&gt;")
        );
        assert_eq!(html.matches("<polyline").count(), 2);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cells"][1]["p50_us"], 40);
        assert_eq!(json["comparisons"][0]["throughput_ratio"], 0.93);
    }
}
