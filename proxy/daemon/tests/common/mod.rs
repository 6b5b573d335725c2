//! Shared test harness: a throw-away token (SoftHSM2, or the firmware-sim module when
//! `TEST_PKCS11_MODULE` names it), a PKI, and the real `hsm-proxy` binary.
// Harness failures are test failures: unwrap is the clearest report.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};
use pki::{Bundle, CertificateAuthority};

pub const PIN: &str = "4321-test-pin";
const SO_PIN: &str = "87654321";

/// The PKCS#11 module under test: `TEST_PKCS11_MODULE`, or SoftHSM2.
pub fn module() -> PathBuf {
    std::env::var_os("TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// Whether the module under test is the firmware-sim one.
pub fn is_simulator() -> bool {
    module().file_name().is_some_and(|n| n.to_string_lossy().contains("firmware_sim"))
}

/// The environment variable that points the module at its configuration, and the file.
fn module_env(dir: &Path) -> (&'static str, PathBuf) {
    if is_simulator() {
        ("FWSIM_PKCS11_CONF", dir.join("fwsim-pkcs11.toml"))
    } else {
        ("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
    }
}

/// A freshly initialised token in its own directory.
pub struct Token {
    dir: PathBuf,
    /// Deletes the directory when the token is dropped (absent in a child test process).
    _tmp: Option<tempfile::TempDir>,
    /// The module's configuration variable and file.
    pub env: (&'static str, PathBuf),
    pub label: String,
    pub pin_file: PathBuf,
}

impl Token {
    /// The token the parent test process made (see [`in_child_process`]).
    pub fn from_parent() -> Token {
        let dir = PathBuf::from(std::env::var_os("HSM_PROXY_TEST_TOKEN_DIR").unwrap());
        let label = std::env::var("HSM_PROXY_TEST_TOKEN_LABEL").unwrap();
        Token { env: module_env(&dir), pin_file: dir.join("pin"), dir, _tmp: None, label }
    }

    pub fn new(label: &str) -> Token {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        if is_simulator() {
            return Token::simulated(tmp, label);
        }
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN])
            .output()
            .expect("softhsm2-util must be installed (apt-get install softhsm2)");
        assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        Token { env: module_env(&dir), dir, _tmp: Some(tmp), label: label.into(), pin_file }
    }

    /// A firmware-sim token: the device runs inside whichever process loads the module, its
    /// token kept in a state file that `fwsim init-token` initialises.
    fn simulated(tmp: tempfile::TempDir, label: &str) -> Token {
        let dir = tmp.path().to_owned();
        let env = module_env(&dir);
        let state = dir.join("fwsim-state");
        std::fs::write(
            &env.1,
            format!("[in_process]\nprofile = \"ideal\"\nstate_file = \"{}\"\n", state.display()),
        )
        .unwrap();
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        let so_pin_file = dir.join("so-pin");
        std::fs::write(&so_pin_file, SO_PIN).unwrap();
        let fwsim = module().with_file_name("fwsim");
        let out = Command::new(&fwsim)
            .args(["init-token", "--label", label, "--state"])
            .arg(&state)
            .arg("--so-pin-file")
            .arg(&so_pin_file)
            .arg("--pin-file")
            .arg(&pin_file)
            .output()
            .unwrap_or_else(|e| panic!("{} must be built beside the module: {e}", fwsim.display()));
        assert!(out.status.success(), "fwsim init-token: {}", String::from_utf8_lossy(&out.stderr));
        Token { dir, _tmp: Some(tmp), env, label: label.into(), pin_file }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Settings that differ between tests.
pub struct Settings {
    /// `host:port` to listen on; a free port by default.
    pub listen: String,
    pub allowed_clients: Vec<&'static str>,
    pub server_extra: String,
    /// Lines added to `[pkcs11]`.
    pub pkcs11_extra: String,
    pub extra: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:0".into(),
            allowed_clients: vec!["appliance"],
            server_extra: String::new(),
            pkcs11_extra: String::new(),
            extra: String::new(),
        }
    }
}

/// Writes `proxy.toml` for `token` into its directory, and the PKI the first time.
pub fn write_config(token: &Token, settings: &Settings) -> (PathBuf, Bundle) {
    let dir = token.path().join("pki");
    let pki = if dir.join("ca.pem").exists() {
        // A restarted proxy keeps its certificates, as a real one does.
        Bundle::in_dir(&dir)
    } else {
        pki::write_bundle(&dir, &["hsm-proxy", "127.0.0.1"], "appliance").unwrap()
    };
    let allowed: Vec<String> = settings.allowed_clients.iter().map(|c| format!("{c:?}")).collect();
    let config = format!(
        r#"
[server]
listen = "{listen}"
metrics_listen = "127.0.0.1:0"
{server_extra}

[tls]
client_ca = "{ca}"
cert = "{cert}"
key = "{key}"
allowed_clients = [{allowed}]

[pkcs11]
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"
{pkcs11_extra}
[hardening]
lock_memory = "preferred"

{extra}
"#,
        listen = settings.listen,
        server_extra = settings.server_extra,
        pkcs11_extra = settings.pkcs11_extra,
        ca = pki.ca_cert.display(),
        cert = pki.proxy_cert.display(),
        key = pki.proxy_key.display(),
        allowed = allowed.join(", "),
        module = module().display(),
        label = token.label,
        pin = token.pin_file.display(),
        extra = settings.extra,
    );
    let path = token.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    (path, pki)
}

pub fn proxy_command(token: &Token) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-proxy"));
    cmd.env(token.env.0, &token.env.1).env_remove("RUST_LOG");
    cmd
}

/// The real daemon, started as a child process.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub pki: Bundle,
    log: PathBuf,
}

impl Proxy {
    pub fn start(token: &Token, settings: &Settings) -> Proxy {
        let (config, pki) = write_config(token, settings);
        let out =
            proxy_command(token).arg("init-token").arg("--config").arg(&config).output().unwrap();
        assert!(out.status.success(), "init-token: {}", String::from_utf8_lossy(&out.stderr));
        let ready = token.path().join("ready.json");
        // A restart must not read the previous run's addresses.
        let _ = std::fs::remove_file(&ready);
        let log = token.path().join("proxy.log");
        let child = proxy_command(token)
            .args(["--log-level", "debug", "serve", "--config"])
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            child: Some(child),
            addr: ([0, 0, 0, 0], 0).into(),
            metrics: ([0, 0, 0, 0], 0).into(),
            pki,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let info: serde_json::Value = serde_json::from_str(&text).unwrap();
                proxy.addr = info["listen"].as_str().unwrap().parse().unwrap();
                proxy.metrics = info["metrics"].as_str().unwrap().parse().unwrap();
                return proxy;
            }
            if let Some(status) = proxy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hsm-proxy exited with {status}:\n{}", proxy.log());
            }
            assert!(Instant::now() < deadline, "hsm-proxy did not start:\n{}", proxy.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client with the appliance certificate.
    pub fn client(&self) -> Client {
        self.client_with(&self.pki.client_cert, &self.pki.client_key)
    }

    pub fn client_with(&self, cert: &Path, key: &Path) -> Client {
        client_for(self.addr, &self.pki.ca_cert, cert, key)
    }

    /// A rustls client configuration trusting the proxy, with the appliance certificate.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        tls_config_from_pem_files(&self.pki.ca_cert, &self.pki.client_cert, &self.pki.client_key)
            .unwrap()
    }

    /// The `/metrics` page.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text(), series)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "hsm-proxy did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the daemon died or logged a panic.
    pub fn assert_healthy(&mut self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
        assert!(
            self.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "daemon exited:\n{log}"
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client for the proxy at `addr`.
pub fn client_for(addr: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> Client {
    let tls = tls_config_from_pem_files(ca, cert, key).unwrap();
    let mut config = ClientConfig::new(vec![addr.to_string()], "hsm-proxy", tls).unwrap();
    config.request_timeout = Duration::from_secs(60);
    Client::new(config).unwrap()
}

/// Operations answered with anything but `ok`, from a `/metrics` page.
pub fn failed_operations(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("hsm_proxy_operations_total{") && !l.contains("status=\"ok\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A CA unrelated to the proxy's, with a client certificate named `name`.
pub fn foreign_client(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ca = CertificateAuthority::new("someone else's CA").unwrap();
    let issued = ca.issue_client(name).unwrap();
    let cert = dir.join(format!("foreign-{name}.pem"));
    let key = dir.join(format!("foreign-{name}-key.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.as_bytes()).unwrap();
    (cert, key)
}

/// Runs the calling test's body in a child process with the module's variable set, for tests that
/// load the PKCS#11 module in-process (its configuration comes from the environment, and the
/// test process's own environment is not changed). Returns true in the child.
pub fn in_child_process(test_name: &str, token: Option<&Token>) -> bool {
    if std::env::var_os("HSM_PROXY_TEST_CHILD").is_some() {
        return true;
    }
    let token = token.expect("the parent passes the token");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env("HSM_PROXY_TEST_CHILD", "1")
        .env(token.env.0, &token.env.1)
        .env("HSM_PROXY_TEST_TOKEN_DIR", token.path())
        .env("HSM_PROXY_TEST_TOKEN_LABEL", &token.label)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}\n{stderr}");
    false
}
