//! A proxy killed and started again on the same address: while it is away, calls fail at once
//! and nothing piles up in the client; once it is back, the client reconnects by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::time::{Duration, Instant};

use hsm_proxy_proto::SecretBytes;
use hsm_proxy_proto::client::{Client, ClientConfig, Error, tls_config_from_pem_files};
use hsm_proxy_proto::op::{Health, Random};

use common::{Proxy, Settings, Token};

/// Runs `n` calls at once; returns how many failed, and how long they all took.
async fn calls(client: &Client, n: usize) -> (usize, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Random { len: 8 }).await })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(bytes) => assert_eq!(bytes.expose_secret().len(), 8),
            Err(Error::Connect { .. } | Error::ConnectionLost | Error::Overloaded) => failed += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    (failed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_the_proxy_is_down_and_succeed_once_it_is_back() {
    let token = Token::new().await;
    let proxy = Proxy::start(&token, &Settings::default());
    let addr = proxy.addr;
    let tls = tls_config_from_pem_files(
        &proxy.pki.ca_cert,
        &proxy.pki.client_cert,
        &proxy.pki.client_key,
    )
    .unwrap();
    let mut config = ClientConfig::new(vec![addr.to_string()], "hsm-proxy", tls).unwrap();
    config.reconnect_backoff_max = Duration::from_millis(200);
    let client = Client::new(config).unwrap();
    let _: SecretBytes = client.call(Random { len: 8 }).await.unwrap();

    // Killed with calls running on it: each call in flight fails, none hangs.
    let running = {
        let c = client.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..2000 {
                if c.call(Random { len: 8 }).await.is_err() {
                    failed += 1;
                }
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(proxy);
    let failed = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap();
    assert!(failed > 0, "the proxy was gone before the calls started");

    // Down: thousands of calls, all failed at once, and nothing left in the client.
    let (failed, took) = calls(&client, 3000).await;
    assert_eq!(failed, 3000);
    assert!(took < Duration::from_secs(3), "3000 failed calls took {took:?}");
    assert_eq!(client.calls_in_progress(), 0);
    assert_eq!(client.answers_awaited(), 0);

    // Back on the same address: once the backoff has passed, the next call succeeds.
    let settings = Settings { listen: addr.to_string(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    assert_eq!(proxy.addr, addr);
    tokio::time::sleep(Duration::from_millis(250)).await;
    client.call(Health).await.unwrap();
    let (failed, _) = calls(&client, 500).await;
    assert_eq!(failed, 0);
    proxy.assert_healthy();
}
