//! `appliance`: command line of the control plane.

#![forbid(unsafe_code)]

mod dev;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use appliance::config::Config;
use clap::{Parser, Subcommand};

/// Request handling allocates and frees small buffers on every runtime thread at once, where
/// mimalloc's per-thread heaps beat the system allocator's shared arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The key-manager appliance: a Barbican v1 API whose keys live in an HSM.
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
    /// Serve the Barbican v1 API until SIGTERM or Ctrl-C.
    Serve {
        /// The configuration file (see appliance.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the whole appliance on this machine: an HSM (firmware-sim by default), an
    /// hsm-proxy, a fresh mTLS PKI, SQLite, and the API; a second start reuses the same data.
    Dev(Box<DevArgs>),
    /// The appliance's own PKI for mutual TLS with its proxies.
    #[command(subcommand)]
    Pki(Pki),
    /// The database's schema: check it, or apply the pending migrations.
    #[command(subcommand)]
    Db(Db),
    /// Check the configuration, certificates, database, proxies, token, master key, clocks and
    /// Keystone; one line per check, exit status 1 if any failed.
    Doctor {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Project KEKs: where each stands, and rotating them on demand.
    #[command(subcommand)]
    Kek(Kek),
    /// Whole projects: purging one deleted in Keystone.
    #[command(subcommand)]
    Project(Project),
}

#[derive(Debug, Subcommand)]
enum Project {
    /// Delete every secret, container and order of a project, with their metadata, consumers
    /// and ACLs, its quota and preferred store, and destroy its KEKs (crypto-shredding), in one
    /// transaction. Without --yes, only say what would be deleted.
    Purge {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The project (its Keystone id).
        #[arg(long)]
        project: String,
        /// Do it: nothing deleted can be recovered.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Kek {
    /// List every project KEK (or one project's): active or retired, its age, the encryptions
    /// charged to it, the payloads still sealed under it, and its rewrap job.
    Status {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this project's KEKs.
        #[arg(long)]
        project: Option<String>,
    },
    /// Replace projects' active KEKs by new ones generated in the HSM. New data is sealed
    /// under the new KEK at once; the serving appliances' rewrap job moves the old data over
    /// and then destroys the retired KEK (follow it with `kek status`).
    Rotate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// A project to rotate; repeat for several.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        project: Vec<String>,
        /// Every project that has a KEK.
        #[arg(long)]
        all: bool,
    },
    /// Wrap every stored KEK again, inside the HSM, under the token's newest master key (after
    /// `hsm-proxy mkek rotate`), while serving goes on. Once it reports no failure, destroy
    /// the older master key with `hsm-proxy mkek destroy`.
    RewrapMaster {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Db {
    /// Say the schema's version, the migrations pending and any applied with another
    /// checksum; exit status 1 unless the schema is current.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply the pending migrations, in one transaction, and say which.
    Upgrade {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

impl Command {
    /// The configuration file the command reads, if any.
    fn config(&self) -> Option<&Path> {
        match self {
            Command::Serve { config }
            | Command::Doctor { config }
            | Command::Db(Db::Check { config } | Db::Upgrade { config })
            | Command::Kek(
                Kek::Status { config, .. }
                | Kek::Rotate { config, .. }
                | Kek::RewrapMaster { config },
            )
            | Command::Project(Project::Purge { config, .. }) => Some(config),
            Command::Dev(_) | Command::Pki(_) => None,
        }
    }
}

/// `appliance dev`'s arguments.
#[derive(Debug, clap::Args)]
struct DevArgs {
    /// The HSM: `sim` (firmware-sim), `softhsm2` (a token under the data directory), or
    /// `pkcs11:/path/to/module.so` (with --token-label and --pin-file).
    #[arg(long, default_value = "sim")]
    hsm: String,
    /// The simulator's latency profile: ideal, softhsm-like, network-hsm, usb-token, or a
    /// profile file.
    #[arg(long, default_value = "ideal")]
    sim_profile: String,
    /// FIPS mode: the simulator under its `fips` policy (or, with --hsm pkcs11:..., a token
    /// already in FIPS mode), the proxy with `[pkcs11] fips` and the appliance with `[hsm]
    /// fips`, which orders only approved algorithms and sizes.
    #[arg(long)]
    fips: bool,
    /// The token label, with --hsm pkcs11:...
    #[arg(long)]
    token_label: Option<String>,
    /// A file holding the token's user PIN, with --hsm pkcs11:...
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// Where the token, PKI, database and logs are kept.
    #[arg(long, default_value = "appliance-data")]
    data_dir: PathBuf,
    /// Address of the API; 127.0.0.1:0 picks a free port (dev.json tells which). Plain HTTP
    /// is served on loopback only: another address needs --tls.
    #[arg(long, default_value = "127.0.0.1:9311")]
    listen: SocketAddr,
    /// Serve HTTPS, with a certificate issued by the dev PKI's CA for localhost, 127.0.0.1,
    /// ::1 and the --listen address (dev.json: `api_ca` is the CA's file).
    #[arg(long)]
    tls: bool,
    /// The hsm-proxy binary (default: next to this binary, then PATH).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Microseconds the proxy and the appliance spin waiting for each other before parking
    /// (`busy_poll_us` in both): lower latency at low load for CPU time. 0 parks at once.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u32,
    /// Use Keystone tokens instead of no-auth: Keystone's v3 URL.
    #[arg(long, requires_all = ["keystone_user", "keystone_password_file"])]
    keystone_url: Option<String>,
    /// The appliance's service user in Keystone.
    #[arg(long)]
    keystone_user: Option<String>,
    /// File holding that user's password.
    #[arg(long)]
    keystone_password_file: Option<PathBuf>,
    /// The project the service user authenticates in.
    #[arg(long, default_value = "service")]
    keystone_project: String,
}

#[derive(Debug, Subcommand)]
enum Pki {
    /// Issue a new CA, a proxy server certificate and an appliance client certificate.
    Init {
        /// Directory to write ca.pem, proxy.pem, appliance.pem and their keys into.
        #[arg(long)]
        dir: PathBuf,
        /// Names (DNS or IP) the proxy certificate is valid for; repeat for several.
        #[arg(long = "proxy-name", default_values = ["hsm-proxy", "localhost", "127.0.0.1"])]
        proxy_names: Vec<String>,
        /// Name in the appliance's client certificate (what proxies' allowed_clients lists).
        #[arg(long, default_value = "appliance")]
        client_name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration may ask for JSON lines: read before the first line is logged (a file
    // that does not load is reported by the command itself).
    cli.log.init(|| {
        cli.command.config().and_then(|path| Config::load(path).ok()).map(|c| c.logging.format)
    });
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("appliance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a report on standard output; an error saying `failed` (so exit status 1) if a check
/// failed.
fn finish(report: &appliance::admin::Report, failed: &str) -> anyhow::Result<()> {
    report.print(&mut std::io::stdout().lock()).context("writing the report")?;
    if report.failed() {
        anyhow::bail!("{failed}");
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Db(Db::Check { config }) => {
            let cfg = Config::load(&config)?;
            let report = runtime()?.block_on(appliance::admin::db::check(&cfg, &config));
            finish(&report, "the database schema is not current")
        }
        Command::Db(Db::Upgrade { config }) => {
            let cfg = Config::load(&config)?;
            let report = runtime()?.block_on(appliance::admin::db::upgrade(&cfg, &config));
            finish(&report, "the database schema is not current")
        }
        Command::Doctor { config } => {
            let report = runtime()?.block_on(appliance::admin::doctor::run(&config));
            finish(&report, "some checks failed")
        }
        Command::Kek(Kek::Status { config, project }) => {
            let cfg = Config::load(&config)?;
            let table =
                runtime()?.block_on(appliance::admin::keks::status(&cfg, project.as_deref()))?;
            print!("{table}");
            Ok(())
        }
        Command::Kek(Kek::Rotate { config, project, all }) => {
            let cfg = Config::load(&config)?;
            let target = if all {
                appliance::admin::keks::Target::All
            } else {
                appliance::admin::keks::Target::Projects(project)
            };
            for line in runtime()?.block_on(appliance::admin::keks::rotate(&cfg, target))? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Kek(Kek::RewrapMaster { config }) => {
            let cfg = Config::load(&config)?;
            let done = runtime()?.block_on(appliance::admin::keks::rewrap_master(&cfg))?;
            println!("{done}");
            Ok(())
        }
        Command::Project(Project::Purge { config, project, yes }) => {
            let cfg = Config::load(&config)?;
            let purge =
                runtime()?.block_on(appliance::admin::projects::purge(&cfg, &project, yes))?;
            println!("{purge}");
            if !yes {
                println!("nothing was deleted; run again with --yes to purge the project");
            }
            Ok(())
        }
        Command::Serve { config } => {
            let cfg = appliance::config::Config::load(&config)?;
            runtime()?.block_on(async {
                let tls = appliance::server::Tls::from_config(&cfg.server)?;
                let app = appliance::build(&cfg).await?;
                appliance::server::start_metrics(&cfg.metrics, &app).await?;
                let listener =
                    appliance::server::bind(cfg.server.listen, cfg.server.listen_backlog)
                        .with_context(|| format!("binding {}", cfg.server.listen))?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(
                    listen = %listener.local_addr()?,
                    scheme,
                    "serving the Barbican v1 API"
                );
                appliance::server::serve_with(
                    listener,
                    app.clone(),
                    &cfg.server,
                    tls,
                    shutdown_signal(),
                )
                .await;
                app.store().close().await;
                Ok(())
            })
        }
        Command::Dev(args) => {
            let DevArgs {
                hsm,
                sim_profile,
                fips,
                token_label,
                pin_file,
                data_dir,
                listen,
                tls,
                proxy_bin,
                busy_poll_us,
                keystone_url,
                keystone_user,
                keystone_password_file,
                keystone_project,
            } = *args;
            let keystone = match (keystone_url, keystone_user, keystone_password_file) {
                (Some(auth_url), Some(username), Some(password_file)) => {
                    Some(appliance::config::KeystoneConfig {
                        auth_url,
                        username,
                        user_domain_id: "default".into(),
                        project: keystone_project,
                        project_domain_id: "default".into(),
                        password_file,
                        www_authenticate_uri: None,
                        cache_ttl_ms: 300_000,
                        cache_entries: 10_000,
                        timeout_ms: 5_000,
                    })
                }
                _ => None,
            };
            let hsm = match hsm.as_str() {
                "sim" => devstack::HsmChoice::Sim { profile: sim_profile, fips },
                "softhsm2" if fips => {
                    anyhow::bail!(
                        "--fips: SoftHSM2 has no FIPS mode; use --hsm sim or a FIPS token"
                    )
                }
                "softhsm2" => devstack::HsmChoice::SoftHsm2,
                other => match other.strip_prefix("pkcs11:") {
                    Some(module) => devstack::HsmChoice::Pkcs11 {
                        module: module.into(),
                        token_label: token_label.context("--hsm pkcs11:... needs --token-label")?,
                        pin_file: pin_file.context("--hsm pkcs11:... needs --pin-file")?,
                        fips,
                    },
                    None => anyhow::bail!(
                        "--hsm {other:?}: expected sim, softhsm2 or pkcs11:/path/to/module.so"
                    ),
                },
            };
            let options =
                dev::DevOptions { data_dir, listen, tls, proxy_bin, keystone, hsm, busy_poll_us };
            runtime()?.block_on(dev::run(options, shutdown_signal()))?;
            Ok(())
        }
        Command::Pki(Pki::Init { dir, proxy_names, client_name }) => {
            let names: Vec<&str> = proxy_names.iter().map(String::as_str).collect();
            let bundle = pki::write_bundle(&dir, &names, &client_name)?;
            println!("CA certificate      {}", bundle.ca_cert.display());
            println!("CA key              {}", bundle.ca_key.display());
            println!("proxy certificate   {} ({})", bundle.proxy_cert.display(), names.join(", "));
            println!("proxy key           {}", bundle.proxy_key.display());
            println!("client certificate  {} ({client_name})", bundle.client_cert.display());
            println!("client key          {}", bundle.client_key.display());
            Ok(())
        }
    }
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
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
