//! What the metrics listener answers: `GET /metrics` in Prometheus's text format. The listener
//! is the server's ([`crate::server::start_metrics`]), on an address of its own (`[metrics]
//! listen`, loopback by default), apart from the API's, its connection limit and its logs.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};

use crate::service::App;

/// Prometheus's text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to a request on the metrics listener.
pub(crate) async fn respond(
    app: &App,
    req: &hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match app.metrics_text().await {
            Some(text) => (StatusCode::OK, TEXT_FORMAT, text),
            None => (StatusCode::NOT_FOUND, "text/plain", "metrics are off\n".into()),
        },
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
