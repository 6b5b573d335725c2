//! The processes behind the appliance on one machine: an HSM (firmware-sim as a `fwsim`
//! child process, a SoftHSM2 token, or any PKCS#11 module), the mTLS PKI, and `hsm-proxy` as
//! a child process, all under one data directory, and a supervisor that restarts a child that
//! dies.
//!
//! `appliance dev` runs the API on top of it, and every test suite that needs a real HSM stack
//! starts one here. A second start on the same directory reuses the token, its PIN (generated
//! once, mode 0600) and the PKI. `dev.json` ([`DevJson`]) says where each piece is, including
//! the module and environment that point `pkcs11-tool` or `hsm-bench` at the very token in
//! use, and the children's process ids.

#![forbid(unsafe_code)]

mod supervise;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pki::{Bundle, write_bundle};
use serde_json::json;
use tokio::process::{Child, Command};

pub use crate::supervise::supervise;

/// Why the stack could not be brought up or kept up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The PKI could not be issued or written.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A child process could not be started, or the token prepared.
    #[error("dev: {0}")]
    Dev(String),
}

impl Error {
    /// What a failed read or write of `path` becomes: `.map_err(Error::io(path))`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
/// Marks a data directory whose token holds the proxy's master key: once it exists, a proxy
/// start never creates one, so that a token that lost it (a tamper event) is reported instead
/// of silently given a new master key that none of the stored keys are wrapped under.
const MKEK_MARKER: &str = "mkek-created";

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
    token: Token,
    proxy: Option<ProxyProcess>,
    busy_poll_us: u32,
}

impl HsmStack {
    /// Prepares (or reuses) the token and PKI under `dir` and starts the proxy (and the
    /// simulator, when it is the HSM); `busy_poll_us` goes to the proxy's `[server]`, and
    /// [`HsmStack::busy_poll_us`] tells the appliance to spin as long.
    pub async fn start(
        dir: &Path,
        proxy_bin: Option<&Path>,
        choice: &HsmChoice,
        busy_poll_us: u32,
    ) -> Result<HsmStack> {
        let pki_dir = dir.join("pki");
        let pki = if pki_dir.join("ca.pem").exists() {
            Bundle::in_dir(&pki_dir)
        } else {
            tracing::info!(dir = %pki_dir.display(), "issuing the mTLS PKI");
            write_bundle(&pki_dir, &["hsm-proxy", "localhost", "127.0.0.1"], "appliance")?
        };
        let mut token = Token::prepare(dir, choice).await?;
        let started = async {
            let bin = find_binary("hsm-proxy", proxy_bin)?;
            let any = "127.0.0.1:0";
            let proxy_config = write_proxy_config(dir, &pki, &token, any, any, busy_poll_us)?;
            ensure_mkek(&bin, &proxy_config, dir, &token).await?;
            let proxy = spawn_proxy(&bin, &proxy_config, dir, &token, LogMode::Fresh).await?;
            Ok::<_, Error>((bin, proxy_config, proxy))
        };
        let (bin, proxy_config, proxy) = match started.await {
            Ok(started) => started,
            Err(e) => {
                token.stop().await;
                return Err(e);
            }
        };
        Ok(HsmStack {
            pki,
            proxy_addr: proxy.listen,
            proxy_metrics: proxy.metrics,
            proxy_config,
            dir: dir.to_owned(),
            bin,
            token,
            proxy: Some(proxy),
            busy_poll_us,
        })
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop_proxy(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            terminate(&mut proxy.child, "hsm-proxy").await;
        }
    }

    /// Stops the proxy, then the simulator if it is the HSM.
    pub async fn stop(&mut self) {
        self.stop_proxy().await;
        self.token.stop().await;
    }

    /// The simulator's endpoint (`unix:/path`), when it is the HSM.
    pub fn simulator_endpoint(&self) -> Option<&str> {
        self.token.device.as_ref().map(|d| d.spec.endpoint.as_str())
    }

    /// The simulator's fault file, when it is the HSM.
    pub fn simulator_fault_file(&self) -> Option<&Path> {
        self.token.device.as_ref().map(|d| d.spec.fault_file.as_path())
    }

    /// Starts the proxy again on the same address, as an operator restarting it would.
    pub async fn restart_proxy(&mut self) -> Result<()> {
        self.stop_proxy().await;
        self.respawn_proxy().await
    }

    /// Starts the proxy on the addresses it had (the appliance knows only that one), its log
    /// continued. It never creates the master key: a token that lost it stays refused.
    async fn respawn_proxy(&mut self) -> Result<()> {
        let listen = self.proxy_addr.to_string();
        let metrics =
            self.proxy_metrics.map_or_else(|| "127.0.0.1:0".to_owned(), |m| m.to_string());
        self.proxy_config = write_proxy_config(
            &self.dir,
            &self.pki,
            &self.token,
            &listen,
            &metrics,
            self.busy_poll_us,
        )?;
        let proxy =
            spawn_proxy(&self.bin, &self.proxy_config, &self.dir, &self.token, LogMode::Append)
                .await?;
        self.proxy_metrics = proxy.metrics;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// Starts the simulator again on its socket, state file and fault file, its log continued:
    /// the token (label, PINs, master key) is the one in the state file, as before its death.
    async fn respawn_device(&mut self) -> Result<()> {
        if let Some(device) = self.token.device.as_mut() {
            device.child = device.spec.spawn(LogMode::Append).await?;
        }
        Ok(())
    }

    /// The proxy's process id, while it runs.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(|p| p.child.id())
    }

    /// One line naming the HSM: its kind, token label and module.
    pub fn hsm_summary(&self) -> String {
        format!(
            "{} token {:?} via {}",
            self.token.kind,
            self.token.label,
            self.token.module.display()
        )
    }

    /// Busy polling asked of the proxy, in microseconds; the appliance should spin as long.
    pub fn busy_poll_us(&self) -> u32 {
        self.busy_poll_us
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
            "hsm": self.token.describe(),
            // By component; the appliance adds its own through `DevJson::extra`.
            "metrics_urls": {"proxy": metrics},
        })
    }
}

/// `dev.json`: what the stack says of itself, and what its user adds (the API's address and
/// database).
#[derive(Debug)]
pub struct DevJson {
    /// The file.
    pub path: PathBuf,
    /// Entries beside the stack's own.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl DevJson {
    /// Writes the file whole under a temporary name and renames it, so that a reader never
    /// sees half of it; rewritten whenever a child's process id changes. An entry of `extra`
    /// that is an object, as the stack's is, adds to the stack's (`metrics_urls`).
    pub fn write(&self, stack: &HsmStack) -> Result<()> {
        let mut info = stack.describe();
        if let Some(map) = info.as_object_mut() {
            for (key, value) in &self.extra {
                match (map.get_mut(key), value) {
                    (Some(serde_json::Value::Object(ours)), serde_json::Value::Object(theirs)) => {
                        ours.extend(theirs.clone());
                    }
                    _ => {
                        map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&info)
            .map_err(|e| Error::Dev(format!("cannot describe the stack: {e}")))?;
        std::fs::write(&tmp, text).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(Error::io(&self.path))
    }
}

/// Which HSM `appliance dev` runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HsmChoice {
    /// firmware-sim, as a child process (`fwsim serve`), with this latency profile.
    Sim {
        /// A built-in profile name or a profile file.
        profile: String,
        /// Under the `fips` policy (`fwsim serve --policy fips`), with the proxy's `[pkcs11]
        /// fips` on.
        fips: bool,
    },
    /// A SoftHSM2 token initialised under the data directory.
    SoftHsm2,
    /// Any PKCS#11 module whose token is already initialised.
    Pkcs11 {
        /// The module.
        module: PathBuf,
        /// The token's label.
        token_label: String,
        /// A file holding the user PIN.
        pin_file: PathBuf,
        /// The token runs in FIPS mode: the proxy's `[pkcs11] fips` is on.
        fips: bool,
    },
}

impl HsmChoice {
    /// Whether the HSM runs in FIPS mode.
    pub fn fips(&self) -> bool {
        match self {
            HsmChoice::Sim { fips, .. } | HsmChoice::Pkcs11 { fips, .. } => *fips,
            HsmChoice::SoftHsm2 => false,
        }
    }
}

impl Default for HsmChoice {
    fn default() -> Self {
        HsmChoice::Sim { profile: "ideal".into(), fips: false }
    }
}

/// The token the proxy uses, and the simulator behind it if there is one.
#[derive(Debug)]
struct Token {
    kind: &'static str,
    module: PathBuf,
    /// The variable that configures the module, and its value.
    env: Option<(&'static str, PathBuf)>,
    label: String,
    pin_file: PathBuf,
    device: Option<SimDevice>,
    /// The proxy's `[pool.hsm]` section: the token's shape, from which its pipeline depth
    /// follows; `None` leaves the proxy's default (one worker per CPU).
    pool_hsm: Option<String>,
    /// The token was initialised by this start: whatever master key marker the data
    /// directory holds belonged to the token before it.
    fresh: bool,
    /// The token runs in FIPS mode.
    fips: bool,
}

/// A `fwsim serve` child process.
#[derive(Debug)]
struct SimDevice {
    child: Child,
    spec: SimSpec,
}

/// How `fwsim serve` is started, the same way every time.
#[derive(Debug)]
struct SimSpec {
    bin: PathBuf,
    endpoint: String,
    profile: String,
    /// Under the `fips` policy.
    fips: bool,
    /// The token's objects, PINs and label (encrypted under `<state>.key` beside it), saved
    /// on every change: a restarted simulator has the token it had.
    state: PathBuf,
    fault_file: PathBuf,
    log: PathBuf,
    ready: PathBuf,
}

/// Whether a child's log file starts over or continues (a restart's reason for its previous
/// death stays readable above it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogMode {
    Fresh,
    Append,
}

/// Opens a child's log; gives its file and the offset at which this run's lines begin.
fn open_log(path: &Path, mode: LogMode) -> Result<(std::fs::File, u64)> {
    let io = |source| Error::io(path)(source);
    let file = match mode {
        LogMode::Fresh => std::fs::File::create(path).map_err(io)?,
        LogMode::Append => {
            std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?
        }
    };
    let offset = file.metadata().map_err(io)?.len();
    Ok((file, offset))
}

/// What a child wrote to its log from `offset` on.
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

impl SimSpec {
    /// Starts `fwsim serve` and waits until it listens.
    async fn spawn(&self, mode: LogMode) -> Result<Child> {
        let _ = std::fs::remove_file(&self.ready);
        let (log_file, offset) = open_log(&self.log, mode)?;
        let mut child = Command::new(&self.bin)
            .args(["serve", "--listen", &self.endpoint, "--profile", &self.profile])
            .args(["--policy", if self.fips { "fips" } else { "standard" }, "--state"])
            .arg(&self.state)
            .arg("--fault-file")
            .arg(&self.fault_file)
            .arg("--ready-file")
            .arg(&self.ready)
            // Killed outright, `appliance dev` takes the device with it.
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Dev(format!("cannot start {}: {e}", self.bin.display())))?;
        let started = Instant::now();
        while !self.ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let text = log_since(&self.log, offset);
                return Err(Error::Dev(format!("fwsim exited ({status}):\n{text}")));
            }
            if started.elapsed() > PROXY_START {
                let _ = child.kill().await;
                return Err(Error::Dev(format!("fwsim did not start; see {}", self.log.display())));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(child)
    }
}

impl Token {
    async fn prepare(dir: &Path, choice: &HsmChoice) -> Result<Token> {
        match choice {
            HsmChoice::Sim { profile, fips } => {
                Token::simulator(&dir.join("fwsim"), profile, *fips).await
            }
            HsmChoice::SoftHsm2 => Token::softhsm(&dir.join("softhsm")).await,
            HsmChoice::Pkcs11 { module, token_label, pin_file, fips } => {
                if !module.exists() {
                    return Err(Error::Dev(format!("no PKCS#11 module at {}", module.display())));
                }
                if !pin_file.exists() {
                    return Err(Error::Dev(format!("no PIN file at {}", pin_file.display())));
                }
                Ok(Token {
                    kind: "pkcs11",
                    module: module.clone(),
                    env: None,
                    label: token_label.clone(),
                    pin_file: pin_file.clone(),
                    device: None,
                    pool_hsm: None,
                    fresh: false,
                    fips: *fips,
                })
            }
        }
    }

    fn env(&self, command: &mut Command) {
        if let Some((name, value)) = &self.env {
            command.env(name, value);
        }
    }

    async fn simulator(dir: &Path, profile: &str, fips: bool) -> Result<Token> {
        let io = Error::io;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let fwsim = find_binary("fwsim", None)?;
        let module = find_module("libfirmware_sim_pkcs11.so")?;
        let socket = dir.join("fwsim.sock");
        if socket.as_os_str().len() > 100 {
            return Err(Error::Dev(format!(
                "the data directory's path is too long for a Unix socket ({}); use a shorter --data-dir",
                socket.display()
            )));
        }
        let spec = SimSpec {
            bin: fwsim.clone(),
            endpoint: format!("unix:{}", socket.display()),
            profile: profile.to_owned(),
            fips,
            state: dir.join("state"),
            fault_file: dir.join("faults.toml"),
            log: dir.join("fwsim.log"),
            ready: dir.join("fwsim-ready.json"),
        };
        let mut child = spec.spawn(LogMode::Fresh).await?;
        let endpoint = spec.endpoint.clone();
        let pin_file = dir.join("user-pin");
        let initialised = dir.join("initialised");
        let fresh = !initialised.exists();
        if fresh {
            let so_pin_file = dir.join("so-pin");
            write_private(&pin_file, &random_secret())?;
            write_private(&so_pin_file, &random_secret())?;
            let out = Command::new(&fwsim)
                .args([
                    "init-token",
                    "--device",
                    &endpoint,
                    "--label",
                    TOKEN_LABEL,
                    "--so-pin-file",
                ])
                .arg(&so_pin_file)
                .arg("--pin-file")
                .arg(&pin_file)
                .output()
                .await
                .map_err(|e| Error::Dev(format!("cannot run {}: {e}", fwsim.display())))?;
            if !out.status.success() {
                let _ = child.kill().await;
                return Err(Error::Dev(format!(
                    "fwsim init-token failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::fs::write(&initialised, b"").map_err(io(&initialised))?;
            tracing::info!(label = TOKEN_LABEL, "firmware-sim token initialised");
        }
        let conf = dir.join("pkcs11.toml");
        let text =
            format!("# Written by `appliance dev` at every start.\ndevice = \"{endpoint}\"\n");
        std::fs::write(&conf, text).map_err(io(&conf))?;
        tracing::info!(%endpoint, profile, "firmware-sim started");
        let pool_hsm = sim_pool_hsm(&fwsim, profile).await;
        Ok(Token {
            kind: "firmware-sim",
            module,
            env: Some(("FWSIM_PKCS11_CONF", conf)),
            label: TOKEN_LABEL.into(),
            pin_file,
            device: Some(SimDevice { child, spec }),
            pool_hsm,
            fresh,
            fips,
        })
    }

    async fn softhsm(dir: &Path) -> Result<Token> {
        let io = Error::io;
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
        let fresh = !initialised.exists();
        if fresh {
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
        Ok(Token {
            kind: "softhsm2",
            module,
            env: Some(("SOFTHSM2_CONF", conf)),
            label: TOKEN_LABEL.into(),
            pin_file,
            device: None,
            // SoftHSM2 runs operations on private objects one at a time (they share one lock),
            // so a second worker only adds contention.
            pool_hsm: Some("engines = 1\n".into()),
            fresh,
            fips: false,
        })
    }

    /// What `dev.json` says of the HSM.
    fn describe(&self) -> serde_json::Value {
        let env: serde_json::Map<String, serde_json::Value> =
            self.env.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let device = self.device.as_ref().map(|d| {
            json!({
                "endpoint": d.spec.endpoint,
                "profile": d.spec.profile,
                "policy": if d.spec.fips { "fips" } else { "standard" },
                "state_file": d.spec.state,
                "fault_file": d.spec.fault_file,
                "log": d.spec.log,
                // None while it is down and being restarted.
                "pid": d.child.id(),
            })
        });
        json!({
            "kind": self.kind,
            "fips": self.fips,
            "pkcs11_module": self.module,
            "env": env,
            "token_label": self.label,
            "pin_file": self.pin_file,
            "device": device,
        })
    }

    /// Stops the simulator, if one runs.
    async fn stop(&mut self) {
        if let Some(mut device) = self.device.take() {
            terminate(&mut device.child, "fwsim").await;
        }
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
        .map_err(Error::io(path))?;
    f.write_all(format!("{text}\n").as_bytes()).map_err(Error::io(path))
}

/// `[pool.hsm]` for a simulator profile: its engines, link and AES-GCM decrypt time. `None`
/// when the profile models no service time (nothing to keep busy but the host's CPUs) or
/// cannot be read, which leaves the proxy's default.
async fn sim_pool_hsm(fwsim: &Path, profile: &str) -> Option<String> {
    let text = if Path::new(profile).is_file() {
        std::fs::read_to_string(profile).ok()?
    } else {
        let out = Command::new(fwsim).args(["profile", profile]).output().await.ok()?;
        String::from_utf8(out.stdout).ok()?
    };
    let value: toml::Value = toml::from_str(&text).ok()?;
    let engines = value.get("engines")?.as_integer()?;
    let link = value.get("link_rtt_us").and_then(toml::Value::as_float).unwrap_or(0.0);
    let service = value
        .get("service")
        .and_then(|s| s.get("aes-gcm-decrypt"))
        .or_else(|| value.get("default_service"))?;
    let number = |key: &str| service.get(key).and_then(toml::Value::as_float);
    let mean = number("us")
        .or_else(|| number("mean_us"))
        .or_else(|| Some((number("min_us")? + number("max_us")?) / 2.0))?;
    if mean <= 0.0 {
        return None;
    }
    Some(format!(
        "# From the simulator's profile {profile:?}.\nengines = {engines}\nservice_us = {}\nlink_rtt_us = {}\n",
        mean.ceil(),
        link.ceil()
    ))
}

fn write_proxy_config(
    dir: &Path,
    pki: &Bundle,
    token: &Token,
    listen: &str,
    metrics_listen: &str,
    busy_poll_us: u32,
) -> Result<PathBuf> {
    let pool = token
        .pool_hsm
        .as_deref()
        .map(|section| format!("\n[pool.hsm]\n{section}"))
        .unwrap_or_default();
    let text = format!(
        r#"# Written by `appliance dev` at every start.
[server]
listen = "{listen}"
metrics_listen = "{metrics_listen}"
busy_poll_us = {busy_poll_us}

[tls]
client_ca = "{ca}"
cert = "{cert}"
key = "{key}"
allowed_clients = ["appliance"]

[pkcs11]
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"
fips = {fips}

[hardening]
lock_memory = "preferred"
{pool}"#,
        ca = pki.ca_cert.display(),
        cert = pki.proxy_cert.display(),
        key = pki.proxy_key.display(),
        module = token.module.display(),
        label = token.label,
        pin = token.pin_file.display(),
        fips = token.fips,
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(path)
}

/// A file next to this binary; for test binaries (target/*/deps/), one directory up.
fn beside_this_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).take(2).map(|dir| dir.join(name)).find(|p| p.exists())
}

fn find_binary(name: &str, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists())
        })
    };
    beside_this_binary(name).or_else(on_path).ok_or_else(|| {
        Error::Dev(format!(
            "{name} not found next to this binary or on PATH; build the workspace \
             (`cargo build --release`)"
        ))
    })
}

fn find_module(name: &str) -> Result<PathBuf> {
    beside_this_binary(name).ok_or_else(|| {
        Error::Dev(format!(
            "{name} not found next to this binary; build the workspace (`cargo build --release`)"
        ))
    })
}

/// The proxy child process.
#[derive(Debug)]
struct ProxyProcess {
    child: Child,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
}

/// Runs `hsm-proxy init-token` (which creates the master key if the token lacks it) the first
/// time this data directory's token is used, and never again: see [`MKEK_MARKER`].
async fn ensure_mkek(bin: &Path, config: &Path, dir: &Path, token: &Token) -> Result<()> {
    let marker = dir.join(MKEK_MARKER);
    if marker.exists() && !token.fresh {
        return Ok(());
    }
    let mut init = Command::new(bin);
    token.env(&mut init);
    let out = init
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
    std::fs::write(&marker, b"").map_err(Error::io(&marker))
}

/// What an operator needs to know about a proxy that refuses to start for want of its master
/// key, beside the proxy's own words.
const NO_MKEK_HINT: &str = "the token no longer holds the master key this data directory's keys \
are wrapped under (a tamper event zeroizes it): no secret can be read or stored until the token \
is restored from a backup; a new --data-dir starts over with a new token";

/// Starts `hsm-proxy serve` and waits until it listens.
async fn spawn_proxy(
    bin: &Path,
    config: &Path,
    dir: &Path,
    token: &Token,
    mode: LogMode,
) -> Result<ProxyProcess> {
    let log_path = dir.join("proxy.log");
    let ready = dir.join("proxy-ready.json");
    let _ = std::fs::remove_file(&ready);
    let (log, offset) = open_log(&log_path, mode)?;
    let mut serve = Command::new(bin);
    token.env(&mut serve);
    let mut child = serve
        .args(["serve", "--config"])
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        // Killed outright, `appliance dev` takes the proxy with it.
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
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
            tracing::info!(%listen, pid = child.id(), "hsm-proxy started");
            return Ok(ProxyProcess { child, listen, metrics });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = log_since(&log_path, offset);
            let hint = if log.contains("no master key") {
                format!("\n{NO_MKEK_HINT}")
            } else {
                String::new()
            };
            return Err(Error::Dev(format!(
                "hsm-proxy exited ({status}):\n{}{hint}",
                log.trim_end()
            )));
        }
        if started.elapsed() > PROXY_START {
            let _ = child.kill().await;
            return Err(Error::Dev(format!("hsm-proxy did not start; see {}", log_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then wait (SIGKILL after a grace period).
async fn terminate(child: &mut Child, name: &str) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(_) => tracing::info!("{name} stopped"),
        Err(_) => {
            tracing::warn!("{name} did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[tokio::test]
    async fn the_pipeline_follows_a_simulator_profile() {
        let dir = tempfile::tempdir().unwrap();
        let profile = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let network = profile(
            "network.toml",
            "engines = 30\nlink_rtt_us = 1000.0\n[service.aes-gcm-decrypt]\nkind = \"fixed\"\nus = 1000.0\n",
        );
        let section = sim_pool_hsm(Path::new("fwsim"), &network).await.unwrap();
        assert!(
            section.contains("engines = 30\nservice_us = 1000\nlink_rtt_us = 1000\n"),
            "{section}"
        );

        let spread = profile(
            "spread.toml",
            "engines = 2\n[default_service]\nkind = \"uniform\"\nmin_us = 10.0\nmax_us = 30.0\n",
        );
        let section = sim_pool_hsm(Path::new("fwsim"), &spread).await.unwrap();
        assert!(section.contains("engines = 2\nservice_us = 20\nlink_rtt_us = 0\n"), "{section}");

        // No service time: nothing but the host's CPUs to keep busy, so the proxy's default.
        let ideal =
            profile("ideal.toml", "engines = 64\n[default_service]\nkind = \"fixed\"\nus = 0.0\n");
        assert_eq!(sim_pool_hsm(Path::new("fwsim"), &ideal).await, None);
    }
}
