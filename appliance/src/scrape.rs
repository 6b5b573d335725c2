//! The metrics listener: `GET /metrics` in Prometheus's text format, over plain HTTP on an
//! address of its own (`[metrics] listen`, loopback by default), apart from the API, its
//! connection limit and its logs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::MetricsConfig;
use crate::error::{Error, Result};
use crate::service::App;

/// Connections served at once: a Prometheus server or two, and an operator's curl.
const MAX_CONNECTIONS: usize = 16;
/// Time allowed for a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept connection is closed (between requests) after this long; the scraper opens another.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Prometheus's text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `[metrics] listen` and serves it in the background for as long as the runtime runs;
/// the address bound, or `None` when metrics are off.
pub async fn start(config: &MetricsConfig, app: &Arc<App>) -> Result<Option<SocketAddr>> {
    let Some(addr) = config.listen.address() else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(Error::Network)?;
    let bound = listener.local_addr().map_err(Error::Network)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            listen = %bound,
            "the metrics listener is not on loopback: anyone who reaches it reads the traffic \
             figures; keep it on a management network or behind a proxy with TLS"
        );
    }
    tokio::spawn(serve(listener, app.clone(), std::future::pending()));
    tracing::info!(listen = %bound, "serving metrics at /metrics");
    Ok(Some(bound))
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: too many open");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(respond(&app, &req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::pin!(conn, lifetime);
            let mut closing = false;
            let ended = loop {
                tokio::select! {
                    ended = conn.as_mut() => break ended,
                    () = &mut lifetime, if !closing => {
                        // Closes once the request in progress, if any, is answered.
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn respond(app: &App, req: &hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
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
