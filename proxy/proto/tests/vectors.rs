//! Golden bytes: one frame per operation and per reply, pinned in `tests/vectors/*.bin`.
//!
//! Postcard encodes by position, so a reordered field or variant changes these bytes. A change
//! that fails here breaks every deployed peer: add a new operation instead. To write the files
//! for a newly added vector only, run with `HSM_PROXY_WRITE_VECTORS=1`; existing files are never
//! overwritten.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::PathBuf;

use hsm_proxy_proto::frame::HEADER_BYTES;
use hsm_proxy_proto::op::*;
use hsm_proxy_proto::{OpCode, Reply, Request, RequestBatch, ResponseBatch, SecretBytes, Status};

fn kek() -> Kek {
    Kek { id: KekId([0x11; 16]), wrapped: (0u8..40).collect() }
}

fn sealed() -> Sealed {
    Sealed { ciphertext: b"ciphertext".to_vec(), iv: [0x22; 12], tag: [0x33; 16] }
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("health", Health.into()),
        ("generate_kek", GenerateKek.into()),
        (
            "encrypt",
            Encrypt {
                kek: kek(),
                plaintext: SecretBytes::copy_from(b"plain"),
                aad: b"aad".to_vec(),
            }
            .into(),
        ),
        ("decrypt", Decrypt { kek: kek(), sealed: sealed(), aad: b"aad".to_vec() }.into()),
        (
            "generate_symmetric",
            GenerateSymmetric { kek: kek(), bits: 256, aad: b"aad".to_vec() }.into(),
        ),
        ("generate_key_pair", GenerateKeyPair { kek: kek(), spec: KeyPairSpec::EcP384 }.into()),
        (
            "sign",
            Sign {
                kek: kek(),
                key: WrappedKey { kind: WrappedKeyKind::RsaPrivate, blob: vec![9; 8] },
                mechanism: SignMechanism::RsaPssSha384,
                data: b"message".to_vec(),
            }
            .into(),
        ),
        (
            "rewrap",
            Rewrap {
                old: kek(),
                new: Kek { id: KekId([0x44; 16]), wrapped: vec![5; 40] },
                blob: Blob::Sealed { sealed: sealed(), aad: b"aad".to_vec() },
            }
            .into(),
        ),
        ("random", Random { len: 32 }.into()),
        (
            "generate_key_pair_sealed",
            GenerateKeyPairSealed { kek: kek(), spec: KeyPairSpec::Rsa2048, aad: b"aad".to_vec() }
                .into(),
        ),
        ("generate_wrapping_kek", GenerateWrappingKek.into()),
        ("rewrap_kek", RewrapKek { kek: kek() }.into()),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "health",
            Reply::Health(HealthReport {
                token_label: "token".into(),
                manufacturer: "maker".into(),
                model: "model".into(),
                sessions: 4,
                kek_cache_entries: 2,
                kek_cache_capacity: 1024,
                reinitializations: 1,
                age_ms: 250,
            }),
        ),
        ("generate_kek", Reply::GenerateKek(kek())),
        ("encrypt", Reply::Encrypt(sealed())),
        ("decrypt", Reply::Decrypt(SecretBytes::copy_from(b"plain"))),
        ("generate_symmetric", Reply::GenerateSymmetric(sealed())),
        (
            "generate_key_pair",
            Reply::GenerateKeyPair(KeyPair {
                private_key: WrappedKey { kind: WrappedKeyKind::EcPrivate, blob: vec![7; 10] },
                public_key_der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
            }),
        ),
        ("sign", Reply::Sign(Signature { bytes: vec![0xAB; 6] })),
        (
            "rewrap",
            Reply::Rewrap(Blob::Wrapped(WrappedKey {
                kind: WrappedKeyKind::Aes,
                blob: vec![1; 40],
            })),
        ),
        ("random", Reply::Random(SecretBytes::copy_from(&[0xEE; 4]))),
        (
            "generate_key_pair_sealed",
            Reply::GenerateKeyPairSealed(SealedKeyPair {
                private_key_pkcs8: sealed(),
                public_key_der: vec![0x30, 0x00],
            }),
        ),
        ("generate_wrapping_kek", Reply::GenerateWrappingKek(kek())),
        ("rewrap_kek", Reply::RewrapKek(kek())),
    ]
}

fn check(name: &str, bytes: &[u8]) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(format!("{name}.bin"));
    if !path.exists() && std::env::var_os("HSM_PROXY_WRITE_VECTORS").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let pinned = std::fs::read(&path).unwrap_or_else(|_| {
        panic!("{} is missing (HSM_PROXY_WRITE_VECTORS=1 writes it)", path.display())
    });
    assert_eq!(
        bytes,
        pinned.as_slice(),
        "the encoding of {name} changed: that breaks deployed peers"
    );
}

#[test]
fn every_operation_and_reply_matches_its_golden_bytes() {
    let requests = requests();
    let replies = replies();
    // A vector for every operation this build knows.
    assert_eq!(requests.len(), OpCode::ALL.len());
    assert_eq!(replies.len(), OpCode::ALL.len());

    for (i, (name, request)) in requests.iter().enumerate() {
        let id = 0x0100 + i as u64;
        let frame = RequestBatch::encode_frame(id, 1500, std::slice::from_ref(request));
        check(&format!("request_{name}"), &frame);
        let (timeout, decoded) = RequestBatch::decode(&frame[HEADER_BYTES..], 16).unwrap();
        assert_eq!(timeout, 1500);
        assert_eq!(decoded, vec![Ok(request.clone())]);
    }
    for (i, (name, reply)) in replies.iter().enumerate() {
        let id = 0x0200 + i as u64;
        let frame = ResponseBatch::encode_frame(id, &[Ok(reply.clone()), Err(Status::Busy)]);
        check(&format!("response_{name}"), &frame);
        let (status, decoded) =
            ResponseBatch::decode_replies(&frame[HEADER_BYTES..], &[reply.code(), reply.code()])
                .unwrap();
        assert_eq!(status, Status::Ok);
        assert_eq!(decoded, vec![Ok(reply.clone()), Err(Status::Busy)]);
    }
    check("refusal_frame_too_large", &ResponseBatch::encode_refusal(0x0300, Status::FrameTooLarge));
}

#[test]
fn a_mixed_batch_matches_its_golden_bytes() {
    // The nine operations of protocol 1.0; later operations have vectors of their own.
    let ops: Vec<Request> = requests().into_iter().take(9).map(|(_, r)| r).collect();
    let frame = RequestBatch::encode_frame(u64::MAX, 0, &ops);
    check("request_batch_all", &frame);
    let (_, decoded) = RequestBatch::decode(&frame[HEADER_BYTES..], 64).unwrap();
    assert_eq!(decoded, ops.into_iter().map(Ok).collect::<Vec<_>>());
}
