//! Mechanisms: their `CKM_*` values, parameters as they cross the wire, and what the device
//! advertises. One file per algorithm family does the cryptography.

pub mod aes;
pub mod ec;
pub mod kwp;
pub mod rsa;

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

#[allow(missing_docs)] // the CKM_ names
pub mod ckm {
    pub const RSA_PKCS_KEY_PAIR_GEN: u64 = 0x0000;
    pub const RSA_PKCS: u64 = 0x0001;
    pub const RSA_PKCS_PSS: u64 = 0x000D;
    pub const SHA256_RSA_PKCS: u64 = 0x0040;
    pub const SHA384_RSA_PKCS: u64 = 0x0041;
    pub const SHA512_RSA_PKCS: u64 = 0x0042;
    pub const SHA256_RSA_PKCS_PSS: u64 = 0x0043;
    pub const SHA384_RSA_PKCS_PSS: u64 = 0x0044;
    pub const SHA512_RSA_PKCS_PSS: u64 = 0x0045;
    pub const SHA256: u64 = 0x0250;
    pub const SHA384: u64 = 0x0260;
    pub const SHA512: u64 = 0x0270;
    pub const GENERIC_SECRET_KEY_GEN: u64 = 0x0350;
    pub const EC_KEY_PAIR_GEN: u64 = 0x1040;
    pub const ECDSA: u64 = 0x1041;
    pub const ECDSA_SHA256: u64 = 0x1044;
    pub const ECDSA_SHA384: u64 = 0x1045;
    pub const ECDSA_SHA512: u64 = 0x1046;
    pub const AES_KEY_GEN: u64 = 0x1080;
    pub const AES_GCM: u64 = 0x1087;
    pub const AES_KEY_WRAP: u64 = 0x2109;
    pub const AES_KEY_WRAP_PAD: u64 = 0x210A;
    pub const ECDH1_DERIVE: u64 = 0x1050;
}

#[allow(missing_docs)] // the CKD_ key derivation functions
pub mod ckd {
    pub const NULL: u64 = 0x1;
}

#[allow(missing_docs)] // the CKG_MGF1_ names
pub mod ckg {
    pub const MGF1_SHA256: u64 = 0x2;
    pub const MGF1_SHA384: u64 = 0x3;
    pub const MGF1_SHA512: u64 = 0x4;
}

/// A mechanism and its parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    /// The `CKM_*` value.
    pub kind: u64,
    /// The parameter, decoded by the front from its C structure.
    pub param: Param,
}

impl Mechanism {
    /// A mechanism without a parameter.
    pub const fn plain(kind: u64) -> Mechanism {
        Mechanism { kind, param: Param::None }
    }
}

/// Mechanism parameters the firmware understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Param {
    /// No parameter.
    None,
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// The IV (12 bytes is the only length accepted).
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: u64,
    },
    /// `CK_GCM_MESSAGE_PARAMS` with `CKG_GENERATE_RANDOM`, for encryption: the device draws
    /// the IV after the caller's fixed leading bytes and returns it before the ciphertext.
    GcmGenerated {
        /// The IV's leading bytes the caller fixes (none, usually).
        fixed: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: u64,
    },
    /// `CK_ECDH1_DERIVE_PARAMS`: the other party's public point and the derivation function
    /// (`CKD_NULL` only, without shared data).
    Ecdh {
        /// The `CKD_*` function.
        kdf: u64,
        /// The other party's EC point, uncompressed (or as a DER OCTET STRING).
        public: Vec<u8>,
    },
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        /// The hash mechanism (`CKM_SHA256`...).
        hash: u64,
        /// The mask generation function (`CKG_MGF1_*`).
        mgf: u64,
        /// Salt length in bytes.
        salt_len: u64,
    },
    /// Bytes the firmware does not interpret (a parameter of a mechanism it rejects).
    Other(Vec<u8>),
}

/// A hash function named by a mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// The hash of `CKM_SHA*` value `ckm`.
    pub fn from_ckm(ckm: u64) -> Option<Hash> {
        match ckm {
            ckm::SHA256 => Some(Hash::Sha256),
            ckm::SHA384 => Some(Hash::Sha384),
            ckm::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The MGF1 function paired with this hash.
    pub const fn mgf(self) -> u64 {
        match self {
            Hash::Sha256 => ckg::MGF1_SHA256,
            Hash::Sha384 => ckg::MGF1_SHA384,
            Hash::Sha512 => ckg::MGF1_SHA512,
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

#[allow(missing_docs)] // the CKF_ mechanism flags
pub mod ckf {
    pub const HW: u64 = 0x1;
    pub const MESSAGE_ENCRYPT: u64 = 0x2;
    pub const MESSAGE_DECRYPT: u64 = 0x4;
    pub const ENCRYPT: u64 = 0x100;
    pub const DECRYPT: u64 = 0x200;
    pub const SIGN: u64 = 0x800;
    pub const VERIFY: u64 = 0x2000;
    pub const GENERATE: u64 = 0x8000;
    pub const GENERATE_KEY_PAIR: u64 = 0x10000;
    pub const DERIVE: u64 = 0x80000;
    pub const WRAP: u64 = 0x20000;
    pub const UNWRAP: u64 = 0x40000;
    pub const EC_F_P: u64 = 0x100000;
    pub const EC_NAMEDCURVE: u64 = 0x800000;
    pub const EC_UNCOMPRESS: u64 = 0x1000000;
}

/// `CK_MECHANISM_INFO` for one mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The `CKM_*` value.
    pub kind: u64,
    /// Smallest key size (bits for RSA and EC, bytes for AES, as PKCS#11 has it).
    pub min_key: u64,
    /// Largest key size.
    pub max_key: u64,
    /// `CKF_*` flags.
    pub flags: u64,
}

/// Every mechanism the device implements.
pub const SUPPORTED: &[Info] = {
    use ckf::*;
    const fn info(kind: u64, min_key: u64, max_key: u64, flags: u64) -> Info {
        Info { kind, min_key, max_key, flags: flags | HW }
    }
    const EC: u64 = EC_F_P | EC_NAMEDCURVE | EC_UNCOMPRESS;
    &[
        info(ckm::RSA_PKCS_KEY_PAIR_GEN, 2048, 4096, GENERATE_KEY_PAIR),
        info(ckm::RSA_PKCS, 2048, 4096, SIGN | VERIFY),
        info(ckm::RSA_PKCS_PSS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA256_RSA_PKCS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA384_RSA_PKCS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA512_RSA_PKCS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA256_RSA_PKCS_PSS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA384_RSA_PKCS_PSS, 2048, 4096, SIGN | VERIFY),
        info(ckm::SHA512_RSA_PKCS_PSS, 2048, 4096, SIGN | VERIFY),
        info(ckm::GENERIC_SECRET_KEY_GEN, 1, 1024, GENERATE),
        info(ckm::EC_KEY_PAIR_GEN, 256, 384, GENERATE_KEY_PAIR | EC),
        info(ckm::ECDSA, 256, 384, SIGN | VERIFY | EC),
        info(ckm::ECDSA_SHA256, 256, 384, SIGN | VERIFY | EC),
        info(ckm::ECDSA_SHA384, 256, 384, SIGN | VERIFY | EC),
        info(ckm::ECDSA_SHA512, 256, 384, SIGN | VERIFY | EC),
        info(ckm::ECDH1_DERIVE, 256, 384, DERIVE | EC),
        info(ckm::AES_KEY_GEN, 16, 32, GENERATE),
        info(ckm::AES_GCM, 16, 32, ENCRYPT | DECRYPT | MESSAGE_ENCRYPT | MESSAGE_DECRYPT),
        info(ckm::AES_KEY_WRAP, 16, 32, WRAP | UNWRAP),
        info(ckm::AES_KEY_WRAP_PAD, 16, 32, WRAP | UNWRAP),
    ]
};

/// The info of mechanism `kind`, if implemented.
pub fn info(kind: u64) -> Option<Info> {
    SUPPORTED.iter().copied().find(|m| m.kind == kind)
}
