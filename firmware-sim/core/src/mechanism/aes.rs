//! AES-GCM (NIST SP 800-38D) with 96-bit IVs and full 128-bit tags.

// aes-gcm 0.10 takes its nonces as generic-array 0.14 types, which that crate now marks
// deprecated; there is no other way to call this release.
#![allow(deprecated)]

use alloc::vec::Vec;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm};

use crate::error::{Error, Result};

/// The only IV length accepted: 96 bits, SP 800-38D's recommendation.
pub const IV_BYTES: usize = 12;
/// The only tag length produced and accepted.
pub const TAG_BYTES: usize = 16;

fn check(iv: &[u8], tag_bits: u64) -> Result<()> {
    if iv.len() != IV_BYTES || tag_bits != 8 * TAG_BYTES as u64 {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(())
}

/// Runs the cipher for a 128- or 256-bit key.
fn apply(key: &[u8], iv: &[u8], payload: Payload<'_, '_>, encrypt: bool) -> Result<Vec<u8>> {
    fn with<C: KeyInit + Aead>(
        key: &[u8],
        iv: &[u8],
        payload: Payload<'_, '_>,
        encrypt: bool,
    ) -> Result<core::result::Result<Vec<u8>, aes_gcm::aead::Error>> {
        let cipher = C::new_from_slice(key).map_err(|_| Error::KeySizeRange)?;
        let nonce = GenericArray::from_slice(iv);
        Ok(if encrypt { cipher.encrypt(nonce, payload) } else { cipher.decrypt(nonce, payload) })
    }
    let out = match key.len() {
        16 => with::<Aes128Gcm>(key, iv, payload, encrypt)?,
        32 => with::<Aes256Gcm>(key, iv, payload, encrypt)?,
        _ => return Err(Error::KeySizeRange),
    };
    // Encryption fails only on absurd lengths; decryption on any authentication failure.
    out.map_err(|_| if encrypt { Error::DataLenRange } else { Error::EncryptedDataInvalid })
}

/// Encrypts `data`, returning ciphertext followed by the tag, as PKCS#11 does.
pub fn gcm_encrypt(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_bits: u64,
    data: &[u8],
) -> Result<Vec<u8>> {
    check(iv, tag_bits)?;
    apply(key, iv, Payload { msg: data, aad }, true)
}

/// Decrypts ciphertext-and-tag; a wrong key, IV, AAD or tag is `CKR_ENCRYPTED_DATA_INVALID`.
pub fn gcm_decrypt(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_bits: u64,
    data: &[u8],
) -> Result<Vec<u8>> {
    check(iv, tag_bits)?;
    if data.len() < TAG_BYTES {
        return Err(Error::EncryptedDataLenRange);
    }
    apply(key, iv, Payload { msg: data, aad }, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    // NIST GCM test vectors (gcmEncryptExtIV256.rsp, Count 0 with PT and AAD), as also listed in
    // the GCM specification's test case 16 (AES-256, 60-byte plaintext, 20-byte AAD).
    #[test]
    fn gcm_spec_test_case_16() {
        let key = hex!("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let iv = hex!("cafebabefacedbaddecaf888");
        let pt = hex!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        );
        let aad = hex!("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = hex!(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        );
        let tag = hex!("76fc6ece0f4e1768cddf8853bb2d551b");
        let out = gcm_encrypt(&key, &iv, &aad, 128, &pt).unwrap();
        assert_eq!(&out[..pt.len()], &ct[..]);
        assert_eq!(&out[pt.len()..], &tag[..]);
        assert_eq!(gcm_decrypt(&key, &iv, &aad, 128, &out).unwrap(), pt.to_vec());
    }

    // The GCM specification's test case 2 (AES-128, zero key and IV, one zero block).
    #[test]
    fn gcm_spec_test_case_2() {
        let out = gcm_encrypt(&[0; 16], &[0; 12], &[], 128, &[0; 16]).unwrap();
        assert_eq!(
            out,
            hex!("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf").to_vec()
        );
    }

    #[test]
    fn tampering_is_rejected() {
        let key = [7u8; 32];
        let out = gcm_encrypt(&key, &[1; 12], b"aad", 128, b"secret").unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert_eq!(
                gcm_decrypt(&key, &[1; 12], b"aad", 128, &bad),
                Err(Error::EncryptedDataInvalid)
            );
        }
        assert_eq!(
            gcm_decrypt(&key, &[1; 12], b"aaD", 128, &out),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            gcm_decrypt(&key, &[2; 12], b"aad", 128, &out),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            gcm_decrypt(&key, &[1; 12], b"aad", 128, &out[..15]),
            Err(Error::EncryptedDataLenRange)
        );
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            gcm_encrypt(&[0; 32], &[0; 16], &[], 128, b"x"),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            gcm_encrypt(&[0; 32], &[0; 12], &[], 96, b"x"),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(gcm_encrypt(&[0; 24], &[0; 12], &[], 128, b"x"), Err(Error::KeySizeRange));
    }
}
