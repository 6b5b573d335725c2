//! Health and metrics: `/healthcheck` answers as oslo.middleware's does without credentials,
//! its disable file takes the appliance out of rotation, the readiness check (`?detail`) says
//! 503 while the proxy is down and 200 once it is back, and the metrics listener counts
//! requests under their route templates (never their ids), the HSM traffic per proxy, the
//! store's statements and the process, in text that `promtool check metrics` accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use appliance::config::ServerConfig;
use common::{Env, MEMBER, call, create};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer read off the wire.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One request on a fresh connection, read to its end.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: kms.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

/// The metrics listener on a free loopback port, for `env`'s appliance.
async fn serve_metrics(env: &Env) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(appliance::server::serve_metrics(
        listener,
        env.app.clone(),
        std::future::pending(),
    ));
    addr
}

/// The value of the series `series` (name and labels as the text has them).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_answers_as_oslo_without_credentials_and_obeys_its_disable_file() {
    let dir = tempfile::tempdir().unwrap();
    let disable = dir.path().join("healthcheck-disable");
    let file = disable.clone();
    let env = Env::sqlite_configured(move |c| c.health.disable_file = Some(file)).await;

    let r = call(&env.app, Method::GET, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"OK");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    assert!(r.header("x-openstack-request-id").is_some_and(|id| id.starts_with("req-")));
    let r = call(&env.app, Method::HEAD, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    let r = call(&env.app, Method::POST, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    std::fs::write(&disable, b"").unwrap();
    let r = call(&env.app, Method::GET, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, b"DISABLED BY FILE");
    let r = call(&env.app, Method::HEAD, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::remove_file(&disable).unwrap();
    let r = call(&env.app, Method::GET, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);

    // Over the wire too, HEAD gets the status and no body.
    let served = env.serve(ServerConfig::default()).await;
    let r = http(served.addr, "HEAD", "/healthcheck", &[]).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(r.body.is_empty());
    drop(served);
    env.finish().await;
}

/// Polls the readiness check until it answers `status`; its JSON then.
async fn readiness_until(env: &Env, status: StatusCode) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let r = call(&env.app, Method::GET, "/healthcheck?detail", None, &[], b"").await;
        if r.status == status {
            assert_eq!(r.header("content-type"), Some("application/json"));
            return r.json();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "readiness stayed {} instead of {status}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_proxy_is_down_and_recovers_with_it() {
    let mut env = Env::sqlite().await;
    let proxy = env.stack.proxy_addr.to_string();

    let ready = readiness_until(&env, StatusCode::OK).await;
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["database"]["ok"], true, "{ready}");
    let proxies = ready["hsm_proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 1, "{ready}");
    assert_eq!(proxies[0]["endpoint"], proxy.as_str());
    assert_eq!(proxies[0]["ok"], true, "{ready}");
    assert!(proxies[0]["sessions"].as_u64().unwrap() >= 1, "{ready}");
    assert!(!proxies[0]["token_label"].as_str().unwrap().is_empty(), "{ready}");

    env.stack.stop_proxy().await;
    let down = readiness_until(&env, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(down["status"], "unavailable", "{down}");
    assert_eq!(down["database"]["ok"], true, "{down}");
    let failed = &down["hsm_proxies"][0];
    assert_eq!(failed["ok"], false, "{down}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains(&proxy)), "{down}");
    // The plain health check says only whether the appliance takes requests: it does.
    let r = call(&env.app, Method::GET, "/healthcheck", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);

    env.stack.restart_proxy().await.unwrap();
    let back = readiness_until(&env, StatusCode::OK).await;
    assert_eq!(back["hsm_proxies"][0]["ok"], true, "{back}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template_and_pass_promtool() {
    let env = Env::sqlite().await;
    let served = env.serve(ServerConfig::default()).await;
    let metrics = serve_metrics(&env).await;
    let proxy = env.stack.proxy_addr.to_string();

    let id = create(
        &env.app,
        MEMBER,
        json!({"payload": "counted", "payload_content_type": "text/plain"}),
    )
    .await;
    let member = [("X-Project-Id", "p1"), ("X-Roles", "member,reader"), ("Accept", "text/plain")];
    let payload = format!("/v1/secrets/{id}/payload");
    for _ in 0..2 {
        let r = http(served.addr, "GET", &payload, &member).await;
        assert_eq!((r.status, r.body.as_str()), (200, "counted"), "{}", r.head);
    }
    let missing = "/v1/secrets/3f1c2e9a-0000-4000-8000-00000000dead";
    assert_eq!(http(served.addr, "GET", missing, &member).await.status, 404);

    let scrape = http(metrics, "GET", "/metrics", &[]).await;
    assert_eq!(scrape.status, 200, "{}", scrape.head);
    assert!(scrape.head.contains("text/plain; version=0.0.4"), "{}", scrape.head);
    let text = scrape.body;
    let payload_gets = "appliance_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/secrets/{id}/payload\",status=\"200\"}";
    assert_eq!(value(&text, payload_gets), 2.0);
    let not_found = "appliance_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/secrets/{id}\",status=\"404\"}";
    assert_eq!(value(&text, not_found), 1.0);
    assert!(!text.contains(&id) && !text.contains("dead"), "an id became a label:\n{text}");
    assert_eq!(value(&text, "appliance_http_requests_in_flight"), 0.0);
    // The store (created in-process above, the payloads fetched over HTTP) went to the proxy.
    let frames = value(&text, &format!("appliance_hsm_frames_total{{endpoint=\"{proxy}\"}}"));
    assert!(frames >= 3.0, "{frames} frames:\n{text}");
    let answered = format!("appliance_hsm_round_trip_seconds_count{{endpoint=\"{proxy}\"}}");
    assert!(value(&text, &answered) >= 3.0, "{text}");
    assert_eq!(
        value(&text, &format!("appliance_hsm_endpoint_active{{endpoint=\"{proxy}\"}}")),
        1.0
    );
    let reads = "appliance_db_statement_duration_seconds_count{statement=\"secret\"}";
    assert!(value(&text, reads) >= 3.0, "{text}");
    assert!(value(&text, "appliance_db_connections_max") >= 1.0, "{text}");
    assert_eq!(value(&text, "appliance_orders_pending"), 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0, "{text}");
    assert!(value(&text, "process_open_fds") > 0.0, "{text}");
    devstack::testing::promtool_accepts("appliance", &text);

    // Counts go up with the traffic.
    assert_eq!(http(served.addr, "GET", &payload, &member).await.status, 200);
    let text = http(metrics, "GET", "/metrics", &[]).await.body;
    assert_eq!(value(&text, payload_gets), 3.0);
    assert!(value(&text, &format!("appliance_hsm_frames_total{{endpoint=\"{proxy}\"}}")) > frames);
    assert_eq!(http(metrics, "GET", "/other", &[]).await.status, 404);
    assert_eq!(http(metrics, "POST", "/metrics", &[]).await.status, 405);
    drop(served);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_nothing_is_counted_or_served() {
    let env = Env::sqlite_configured(|c| c.metrics.listen = appliance::config::Listen::Off).await;
    let served = env.serve(ServerConfig::default()).await;
    let metrics = serve_metrics(&env).await;
    assert_eq!(http(served.addr, "GET", "/healthcheck", &[]).await.status, 200);
    let r = http(metrics, "GET", "/metrics", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "metrics are off\n");
    drop(served);
    env.finish().await;
}
