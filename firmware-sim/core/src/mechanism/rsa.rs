//! RSA: key pair generation (2048, 3072, 4096 bits), PKCS #1 v1.5 and PSS signatures.
//!
//! Private keys are held as PKCS#8 DER, which is also their wrapped form.

use alloc::vec::Vec;

use rand_core::CryptoRngCore;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};

use super::{Hash, Mechanism, Param, ckm};
use crate::error::{Error, Result};
use crate::object::SecretBytes;

/// Modulus sizes the device generates.
pub const KEY_BITS: [u64; 3] = [2048, 3072, 4096];

/// A new key pair: PKCS#8 private key, modulus, public exponent.
pub fn generate(
    rng: &mut impl CryptoRngCore,
    bits: u64,
    exponent: &[u8],
) -> Result<(SecretBytes, Vec<u8>, Vec<u8>)> {
    if !KEY_BITS.contains(&bits) {
        return Err(Error::KeySizeRange);
    }
    let e = BigUint::from_bytes_be(exponent);
    // F4 only: the exponent every consumer accepts and the only one FIPS 186-5 keys need.
    if e != BigUint::from(65_537u32) {
        return Err(Error::TemplateInconsistent);
    }
    let bits = usize::try_from(bits).map_err(|_| Error::KeySizeRange)?;
    let key = RsaPrivateKey::new_with_exp(rng, bits, &e).map_err(|_| Error::FunctionFailed)?;
    let pkcs8 = key.to_pkcs8_der().map_err(|_| Error::FunctionFailed)?;
    Ok((SecretBytes::new(pkcs8.as_bytes().to_vec()), key.n().to_bytes_be(), key.e().to_bytes_be()))
}

/// Parses a PKCS#8 RSA private key.
pub fn private_key(pkcs8: &[u8]) -> Result<RsaPrivateKey> {
    let key = RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|_| Error::WrappedKeyInvalid)?;
    if !KEY_BITS.contains(&(key.size() as u64 * 8)) {
        return Err(Error::KeySizeRange);
    }
    Ok(key)
}

/// Modulus and public exponent of a private key.
pub fn public_parts(pkcs8: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let key = private_key(pkcs8)?;
    Ok((key.n().to_bytes_be(), key.e().to_bytes_be()))
}

/// The private components in CKA order: d, p, q, d mod (p-1), d mod (q-1), q^-1 mod p.
pub fn private_parts(pkcs8: &[u8]) -> Result<[SecretBytes; 6]> {
    let mut key = private_key(pkcs8)?;
    key.precompute().map_err(|_| Error::FunctionFailed)?;
    let primes = key.primes();
    let [p, q] = primes else {
        return Err(Error::FunctionFailed);
    };
    let part = |v: &BigUint| SecretBytes::new(v.to_bytes_be());
    let (Some(dp), Some(dq), Some(qinv)) = (key.dp(), key.dq(), key.crt_coefficient()) else {
        return Err(Error::FunctionFailed);
    };
    Ok([part(key.d()), part(p), part(q), part(dp), part(dq), part(&qinv)])
}

enum Scheme {
    Pkcs1(Pkcs1v15Sign),
    Pss(Pss),
}

/// The scheme of `mechanism` and the hash to apply to the data first, if any.
fn scheme(mechanism: &Mechanism) -> Result<(Scheme, Option<Hash>)> {
    let pkcs1 = |h: Hash| {
        let scheme = match h {
            Hash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        };
        (Scheme::Pkcs1(scheme), Some(h))
    };
    let pss = |expected: Option<Hash>| -> Result<(Scheme, Option<Hash>)> {
        let Param::Pss { hash, mgf, salt_len } = mechanism.param else {
            return Err(Error::MechanismParamInvalid);
        };
        let hash = Hash::from_ckm(hash).ok_or(Error::MechanismParamInvalid)?;
        if expected.is_some_and(|e| e != hash) || mgf != hash.mgf() {
            return Err(Error::MechanismParamInvalid);
        }
        let salt = usize::try_from(salt_len).map_err(|_| Error::MechanismParamInvalid)?;
        let scheme = match hash {
            Hash::Sha256 => Pss::new_with_salt::<sha2::Sha256>(salt),
            Hash::Sha384 => Pss::new_with_salt::<sha2::Sha384>(salt),
            Hash::Sha512 => Pss::new_with_salt::<sha2::Sha512>(salt),
        };
        Ok((Scheme::Pss(scheme), expected))
    };
    match mechanism.kind {
        // Raw PKCS #1 v1.5: the caller supplies the DigestInfo.
        ckm::RSA_PKCS => Ok((Scheme::Pkcs1(Pkcs1v15Sign::new_unprefixed()), None)),
        ckm::SHA256_RSA_PKCS => Ok(pkcs1(Hash::Sha256)),
        ckm::SHA384_RSA_PKCS => Ok(pkcs1(Hash::Sha384)),
        ckm::SHA512_RSA_PKCS => Ok(pkcs1(Hash::Sha512)),
        ckm::RSA_PKCS_PSS => pss(None),
        ckm::SHA256_RSA_PKCS_PSS => pss(Some(Hash::Sha256)),
        ckm::SHA384_RSA_PKCS_PSS => pss(Some(Hash::Sha384)),
        ckm::SHA512_RSA_PKCS_PSS => pss(Some(Hash::Sha512)),
        _ => Err(Error::MechanismInvalid),
    }
}

/// Whether `kind` is an RSA signature mechanism.
pub fn is_signature(kind: u64) -> bool {
    matches!(
        kind,
        ckm::RSA_PKCS
            | ckm::SHA256_RSA_PKCS
            | ckm::SHA384_RSA_PKCS
            | ckm::SHA512_RSA_PKCS
            | ckm::RSA_PKCS_PSS
            | ckm::SHA256_RSA_PKCS_PSS
            | ckm::SHA384_RSA_PKCS_PSS
            | ckm::SHA512_RSA_PKCS_PSS
    )
}

/// Signs `data` with the PKCS#8 key.
pub fn sign(
    rng: &mut impl CryptoRngCore,
    pkcs8: &[u8],
    mechanism: &Mechanism,
    data: &[u8],
) -> Result<Vec<u8>> {
    let (scheme, hash) = scheme(mechanism)?;
    let key = private_key(pkcs8)?;
    let digest = hash.map(|h| h.digest(data));
    let input = digest.as_deref().unwrap_or(data);
    let out = match scheme {
        Scheme::Pkcs1(s) => key.sign_with_rng(rng, s, input),
        Scheme::Pss(s) => key.sign_with_rng(rng, s, input),
    };
    out.map_err(|_| Error::DataLenRange)
}

/// Verifies `signature` over `data` with a public key.
pub fn verify(
    modulus: &[u8],
    exponent: &[u8],
    mechanism: &Mechanism,
    data: &[u8],
    signature: &[u8],
) -> Result<()> {
    let (scheme, hash) = scheme(mechanism)?;
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from_bytes_be(exponent))
        .map_err(|_| Error::KeyTypeInconsistent)?;
    if signature.len() != key.size() {
        return Err(Error::SignatureLenRange);
    }
    let digest = hash.map(|h| h.digest(data));
    let input = digest.as_deref().unwrap_or(data);
    let out = match scheme {
        Scheme::Pkcs1(s) => key.verify(s, input, signature),
        Scheme::Pss(s) => key.verify(s, input, signature),
    };
    out.map_err(|_| Error::SignatureInvalid)
}
