//! `hsm-proxy`: command line of the proxy daemon.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hsm_proxy::{Config, MkekPolicy, Proxy, ReadyInfo};
use tokio::net::TcpListener;

/// The HSM proxy: a PKCS#11 session pool behind mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: ops::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve appliances until SIGTERM or Ctrl-C.
    Serve {
        /// The configuration file (see proxy.example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Create the master key in the token if it is missing (otherwise refuse to start).
        #[arg(long)]
        create_mkek: bool,
        /// Write the bound addresses as JSON to this file once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Shut down as on SIGTERM once the process with this id is no longer the parent: a
        /// supervisor that starts the proxy as its child (`appliance dev`) and is killed
        /// outright takes the proxy with it.
        #[arg(long, value_name = "PID")]
        parent_pid: Option<u32>,
    },
    /// Create the master key (MKEK) in the token, once, before the first `serve`.
    InitToken {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The token's master keys: list their generations, make the next, destroy an older one.
    #[command(subcommand)]
    Mkek(Mkek),
    /// Check a configuration file and say what it would do, then check what `serve` needs:
    /// the TLS files and their expiry, the token, its PIN and its master key. Exit status 1 if
    /// a check failed.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Mkek {
    /// List the master key generations in the token; the newest wraps new KEKs.
    List {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate the next master key generation. Running proxies wrap new KEKs under it within
    /// a second; rewrap the stored KEKs with `appliance kek rewrap-master`, then destroy the
    /// older generation.
    Rotate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Destroy an older master key generation (never the newest): every KEK blob still under
    /// it, in the database or in any backup, can no longer be opened.
    Destroy {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The generation to destroy (see `mkek list`).
        #[arg(long)]
        generation: u64,
    },
}

impl Command {
    /// The configuration file the command reads.
    fn config(&self) -> &Path {
        match self {
            Command::Serve { config, .. }
            | Command::InitToken { config }
            | Command::Mkek(
                Mkek::List { config } | Mkek::Rotate { config } | Mkek::Destroy { config, .. },
            )
            | Command::CheckConfig { config } => config,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration may ask for JSON lines: read before the first line is logged (a file
    // that does not load is reported by the command itself).
    cli.log.init(|| Config::load(cli.command.config()).ok().map(|c| c.logging.format));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hsm-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, create_mkek, ready_file, parent_pid } => {
            let cfg = Config::load(&config)?;
            // Before the PIN is read or the token touched: nothing secret is swapped or dumped.
            hsm_proxy::hardening::apply(&cfg.hardening)?;
            let policy = if create_mkek { MkekPolicy::Create } else { MkekPolicy::Require };
            let proxy = Proxy::start(&cfg, policy)?;
            tracing::info!("{}", proxy.summary());
            // At least two threads, so that a frame run inline on one leaves another serving.
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .thread_name("hsm-proxy-io")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(proxy, &cfg, ready_file.as_deref(), parent_pid))
        }
        Command::InitToken { config } => {
            let cfg = Config::load(&config)?;
            if hsm_proxy::init_token(&cfg)? {
                println!("created master key {:?} in the token", cfg.pkcs11.mkek_label);
            } else {
                println!("master key {:?} already present; nothing to do", cfg.pkcs11.mkek_label);
            }
            Ok(())
        }
        Command::Mkek(Mkek::List { config }) => {
            let cfg = Config::load(&config)?;
            let generations = hsm_proxy::mkek_generations(&cfg)?;
            let newest = generations.last().copied();
            for generation in generations {
                let role = if Some(generation) == newest {
                    "newest: wraps new KEKs"
                } else {
                    "older: unwraps its KEKs only"
                };
                println!("generation {generation}  {role}");
            }
            Ok(())
        }
        Command::Mkek(Mkek::Rotate { config }) => {
            let cfg = Config::load(&config)?;
            let generation = hsm_proxy::mkek_rotate(&cfg)?;
            println!(
                "created master key generation {generation}; it wraps new KEKs from now on. \
                 Rewrap the stored KEKs under it with `appliance kek rewrap-master`, then \
                 destroy the older generation with `hsm-proxy mkek destroy`."
            );
            Ok(())
        }
        Command::Mkek(Mkek::Destroy { config, generation }) => {
            let cfg = Config::load(&config)?;
            hsm_proxy::mkek_destroy(&cfg, generation)?;
            println!("destroyed master key generation {generation}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            println!("{}: valid", config.display());
            println!("  listen            {}", cfg.server.listen);
            let scheme = if cfg.server.metrics_tls_cert.is_some() { "https" } else { "http" };
            match cfg.server.metrics_listen {
                Some(addr) => println!("  metrics           {scheme}://{addr}/metrics"),
                None => println!("  metrics           off"),
            }
            let server = &cfg.server;
            println!(
                "  connections       {} (and {} in their TLS handshake)",
                server.max_connections, server.max_handshakes
            );
            println!(
                "  timeouts          handshake {} ms, frame {} ms, idle {} ms",
                server.handshake_timeout_ms, server.frame_timeout_ms, server.idle_timeout_ms
            );
            println!("  module            {}", cfg.pkcs11.module.display());
            println!("  allowed clients   {}", cfg.tls.allowed_clients.join(", "));
            println!("  lock memory       {:?}", cfg.hardening.lock_memory);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let checks = hsm_proxy::check::run(&cfg, now);
            checks.print(&mut std::io::stdout().lock()).context("writing the report")?;
            if checks.failed() {
                anyhow::bail!("{}: some checks failed", config.display());
            }
            Ok(())
        }
    }
}

async fn serve(
    proxy: Proxy,
    cfg: &Config,
    ready_file: Option<&Path>,
    parent_pid: Option<u32>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let metrics_listener = match cfg.server.metrics_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?)
        }
        None => None,
    };
    if let Some(addr) = info_addr(&metrics_listener)
        && !addr.ip().is_loopback()
        && cfg.server.metrics_tls_cert.is_none()
    {
        tracing::warn!(
            metrics = %addr,
            "the metrics listener is on a non-loopback address in plain HTTP: set \
             metrics_tls_cert and metrics_tls_key, or keep it on a management network"
        );
    }
    let info = ReadyInfo {
        listen: listener.local_addr()?,
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        pid: std::process::id(),
    };
    if cfg.server.busy_poll_us > 0 {
        tracing::info!(
            busy_poll_us = cfg.server.busy_poll_us,
            "busy polling: connections spin this long after each answer before parking"
        );
    }
    tracing::info!(listen = %info.listen, metrics = ?info.metrics, "serving");
    if let Some(path) = ready_file {
        write_ready_file(path, &info)?;
    }
    let shutdown = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = parent_gone(parent_pid) => {}
        }
    };
    proxy.serve(listener, metrics_listener, shutdown).await?;
    Ok(())
}

fn info_addr(listener: &Option<TcpListener>) -> Option<std::net::SocketAddr> {
    listener.as_ref().and_then(|l| l.local_addr().ok())
}

/// Completes once the process `pid` is no longer this one's parent; never without a pid.
async fn parent_gone(pid: Option<u32>) {
    let Some(pid) = pid else { return std::future::pending().await };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let parent = std::os::unix::process::parent_id();
        if parent != pid {
            tracing::warn!(expected = pid, parent, "the parent process exited; shutting down");
            return;
        }
    }
}

/// Written to a temporary name and renamed, so that a reader never sees half a file.
fn write_ready_file(path: &Path, info: &ReadyInfo) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
