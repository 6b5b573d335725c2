//! `/healthcheck`, as oslo.middleware's health check answers it in front of Barbican: `GET`
//! gives 200 `OK` (`HEAD` 204) while the appliance takes requests, 503 with the reason when it
//! does not. `GET /healthcheck?detail` is the readiness check in depth: the database and every
//! proxy (its cached `Health` operation) are asked, and the answer is 200 or 503 with a JSON
//! report of each check. Neither needs credentials, and neither says anything secret.

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use serde_json::json;

use super::{ApiError, Call, Response, error_response, insert, json_response};
use crate::service::health::Readiness;

/// Answers `/healthcheck[?detail]`.
pub(super) async fn healthcheck(call: &Call<'_>) -> Response {
    let head = *call.method == Method::HEAD;
    if !head && *call.method != Method::GET {
        return error_response(&ApiError::method_not_allowed("GET, HEAD"));
    }
    if call.query.iter().any(|(k, _)| k == "detail" || k == "detailed") {
        return detailed(&*call.app.readiness().await);
    }
    match call.app.liveness() {
        Ok(()) if head => plain(StatusCode::NO_CONTENT, ""),
        Ok(()) => plain(StatusCode::OK, "OK"),
        Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut r = Response { status, headers: HeaderMap::new(), body: body.into() };
    insert(&mut r.headers, "content-type", "text/plain; charset=UTF-8");
    r
}

/// The readiness report: each check's outcome and time, and what each proxy says of its HSM.
fn detailed(readiness: &Readiness) -> Response {
    let ms = |took: std::time::Duration| u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    let database = match &readiness.database.answer {
        Ok(()) => json!({"ok": true, "ms": ms(readiness.database.took)}),
        Err(e) => json!({"ok": false, "ms": ms(readiness.database.took), "error": e}),
    };
    let proxies: Vec<_> = readiness
        .proxies
        .iter()
        .map(|(endpoint, check)| match &check.answer {
            Ok(report) => json!({
                "endpoint": endpoint,
                "ok": true,
                "ms": ms(check.took),
                "token_label": report.token_label,
                "sessions": report.sessions,
                "kek_cache_entries": report.kek_cache_entries,
                "kek_cache_capacity": report.kek_cache_capacity,
                "reinitializations": report.reinitializations,
                "report_age_ms": report.age_ms,
            }),
            Err(e) => json!({"endpoint": endpoint, "ok": false, "ms": ms(check.took), "error": e}),
        })
        .collect();
    let ready = readiness.ready();
    let body = json!({
        "status": if ready { "ok" } else { "unavailable" },
        "database": database,
        "hsm_proxies": proxies,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = json_response(status, &body);
    insert(&mut r.headers, "cache-control", "no-store");
    r
}
