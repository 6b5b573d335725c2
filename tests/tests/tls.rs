//! HTTPS on the API: `appliance dev --tls` with the real python-barbicanclient, Castellan and
//! `openstack` CLI checking its certificate against the dev CA; TLS 1.2 and 1.3 (rustls and
//! OpenSSL clients); the certificate reloaded on SIGHUP under kept connections; client
//! certificates required or optional; plain HTTP refused beyond loopback unless allowed; and
//! handshakes that never finish cut off by the header timeout, under the connection limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use devstack::testing::{Daemon, OnDrop, free_port, signal};
use e2e::{
    DevStack, HttpResponse, ServeConfig, barbican_venv, bin_dir, http, keystone_venv, member_of,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, StreamOwned};

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A rustls client trusting the CAs of `ca`, offering `versions` and ALPN `http/1.1`, with the
/// client certificate `identity` if given.
fn client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<&pki::Issued>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTPS connection, kept for as many requests as asked.
struct Https {
    stream: StreamOwned<ClientConnection, TcpStream>,
    authority: String,
}

impl Https {
    /// Connects to `api` (`https://host:port`) and completes the handshake.
    fn connect(api: &str, config: Arc<ClientConfig>) -> std::io::Result<Https> {
        let authority = api.strip_prefix("https://").unwrap().trim_end_matches('/').to_owned();
        let host = authority.rsplit_once(':').unwrap().0.trim_matches(['[', ']']).to_owned();
        let mut conn = ClientConnection::new(config, ServerName::try_from(host).unwrap()).unwrap();
        let mut socket = TcpStream::connect(&authority)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut socket)?;
        }
        Ok(Https { stream: StreamOwned::new(conn, socket), authority })
    }

    fn version(&self) -> ProtocolVersion {
        self.stream.conn.protocol_version().unwrap()
    }

    /// The server's certificate, DER.
    fn leaf(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One request on the connection, which stays open.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.authority,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.stream.flush()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = text.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = raw[end + 4..].to_vec();
        while body.len() < length {
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&buf[..n]);
        }
        Ok(HttpResponse { status, headers, body })
    }

    /// `GET /v1/secrets` as a no-auth member.
    fn list(&mut self) -> std::io::Result<HttpResponse> {
        self.request("GET", "/v1/secrets", &member_of("tls", &[]), b"")
    }
}

/// A new connection and one listing on it: the status, or why there was none.
fn list_on_a_new_connection(api: &str, config: Arc<ClientConfig>) -> std::io::Result<u16> {
    Ok(Https::connect(api, config)?.list()?.status)
}

fn ca_of(stack: &DevStack) -> PathBuf {
    PathBuf::from(stack.info["api_ca"].as_str().unwrap())
}

/// The dev stack's CA, as the stack issued it (to issue more server certificates from it).
fn dev_pki(stack: &DevStack) -> pki::Bundle {
    pki::Bundle::in_dir(&stack.data_dir.join("pki"))
}

/// `openssl s_client` with `version` (`-tls1_2`, `-tls1_3`), the certificate checked against
/// `ca` for 127.0.0.1: what it printed of the session, and the HTTP answer to `GET /`.
fn openssl(addr: &str, ca: &Path, version: &str) -> (String, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, version, "-alpn", "http/1.1", "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-brief", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "openssl {version}: {stdout}\n{stderr}");
    (stderr, stdout)
}

#[test]
fn dev_tls_serves_https_in_tls_1_2_and_1_3_with_https_hrefs() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--tls"]);
    let api = stack.api_url();
    let ca = ca_of(&stack);
    assert!(api.starts_with("https://127.0.0.1:"), "{api}");
    assert_eq!(ca, stack.data_dir.join("pki/ca.pem"));
    assert!(stack.info["api_cert"].as_str().unwrap().ends_with("pki/api.pem"));

    // rustls, one version at a time: each is negotiated, ALPN says http/1.1, and hrefs built
    // from the request say https.
    for (versions, expected) in
        [(TLS12, ProtocolVersion::TLSv1_2), (TLS13, ProtocolVersion::TLSv1_3)]
    {
        let mut conn = Https::connect(&api, client(&ca, versions, None)).unwrap();
        assert_eq!(conn.version(), expected);
        assert_eq!(conn.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let body = serde_json::json!({"payload": "over TLS", "payload_content_type": "text/plain"});
        let headers = member_of("tls", &[("Content-Type", "application/json")]);
        let r = conn.request("POST", "/v1/secrets", &headers, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let href = r.json()["secret_ref"].as_str().unwrap().to_owned();
        assert!(href.starts_with(&format!("{api}/v1/secrets/")), "{href}");
        // The same connection, kept.
        let path = href.strip_prefix(&api).unwrap();
        let r = conn
            .request(
                "GET",
                &format!("{path}/payload"),
                &member_of("tls", &[("Accept", "text/plain")]),
                b"",
            )
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"over TLS"[..]));
    }

    // OpenSSL, as the Python clients use it, in both versions.
    let addr = api.strip_prefix("https://").unwrap();
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (session, answer) = openssl(addr, &ca, flag);
        assert!(session.contains(&format!("Protocol version: {name}")), "{session}");
        assert!(session.contains("Verification: OK"), "{session}");
        assert!(answer.starts_with("HTTP/1.1 300"), "{answer}");
        assert!(answer.contains(&format!("\"href\":\"{api}/v1/\"")), "{answer}");
    }

    // A client that does not trust the dev CA, and one that speaks plain HTTP, get nothing.
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, pki::CertificateAuthority::new("elsewhere").unwrap().cert_pem())
        .unwrap();
    let e = list_on_a_new_connection(&api, client(&stranger, BOTH, None)).unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("HTTPS: TLS 1.2 and 1.3"), "{log}");
    assert!(!log.contains("plain HTTP"), "{log}");
}

/// The python-barbicanclient against `appliance dev --tls`: its Python API given the CA file
/// (`verify`), and the no-auth `barbican` CLI, which checks certificates against
/// `REQUESTS_CA_BUNDLE` (its `--os-cacert` is for Keystone sessions).
#[test]
fn barbicanclient_checks_the_dev_ca_and_round_trips_secrets() {
    let Some(venv) = barbican_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--tls"]);
    let (api, ca) = (stack.api_url(), ca_of(&stack));

    let script = r#"
import sys
from barbicanclient import client
api, ca = sys.argv[1], sys.argv[2]
bc = client.Client(endpoint=api, project_id="py-tls", verify=ca)
ref = bc.secrets.create(name="tls", payload="through TLS").store()
assert ref.startswith(api + "/v1/secrets/"), ref
assert bc.secrets.get(ref).payload == "through TLS"
bc.secrets.delete(ref)
try:
    client.Client(endpoint=api, project_id="py-tls").secrets.list()
    raise SystemExit("a server the system CAs do not know was trusted")
except Exception as e:
    assert "CERTIFICATE_VERIFY_FAILED" in str(e), e
print("python api over https ok")
"#;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script, &api])
        .arg(&ca)
        .env_remove("REQUESTS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let cli = |args: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(venv.join("bin/barbican"));
        cmd.args(["--no-auth", "--endpoint", &api, "--os-project-id", "cli-tls"]).args(args);
        match ca {
            Some(ca) => cmd.env("REQUESTS_CA_BUNDLE", ca),
            None => cmd.env_remove("REQUESTS_CA_BUNDLE"),
        };
        cmd.output().unwrap()
    };
    let out = cli(
        &["secret", "store", "--payload", "cli over TLS", "-f", "value", "-c", "Secret href"],
        Some(&ca),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let href = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(href.starts_with(&format!("{api}/v1/secrets/")), "{href}");
    let out = cli(&["secret", "get", "--payload", &href, "-f", "value"], Some(&ca));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli over TLS");
    let out = cli(&["secret", "list", "-f", "value"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"));

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

const CASTELLAN: &str = r#"
import json, sys
from castellan import key_manager, options
from castellan.common import exception
from castellan.common.objects import passphrase
from keystoneauth1 import identity, session
from oslo_config import cfg
from oslo_context import context

api, ca, ks = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
u = ks["users"]["alice"]
auth = identity.v3.Password(auth_url=ks["auth_url"], username="alice", password=u["password"],
                            project_name=u["project"], user_domain_id="default", project_domain_id="default")
ctx = context.RequestContext(auth_token=session.Session(auth=auth).get_token(), project_id=u["project_id"])

def manager(**tls):
    conf = cfg.ConfigOpts()
    options.set_defaults(conf, backend="barbican", barbican_endpoint=api, auth_endpoint=ks["auth_url"], **tls)
    return key_manager.API(conf)

km = manager(verify_ssl=True, verify_ssl_path=ca)
key_id = km.create_key(ctx, algorithm="AES", length=256)
key = km.get(ctx, key_id)
assert key.algorithm == "AES" and key.bit_length == 256 and len(key.get_encoded()) == 32
ref = km.store(ctx, passphrase.Passphrase(b"castellan over https"))
assert km.get(ctx, ref).get_encoded() == b"castellan over https"
km.delete(ctx, ref)
try:
    manager(verify_ssl=True).get(ctx, key_id)
    raise SystemExit("a server the system CAs do not know was trusted")
except exception.KeyManagerError as e:
    assert "CERTIFICATE_VERIFY_FAILED" in str(e), e
print("castellan over https ok")
"#;

/// Keystone, stopped however the test ends.
struct Keystone {
    venv: PathBuf,
    dir: PathBuf,
}

impl Keystone {
    fn harness(venv: &Path, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/keystone/harness.py");
        let out = Command::new(venv.join("bin/python")).arg(script).args(args).output().unwrap();
        assert!(out.status.success(), "harness {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        Keystone::harness(&self.venv, &["stop", "--dir", self.dir.to_str().unwrap()]);
    }
}

/// Castellan (`verify_ssl_path`), the `openstack` CLI and the `barbican` CLI (`--os-cacert`)
/// with Keystone tokens against `appliance dev --tls`, found in the catalog at its https URL.
#[test]
fn castellan_and_the_openstack_clients_use_the_ca_file() {
    let Some(venv) = keystone_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ks_dir = dir.path().join("keystone");
    Keystone::harness(&venv, &["start", "--dir", ks_dir.to_str().unwrap()]);
    let _keystone = Keystone { venv: venv.clone(), dir: ks_dir.clone() };
    let ks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ks_dir.join("keystone.json")).unwrap())
            .unwrap();
    let auth_url = ks["auth_url"].as_str().unwrap().to_owned();
    let password_file = dir.path().join("barbican-password");
    std::fs::write(&password_file, "barbican-password\n").unwrap();
    let stack = DevStack::start_with(
        &dir.path().join("data"),
        &[
            "--tls",
            "--keystone-url",
            &auth_url,
            "--keystone-user",
            "barbican",
            "--keystone-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    let (api, ca) = (stack.api_url(), ca_of(&stack));
    assert!(api.starts_with("https://"), "{api}");
    Keystone::harness(&venv, &["catalog", "--dir", ks_dir.to_str().unwrap(), "--url", &api]);

    let out = Command::new(venv.join("bin/python"))
        .args(["-c", CASTELLAN, &api])
        .arg(&ca)
        .arg(ks_dir.join("keystone.json"))
        .env_remove("REQUESTS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let alice = &ks["users"]["alice"];
    let as_alice = |tool: &str, args: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(venv.join("bin").join(tool));
        cmd.args(["--os-auth-url", &auth_url, "--os-identity-api-version", "3"])
            .args(["--os-username", "alice", "--os-password", alice["password"].as_str().unwrap()])
            .args(["--os-project-name", "alpha"])
            .args(["--os-user-domain-id", "default", "--os-project-domain-id", "default"])
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("OS_CACERT");
        if let Some(ca) = ca {
            cmd.arg("--os-cacert").arg(ca);
        }
        cmd.args(args).output().unwrap()
    };
    let out = as_alice(
        "openstack",
        &["secret", "store", "--payload", "osc over TLS", "-f", "value", "-c", "Secret href"],
        Some(&ca),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let href = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(href.starts_with(&format!("{api}/v1/secrets/")), "{href}");
    for tool in ["openstack", "barbican"] {
        let out = as_alice(tool, &["secret", "get", "--payload", &href, "-f", "value"], Some(&ca));
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "osc over TLS", "{tool}");
    }
    let out = as_alice("openstack", &["secret", "get", &href], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CERTIFICATE_VERIFY_FAILED"), "{stderr}");

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// SIGHUP reads the certificate and key again: a kept connection carries on, new ones get the
/// new certificate; files that do not load are logged and the certificate in use stays.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--tls"]);
    let (api, ca) = (stack.api_url(), ca_of(&stack));
    let cert = PathBuf::from(stack.info["api_cert"].as_str().unwrap());
    let key = PathBuf::from(stack.info["api_key"].as_str().unwrap());
    let config = client(&ca, BOTH, None);

    let mut kept = Https::connect(&api, config.clone()).unwrap();
    assert_eq!(kept.list().unwrap().status, 200);
    let old = kept.leaf();
    assert_eq!(old, CertificateDer::from_pem_file(&cert).unwrap().to_vec());
    let reloads = |what: &str| stack.log().matches(what).count();
    let wait_for = |what: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reloads(what) < count {
            assert!(Instant::now() < deadline, "no {what:?} in the log:\n{}", stack.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // A key that is not the certificate's: refused, the old pair stays in use.
    let next = dir.path().join("next.pem");
    let next_key = dir.path().join("next-key.pem");
    dev_pki(&stack).issue_server_files(&["127.0.0.1"], &next, &next_key).unwrap();
    std::fs::copy(&next, &cert).unwrap();
    signal(stack.pid(), nix::sys::signal::Signal::SIGHUP);
    wait_for("the TLS files could not be loaded", 1);
    assert!(stack.log().contains("is not the key of tls_cert"), "{}", stack.log());
    assert_eq!(Https::connect(&api, config.clone()).unwrap().leaf(), old);

    // Both files: new connections get the new certificate.
    std::fs::copy(&next_key, &key).unwrap();
    signal(stack.pid(), nix::sys::signal::Signal::SIGHUP);
    wait_for("TLS certificate and key reloaded", 1);
    let mut fresh = Https::connect(&api, config).unwrap();
    let new = fresh.leaf();
    assert_ne!(new, old);
    assert_eq!(new, CertificateDer::from_pem_file(&next).unwrap().to_vec());
    assert_eq!(fresh.list().unwrap().status, 200);
    // The connection made before both reloads still works, on its own session.
    assert_eq!(kept.list().unwrap().status, 200);
    assert_eq!(kept.leaf(), old);

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// `appliance serve` on the dev stack's proxy and PKI, with `server` in its `[server]`
/// section; its configuration file.
fn serve_config(dir: &Path, stack: &DevStack, server: &str) -> PathBuf {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let config = dir.join(format!("appliance-{}.toml", FILES.fetch_add(1, Ordering::Relaxed)));
    let mut settings =
        ServeConfig::on(stack, &format!("sqlite://{}", dir.join("serve.db").display()));
    settings.server = server.to_owned();
    settings.write(&config)
}

/// Runs `appliance serve --config config` until it says it serves.
fn serve(config: &Path) -> Daemon {
    let log = config.with_extension("log");
    let mut command = Command::new(bin_dir().join("appliance"));
    command.args(["serve", "--config"]).arg(config).env_remove("RUST_LOG");
    let mut daemon = Daemon::spawn("appliance serve", &mut command, &log, OnDrop::Terminate);
    daemon.wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap().contains("serving the Barbican v1 API").then_some(())
    });
    daemon
}

/// Runs `appliance serve --config config`, which must exit at once: its status and standard
/// error.
fn serve_refused(config: &Path) -> (ExitStatus, String) {
    let out = Command::new(bin_dir().join("appliance"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A server certificate from the dev CA for 127.0.0.1, written into `dir`: the `[server]` lines
/// that use it.
fn server_certificate(stack: &DevStack, dir: &Path) -> String {
    let (cert, key) = (dir.join("api.pem"), dir.join("api-key.pem"));
    dev_pki(stack).issue_server_files(&["127.0.0.1"], &cert, &key).unwrap();
    format!("tls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display())
}

#[test]
fn plain_http_is_refused_beyond_loopback_unless_allowed() {
    e2e::ensure_binaries();
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let port = free_port();

    let everywhere = format!("listen = \"0.0.0.0:{port}\"");
    let (status, stderr) = serve_refused(&serve_config(dir.path(), &stack, &everywhere));
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("listen = \"0.0.0.0:{port}\" is not a loopback address"))
            && stderr.contains("allow_plain_http = true")
            && stderr.contains("tls_cert and tls_key"),
        "{stderr}"
    );
    assert!(!dir.path().join("serve.db").exists(), "nothing is done before the refusal");

    // Allowed: it serves, and says it is plain HTTP beyond loopback.
    let allowed = format!("{everywhere}\nallow_plain_http = true");
    let daemon = serve(&serve_config(dir.path(), &stack, &allowed));
    let r = http("GET", &format!("http://127.0.0.1:{port}/v1/secrets"), &member_of("p", &[]), b"");
    assert_eq!(r.status, 200);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("plain HTTP beyond loopback"), "{log}");

    // With TLS, any address will do.
    let tls = format!("{everywhere}\n{}", server_certificate(&stack, dir.path()));
    let daemon = serve(&serve_config(dir.path(), &stack, &tls));
    let ca = PathBuf::from(stack.info["pki"]["ca"].as_str().unwrap());
    let api = format!("https://127.0.0.1:{port}");
    assert_eq!(list_on_a_new_connection(&api, client(&ca, BOTH, None)).unwrap(), 200);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("plain HTTP"), "{log}");

    // Loopback: plain HTTP, with a warning.
    let daemon =
        serve(&serve_config(dir.path(), &stack, &format!("listen = \"127.0.0.1:{port}\"")));
    let r = http("GET", &format!("http://127.0.0.1:{port}/v1/secrets"), &member_of("p", &[]), b"");
    assert_eq!(r.status, 200);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("plain HTTP, on loopback only"), "{log}");

    // `appliance dev` serves plain HTTP on loopback only too.
    let out = Command::new(bin_dir().join("appliance"))
        .args(["dev", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("dev-everywhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address") && stderr.contains("--tls"), "{stderr}");

    // Files that do not load stop the start with their reason.
    let wrong_key = format!(
        "listen = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        dir.path().join("api.pem").display(),
        stack.info["pki"]["client_key"].as_str().unwrap()
    );
    let (status, stderr) = serve_refused(&serve_config(dir.path(), &stack, &wrong_key));
    assert!(!status.success());
    assert!(stderr.contains("is not the key of tls_cert"), "{stderr}");
}

#[test]
fn client_certificates_are_required_or_checked_when_presented() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let ca = PathBuf::from(stack.info["pki"]["ca"].as_str().unwrap());
    let clients = pki::CertificateAuthority::new("clients CA").unwrap();
    let client_ca = dir.path().join("clients-ca.pem");
    std::fs::write(&client_ca, clients.cert_pem()).unwrap();
    let member = clients.issue_client("ops-tool").unwrap();
    let stranger = pki::CertificateAuthority::new("elsewhere").unwrap().issue_client("x").unwrap();
    let port = free_port();
    let api = format!("https://127.0.0.1:{port}");
    let tls = format!(
        "listen = \"127.0.0.1:{port}\"\n{}\ntls_client_ca = \"{}\"",
        server_certificate(&stack, dir.path()),
        client_ca.display()
    );

    let daemon = serve(&serve_config(dir.path(), &stack, &tls));
    for versions in [TLS12, TLS13] {
        let with = client(&ca, versions, Some(&member));
        assert_eq!(list_on_a_new_connection(&api, with).unwrap(), 200);
        let without = list_on_a_new_connection(&api, client(&ca, versions, None)).unwrap_err();
        let e = without.to_string();
        assert!(e.contains("CertificateRequired") || e.contains("HandshakeFailure"), "{e}");
        let foreign = client(&ca, versions, Some(&stranger));
        let e = list_on_a_new_connection(&api, foreign).unwrap_err().to_string();
        assert!(e.contains("UnknownCA") || e.contains("BadCertificate"), "{e}");
    }
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("client_certificates=\"required\""), "{log}");

    let optional = format!("{tls}\ntls_client_auth = \"optional\"");
    let daemon = serve(&serve_config(dir.path(), &stack, &optional));
    assert_eq!(list_on_a_new_connection(&api, client(&ca, BOTH, Some(&member))).unwrap(), 200);
    assert_eq!(list_on_a_new_connection(&api, client(&ca, BOTH, None)).unwrap(), 200);
    let foreign = client(&ca, BOTH, Some(&stranger));
    assert!(list_on_a_new_connection(&api, foreign).is_err());
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

/// Waits until the server closes `stream` (or resets it), reading whatever it sends; how long
/// that took from `since`.
fn closed_by_the_server(stream: &mut TcpStream, since: Instant) -> Duration {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return since.elapsed(),
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// Handshakes in the connections' own tasks, under the header timeout and the connection
/// limit: clients that never finish theirs stall no one else, are cut off, and give their
/// places back; a connection over the limit gets its 503 over TLS.
#[test]
fn handshakes_that_never_finish_are_cut_off_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let ca = PathBuf::from(stack.info["pki"]["ca"].as_str().unwrap());
    let config = client(&ca, BOTH, None);
    let port = free_port();
    let api = format!("https://127.0.0.1:{port}");
    let settings = format!(
        "listen = \"127.0.0.1:{port}\"\n{}\nheader_timeout_ms = 5000\nmax_connections = 3",
        server_certificate(&stack, dir.path())
    );
    let daemon = serve(&serve_config(dir.path(), &stack, &settings));

    // One client sends nothing, another the first bytes of a ClientHello.
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    // Meanwhile the accept loop serves others, while both still wait.
    let mut kept = Https::connect(&api, config.clone()).unwrap();
    assert_eq!(kept.list().unwrap().status, 200);
    for stalled in [&silent, &partial] {
        stalled.set_nonblocking(true).unwrap();
        let e = (&*stalled).read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        stalled.set_nonblocking(false).unwrap();
    }
    for stalled in [&mut silent, &mut partial] {
        let after = closed_by_the_server(stalled, started);
        assert!(after >= Duration::from_millis(4500), "cut off after {after:?}");
    }

    // Their places are free again: with two more kept connections the limit is reached, and
    // the next one is answered 503 over TLS.
    let mut second = Https::connect(&api, config.clone()).unwrap();
    assert_eq!(second.list().unwrap().status, 200);
    let mut third = Https::connect(&api, config.clone()).unwrap();
    assert_eq!(third.list().unwrap().status, 200);
    let mut refused = Https::connect(&api, config.clone()).unwrap();
    let r = refused.list().unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["code"], 503);
    // A place given back is taken again.
    drop(third);
    let deadline = Instant::now() + Duration::from_secs(30);
    while list_on_a_new_connection(&api, config.clone()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "the freed place was not taken again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kept.list().unwrap().status, 200);
    assert_eq!(second.list().unwrap().status, 200);

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("connection limit reached"), "{log}");
}
