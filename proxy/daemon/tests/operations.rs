//! Every operation through the real daemon on a SoftHSM2 token, and the ways each must fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use hsm_proxy_proto::client::{Client, Error};
use hsm_proxy_proto::op::{
    Blob, Decrypt, Encrypt, GenerateKek, GenerateKeyPair, GenerateSymmetric, GenerateWrappingKek,
    Health, Kek, KekId, KeyPairSpec, MAX_RANDOM_BYTES, Random, Rewrap, RewrapKek, Sealed, Sign,
    SignMechanism, WrappedKey,
};
use hsm_proxy_proto::{Reply, Request, SecretBytes, Status};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;

use common::{Proxy, Settings, Token};

async fn encrypt(client: &Client, kek: &Kek, plaintext: &[u8], aad: &[u8]) -> Sealed {
    client
        .call(Encrypt {
            kek: kek.clone(),
            plaintext: SecretBytes::copy_from(plaintext),
            aad: aad.to_vec(),
        })
        .await
        .unwrap()
}

async fn decrypt(
    client: &Client,
    kek: &Kek,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<SecretBytes, Error> {
    client.call(Decrypt { kek: kek.clone(), sealed: sealed.clone(), aad: aad.to_vec() }).await
}

fn status(result: Result<impl std::fmt::Debug, Error>) -> Status {
    match result {
        Err(Error::Operation(status)) => status,
        other => panic!("expected an operation status, got {other:?}"),
    }
}

fn verify(spec: KeyPairSpec, mechanism: SignMechanism, public_der: &[u8], msg: &[u8], sig: &[u8]) {
    use sha2::{Sha256, Sha384, Sha512};
    match spec {
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
            let key = rsa::RsaPublicKey::from_public_key_der(public_der).unwrap();
            let bits = match spec {
                KeyPairSpec::Rsa2048 => 2048,
                KeyPairSpec::Rsa3072 => 3072,
                _ => 4096,
            };
            assert_eq!(rsa::traits::PublicKeyParts::size(&key) * 8, bits);
            match mechanism {
                SignMechanism::RsaPkcs1v15Sha256 => {
                    let s = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(msg, &s).unwrap();
                }
                SignMechanism::RsaPkcs1v15Sha384 => {
                    let s = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
                    rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(msg, &s).unwrap();
                }
                SignMechanism::RsaPkcs1v15Sha512 => {
                    let s = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
                    rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(msg, &s).unwrap();
                }
                SignMechanism::RsaPssSha256 => {
                    let s = rsa::pss::Signature::try_from(sig).unwrap();
                    rsa::pss::VerifyingKey::<Sha256>::new(key).verify(msg, &s).unwrap();
                }
                SignMechanism::RsaPssSha384 => {
                    let s = rsa::pss::Signature::try_from(sig).unwrap();
                    rsa::pss::VerifyingKey::<Sha384>::new(key).verify(msg, &s).unwrap();
                }
                SignMechanism::RsaPssSha512 => {
                    let s = rsa::pss::Signature::try_from(sig).unwrap();
                    rsa::pss::VerifyingKey::<Sha512>::new(key).verify(msg, &s).unwrap();
                }
                other => panic!("not an RSA mechanism: {other:?}"),
            }
        }
        KeyPairSpec::EcP256 => {
            assert_eq!(mechanism, SignMechanism::EcdsaSha256);
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(public_der).unwrap();
            let s = p256::ecdsa::Signature::from_slice(sig).unwrap();
            key.verify(msg, &s).unwrap();
        }
        KeyPairSpec::EcP384 => {
            assert_eq!(mechanism, SignMechanism::EcdsaSha384);
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(public_der).unwrap();
            let s = p384::ecdsa::Signature::from_slice(sig).unwrap();
            key.verify(msg, &s).unwrap();
        }
        _ => unreachable!(),
    }
}

/// A fresh token, the proxy on it, a client, and two KEKs; the token goes with the test.
struct Fixture {
    proxy: Proxy,
    client: Client,
    kek: Kek,
    other: Kek,
    /// Two KEKs for keys (wrapping), as `kek` and `other` are for data.
    keys: Kek,
    other_keys: Kek,
    token: Token,
}

async fn fixture() -> Fixture {
    let token = Token::new().await;
    let proxy = Proxy::start(&token, &Settings::default());
    let client = proxy.client();
    let kek = client.call(GenerateKek).await.unwrap();
    let other = client.call(GenerateKek).await.unwrap();
    let keys = client.call(GenerateWrappingKek).await.unwrap();
    let other_keys = client.call(GenerateWrappingKek).await.unwrap();
    Fixture { proxy, client, kek, other, keys, other_keys, token }
}

/// `sealed` opened with another AAD, and with its tag, ciphertext or IV altered.
fn tampered(sealed: &Sealed) -> Vec<(Sealed, &'static [u8])> {
    let mut bad_tag = sealed.clone();
    bad_tag.tag[0] ^= 1;
    let mut bad_ct = sealed.clone();
    bad_ct.ciphertext[5] ^= 0x80;
    let mut bad_iv = sealed.clone();
    bad_iv.iv[11] ^= 1;
    vec![(sealed.clone(), b"secret=other"), (bad_tag, AAD), (bad_ct, AAD), (bad_iv, AAD)]
}

/// `kek`'s blob altered under another id: nothing this token's MKEK wrapped.
fn forged(kek: &Kek) -> Kek {
    let mut forged = kek.clone();
    forged.id = KekId([7; 16]);
    let last = forged.wrapped.len() - 1;
    forged.wrapped[last] ^= 0xff;
    forged
}

/// `kek` in a blob that names no purpose (purpose code 0), as blobs from before purposes were
/// named read.
fn unnamed(kek: &Kek, id: KekId) -> Kek {
    let mut wrapped = kek.wrapped.clone();
    wrapped[2] = 0;
    Kek { id, wrapped }
}

const AAD: &[u8] = b"secret=1b4e28ba;project=p1";
const PLAINTEXT: &[u8] = b"volume key material, 32 bytes!!!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_a_real_operation_on_the_token() {
    let Fixture { token, mut proxy, client, .. } = fixture().await;
    let health = client.call(Health).await.unwrap();
    assert_eq!(health.token_label, token.label);
    assert!(health.sessions >= 1);
    assert_eq!(health.kek_cache_capacity, 16_384);
    proxy.assert_healthy();
}

/// KEKs come back wrapped (RFC 5649: 32 bytes of key + 8 of integrity) and distinct, after a
/// header naming their purpose and master key: `K`, format 2, 1 for data or 2 for keys, then
/// the master key generation (1, which `init-token` makes) in 8 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keks_come_back_wrapped_and_distinct() {
    let Fixture { token: _token, mut proxy, client: _, kek, other, keys, .. } = fixture().await;
    assert_eq!(kek.wrapped.len(), 51);
    assert_eq!(kek.wrapped[..11], [b'K', 2, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(keys.wrapped[..11], [b'K', 2, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_ne!(kek.id, other.id);
    assert_ne!(kek.wrapped, other.wrapped);
    proxy.assert_healthy();
}

/// A KEK serves one purpose: a data KEK wraps no key and a key KEK seals no data, each refused
/// as an invalid argument. A blob that names no purpose (as those from before purposes were
/// named) serves both on a token in normal mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_serves_the_one_purpose_its_blob_names() {
    let Fixture { token: _token, mut proxy, client, kek, keys, .. } = fixture().await;
    let pair = GenerateKeyPair { kek: kek.clone(), spec: KeyPairSpec::EcP256 };
    assert_eq!(status(client.call(pair).await), Status::InvalidArgument);
    let seal = |kek: &Kek| Encrypt {
        kek: kek.clone(),
        plaintext: SecretBytes::copy_from(b"data"),
        aad: AAD.to_vec(),
    };
    assert_eq!(status(client.call(seal(&keys)).await), Status::InvalidArgument);
    let generate = GenerateSymmetric { kek: keys.clone(), bits: 256, aad: vec![] };
    assert_eq!(status(client.call(generate).await), Status::InvalidArgument);
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    let across =
        Rewrap { old: kek.clone(), new: keys.clone(), blob: Blob::Sealed { sealed, aad: vec![] } };
    assert_eq!(status(client.call(across).await), Status::InvalidArgument);

    let unnamed = unnamed(&kek, KekId([0x5a; 16]));
    let sealed = encrypt(&client, &unnamed, PLAINTEXT, AAD).await;
    let opened = decrypt(&client, &unnamed, &sealed, AAD).await.unwrap();
    assert_eq!(opened.expose_secret(), PLAINTEXT);
    let pair = GenerateKeyPair { kek: unnamed.clone(), spec: KeyPairSpec::EcP256 };
    assert!(client.call(pair).await.is_ok());
    // Neither form: refused before the HSM is asked.
    let odd = Kek { id: KekId([0x5b; 16]), wrapped: kek.wrapped[..42].to_vec() };
    assert_eq!(status(client.call(seal(&odd)).await), Status::KekInvalid);
    proxy.assert_healthy();
}

/// Encrypt and decrypt, with AAD and fresh IVs; every tampering, and another KEK, rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_data_opens_only_unaltered_under_its_kek_and_aad() {
    let Fixture { token: _token, mut proxy, client, kek, other, .. } = fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    assert_eq!(sealed.ciphertext.len(), PLAINTEXT.len());
    assert_ne!(sealed.ciphertext, PLAINTEXT);
    let again = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    assert_ne!(sealed.iv, again.iv, "every encryption needs a fresh IV");
    assert_ne!(sealed.ciphertext, again.ciphertext);
    let opened = decrypt(&client, &kek, &sealed, AAD).await.unwrap();
    assert_eq!(opened.expose_secret(), PLAINTEXT);

    for (altered, aad) in tampered(&sealed) {
        let r = decrypt(&client, &kek, &altered, aad).await;
        assert_eq!(status(r), Status::AuthenticationFailed);
    }
    assert_eq!(status(decrypt(&client, &other, &sealed, AAD).await), Status::AuthenticationFailed);
    // Empty and large payloads.
    for len in [0usize, 1, 20_000] {
        let data = vec![0x5a; len];
        let s = encrypt(&client, &kek, &data, AAD).await;
        assert_eq!(decrypt(&client, &kek, &s, AAD).await.unwrap().expose_secret(), data.as_slice());
    }
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_blobs_not_wrapped_here_or_swapped_are_refused() {
    let Fixture { token: _token, mut proxy, client, kek, other, .. } = fixture().await;
    // A KEK blob that was not wrapped under this token's MKEK.
    let r = client
        .call(Encrypt { kek: forged(&kek), plaintext: SecretBytes::copy_from(b"x"), aad: vec![] })
        .await;
    assert_eq!(status(r), Status::KekInvalid);
    // A known KEK id with a different blob (as after a master key rotation) is served by the
    // key of the blob presented, never by the one cached under the id.
    encrypt(&client, &kek, b"x", b"").await;
    let mut swapped = other.clone();
    swapped.id = kek.id;
    let sealed = encrypt(&client, &swapped, PLAINTEXT, AAD).await;
    assert_eq!(decrypt(&client, &other, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    assert_eq!(status(decrypt(&client, &kek, &sealed, AAD).await), Status::AuthenticationFailed);
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    assert_eq!(
        status(decrypt(&client, &swapped, &sealed, AAD).await),
        Status::AuthenticationFailed
    );
    proxy.assert_healthy();
}

/// Symmetric keys from the HSM, sealed under the KEK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_keys_come_sealed_under_the_kek() {
    let Fixture { token: _token, mut proxy, client, kek, .. } = fixture().await;
    for bits in [128u16, 192, 256] {
        let sealed = client
            .call(GenerateSymmetric { kek: kek.clone(), bits, aad: AAD.to_vec() })
            .await
            .unwrap();
        let key = decrypt(&client, &kek, &sealed, AAD).await.unwrap();
        assert_eq!(key.len(), usize::from(bits / 8));
    }
    let r = client.call(GenerateSymmetric { kek: kek.clone(), bits: 100, aad: vec![] }).await;
    assert_eq!(status(r), Status::InvalidArgument);
    proxy.assert_healthy();
}

const MESSAGE: &[u8] = b"to be signed by a key that never leaves the HSM in clear";

/// Key pairs: generated, signing in the HSM, verified outside with the public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_sign_in_the_hsm_and_verify_outside() {
    let Fixture { token: _token, mut proxy, client, keys: kek, other_keys: other, .. } =
        fixture().await;
    let cases = [
        (
            KeyPairSpec::Rsa2048,
            vec![
                SignMechanism::RsaPkcs1v15Sha256,
                SignMechanism::RsaPkcs1v15Sha384,
                SignMechanism::RsaPkcs1v15Sha512,
                SignMechanism::RsaPssSha256,
                SignMechanism::RsaPssSha384,
                SignMechanism::RsaPssSha512,
            ],
        ),
        (KeyPairSpec::Rsa3072, vec![SignMechanism::RsaPssSha256]),
        (KeyPairSpec::Rsa4096, vec![SignMechanism::RsaPkcs1v15Sha256]),
        (KeyPairSpec::EcP256, vec![SignMechanism::EcdsaSha256]),
        (KeyPairSpec::EcP384, vec![SignMechanism::EcdsaSha384]),
    ];
    for (spec, mechanisms) in cases {
        let pair = client.call(GenerateKeyPair { kek: kek.clone(), spec }).await.unwrap();
        assert!(!pair.private_key.blob.is_empty());
        for mechanism in mechanisms {
            let sig = client
                .call(Sign {
                    kek: kek.clone(),
                    key: pair.private_key.clone(),
                    mechanism,
                    data: MESSAGE.to_vec(),
                })
                .await
                .unwrap();
            verify(spec, mechanism, &pair.public_key_der, MESSAGE, &sig.bytes);
        }
        // The wrong KEK cannot unwrap the private key; a key of the other kind is refused.
        let r = client
            .call(Sign {
                kek: other.clone(),
                key: pair.private_key.clone(),
                mechanism: SignMechanism::EcdsaSha256,
                data: vec![1],
            })
            .await;
        let expected = if matches!(spec, KeyPairSpec::EcP256 | KeyPairSpec::EcP384) {
            Status::WrappedKeyInvalid
        } else {
            Status::InvalidArgument
        };
        assert_eq!(status(r), expected, "{spec:?}");
    }
    proxy.assert_healthy();
}

/// Rewrap: sealed data and a wrapped private key move to another KEK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_sealed_data_and_wrapped_keys_to_another_kek() {
    let Fixture { token: _token, mut proxy, client, kek, other, keys, other_keys } =
        fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    let moved = client
        .call(Rewrap {
            old: kek.clone(),
            new: other.clone(),
            blob: Blob::Sealed { sealed: sealed.clone(), aad: AAD.to_vec() },
        })
        .await
        .unwrap();
    let Blob::Sealed { sealed: moved, aad: moved_aad } = moved else {
        panic!("sealed in, sealed out")
    };
    assert_eq!(moved_aad, AAD);
    assert_eq!(decrypt(&client, &other, &moved, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    assert_eq!(status(decrypt(&client, &kek, &moved, AAD).await), Status::AuthenticationFailed);

    let pair = client
        .call(GenerateKeyPair { kek: keys.clone(), spec: KeyPairSpec::Rsa2048 })
        .await
        .unwrap();
    let moved = client
        .call(Rewrap {
            old: keys.clone(),
            new: other_keys.clone(),
            blob: Blob::Wrapped(pair.private_key.clone()),
        })
        .await
        .unwrap();
    let Blob::Wrapped(moved_key) = moved else { panic!("wrapped in, wrapped out") };
    assert_ne!(moved_key.blob, pair.private_key.blob);
    let sig = client
        .call(Sign {
            kek: other_keys.clone(),
            key: moved_key.clone(),
            mechanism: SignMechanism::RsaPssSha256,
            data: MESSAGE.to_vec(),
        })
        .await
        .unwrap();
    verify(
        KeyPairSpec::Rsa2048,
        SignMechanism::RsaPssSha256,
        &pair.public_key_der,
        MESSAGE,
        &sig.bytes,
    );
    let r = client
        .call(Sign {
            kek: keys.clone(),
            key: moved_key,
            mechanism: SignMechanism::RsaPssSha256,
            data: MESSAGE.to_vec(),
        })
        .await;
    assert_eq!(status(r), Status::WrappedKeyInvalid);
    let garbage = WrappedKey { kind: pair.private_key.kind, blob: vec![0u8; 48] };
    let r = client
        .call(Rewrap { old: keys.clone(), new: other_keys.clone(), blob: Blob::Wrapped(garbage) })
        .await;
    assert_eq!(status(r), Status::WrappedKeyInvalid);
    proxy.assert_healthy();
}

/// Random bytes, bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_are_fresh_and_bounded() {
    let Fixture { token: _token, mut proxy, client, .. } = fixture().await;
    let a = client.call(Random { len: 32 }).await.unwrap();
    let b = client.call(Random { len: 32 }).await.unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_eq!(client.call(Random { len: 0 }).await.unwrap().len(), 0);
    assert_eq!(
        status(client.call(Random { len: MAX_RANDOM_BYTES + 1 }).await),
        Status::InvalidArgument
    );
    proxy.assert_healthy();
}

/// One frame, several operations, results in order, failures alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_in_order_and_fails_alone() {
    let Fixture { token: _token, mut proxy, client, kek, .. } = fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    let bad_tag = tampered(&sealed).swap_remove(1).0;
    let results = client
        .call_batch(vec![
            Request::Random(Random { len: 8 }),
            Request::Decrypt(Decrypt { kek: kek.clone(), sealed: bad_tag, aad: AAD.to_vec() }),
            Request::Decrypt(Decrypt { kek: kek.clone(), sealed, aad: AAD.to_vec() }),
            Request::Health(Health),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert!(matches!(&results[0], Ok(Reply::Random(r)) if r.len() == 8));
    assert_eq!(results[1], Err(Status::AuthenticationFailed));
    assert!(matches!(&results[2], Ok(Reply::Decrypt(p)) if p.expose_secret() == PLAINTEXT));
    assert!(matches!(&results[3], Ok(Reply::Health(_))));
    proxy.assert_healthy();
}

/// Every KEK is unwrapped into the HSM once, then used by handle, failed operations included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kek_is_unwrapped_once_then_used_by_handle() {
    let Fixture { token: _token, mut proxy, client, kek, other, .. } = fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    for _ in 0..32 {
        assert_eq!(decrypt(&client, &kek, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    }
    // Six authentication failures: four alterations, another KEK, and one in a batch.
    let altered = tampered(&sealed);
    for (s, aad) in &altered {
        assert_eq!(status(decrypt(&client, &kek, s, aad).await), Status::AuthenticationFailed);
    }
    assert_eq!(status(decrypt(&client, &other, &sealed, AAD).await), Status::AuthenticationFailed);
    let results = client
        .call_batch(vec![Request::Decrypt(Decrypt {
            kek: kek.clone(),
            sealed: altered[1].0.clone(),
            aad: AAD.to_vec(),
        })])
        .await
        .unwrap();
    assert_eq!(results[0], Err(Status::AuthenticationFailed));
    // A blob not wrapped here is unwrapped once too, and refused.
    let r = client
        .call(Encrypt { kek: forged(&kek), plaintext: SecretBytes::copy_from(b"x"), aad: vec![] })
        .await;
    assert_eq!(status(r), Status::KekInvalid);

    let misses = proxy.metric("hsm_proxy_kek_cache_misses_total");
    let hits = proxy.metric("hsm_proxy_kek_cache_hits_total");
    assert_eq!(misses, 3.0, "kek, other, and the forged blob; everything else is a hit");
    assert!(hits > 30.0, "hits {hits}");
    assert!(
        proxy.metric(r#"hsm_proxy_operations_total{op="Decrypt",status="authentication_failed"}"#)
            >= 6.0
    );
    proxy.assert_healthy();
}

/// A clean stop after work: logged out, exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_logs_out_and_exits_zero() {
    let Fixture { token: _token, mut proxy, client, kek, .. } = fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    assert_eq!(decrypt(&client, &kek, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    proxy.assert_healthy();
    let (status, log) = proxy.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("sessions closed and logged out"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_key_pairs_decrypt_to_matching_pkcs8() {
    use hsm_proxy_proto::op::GenerateKeyPairSealed;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let token = Token::new().await;
    let mut proxy = Proxy::start(&token, &Settings::default());
    let client = proxy.client();
    let kek = client.call(GenerateKek).await.unwrap();
    let aad = b"secret=private-key".to_vec();
    for spec in [KeyPairSpec::Rsa2048, KeyPairSpec::EcP256, KeyPairSpec::EcP384] {
        let pair = client
            .call(GenerateKeyPairSealed { kek: kek.clone(), spec, aad: aad.clone() })
            .await
            .unwrap();
        let pkcs8 = decrypt(&client, &kek, &pair.private_key_pkcs8, &aad).await.unwrap();
        let derived_public = match spec {
            KeyPairSpec::Rsa2048 => {
                let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.expose_secret()).unwrap();
                key.validate().unwrap();
                key.to_public_key().to_public_key_der().unwrap().as_bytes().to_vec()
            }
            KeyPairSpec::EcP256 => {
                let key = p256::SecretKey::from_pkcs8_der(pkcs8.expose_secret()).unwrap();
                key.public_key().to_public_key_der().unwrap().as_bytes().to_vec()
            }
            _ => {
                let key = p384::SecretKey::from_pkcs8_der(pkcs8.expose_secret()).unwrap();
                key.public_key().to_public_key_der().unwrap().as_bytes().to_vec()
            }
        };
        assert_eq!(derived_public, pair.public_key_der, "{spec:?}");
        // Bound to its AAD like every sealed payload.
        assert_eq!(
            status(decrypt(&client, &kek, &pair.private_key_pkcs8, b"other").await),
            Status::AuthenticationFailed
        );
    }
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_token_without_master_key() {
    let token = Token::new().await;
    let (config, _) = common::write_config(&token, &Settings::default());
    let out =
        common::proxy_command(&token).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no master key labelled \"hsm-proxy-mkek\""), "{stderr}");
    assert!(stderr.contains("init-token"), "{stderr}");
    assert!(!stderr.contains(&token.pin()), "the PIN must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_a_clear_error() {
    let token = Token::new().await;
    let (config, _) = common::write_config(&token, &Settings::default());
    std::fs::write(&token.pin_file, "not-the-pin").unwrap();
    let out = common::proxy_command(&token)
        .args(["init-token", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PinIncorrect") || stderr.contains("PIN"), "{stderr}");
    assert!(!stderr.contains("not-the-pin"), "the PIN must never be logged: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_based_aes_gcm_where_offered_interchangeable_with_single_part() {
    let token = Token::new().await;
    // One worker, so that consecutive operations switch the session's bound key.
    let one = "[pool]\npipeline_depth = 1\n".to_owned();
    let mut proxy = Proxy::start(&token, &Settings { extra: one.clone(), ..Settings::default() });
    // The simulator's module offers PKCS#11 3.0 message-based AES-GCM; SoftHSM2 2.6 does not.
    let expected =
        if common::is_simulator() { "AES-GCM message-based" } else { "AES-GCM single-part" };
    assert!(proxy.log().contains(expected), "{}", proxy.log());
    let client = proxy.client();
    let keks = [client.call(GenerateKek).await.unwrap(), client.call(GenerateKek).await.unwrap()];
    let mut sealed = Vec::new();
    for i in 0..6u8 {
        let kek = &keks[usize::from(i % 3 == 1)];
        let aad = vec![b'a', i];
        sealed.push((
            kek.clone(),
            aad.clone(),
            vec![i; 33],
            encrypt(&client, kek, &[i; 33], &aad).await,
        ));
    }
    for (kek, aad, plaintext, s) in &sealed {
        let opened = decrypt(&client, kek, s, aad).await.unwrap();
        assert_eq!(opened.expose_secret(), plaintext.as_slice());
        // A failed message leaves the path usable.
        assert_eq!(status(decrypt(&client, kek, s, b"other").await), Status::AuthenticationFailed);
    }
    let other_key = decrypt(&client, &keks[1], &sealed[0].3, &sealed[0].1).await;
    assert_eq!(status(other_key), Status::AuthenticationFailed);

    // Turned off, the same token is driven single-part, and opens what the other path sealed.
    let off = Settings {
        pkcs11_extra: "message_aead = false\n".into(),
        extra: one,
        ..Settings::default()
    };
    let mut single = Proxy::start(&token, &off);
    assert!(single.log().contains("AES-GCM single-part"), "{}", single.log());
    let client = single.client();
    for (kek, aad, plaintext, s) in &sealed {
        let opened = decrypt(&client, kek, s, aad).await.unwrap();
        assert_eq!(opened.expose_secret(), plaintext.as_slice());
    }
    let resealed = encrypt(&client, &keks[0], b"the other way", b"x").await;
    let client = proxy.client();
    let opened = decrypt(&client, &keks[0], &resealed, b"x").await.unwrap();
    assert_eq!(opened.expose_secret(), b"the other way");
    proxy.assert_healthy();
    single.assert_healthy();
}

/// `[pkcs11] fips = true` needs GCM IVs drawn inside the token: a token without the
/// message-based functions (SoftHSM2 2.6, or the simulator with them turned off) is refused at
/// start with the reason; on the simulator each seal carries an IV the token drew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fips_mode_needs_ivs_drawn_inside_the_token() {
    let token = Token::new().await;
    // Both commands that open the token refuse, before touching the master key.
    let refused = |pkcs11_extra: &str| {
        let settings = Settings { pkcs11_extra: pkcs11_extra.into(), ..Settings::default() };
        let (config, _) = common::write_config(&token, &settings);
        let mut said = String::new();
        for command in ["init-token", "serve"] {
            let out =
                common::proxy_command(&token).args([command, "--config"]).arg(&config).output();
            let out = out.unwrap();
            assert!(!out.status.success(), "{command} went on with {pkcs11_extra:?}");
            said.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        said
    };
    let off = refused("fips = true\nmessage_aead = false\n");
    assert!(off.contains("GCM IVs drawn inside the token"), "{off}");
    assert!(off.contains("message_aead = false turns it off"), "{off}");
    if !common::is_simulator() {
        let stderr = refused("fips = true\n");
        assert!(stderr.contains("message-based AES-GCM with CKG_GENERATE_RANDOM"), "{stderr}");
        return;
    }
    let settings = Settings { pkcs11_extra: "fips = true\n".into(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    assert!(proxy.log().contains("AES-GCM message-based"), "{}", proxy.log());
    let client = proxy.client();
    let kek = client.call(GenerateKek).await.unwrap();
    let mut ivs = std::collections::HashSet::new();
    for _ in 0..16 {
        let sealed = encrypt(&client, &kek, b"same plaintext", b"aad").await;
        assert_ne!(sealed.iv, [0u8; 12]);
        assert!(ivs.insert(sealed.iv), "an IV came twice");
        let opened = decrypt(&client, &kek, &sealed, b"aad").await.unwrap();
        assert_eq!(opened.expose_secret(), b"same plaintext");
    }
    proxy.assert_healthy();
}

/// A token with room for few objects: the KEK cache learns it. More project KEKs than the
/// token can hold are used in turn; when an unwrap, or another operation making an object,
/// finds no room the cache holds fewer and the call is retried, so no operation fails, and the
/// cache settles below the token's capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kek_cache_learns_how_many_objects_the_token_holds() {
    if !common::is_simulator() {
        return; // SoftHSM2 has no object limit to learn.
    }
    let profile = "name = \"small\"\nengines = 4\nlink_rtt_us = 0.0\nmax_sessions = 64\n\
                   object_capacity = 48\nqueue_limit = 0\n[service]\n[default_service]\n\
                   kind = \"fixed\"\nus = 0.0\n";
    let token = Token::simulator_with_profile(profile).await;
    let settings = Settings { extra: "[pool]\npipeline_depth = 2\n".into(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    let client = proxy.client();
    let mut keks = Vec::new();
    for _ in 0..80 {
        keks.push(client.call(GenerateKek).await.unwrap());
    }
    for round in 0..3u8 {
        for kek in &keks {
            let sealed = encrypt(&client, kek, &[round; 16], b"aad").await;
            let opened = decrypt(&client, kek, &sealed, b"aad").await.unwrap();
            assert_eq!(opened.expose_secret(), &[round; 16]);
        }
    }
    // With the cache full, operations that make objects of their own find room too.
    let keys = client.call(GenerateWrappingKek).await.unwrap();
    for _ in 0..20 {
        client.call(GenerateKek).await.unwrap();
        let pair = GenerateKeyPair { kek: keys.clone(), spec: KeyPairSpec::EcP256 };
        client.call(pair).await.unwrap();
        let sealed = encrypt(&client, &keks[0], b"x", b"aad").await;
        decrypt(&client, &keks[0], &sealed, b"aad").await.unwrap();
    }
    let metrics = proxy.metrics_text();
    assert_eq!(common::failed_operations(&metrics), 0.0, "{metrics}");
    let capacity = common::metric_value(&metrics, "hsm_proxy_kek_cache_capacity");
    assert!((16.0..48.0).contains(&capacity), "capacity {capacity}");
    assert!(proxy.log().contains("the KEK cache holds fewer KEKs"), "{}", proxy.log());
    proxy.assert_healthy();
}

/// The cache fills the token to its last object; an operation that makes an object of its own
/// (`GenerateKek`'s key) finds no room, the cache gives up an eighth of its KEKs, and the
/// operation's retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_out_of_room_is_made_room_for() {
    if !common::is_simulator() {
        return; // SoftHSM2 has no object limit.
    }
    let profile = "name = \"small\"\nengines = 4\nlink_rtt_us = 0.0\nmax_sessions = 64\n\
                   object_capacity = 48\nqueue_limit = 0\n[service]\n[default_service]\n\
                   kind = \"fixed\"\nus = 0.0\n";
    let token = Token::simulator_with_profile(profile).await;
    // The master key and 47 KEKs: every object the token holds.
    let settings = Settings {
        extra: "[pool]\npipeline_depth = 1\n[keys]\nkek_cache_capacity = 47\n".into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    let client = proxy.client();
    let mut keks = Vec::new();
    for _ in 0..47 {
        keks.push(client.call(GenerateKek).await.unwrap());
    }
    for kek in &keks {
        encrypt(&client, kek, b"fills the cache", b"").await;
    }
    assert_eq!(proxy.metric("hsm_proxy_kek_cache_entries"), 47.0);
    client.call(GenerateKek).await.unwrap();
    let metrics = proxy.metrics_text();
    assert_eq!(common::failed_operations(&metrics), 0.0, "{metrics}");
    assert_eq!(common::metric_value(&metrics, "hsm_proxy_kek_cache_capacity"), 41.0);
    assert!(common::metric_value(&metrics, "hsm_proxy_retries_total") >= 1.0, "{metrics}");
    proxy.assert_healthy();
}

/// Every operation on a token under the simulator's `fips` policy, which refuses IVs from
/// outside, keys that are not sensitive, keys of two purposes and export other than wrapped:
/// data under a data KEK, key pairs under a key KEK, sealed pairs exported by ECDH and key
/// wrap; a blob without a purpose header is a data KEK there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_a_fips_mode_token() {
    use hsm_proxy_proto::op::GenerateKeyPairSealed;
    if !common::is_simulator() {
        return; // SoftHSM2 has no FIPS mode.
    }
    let token = Token::fips_simulator().await;
    let settings = Settings { pkcs11_extra: "fips = true\n".into(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    let client = proxy.client();
    let kek = client.call(GenerateKek).await.unwrap();
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    assert_eq!(decrypt(&client, &kek, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    let key = GenerateSymmetric { kek: kek.clone(), bits: 256, aad: vec![] };
    client.call(key).await.unwrap();
    let keys = client.call(GenerateWrappingKek).await.unwrap();
    for (spec, mechanism) in [
        (KeyPairSpec::Rsa2048, SignMechanism::RsaPssSha256),
        (KeyPairSpec::EcP256, SignMechanism::EcdsaSha256),
    ] {
        let pair = client.call(GenerateKeyPair { kek: keys.clone(), spec }).await.unwrap();
        let sign = Sign {
            kek: keys.clone(),
            key: pair.private_key.clone(),
            mechanism,
            data: MESSAGE.to_vec(),
        };
        let sig = client.call(sign).await.unwrap();
        verify(spec, mechanism, &pair.public_key_der, MESSAGE, &sig.bytes);
        let sealed_pair = GenerateKeyPairSealed { kek: kek.clone(), spec, aad: AAD.to_vec() };
        let sealed_pair = client.call(sealed_pair).await.unwrap();
        let pkcs8 = decrypt(&client, &kek, &sealed_pair.private_key_pkcs8, AAD).await.unwrap();
        assert_eq!(pkcs8.expose_secret()[0], 0x30);
    }
    assert_eq!(common::failed_operations(&proxy.metrics_text()), 0.0);
    let unnamed = unnamed(&kek, KekId([0x5c; 16]));
    let sealed = encrypt(&client, &unnamed, PLAINTEXT, AAD).await;
    assert_eq!(decrypt(&client, &unnamed, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    let pair = GenerateKeyPair { kek: unnamed, spec: KeyPairSpec::EcP256 };
    assert_eq!(status(client.call(pair).await), Status::InvalidArgument);
    // A KEK moves to a new master key inside a FIPS-mode token too.
    let (ok, text) = mkek(&token, &["rotate"]);
    assert!(ok, "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let moved = client.call(RewrapKek { kek: kek.clone() }).await.unwrap();
    assert_eq!(moved.wrapped[10], 2);
    assert_eq!(decrypt(&client, &moved, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    proxy.assert_healthy();
}

/// Runs `hsm-proxy mkek ARGS --config` on the fixture's token: its exit status and output.
fn mkek(token: &Token, args: &[&str]) -> (bool, String) {
    let out = common::proxy_command(token)
        .arg("mkek")
        .args(args)
        .arg("--config")
        .arg(token.path().join("proxy.toml"))
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The master key rotates under a running proxy: a new generation wraps new KEKs within a
/// second, `RewrapKek` moves a stored KEK to it inside the HSM (same id, same key, so data
/// sealed before still opens), the newest generation cannot be destroyed, and once the older
/// one is, a blob still under it opens nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_under_a_running_proxy() {
    let Fixture { token, mut proxy, client, kek, keys, .. } = fixture().await;
    let sealed = encrypt(&client, &kek, PLAINTEXT, AAD).await;
    let (ok, text) = mkek(&token, &["list"]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "generation 1  newest: wraps new KEKs");

    let (ok, text) = mkek(&token, &["rotate"]);
    assert!(ok, "{text}");
    assert!(text.contains("created master key generation 2"), "{text}");
    let (ok, text) = mkek(&token, &["list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("generation 1  older") && text.contains("generation 2  newest"),
        "{text}"
    );

    // At once: before saying a blob is under the newest, the proxy reads the token again.
    let moved = client.call(RewrapKek { kek: kek.clone() }).await.unwrap();
    assert_eq!(moved.id, kek.id);
    assert_eq!(moved.wrapped[..11], [b'K', 2, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    assert_ne!(moved.wrapped, kek.wrapped);
    // New KEKs: the running proxy reads the token's master keys at most a second apart.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let fresh = client.call(GenerateKek).await.unwrap();
    assert_eq!(fresh.wrapped[..11], [b'K', 2, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    let moved_keys = client.call(RewrapKek { kek: keys.clone() }).await.unwrap();
    assert_eq!(moved_keys.wrapped[..11], [b'K', 2, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    // Already under the newest: as it is.
    assert_eq!(client.call(RewrapKek { kek: moved.clone() }).await.unwrap(), moved);
    // The same key under either blob.
    assert_eq!(decrypt(&client, &moved, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    assert_eq!(decrypt(&client, &kek, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    let again = encrypt(&client, &moved, PLAINTEXT, AAD).await;
    assert_eq!(decrypt(&client, &kek, &again, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    // A forged blob is refused, as an unwrap under the newest would refuse it.
    assert_eq!(status(client.call(RewrapKek { kek: forged(&kek) }).await), Status::KekInvalid);

    let (ok, text) = mkek(&token, &["destroy", "--generation", "2"]);
    assert!(!ok && text.contains("is the newest"), "{text}");
    let (ok, text) = mkek(&token, &["destroy", "--generation", "9"]);
    assert!(!ok && text.contains("no master key generation 9"), "{text}");
    let (ok, text) = mkek(&token, &["destroy", "--generation", "1"]);
    assert!(ok, "{text}");
    let (ok, text) = mkek(&token, &["list"]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "generation 2  newest: wraps new KEKs");

    // The old blob under an id the proxy has not cached: its master key is gone.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let orphan = Kek { id: KekId([0x6d; 16]), wrapped: kek.wrapped.clone() };
    assert_eq!(status(decrypt(&client, &orphan, &sealed, AAD).await), Status::KekInvalid);
    assert_eq!(status(client.call(RewrapKek { kek: orphan }).await), Status::KekInvalid);
    assert_eq!(decrypt(&client, &moved, &sealed, AAD).await.unwrap().expose_secret(), PLAINTEXT);
    // A blob under a generation newer than any in the token: not bad, not yet seen.
    let mut ahead = moved.clone();
    ahead.id = KekId([0x6e; 16]);
    ahead.wrapped[10] = 9;
    assert_eq!(status(decrypt(&client, &ahead, &sealed, AAD).await), Status::HsmUnavailable);
    // A master key destroyed under the proxy is a refused blob, never a lost device.
    assert_eq!(proxy.metric("hsm_proxy_reinitializations_total"), 0.0);
    proxy.assert_healthy();
}

/// A frame reading many cold KEKs has their misses unwrapped together before its operations
/// run: each KEK is unwrapped once, every answer is right, and a refused blob among them fails
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frames_cold_keks_are_unwrapped_together() {
    let Fixture { token: _token, mut proxy, client, .. } = fixture().await;
    let mut keks = Vec::new();
    for _ in 0..24 {
        keks.push(client.call(GenerateKek).await.unwrap());
    }
    let mut sealed = Vec::new();
    for (i, kek) in keks.iter().enumerate() {
        sealed.push(encrypt(&client, kek, format!("payload {i}").as_bytes(), AAD).await);
    }
    // The same keys under ids the proxy has not seen: every one a miss.
    let cold: Vec<Kek> = keks
        .iter()
        .enumerate()
        .map(|(i, k)| Kek {
            id: KekId([0x80 + u8::try_from(i).unwrap(); 16]),
            wrapped: k.wrapped.clone(),
        })
        .collect();
    let misses = proxy.metric("hsm_proxy_kek_cache_misses_total");
    // A forged blob first: its refusal does not stop the others being unwrapped ahead.
    let mut frame = vec![Request::Decrypt(Decrypt {
        kek: forged(&keks[0]),
        sealed: sealed[0].clone(),
        aad: AAD.to_vec(),
    })];
    frame.extend(cold.iter().zip(&sealed).map(|(kek, s)| {
        Request::Decrypt(Decrypt { kek: kek.clone(), sealed: s.clone(), aad: AAD.to_vec() })
    }));
    let results = client.call_batch(frame).await.unwrap();
    assert_eq!(results[0], Err(Status::KekInvalid));
    for (i, result) in results.iter().skip(1).enumerate() {
        let Ok(Reply::Decrypt(plain)) = result else { panic!("{i}: {result:?}") };
        assert_eq!(plain.expose_secret(), format!("payload {i}").as_bytes());
    }
    // One unwrap per KEK; the forged blob is tried twice, ahead of its share and by its
    // operation, which reports the refusal.
    assert_eq!(proxy.metric("hsm_proxy_kek_cache_misses_total") - misses, 26.0);
    let prefetched = proxy.metric("hsm_proxy_kek_cache_prefetched_total");
    assert!(prefetched >= 20.0, "only {prefetched} of 24 unwrapped ahead of their share");
    proxy.assert_healthy();
}
