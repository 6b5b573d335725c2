//! The pipeline: batches split across the workers and answered in order, deadlines answered
//! without touching the HSM, back-pressure instead of errors when the queue is full, and a
//! client that reconnects and fails over by itself; both sides busy-polling when asked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::time::Duration;

use hsm_proxy_proto::frame::{HEADER_BYTES, Header};
use hsm_proxy_proto::op::{
    GenerateKek, GenerateKeyPair, GenerateWrappingKek, Health, KeyPairSpec, OpCode, Random,
};
use hsm_proxy_proto::{Request, RequestBatch, ResponseBatch, Status};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::{Proxy, Settings, Token};

/// Sends one frame with an explicit deadline and returns the decoded statuses.
async fn send_with_timeout(proxy: &Proxy, ops: &[Request], timeout_ms: u32) -> Vec<Status> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut s = TlsConnector::from(proxy.tls())
        .connect(ServerName::try_from("hsm-proxy").unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(&RequestBatch::encode_frame(1, timeout_ms, ops)).await.unwrap();
    let mut header = [0u8; HEADER_BYTES];
    s.read_exact(&mut header).await.unwrap();
    let header = Header::decode(&header, u32::MAX).unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    s.read_exact(&mut body).await.unwrap();
    let codes: Vec<OpCode> = ops.iter().map(Request::code).collect();
    let (status, results) = ResponseBatch::decode_replies(&body, &codes).unwrap();
    assert_eq!(status, Status::Ok);
    results.into_iter().map(|r| r.err().unwrap_or(Status::Ok)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_back_pressure() {
    let token = Token::new().await;
    // Two workers, a queue of two: a 12-operation frame is two shares of six, each run in turn
    // by one worker.
    let settings = Settings {
        extra: "[pool]\npipeline_depth = 2\nqueue_depth = 2\n".into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    let kek = proxy.client().call(GenerateWrappingKek).await.unwrap();
    // RSA-3072 generation takes the token tens of milliseconds or more per key.
    let slow: Vec<Request> = (0..12)
        .map(|_| GenerateKeyPair { kek: kek.clone(), spec: KeyPairSpec::Rsa3072 }.into())
        .collect();

    // With a 1 ms deadline, the operations not started when it passes are answered
    // DeadlineExceeded and never reach the HSM; at most the first of each share ran, and the
    // frame is answered at the deadline whether or not it finished.
    let statuses = send_with_timeout(&proxy, &slow, 1).await;
    let expired = statuses.iter().filter(|s| **s == Status::DeadlineExceeded).count();
    assert!(expired >= 10, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, Status::Ok | Status::DeadlineExceeded)),
        "{statuses:?}"
    );

    // With room in time, the full queue slows the frame down but fails nothing.
    let statuses = send_with_timeout(&proxy, &slow, 120_000).await;
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");

    let metrics = proxy.metrics_text();
    let expired_metric = common::metric_value(
        &metrics,
        r#"hsm_proxy_operations_total{op="GenerateKeyPair",status="deadline_exceeded"}"#,
    );
    // Operations that expired while waiting for room in the queue are answered by the listener;
    // those that expired in the queue or behind a slower operation of their share are answered
    // by a worker, without an HSM call, and counted.
    assert!(expired_metric >= 1.0 && expired_metric <= expired as f64, "{metrics}");
    // A share's first operation may have started before the deadline and finished after it:
    // the worker counts it done, but the frame was answered at the deadline without it.
    let ok = common::metric_value(
        &metrics,
        r#"hsm_proxy_operations_total{op="GenerateKeyPair",status="ok"}"#,
    );
    let answered_ok = (12 + 12 - expired) as f64;
    assert!(ok >= answered_ok && ok <= answered_ok + 2.0, "{ok} ok for {answered_ok}: {metrics}");
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_split_across_workers_and_answered_in_order() {
    let token = Token::new().await;
    let settings = Settings { extra: "[pool]\npipeline_depth = 3\n".into(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    let client = proxy.client();
    // 40 operations over three workers: shares of 14, 14 and 12. Every fifth asks for more
    // random bytes than allowed and fails alone; each other answer has its own length.
    let lens: Vec<u32> = (0..40)
        .map(|i| if i % 5 == 4 { hsm_proxy_proto::op::MAX_RANDOM_BYTES + 1 } else { i + 1 })
        .collect();
    let ops = lens.iter().map(|&len| Random { len }.into()).collect();
    let replies = client.call_batch(ops).await.unwrap();
    assert_eq!(replies.len(), lens.len());
    for (len, reply) in lens.iter().zip(replies) {
        match reply {
            Ok(hsm_proxy_proto::Reply::Random(bytes)) => assert_eq!(bytes.len() as u32, *len),
            Err(status) => {
                assert_eq!(status, Status::InvalidArgument);
                assert!(*len > hsm_proxy_proto::op::MAX_RANDOM_BYTES);
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    // A batch of one, and a batch of Health answered from the cache with no worker.
    assert_eq!(client.call(Random { len: 7 }).await.unwrap().len(), 7);
    let health: Vec<Request> = (0..5).map(|_| Health.into()).collect();
    let replies = client.call_batch(health).await.unwrap();
    assert!(replies.iter().all(|r| matches!(r, Ok(hsm_proxy_proto::Reply::Health(_)))));
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frames_run_inline_when_the_pool_is_idle() {
    let token = Token::new().await;
    // A budget no operation here comes near, so that what runs inline depends on the pool
    // being idle and the operation having been seen, not on the machine's speed.
    let settings = Settings {
        extra: "[pool]\npipeline_depth = 2\ninline_below_us = 1000000\n".into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    assert!(proxy.log().contains("2 worker sessions + 1 inline"), "{}", proxy.log());
    let client = proxy.client();
    let kek = client.call(GenerateKek).await.unwrap();

    // The first Random goes to a worker, which measures it; one at a time, the rest find the
    // pool idle and run inline, answered as from a worker.
    for len in 1..=20u32 {
        assert_eq!(client.call(Random { len }).await.unwrap().len(), len as usize);
    }
    let inline = proxy.metric("hsm_proxy_inline_operations_total");
    assert!((19.0..=20.0).contains(&inline), "{inline} of 20 inline");

    // A frame inline answers each operation alone, failures included.
    let ops = vec![
        Random { len: 3 }.into(),
        Random { len: hsm_proxy_proto::op::MAX_RANDOM_BYTES + 1 }.into(),
        Random { len: 5 }.into(),
    ];
    let replies = client.call_batch(ops).await.unwrap();
    assert!(matches!(&replies[0], Ok(hsm_proxy_proto::Reply::Random(b)) if b.len() == 3));
    assert_eq!(replies[1].as_ref().err(), Some(&Status::InvalidArgument));
    assert!(matches!(&replies[2], Ok(hsm_proxy_proto::Reply::Random(b)) if b.len() == 5));

    // Sealing inline and opening on a worker (and the reverse) agree: the lane is a session
    // like the others.
    let aad = b"inline".to_vec();
    let plaintext = hsm_proxy_proto::SecretBytes::copy_from(b"thirty-two bytes of volume key!!");
    let mut sealed = Vec::new();
    for _ in 0..4 {
        let seal = hsm_proxy_proto::op::Encrypt {
            kek: kek.clone(),
            plaintext: plaintext.clone(),
            aad: aad.clone(),
        };
        sealed.push(client.call(seal).await.unwrap());
    }
    // Many frames at once: most find the pool busy and go to the workers.
    let mut tasks = tokio::task::JoinSet::new();
    for sealed in sealed.iter().cycle().take(64).cloned() {
        let (client, kek, aad) = (client.clone(), kek.clone(), aad.clone());
        tasks.spawn(
            async move { client.call(hsm_proxy_proto::op::Decrypt { kek, sealed, aad }).await },
        );
    }
    while let Some(opened) = tasks.join_next().await {
        assert_eq!(opened.unwrap().unwrap().expose_secret(), plaintext.expose_secret());
    }
    // Two workers and the lane.
    assert_eq!(proxy.metric("hsm_proxy_sessions_open"), 3.0);
    proxy.assert_healthy();

    // Turned off, nothing runs inline and no session is opened for it.
    let token = Token::new().await;
    let settings = Settings {
        extra: "[pool]\npipeline_depth = 2\ninline_below_us = 0\n".into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    assert!(!proxy.log().contains("+ 1 inline"), "{}", proxy.log());
    let client = proxy.client();
    for len in 1..=5u32 {
        client.call(Random { len }).await.unwrap();
    }
    assert_eq!(proxy.metric("hsm_proxy_inline_operations_total"), 0.0);
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_a_proxy_restart_and_fails_over() {
    let token = Token::new().await;
    let proxy = Proxy::start(&token, &Settings::default());
    let addr = proxy.addr;
    let pki = proxy.pki.clone();
    let client = proxy.client();
    assert!(client.call(Health).await.is_ok());

    // The proxy goes away: calls fail cleanly, nothing hangs.
    let (status, _) = proxy.terminate();
    assert!(status.success());
    assert!(client.call(Random { len: 1 }).await.is_err());

    // A new proxy on the same address (same token, MKEK and certificates): the same client
    // reconnects by itself.
    let restarted =
        Proxy::start(&token, &Settings { listen: addr.to_string(), ..Settings::default() });
    // Calls fail at once while the client waits out its reconnect backoff (at most 1 s), then
    // go through.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while client.call(Random { len: 8 }).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the client did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(client.call(Random { len: 8 }).await.unwrap().len(), 8);
    }

    // Failover: the first endpoint refuses connections, the second answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tls = hsm_proxy_proto::client::tls_config_from_pem_files(
        &pki.ca_cert,
        &pki.client_cert,
        &pki.client_key,
    )
    .unwrap();
    let mut config = hsm_proxy_proto::client::ClientConfig::new(
        vec![dead.to_string(), restarted.addr.to_string()],
        "hsm-proxy",
        tls,
    )
    .unwrap();
    config.connect_timeout = Duration::from_secs(2);
    let failover = hsm_proxy_proto::client::Client::new(config).unwrap();
    for _ in 0..4 {
        assert_eq!(failover.call(Random { len: 4 }).await.unwrap().len(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_on_both_sides_answers_the_same_and_stops_cleanly() {
    let token = Token::new().await;
    // A window far longer than an exchange here, so that most answers and frames arrive while
    // the other side spins.
    let settings = Settings { server_extra: "busy_poll_us = 5000".into(), ..Settings::default() };
    let proxy = Proxy::start(&token, &settings);
    assert!(proxy.log().contains("busy polling"), "{}", proxy.log());
    let mut config = hsm_proxy_proto::client::ClientConfig::new(
        vec![proxy.addr.to_string()],
        "hsm-proxy",
        proxy.tls(),
    )
    .unwrap();
    config.busy_poll = Duration::from_millis(5);
    let client = hsm_proxy_proto::client::Client::new(config).unwrap();
    for len in 1..=40u32 {
        assert_eq!(client.call(Random { len }).await.unwrap().len(), len as usize);
    }
    // Many callers spinning at once share the threads: each gets its own answer.
    let mut tasks = tokio::task::JoinSet::new();
    for len in 1..=32u32 {
        let client = client.clone();
        tasks.spawn(async move { (len, client.call(Random { len }).await.unwrap().len()) });
    }
    while let Some(done) = tasks.join_next().await {
        let (asked, got) = done.unwrap();
        assert_eq!(got, asked as usize);
    }
    // Past the window both sides park; the next frame wakes them as usual.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(client.call(Random { len: 3 }).await.unwrap().len(), 3);

    // A connection idle in its window or parked: SIGTERM still ends the proxy, cleanly.
    assert_eq!(client.call(Random { len: 2 }).await.unwrap().len(), 2);
    let (status, log) = proxy.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("all connections drained"), "{log}");
}
