//! `appliance dev`: the whole appliance on one machine, from nothing: the dev stack's HSM and
//! proxy (from `devstack`), a SQLite database beside them, and the API on top, served until
//! shutdown while the stack's supervisor restarts a child that dies.
//!
//! With `--tls` the API speaks HTTPS with a certificate issued by the stack's CA; without it,
//! plain HTTP on loopback only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use appliance::config::{Config, IdentityConfig, IdentitySourceName, KeystoneConfig};
use devstack::{DevJson, HsmChoice, HsmStack};
use serde_json::json;

/// What `appliance dev` was asked for.
#[derive(Clone, Debug)]
pub(crate) struct DevOptions {
    /// Where everything is kept.
    pub(crate) data_dir: PathBuf,
    /// Address of the API (`127.0.0.1:0` picks a free port).
    pub(crate) listen: SocketAddr,
    /// HTTPS, with a certificate from the dev PKI.
    pub(crate) tls: bool,
    /// The `hsm-proxy` binary; by default the one next to this binary, then `$PATH`.
    pub(crate) proxy_bin: Option<PathBuf>,
    /// Keystone identity instead of no-auth.
    pub(crate) keystone: Option<KeystoneConfig>,
    /// The HSM.
    pub(crate) hsm: HsmChoice,
    /// Busy polling on both sides of the proxy connection, in microseconds (0: off); see the
    /// proxy's `[server] busy_poll_us`.
    pub(crate) busy_poll_us: u32,
}

/// Brings the stack up, serves until `shutdown` completes (restarting a child that dies
/// meanwhile), then stops the children.
pub(crate) async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if !options.tls && !options.listen.ip().to_canonical().is_loopback() {
        anyhow::bail!(
            "--listen {}: not a loopback address, where the API would speak plain HTTP; add \
             --tls to serve HTTPS there",
            options.listen
        );
    }
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let dir = options
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.data_dir.display()))?;
    let mut stack =
        HsmStack::start(&dir, options.proxy_bin.as_deref(), &options.hsm, options.busy_poll_us)
            .await?;
    let database = format!("sqlite://{}", dir.join("appliance.db").display());
    let proxy = stack.proxy_addr.to_string();
    let mut config =
        Config::development(options.listen, database, proxy, &stack.pki, stack.busy_poll_us());
    config.hsm.fips = options.hsm.fips();
    if let Some(keystone) = options.keystone {
        config.identity =
            IdentityConfig { source: IdentitySourceName::Keystone, allow_noauth: false };
        config.keystone = Some(keystone);
    }
    if options.tls {
        match api_certificate(&stack.pki, options.listen) {
            Ok((cert, key)) => {
                config.server.tls_cert = Some(cert);
                config.server.tls_key = Some(key);
            }
            Err(e) => {
                stack.stop().await;
                return Err(e);
            }
        }
    }
    // The stack runs on the file it writes, which the operator's commands then take as it is
    // (`appliance kek status --config <data>/appliance.toml`).
    let config_path = dir.join("appliance.toml");
    let config = match write_config(&config, &config_path) {
        Ok(config) => config,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    let tls = match appliance::server::Tls::from_config(&config.server) {
        Ok(tls) => tls,
        Err(e) => {
            stack.stop().await;
            return Err(e.into());
        }
    };
    let app = match appliance::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            stack.stop().await;
            return Err(e.into());
        }
    };
    let listener = match appliance::server::bind(options.listen, config.server.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            stack.stop().await;
            return Err(anyhow::Error::new(e).context(format!("binding {}", options.listen)));
        }
    };
    let api = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let appliance_metrics = match appliance::server::start_metrics(&config.metrics, &app).await {
        Ok(addr) => addr.map(|a| format!("http://{a}/metrics")),
        Err(e) => {
            stack.stop().await;
            return Err(e.into());
        }
    };
    let mut extra = serde_json::Map::new();
    extra.insert("api_url".into(), json!(format!("{scheme}://{api}")));
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        extra.insert("api_ca".into(), json!(stack.pki.ca_cert));
        extra.insert("api_cert".into(), json!(cert));
        extra.insert("api_key".into(), json!(key));
    }
    extra.insert("database".into(), json!(config.database.url));
    extra.insert("config".into(), json!(config_path));
    // Beside the proxy's, which the stack gives.
    extra.insert("metrics_urls".into(), json!({"appliance": appliance_metrics}));
    let dev_json = DevJson { path: dir.join("dev.json"), extra };
    if let Err(e) = dev_json.write(&stack) {
        stack.stop().await;
        return Err(e.into());
    }
    let metrics = stack.proxy_metrics.map(|m| format!("http://{m}/metrics")).unwrap_or_default();
    let identity = if config.keystone.is_some() {
        "Keystone tokens".to_owned()
    } else {
        "no-auth: send X-Project-Id and X-Roles: member,reader".to_owned()
    };
    match &tls {
        Some(_) => println!(
            "Barbican API   https://{api}  ({identity}; CA {})",
            stack.pki.ca_cert.display()
        ),
        None => println!("Barbican API   http://{api}  ({identity})"),
    }
    println!("hsm-proxy      {}  (metrics {metrics})", stack.proxy_addr);
    if let Some(url) = &appliance_metrics {
        println!("metrics        {url}  (health: http://{api}/healthcheck?detail)");
    }
    println!("HSM            {}", stack.hsm_summary());
    println!(
        "data           {}  (everything is listed in {})",
        dir.display(),
        dev_json.path.display()
    );
    tracing::info!(api = %api, data = %dir.display(), "appliance dev stack ready");

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let dev_json_path = dev_json.path.clone();
    let supervisor = tokio::spawn(devstack::supervise(stack, dev_json, stopping));
    // No restart once shutdown begins. A Ctrl-C at the terminal reaches the children too (they
    // share its process group, so that they never outlive a group killed whole); a child that
    // exits of it is not started again, and the others stop after the appliance.
    let shutdown = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    appliance::server::serve_with(listener, app.clone(), &config.server, tls, shutdown).await;
    let _ = stop.send(true);
    let stack = supervisor.await;
    app.store().close().await;
    match stack {
        Ok(mut stack) => stack.stop().await,
        // The children go with the stack (kill on drop).
        Err(e) => tracing::error!(error = %e, "the supervisor of the child processes failed"),
    }
    let _ = std::fs::remove_file(&dev_json_path);
    Ok(())
}

/// Writes `config` as a configuration file at `path` (only what differs from the defaults, and
/// where it comes from), then reads it back as `serve` would: what runs is what the file says.
fn write_config(config: &Config, path: &Path) -> anyhow::Result<Config> {
    let text = config_text(config);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Config::load(path).with_context(|| format!("reading back {}", path.display()))
}

fn config_text(c: &Config) -> String {
    // JSON's string escapes are all TOML basic-string escapes.
    let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let file = |p: &Path| quoted(&p.display().to_string());
    let mut out = String::from(
        "# The configuration `appliance dev` runs with, written at each start: the operator's\n\
         # commands take it as it is (`appliance kek status --config <this file>`).\n\n[server]\n",
    );
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    line("listen", quoted(&c.server.listen.to_string()));
    if let (Some(cert), Some(key)) = (&c.server.tls_cert, &c.server.tls_key) {
        line("tls_cert", file(cert));
        line("tls_key", file(key));
    }
    out.push_str("\n[database]\n");
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    line("url", quoted(&c.database.url));
    line("max_connections", c.database.max_connections.to_string());
    out.push_str("\n[hsm]\n");
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    let endpoints: Vec<String> = c.hsm.endpoints.iter().map(|e| quoted(e)).collect();
    line("endpoints", format!("[{}]", endpoints.join(", ")));
    line("server_name", quoted(&c.hsm.server_name));
    line("ca", file(&c.hsm.ca));
    line("cert", file(&c.hsm.cert));
    line("key", file(&c.hsm.key));
    line("busy_poll_us", c.hsm.busy_poll_us.to_string());
    line("fips", c.hsm.fips.to_string());
    out.push_str("\n[identity]\n");
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    let source = match c.identity.source {
        IdentitySourceName::Keystone => "keystone",
        IdentitySourceName::Noauth => "noauth",
    };
    line("source", quoted(source));
    line("allow_noauth", c.identity.allow_noauth.to_string());
    if let Some(k) = &c.keystone {
        out.push_str("\n[keystone]\n");
        let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
        line("auth_url", quoted(&k.auth_url));
        line("username", quoted(&k.username));
        line("user_domain_id", quoted(&k.user_domain_id));
        line("project", quoted(&k.project));
        line("project_domain_id", quoted(&k.project_domain_id));
        line("password_file", file(&k.password_file));
        if let Some(uri) = &k.www_authenticate_uri {
            line("www_authenticate_uri", quoted(uri));
        }
        line("cache_ttl_ms", k.cache_ttl_ms.to_string());
        line("cache_entries", k.cache_entries.to_string());
        line("timeout_ms", k.timeout_ms.to_string());
    }
    out.push_str("\n[metrics]\n");
    let listen = match c.metrics.listen.address() {
        Some(addr) => addr.to_string(),
        None => "off".to_owned(),
    };
    out.push_str(&format!("listen = {}\n", quoted(&listen)));
    out
}

/// Issues the API's certificate from the dev CA, for loopback by name and address and for the
/// address it listens on; gives the certificate's and the key's files. Issued afresh at each
/// start, so that it names the address of this start.
fn api_certificate(pki: &pki::Bundle, listen: SocketAddr) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = pki.ca_cert.parent().unwrap_or(Path::new("."));
    let (cert, key) = (dir.join("api.pem"), dir.join("api-key.pem"));
    let host = listen.ip().to_canonical().to_string();
    let mut names = vec!["localhost", "127.0.0.1", "::1"];
    if !listen.ip().is_unspecified() && !names.contains(&host.as_str()) {
        names.push(&host);
    }
    pki.issue_server_files(&names, &cert, &key)
        .with_context(|| format!("issuing the API's certificate into {}", dir.display()))?;
    Ok((cert, key))
}
