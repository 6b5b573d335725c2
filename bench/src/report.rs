//! Results: a table on the terminal, JSON for machines, and a self-contained HTML page with
//! one latency-percentile chart (SVG) per operation.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Summary, median};

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
    /// Which round of a repeated `compare` measured it, from 1; 1 elsewhere.
    pub round: usize,
    /// Throughput and percentiles.
    #[serde(flatten)]
    pub summary: Summary,
    /// (quantile, µs) points of the latency distribution.
    pub curve: Vec<(f64, u64)>,
}

/// Direct and through-the-proxy cells of one operation and concurrency, measured back to back
/// in each round of a `compare` run.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The operation.
    pub op: String,
    /// Threads (direct) and in-flight requests (proxy).
    pub concurrency: usize,
    /// Direct operations per second, the median over the rounds.
    pub direct_ops_per_s: f64,
    /// Through the proxy, the median over the rounds.
    pub proxy_ops_per_s: f64,
    /// The proxy's median ÷ the direct median.
    pub throughput_ratio: f64,
    /// Through the proxy ÷ direct in each round, in the order run.
    pub round_ratios: Vec<f64>,
    /// Median latency through the proxy minus direct, µs (the median over the rounds).
    pub added_p50_us: i64,
}

impl Comparison {
    /// The comparison of `(direct, proxy)` pairs, one per round.
    pub fn of(op: &str, concurrency: usize, pairs: &[(&Summary, &Summary)]) -> Comparison {
        let ratio = |p: f64, d: f64| if d > 0.0 { p / d } else { 0.0 };
        let mut direct: Vec<f64> = pairs.iter().map(|(d, _)| d.ops_per_s).collect();
        let mut proxy: Vec<f64> = pairs.iter().map(|(_, p)| p.ops_per_s).collect();
        let mut added: Vec<f64> =
            pairs.iter().map(|(d, p)| p.p50_us as f64 - d.p50_us as f64).collect();
        let direct_ops_per_s = median(&mut direct).unwrap_or(0.0);
        let proxy_ops_per_s = median(&mut proxy).unwrap_or(0.0);
        Comparison {
            op: op.to_owned(),
            concurrency,
            direct_ops_per_s,
            proxy_ops_per_s,
            throughput_ratio: ratio(proxy_ops_per_s, direct_ops_per_s),
            round_ratios: pairs.iter().map(|(d, p)| ratio(p.ops_per_s, d.ops_per_s)).collect(),
            added_p50_us: median(&mut added).unwrap_or(0.0).round() as i64,
        }
    }
}

/// For one operation, the best the token did directly against the best it did through the
/// proxy, at whatever concurrency each did it: what the proxy costs an HSM at full load.
#[derive(Clone, Debug, Serialize)]
pub struct Best {
    /// The operation.
    pub op: String,
    /// The highest direct median, operations per second.
    pub direct_ops_per_s: f64,
    /// The threads it took.
    pub direct_concurrency: usize,
    /// The highest median through the proxy.
    pub proxy_ops_per_s: f64,
    /// The requests in flight it took.
    pub proxy_concurrency: usize,
    /// `proxy_ops_per_s` ÷ `direct_ops_per_s`.
    pub ratio: f64,
}

impl Best {
    /// One line per operation, in the order the comparisons were made.
    pub fn of(comparisons: &[Comparison]) -> Vec<Best> {
        let mut best: Vec<Best> = Vec::new();
        for c in comparisons {
            let i = match best.iter().position(|b| b.op == c.op) {
                Some(i) => i,
                None => {
                    best.push(Best {
                        op: c.op.clone(),
                        direct_ops_per_s: c.direct_ops_per_s,
                        direct_concurrency: c.concurrency,
                        proxy_ops_per_s: c.proxy_ops_per_s,
                        proxy_concurrency: c.concurrency,
                        ratio: 0.0,
                    });
                    best.len() - 1
                }
            };
            let b = &mut best[i];
            if c.direct_ops_per_s > b.direct_ops_per_s {
                (b.direct_ops_per_s, b.direct_concurrency) = (c.direct_ops_per_s, c.concurrency);
            }
            if c.proxy_ops_per_s > b.proxy_ops_per_s {
                (b.proxy_ops_per_s, b.proxy_concurrency) = (c.proxy_ops_per_s, c.concurrency);
            }
            b.ratio =
                if b.direct_ops_per_s > 0.0 { b.proxy_ops_per_s / b.direct_ops_per_s } else { 0.0 };
        }
        best
    }
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
    /// For `compare`: per operation, the best direct against the best through the proxy.
    pub best: Vec<Best>,
}

impl Report {
    /// The table printed on the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        for line in &self.environment {
            let _ = writeln!(out, "  {line}");
        }
        // A round column only when cells were measured more than once.
        let rounds = self.cells.iter().any(|c| c.round > 1);
        let _ = writeln!(
            out,
            "{}{:<7} {:<16} {:>5} {:>5} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7}",
            if rounds { "round " } else { "" },
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
            let round = if rounds { format!("{:>5} ", c.round) } else { String::new() };
            let _ = writeln!(
                out,
                "{round}{:<7} {:<16} {:>5} {:>5} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>7}",
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
            let heading = if rounds {
                "\nthrough the proxy ÷ direct, same run (medians over the rounds):"
            } else {
                "\nthrough the proxy ÷ direct, same run:"
            };
            let _ = writeln!(out, "{heading}");
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>11} {:>11} {:>8} {:>13}{}",
                "operation",
                "conc",
                "direct/s",
                "proxy/s",
                "ratio",
                "added p50 µs",
                if rounds { "  each round" } else { "" }
            );
            for c in &self.comparisons {
                let each = if rounds {
                    let each: Vec<String> =
                        c.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
                    format!("  {}", each.join(" "))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{:<16} {:>5} {:>11.0} {:>11.0} {:>7.2}× {:>13}{each}",
                    c.op,
                    c.concurrency,
                    c.direct_ops_per_s,
                    c.proxy_ops_per_s,
                    c.throughput_ratio,
                    c.added_p50_us
                );
            }
        }
        if !self.best.is_empty() {
            let _ = writeln!(out, "\nbest through the proxy ÷ best direct:");
            for b in &self.best {
                let _ = writeln!(
                    out,
                    "{:<16} {:.0}/s (×{}) ÷ {:.0}/s (×{}) = {:.2}×",
                    b.op,
                    b.proxy_ops_per_s,
                    b.proxy_concurrency,
                    b.direct_ops_per_s,
                    b.direct_concurrency,
                    b.ratio
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
            charts.push_str(&format!("<h2>{}</h2>\n{}\n", escape(op), svg(&self.charted(op))));
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

impl Report {
    /// The cells of `op` to chart: one curve per mode, concurrency and batch; of a cell
    /// measured in several rounds, the round with the median throughput.
    fn charted(&self, op: &str) -> Vec<&Cell> {
        let mut groups: Vec<Vec<&Cell>> = Vec::new();
        for c in self.cells.iter().filter(|c| c.op == op) {
            let same = |g: &&mut Vec<&Cell>| {
                g.first().is_some_and(|f| {
                    (f.mode.as_str(), f.concurrency, f.batch)
                        == (c.mode.as_str(), c.concurrency, c.batch)
                })
            };
            match groups.iter_mut().find(same) {
                Some(g) => g.push(c),
                None => groups.push(vec![c]),
            }
        }
        groups
            .into_iter()
            .filter_map(|mut g| {
                g.sort_by(|a, b| a.summary.ops_per_s.total_cmp(&b.summary.ops_per_s));
                g.get((g.len().saturating_sub(1)) / 2).copied()
            })
            .collect()
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
            round: 1,
            summary: Summary::of(101, Duration::from_secs(1), &l),
            curve: l.curve(),
        }
    }

    #[test]
    fn the_report_shows_every_cell_and_ratio() {
        let (direct, proxy) = (cell("pkcs11", 10), cell("proxy", 40));
        let comparison = Comparison::of("decrypt-32", 4, &[(&direct.summary, &proxy.summary)]);
        let report = Report {
            title: "t <&>".into(),
            environment: vec!["machine".into()],
            best: Best::of(std::slice::from_ref(&comparison)),
            cells: vec![direct, proxy],
            comparisons: vec![comparison],
        };
        let table = report.table();
        assert!(
            table.contains("pkcs11") && table.contains("proxy") && table.contains("1.00×"),
            "{table}"
        );
        assert!(!table.contains("round"), "one round: no round column\n{table}");
        let html = report.html();
        assert!(
            html.contains("<svg") && html.contains("polyline") && html.contains("t &lt;&amp;&gt;")
        );
        assert_eq!(html.matches("<polyline").count(), 2);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cells"][1]["p50_us"], 40);
        assert_eq!(json["comparisons"][0]["throughput_ratio"], 1.0);
        assert_eq!(json["comparisons"][0]["added_p50_us"], 30);
        assert_eq!(json["best"][0]["ratio"], 1.0);
    }

    fn summary(ops_per_s: u64, p50_us: u64) -> Summary {
        let mut l = Latencies::new();
        l.record_n(Duration::from_micros(p50_us), 10);
        Summary::of(ops_per_s, Duration::from_secs(1), &l)
    }

    #[test]
    fn rounds_are_summarised_by_their_medians() {
        // Three rounds; the second is disturbed on the direct side.
        let rounds = [
            (summary(100_000, 6), summary(90_000, 900)),
            (summary(50_000, 12), summary(95_000, 950)),
            (summary(110_000, 6), summary(88_000, 1000)),
        ];
        let pairs: Vec<(&Summary, &Summary)> = rounds.iter().map(|(d, p)| (d, p)).collect();
        let c = Comparison::of("decrypt-32", 4, &pairs);
        assert_eq!(c.direct_ops_per_s, 100_000.0);
        assert_eq!(c.proxy_ops_per_s, 90_000.0);
        assert!((c.throughput_ratio - 0.9).abs() < 1e-9);
        let each: Vec<String> = c.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
        assert_eq!(each, ["0.90", "1.90", "0.80"]);
        // p50 differences 894, 938, 994: the median.
        assert_eq!(c.added_p50_us, 938);
    }

    #[test]
    fn the_best_of_each_side_is_taken_at_its_own_concurrency() {
        let at = |conc: usize, d: f64, p: f64, op: &str| Comparison {
            op: op.into(),
            concurrency: conc,
            direct_ops_per_s: d,
            proxy_ops_per_s: p,
            throughput_ratio: p / d,
            round_ratios: vec![p / d],
            added_p50_us: 0,
        };
        let comparisons = [
            at(1, 140_000.0, 75_000.0, "decrypt-32"),
            at(4, 130_000.0, 128_000.0, "decrypt-32"),
            at(16, 113_000.0, 106_000.0, "decrypt-32"),
            at(1, 900.0, 800.0, "sign-rsa-2048"),
        ];
        let best = Best::of(&comparisons);
        assert_eq!(best.len(), 2);
        let b = &best[0];
        assert_eq!((b.direct_ops_per_s, b.direct_concurrency), (140_000.0, 1));
        assert_eq!((b.proxy_ops_per_s, b.proxy_concurrency), (128_000.0, 4));
        assert!((b.ratio - 128.0 / 140.0).abs() < 1e-9);
        assert_eq!((best[1].op.as_str(), best[1].ratio), ("sign-rsa-2048", 800.0 / 900.0));
    }

    #[test]
    fn repeated_cells_show_their_round_and_chart_once() {
        let mut cells = Vec::new();
        for (round, us) in [(1, 10), (2, 30), (3, 20)] {
            let mut c = cell("pkcs11", us);
            c.round = round;
            c.summary.ops_per_s = us as f64 * 1000.0;
            cells.push(c);
        }
        let report = Report { cells, ..Report::default() };
        let table = report.table();
        assert!(table.starts_with("\nround mode") || table.contains("\nround mode"), "{table}");
        // One curve for the three rounds: the median one (20 µs, 20,000/s).
        let charted = report.charted("decrypt-32");
        assert_eq!(charted.len(), 1);
        assert_eq!(charted[0].round, 3);
        assert_eq!(report.html().matches("<polyline").count(), 1);
    }
}
