//! AES key wrap with padding (RFC 5649, NIST SP 800-38F KWP), and without (RFC 3394, KW)
//! for keys whose length is a multiple of 8 bytes.

use alloc::vec::Vec;

use aes_kw::{KekAes128, KekAes256};

use crate::error::{Error, Result};

/// Wraps `data` under `kek` with RFC 3394 (no padding: `data` is a multiple of 8 bytes).
pub fn wrap_unpadded(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.len() < 16 || !data.len().is_multiple_of(8) {
        return Err(Error::KeySizeRange);
    }
    let out = match kek.len() {
        16 => KekAes128::try_from(kek).map_err(|_| Error::KeySizeRange)?.wrap_vec(data),
        32 => KekAes256::try_from(kek).map_err(|_| Error::KeySizeRange)?.wrap_vec(data),
        _ => return Err(Error::WrappingKeyTypeInconsistent),
    };
    out.map_err(|_| Error::DataLenRange)
}

/// Unwraps an RFC 3394 blob.
pub fn unwrap_unpadded(kek: &[u8], wrapped: &[u8]) -> Result<Vec<u8>> {
    if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
        return Err(Error::WrappedKeyLenRange);
    }
    let out = match kek.len() {
        16 => KekAes128::try_from(kek).map_err(|_| Error::KeySizeRange)?.unwrap_vec(wrapped),
        32 => KekAes256::try_from(kek).map_err(|_| Error::KeySizeRange)?.unwrap_vec(wrapped),
        _ => return Err(Error::UnwrappingKeyTypeInconsistent),
    };
    out.map_err(|_| Error::WrappedKeyInvalid)
}

/// Wraps `data` under `kek`.
pub fn wrap(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let out = match kek.len() {
        16 => {
            KekAes128::try_from(kek).map_err(|_| Error::KeySizeRange)?.wrap_with_padding_vec(data)
        }
        32 => {
            KekAes256::try_from(kek).map_err(|_| Error::KeySizeRange)?.wrap_with_padding_vec(data)
        }
        _ => return Err(Error::WrappingKeyTypeInconsistent),
    };
    out.map_err(|_| Error::DataLenRange)
}

/// Unwraps `wrapped` under `kek`; any integrity failure is `CKR_WRAPPED_KEY_INVALID`.
pub fn unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Vec<u8>> {
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(Error::WrappedKeyLenRange);
    }
    let out = match kek.len() {
        16 => KekAes128::try_from(kek)
            .map_err(|_| Error::KeySizeRange)?
            .unwrap_with_padding_vec(wrapped),
        32 => KekAes256::try_from(kek)
            .map_err(|_| Error::KeySizeRange)?
            .unwrap_with_padding_vec(wrapped),
        _ => return Err(Error::UnwrappingKeyTypeInconsistent),
    };
    out.map_err(|_| Error::WrappedKeyInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    // RFC 5649 section 6, both examples (a 192-bit KEK is not offered by the device, so the
    // vectors are checked through the same aes-kw code with their KEK).
    #[test]
    fn rfc5649_examples() {
        use aes_kw::KekAes192;
        let kek = KekAes192::from(hex!("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"));
        let key20 = hex!("c37b7e6492584340bed12207808941155068f738");
        let wrapped20 = hex!("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
        assert_eq!(kek.wrap_with_padding_vec(&key20).unwrap(), wrapped20.to_vec());
        assert_eq!(kek.unwrap_with_padding_vec(&wrapped20).unwrap(), key20.to_vec());
        let key7 = hex!("466f7250617369");
        let wrapped7 = hex!("afbeb0f07dfbf5419200f2ccb50bb24f");
        assert_eq!(kek.wrap_with_padding_vec(&key7).unwrap(), wrapped7.to_vec());
        assert_eq!(kek.unwrap_with_padding_vec(&wrapped7).unwrap(), key7.to_vec());
    }

    // RFC 3394 section 4.6: 256 bits of key data under a 256-bit KEK.
    #[test]
    fn rfc3394_256_under_256() {
        let kek = hex!("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let key = hex!("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let wrapped = hex!(
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
        );
        assert_eq!(wrap_unpadded(&kek, &key).unwrap(), wrapped.to_vec());
        assert_eq!(unwrap_unpadded(&kek, &wrapped).unwrap(), key.to_vec());
        let mut bad = wrapped;
        bad[0] ^= 1;
        assert_eq!(unwrap_unpadded(&kek, &bad), Err(Error::WrappedKeyInvalid));
    }

    #[test]
    fn round_trip_and_tamper() {
        let kek = [9u8; 32];
        for len in [1usize, 7, 8, 9, 16, 32, 33, 1217] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wrapped = wrap(&kek, &data).unwrap();
            assert_eq!(unwrap(&kek, &wrapped).unwrap(), data);
            let mut bad = wrapped.clone();
            bad[len % wrapped.len()] ^= 0x80;
            assert_eq!(unwrap(&kek, &bad), Err(Error::WrappedKeyInvalid));
            assert_eq!(unwrap(&[8u8; 32], &wrapped), Err(Error::WrappedKeyInvalid));
        }
        assert_eq!(unwrap(&kek, &[0; 12]), Err(Error::WrappedKeyLenRange));
    }
}
