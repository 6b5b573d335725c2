//! Shared test harness: a throw-away token on the PKCS#11 module under test (SoftHSM2, or the
//! firmware-sim device when `TEST_PKCS11_MODULE` names its module), prepared by devstack as for
//! every suite, a PKI, and the real `hsm-proxy` binary.
// Harness failures are test failures: unwrap is the clearest report.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use devstack::testing::{Daemon, OnDrop, TestToken, hsm_for_module, pkcs11_module_under_test};
use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};
use pki::{Bundle, CertificateAuthority};

/// The PKCS#11 module under test: `TEST_PKCS11_MODULE`, or SoftHSM2.
pub fn module() -> PathBuf {
    pkcs11_module_under_test()
}

/// Whether the module under test is the firmware-sim one.
pub fn is_simulator() -> bool {
    devstack::testing::is_simulator_module(&module())
}

/// A freshly initialised token in its own directory.
pub struct Token {
    /// The token itself, and the simulator's device while it is the HSM (absent in a child
    /// test process, which uses its parent's); stopped before its directory goes.
    hsm: Option<TestToken>,
    dir: PathBuf,
    /// Deletes the directory when the token is dropped (absent in a child test process).
    _tmp: Option<tempfile::TempDir>,
    /// The module's configuration variable and file.
    pub env: (String, PathBuf),
    pub label: String,
    pub pin_file: PathBuf,
}

impl Token {
    /// The token the parent test process made (see [`in_child_process`]).
    pub fn from_parent() -> Token {
        let var = |name: &str| std::env::var(name).unwrap();
        let env_name = var("HSM_PROXY_TEST_TOKEN_ENV");
        let env_value = PathBuf::from(var(&env_name));
        Token {
            dir: PathBuf::from(var("HSM_PROXY_TEST_TOKEN_DIR")),
            _tmp: None,
            hsm: None,
            env: (env_name, env_value),
            label: var("HSM_PROXY_TEST_TOKEN_LABEL"),
            pin_file: PathBuf::from(var("HSM_PROXY_TEST_TOKEN_PIN_FILE")),
        }
    }

    /// A token of the HSM whose module is under test, as devstack prepares it.
    pub async fn new() -> Token {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let hsm = TestToken::start(&dir.join("hsm"), &hsm_for_module(&module())).await;
        let (name, value) = hsm.module_env().expect("the token's module is configured");
        Token {
            env: (name.to_owned(), value.to_owned()),
            label: hsm.label().to_owned(),
            pin_file: hsm.pin_file().to_owned(),
            dir,
            _tmp: Some(tmp),
            hsm: Some(hsm),
        }
    }

    /// A simulator token under the latency profile of TOML `profile` (for the simulator's
    /// module only).
    pub async fn simulator_with_profile(profile: &str) -> Token {
        Token::simulator(Some(profile), false).await
    }

    /// A simulator token under its `fips` policy (for the simulator's module only).
    pub async fn fips_simulator() -> Token {
        Token::simulator(None, true).await
    }

    async fn simulator(profile: Option<&str>, fips: bool) -> Token {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let profile = match profile {
            Some(text) => {
                let file = dir.join("profile.toml");
                std::fs::write(&file, text).unwrap();
                file.display().to_string()
            }
            None => "ideal".to_owned(),
        };
        let choice = devstack::HsmChoice::Sim { profile, fips };
        let hsm = TestToken::start(&dir.join("hsm"), &choice).await;
        let (name, value) = hsm.module_env().expect("the token's module is configured");
        Token {
            env: (name.to_owned(), value.to_owned()),
            label: hsm.label().to_owned(),
            pin_file: hsm.pin_file().to_owned(),
            dir,
            _tmp: Some(tmp),
            hsm: Some(hsm),
        }
    }

    /// The simulator's fault file (the simulator is the HSM, in this process).
    pub fn fault_file(&self) -> PathBuf {
        let hsm = self.hsm.as_ref().expect("the token of this process");
        hsm.simulator_fault_file().expect("the simulator is the HSM").to_owned()
    }

    /// The user PIN.
    pub fn pin(&self) -> String {
        std::fs::read_to_string(&self.pin_file).unwrap().trim().to_owned()
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
    cmd.env(&token.env.0, &token.env.1).env_remove("RUST_LOG");
    cmd
}

/// The real daemon, started as a child process.
pub struct Proxy {
    daemon: Daemon,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub pki: Bundle,
}

impl Proxy {
    pub fn start(token: &Token, settings: &Settings) -> Proxy {
        let (config, pki) = write_config(token, settings);
        let out =
            proxy_command(token).arg("init-token").arg("--config").arg(&config).output().unwrap();
        assert!(out.status.success(), "init-token: {}", String::from_utf8_lossy(&out.stderr));
        let ready = token.path().join("ready.json");
        let mut serve = proxy_command(token);
        serve
            .args(["--log-level", "debug", "serve", "--config"])
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready);
        let (daemon, info) = Daemon::start(
            "hsm-proxy",
            &mut serve,
            &ready,
            &token.path().join("proxy.log"),
            Duration::from_secs(30),
            OnDrop::Kill,
        );
        Proxy {
            daemon,
            addr: info["listen"].as_str().unwrap().parse().unwrap(),
            metrics: info["metrics"].as_str().unwrap().parse().unwrap(),
            pki,
        }
    }

    pub fn log(&self) -> String {
        self.daemon.log()
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
    pub fn terminate(self) -> (ExitStatus, String) {
        self.daemon.terminate()
    }

    /// Panics if the daemon died or logged a panic.
    pub fn assert_healthy(&mut self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
        assert!(self.daemon.exited().is_none(), "daemon exited:\n{log}");
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
        .env(&token.env.0, &token.env.1)
        .env("HSM_PROXY_TEST_TOKEN_ENV", &token.env.0)
        .env("HSM_PROXY_TEST_TOKEN_DIR", token.path())
        .env("HSM_PROXY_TEST_TOKEN_LABEL", &token.label)
        .env("HSM_PROXY_TEST_TOKEN_PIN_FILE", &token.pin_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}\n{stderr}");
    false
}
