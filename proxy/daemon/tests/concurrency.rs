//! Many clients, thousands of mixed operations at once: every result checked, none failed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use hsm_proxy_proto::client::Client;
use hsm_proxy_proto::op::{
    Decrypt, Encrypt, GenerateKek, GenerateKeyPair, GenerateSymmetric, GenerateWrappingKek, Kek,
    KeyPair, KeyPairSpec, Random, Sign, SignMechanism,
};
use hsm_proxy_proto::{Reply, Request, SecretBytes};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;

use common::{Proxy, Settings, Token};

const CLIENTS: usize = 16;
const STREAMS_PER_CLIENT: usize = 4;
const ROUNDS: usize = 12;

/// One stream of work: every round runs 6 single operations and a batch of 8, checking each.
async fn stream(client: Client, (kek, wrapping): (Kek, Kek), pair: KeyPair, tag: String) -> usize {
    let verifying = p256::ecdsa::VerifyingKey::from_public_key_der(&pair.public_key_der).unwrap();
    let mut done = 0;
    for round in 0..ROUNDS {
        let aad = format!("{tag}/{round}").into_bytes();
        let plaintext = format!("payload {tag} round {round}").into_bytes();
        let sealed = client
            .call(Encrypt {
                kek: kek.clone(),
                plaintext: SecretBytes::copy_from(&plaintext),
                aad: aad.clone(),
            })
            .await
            .unwrap();
        let opened =
            client.call(Decrypt { kek: kek.clone(), sealed, aad: aad.clone() }).await.unwrap();
        assert_eq!(opened.expose_secret(), plaintext.as_slice());

        let random = client.call(Random { len: 24 }).await.unwrap();
        assert_eq!(random.len(), 24);

        let key = client
            .call(GenerateSymmetric { kek: kek.clone(), bits: 256, aad: aad.clone() })
            .await
            .unwrap();
        let key =
            client.call(Decrypt { kek: kek.clone(), sealed: key, aad: aad.clone() }).await.unwrap();
        assert_eq!(key.len(), 32);

        let sig = client
            .call(Sign {
                kek: wrapping.clone(),
                key: pair.private_key.clone(),
                mechanism: SignMechanism::EcdsaSha256,
                data: aad.clone(),
            })
            .await
            .unwrap();
        verifying.verify(&aad, &p256::ecdsa::Signature::from_slice(&sig.bytes).unwrap()).unwrap();
        done += 6;

        let batch: Vec<Request> = (0..8)
            .map(|i| {
                Encrypt {
                    kek: kek.clone(),
                    plaintext: SecretBytes::new(vec![i; usize::from(i) * 10]),
                    aad: aad.clone(),
                }
                .into()
            })
            .collect();
        let sealed = client.call_batch(batch).await.unwrap();
        let opens: Vec<Request> = sealed
            .into_iter()
            .map(|r| match r {
                Ok(Reply::Encrypt(sealed)) => {
                    Decrypt { kek: kek.clone(), sealed, aad: aad.clone() }.into()
                }
                other => panic!("batch encrypt failed: {other:?}"),
            })
            .collect();
        for (i, r) in client.call_batch(opens).await.unwrap().into_iter().enumerate() {
            match r {
                Ok(Reply::Decrypt(p)) => {
                    assert_eq!(p.expose_secret(), vec![i as u8; i * 10].as_slice())
                }
                other => panic!("batch decrypt failed: {other:?}"),
            }
        }
        done += 16;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mixed_operations_from_many_clients() {
    let token = Token::new().await;
    let mut proxy = Proxy::start(&token, &Settings::default());
    let setup = proxy.client();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // Each client has its own connections and its own project KEKs, for data and for keys.
        let client = proxy.client();
        let kek = setup.call(GenerateKek).await.unwrap();
        let wrapping = setup.call(GenerateWrappingKek).await.unwrap();
        let pair = setup
            .call(GenerateKeyPair { kek: wrapping.clone(), spec: KeyPairSpec::EcP256 })
            .await
            .unwrap();
        for s in 0..STREAMS_PER_CLIENT {
            tasks.push(tokio::spawn(stream(
                client.clone(),
                (kek.clone(), wrapping.clone()),
                pair.clone(),
                format!("c{c}s{s}"),
            )));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, CLIENTS * STREAMS_PER_CLIENT * ROUNDS * 22);
    assert!(total >= 16_000, "{total}");

    let metrics = proxy.metrics_text();
    let failures = common::failed_operations(&metrics);
    assert_eq!(failures, 0.0, "{metrics}");
    // Each KEK was unwrapped into the HSM exactly once, however many streams raced for it.
    let misses = common::metric_value(&metrics, "hsm_proxy_kek_cache_misses_total");
    assert_eq!(misses, (2 * CLIENTS) as f64);
    assert_eq!(common::metric_value(&metrics, "hsm_proxy_pkcs11_errors_total"), 0.0);
    proxy.assert_healthy();
}
