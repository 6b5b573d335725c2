//! Load against a Barbican v1 endpoint, this appliance or Barbican itself: stores, payload and
//! metadata fetches from a pool of secrets made beforehand, and key orders until ACTIVE.
//! Over HTTP or HTTPS (TLS 1.2 or 1.3, the server's certificate checked against a CA file).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The error a payload fetch counts when the answer is 200 with other bytes than were stored.
pub const WRONG_PAYLOAD: &str = "wrong payload";

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// POST /v1/secrets with a 32-byte symmetric key.
    SecretStore,
    /// GET /v1/secrets/{id}/payload (the Nova/Cinder key fetch).
    PayloadGet,
    /// GET /v1/secrets/{id}.
    MetadataGet,
    /// POST /v1/orders (AES-256), then GET the order until it is ACTIVE.
    Order,
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Ok(match s {
            "secret-store" => Scenario::SecretStore,
            "payload-get" => Scenario::PayloadGet,
            "metadata-get" => Scenario::MetadataGet,
            "order" => Scenario::Order,
            _ => {
                return Err(format!(
                    "{s:?}: one of secret-store, payload-get, metadata-get, order"
                ));
            }
        })
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::SecretStore => "secret-store",
            Scenario::PayloadGet => "payload-get",
            Scenario::MetadataGet => "metadata-get",
            Scenario::Order => "order",
        })
    }
}

/// How the fetch scenarios pick the project (and so the KEK) of each request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Access {
    /// Every project as often.
    Uniform,
    /// Project of rank r (from 1) with probability proportional to 1 / r^s.
    Zipf(f64),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Uniform => f.write_str("uniform"),
            Access::Zipf(s) => write!(f, "zipf s={s}"),
        }
    }
}

/// Draws project indices in `0..n` by an [`Access`] pattern, from a counter hashed by
/// SplitMix64: workers share it without a lock.
struct Picker {
    /// Cumulative probabilities by rank, for Zipf; empty for uniform.
    cdf: Vec<f64>,
    n: usize,
    counter: std::sync::atomic::AtomicU64,
}

impl Picker {
    fn new(n: usize, access: Access) -> Picker {
        let cdf = match access {
            Access::Uniform => Vec::new(),
            Access::Zipf(exponent) => {
                let weights: Vec<f64> =
                    (1..=n).map(|rank| 1.0 / (rank as f64).powf(exponent)).collect();
                let total: f64 = weights.iter().sum();
                let mut sum = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        sum += w / total;
                        sum
                    })
                    .collect()
            }
        };
        Picker { cdf, n: n.max(1), counter: std::sync::atomic::AtomicU64::new(0x9e37_79b9) }
    }

    fn next(&self) -> usize {
        let mut z = self.counter.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if self.cdf.is_empty() {
            return usize::try_from(z % self.n as u64).unwrap_or(0);
        }
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|p| *p < u).min(self.n - 1)
    }
}

/// Who the requests come from.
#[derive(Clone)]
pub enum Identity {
    /// Barbican's no-auth headers.
    NoAuth {
        /// X-Project-Id.
        project: String,
        /// X-Roles.
        roles: String,
        /// X-User-Id.
        user: String,
    },
    /// A Keystone token (X-Auth-Token).
    Token(String),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::NoAuth { project, roles, user } => {
                write!(f, "NoAuth({project}, {roles}, {user})")
            }
            // A token is a credential: never printed.
            Identity::Token(_) => f.write_str("Token(..)"),
        }
    }
}

impl std::fmt::Debug for Barbican {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barbican")
            .field("base", &self.base)
            .field("identity", &self.identity)
            .field("pool", &self.pool.len())
            .finish_non_exhaustive()
    }
}

/// A Barbican endpoint and a pool of secrets to fetch.
///
/// Each worker has a connection of its own ([`Session`]) and waits for each answer before it
/// sends again, as a client process does; no pool sits between them. The load generator then
/// costs the machine it shares with the server as little as it can.
pub struct Barbican {
    /// `http://host:port` or `https://host:port`, as given.
    base: String,
    /// `host:port`, to connect to and for the Host header.
    authority: String,
    /// For `https://`: the TLS client, and the name the server's certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    identity: Identity,
    /// Paths of the secrets made beforehand, with their payloads and the index of their
    /// project: every fetch is checked.
    pool: Vec<(String, [u8; 32], usize)>,
    next: AtomicUsize,
    /// With no-auth identity, requests spread over this many projects (`{project}-{i}`).
    projects: usize,
    picker: Picker,
}

/// One worker's connection, made when first needed and again after the server closes it.
#[derive(Default)]
pub struct Session {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("connected", &self.sender.is_some()).finish()
    }
}

type Response = (StatusCode, Bytes);

impl Barbican {
    /// A client for `base` (`http://host:port`, or `https://host:port` whose certificate is
    /// checked against the CAs of the PEM file `ca`).
    pub fn new(base: &str, identity: Identity, ca: Option<&Path>) -> anyhow::Result<Barbican> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().with_context(|| format!("{base:?} is not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => bail!("{base}: only http:// and https:// endpoints can be loaded"),
        };
        let authority = uri.authority().context("the URL has no host")?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{}:{default_port}", authority.host()),
        };
        let tls = match (tls, ca) {
            (false, None) => None,
            (false, Some(_)) => bail!("{base}: --ca is for https:// endpoints"),
            (true, None) => bail!(
                "{base}: an https:// endpoint needs --ca, the PEM file of the CA that issued \
                 its certificate"
            ),
            (true, Some(ca)) => {
                let name = ServerName::try_from(host)
                    .with_context(|| format!("{base}: not a host name for TLS"))?;
                Some((TlsConnector::from(client_config(ca)?), name))
            }
        };
        Ok(Barbican {
            base,
            authority,
            tls,
            identity,
            pool: Vec::new(),
            next: AtomicUsize::new(0),
            projects: 1,
            picker: Picker::new(1, Access::Uniform),
        })
    }

    /// Spreads the fetch scenarios over `projects` projects (no-auth identity only), each
    /// request's picked by `access`; secret-store and order requests go to the first.
    pub fn spread(&mut self, projects: usize, access: Access) -> anyhow::Result<()> {
        if projects > 1 && matches!(self.identity, Identity::Token(_)) {
            bail!("--projects needs no-auth identity: a Keystone token names one project");
        }
        self.projects = projects.max(1);
        self.picker = Picker::new(self.projects, access);
        Ok(())
    }

    /// The no-auth project of index `i` when requests are spread; `None` for the identity's
    /// own.
    fn project(&self, i: usize) -> Option<String> {
        match &self.identity {
            Identity::NoAuth { project, .. } if self.projects > 1 => Some(format!("{project}-{i}")),
            _ => None,
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {}", self.authority))?;
        stream.set_nodelay(true)?;
        match &self.tls {
            None => handshake(stream).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS handshake with {}", self.authority))?;
                handshake(stream).await
            }
        }
    }

    async fn send(
        &self,
        session: &mut Session,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response> {
        self.send_as(session, None, method, path, accept, body).await
    }

    /// [`Barbican::send`], in no-auth `project` when given.
    async fn send_as(
        &self,
        session: &mut Session,
        project: Option<&str>,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response> {
        let mut sender = match session.sender.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        // A connection the server has closed since its last answer: nothing was sent on it.
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
            sender.ready().await?;
        }
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(ACCEPT, accept);
        request = match &self.identity {
            Identity::NoAuth { project: own, roles, user } => request
                .header("X-Project-Id", project.unwrap_or(own))
                .header("X-Roles", roles)
                .header("X-User-Id", user),
            Identity::Token(token) => request.header("X-Auth-Token", token),
        };
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Servers that answer one request per connection (gunicorn's sync workers) say so.
        let closing = response.version() != Version::HTTP_11
            || response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let bytes = response.into_body().collect().await?.to_bytes();
        if !closing {
            session.sender = Some(sender);
        }
        Ok((status, bytes))
    }

    /// Stores one 32-byte key; the path of its reference, and the key.
    async fn store(&self, session: &mut Session) -> Result<(String, [u8; 32]), String> {
        self.store_in(session, None).await
    }

    /// [`Barbican::store`] in no-auth `project` when given.
    async fn store_in(
        &self,
        session: &mut Session,
        project: Option<&str>,
    ) -> Result<(String, [u8; 32]), String> {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let body = serde_json::json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(key),
            "payload_content_type": "application/octet-stream",
            "payload_content_encoding": "base64",
            "secret_type": "symmetric",
            "algorithm": "aes",
            "bit_length": 256,
            "mode": "xts",
        });
        let body = Some(body.to_string());
        let (status, body) = self
            .send_as(session, project, Method::POST, "/v1/secrets", "application/json", body)
            .await
            .map_err(transport)?;
        if status != StatusCode::CREATED {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        Ok((reference(&body, "secret_ref")?, key))
    }

    /// Makes the pool of secrets the fetch scenarios read: at least one per project, secret
    /// `i` in project `i % projects`.
    pub async fn fill_pool(&mut self, size: usize) -> anyhow::Result<()> {
        let size = size.max(self.projects);
        let mut session = Session::default();
        let mut pool = Vec::with_capacity(size);
        for i in 0..size {
            let project = i % self.projects;
            let (path, key) = self
                .store_in(&mut session, self.project(project).as_deref())
                .await
                .map_err(anyhow::Error::msg)
                .context("storing the pool of secrets")?;
            pool.push((path, key, project));
        }
        self.pool = pool;
        Ok(())
    }

    /// The next secret to fetch: in turn with one project, else from a project drawn by the
    /// access pattern.
    fn pick(&self) -> Result<&(String, [u8; 32], usize), String> {
        if self.pool.is_empty() {
            return Err("no secrets in the pool".into());
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let i = if self.projects > 1 {
            // The project's secrets are project, project + projects, ...
            let project = self.picker.next();
            let per_project = self.pool.len().div_ceil(self.projects);
            let k = turn % per_project;
            let i = project + k * self.projects;
            if i < self.pool.len() { i } else { project }
        } else {
            turn % self.pool.len()
        };
        self.pool.get(i).ok_or_else(|| "pool index out of range".to_owned())
    }

    /// Runs one request of `scenario` on the worker's `session`.
    pub async fn run(&self, session: &mut Session, scenario: Scenario) -> Result<u64, String> {
        match scenario {
            Scenario::SecretStore => self.store(session).await.map(|_| 1),
            Scenario::PayloadGet => {
                let (secret, key, project) = self.pick()?;
                let path = format!("{secret}/payload");
                let project = self.project(*project);
                let (status, body) = self
                    .send_as(
                        session,
                        project.as_deref(),
                        Method::GET,
                        &path,
                        "application/octet-stream",
                        None,
                    )
                    .await
                    .map_err(transport)?;
                match status {
                    StatusCode::OK if body.as_ref() == key.as_slice() => Ok(1),
                    // Counted apart from every other error: the one that must never happen.
                    StatusCode::OK => Err(WRONG_PAYLOAD.into()),
                    s => Err(format!("HTTP {}", s.as_u16())),
                }
            }
            Scenario::MetadataGet => {
                let (path, _, project) = self.pick()?;
                let project = self.project(*project);
                let (status, _) = self
                    .send_as(
                        session,
                        project.as_deref(),
                        Method::GET,
                        path,
                        "application/json",
                        None,
                    )
                    .await
                    .map_err(transport)?;
                if status == StatusCode::OK {
                    Ok(1)
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }
            Scenario::Order => self.order(session).await,
        }
    }

    async fn order(&self, session: &mut Session) -> Result<u64, String> {
        let body = serde_json::json!({
            "type": "key",
            "meta": {"algorithm": "aes", "bit_length": 256, "mode": "cbc",
                     "payload_content_type": "application/octet-stream"},
        });
        let (status, body) = self
            .send(session, Method::POST, "/v1/orders", "application/json", Some(body.to_string()))
            .await
            .map_err(transport)?;
        if status != StatusCode::ACCEPTED {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let order = reference(&body, "order_ref")?;
        for _ in 0..6000 {
            let (status, body) = self
                .send(session, Method::GET, &order, "application/json", None)
                .await
                .map_err(transport)?;
            if status != StatusCode::OK {
                return Err(format!("HTTP {} polling the order", status.as_u16()));
            }
            let value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| "order is not JSON".to_owned())?;
            match value["status"].as_str() {
                Some("ACTIVE") => return Ok(1),
                Some("ERROR") => return Err("order ERROR".into()),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        Err("order not ACTIVE after 30 s".into())
    }

    /// Checks the endpoint answers as Barbican does.
    pub async fn check(&self) -> anyhow::Result<()> {
        let mut session = Session::default();
        let (status, _) = self
            .send(&mut session, Method::GET, "/v1/secrets?limit=1", "application/json", None)
            .await?;
        if status != StatusCode::OK {
            bail!("GET {}/v1/secrets answered {status}; check the URL and the identity", self.base);
        }
        Ok(())
    }
}

/// The HTTP/1.1 client side of a connection.
async fn handshake(
    io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.context("HTTP handshake")?;
    // Ends with the connection; an error then shows on the next request.
    tokio::spawn(connection);
    Ok(sender)
}

/// TLS 1.2 or 1.3, ALPN `http/1.1`, servers checked against the CAs of the PEM file `ca`.
fn client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no PEM certificate in the file", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn transport(e: anyhow::Error) -> String {
    format!("transport: {}", e.root_cause())
}

/// The path (and query) of the reference in `field` of a JSON answer: requests go to the
/// endpoint given, whatever host the server writes into its references.
fn reference(body: &[u8], field: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_owned())?;
    let href = value[field].as_str().ok_or_else(|| format!("no {field} in the answer"))?;
    let uri: Uri = href.parse().map_err(|_| format!("{field} {href:?} is not a URL"))?;
    uri.path_and_query()
        .map(|p| p.as_str().to_owned())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| format!("{field} {href:?} has no path"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use std::sync::Arc;

    use super::*;

    #[test]
    fn zipf_favours_low_ranks_as_its_exponent_says_and_uniform_does_not() {
        let draws = 200_000;
        let count = |picker: &Picker| {
            let mut counts = vec![0usize; picker.n];
            for _ in 0..draws {
                counts[picker.next()] += 1;
            }
            counts
        };
        // s = 1 over 100 ranks: rank 1 has 1/H(100) = 19.3 % of draws, rank 2 half of that.
        let zipf = count(&Picker::new(100, Access::Zipf(1.0)));
        let first = zipf[0] as f64 / draws as f64;
        assert!((first - 0.193).abs() < 0.01, "{first}");
        let ratio = zipf[0] as f64 / zipf[1] as f64;
        assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
        let uniform = count(&Picker::new(100, Access::Uniform));
        assert!(uniform.iter().all(|c| (1_600..2_400).contains(c)), "{uniform:?}");
    }

    #[test]
    fn scenarios_parse() {
        for s in ["secret-store", "payload-get", "metadata-get", "order"] {
            assert_eq!(s.parse::<Scenario>().unwrap().to_string(), s);
        }
        assert!("payload".parse::<Scenario>().unwrap_err().contains("payload-get"));
    }

    #[test]
    fn references_become_paths_on_the_endpoint_given() {
        // Whatever host the server names (its own idea of its address), the path is kept.
        assert_eq!(
            reference(br#"{"secret_ref": "http://x:9311/v1/secrets/1"}"#, "secret_ref").unwrap(),
            "/v1/secrets/1"
        );
        assert_eq!(
            reference(br#"{"order_ref": "https://kms.example/v1/orders/2?a=b"}"#, "order_ref")
                .unwrap(),
            "/v1/orders/2?a=b"
        );
        assert!(reference(b"nope", "secret_ref").unwrap_err().contains("not JSON"));
        assert!(reference(br#"{"x": 1}"#, "secret_ref").unwrap_err().contains("no secret_ref"));
        assert!(
            reference(br#"{"secret_ref": ""}"#, "secret_ref").unwrap_err().contains("not a URL")
        );
    }

    /// A server that answers every request on a connection of its own, as gunicorn's sync
    /// workers do: `Connection: close`, then it closes. Creations get a reference, other
    /// requests an empty list. Returns its address and how many requests it has answered.
    async fn one_request_per_connection() -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Head, then as much body as it announces.
                let complete = |r: &[u8]| {
                    let text = String::from_utf8_lossy(r);
                    text.find("\r\n\r\n").is_some_and(|end| {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        r.len() >= end + 4 + length
                    })
                };
                while !complete(&request) {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed before its request was complete");
                    request.extend_from_slice(&buf[..n]);
                }
                let (status, body) = if request.starts_with(b"POST") {
                    ("201 Created", r#"{"secret_ref": "http://elsewhere:1/v1/secrets/x"}"#)
                } else {
                    ("200 OK", r#"{"secrets": [], "total": 0}"#)
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        (addr, answered)
    }

    #[tokio::test]
    async fn servers_that_close_after_each_answer_are_loaded_on_new_connections() {
        let (addr, answered) = one_request_per_connection().await;
        let mut b =
            Barbican::new(&format!("http://{addr}"), Identity::Token("t".into()), None).unwrap();
        b.check().await.unwrap();
        b.fill_pool(5).await.unwrap();
        assert_eq!(b.pool.len(), 5);
        assert!(b.pool.iter().all(|(path, _, _)| path == "/v1/secrets/x"), "{:?}", b.pool);
        let mut session = Session::default();
        for _ in 0..5 {
            assert_eq!(b.run(&mut session, Scenario::SecretStore).await, Ok(1));
        }
        // This server answers every GET with a listing: never the stored key.
        let wrong = b.run(&mut session, Scenario::PayloadGet).await;
        assert_eq!(wrong, Err(WRONG_PAYLOAD.to_owned()));
        assert_eq!(answered.load(Ordering::SeqCst), 12);
    }

    #[test]
    fn endpoints_are_http_or_https_urls_with_a_host() {
        let identity = || Identity::Token("t".into());
        let b = Barbican::new("http://127.0.0.1:9311/", identity(), None).unwrap();
        assert_eq!(
            (b.base.as_str(), b.authority.as_str()),
            ("http://127.0.0.1:9311", "127.0.0.1:9311")
        );
        assert!(b.tls.is_none());
        assert_eq!(Barbican::new("http://kms", identity(), None).unwrap().authority, "kms:80");
        let ftp = Barbican::new("ftp://kms:9311", identity(), None).unwrap_err().to_string();
        assert!(ftp.contains("only http:// and https://"), "{ftp}");
        assert!(Barbican::new("not a url", identity(), None).is_err());

        let no_ca = Barbican::new("https://kms:9311", identity(), None).unwrap_err().to_string();
        assert!(no_ca.contains("needs --ca"), "{no_ca}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = pki::CertificateAuthority::new("bench CA").unwrap().cert_pem();
        std::fs::write(&ca, pem).unwrap();
        let b = Barbican::new("https://kms", identity(), Some(&ca)).unwrap();
        assert_eq!(b.authority, "kms:443");
        assert_eq!(b.tls.as_ref().unwrap().1, ServerName::try_from("kms").unwrap());
        let b = Barbican::new("https://[::1]:9311", identity(), Some(&ca)).unwrap();
        assert_eq!(b.tls.unwrap().1, ServerName::try_from("::1").unwrap());
        let plain = Barbican::new("http://kms", identity(), Some(&ca)).unwrap_err().to_string();
        assert!(plain.contains("--ca is for https://"), "{plain}");
        std::fs::write(&ca, "not PEM").unwrap();
        let empty = Barbican::new("https://kms", identity(), Some(&ca)).unwrap_err().to_string();
        assert!(empty.contains("no PEM certificate"), "{empty}");
    }
}
