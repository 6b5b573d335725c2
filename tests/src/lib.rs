//! Helpers for the end-to-end tests: the real `appliance dev` stack as a child process, and a
//! minimal HTTP/1.1 client.
// Test helpers: a failure is a test failure, reported by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod chaos;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use devstack::testing::{
    APPLIANCE, Daemon, FWSIM, HSM_BENCH, HSM_PROXY, OnDrop, SIM_MODULE, ensure_built,
};
pub use devstack::testing::{TestDatabase, free_port, profile_dir as bin_dir, psql};

/// Builds the workspace binaries if this test run did not.
pub fn ensure_binaries() {
    ensure_built(&[APPLIANCE, HSM_PROXY, FWSIM, SIM_MODULE, HSM_BENCH]);
}

/// An `appliance serve` configuration for a test: the API on a free loopback port, no
/// authentication, the metrics listener on a free port (appliances side by side would contend
/// for the default 9465), and what the case adds to each section.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The API's port on loopback: `[server] listen`, unless [`ServeConfig::server`] sets it.
    pub port: u16,
    /// More `[server]` lines.
    pub server: String,
    /// `[database] url`.
    pub database: String,
    /// More `[database]` lines.
    pub database_extra: String,
    /// `[hsm] endpoints`.
    pub endpoints: Vec<String>,
    /// `[hsm] ca`, `cert` and `key`: the appliance's side of the proxy's PKI.
    pub pki: [String; 3],
    /// More `[hsm]` lines.
    pub hsm: String,
    /// More sections, as TOML.
    pub sections: String,
}

impl ServeConfig {
    /// On `stack`'s proxy and PKI, with the database at `database`.
    pub fn on(stack: &DevStack, database: &str) -> ServeConfig {
        let pki = |key: &str| stack.info["pki"][key].as_str().unwrap().to_owned();
        let proxy = stack.info["proxy"]["address"].as_str().unwrap().to_owned();
        ServeConfig::with_pki(
            database,
            vec![proxy],
            [pki("ca"), pki("client_cert"), pki("client_key")],
        )
    }

    /// On the proxies at `endpoints`, with the PKI files `[ca, cert, key]` (relative paths
    /// are read from the configuration's directory).
    pub fn with_pki(database: &str, endpoints: Vec<String>, pki: [String; 3]) -> ServeConfig {
        ServeConfig {
            port: free_port(),
            server: String::new(),
            database: database.to_owned(),
            database_extra: String::new(),
            endpoints,
            pki,
            hsm: String::new(),
            sections: String::new(),
        }
    }

    /// The configuration as TOML.
    pub fn text(&self) -> String {
        let listen = if self.server.lines().any(|l| l.trim_start().starts_with("listen")) {
            String::new()
        } else {
            format!("listen = \"127.0.0.1:{}\"\n", self.port)
        };
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| format!("{e:?}")).collect();
        let [ca, cert, key] = &self.pki;
        format!(
            "[server]\n{listen}{server}\n\n[database]\nurl = {database:?}\n{database_extra}\n\n\
             [hsm]\nendpoints = [{endpoints}]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n{hsm}\n\n\
             [identity]\nsource = \"noauth\"\nallow_noauth = true\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\n{sections}\n",
            server = self.server,
            database = self.database,
            database_extra = self.database_extra,
            endpoints = endpoints.join(", "),
            hsm = self.hsm,
            sections = self.sections,
        )
    }

    /// Writes the configuration to `path`; `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.text()).unwrap();
        path.to_owned()
    }

    /// The API's base URL over plain HTTP.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes the configuration to `DIR/NAME.toml` and runs `appliance serve` on it, its log in
    /// `DIR/NAME.log`, until it listens: the process (killed when dropped), the API's base URL
    /// and the configuration file.
    pub fn spawn(&self, dir: &Path, name: &str) -> (Serving, String, PathBuf) {
        let config = self.write(&dir.join(format!("{name}.toml")));
        let child = Serving(
            Command::new(bin_dir().join("appliance"))
                .args(["serve", "--config"])
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, self.api(), config)
    }
}

/// An `appliance serve` process, killed when dropped: a failed assertion leaves none running.
#[derive(Debug)]
pub struct Serving(pub std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `appliance dev` running in a child process.
#[derive(Debug)]
pub struct DevStack {
    daemon: Option<Daemon>,
    /// Where the stack keeps its data.
    pub data_dir: PathBuf,
    /// The contents of `dev.json`.
    pub info: serde_json::Value,
}

impl DevStack {
    /// Starts `appliance dev` on a free port with its data under `data_dir`.
    pub fn start(data_dir: &Path) -> DevStack {
        Self::start_with(data_dir, &[])
    }

    /// [`DevStack::start`] with more `appliance dev` arguments.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> DevStack {
        ensure_binaries();
        std::fs::create_dir_all(data_dir).unwrap();
        let mut dev = Command::new(bin_dir().join("appliance"));
        dev.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("RUST_LOG");
        // Stopped as by Ctrl-C, so that it stops the proxy and the simulator.
        let (daemon, info) = Daemon::start(
            "appliance dev",
            &mut dev,
            &data_dir.join("dev.json"),
            &data_dir.join("appliance.log"),
            Duration::from_secs(60),
            OnDrop::Terminate,
        );
        DevStack { daemon: Some(daemon), data_dir: data_dir.to_owned(), info }
    }

    /// The API's base URL.
    pub fn api_url(&self) -> String {
        self.info["api_url"].as_str().unwrap().to_owned()
    }

    /// The process id of `appliance dev`.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Daemon::pid)
    }

    /// What the appliance logged so far.
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// SIGTERM (as Ctrl-C), then the exit status.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.daemon.take().unwrap().terminate()
    }
}

/// No-auth headers of a member (and reader) of `project`, then `extra`.
pub fn member_of(
    project: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    [("X-Project-Id", project), ("X-Roles", "member,reader"), ("X-User-Id", "tester")]
        .into_iter()
        .chain(extra.iter().copied())
        .collect()
}

/// Stores `payload` as a `text/plain` secret of `project`.
pub fn store_text(api: &str, project: &'static str, payload: &str) -> HttpResponse {
    let body = serde_json::json!({"payload": payload, "payload_content_type": "text/plain"});
    http(
        "POST",
        &format!("{api}/v1/secrets"),
        &member_of(project, &[("Content-Type", "application/json")]),
        body.to_string().as_bytes(),
    )
}

/// The `text/plain` payload of a secret of `project`.
pub fn fetch_text(secret_ref: &str, project: &'static str) -> HttpResponse {
    http(
        "GET",
        &format!("{secret_ref}/payload"),
        &member_of(project, &[("Accept", "text/plain")]),
        b"",
    )
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`url` like `http://127.0.0.1:9311/v1/secrets`).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// The python-barbicanclient virtualenv: `BARBICAN_CLIENT_VENV`, or `target/interop-venv`.
/// `None` (said loudly) when absent, unless `REQUIRE_BARBICAN_CLIENT` is set, as CI does.
pub fn barbican_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("BARBICAN_CLIENT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().parent().unwrap().join("interop-venv"));
    if venv.join("bin/barbican").exists() {
        return Some(venv);
    }
    if std::env::var_os("REQUIRE_BARBICAN_CLIENT").is_some() {
        panic!("python-barbicanclient is required but not installed in {}", venv.display());
    }
    eprintln!(
        "\n*** SKIPPING barbicanclient interop test: no virtualenv at {} (scripts/test creates it) ***\n",
        venv.display()
    );
    None
}

/// The virtualenv's Keystone (with gunicorn, Castellan and the openstack CLI), when installed;
/// `None` (said loudly) otherwise, unless `REQUIRE_KEYSTONE` is set, as CI does.
pub fn keystone_venv() -> Option<PathBuf> {
    let venv = barbican_venv()?;
    if venv.join("bin/keystone-manage").exists() && venv.join("bin/openstack").exists() {
        return Some(venv);
    }
    if std::env::var_os("REQUIRE_KEYSTONE").is_some() {
        panic!("Keystone is required but not installed in {}", venv.display());
    }
    eprintln!(
        "\n*** SKIPPING Keystone test: no keystone in {} (scripts/test installs it) ***\n",
        venv.display()
    );
    None
}

// ---- Supervision: the children of `appliance dev` as `dev.json` tells them now. ----

impl DevStack {
    /// `dev.json` as it is now: the stack rewrites it whenever a child is restarted.
    pub fn current_info(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.data_dir.join("dev.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The process id at `pointer` in `dev.json` (`/proxy/pid`, `/hsm/device/pid`); `None`
    /// while that child is down.
    pub fn child_pid(&self, pointer: &str) -> Option<u32> {
        let info = self.current_info();
        info.pointer(pointer).and_then(serde_json::Value::as_u64).map(|p| u32::try_from(p).unwrap())
    }

    /// Waits (up to `timeout`) until the child at `pointer` runs under a process id other than
    /// `old`, and gives it.
    pub fn wait_for_new_pid(&self, pointer: &str, old: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = self.child_pid(pointer).filter(|p| *p != old) {
                return pid;
            }
            assert!(Instant::now() < deadline, "{pointer} was not restarted:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILL to one process of a stack of this test's own.
pub fn kill_hard(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// Whether a process runs (a zombie does not).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}
