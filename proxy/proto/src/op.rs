//! The operations: one parameter type and one reply type per [`OpCode`].
//!
//! Postcard encodes by position, so every struct here only ever gains fields at the end of a
//! new operation code, and every enum only ever gains variants at its end: the golden vectors in
//! `tests/vectors/` fail when an edit would change the bytes of an existing message.

use core::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{SecretBytes, Status};

/// AES-GCM IV length in bytes (the 96-bit IV of NIST SP 800-38D).
pub const GCM_IV_BYTES: usize = 12;
/// AES-GCM tag length in bytes (full 128-bit tags only).
pub const GCM_TAG_BYTES: usize = 16;
/// Largest `Random` request, so that one operation cannot hold a worker for long.
pub const MAX_RANDOM_BYTES: u32 = 64 * 1024;

/// An operation: its parameters, its code and the type of its reply.
pub trait Op: Serialize + DeserializeOwned + Into<Request> {
    /// The wire code.
    const CODE: OpCode;
    /// What a successful operation answers.
    type Reply: Serialize + DeserializeOwned + TryFrom<Reply, Error = Status>;
}

macro_rules! operations {
    ($( $(#[$doc:meta])* $name:ident = $code:literal => $reply:ty ),+ $(,)?) => {
        /// Operation codes on the wire. Append-only.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum OpCode {
            $( $(#[$doc])* $name = $code, )+
        }

        impl OpCode {
            /// Every operation code, in code order.
            pub const ALL: &'static [OpCode] = &[$(OpCode::$name),+];

            /// The operation for a wire code, if this build knows it.
            pub fn from_code(code: u16) -> Option<OpCode> {
                match code {
                    $( $code => Some(OpCode::$name), )+
                    _ => None,
                }
            }

            /// The wire code.
            pub const fn code(self) -> u16 {
                match self { $( OpCode::$name => $code, )+ }
            }

            /// A stable name, for logs and metric labels.
            pub const fn name(self) -> &'static str {
                match self { $( OpCode::$name => stringify!($name), )+ }
            }

            /// Position in [`OpCode::ALL`], for per-operation tables.
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
            }
        }

        /// Any operation's parameters.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum Request {
            $( $(#[$doc])* $name($name), )+
        }

        /// Any operation's reply.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Reply {
            $( $(#[$doc])* $name($reply), )+
        }

        $(
            impl Op for $name {
                const CODE: OpCode = OpCode::$name;
                type Reply = $reply;
            }

            impl From<$name> for Request {
                fn from(op: $name) -> Request {
                    Request::$name(op)
                }
            }
        )+

        impl Request {
            /// This request's operation code.
            pub fn code(&self) -> OpCode {
                match self { $( Request::$name(_) => OpCode::$name, )+ }
            }

            /// Appends the postcard encoding of the parameters to `out`.
            pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Status> {
                match self { $( Request::$name(op) => encode_into(op, out), )+ }
            }

            /// Decodes the parameters of operation `code`.
            pub fn decode(code: OpCode, bytes: &[u8]) -> Result<Request, Status> {
                match code { $( OpCode::$name => decode::<$name>(bytes).map(Request::$name), )+ }
            }
        }

        impl Reply {
            /// The operation this reply answers.
            pub fn code(&self) -> OpCode {
                match self { $( Reply::$name(_) => OpCode::$name, )+ }
            }

            /// Appends the postcard encoding of the reply to `out`.
            pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Status> {
                match self { $( Reply::$name(r) => encode_into(r, out), )+ }
            }

            /// Decodes the reply of operation `code`.
            pub fn decode(code: OpCode, bytes: &[u8]) -> Result<Reply, Status> {
                match code { $( OpCode::$name => decode::<$reply>(bytes).map(Reply::$name), )+ }
            }
        }
    };
}

operations! {
    /// A deep health check: a real operation on the HSM (answer cached briefly).
    Health = 1 => HealthReport,
    /// A new project KEK for data (AES-GCM encryption and decryption only), generated in the
    /// HSM and returned only wrapped under the MKEK.
    GenerateKek = 2 => Kek,
    /// AES-256-GCM encryption under a project KEK, with a fresh IV.
    Encrypt = 3 => Sealed,
    /// AES-256-GCM decryption under a project KEK.
    Decrypt = 4 => SecretBytes,
    /// A new AES key from the HSM, returned only encrypted (GCM) under a project KEK.
    GenerateSymmetric = 5 => Sealed,
    /// A new key pair generated in the HSM; the private key only wrapped under a project KEK.
    GenerateKeyPair = 6 => KeyPair,
    /// A signature by a wrapped private key, unwrapped only inside the HSM.
    Sign = 7 => Signature,
    /// A blob moved from one project KEK to another.
    Rewrap = 8 => Blob,
    /// Random bytes from the HSM's generator.
    Random = 9 => SecretBytes,
    /// A new key pair generated in the HSM, its private key returned as PKCS#8 sealed (GCM)
    /// under a project KEK: for key pairs whose private key clients retrieve (Barbican
    /// asymmetric orders).
    GenerateKeyPairSealed = 10 => SealedKeyPair,
    /// A new project KEK for keys (wrapping and unwrapping only: the private keys of
    /// [`OpCode::GenerateKeyPair`], [`OpCode::Sign`]), generated in the HSM and returned only
    /// wrapped under the MKEK. Data and keys never share a KEK.
    GenerateWrappingKek = 11 => Kek,
    /// A project KEK wrapped again, inside the HSM, under the token's newest master key
    /// (after `hsm-proxy mkek rotate`): the same id and key in a new blob. A blob already under
    /// the newest comes back as it is.
    RewrapKek = 12 => Kek,
}

macro_rules! reply_conversions {
    ($( $name:ident => $reply:ty ),+ $(,)?) => {
        $(
            impl TryFrom<Reply> for $reply {
                type Error = Status;
                fn try_from(reply: Reply) -> Result<Self, Status> {
                    match reply {
                        Reply::$name(r) => Ok(r),
                        _ => Err(Status::MalformedOperation),
                    }
                }
            }
        )+
    };
}

// `Decrypt` and `Random` share `SecretBytes`; `Encrypt` and `GenerateSymmetric` share `Sealed`;
// both KEK generations share `Kek`.
impl TryFrom<Reply> for SecretBytes {
    type Error = Status;
    fn try_from(reply: Reply) -> Result<Self, Status> {
        match reply {
            Reply::Decrypt(r) | Reply::Random(r) => Ok(r),
            _ => Err(Status::MalformedOperation),
        }
    }
}

impl TryFrom<Reply> for Sealed {
    type Error = Status;
    fn try_from(reply: Reply) -> Result<Self, Status> {
        match reply {
            Reply::Encrypt(r) | Reply::GenerateSymmetric(r) => Ok(r),
            _ => Err(Status::MalformedOperation),
        }
    }
}

impl TryFrom<Reply> for Kek {
    type Error = Status;
    fn try_from(reply: Reply) -> Result<Self, Status> {
        match reply {
            Reply::GenerateKek(r) | Reply::GenerateWrappingKek(r) | Reply::RewrapKek(r) => Ok(r),
            _ => Err(Status::MalformedOperation),
        }
    }
}

reply_conversions! {
    Health => HealthReport,
    GenerateKeyPair => KeyPair,
    GenerateKeyPairSealed => SealedKeyPair,
    Sign => Signature,
    Rewrap => Blob,
}

fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), Status> {
    let buf = core::mem::take(out);
    match postcard::to_extend(value, buf) {
        Ok(buf) => {
            *out = buf;
            Ok(())
        }
        Err(_) => Err(Status::Internal),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        // Trailing bytes mean the sender and we disagree on the layout.
        Ok((_, _)) | Err(_) => Err(Status::MalformedOperation),
    }
}

/// Identifies a project KEK; 16 random bytes chosen by the proxy when it generated the KEK.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KekId(pub [u8; 16]);

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A project KEK as the appliance stores it: its id and the key wrapped under the MKEK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Kek {
    /// The KEK's id.
    pub id: KekId,
    /// The key, wrapped under the MKEK with AES key wrap with padding (RFC 5649).
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
}

/// Parameters of [`OpCode::Health`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Health;

/// What the proxy knows of its HSM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The token's label.
    pub token_label: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The token's model.
    pub model: String,
    /// Worker sessions in the pool.
    pub sessions: u32,
    /// Unwrapped project KEKs held in the HSM.
    pub kek_cache_entries: u32,
    /// How many unwrapped KEKs the proxy keeps at most.
    pub kek_cache_capacity: u32,
    /// How often the PKCS#11 library was re-initialised since start.
    pub reinitializations: u64,
    /// Age of this answer in milliseconds (answers are cached briefly).
    pub age_ms: u32,
}

/// Parameters of [`OpCode::GenerateKek`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GenerateKek;

/// Parameters of [`OpCode::GenerateWrappingKek`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GenerateWrappingKek;

/// AES-256-GCM output: the ciphertext with its IV and tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Sealed {
    /// The ciphertext, as long as the plaintext.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// The 96-bit IV, fresh for every encryption.
    pub iv: [u8; GCM_IV_BYTES],
    /// The 128-bit authentication tag.
    pub tag: [u8; GCM_TAG_BYTES],
}

/// Parameters of [`OpCode::Encrypt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Encrypt {
    /// The project KEK to encrypt under.
    pub kek: Kek,
    /// What to encrypt.
    pub plaintext: SecretBytes,
    /// Additional authenticated data (the appliance binds the secret's id and project).
    #[serde(with = "serde_bytes")]
    pub aad: Vec<u8>,
}

/// Parameters of [`OpCode::Decrypt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Decrypt {
    /// The project KEK the data was encrypted under.
    pub kek: Kek,
    /// What [`Encrypt`] returned.
    pub sealed: Sealed,
    /// The same additional authenticated data as at encryption.
    #[serde(with = "serde_bytes")]
    pub aad: Vec<u8>,
}

/// Parameters of [`OpCode::GenerateSymmetric`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GenerateSymmetric {
    /// The project KEK to seal the new key under.
    pub kek: Kek,
    /// Key length in bits: a multiple of 8 from 8 to 8192 (AES: 128, 192 or 256).
    pub bits: u16,
    /// Additional authenticated data for the sealing, as for [`Encrypt`].
    #[serde(with = "serde_bytes")]
    pub aad: Vec<u8>,
}

/// Key pair algorithms. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum KeyPairSpec {
    /// RSA, 2048-bit modulus, public exponent 65537.
    Rsa2048,
    /// RSA, 3072-bit modulus, public exponent 65537.
    Rsa3072,
    /// RSA, 4096-bit modulus, public exponent 65537.
    Rsa4096,
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
}

/// Parameters of [`OpCode::GenerateKeyPair`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GenerateKeyPair {
    /// The project KEK to wrap the private key under.
    pub kek: Kek,
    /// Which key pair.
    pub spec: KeyPairSpec,
}

/// Parameters of [`OpCode::GenerateKeyPairSealed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GenerateKeyPairSealed {
    /// The project KEK to seal the private key under.
    pub kek: Kek,
    /// Which key pair.
    pub spec: KeyPairSpec,
    /// Additional authenticated data for the sealing, as for [`Encrypt`].
    #[serde(with = "serde_bytes")]
    pub aad: Vec<u8>,
}

/// A generated key pair whose private key is sealed, not wrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKeyPair {
    /// The private key as DER PKCS#8 (PrivateKeyInfo), sealed with AES-256-GCM.
    pub private_key_pkcs8: Sealed,
    /// The public key as DER SubjectPublicKeyInfo.
    #[serde(with = "serde_bytes")]
    pub public_key_der: Vec<u8>,
}

/// What a wrapped key is, so that it can be unwrapped with the right template. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum WrappedKeyKind {
    /// An AES secret key.
    Aes,
    /// An RSA private key.
    RsaPrivate,
    /// An EC private key.
    EcPrivate,
}

/// A key wrapped under a project KEK with AES key wrap with padding (RFC 5649).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct WrappedKey {
    /// What the key is.
    pub kind: WrappedKeyKind,
    /// The wrapped bytes (the token's wrapping of the key; PKCS#8 inside for private keys).
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
}

/// A generated key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// The private key, wrapped under the project KEK.
    pub private_key: WrappedKey,
    /// The public key as DER SubjectPublicKeyInfo.
    #[serde(with = "serde_bytes")]
    pub public_key_der: Vec<u8>,
}

/// Signature mechanisms. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum SignMechanism {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1v15Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1v15Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1v15Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    RsaPssSha512,
    /// ECDSA with SHA-256; the signature is r || s, each as long as the curve order.
    EcdsaSha256,
    /// ECDSA with SHA-384; the signature is r || s, each as long as the curve order.
    EcdsaSha384,
}

/// Parameters of [`OpCode::Sign`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Sign {
    /// The project KEK the private key is wrapped under.
    pub kek: Kek,
    /// The wrapped private key.
    pub key: WrappedKey,
    /// How to sign.
    pub mechanism: SignMechanism,
    /// The message (hashed by the mechanism).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signature bytes, in the mechanism's PKCS#11 form.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Something held under a project KEK. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Blob {
    /// Data sealed with AES-GCM, and the AAD it was sealed with.
    Sealed {
        /// The sealed data.
        sealed: Sealed,
        /// Its additional authenticated data, kept as it is.
        #[serde(with = "serde_bytes")]
        aad: Vec<u8>,
    },
    /// A wrapped key.
    Wrapped(WrappedKey),
}

/// Parameters of [`OpCode::Rewrap`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Rewrap {
    /// The KEK the blob is under now.
    pub old: Kek,
    /// The KEK to move it under.
    pub new: Kek,
    /// The blob.
    pub blob: Blob,
}

/// Parameters of [`OpCode::RewrapKek`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RewrapKek {
    /// The KEK as stored.
    pub kek: Kek,
}

/// Parameters of [`OpCode::Random`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Random {
    /// How many bytes, at most [`MAX_RANDOM_BYTES`].
    pub len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_are_pinned() {
        let pinned: [(OpCode, u16); 12] = [
            (OpCode::Health, 1),
            (OpCode::GenerateKek, 2),
            (OpCode::Encrypt, 3),
            (OpCode::Decrypt, 4),
            (OpCode::GenerateSymmetric, 5),
            (OpCode::GenerateKeyPair, 6),
            (OpCode::Sign, 7),
            (OpCode::Rewrap, 8),
            (OpCode::Random, 9),
            (OpCode::GenerateKeyPairSealed, 10),
            (OpCode::GenerateWrappingKek, 11),
            (OpCode::RewrapKek, 12),
        ];
        assert_eq!(OpCode::ALL.len(), pinned.len());
        for (op, code) in pinned {
            assert_eq!(op.code(), code);
            assert_eq!(OpCode::from_code(code), Some(op));
        }
        assert_eq!(OpCode::from_code(0), None);
        assert_eq!(OpCode::from_code(13), None);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = Vec::new();
        Request::Random(Random { len: 5 }).encode_into(&mut bytes).unwrap();
        bytes.push(0);
        assert_eq!(Request::decode(OpCode::Random, &bytes), Err(Status::MalformedOperation));
    }

    #[test]
    fn typed_reply_conversion() {
        let reply = Reply::Random(SecretBytes::copy_from(b"abc"));
        let bytes: SecretBytes = reply.try_into().unwrap();
        assert_eq!(bytes.expose_secret(), b"abc");
        let wrong = Reply::Sign(Signature { bytes: vec![] });
        assert_eq!(Kek::try_from(wrong), Err(Status::MalformedOperation));
    }
}
