//! `appliance dev`: the whole appliance on one machine, from nothing.
//!
//! Under the data directory it keeps a SoftHSM2 token (PIN generated once, mode 0600), the
//! mTLS PKI, a proxy configuration and the SQLite database; it runs `hsm-proxy` as a child
//! process (the appliance itself links no PKCS#11 code) and serves the API. A second start
//! reuses everything. `dev.json` says where each piece is.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::config::{
    Config, DatabaseConfig, HsmConfig, IdentityConfig, IdentitySourceName, PolicyConfig,
    ServerConfig,
};
use crate::error::{Error, Result};
use crate::pki::{Bundle, write_bundle};

/// Label of the dev token.
const TOKEN_LABEL: &str = "appliance-dev";
/// Where distributions put SoftHSM2's module.
const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
/// Time allowed for the proxy to start.
const PROXY_START: Duration = Duration::from_secs(30);

/// What `appliance dev` was asked for.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// Address of the API (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The `hsm-proxy` binary; by default the one next to this binary, then `$PATH`.
    pub proxy_bin: Option<PathBuf>,
    /// Keystone identity instead of no-auth.
    pub keystone: Option<crate::config::KeystoneConfig>,
}

/// The HSM half of the appliance under a data directory: a SoftHSM2 token, the mTLS PKI, and
/// an `hsm-proxy` child process.
#[derive(Debug)]
pub struct HsmStack {
    /// Certificates and keys.
    pub pki: Bundle,
    /// The proxy's mTLS address.
    pub proxy_addr: SocketAddr,
    /// The proxy's metrics address.
    pub proxy_metrics: Option<SocketAddr>,
    /// The proxy's configuration file.
    pub proxy_config: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    token: SoftHsmToken,
    proxy: Option<ProxyProcess>,
}

impl HsmStack {
    /// Prepares (or reuses) the token and PKI under `dir` and starts the proxy.
    pub async fn start(dir: &Path, proxy_bin: Option<&Path>) -> Result<HsmStack> {
        let pki_dir = dir.join("pki");
        let pki = if pki_dir.join("ca.pem").exists() {
            Bundle::in_dir(&pki_dir)
        } else {
            tracing::info!(dir = %pki_dir.display(), "issuing the mTLS PKI");
            write_bundle(&pki_dir, &["hsm-proxy", "localhost", "127.0.0.1"], "appliance")?
        };
        let token = SoftHsmToken::prepare(&dir.join("softhsm")).await?;
        let bin = find_proxy_binary(proxy_bin)?;
        let proxy_config = write_proxy_config(dir, &pki, &token, "127.0.0.1:0")?;
        let proxy = start_proxy(&bin, &proxy_config, dir, &token).await?;
        Ok(HsmStack {
            pki,
            proxy_addr: proxy.listen,
            proxy_metrics: proxy.metrics,
            proxy_config,
            dir: dir.to_owned(),
            bin,
            token,
            proxy: Some(proxy),
        })
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop_proxy(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            proxy.stop().await;
        }
    }

    /// Starts the proxy again on the same address, as an operator restarting it would.
    pub async fn restart_proxy(&mut self) -> Result<()> {
        self.stop_proxy().await;
        let listen = self.proxy_addr.to_string();
        self.proxy_config = write_proxy_config(&self.dir, &self.pki, &self.token, &listen)?;
        let proxy = start_proxy(&self.bin, &self.proxy_config, &self.dir, &self.token).await?;
        self.proxy_metrics = proxy.metrics;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// The proxy's process id, while it runs.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(|p| p.child.id())
    }

    /// An appliance configuration using this stack, SQLite at `database_url`, no-auth.
    pub fn appliance_config(&self, listen: SocketAddr, database_url: String) -> Config {
        Config {
            server: ServerConfig {
                listen,
                host_href: None,
                max_request_bytes: crate::api::DEFAULT_MAX_REQUEST_BYTES,
                max_secret_bytes: crate::api::DEFAULT_MAX_SECRET_BYTES,
            },
            database: DatabaseConfig { url: database_url, max_connections: 8 },
            hsm: HsmConfig {
                endpoints: vec![self.proxy_addr.to_string()],
                server_name: "hsm-proxy".into(),
                ca: self.pki.ca_cert.clone(),
                cert: self.pki.client_cert.clone(),
                key: self.pki.client_key.clone(),
                connections: 2,
                connect_timeout_ms: 3_000,
                request_timeout_ms: 10_000,
            },
            identity: IdentityConfig { source: IdentitySourceName::Noauth, allow_noauth: true },
            policy: PolicyConfig::default(),
            quotas: Default::default(),
            orders: Default::default(),
            keystone: None,
        }
    }

    /// What `dev.json` says of the HSM and PKI.
    fn describe(&self) -> serde_json::Value {
        let metrics = self.proxy_metrics.map(|m| format!("http://{m}/metrics"));
        json!({
            "proxy": {
                "address": self.proxy_addr.to_string(),
                "metrics_url": metrics,
                "config": self.proxy_config,
                "log": self.dir.join("proxy.log"),
                "pid": self.proxy_pid(),
            },
            "pki": {
                "ca": self.pki.ca_cert,
                "ca_key": self.pki.ca_key,
                "client_cert": self.pki.client_cert,
                "client_key": self.pki.client_key,
                "proxy_cert": self.pki.proxy_cert,
                "proxy_key": self.pki.proxy_key,
            },
            "hsm": {
                "kind": "softhsm2",
                "pkcs11_module": self.token.module,
                "env": {"SOFTHSM2_CONF": self.token.conf},
                "token_label": TOKEN_LABEL,
                "pin_file": self.token.pin_file,
            },
            "metrics_urls": metrics.into_iter().collect::<Vec<_>>(),
        })
    }
}

/// Brings the stack up, serves until `shutdown` completes, then stops the proxy.
pub async fn run(options: DevOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&options.data_dir).map_err(io(&options.data_dir))?;
    let dir = options.data_dir.canonicalize().map_err(io(&options.data_dir))?;
    let mut stack = HsmStack::start(&dir, options.proxy_bin.as_deref()).await?;
    let database = format!("sqlite://{}", dir.join("appliance.db").display());
    let mut config = stack.appliance_config(options.listen, database);
    if let Some(keystone) = options.keystone {
        config.identity =
            IdentityConfig { source: IdentitySourceName::Keystone, allow_noauth: false };
        config.keystone = Some(keystone);
    }
    let app = match crate::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            stack.stop_proxy().await;
            return Err(e);
        }
    };
    let listener = match TcpListener::bind(options.listen).await {
        Ok(l) => l,
        Err(e) => {
            stack.stop_proxy().await;
            return Err(Error::Network(e));
        }
    };
    let api = listener.local_addr().map_err(Error::Network)?;
    let mut info = stack.describe();
    if let Some(map) = info.as_object_mut() {
        map.insert("api_url".into(), json!(format!("http://{api}")));
        map.insert("database".into(), json!(config.database.url));
    }
    let dev_json = dir.join("dev.json");
    let tmp = dir.join("dev.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&info).unwrap_or_default()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dev_json).map_err(io(&dev_json))?;
    let metrics = stack.proxy_metrics.map(|m| format!("http://{m}/metrics")).unwrap_or_default();
    println!(
        "Barbican API   http://{api}  (no-auth: send X-Project-Id and X-Roles: member,reader)"
    );
    println!("hsm-proxy      {}  (metrics {metrics})", stack.proxy_addr);
    println!("data           {}  (everything is listed in {})", dir.display(), dev_json.display());
    tracing::info!(api = %api, data = %dir.display(), "appliance dev stack ready");

    crate::server::serve(listener, app.clone(), shutdown).await;
    app.store().close().await;
    stack.stop_proxy().await;
    let _ = std::fs::remove_file(&dev_json);
    Ok(())
}

/// A SoftHSM2 token kept under the data directory.
#[derive(Debug)]
struct SoftHsmToken {
    conf: PathBuf,
    pin_file: PathBuf,
    module: PathBuf,
}

impl SoftHsmToken {
    async fn prepare(dir: &Path) -> Result<SoftHsmToken> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let module =
            SOFTHSM_MODULES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
                Error::Dev("SoftHSM2 is not installed (apt-get install softhsm2)".into())
            })?;
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(io(&tokens))?;
        let conf = dir.join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(io(&conf))?;
        let pin_file = dir.join("user-pin");
        let initialised = dir.join("initialised");
        if !initialised.exists() {
            let pin = random_secret();
            let so_pin = random_secret();
            write_private(&pin_file, &pin)?;
            write_private(&dir.join("so-pin"), &so_pin)?;
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    TOKEN_LABEL,
                    "--pin",
                    &pin,
                    "--so-pin",
                    &so_pin,
                ])
                .output()
                .await
                .map_err(|e| {
                    Error::Dev(format!("cannot run softhsm2-util (apt-get install softhsm2): {e}"))
                })?;
            if !out.status.success() {
                return Err(Error::Dev(format!(
                    "softhsm2-util --init-token failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::fs::write(&initialised, b"").map_err(io(&initialised))?;
            tracing::info!(label = TOKEN_LABEL, "SoftHSM2 token initialised");
        }
        Ok(SoftHsmToken { conf, pin_file, module })
    }
}

fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Io { path: path.to_owned(), source })?;
    f.write_all(format!("{text}\n").as_bytes())
        .map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn write_proxy_config(
    dir: &Path,
    pki: &Bundle,
    token: &SoftHsmToken,
    listen: &str,
) -> Result<PathBuf> {
    let text = format!(
        r#"# Written by `appliance dev` at every start.
[server]
listen = "{listen}"
metrics_listen = "127.0.0.1:0"

[tls]
client_ca = "{ca}"
cert = "{cert}"
key = "{key}"
allowed_clients = ["appliance"]

[pkcs11]
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"

[hardening]
lock_memory = "preferred"
"#,
        ca = pki.ca_cert.display(),
        cert = pki.proxy_cert.display(),
        key = pki.proxy_key.display(),
        module = token.module.display(),
        label = TOKEN_LABEL,
        pin = token.pin_file.display(),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).map_err(|source| Error::Io { path: path.clone(), source })?;
    Ok(path)
}

fn find_proxy_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    // Next to this binary; for test binaries (target/*/deps/) one directory up.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let path = dir.join("hsm-proxy");
            if path.exists() {
                return Ok(path);
            }
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("hsm-proxy")).find(|p| p.exists())
    });
    on_path.ok_or_else(|| {
        Error::Dev(
            "hsm-proxy binary not found next to this binary or on PATH; build the workspace \
             (`cargo build --release`) or pass --proxy-bin"
                .into(),
        )
    })
}

/// The proxy child process.
#[derive(Debug)]
struct ProxyProcess {
    child: Child,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
}

async fn start_proxy(
    bin: &Path,
    config: &Path,
    dir: &Path,
    token: &SoftHsmToken,
) -> Result<ProxyProcess> {
    let log_path = dir.join("proxy.log");
    let out = Command::new(bin)
        .env("SOFTHSM2_CONF", &token.conf)
        .args(["init-token", "--config"])
        .arg(config)
        .output()
        .await
        .map_err(|e| Error::Dev(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(Error::Dev(format!(
            "hsm-proxy init-token failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let ready = dir.join("proxy-ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(&log_path)
        .map_err(|source| Error::Io { path: log_path.clone(), source })?;
    let mut child = Command::new(bin)
        .env("SOFTHSM2_CONF", &token.conf)
        .args(["serve", "--config"])
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Dev(format!("cannot start {}: {e}", bin.display())))?;
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let info: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Dev(format!("proxy ready file: {e}")))?;
            let listen = info["listen"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| Error::Dev("proxy ready file has no listen address".into()))?;
            let metrics = info["metrics"].as_str().and_then(|a| a.parse().ok());
            tracing::info!(%listen, "hsm-proxy started");
            return Ok(ProxyProcess { child, listen, metrics });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::Dev(format!("hsm-proxy exited ({status}):\n{log}")));
        }
        if started.elapsed() > PROXY_START {
            let _ = child.kill().await;
            return Err(Error::Dev(format!("hsm-proxy did not start; see {}", log_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl ProxyProcess {
    /// SIGTERM, then wait (SIGKILL after a grace period).
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(_) => tracing::info!("hsm-proxy stopped"),
            Err(_) => {
                tracing::warn!("hsm-proxy did not stop in time; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}
