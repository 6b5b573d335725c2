//! What every test suite shares to bring the stack up: the workspace's daemons built once, the
//! PKCS#11 module under test and a fresh token on it, throw-away PostgreSQL databases and
//! clusters, and daemons waited for until ready. Behind the `testing` feature; a failure
//! panics, as the test failure it is.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{HsmChoice, SOFTHSM_MODULES, Token};

/// A file of the workspace the tests run, and the package that builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binary {
    /// The package `cargo build -p` takes.
    pub package: &'static str,
    /// The file it puts in the profile's directory.
    pub file: &'static str,
}

/// The proxy daemon.
pub const HSM_PROXY: Binary = Binary { package: "hsm-proxy", file: "hsm-proxy" };
/// The simulated HSM's device (`fwsim serve`, `fwsim init-token`).
pub const FWSIM: Binary = Binary { package: "firmware-sim", file: "fwsim" };
/// The simulated HSM's PKCS#11 module.
pub const SIM_MODULE: Binary =
    Binary { package: "firmware-sim-pkcs11", file: "libfirmware_sim_pkcs11.so" };
/// The appliance (`appliance dev`, `appliance serve`).
pub const APPLIANCE: Binary = Binary { package: "appliance", file: "appliance" };
/// The benchmark tool.
pub const HSM_BENCH: Binary = Binary { package: "bench", file: "hsm-bench" };
/// What an [`crate::HsmStack`] starts: the proxy, and the simulator when it is the HSM.
pub const HSM_BINARIES: [Binary; 3] = [HSM_PROXY, FWSIM, SIM_MODULE];

/// The directory of this build profile (`target/debug`), where the workspace's binaries are;
/// a test binary runs from its `deps` directory.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no path to this test: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in a profile directory", exe.display()))
        .to_owned()
}

/// Builds `binaries` if this test run did not (`cargo test -p` of one crate builds only that
/// crate's).
pub fn ensure_built(binaries: &[Binary]) {
    let dir = profile_dir();
    if binaries.iter().all(|b| dir.join(b.file).exists()) {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.arg("build");
    for binary in binaries {
        build.args(["-p", binary.package]);
    }
    let status = build.status().unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "building {binaries:?} failed");
}

/// The PKCS#11 module under test: `TEST_PKCS11_MODULE`, or SoftHSM2's.
pub fn pkcs11_module_under_test() -> PathBuf {
    std::env::var_os("TEST_PKCS11_MODULE").map(PathBuf::from).unwrap_or_else(|| {
        SOFTHSM_MODULES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(SOFTHSM_MODULES[0]))
    })
}

/// Whether `module` is firmware-sim's.
pub fn is_simulator_module(module: &Path) -> bool {
    module.file_name().is_some_and(|n| n.to_string_lossy().contains("firmware_sim"))
}

/// The HSM whose token `module` drives: the simulator for its module, SoftHSM2 otherwise.
pub fn hsm_for_module(module: &Path) -> HsmChoice {
    if is_simulator_module(module) { HsmChoice::default() } else { HsmChoice::SoftHsm2 }
}

/// A freshly initialised token, prepared as [`crate::HsmStack`] prepares its own (a SoftHSM2
/// token, or the simulator's device as a `fwsim serve` child process), for tests that run
/// their own proxy on it. The simulator stops when this is dropped.
#[derive(Debug)]
pub struct TestToken {
    token: Token,
}

impl TestToken {
    /// Prepares the token of `choice` under `dir`.
    pub async fn start(dir: &Path, choice: &HsmChoice) -> TestToken {
        if matches!(choice, HsmChoice::Sim { .. }) {
            ensure_built(&[FWSIM, SIM_MODULE]);
        }
        let token = Token::prepare(dir, choice)
            .await
            .unwrap_or_else(|e| panic!("cannot prepare a {choice:?} token: {e}"));
        TestToken { token }
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.token.label
    }

    /// The file holding the user PIN.
    pub fn pin_file(&self) -> &Path {
        &self.token.pin_file
    }

    /// The user PIN.
    pub fn pin(&self) -> String {
        let pin = std::fs::read_to_string(self.pin_file())
            .unwrap_or_else(|e| panic!("{}: {e}", self.pin_file().display()));
        pin.trim().to_owned()
    }

    /// The environment variable that points the module at this token, and its value.
    pub fn module_env(&self) -> Option<(&'static str, &Path)> {
        self.token.env.as_ref().map(|(name, value)| (*name, value.as_path()))
    }

    /// Stops the simulator, if it is the HSM, waiting for it to exit.
    pub async fn stop(&mut self) {
        self.token.stop().await;
    }

    /// The PKCS#11 module that drives the token.
    pub fn module(&self) -> &Path {
        &self.token.module
    }

    /// The simulator's device endpoint (for `fwsim status`, `fwsim tamper`), when it is the HSM.
    pub fn simulator_endpoint(&self) -> Option<&str> {
        self.token.device.as_ref().map(|d| d.spec.endpoint.as_str())
    }

    /// The simulator's fault file, when it is the HSM.
    pub fn simulator_fault_file(&self) -> Option<&Path> {
        self.token.device.as_ref().map(|d| d.spec.fault_file.as_path())
    }
}

/// A [`TestToken`] for a test that has no async runtime: it brings its own, and stops the
/// simulator, waiting for it to exit, when dropped. Started again on the same directory, the
/// simulator has the token it had.
#[derive(Debug)]
pub struct BlockingTestToken {
    token: TestToken,
    runtime: tokio::runtime::Runtime,
}

impl BlockingTestToken {
    /// Prepares the token of `choice` under `dir`.
    pub fn start(dir: &Path, choice: &HsmChoice) -> BlockingTestToken {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start an async runtime: {e}"));
        let token = runtime.block_on(TestToken::start(dir, choice));
        BlockingTestToken { token, runtime }
    }
}

impl std::ops::Deref for BlockingTestToken {
    type Target = TestToken;

    fn deref(&self) -> &TestToken {
        &self.token
    }
}

impl Drop for BlockingTestToken {
    fn drop(&mut self) {
        self.runtime.block_on(self.token.stop());
    }
}

/// Runs `fwsim` (built by then) with `args`; its standard output.
pub fn fwsim(args: &[&str]) -> String {
    let out = Command::new(profile_dir().join(FWSIM.file))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run fwsim: {e}"));
    assert!(out.status.success(), "fwsim {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the tests find PostgreSQL: `APPLIANCE_TEST_POSTGRES_URL`, or the local server.
pub fn postgres_admin_url() -> String {
    std::env::var("APPLIANCE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL database of one test's own.
#[derive(Debug)]
pub struct TestDatabase {
    /// The server's administrative URL, on which the database was created.
    pub admin: String,
    /// The database's name.
    pub name: String,
    /// The database's URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates a database named `<prefix>_<random>`; `None`, said loudly, when no server
    /// answers, unless `APPLIANCE_REQUIRE_POSTGRES` is set (CI sets it).
    pub fn create(prefix: &str) -> Option<TestDatabase> {
        let admin = postgres_admin_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let created = Command::new("psql")
            .arg(&admin)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
            .output();
        match created {
            Ok(out) if out.status.success() => {}
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                if std::env::var_os("APPLIANCE_REQUIRE_POSTGRES").is_some() {
                    panic!("PostgreSQL is required but unavailable at {admin}: {why}");
                }
                eprintln!("\n*** SKIPPING PostgreSQL test: no server at {admin} ({why}) ***\n");
                return None;
            }
        }
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .unwrap_or_else(|| panic!("{admin} names no database"));
        let url = format!("{base}/{name}");
        Some(TestDatabase { admin, name, url })
    }

    /// Runs one SQL statement on the database; its output (`psql -At`), trimmed.
    pub fn sql(&self, statement: &str) -> String {
        psql(&self.url, statement)
    }

    /// Drops the database, sessions still open on it included; a failure is not reported.
    pub fn drop_database(&self) {
        let _ = Command::new("psql")
            .arg(&self.admin)
            .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}

/// Runs one SQL statement on the database at `url`; its output (`psql -At`), trimmed.
pub fn psql(url: &str, statement: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", statement])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
    assert!(out.status.success(), "{statement}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A port on 127.0.0.1 that was free a moment ago, for a daemon that must keep one port
/// across restarts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
        .port()
}

/// Whether this process runs as root (owner of its own /proc entry).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A throw-away PostgreSQL cluster of a test's own, on a free port of 127.0.0.1, made with
/// `initdb` and run with `pg_ctl` (as the `postgres` user when this runs as root), so that a
/// test may stop and start its server; stopped and removed when dropped.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Makes and starts the cluster; `None` (said loudly) without the PostgreSQL server
    /// packages, unless `APPLIANCE_REQUIRE_POSTGRES` is set.
    pub fn start() -> Option<PgCluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .max()
            .map(|(_, bin)| bin);
        let Some(bin) = bin else {
            if std::env::var_os("APPLIANCE_REQUIRE_POSTGRES").is_some() {
                panic!(
                    "PostgreSQL is required, and a cluster of a test's own needs the server \
                     package's initdb and pg_ctl (apt-get install postgresql), but no \
                     /usr/lib/postgresql/*/bin/initdb exists"
                );
            }
            eprintln!(
                "\n*** SKIPPING PostgreSQL cluster test: no /usr/lib/postgresql/*/bin/initdb ***\n"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("test-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let as_postgres = is_root();
        let cluster = PgCluster { bin, dir, port: free_port(), as_postgres };
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
            assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", &data],
        );
        cluster.start_server();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A database's URL.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the database `name`; its URL.
    pub fn create_database(&self, name: &str) -> String {
        psql(&self.url("postgres"), &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start_server(&self) {
        let log = self.dir.join("postgres.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", &self.data(), "-l", &log, "-o", &options],
        );
    }

    /// `pg_ctl stop -m fast`: every connection is cut.
    pub fn stop_server(&self) {
        self.run("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &self.data()]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            let _ = self
                .tool("pg_ctl")
                .args(["stop", "-w", "-m", "immediate", "-D", &self.data()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What dropping a [`Daemon`] does to its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL: nothing of it matters any more.
    Kill,
    /// SIGTERM, as Ctrl-C, so that it stops its own children; SIGKILL if it does not exit.
    Terminate,
}

/// How long a daemon has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A daemon started by a test, its standard error in a log file, ready once it has written
/// its ready file.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    on_drop: OnDrop,
}

impl Daemon {
    /// Runs `command` (standard output discarded, standard error into `log`) and waits up to
    /// `timeout` until it has written JSON to `ready`, which it gives; a ready file of an
    /// earlier run is removed first.
    pub fn start(
        name: &str,
        command: &mut Command,
        ready: &Path,
        log: &Path,
        timeout: Duration,
        on_drop: OnDrop,
    ) -> (Daemon, serde_json::Value) {
        let _ = std::fs::remove_file(ready);
        let _ = std::fs::remove_file(log);
        let mut daemon = Daemon::spawn(name, command, log, on_drop);
        // A file caught half-written does not parse yet.
        let info = daemon.wait_until(timeout, || {
            std::fs::read_to_string(ready)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        });
        (daemon, info)
    }

    /// Runs `command` (standard output discarded, standard error appended to `log`, so that
    /// the log of a restarted daemon keeps its earlier runs), without waiting for anything.
    pub fn spawn(name: &str, command: &mut Command, log: &Path, on_drop: OnDrop) -> Daemon {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = command
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon { name: name.to_owned(), child: Some(child), log: log.to_owned(), on_drop }
    }

    /// Waits up to `timeout` until `ready` gives something, and gives it; the daemon's exit
    /// first, or the timeout, panics with its log.
    pub fn wait_until<T>(&mut self, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = ready() {
                return value;
            }
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not start:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` until something accepts connections on `port` of 127.0.0.1, for a
    /// daemon that writes no ready file.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) {
        self.wait_until(timeout, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name))
    }

    /// SIGTERM, then its exit status and log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let Some(mut child) = self.child.take() else { panic!("{} was stopped", self.name) };
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let exited =
                child.try_wait().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name));
            if let Some(status) = exited {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not stop:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if self.on_drop == OnDrop::Terminate {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` to the process `pid`; one that has exited already is no error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Runs `promtool check metrics` on `what`'s scrape `text` when promtool is installed; required when
/// `REQUIRE_PROMTOOL` is set (as CI does).
pub fn promtool_accepts(what: &str, text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("REQUIRE_PROMTOOL").is_some() => {
            panic!("promtool is required (REQUIRE_PROMTOOL) but cannot run: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n*** WARNING: promtool cannot run ({e}): the metrics lint is SKIPPED ***\n"
            );
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(text.as_bytes())
    {
        panic!("cannot write to promtool: {e}");
    }
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => panic!("promtool did not finish: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check metrics failed on the {what}'s scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
