//! `fwsim`: the simulated network HSM's daemon and its operator commands.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use firmware_sim::config::DaemonConfig;
use firmware_sim::fault::{FaultFile, FaultSpec};
use firmware_sim::profile::{BUILT_IN, Profile};
use firmware_sim::transport::{self, Connection, Endpoint};
use firmware_sim::{Admin, Device, DeviceOptions};
use firmware_sim_core::attribute::{Attribute, cka, ckk, cko};
use firmware_sim_core::command::{LABEL_BYTES, UserType};
use firmware_sim_core::mechanism::{Mechanism, Param, ckm};
use firmware_sim_core::object::SecretBytes;
use firmware_sim_core::{Command, Policy, Response};

#[derive(Parser)]
#[command(
    name = "fwsim",
    version,
    about = "firmware-sim: a simulated network HSM with a latency model and fault injection"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the device, serving its protocol on Unix sockets and/or TCP.
    Serve(ServeArgs),
    /// Initialise the token: label, SO PIN and user PIN (destroys every object on it).
    InitToken(InitTokenArgs),
    /// Print a running device's state as JSON.
    Status(DeviceArg),
    /// Change the faults a running device injects.
    Fault(FaultArgs),
    /// Send a tamper event: the device zeroizes every key.
    Tamper(DeviceArg),
    /// List the built-in latency profiles, or print one as TOML.
    Profile {
        /// A profile to print; all names when absent.
        name: Option<String>,
    },
    /// Measure the device's latency and throughput against its latency model.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A configuration file (listen, profile, state_file, fault_file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to listen: unix:/path or tcp:host:port (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// A built-in profile (ideal, softhsm-like, network-hsm, usb-token) or a profile file.
    #[arg(long)]
    profile: Option<String>,
    /// Where token objects persist (encrypted under a device key kept beside it).
    #[arg(long)]
    state: Option<PathBuf>,
    /// A fault file, re-read whenever it changes.
    #[arg(long)]
    fault_file: Option<PathBuf>,
    /// What the firmware enforces beyond PKCS#11: `standard`, or `fips` (what FIPS-mode HSMs
    /// enforce: IVs drawn inside, keys sensitive and single-purpose, export only by wrapping).
    #[arg(long, value_parser = parse_policy)]
    policy: Option<Policy>,
    /// Write the bound endpoints here as JSON once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Exit once the process with this id is no longer the parent: a supervisor that starts
    /// the device as its child (`appliance dev`) and is killed outright takes it along. The
    /// token's state is written at every change, so nothing is lost.
    #[arg(long, value_name = "PID")]
    parent_pid: Option<u32>,
}

#[derive(Args)]
struct DeviceArg {
    /// The device: unix:/path or tcp:host:port.
    #[arg(long)]
    device: String,
}

#[derive(Args)]
struct InitTokenArgs {
    /// A running device (unix:/path or tcp:host:port).
    #[arg(long, conflicts_with = "state", required_unless_present = "state")]
    device: Option<String>,
    /// Or a state file, initialised without a running device.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The token label (up to 32 bytes).
    #[arg(long)]
    label: String,
    /// A file holding the SO PIN.
    #[arg(long)]
    so_pin_file: PathBuf,
    /// A file holding the user PIN.
    #[arg(long)]
    pin_file: PathBuf,
}

#[derive(Args)]
struct FaultArgs {
    #[command(flatten)]
    device: DeviceArg,
    /// Probability that a command fails with CKR_DEVICE_ERROR.
    #[arg(long, default_value_t = 0.0)]
    device_error_rate: f64,
    /// Probability that a session command finds its session dropped.
    #[arg(long, default_value_t = 0.0)]
    drop_session_rate: f64,
    /// Stall every command for this many milliseconds from now.
    #[arg(long, default_value_t = 0)]
    stall_ms: u64,
    /// Multiply every service time by this.
    #[arg(long, default_value_t = 1.0)]
    slow_factor: f64,
    /// Add this many microseconds to every response.
    #[arg(long, default_value_t = 0)]
    extra_latency_us: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// A running device; absent: a device in this process with --profile.
    #[arg(long)]
    device: Option<String>,
    /// The profile of the in-process device.
    #[arg(long, default_value = "network-hsm")]
    profile: String,
    /// Concurrent clients, each with its own connection and session (comma-separated list).
    #[arg(long, default_value = "1")]
    threads: String,
    /// Measured seconds per cell, after one second of warm-up.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::InitToken(args) => init_token(args),
        Cmd::Status(args) => {
            let status = admin(&args.device, Admin::Status)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Cmd::Fault(args) => {
            let spec = FaultSpec {
                device_error_rate: args.device_error_rate,
                drop_session_rate: args.drop_session_rate,
                stall_ms: args.stall_ms,
                slow_factor: args.slow_factor,
                extra_latency_us: args.extra_latency_us,
            };
            spec.check()?;
            let status = admin(&args.device.device, Admin::SetFaults(spec))?;
            println!("{}", serde_json::to_string_pretty(&status.faults)?);
            Ok(())
        }
        Cmd::Tamper(args) => {
            let status = admin(&args.device, Admin::Tamper)?;
            eprintln!(
                "tamper event sent: the device zeroized its keys ({} objects left)",
                status.objects
            );
            Ok(())
        }
        Cmd::Profile { name: None } => {
            for name in BUILT_IN {
                println!("{name}");
            }
            Ok(())
        }
        Cmd::Profile { name: Some(name) } => {
            print!("{}", Profile::load(&name)?.to_toml());
            Ok(())
        }
        Cmd::Bench(args) => bench(args),
    }
}

fn connect(device: &str, app: u64) -> anyhow::Result<Connection> {
    let endpoint: Endpoint = device.parse()?;
    Connection::open(&endpoint, app, Duration::from_secs(30))
        .with_context(|| format!("cannot reach the device at {endpoint}"))
}

fn admin(device: &str, request: Admin) -> anyhow::Result<firmware_sim::Status> {
    let mut connection = connect(device, random_app())?;
    connection.admin(request)?.map_err(|e| anyhow::anyhow!("the device refused: {e}"))
}

fn random_app() -> u64 {
    let mut app = [0u8; 8];
    let _ = firmware_sim::state::fill_random(&mut app);
    u64::from_le_bytes(app)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig {
            listen: Vec::new(),
            profile: "ideal".into(),
            state_file: None,
            fault_file: None,
            policy: Policy::Standard,
        },
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if let Some(profile) = args.profile {
        config.profile = profile;
    }
    if args.state.is_some() {
        config.state_file = args.state;
    }
    if args.fault_file.is_some() {
        config.fault_file = args.fault_file;
    }
    if let Some(policy) = args.policy {
        config.policy = policy;
    }
    if config.listen.is_empty() {
        bail!(
            "nothing to listen on: give --listen unix:/path or tcp:host:port (or `listen` in --config)"
        );
    }
    let profile = Profile::load(&config.profile)?;
    if config.state_file.is_none() {
        tracing::warn!("no state file: the token lives in memory and is lost when fwsim exits");
    }
    let device = Device::open(DeviceOptions {
        profile: profile.clone(),
        state_file: config.state_file.clone(),
        policy: config.policy,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut bound = Vec::new();
    let mut threads = Vec::new();
    for listen in &config.listen {
        match listen.parse::<Endpoint>()? {
            Endpoint::Unix(path) => {
                let listener = transport::bind_unix(&path)?;
                bound.push(format!("unix:{}", path.display()));
                let (device, stop) = (Arc::clone(&device), Arc::clone(&stop));
                threads.push(std::thread::spawn(move || {
                    transport::serve_unix(device, listener, stop)
                }));
            }
            Endpoint::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on {addr}"))?;
                bound.push(format!("tcp:{}", listener.local_addr()?));
                let (device, stop) = (Arc::clone(&device), Arc::clone(&stop));
                threads
                    .push(std::thread::spawn(move || transport::serve_tcp(device, listener, stop)));
            }
        }
    }
    if let Some(path) = config.fault_file.clone() {
        let device = Arc::clone(&device);
        std::thread::spawn(move || {
            let mut watcher = FaultFile::new(&path);
            loop {
                match watcher.poll(device.faults()) {
                    Ok(Some(spec)) => {
                        tracing::warn!(file = %path.display(), ?spec, "fault file applied")
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "fault file ignored"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }
    tracing::info!(
        profile = %profile.name,
        engines = profile.engines,
        link_rtt_us = profile.link_rtt_us,
        max_sessions = profile.max_sessions,
        policy = ?config.policy,
        listen = ?bound,
        state = ?config.state_file,
        "fwsim serving"
    );
    if let Some(pid) = args.parent_pid {
        std::thread::spawn(move || {
            loop {
                let parent = std::os::unix::process::parent_id();
                if parent != pid {
                    tracing::warn!(expected = pid, parent, "the parent process exited; stopping");
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    if let Some(ready) = args.ready_file {
        let info = serde_json::json!({ "listen": bound, "pid": std::process::id(), "profile": profile.name });
        std::fs::write(&ready, info.to_string())
            .with_context(|| format!("cannot write {}", ready.display()))?;
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn read_pin(path: &PathBuf) -> anyhow::Result<SecretBytes> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(SecretBytes::new(pin.as_bytes().to_vec()))
}

/// Runs commands on a device, local or remote.
trait Run {
    fn run(&mut self, command: Command) -> anyhow::Result<Response>;
}

impl Run for Connection {
    fn run(&mut self, command: Command) -> anyhow::Result<Response> {
        Ok(self.command(command)??)
    }
}

struct Local(Arc<Device>, u64);

impl Run for Local {
    fn run(&mut self, command: Command) -> anyhow::Result<Response> {
        Ok(self.0.execute(self.1, command)?)
    }
}

fn init_token(args: InitTokenArgs) -> anyhow::Result<()> {
    let so_pin = read_pin(&args.so_pin_file)?;
    let pin = read_pin(&args.pin_file)?;
    if args.label.len() > LABEL_BYTES {
        bail!("the label is {} bytes; a token label holds at most {LABEL_BYTES}", args.label.len());
    }
    let mut label = [b' '; LABEL_BYTES];
    label[..args.label.len()].copy_from_slice(args.label.as_bytes());
    let app = random_app();
    let mut runner: Box<dyn Run> = match (&args.device, &args.state) {
        (Some(device), _) => Box::new(connect(device, app)?),
        (None, Some(state)) => {
            let profile = Profile::built_in("ideal").context("the ideal profile")?;
            let device = Device::open(DeviceOptions {
                profile,
                state_file: Some(state.clone()),
                policy: Policy::Standard,
            })?;
            device.attach(app);
            Box::new(Local(device, app))
        }
        (None, None) => bail!("give --device or --state"),
    };
    runner
        .run(Command::InitToken { so_pin: so_pin.clone(), label })
        .context("initialising the token")?;
    let Response::Session(session) = runner.run(Command::OpenSession { read_write: true })? else {
        bail!("the device did not open a session");
    };
    runner.run(Command::Login { session, user: UserType::So, pin: so_pin }).context("SO login")?;
    runner.run(Command::InitPin { session, pin }).context("setting the user PIN")?;
    runner.run(Command::CloseSession { session })?;
    eprintln!("token {:?} initialised", args.label);
    Ok(())
}

struct Cell {
    threads: usize,
    ops: u64,
    seconds: f64,
    latencies_us: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let threads: Vec<usize> = args
        .threads
        .split(',')
        .map(|t| t.trim().parse().with_context(|| format!("--threads: {t:?} is not a number")))
        .collect::<anyhow::Result<_>>()?;
    let (local, profile) = match &args.device {
        Some(device) => {
            let status = admin(device, Admin::Status)?;
            (None, Profile::load(&status.profile).ok())
        }
        None => {
            let profile = Profile::load(&args.profile)?;
            let device = Device::open(DeviceOptions {
                profile: profile.clone(),
                state_file: None,
                policy: Policy::Standard,
            })?;
            let app = random_app();
            device.attach(app);
            let mut setup = Local(Arc::clone(&device), app);
            let so = SecretBytes::new(b"bench-so-pin".to_vec());
            setup.run(Command::InitToken { so_pin: so.clone(), label: [b' '; LABEL_BYTES] })?;
            let Response::Session(s) = setup.run(Command::OpenSession { read_write: true })? else {
                bail!("no session");
            };
            setup.run(Command::Login { session: s, user: UserType::So, pin: so })?;
            setup.run(Command::InitPin {
                session: s,
                pin: SecretBytes::new(b"bench-pin".to_vec()),
            })?;
            setup.run(Command::CloseSession { session: s })?;
            (Some(device), Some(profile))
        }
    };
    let mut cells = Vec::new();
    for &n in &threads {
        let cell = bench_cell(&args, local.as_ref(), n)?;
        cells.push(cell);
    }
    let expected = profile.map(|p| {
        let service = p.service(firmware_sim::profile::OpClass::AesGcmDecrypt).mean_us();
        (service, p.link_rtt_us, p.engines)
    });
    if args.json {
        let rows: Vec<_> = cells
            .iter()
            .map(|c| {
                let mut l = c.latencies_us.clone();
                l.sort_by(f64::total_cmp);
                serde_json::json!({
                    "threads": c.threads, "ops": c.ops, "ops_per_s": c.ops as f64 / c.seconds,
                    "p50_us": percentile(&l, 50.0), "p99_us": percentile(&l, 99.0),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "operation": "aes-gcm-decrypt-32", "cells": rows }));
        return Ok(());
    }
    println!("AES-256-GCM decrypt of 32 bytes, {:.1} s per cell", args.seconds);
    if let Some((service, link, engines)) = expected {
        println!(
            "model: service {service:.0} µs + link {link:.0} µs = {:.0} µs per operation; {engines} engines: capacity {:.0} ops/s",
            service + link,
            if service > 0.0 { engines as f64 * 1e6 / service } else { f64::INFINITY }
        );
    }
    println!("{:>8} {:>12} {:>10} {:>10} {:>10}", "threads", "ops/s", "p50 µs", "p99 µs", "max µs");
    for c in &cells {
        let mut l = c.latencies_us.clone();
        l.sort_by(f64::total_cmp);
        println!(
            "{:>8} {:>12.0} {:>10.1} {:>10.1} {:>10.1}",
            c.threads,
            c.ops as f64 / c.seconds,
            percentile(&l, 50.0),
            percentile(&l, 99.0),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn bench_cell(
    args: &BenchArgs,
    local: Option<&Arc<Device>>,
    threads: usize,
) -> anyhow::Result<Cell> {
    let app = random_app();
    let make = |device: Option<&Arc<Device>>| -> anyhow::Result<Box<dyn Run + Send>> {
        Ok(match (device, &args.device) {
            (Some(d), _) => {
                d.attach(app);
                Box::new(Local(Arc::clone(d), app))
            }
            (None, Some(e)) => Box::new(connect(e, app)?),
            (None, None) => bail!("no device"),
        })
    };
    // One login for the application, as a PKCS#11 consumer does; each thread then opens its own
    // session with its own connection.
    let mut first = make(local)?;
    let Response::Session(login_session) = first.run(Command::OpenSession { read_write: false })?
    else {
        bail!("no session");
    };
    let pin = std::env::var("FWSIM_BENCH_PIN").unwrap_or_else(|_| "bench-pin".into());
    first
        .run(Command::Login {
            session: login_session,
            user: UserType::User,
            pin: SecretBytes::new(pin.into_bytes()),
        })
        .context("login (set FWSIM_BENCH_PIN to the token's user PIN)")?;
    let template = vec![
        Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
        Attribute::ulong(cka::KEY_TYPE, ckk::AES),
        Attribute::ulong(cka::VALUE_LEN, 32),
        Attribute::bool(cka::TOKEN, false),
    ];
    let Response::Object(key) = first.run(Command::GenerateKey {
        session: login_session,
        mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
        template,
    })?
    else {
        bail!("no key");
    };
    let gcm = Mechanism {
        kind: ckm::AES_GCM,
        param: Param::Gcm { iv: vec![7; 12], aad: b"bench".to_vec(), tag_bits: 128 },
    };
    let Response::Data(sealed) = first.run(Command::Encrypt {
        session: login_session,
        mechanism: gcm.clone(),
        key,
        data: SecretBytes::new(vec![0x42; 32]),
    })?
    else {
        bail!("no ciphertext");
    };
    let sealed = sealed.expose().to_vec();
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(args.seconds);
    let start = Instant::now() + Duration::from_millis(200);
    let results: Vec<anyhow::Result<(u64, Vec<f64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (gcm, sealed) = (gcm.clone(), sealed.clone());
                let runner = make(local);
                scope.spawn(move || -> anyhow::Result<(u64, Vec<f64>)> {
                    let mut runner = runner?;
                    // Session objects belong to the session that made them, but the key is
                    // visible to every session of the application, as PKCS#11 says.
                    let Response::Session(session) =
                        runner.run(Command::OpenSession { read_write: false })?
                    else {
                        bail!("no session");
                    };
                    while Instant::now() < start {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let (from, until) = (start + warmup, start + warmup + measure);
                    let mut lat = Vec::new();
                    let mut ops = 0;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= until {
                            break;
                        }
                        let r = runner.run(Command::Decrypt {
                            session,
                            mechanism: gcm.clone(),
                            key,
                            data: sealed.clone(),
                        })?;
                        let t1 = Instant::now();
                        if !matches!(r, Response::Data(ref d) if d.expose() == [0x42; 32]) {
                            bail!("wrong plaintext");
                        }
                        if t0 >= from && t1 <= until {
                            ops += 1;
                            lat.push((t1 - t0).as_secs_f64() * 1e6);
                        }
                    }
                    runner.run(Command::CloseSession { session })?;
                    Ok((ops, lat))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked"))))
            .collect()
    });
    let mut cell =
        Cell { threads, ops: 0, seconds: measure.as_secs_f64(), latencies_us: Vec::new() };
    for r in results {
        let (ops, lat) = r?;
        cell.ops += ops;
        cell.latencies_us.extend(lat);
    }
    first.run(Command::CloseSession { session: login_session })?;
    Ok(cell)
}

/// `--policy`: `standard` or `fips`.
fn parse_policy(name: &str) -> Result<Policy, String> {
    match name {
        "standard" => Ok(Policy::Standard),
        "fips" => Ok(Policy::Fips),
        other => Err(format!("unknown policy {other:?}: standard or fips")),
    }
}
