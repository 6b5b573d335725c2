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
    let route = Route::of(&req.path);
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
    let outcome = match route.template {
        Template::Root => versions::root(&call),
        // oslo.middleware answers before Barbican's pipeline: no identity, no microversion.
        Template::Healthcheck => return health::healthcheck(&call).await,
        Template::Other => Err(ApiError::not_found("The resource could not be found.")),
        _ => match app.settings.identity.identify(&req.headers).await {
            Ok(identity) => {
                call.identity = Some(identity);
                v1(&call, route).await
            }
            Err(refused) => return unidentified(&refused, &req.headers),
        },
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

/// The route templates requests are counted under in the metrics, in [`Template`]'s order; the
/// last stands for every path no route takes, so that no id (or anything else a client sends)
/// becomes a label.
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

/// Which route a path takes. Up to `Other`, one per entry of [`ROUTES`], in its order; the rest
/// are paths no route takes that are still answered past the identity check or a lookup, as
/// Barbican answers them, and count as `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Template {
    Root,
    Healthcheck,
    V1,
    Secrets,
    Secret,
    SecretPayload,
    SecretMetadata,
    SecretMetadatum,
    SecretConsumers,
    SecretConsumer,
    SecretAcl,
    Containers,
    Container,
    ContainerSecrets,
    ContainerConsumers,
    ContainerConsumer,
    ContainerAcl,
    Orders,
    Order,
    Quotas,
    ProjectQuotas,
    ProjectQuota,
    SecretStores,
    GlobalDefaultStore,
    PreferredStore,
    SecretStore,
    SecretStorePreferred,
    TransportKeys,
    TransportKey,
    /// Outside `/v1`: 404 at once.
    Other,
    /// Under `/v1`: 404 once the caller is identified.
    V1Other,
    /// Below a secret, a container or an order: 404 once it is found (its own 404 if not).
    UnderSecret,
    UnderContainer,
    UnderOrder,
    /// Below `/v1/secret-stores`: the secret-store API's own refusal.
    UnderSecretStores,
}

impl Template {
    /// The index of the template in [`ROUTES`].
    pub(crate) fn index(self) -> usize {
        (self as usize).min(Template::Other as usize)
    }
}

/// A path's route: its template, and the ids the path holds in the template's places (`""`
/// where it has none). The one place paths are matched, for the router and for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route<'p> {
    pub(crate) template: Template,
    /// The first `{...}` of the template.
    pub(crate) id: &'p str,
    /// The second: a metadata key or a consumer id.
    pub(crate) sub_id: &'p str,
}

impl<'p> Route<'p> {
    /// Matches `path` (without its query; empty segments and a trailing `/` do not count),
    /// without allocating.
    pub(crate) fn of(path: &'p str) -> Route<'p> {
        use Template as T;
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        // One more than the longest route, so that a longer path is never taken for it.
        let s: [Option<&str>; 6] = std::array::from_fn(|_| segments.next());
        let (template, id, sub_id) = match s {
            [None, ..] => (T::Root, "", ""),
            [Some("healthcheck"), None, ..] => (T::Healthcheck, "", ""),
            [Some("v1"), rest @ ..] => match rest {
                [None, ..] => (T::V1, "", ""),
                [Some("secrets"), None, ..] => (T::Secrets, "", ""),
                [Some("secrets"), Some(id), rest @ ..] => match rest {
                    [None, ..] => (T::Secret, id, ""),
                    [Some("payload"), None, ..] => (T::SecretPayload, id, ""),
                    [Some("metadata"), None, ..] => (T::SecretMetadata, id, ""),
                    [Some("metadata"), Some(key), None] => (T::SecretMetadatum, id, key),
                    [Some("consumers"), None, ..] => (T::SecretConsumers, id, ""),
                    [Some("consumers"), Some(c), None] => (T::SecretConsumer, id, c),
                    [Some("acl"), None, ..] => (T::SecretAcl, id, ""),
                    _ => (T::UnderSecret, id, ""),
                },
                [Some("containers"), None, ..] => (T::Containers, "", ""),
                [Some("containers"), Some(id), rest @ ..] => match rest {
                    [None, ..] => (T::Container, id, ""),
                    [Some("secrets"), None, ..] => (T::ContainerSecrets, id, ""),
                    [Some("consumers"), None, ..] => (T::ContainerConsumers, id, ""),
                    [Some("consumers"), Some(c), None] => (T::ContainerConsumer, id, c),
                    [Some("acl"), None, ..] => (T::ContainerAcl, id, ""),
                    _ => (T::UnderContainer, id, ""),
                },
                [Some("orders"), None, ..] => (T::Orders, "", ""),
                [Some("orders"), Some(id), None, ..] => (T::Order, id, ""),
                [Some("orders"), Some(id), ..] => (T::UnderOrder, id, ""),
                [Some("quotas"), None, ..] => (T::Quotas, "", ""),
                [Some("project-quotas"), None, ..] => (T::ProjectQuotas, "", ""),
                [Some("project-quotas"), Some(id), None, ..] => (T::ProjectQuota, id, ""),
                [Some("secret-stores"), rest @ ..] => match rest {
                    [None, ..] => (T::SecretStores, "", ""),
                    [Some("global-default"), None, ..] => (T::GlobalDefaultStore, "", ""),
                    [Some("preferred"), None, ..] => (T::PreferredStore, "", ""),
                    [Some(id), None, ..] => (T::SecretStore, id, ""),
                    [Some(id), Some("preferred"), None, ..] => (T::SecretStorePreferred, id, ""),
                    _ => (T::UnderSecretStores, "", ""),
                },
                [Some("transport_keys"), None, ..] => (T::TransportKeys, "", ""),
                [Some("transport_keys"), Some(id), None, ..] => (T::TransportKey, id, ""),
                _ => (T::V1Other, "", ""),
            },
            _ => (T::Other, "", ""),
        };
        Route { template, id, sub_id }
    }
}

/// The index in [`ROUTES`] of the route `path` takes.
pub(crate) fn route_template(path: &str) -> usize {
    Route::of(path).template.index()
}

async fn v1(call: &Call<'_>, route: Route<'_>) -> Outcome {
    use Template as T;
    let Route { template, id, sub_id } = route;
    match template {
        T::V1 => versions::v1(call),
        T::Secrets => match *call.method {
            Method::GET => secrets::list(call).await,
            Method::POST => secrets::create(call).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        T::Secret
        | T::SecretPayload
        | T::SecretMetadata
        | T::SecretMetadatum
        | T::SecretConsumers
        | T::SecretConsumer
        | T::SecretAcl
        | T::UnderSecret => {
            let secret = secrets::lookup(call, id).await?;
            match template {
                T::Secret => match *call.method {
                    Method::GET => secrets::get(call, &secret).await,
                    Method::PUT => secrets::put(call, &secret).await,
                    Method::DELETE => secrets::delete(call, &secret).await,
                    _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
                },
                T::SecretPayload => match *call.method {
                    Method::GET => secrets::payload(call, &secret, call.header("accept")).await,
                    _ => Err(ApiError::method_not_allowed("GET")),
                },
                T::SecretMetadata => secretmeta::collection(call, &secret).await,
                T::SecretMetadatum => secretmeta::item(call, &secret, sub_id).await,
                T::SecretConsumers => consumers::collection(call, &secret).await,
                T::SecretConsumer => {
                    consumers::single(call, sub_id, "SecretConsumer retrieval").await
                }
                T::SecretAcl => {
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
        T::Containers => containers::collection(call).await,
        T::Container
        | T::ContainerSecrets
        | T::ContainerConsumers
        | T::ContainerConsumer
        | T::ContainerAcl
        | T::UnderContainer => {
            let container = containers::lookup(call, id).await?;
            containers::item(call, &container, template, sub_id).await
        }
        T::Orders => orders::collection(call).await,
        T::Order | T::UnderOrder => orders::item(call, id, template == T::UnderOrder).await,
        T::Quotas => quotas::effective(call).await,
        T::ProjectQuotas => quotas::project(call, None).await,
        T::ProjectQuota => quotas::project(call, Some(id)).await,
        T::SecretStores
        | T::GlobalDefaultStore
        | T::PreferredStore
        | T::SecretStore
        | T::SecretStorePreferred
        | T::UnderSecretStores => secretstores::route(call, template, id).await,
        T::TransportKeys => transportkeys::route(call, None).await,
        T::TransportKey => transportkeys::route(call, Some(id)).await,
        T::Root | T::Healthcheck | T::Other | T::V1Other => {
            Err(ApiError::not_found("The resource could not be found."))
        }
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
        for unknown in [
            "/v2",
            "/v1/secrets/x/payload/more",
            "/v1/secrets/x/consumers/y/z",
            "/v1/secrets/x/metadata/k/a/b/c",
            "/v1/orders/x/y",
            "/v1/nothing",
            "/favicon.ico",
        ] {
            assert_eq!(ROUTES[route_template(unknown)], "other", "{unknown}");
        }
    }

    #[test]
    fn a_route_holds_the_ids_and_says_what_answers_a_path_it_does_not_take() {
        let route = Route::of("//v1/secrets/s-1/metadata/colour/");
        assert_eq!(
            route,
            Route { template: Template::SecretMetadatum, id: "s-1", sub_id: "colour" }
        );
        let route = Route::of("/v1/containers/c-1/consumers/k-2");
        assert_eq!(
            (route.template, route.id, route.sub_id),
            (Template::ContainerConsumer, "c-1", "k-2")
        );
        // Barbican looks the resource up before it refuses the rest of the path.
        assert_eq!(Route::of("/v1/secrets/s-1/payload/x").template, Template::UnderSecret);
        assert_eq!(Route::of("/v1/secrets/s-1/payload/x").id, "s-1");
        assert_eq!(Route::of("/v1/containers/c-1/x").template, Template::UnderContainer);
        assert_eq!(Route::of("/v1/orders/o-1/x/y").template, Template::UnderOrder);
        assert_eq!(Route::of("/v1/secret-stores/a/b").template, Template::UnderSecretStores);
        assert_eq!(Route::of("/v1/secret-stores/global-default/preferred").id, "global-default");
        assert_eq!(Route::of("/v1/transport_keys/a/b").template, Template::V1Other);
        assert_eq!(Route::of("/v2/secrets").template, Template::Other);
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
