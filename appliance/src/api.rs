//! The Barbican v1 REST API: routing, identity, microversions, and the pieces every handler
//! shares. Handlers live in a module per Barbican resource.
//!
//! [`handle`] is a plain async function from a request (body already read) to a response, so
//! tests drive it in-process and `server` puts it behind hyper.

mod acls;
mod body;
mod consumers;
mod containers;
pub(crate) mod error;
mod health;
mod orders;
mod quotas;
mod secretmeta;
pub(crate) mod secrets;
mod secretstores;
mod transportkeys;
mod versions;

use hsm_proxy_proto::SecretBytes;
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

pub use crate::api::error::ApiError;
use crate::identity::{Identity, IdentityError};
pub use crate::service::App;
use appliance_store::EntityKind;

/// Highest microversion served: `key-manager 1.2`.
const MAX_MINOR: u8 = 2;
pub use crate::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_SECRET_BYTES};

/// A request whose body has been read (up to the configured limit).
#[derive(Debug)]
pub struct Request {
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body; wiped when the request is dropped (it may hold a payload).
    pub body: SecretBytes,
    /// The body was longer than `max_request_bytes` and was not read in full.
    pub body_too_large: bool,
    /// `http` or `https`, as the connection was made.
    pub scheme: &'static str,
    /// The peer is a trusted proxy (`[server] trusted_proxies`): its X-Forwarded-Host and
    /// X-Forwarded-Proto name the server in hrefs. False: they are ignored.
    pub trust_forwarded: bool,
}

/// A response ready to be sent.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body; payloads come back in a buffer that is wiped once sent.
    pub body: Bytes,
}

/// What a handler answers.
pub(crate) enum Reply {
    Json(StatusCode, serde_json::Value),
    /// Raw bytes with their content type (payloads), wiped once sent.
    Payload(StatusCode, &'static str, zeroize::Zeroizing<Vec<u8>>),
    Empty(StatusCode),
}

pub(crate) type Outcome = Result<(Reply, Vec<(HeaderName, String)>), ApiError>;

/// One request being answered.
pub(crate) struct Call<'a> {
    pub(crate) app: &'a App,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: &'a [u8],
    pub(crate) body_too_large: bool,
    /// `http` or `https`, as the connection was made.
    scheme: &'a str,
    /// X-Forwarded-* come from a trusted proxy.
    trust_forwarded: bool,
    /// What [`Call::base`] answers, made on first use: most answers have no href.
    base: std::sync::OnceLock<String>,
    pub(crate) minor: u8,
    pub(crate) identity: Option<Identity>,
}

impl Call<'_> {
    /// `{scheme}://{host}` of the server as clients reach it: the base of every href.
    pub(crate) fn base(&self) -> &str {
        match &self.app.settings.host_href {
            Some(href) => href,
            None => {
                self.base.get_or_init(|| base_url(self.headers, self.scheme, self.trust_forwarded))
            }
        }
    }

    /// The first value of a query parameter.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The caller; every `/v1` route has one.
    pub(crate) fn identity(&self) -> &Identity {
        // `route` authenticates before any /v1 handler runs.
        static NOBODY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        self.identity.as_ref().unwrap_or_else(|| NOBODY.get_or_init(Identity::nobody))
    }

    /// The media type of the request body, lower-case, parameters dropped.
    pub(crate) fn content_type(&self) -> Option<String> {
        self.header("content-type").map(media_type)
    }

    /// Requires a JSON body (415 otherwise).
    pub(crate) fn require_json(&self) -> Result<(), ApiError> {
        match self.content_type().as_deref() {
            Some("application/json") => Ok(()),
            _ => Err(ApiError::unsupported_media(&["application/json"])),
        }
    }
}

/// The media type of a Content-Type or Accept value: lower-case, parameters dropped.
pub(crate) fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Answers one request.
pub async fn handle(app: &App, req: Request) -> Response {
    let request_id = request_id(&req.headers);
    let (mut response, minor) = match microversion(&req.headers) {
        Ok(minor) => (route(app, &req, minor).await, minor),
        Err(error) => (error_response(&error), 0),
    };
    stamp(&mut response.headers, &request_id, minor);
    response
}

/// An answer the server gives before any handler runs (a body that did not arrive whole, a
/// connection over the limit): Barbican's error body and the headers every answer carries.
pub(crate) fn refusal(request: &HeaderMap, status: StatusCode, description: &str) -> Response {
    let mut response = error_response(&ApiError::new(status, description));
    stamp(&mut response.headers, &request_id(request), microversion(request).unwrap_or(0));
    response
}

/// The headers every answer carries.
fn stamp(headers: &mut HeaderMap, request_id: &str, minor: u8) {
    insert(headers, "x-openstack-request-id", request_id);
    insert(headers, "openstack-api-version", &format!("key-manager 1.{minor}"));
    insert(headers, "vary", "OpenStack-API-Version");
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The caller's request id when it has the right form, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get("x-openstack-request-id").and_then(|v| v.to_str().ok());
    match given {
        Some(id) if id.strip_prefix("req-").is_some_and(|u| uuid::Uuid::parse_str(u).is_ok()) => {
            id.to_owned()
        }
        _ => format!("req-{}", uuid::Uuid::new_v4()),
    }
}

/// The `key-manager` microversion asked for: 400 if unparsable, 406 if unsupported.
fn microversion(headers: &HeaderMap) -> Result<u8, ApiError> {
    let mut minor = 0;
    for value in headers.get_all("openstack-api-version") {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',') {
            let mut words = entry.split_whitespace();
            let (Some(service), Some(version)) = (words.next(), words.next()) else { continue };
            if !service.eq_ignore_ascii_case("key-manager") {
                continue;
            }
            if version.eq_ignore_ascii_case("latest") {
                minor = MAX_MINOR;
                continue;
            }
            let parsed = version.split_once('.').and_then(|(major, minor)| {
                Some((major.parse::<u8>().ok()?, minor.parse::<u8>().ok()?))
            });
            minor = match parsed {
                Some((1, m)) if m <= MAX_MINOR => m,
                Some(_) => {
                    return Err(ApiError::new(
                        StatusCode::NOT_ACCEPTABLE,
                        format!("Invalid microversion: Unacceptable version header: {version}"),
                    ));
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid microversion: invalid version string: {version}"
                    )));
                }
            };
        }
    }
    Ok(minor)
}

/// `{scheme}://{host}` of the server as the request names it: its Host header, or, from a
/// trusted proxy, X-Forwarded-Host and X-Forwarded-Proto (the first entry of each, when well
/// formed).
fn base_url(headers: &HeaderMap, scheme: &str, trust_forwarded: bool) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let first = |name: &str| {
        header(name).and_then(|v| v.split(',').next()).map(str::trim).filter(|v| !v.is_empty())
    };
    let mut scheme = scheme;
    let mut host = header("host").unwrap_or("localhost");
    if trust_forwarded {
        match first("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => scheme = "https",
            Some(p) if p.eq_ignore_ascii_case("http") => scheme = "http",
            _ => {}
        }
        if let Some(h) = first("x-forwarded-host").filter(|h| is_authority(h)) {
            host = h;
        }
    }
    format!("{scheme}://{host}")
}

/// True for a `host[:port]` that can stand in a URL as it is: letters, digits, `.-_:` and the
/// brackets of an IPv6 literal.
fn is_authority(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

async fn route(app: &App, req: &Request, minor: u8) -> Response {
    let path = req.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = req
        .query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut call = Call {
        app,
        method: &req.method,
        headers: &req.headers,
        query,
        body: req.body.expose_secret(),
        body_too_large: req.body_too_large,
        scheme: req.scheme,
        trust_forwarded: req.trust_forwarded,
        base: std::sync::OnceLock::new(),
        minor,
        identity: None,
    };
    let outcome = match segments.as_slice() {
        [] => versions::root(&call),
        // oslo.middleware answers before Barbican's pipeline: no identity, no microversion.
        ["healthcheck"] => return health::healthcheck(&call).await,
        ["v1", rest @ ..] => match app.settings.identity.identify(&req.headers).await {
            Ok(identity) => {
                call.identity = Some(identity);
                v1(&call, rest).await
            }
            Err(refused) => return unidentified(&refused, &req.headers),
        },
        _ => Err(ApiError::not_found("The resource could not be found.")),
    };
    match outcome {
        Ok((reply, extra)) => {
            let mut response = match reply {
                Reply::Json(status, value) => json_response(status, &value),
                Reply::Payload(status, content_type, bytes) => {
                    let mut r = Response {
                        status,
                        headers: HeaderMap::new(),
                        body: Bytes::from_owner(bytes),
                    };
                    insert(&mut r.headers, "content-type", content_type);
                    r
                }
                Reply::Empty(status) => {
                    Response { status, headers: HeaderMap::new(), body: Bytes::new() }
                }
            };
            for (name, value) in extra {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers.insert(name, value);
                }
            }
            response
        }
        Err(error) => error_response(&error),
    }
}

/// The route templates requests are counted under in the metrics, numbered as
/// [`route_template`] numbers them; the last stands for every path no route matches, so that no
/// id (or anything else a client sends) becomes a label.
pub(crate) const ROUTES: &[&str] = &[
    "/",
    "/healthcheck",
    "/v1",
    "/v1/secrets",
    "/v1/secrets/{id}",
    "/v1/secrets/{id}/payload",
    "/v1/secrets/{id}/metadata",
    "/v1/secrets/{id}/metadata/{key}",
    "/v1/secrets/{id}/consumers",
    "/v1/secrets/{id}/consumers/{consumer_id}",
    "/v1/secrets/{id}/acl",
    "/v1/containers",
    "/v1/containers/{id}",
    "/v1/containers/{id}/secrets",
    "/v1/containers/{id}/consumers",
    "/v1/containers/{id}/consumers/{consumer_id}",
    "/v1/containers/{id}/acl",
    "/v1/orders",
    "/v1/orders/{id}",
    "/v1/quotas",
    "/v1/project-quotas",
    "/v1/project-quotas/{id}",
    "/v1/secret-stores",
    "/v1/secret-stores/global-default",
    "/v1/secret-stores/preferred",
    "/v1/secret-stores/{id}",
    "/v1/secret-stores/{id}/preferred",
    "/v1/transport_keys",
    "/v1/transport_keys/{id}",
    "other",
];

/// The index in [`ROUTES`] of the route `path` takes (as [`route`] and [`v1`] match it),
/// without allocating.
pub(crate) fn route_template(path: &str) -> usize {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let s: [Option<&str>; 5] = std::array::from_fn(|_| segments.next());
    match s {
        [None, ..] => 0,
        [Some("healthcheck"), None, ..] => 1,
        [Some("v1"), rest @ ..] => match rest {
            [None, ..] => 2,
            [Some("secrets"), None, ..] => 3,
            [Some("secrets"), Some(_), None, ..] => 4,
            [Some("secrets"), Some(_), Some("payload"), None] => 5,
            [Some("secrets"), Some(_), Some("metadata"), None] => 6,
            [Some("secrets"), Some(_), Some("metadata"), Some(_)] => 7,
            [Some("secrets"), Some(_), Some("consumers"), None] => 8,
            [Some("secrets"), Some(_), Some("consumers"), Some(_)] => 9,
            [Some("secrets"), Some(_), Some("acl"), None] => 10,
            [Some("containers"), None, ..] => 11,
            [Some("containers"), Some(_), None, ..] => 12,
            [Some("containers"), Some(_), Some("secrets"), None] => 13,
            [Some("containers"), Some(_), Some("consumers"), None] => 14,
            [Some("containers"), Some(_), Some("consumers"), Some(_)] => 15,
            [Some("containers"), Some(_), Some("acl"), None] => 16,
            [Some("orders"), None, ..] => 17,
            [Some("orders"), Some(_), None, ..] => 18,
            [Some("quotas"), None, ..] => 19,
            [Some("project-quotas"), None, ..] => 20,
            [Some("project-quotas"), Some(_), None, ..] => 21,
            [Some("secret-stores"), None, ..] => 22,
            [Some("secret-stores"), Some("global-default"), None, ..] => 23,
            [Some("secret-stores"), Some("preferred"), None, ..] => 24,
            [Some("secret-stores"), Some(_), None, ..] => 25,
            [Some("secret-stores"), Some(_), Some("preferred"), None] => 26,
            [Some("transport_keys"), None, ..] => 27,
            [Some("transport_keys"), Some(_), None, ..] => 28,
            _ => ROUTES.len() - 1,
        },
        _ => ROUTES.len() - 1,
    }
}

async fn v1(call: &Call<'_>, rest: &[&str]) -> Outcome {
    match rest {
        [] => versions::v1(call),
        ["secrets"] => match *call.method {
            Method::GET => secrets::list(call).await,
            Method::POST => secrets::create(call).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        ["secrets", id, sub @ ..] => {
            let secret = secrets::lookup(call, id).await?;
            match sub {
                [] => match *call.method {
                    Method::GET => secrets::get(call, &secret).await,
                    Method::PUT => secrets::put(call, &secret).await,
                    Method::DELETE => secrets::delete(call, &secret).await,
                    _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
                },
                ["payload"] => match *call.method {
                    Method::GET => secrets::payload(call, &secret, call.header("accept")).await,
                    _ => Err(ApiError::method_not_allowed("GET")),
                },
                ["metadata"] => secretmeta::collection(call, &secret).await,
                ["metadata", key] => secretmeta::item(call, &secret, key).await,
                ["consumers"] => consumers::collection(call, &secret).await,
                ["consumers", consumer_id] => {
                    consumers::single(call, consumer_id, "SecretConsumer retrieval").await
                }
                ["acl"] => {
                    let entity = acls::Entity {
                        of: crate::service::Entity {
                            kind: EntityKind::Secret,
                            id: &secret.id,
                            project_id: &secret.project_id,
                            creator_id: secret.creator_id.as_deref(),
                            has_read_acl: secret.has_read_acl,
                        },
                        reference: format!("{}/v1/secrets/{}", call.base(), secret.id),
                    };
                    acls::acl(call, entity).await
                }
                _ => Err(ApiError::not_found("The resource could not be found.")),
            }
        }
        ["containers"] => containers::collection(call).await,
        ["containers", id, sub @ ..] => {
            let container = containers::lookup(call, id).await?;
            containers::item(call, &container, sub).await
        }
        ["orders"] => orders::collection(call).await,
        ["orders", id, rest @ ..] => orders::item(call, id, rest).await,
        ["quotas"] => quotas::effective(call).await,
        ["project-quotas"] => quotas::project(call, None).await,
        ["project-quotas", id] => quotas::project(call, Some(id)).await,
        ["secret-stores", rest @ ..] => secretstores::route(call, rest).await,
        ["transport_keys"] => transportkeys::route(call, None).await,
        ["transport_keys", id] => transportkeys::route(call, Some(id)).await,
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

/// The answer to a request without an identity, as Barbican's middleware gives it.
fn unidentified(refused: &IdentityError, request: &HeaderMap) -> Response {
    match refused {
        IdentityError::MissingProject => missing_project(request),
        IdentityError::Unauthenticated { www_authenticate } => {
            let mut r = error_response(&ApiError::new(
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication.",
            ));
            insert(&mut r.headers, "www-authenticate", www_authenticate);
            r
        }
        IdentityError::Unavailable => error_response(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Authentication service unavailable, please retry later.",
        )),
    }
}

/// The error page Barbican's middleware (webob) answers when `X-Project-Id` is missing: plain
/// text, or webob's JSON form when the client accepts JSON.
fn missing_project(request: &HeaderMap) -> Response {
    const EXPLANATION: &str = "The server could not comply with the request since it is either malformed or otherwise incorrect.";
    let accept = request.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/json") {
        let value = serde_json::json!({
            "message": format!("{EXPLANATION}<br /><br />\nMissing X-Project-Id\n\n"),
            "code": "400 Bad Request",
            "title": "Bad Request",
        });
        return json_response(StatusCode::BAD_REQUEST, &value);
    }
    let body = format!("400 Bad Request\n\n{EXPLANATION}\n\n Missing X-Project-Id  ");
    let mut r =
        Response { status: StatusCode::BAD_REQUEST, headers: HeaderMap::new(), body: body.into() };
    insert(&mut r.headers, "content-type", "text/plain; charset=UTF-8");
    r
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = Response {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    };
    insert(&mut r.headers, "content-type", "application/json");
    r
}

fn error_response(error: &ApiError) -> Response {
    let mut r = json_response(error.status, &error.body());
    if let Some(allow) = error.allow {
        insert(&mut r.headers, "allow", allow);
    }
    r
}

pub(crate) use body::parse_json;

/// True when `value` is a canonical lower-case UUID (Barbican's id check).
pub(crate) fn is_uuid4(value: &str) -> bool {
    uuid::Uuid::parse_str(value)
        .is_ok_and(|u| u.get_version_num() == 4 && u.hyphenated().to_string() == value)
}

/// Reply helpers.
pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Outcome {
    Ok((Reply::Json(status, value), Vec::new()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    fn accepting(accept: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert("accept", HeaderValue::from_static(a));
        }
        h
    }

    #[test]
    fn every_route_template_is_found_from_a_path_of_its_shape() {
        for (index, template) in ROUTES.iter().enumerate().take(ROUTES.len() - 1) {
            let path = template
                .split('/')
                .map(
                    |s| if s.starts_with('{') { "3f1c2e9a-0000-4000-8000-000000000001" } else { s },
                )
                .collect::<Vec<_>>()
                .join("/");
            assert_eq!(route_template(&path), index, "{path}");
            assert_eq!(route_template(&format!("{path}/")), index, "{path}/");
        }
        for unknown in ["/v2", "/v1/secrets/x/payload/more", "/v1/orders/x/y", "/favicon.ico"] {
            assert_eq!(ROUTES[route_template(unknown)], "other", "{unknown}");
        }
    }

    #[test]
    fn a_missing_project_gets_webobs_page_in_text_or_json() {
        let r = unidentified(&IdentityError::MissingProject, &accepting(None));
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&r.body).ends_with("Missing X-Project-Id  "));
        assert_eq!(r.headers["content-type"], "text/plain; charset=UTF-8");
        let r = unidentified(&IdentityError::MissingProject, &accepting(Some("application/json")));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "400 Bad Request");
    }

    #[test]
    fn an_unauthenticated_caller_is_told_where_to_authenticate() {
        let refused = IdentityError::Unauthenticated {
            www_authenticate: "Keystone uri=\"http://keystone:5000\"".into(),
        };
        let r = unidentified(&refused, &accepting(None));
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers["www-authenticate"], "Keystone uri=\"http://keystone:5000\"");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], 401);
        let r = unidentified(&IdentityError::Unavailable, &accepting(None));
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
