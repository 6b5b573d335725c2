//! The HTTP server: hyper HTTP/1.1 in front of [`api::handle`].
//!
//! Bodies are read into a wiped buffer, at most `max_request_bytes` of them: a longer body is
//! not read further, the handler answers 413, and the connection is closed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hsm_proxy_proto::SecretBytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::api::{self, App};

/// Time allowed on shutdown for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(answer(&app, req).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all API connections closed"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!("drain timeout: closing API connections"),
    }
    if let crate::auth::IdentitySource::Keystone(k) = &app.settings.identity {
        let (hits, misses) = k.cache_counts();
        let ratio = hits as f64 / (hits + misses).max(1) as f64;
        tracing::info!(hits, misses, hit_ratio = format!("{ratio:.3}"), "Keystone token cache");
    }
}

async fn answer(app: &App, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let limit = app.settings.max_request_bytes;
    let mut buffer = Zeroizing::new(Vec::new());
    let mut too_large = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                too_large = true;
                break;
            }
            buffer.extend_from_slice(&data);
        }
    }
    let started = std::time::Instant::now();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let request = api::Request {
        method: parts.method,
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: SecretBytes::from(buffer),
        body_too_large: too_large,
        scheme: "http",
    };
    let response = api::handle(app, request).await;
    tracing::info!(
        %method,
        path = %path,
        status = response.status.as_u16(),
        ms = started.elapsed().as_millis(),
        "request"
    );
    let mut out = hyper::Response::new(Full::new(response.body));
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    if too_large {
        // The rest of the body was never read: the connection cannot carry another request.
        out.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out
}
