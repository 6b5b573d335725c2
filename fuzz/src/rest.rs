//! The appliance's REST layer: [`appliance::api::handle`] called directly, as the server calls
//! it once hyper has parsed a request, on an app with a SQLite database of its own and an HSM
//! proxy that cannot be reached (every HSM step fails fast, as when the proxy is down).
//!
//! Input: a request as text, the way it would cross the wire:
//!
//! ```text
//! METHOD /path?query
//! Header-Name: value
//!
//! body
//! ```
//!
//! A leading `!` makes the connection HTTPS from a trusted proxy (its `X-Forwarded-*` headers
//! believed); otherwise it is plain HTTP from an untrusted peer.
//! `{secret}` and `{container}` in the target, headers or body stand for a secret and a
//! container that exist (project `p1`), so that inputs reach the handlers of one resource and
//! not only its 404. Each answer must be a well-formed Barbican answer: a 2xx-5xx status,
//! the request-id header, JSON where JSON is announced, and every error a JSON body with
//! `code` (the status), a non-empty `title` and a `description`; the one exception is the page
//! Barbican's no-auth middleware (webob) answers for a missing `X-Project-Id`, which the
//! appliance copies in both of webob's forms.

use std::sync::{Arc, OnceLock};

use appliance::App;
use appliance::api::{Request, handle};
use hsm_proxy_proto::SecretBytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri};

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
    secret: String,
    container: String,
    /// Holds the database and the PKI files for the life of the process.
    _dir: tempfile::TempDir,
}

const HOST: &str = "kms.fuzz:9311";

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| match build() {
        Ok(h) => h,
        Err(e) => panic!("building the fuzzed appliance failed: {e}"),
    })
}

fn build() -> Result<Harness, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pki = pki::write_bundle(&dir.path().join("pki"), &["hsm-proxy"], "appliance")?;
    // Port 1 on loopback refuses at once: the proxy is down, and HSM steps fail quickly.
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
max_connections = 2
[hsm]
endpoints = ["127.0.0.1:1"]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
connect_timeout_ms = 50
request_timeout_ms = 100
[identity]
source = "noauth"
allow_noauth = true
"#,
        db = dir.path().join("appliance.db").display(),
        ca = pki.ca_cert.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    );
    let path = dir.path().join("appliance.toml");
    std::fs::write(&path, config)?;
    let config = appliance::config::Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let app = runtime.block_on(appliance::build(&config))?;
    let mut h =
        Harness { runtime, app, secret: String::new(), container: String::new(), _dir: dir };
    h.secret =
        h.create("/v1/secrets", r#"{"name": "fuzz", "secret_type": "opaque"}"#, "secret_ref")?;
    let container = format!(
        r#"{{"type": "generic", "name": "fuzz", "secret_refs": [{{"name": "s", "secret_ref": "http://{HOST}/v1/secrets/{}"}}]}}"#,
        h.secret
    );
    h.container = h.create("/v1/containers", &container, "container_ref")?;
    Ok(h)
}

impl Harness {
    /// Creates a resource as an admin of `p1` and returns its id.
    fn create(&self, path: &str, body: &str, field: &str) -> Result<String, String> {
        let input = format!(
            "POST {path}\nHost: {HOST}\nContent-Type: application/json\nX-Project-Id: p1\n\
             X-User-Id: u1\nX-Roles: admin,member,reader\n\n{body}"
        );
        let Some(request) = parse(input.as_bytes(), self) else {
            return Err(format!("setup request {path} does not parse"));
        };
        let response = self.runtime.block_on(handle(&self.app, request));
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
        let reference = json[field].as_str().ok_or_else(|| format!("{path}: {json}"))?;
        Ok(reference.rsplit('/').next().unwrap_or_default().to_owned())
    }
}

/// `{secret}` and `{container}` replaced by the ids of the resources that exist.
fn substitute(bytes: &[u8], h: &Harness) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|b| *b == b'{') {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
        if let Some(tail) = rest.strip_prefix(b"{secret}") {
            out.extend_from_slice(h.secret.as_bytes());
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix(b"{container}") {
            out.extend_from_slice(h.container.as_bytes());
            rest = tail;
        } else {
            out.push(b'{');
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The request hyper would hand over for `data`, or `None` where hyper itself would refuse
/// it (an invalid method, target, header name or value) before the API sees it.
fn parse(data: &[u8], h: &Harness) -> Option<Request> {
    let (trusted, data) = match data.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = substitute(head, h);
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let space = first.iter().position(|b| *b == b' ')?;
    let method = Method::from_bytes(&first[..space]).ok()?;
    let uri = Uri::try_from(&first[space + 1..]).ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = line[colon + 1..].trim_ascii();
        headers.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    let body = substitute(body, h);
    let max = appliance::api::DEFAULT_MAX_REQUEST_BYTES;
    let body_too_large = body.len() > max;
    Some(Request {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: SecretBytes::copy_from(&body[..body.len().min(max)]),
        body_too_large,
        scheme: if trusted { "https" } else { "http" },
        trust_forwarded: trusted,
    })
}

/// Sends one request through the API and checks the answer's shape.
pub fn run(data: &[u8]) {
    let h = harness();
    let Some(request) = parse(data, h) else { return };
    let method = request.method.clone();
    let response = h.runtime.block_on(handle(&h.app, request));
    let status = response.status;
    let context =
        || format!("{method} answered {status}: {}", String::from_utf8_lossy(&response.body));
    assert!((200..600).contains(&status.as_u16()), "status out of range: {}", context());
    assert!(
        response.headers.contains_key("x-openstack-request-id"),
        "no request id: {}",
        context()
    );
    let json_announced = response
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json_announced && !response.body.is_empty() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&response.body).is_ok(),
            "JSON announced, not sent: {}",
            context()
        );
    }
    if status.is_client_error() || status.is_server_error() {
        check_error(status, &response.body, &context);
    }
}

fn check_error(status: StatusCode, body: &[u8], context: &dyn Fn() -> String) {
    if status == StatusCode::BAD_REQUEST && is_missing_project_page(body) {
        return;
    }
    let Ok(serde_json::Value::Object(error)) = serde_json::from_slice(body) else {
        panic!("an error without a JSON object body: {}", context());
    };
    assert_eq!(
        error.get("code").and_then(|c| c.as_u64()),
        Some(u64::from(status.as_u16())),
        "{}",
        context()
    );
    assert!(
        error.get("title").and_then(|t| t.as_str()).is_some_and(|t| !t.is_empty()),
        "an error without a title: {}",
        context()
    );
    assert!(error.get("description").is_some_and(|d| d.is_string()), "{}", context());
}

/// Webob's 400 page for a missing `X-Project-Id`: plain text, or its JSON form (whose `code`
/// is the status line, not a number).
fn is_missing_project_page(body: &[u8]) -> bool {
    const MARK: &str = "Missing X-Project-Id";
    if body.starts_with(b"400 Bad Request\n\n") {
        return String::from_utf8_lossy(body).contains(MARK);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(page) => {
            page["code"] == "400 Bad Request"
                && page["title"] == "Bad Request"
                && page["message"].as_str().is_some_and(|m| m.contains(MARK))
        }
        Err(_) => false,
    }
}
