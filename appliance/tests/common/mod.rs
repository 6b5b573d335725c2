//! Shared harness: an HSM stack (SoftHSM2, or firmware-sim with `APPLIANCE_TEST_HSM=sim`, and
//! the real hsm-proxy), the API in-process on SQLite or PostgreSQL, and request helpers.
// Harness failures are test failures: unwrap is the clearest report.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::App;
use appliance::api::{Request, handle};
use appliance::config::Config;
use devstack::HsmStack;
use devstack::testing::{HSM_BINARIES, TestDatabase, ensure_built};
use hsm_proxy_proto::SecretBytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

/// The HSM the tests run on: SoftHSM2 unless `APPLIANCE_TEST_HSM=sim`, or `sim-fips` for the
/// simulator under its `fips` policy (and the proxy and the appliance in FIPS mode).
pub fn test_hsm() -> devstack::HsmChoice {
    match std::env::var("APPLIANCE_TEST_HSM").as_deref() {
        Ok("sim") => devstack::HsmChoice::default(),
        Ok("sim-fips") => devstack::HsmChoice::Sim { profile: "ideal".into(), fips: true },
        _ => devstack::HsmChoice::SoftHsm2,
    }
}

/// Whether the tests run in FIPS mode, where orders of non-approved algorithms fail.
pub fn fips() -> bool {
    test_hsm().fips()
}

/// Which database a test runs on.
pub enum Db {
    Sqlite(PathBuf),
    Postgres(TestDatabase),
}

/// The API in-process, with its HSM stack.
pub struct Env {
    pub app: Arc<App>,
    /// The configuration it was built from.
    pub config: Config,
    pub stack: HsmStack,
    pub db: Db,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn sqlite() -> Env {
        Env::sqlite_configured(|_| {}).await
    }

    /// SQLite, with the appliance's configuration changed by `change` before it is built.
    pub async fn sqlite_configured(change: impl FnOnce(&mut appliance::config::Config)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.db");
        let url = format!("sqlite://{}", path.display());
        Env::with(dir, url, Db::Sqlite(path), change).await
    }

    /// PostgreSQL in a fresh database; `None` (said loudly) when no server answers, unless
    /// `APPLIANCE_REQUIRE_POSTGRES` is set, which CI does.
    pub async fn postgres() -> Option<Env> {
        Env::postgres_configured(|_| {}).await
    }

    /// PostgreSQL, with the appliance's configuration changed by `change` before it is built.
    pub async fn postgres_configured(
        change: impl FnOnce(&mut appliance::config::Config),
    ) -> Option<Env> {
        let db = TestDatabase::create("appliance_test")?;
        let dir = tempfile::tempdir().unwrap();
        Some(Env::with(dir, db.url.clone(), Db::Postgres(db), change).await)
    }

    async fn with(
        dir: tempfile::TempDir,
        url: String,
        db: Db,
        change: impl FnOnce(&mut appliance::config::Config),
    ) -> Env {
        ensure_built(&HSM_BINARIES);
        let stack = HsmStack::start(&dir.path().join("hsm"), None, &test_hsm(), 0).await.unwrap();
        let proxy = stack.proxy_addr.to_string();
        let mut config =
            Config::development("127.0.0.1:0".parse().unwrap(), url, proxy, &stack.pki, 0);
        config.hsm.fips = fips();
        change(&mut config);
        let app = appliance::build(&config).await.unwrap();
        Env { app, config, stack, db, dir }
    }

    /// Serves this API over TCP on a free loopback port, with `listener`'s settings, until the
    /// returned server is dropped.
    pub async fn serve(&self, listener: appliance::config::ServerConfig) -> Served {
        let addr = "127.0.0.1:0".parse().unwrap();
        let socket = appliance::server::bind(addr, listener.listen_backlog).unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = self.app.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            appliance::server::serve_with(socket, app, &listener, None, shutdown).await;
        });
        Served { addr, stop: Some(stop), task }
    }

    pub async fn finish(mut self) {
        self.app.store().close().await;
        self.stack.stop().await;
        if let Db::Postgres(db) = &self.db {
            db.drop_database();
        }
    }

    /// Runs SQL against the test database (to age a row, or dump it).
    pub fn sql(&self, statement: &str) -> String {
        let path = match &self.db {
            Db::Sqlite(path) => path,
            Db::Postgres(db) => return db.sql(statement),
        };
        let out = std::process::Command::new("python3")
            .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute(sys.argv[2]).fetchall(); c.commit(); print(r)"])
            .arg(path)
            .arg(statement)
            .output()
            .unwrap();
        assert!(out.status.success(), "{statement}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One test per scenario on each database, `sqlite::<scenario>` and `postgres::<scenario>`,
/// each on an appliance of its own, so that a failure names its scenario and the others still
/// run. A scenario is an `async fn(&Env)` beside the macro's call.
#[allow(unused_macros)]
macro_rules! on_each_database {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let env = crate::common::Env::sqlite().await;
                    super::$scenario(&env).await;
                    env.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(env) = crate::common::Env::postgres().await else { return };
                    super::$scenario(&env).await;
                    env.finish().await;
                }
            )*
        }
    };
}

/// The API served over TCP by [`Env::serve`]; stops serving when dropped.
pub struct Served {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Who calls.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub project: &'a str,
    pub user: Option<&'a str>,
    pub roles: Option<&'a str>,
}

pub const MEMBER: Caller<'static> =
    Caller { project: "p1", user: Some("u1"), roles: Some("member,reader") };

pub const HOST: &str = "kms.test:9311";
pub const BASE: &str = "http://kms.test:9311";

/// A response, body read.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!("not JSON ({}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a Barbican error body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, description: &str) {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(body["code"], status, "{body}");
        assert_eq!(body["description"], description, "{body}");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    }
}

/// One request through the in-process API.
pub async fn call(
    app: &App,
    method: Method,
    path: &str,
    caller: Option<Caller<'_>>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut map = HeaderMap::new();
    map.insert("host", HeaderValue::from_static(HOST));
    if let Some(c) = caller {
        map.insert("x-project-id", c.project.parse().unwrap());
        if let Some(u) = c.user {
            map.insert("x-user-id", u.parse().unwrap());
        }
        if let Some(r) = c.roles {
            map.insert("x-roles", r.parse().unwrap());
        }
    }
    for (k, v) in headers {
        map.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.to_owned(), None),
    };
    let too_large = body.len() > appliance::api::DEFAULT_MAX_REQUEST_BYTES;
    let body = if too_large { &body[..appliance::api::DEFAULT_MAX_REQUEST_BYTES] } else { body };
    let response = handle(
        app,
        Request {
            method,
            path,
            query,
            headers: map,
            body: SecretBytes::copy_from(body),
            body_too_large: too_large,
            scheme: "http",
            trust_forwarded: false,
        },
    )
    .await;
    Resp { status: response.status, headers: response.headers, body: response.body.to_vec() }
}

/// POSTs JSON as `caller`.
pub async fn post_json(app: &App, path: &str, caller: Caller<'_>, body: serde_json::Value) -> Resp {
    call(
        app,
        Method::POST,
        path,
        Some(caller),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

/// Creates a secret and returns its id.
pub async fn create(app: &App, caller: Caller<'_>, body: serde_json::Value) -> String {
    let r = post_json(app, "/v1/secrets", caller, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let reference = r.json()["secret_ref"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(reference.as_str()));
    reference.rsplit('/').next().unwrap().to_owned()
}

pub fn path_of(id: &str) -> String {
    format!("/v1/secrets/{id}")
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}
