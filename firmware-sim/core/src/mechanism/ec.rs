//! ECDSA over P-256 and P-384: key pair generation, signing and verification; and ECDH's
//! shared secret.
//!
//! Signatures are `r || s`, each curve-sized, as PKCS#11 defines them. Private keys are
//! wrapped as PKCS#8.

use alloc::vec::Vec;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand_core::CryptoRngCore;

use super::{Hash, ckm};
use crate::error::{Error, Result};
use crate::object::{Curve, SecretBytes};

/// A new key pair: the scalar and the uncompressed public point.
pub fn generate(rng: &mut impl CryptoRngCore, curve: Curve) -> (SecretBytes, Vec<u8>) {
    match curve {
        Curve::P256 => {
            let key = p256::SecretKey::random(rng);
            let point = key.public_key().to_encoded_point(false).as_bytes().to_vec();
            (SecretBytes::new(key.to_bytes().to_vec()), point)
        }
        Curve::P384 => {
            let key = p384::SecretKey::random(rng);
            let point = key.public_key().to_encoded_point(false).as_bytes().to_vec();
            (SecretBytes::new(key.to_bytes().to_vec()), point)
        }
    }
}

/// The public point of a scalar.
pub fn public_point(curve: Curve, scalar: &[u8]) -> Result<Vec<u8>> {
    Ok(match curve {
        Curve::P256 => p256::SecretKey::from_slice(scalar)
            .map_err(|_| Error::KeyTypeInconsistent)?
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
        Curve::P384 => p384::SecretKey::from_slice(scalar)
            .map_err(|_| Error::KeyTypeInconsistent)?
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    })
}

/// Checks that `point` is an uncompressed point on `curve`.
pub fn verify_point(curve: Curve, point: &[u8]) -> Result<()> {
    let ok = match curve {
        Curve::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
    };
    if ok && point.first() == Some(&0x04) { Ok(()) } else { Err(Error::AttributeValueInvalid) }
}

/// The x-coordinate of the ECDH shared secret of a private scalar and a peer's point.
pub fn shared_x(curve: Curve, scalar: &[u8], point: &[u8]) -> Result<SecretBytes> {
    let shared = match curve {
        Curve::P256 => {
            let secret =
                p256::SecretKey::from_slice(scalar).map_err(|_| Error::KeyTypeInconsistent)?;
            let public = p256::PublicKey::from_sec1_bytes(point)
                .map_err(|_| Error::MechanismParamInvalid)?;
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
            shared.raw_secret_bytes().to_vec()
        }
        Curve::P384 => {
            let secret =
                p384::SecretKey::from_slice(scalar).map_err(|_| Error::KeyTypeInconsistent)?;
            let public = p384::PublicKey::from_sec1_bytes(point)
                .map_err(|_| Error::MechanismParamInvalid)?;
            let shared = p384::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
            shared.raw_secret_bytes().to_vec()
        }
    };
    Ok(SecretBytes::new(shared))
}

/// PKCS#8 DER of a private key.
pub fn to_pkcs8(curve: Curve, scalar: &[u8]) -> Result<SecretBytes> {
    let der = match curve {
        Curve::P256 => p256::SecretKey::from_slice(scalar)
            .map_err(|_| Error::KeyTypeInconsistent)?
            .to_pkcs8_der(),
        Curve::P384 => p384::SecretKey::from_slice(scalar)
            .map_err(|_| Error::KeyTypeInconsistent)?
            .to_pkcs8_der(),
    };
    Ok(SecretBytes::new(der.map_err(|_| Error::FunctionFailed)?.as_bytes().to_vec()))
}

/// A private key from PKCS#8 DER, with its curve.
pub fn from_pkcs8(der: &[u8]) -> Result<(Curve, SecretBytes)> {
    if let Ok(key) = p256::SecretKey::from_pkcs8_der(der) {
        return Ok((Curve::P256, SecretBytes::new(key.to_bytes().to_vec())));
    }
    if let Ok(key) = p384::SecretKey::from_pkcs8_der(der) {
        return Ok((Curve::P384, SecretBytes::new(key.to_bytes().to_vec())));
    }
    Err(Error::WrappedKeyInvalid)
}

/// The hash an ECDSA mechanism applies first; `None` for raw CKM_ECDSA over a digest.
fn prehash(kind: u64) -> Result<Option<Hash>> {
    match kind {
        ckm::ECDSA => Ok(None),
        ckm::ECDSA_SHA256 => Ok(Some(Hash::Sha256)),
        ckm::ECDSA_SHA384 => Ok(Some(Hash::Sha384)),
        ckm::ECDSA_SHA512 => Ok(Some(Hash::Sha512)),
        _ => Err(Error::MechanismInvalid),
    }
}

/// Whether `kind` is an ECDSA mechanism.
pub fn is_signature(kind: u64) -> bool {
    prehash(kind).is_ok()
}

fn digest_of(kind: u64, data: &[u8]) -> Result<Vec<u8>> {
    let digest = match prehash(kind)? {
        Some(h) => h.digest(data),
        None => data.to_vec(),
    };
    // A raw CKM_ECDSA input must be a digest: at least 20 bytes (SHA-1) and at most 64.
    if !(20..=64).contains(&digest.len()) {
        return Err(Error::DataLenRange);
    }
    Ok(digest)
}

/// Signs with RFC 6979 deterministic nonces.
pub fn sign(curve: Curve, scalar: &[u8], kind: u64, data: &[u8]) -> Result<Vec<u8>> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let digest = digest_of(kind, data)?;
    match curve {
        Curve::P256 => {
            let key = p256::ecdsa::SigningKey::from_slice(scalar)
                .map_err(|_| Error::KeyTypeInconsistent)?;
            let sig: p256::ecdsa::Signature =
                key.sign_prehash(&digest).map_err(|_| Error::DataInvalid)?;
            Ok(sig.to_bytes().to_vec())
        }
        Curve::P384 => {
            let key = p384::ecdsa::SigningKey::from_slice(scalar)
                .map_err(|_| Error::KeyTypeInconsistent)?;
            let sig: p384::ecdsa::Signature =
                key.sign_prehash(&digest).map_err(|_| Error::DataInvalid)?;
            Ok(sig.to_bytes().to_vec())
        }
    }
}

/// Verifies an `r || s` signature against an uncompressed point.
pub fn verify(curve: Curve, point: &[u8], kind: u64, data: &[u8], signature: &[u8]) -> Result<()> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let digest = digest_of(kind, data)?;
    if signature.len() != 2 * curve.scalar_len() {
        return Err(Error::SignatureLenRange);
    }
    let ok = match curve {
        Curve::P256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|_| Error::KeyTypeInconsistent)?;
            let sig = p256::ecdsa::Signature::from_slice(signature)
                .map_err(|_| Error::SignatureInvalid)?;
            key.verify_prehash(&digest, &sig).is_ok()
        }
        Curve::P384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|_| Error::KeyTypeInconsistent)?;
            let sig = p384::ecdsa::Signature::from_slice(signature)
                .map_err(|_| Error::SignatureInvalid)?;
            key.verify_prehash(&digest, &sig).is_ok()
        }
    };
    if ok { Ok(()) } else { Err(Error::SignatureInvalid) }
}
