//! `hsm-bench`: HSM latency benchmarking and load generation.
//!
//! Measures any PKCS#11 module directly (`pkcs11`), the same operations through a running
//! hsm-proxy (`proxy`), both interleaved in one run with their ratio (`compare`), and load on
//! any Barbican v1 endpoint (`http`). Prints a table, and writes JSON and an HTML report with
//! latency-percentile charts on request.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use bench::cell::{self, AsyncOp, Window};
use bench::http::Session;
use bench::ops::{self, Op};
use bench::report::{Best, Cell, Comparison, Report};
use bench::{http, pkcs11, proxy};

#[derive(Parser)]
#[command(
    name = "hsm-bench",
    version,
    about = "HSM latency benchmarking and Barbican load generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a PKCS#11 module directly: the operation matrix × thread counts.
    Pkcs11 {
        #[command(flatten)]
        token: TokenArgs,
        /// Threads, each with its own session (comma-separated).
        #[arg(long, default_value = "1,4")]
        threads: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// The same operations through a running hsm-proxy over mutual TLS.
    Proxy {
        /// appliance dev's dev.json: the proxy's address and the certificates to reach it.
        #[arg(long)]
        dev_json: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Requests in flight (comma-separated).
        #[arg(long, default_value = "1,16")]
        concurrency: String,
        /// Operations per frame (comma-separated).
        #[arg(long, default_value = "1")]
        batch: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Direct and through the proxy, interleaved cell by cell, with the ratio of each pair.
    Compare {
        #[command(flatten)]
        token: TokenArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Threads (direct) and requests in flight (proxy), comma-separated.
        #[arg(long, default_value = "1,4")]
        concurrency: String,
        /// Operations per frame on the proxy side.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Times to measure every pair; ratios are then taken between medians, which a shared
        /// machine's bad moments do not move.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Load on a Barbican v1 endpoint (this appliance or Barbican itself).
    Http {
        /// The endpoint: `http://host:port`, or `https://host:port` with --ca.
        #[arg(long)]
        base: String,
        /// For an https:// endpoint: the PEM file of the CA that issued its certificate
        /// (`appliance dev --tls`: dev.json's `api_ca`).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// secret-store, payload-get, metadata-get or order (comma-separated).
        #[arg(long, default_value = "payload-get")]
        scenario: String,
        /// Requests in flight (comma-separated).
        #[arg(long, default_value = "1,16,64")]
        concurrency: String,
        /// Secrets made beforehand for the fetch scenarios.
        #[arg(long, default_value_t = 100)]
        pool: usize,
        /// No-auth X-Project-Id (with --projects, the prefix of `{project}-{i}`).
        #[arg(long, default_value = "hsm-bench")]
        project: String,
        /// Spread the fetch scenarios over this many projects, each with a KEK of its own
        /// (no-auth identity); the pool holds at least one secret per project.
        #[arg(long, default_value_t = 1)]
        projects: usize,
        /// How a fetch picks its project: `uniform`, or `zipf` (rank r drawn in proportion
        /// to 1/r^s, --zipf-s).
        #[arg(long, default_value = "uniform")]
        access: String,
        /// The exponent s of --access zipf.
        #[arg(long, default_value_t = 1.0)]
        zipf_s: f64,
        /// No-auth X-Roles.
        #[arg(long, default_value = "member,reader")]
        roles: String,
        /// A Keystone token instead of no-auth headers (a file holding it).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// appliance dev's dev.json: the module, its environment, token label, PIN file, proxy.
    #[arg(long)]
    dev_json: Option<PathBuf>,
    /// The PKCS#11 module.
    #[arg(long)]
    module: Option<PathBuf>,
    /// The token's label.
    #[arg(long)]
    token_label: Option<String>,
    /// The slot id (instead of a label).
    #[arg(long)]
    slot: Option<u64>,
    /// A file holding the user PIN.
    #[arg(long)]
    pin_file: Option<PathBuf>,
}

#[derive(Args)]
struct ProxyArgs {
    /// The proxy, host:port (or from --dev-json).
    #[arg(long)]
    endpoint: Option<String>,
    /// The name in the proxy's certificate.
    #[arg(long, default_value = "hsm-proxy")]
    server_name: String,
    /// The CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The client certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The client key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Connections to the proxy.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Microseconds a caller keeps its thread busy waiting for its answer before parking it;
    /// set the proxy's `[server] busy_poll_us` too to spare both sides an idle CPU's wake-up.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u32,
}

#[derive(Args)]
struct RunArgs {
    /// Operations (comma-separated, or `all`).
    #[arg(long, default_value = "decrypt-32,encrypt-32")]
    ops: String,
    /// Unmeasured time before each cell's window (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Each cell's measured window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with latency charts here.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.find(|c: char| c.is_ascii_alphabetic()).map_or((text, "s"), |i| text.split_at(i));
    let value: f64 =
        number.trim().parse().map_err(|_| format!("{text:?}: expected e.g. 5s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: units are ms, s, m")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pkcs11 { token, threads, run } => {
            let dev = dev_json(token.dev_json.as_deref())?;
            reexec_with_module_env(dev.as_ref())?;
            let target = token_target(&token, dev.as_ref())?;
            let direct = pkcs11::Direct::open(&target)?;
            let mut report = report_for("PKCS#11, direct", &direct.description, &run);
            for op in ops::parse_list(&run.ops).map_err(anyhow::Error::msg)? {
                for &t in &ops::parse_counts(&threads).map_err(anyhow::Error::msg)? {
                    report.cells.push(direct_cell(&direct, op, t, window(&run))?);
                }
            }
            finish(&report, &run)
        }
        Command::Proxy { dev_json: dev_path, proxy, concurrency, batch, run } => {
            let dev = dev_json(dev_path.as_deref())?;
            let target = proxy_target(&proxy, dev.as_ref())?;
            runtime()?.block_on(async {
                let via = proxy::ViaProxy::open(&target).await?;
                let mut report =
                    report_for("through hsm-proxy", &format!("proxy {}", target.endpoint), &run);
                for op in ops::parse_list(&run.ops).map_err(anyhow::Error::msg)? {
                    for &c in &ops::parse_counts(&concurrency).map_err(anyhow::Error::msg)? {
                        for &b in &ops::parse_counts(&batch).map_err(anyhow::Error::msg)? {
                            report.cells.push(proxy_cell(&via, op, c, b, window(&run)).await);
                        }
                    }
                }
                finish(&report, &run)
            })
        }
        Command::Compare { token, proxy, concurrency, batch, rounds, run } => {
            anyhow::ensure!(batch >= 1, "--batch must be at least 1");
            anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
            let dev = dev_json(token.dev_json.as_deref())?;
            reexec_with_module_env(dev.as_ref())?;
            let target = token_target(&token, dev.as_ref())?;
            let proxy_target = proxy_target(&proxy, dev.as_ref())?;
            let direct = pkcs11::Direct::open(&target)?;
            let ops = ops::parse_list(&run.ops).map_err(anyhow::Error::msg)?;
            let levels = ops::parse_counts(&concurrency).map_err(anyhow::Error::msg)?;
            runtime()?.block_on(async {
                let via = proxy::ViaProxy::open(&proxy_target).await?;
                let mut report = report_for(
                    "direct and through hsm-proxy, interleaved",
                    &format!("{}; proxy {}", direct.description, proxy_target.endpoint),
                    &run,
                );
                if rounds > 1 {
                    report.environment.push(format!("{rounds} rounds of every pair"));
                }
                // Each pair's (direct, proxy) cells, round after round.
                let mut pairs: Vec<Vec<(Cell, Cell)>> = vec![Vec::new(); ops.len() * levels.len()];
                for round in 1..=rounds {
                    if rounds > 1 {
                        eprintln!("round {round} of {rounds}");
                    }
                    for (i, &op) in ops.iter().enumerate() {
                        for (j, &c) in levels.iter().enumerate() {
                            let k = i * levels.len() + j;
                            // Alternate which goes first, from one pair to the next and from
                            // one round to the next, so that slow drift favours neither.
                            let proxy_first = (k + round) % 2 == 0;
                            let direct_now = || {
                                tokio::task::block_in_place(|| {
                                    direct_cell(&direct, op, c, window(&run))
                                })
                            };
                            let (mut d, mut p) = if proxy_first {
                                let p = proxy_cell(&via, op, c, batch, window(&run)).await;
                                (direct_now()?, p)
                            } else {
                                let d = direct_now()?;
                                (d, proxy_cell(&via, op, c, batch, window(&run)).await)
                            };
                            (d.round, p.round) = (round, round);
                            pairs[k].push((d, p));
                        }
                    }
                }
                for (k, measured) in pairs.into_iter().enumerate() {
                    let (op, c) = (ops[k / levels.len()], levels[k % levels.len()]);
                    let summaries: Vec<_> =
                        measured.iter().map(|(d, p)| (&d.summary, &p.summary)).collect();
                    report.comparisons.push(Comparison::of(&op.to_string(), c, &summaries));
                    for (d, p) in measured {
                        report.cells.push(d);
                        report.cells.push(p);
                    }
                }
                report.best = Best::of(&report.comparisons);
                finish(&report, &run)
            })
        }
        Command::Http {
            base,
            ca,
            scenario,
            concurrency,
            pool,
            project,
            projects,
            access,
            zipf_s,
            roles,
            token_file,
            run,
        } => {
            let access = match access.as_str() {
                "uniform" => http::Access::Uniform,
                "zipf" if zipf_s.is_finite() && zipf_s > 0.0 => http::Access::Zipf(zipf_s),
                "zipf" => anyhow::bail!("--zipf-s {zipf_s}: must be a positive number"),
                other => anyhow::bail!("--access {other:?}: expected uniform or zipf"),
            };
            let identity = match token_file {
                Some(path) => http::Identity::Token(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => http::Identity::NoAuth { project, roles, user: "hsm-bench".into() },
            };
            let scenarios: Vec<http::Scenario> = scenario
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            let levels = ops::parse_counts(&concurrency).map_err(anyhow::Error::msg)?;
            runtime()?.block_on(async {
                let mut barbican = http::Barbican::new(&base, identity, ca.as_deref())?;
                barbican.check().await?;
                barbican.spread(projects, access)?;
                if scenarios
                    .iter()
                    .any(|s| matches!(s, http::Scenario::PayloadGet | http::Scenario::MetadataGet))
                {
                    eprintln!("storing {} secrets to fetch", pool.max(projects));
                    barbican.fill_pool(pool).await?;
                }
                let barbican = Arc::new(barbican);
                let title = if projects > 1 {
                    format!("Barbican v1 API load, {projects} projects, {access} access")
                } else {
                    "Barbican v1 API load".to_owned()
                };
                let mut report = report_for(&title, &base, &run);
                for s in scenarios {
                    for &c in &levels {
                        let workers: Vec<AsyncOp> = (0..c)
                            .map(|_| {
                                let b = Arc::clone(&barbican);
                                // The worker's own connection; the lock is never contended.
                                let session = Arc::new(tokio::sync::Mutex::new(Session::default()));
                                Box::new(move || {
                                    let (b, session) = (Arc::clone(&b), Arc::clone(&session));
                                    cell::boxed(async move {
                                        b.run(&mut *session.lock().await, s).await
                                    })
                                }) as AsyncOp
                            })
                            .collect();
                        let label = format!("http {s} ×{c}");
                        let (summary, latencies) = cell::tasks(&label, workers, window(&run)).await;
                        report.cells.push(Cell {
                            mode: "http".into(),
                            op: s.to_string(),
                            concurrency: c,
                            batch: 1,
                            round: 1,
                            curve: latencies.curve(),
                            summary,
                        });
                        eprintln!("  done: {label}");
                    }
                }
                finish(&report, &run)
            })
        }
    }
}

fn window(run: &RunArgs) -> Window {
    Window { warmup: run.warmup, measure: run.duration }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn direct_cell(
    direct: &pkcs11::Direct,
    op: Op,
    threads: usize,
    window: Window,
) -> anyhow::Result<Cell> {
    let sessions = (0..threads).map(|_| direct.session()).collect::<anyhow::Result<Vec<_>>>()?;
    let label = format!("pkcs11 {op} ×{threads}");
    let (summary, latencies) = cell::threads(&label, sessions, window, |s| direct.run(s, op));
    eprintln!("  done: {label}: {:.0} ops/s", summary.ops_per_s);
    Ok(Cell {
        mode: "pkcs11".into(),
        op: op.to_string(),
        concurrency: threads,
        batch: 1,
        round: 1,
        curve: latencies.curve(),
        summary,
    })
}

async fn proxy_cell(
    via: &Arc<proxy::ViaProxy>,
    op: Op,
    concurrency: usize,
    batch: usize,
    window: Window,
) -> Cell {
    let workers: Vec<AsyncOp> = (0..concurrency)
        .map(|_| {
            let via = Arc::clone(via);
            Box::new(move || {
                let via = Arc::clone(&via);
                cell::boxed(async move { via.run(op, batch).await })
            }) as AsyncOp
        })
        .collect();
    let label = format!("proxy {op} ×{concurrency} batch {batch}");
    let (summary, latencies) = cell::tasks(&label, workers, window).await;
    eprintln!("  done: {label}: {:.0} ops/s", summary.ops_per_s);
    Cell {
        mode: "proxy".into(),
        op: op.to_string(),
        concurrency,
        batch,
        round: 1,
        curve: latencies.curve(),
        summary,
    }
}

fn report_for(what: &str, target: &str, run: &RunArgs) -> Report {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Report {
        title: format!("hsm-bench {}: {what}", env!("CARGO_PKG_VERSION")),
        environment: vec![
            format!("target: {target}"),
            format!("machine: {cores} cores, {cpu}"),
            format!(
                "windows: {:?} warm-up, {:?} measured per cell; {} build",
                run.warmup,
                run.duration,
                if cfg!(debug_assertions) { "debug" } else { "release" }
            ),
        ],
        ..Report::default()
    }
}

fn finish(report: &Report, run: &RunArgs) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = &run.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON written to {}", path.display());
    }
    if let Some(path) = &run.report {
        std::fs::write(path, report.html())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let errors: u64 = report.cells.iter().flat_map(|c| c.summary.errors.values()).sum();
    if errors > 0 {
        eprintln!("{errors} operations failed (listed under their cells)");
    }
    Ok(())
}

fn dev_json(path: Option<&Path>) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is appliance dev running?)", path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?,
    ))
}

/// PKCS#11 modules read their configuration from the environment when they are loaded: run
/// again with dev.json's variables set if they are not already.
fn reexec_with_module_env(dev: Option<&serde_json::Value>) -> anyhow::Result<()> {
    let Some(env) = dev.and_then(|d| d["hsm"]["env"].as_object()) else { return Ok(()) };
    let missing: Vec<(&String, &str)> = env
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k, v)))
        .filter(|(k, v)| std::env::var(k).ok().as_deref() != Some(*v))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child.args(std::env::args_os().skip(1));
    for (k, v) in missing {
        child.env(k, v);
    }
    let status = child.status()?;
    std::process::exit(status.code().unwrap_or(1));
}

fn token_target(
    args: &TokenArgs,
    dev: Option<&serde_json::Value>,
) -> anyhow::Result<pkcs11::Target> {
    let hsm = dev.map(|d| &d["hsm"]);
    let from_dev = |key: &str| hsm.and_then(|h| h[key].as_str()).map(str::to_owned);
    let module = args
        .module
        .clone()
        .or_else(|| from_dev("pkcs11_module").map(PathBuf::from))
        .context("give --module (or --dev-json)")?;
    let pin_file = args
        .pin_file
        .clone()
        .or_else(|| from_dev("pin_file").map(PathBuf::from))
        .context("give --pin-file (or --dev-json)")?;
    let pin = std::fs::read_to_string(&pin_file)
        .with_context(|| format!("reading {}", pin_file.display()))?;
    let pin = pin.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        bail!("{} is empty", pin_file.display());
    }
    Ok(pkcs11::Target {
        module,
        token_label: args.token_label.clone().or_else(|| from_dev("token_label")),
        slot: args.slot,
        pin: SecretString::from(pin.to_owned()),
    })
}

fn proxy_target(
    args: &ProxyArgs,
    dev: Option<&serde_json::Value>,
) -> anyhow::Result<proxy::Target> {
    let from_dev = |a: &str, b: &str| dev.and_then(|d| d[a][b].as_str()).map(str::to_owned);
    let need = |given: &Option<PathBuf>, key: &str, flag: &str| {
        given
            .clone()
            .or_else(|| from_dev("pki", key).map(PathBuf::from))
            .with_context(|| format!("give {flag} (or --dev-json)"))
    };
    Ok(proxy::Target {
        endpoint: args
            .endpoint
            .clone()
            .or_else(|| from_dev("proxy", "address"))
            .context("give --endpoint (or --dev-json)")?,
        server_name: args.server_name.clone(),
        ca: need(&args.ca, "ca", "--ca")?,
        cert: need(&args.cert, "client_cert", "--cert")?,
        key: need(&args.key, "client_key", "--key")?,
        connections: args.connections,
        busy_poll: Duration::from_micros(u64::from(args.busy_poll_us)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
