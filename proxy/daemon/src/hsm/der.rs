//! Just enough DER to turn PKCS#11 public key attributes into SubjectPublicKeyInfo. Private
//! keys never pass through here: they leave the HSM only wrapped, as PKCS#8.

/// `rsaEncryption` (1.2.840.113549.1.1.1), as a full DER OID.
const OID_RSA_ENCRYPTION: &[u8] =
    &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` / NIST P-256 (1.2.840.10045.3.1.7): also the CKA_EC_PARAMS value.
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` / NIST P-384 (1.3.132.0.34).
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_SEQUENCE: u8 = 0x30;

/// SubjectPublicKeyInfo of an RSA key from its modulus and public exponent (big-endian).
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut key = integer(modulus);
    key.extend(integer(exponent));
    let rsa_public_key = tlv(TAG_SEQUENCE, &key);
    let mut algorithm = OID_RSA_ENCRYPTION.to_vec();
    algorithm.extend(tlv(TAG_NULL, &[]));
    spki(&tlv(TAG_SEQUENCE, &algorithm), &rsa_public_key)
}

/// SubjectPublicKeyInfo of an EC key from its curve OID (full DER) and uncompressed point.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut algorithm = OID_EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(curve_oid);
    spki(&tlv(TAG_SEQUENCE, &algorithm), point)
}

/// The point inside CKA_EC_POINT: PKCS#11 says DER OCTET STRING, some tokens give it raw. A
/// raw uncompressed point also starts with 0x04 and, one time in 256, a second byte that reads
/// as the length of the rest: the DER reading is taken only when what it wraps is a point.
pub(crate) fn ec_point(attribute: &[u8]) -> &[u8] {
    match attribute {
        [TAG_OCTET_STRING, rest @ ..] => match read_len(rest) {
            Some((len, body)) if len == body.len() && is_point(body) => body,
            _ => attribute,
        },
        _ => attribute,
    }
}

/// Whether `bytes` has the shape of a SEC 1 point on P-256, P-384 or P-521.
fn is_point(bytes: &[u8]) -> bool {
    match bytes.first() {
        Some(0x04) => matches!(bytes.len(), 65 | 97 | 133),
        Some(0x02 | 0x03) => matches!(bytes.len(), 33 | 49 | 67),
        _ => false,
    }
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = algorithm.to_vec();
    body.extend(tlv(TAG_BIT_STRING, &bits));
    tlv(TAG_SEQUENCE, &body)
}

/// A positive INTEGER: leading zeros dropped, one added back when the high bit is set.
fn integer(big_endian: &[u8]) -> Vec<u8> {
    let first = big_endian.iter().position(|b| *b != 0).unwrap_or(big_endian.len());
    let digits = big_endian.get(first..).unwrap_or_default();
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(TAG_INTEGER, &content)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len.to_be_bytes()[7]);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(7);
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len().to_be_bytes()[7]);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// The whole length (tag, length and content) of the DER element `bytes` starts with.
pub(crate) fn element_len(bytes: &[u8]) -> Option<usize> {
    let (_, rest) = bytes.split_first()?;
    let (len, body) = read_len(rest)?;
    let total = (bytes.len() - body.len()).checked_add(len)?;
    (total <= bytes.len()).then_some(total)
}

fn read_len(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    if first < 0x80 {
        return Some((usize::from(first), rest));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let (len_bytes, body) = rest.split_at(n);
    let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_read_raw_or_wrapped() {
        let mut raw = vec![0x04, 0x3f];
        raw.extend_from_slice(&[7; 63]);
        // A raw point whose x-coordinate starts 0x3f reads as a 63-byte OCTET STRING: raw.
        assert_eq!(ec_point(&raw), raw.as_slice());
        let mut wrapped = vec![TAG_OCTET_STRING, 65];
        wrapped.extend_from_slice(&raw);
        assert_eq!(ec_point(&wrapped), raw.as_slice());
        let mut long = vec![TAG_OCTET_STRING, 0x81, 97, 0x04];
        long.extend_from_slice(&[9; 96]);
        assert_eq!(ec_point(&long).len(), 97);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(integer(&[0x00, 0x01, 0x00, 0x01]), vec![0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths() {
        let content = vec![0xaa; 300];
        let out = tlv(TAG_SEQUENCE, &content);
        assert_eq!(&out[..4], &[0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(out.len(), 304);
    }

    #[test]
    fn element_lengths_count_tag_length_and_content() {
        assert_eq!(element_len(&[0x30, 0x02, 0x05, 0x00, 0x00, 0x00]), Some(4));
        let long = tlv(TAG_SEQUENCE, &[0xaa; 300]);
        assert_eq!(element_len(&long), Some(304));
        assert_eq!(element_len(&long[..303]), None);
        assert_eq!(element_len(&[]), None);
    }

    #[test]
    fn ec_point_unwraps_octet_string() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[1; 64]);
        let mut wrapped = vec![TAG_OCTET_STRING, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(ec_point(&wrapped), point.as_slice());
        assert_eq!(ec_point(&point), point.as_slice());
        // What the OCTET STRING holds is no point: the attribute is taken as it is.
        let odd = [TAG_OCTET_STRING, 4, 0x04, 1, 2, 3];
        assert_eq!(ec_point(&odd), &odd);
    }
}
