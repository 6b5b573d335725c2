//! The client's side of the stream: a call abandoned while its frame is half written must not
//! leave the rest of that frame's place to the next one, and calls to a proxy that never
//! answers end at their deadline without leaving their waiters behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_proxy_proto::SecretBytes;
use hsm_proxy_proto::client::{Client, ClientConfig, Error, tls_config_from_pem_files};
use hsm_proxy_proto::frame::{FrameKind, HEADER_BYTES, Header};
use hsm_proxy_proto::op::{Encrypt, Health, Kek, KekId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A peer that completes the TLS handshake and then reads nothing until told to, so that the
/// client's writes back up; it hands over each connection it accepts.
async fn stalled_peer(
    pki: &pki::Bundle,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<TlsStream<tokio::net::TcpStream>>) {
    let chain = CertificateDer::pem_file_iter(&pki.proxy_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.proxy_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = accepted.send(tls);
            }
        }
    });
    (addr, connections)
}

/// Every byte the client sent on `stream` until it closed it.
async fn drain(mut stream: TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let mut sent = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sent,
            Ok(Ok(n)) => sent.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the client kept the abandoned connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_midway_through_its_frame_retires_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::write_bundle(dir.path(), &["hsm-proxy"], "appliance").unwrap();
    let (addr, mut connections) = stalled_peer(&pki).await;
    let tls = tls_config_from_pem_files(&pki.ca_cert, &pki.client_cert, &pki.client_key).unwrap();
    let mut config = ClientConfig::new(vec![addr.to_string()], "hsm-proxy", tls).unwrap();
    config.connections = 1;
    let client = Client::new(config).unwrap();
    let kek = Kek { id: KekId([1; 16]), wrapped: vec![1; 40] };
    let big = || Encrypt {
        kek: kek.clone(),
        plaintext: SecretBytes::copy_from(&vec![7u8; 900 * 1024]),
        aad: Vec::new(),
    };

    // Nothing is read, so the socket buffers fill and a write is left pending; the calls are
    // then dropped by their timeout, as a request handler is when its HTTP client goes away.
    // Three at a time: one writes its own frame, the others queue for the writer task, which
    // must not write them after the cut one.
    let mut first = None;
    for _ in 0..64 {
        let calls =
            async { tokio::join!(client.call(big()), client.call(big()), client.call(big())) };
        let _ = tokio::time::timeout(Duration::from_millis(100), calls).await;
        if first.is_none() {
            first = connections.try_recv().ok();
        }
        if first.is_some() && !connections.is_empty() {
            break;
        }
    }
    let first = first.expect("the client never connected");
    // Only a retired connection makes a single-slot client open another.
    let _ = tokio::time::timeout(Duration::from_millis(200), client.call(big())).await;
    let second = tokio::time::timeout(Duration::from_secs(5), connections.recv())
        .await
        .expect("the half-written connection was kept: the next frame would follow a cut one")
        .unwrap();

    // What the first connection carried: whole request frames, then at most one cut short,
    // then the end. A frame written after the cut one would show up as a bad header.
    let sent = drain(first).await;
    let mut rest = sent.as_slice();
    let mut whole = 0;
    while rest.len() >= HEADER_BYTES {
        let header = Header::decode(rest[..HEADER_BYTES].try_into().unwrap(), u32::MAX).unwrap();
        assert_eq!(header.kind, FrameKind::Request);
        let len = HEADER_BYTES + usize::try_from(header.body_len).unwrap();
        if rest.len() < len {
            break;
        }
        whole += 1;
        rest = &rest[len..];
    }
    assert!(whole >= 1, "no whole frame before the cut ({} bytes)", sent.len());
    assert!(rest.len() < HEADER_BYTES + 900 * 1024 + 1024, "more than one frame cut short");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_proxy_that_never_answers_end_at_their_deadline_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::write_bundle(dir.path(), &["hsm-proxy"], "appliance").unwrap();
    let (addr, mut connections) = stalled_peer(&pki).await;
    let tls = tls_config_from_pem_files(&pki.ca_cert, &pki.client_cert, &pki.client_key).unwrap();
    let mut config = ClientConfig::new(vec![addr.to_string()], "hsm-proxy", tls).unwrap();
    config.request_timeout = Duration::from_millis(400);
    let client = Client::new(config).unwrap();

    let started = Instant::now();
    let calls: Vec<_> = (0..2000)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Health).await })
        })
        .collect();
    for call in calls {
        let result = call.await.unwrap();
        assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "2000 calls of 400 ms took {took:?}");
    assert!(connections.try_recv().is_ok(), "the client never connected");
    // Every call went, and so did what each left waiting on its connection.
    assert_eq!(client.calls_in_progress(), 0);
    assert_eq!(client.answers_awaited(), 0);
}
