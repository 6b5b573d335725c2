//! Concurrent API requests through the coalescing dispatcher, against the real proxy: each
//! gets its own answer, and every fetch is one decryption. (Whether frames are shared under a
//! given load depends on timing; the dispatcher's unit tests show it deterministically.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::io::{Read, Write};

use hyper::Method;
use serde_json::json;

use common::{Env, MEMBER, call, create};

/// (frames, operations) the proxy has answered, from its `hsm_proxy_batch_size` histogram.
fn frames_and_ops(env: &Env) -> (f64, f64) {
    let addr = env.stack.proxy_metrics.expect("the dev proxy serves metrics");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    (value("hsm_proxy_batch_size_count"), value("hsm_proxy_batch_size_sum"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_each_get_their_own_payload() {
    let env = Env::sqlite().await;
    let app = &env.app;
    let mut secrets = Vec::new();
    for i in 0..40 {
        let payload = format!("payload number {i}");
        let id =
            create(app, MEMBER, json!({"payload": payload, "payload_content_type": "text/plain"}))
                .await;
        secrets.push((id, payload));
    }
    let (frames_before, ops_before) = frames_and_ops(&env);
    let rounds = 5;
    let mut tasks = Vec::new();
    for _ in 0..rounds {
        for (id, payload) in &secrets {
            let (app, id, payload) = (env.app.clone(), id.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                let r = call(
                    &app,
                    Method::GET,
                    &format!("/v1/secrets/{id}/payload"),
                    Some(MEMBER),
                    &[("accept", "text/plain")],
                    b"",
                )
                .await;
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                assert_eq!(r.body, payload.as_bytes(), "{id} got another secret's payload");
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (frames_after, ops_after) = frames_and_ops(&env);
    let (frames, ops) = (frames_after - frames_before, ops_after - ops_before);
    assert_eq!(ops, (rounds * secrets.len()) as f64, "one decryption per fetch");
    assert!(frames >= 1.0 && frames <= ops, "{ops} operations in {frames} frames");
    env.finish().await;
}
