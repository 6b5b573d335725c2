//! Objects and the fixed-capacity object table.
//!
//! The table is a `heapless::Vec` whose capacity is a const generic: a full table answers
//! `CKR_DEVICE_MEMORY`, as a real device's key store does. Its slots hold boxed objects, and
//! key material is held in zeroizing heap buffers: RSA keys (up to 4096 bits, with their CRT
//! values) vary too much in size for a fixed slot to be sensible, and a table of a few
//! thousand inline objects would not fit on a host thread's stack.

use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::attribute::{ckk, cko};
use crate::error::{Error, Result};

/// Longest CKA_LABEL kept.
pub const LABEL_CAPACITY: usize = 64;
/// Longest CKA_ID kept (a SHA-1 of a public key, as pkcs11-tool makes, fits four times over).
pub const ID_CAPACITY: usize = 64;

/// An object's boolean attributes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags(u32);

#[allow(missing_docs)] // each is the CKA_ of the same name
impl Flags {
    pub const TOKEN: Flags = Flags(1 << 0);
    pub const PRIVATE: Flags = Flags(1 << 1);
    pub const SENSITIVE: Flags = Flags(1 << 2);
    pub const EXTRACTABLE: Flags = Flags(1 << 3);
    pub const ENCRYPT: Flags = Flags(1 << 4);
    pub const DECRYPT: Flags = Flags(1 << 5);
    pub const WRAP: Flags = Flags(1 << 6);
    pub const UNWRAP: Flags = Flags(1 << 7);
    pub const SIGN: Flags = Flags(1 << 8);
    pub const VERIFY: Flags = Flags(1 << 9);
    pub const DERIVE: Flags = Flags(1 << 10);
    pub const MODIFIABLE: Flags = Flags(1 << 11);
    pub const LOCAL: Flags = Flags(1 << 12);
    pub const ALWAYS_SENSITIVE: Flags = Flags(1 << 13);
    pub const NEVER_EXTRACTABLE: Flags = Flags(1 << 14);
    pub const DESTROYABLE: Flags = Flags(1 << 15);
    pub const COPYABLE: Flags = Flags(1 << 16);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets or clears `other`.
    pub fn set(&mut self, other: Flags, on: bool) {
        if on {
            self.0 |= other.0;
        } else {
            self.0 &= !other.0;
        }
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({:#x})", self.0)
    }
}

/// Bytes wiped when dropped and never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// The secret bytes; the name says what the caller is handling.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                v: &[u8],
            ) -> core::result::Result<Self::Value, E> {
                Ok(SecretBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> core::result::Result<Self::Value, E> {
                Ok(SecretBytes(v))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// The elliptic curves the firmware implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

/// DER of the P-256 named-curve OID, as CKA_EC_PARAMS carries it.
pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// DER of the P-384 named-curve OID.
pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

impl Curve {
    /// The curve named by a CKA_EC_PARAMS value.
    pub fn from_params(params: &[u8]) -> Result<Curve> {
        match params {
            OID_P256 => Ok(Curve::P256),
            OID_P384 => Ok(Curve::P384),
            _ => Err(Error::CurveNotSupported),
        }
    }

    /// The CKA_EC_PARAMS value.
    pub const fn params(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_P256,
            Curve::P384 => OID_P384,
        }
    }

    /// Bytes of a scalar.
    pub const fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// What an object holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Material {
    /// A secret key (AES or generic): its value.
    Secret(SecretBytes),
    /// An RSA private key as PKCS#8 DER.
    RsaPrivate(SecretBytes),
    /// An RSA public key: big-endian modulus and exponent.
    RsaPublic {
        /// CKA_MODULUS.
        modulus: Vec<u8>,
        /// CKA_PUBLIC_EXPONENT.
        exponent: Vec<u8>,
    },
    /// An EC private key: its scalar, big-endian and curve-sized.
    EcPrivate {
        /// The curve.
        curve: Curve,
        /// The private scalar.
        scalar: SecretBytes,
    },
    /// An EC public key: its uncompressed SEC1 point.
    EcPublic {
        /// The curve.
        curve: Curve,
        /// `04 || x || y`.
        point: Vec<u8>,
    },
    /// A data object's CKA_VALUE.
    Data(Vec<u8>),
}

impl Material {
    /// CKA_CLASS of an object holding this.
    pub const fn class(&self) -> u64 {
        match self {
            Material::Secret(_) => cko::SECRET_KEY,
            Material::RsaPrivate(_) | Material::EcPrivate { .. } => cko::PRIVATE_KEY,
            Material::RsaPublic { .. } | Material::EcPublic { .. } => cko::PUBLIC_KEY,
            Material::Data(_) => cko::DATA,
        }
    }
}

/// One object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Object {
    /// Its handle, unique for the device's life.
    pub handle: u32,
    /// CKA_KEY_TYPE, for keys.
    pub key_type: Option<u64>,
    /// CKA_LABEL.
    pub label: heapless::Vec<u8, LABEL_CAPACITY>,
    /// CKA_ID.
    pub id: heapless::Vec<u8, ID_CAPACITY>,
    /// The boolean attributes.
    pub flags: Flags,
    /// CKA_KEY_GEN_MECHANISM, for keys made on the device.
    pub key_gen_mechanism: Option<u64>,
    /// The session that owns a session object; `None` for token objects.
    pub owner: Option<u32>,
    /// The key or data.
    pub material: Material,
}

impl Object {
    /// CKA_CLASS.
    pub const fn class(&self) -> u64 {
        self.material.class()
    }

    /// Whether this is a token (persistent) object.
    pub const fn is_token(&self) -> bool {
        self.flags.contains(Flags::TOKEN)
    }

    /// Whether this is a private object (visible only to a logged-in user).
    pub const fn is_private(&self) -> bool {
        self.flags.contains(Flags::PRIVATE)
    }

    /// Fails with `err` unless the object may be used for `usage`.
    pub fn permits(&self, usage: Flags, err: Error) -> Result<()> {
        if self.flags.contains(usage) { Ok(()) } else { Err(err) }
    }

    /// The secret key value, if this is a secret key of `key_type`.
    pub fn secret(&self, key_type: u64, err: Error) -> Result<&[u8]> {
        match (&self.material, self.key_type) {
            (Material::Secret(v), Some(t)) if t == key_type => Ok(v.expose()),
            _ => Err(err),
        }
    }

    /// Key length in bits, for token info and CKA_VALUE_LEN.
    pub fn value_len(&self) -> Option<u64> {
        match &self.material {
            Material::Secret(v) => Some(v.expose().len() as u64),
            _ => None,
        }
    }

    /// Whether the object is a key of `ckk` class-consistent with `class`.
    pub fn is(&self, class: u64, key_type: u64) -> bool {
        self.class() == class && self.key_type == Some(key_type)
    }

    /// Whether this is an AES secret key.
    pub fn is_aes(&self) -> bool {
        self.is(cko::SECRET_KEY, ckk::AES)
    }
}

/// A fixed-capacity table of objects.
#[derive(Debug)]
pub struct ObjectTable<const N: usize> {
    objects: heapless::Vec<alloc::boxed::Box<Object>, N>,
    /// A limit below N, set by the device's profile.
    limit: usize,
    next_handle: u32,
}

impl<const N: usize> Default for ObjectTable<N> {
    fn default() -> Self {
        Self::new(N)
    }
}

impl<const N: usize> ObjectTable<N> {
    /// An empty table holding at most `limit` (capped at N) objects.
    pub fn new(limit: usize) -> Self {
        ObjectTable { objects: heapless::Vec::new(), limit: limit.min(N), next_handle: 1 }
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Objects the table can hold.
    pub fn capacity(&self) -> usize {
        self.limit
    }

    /// Inserts `object` under a new handle, which it returns.
    pub fn insert(&mut self, mut object: Object) -> Result<u32> {
        if self.objects.len() >= self.limit {
            return Err(Error::DeviceMemory);
        }
        let handle = self.next_handle;
        // Handles are never reused while the device runs, so a stale handle cannot name a
        // different key.
        self.next_handle = self.next_handle.checked_add(1).ok_or(Error::DeviceMemory)?;
        object.handle = handle;
        self.objects.push(alloc::boxed::Box::new(object)).map_err(|_| Error::DeviceMemory)?;
        Ok(handle)
    }

    /// Re-inserts an object keeping its handle (restoring persisted token objects).
    pub fn restore(&mut self, object: Object) -> Result<()> {
        if self.objects.len() >= self.limit {
            return Err(Error::DeviceMemory);
        }
        self.next_handle = self.next_handle.max(object.handle.saturating_add(1));
        self.objects.push(alloc::boxed::Box::new(object)).map_err(|_| Error::DeviceMemory)
    }

    /// The object `handle`.
    pub fn get(&self, handle: u32) -> Option<&Object> {
        self.objects.iter().find(|o| o.handle == handle).map(|o| &**o)
    }

    /// The object `handle`, mutably.
    pub fn get_mut(&mut self, handle: u32) -> Option<&mut Object> {
        self.objects.iter_mut().find(|o| o.handle == handle).map(|o| &mut **o)
    }

    /// Removes the object `handle`.
    pub fn remove(&mut self, handle: u32) -> Option<Object> {
        let index = self.objects.iter().position(|o| o.handle == handle)?;
        Some(*self.objects.swap_remove(index))
    }

    /// Removes every object `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&Object) -> bool) {
        self.objects.retain(|o| keep(o));
    }

    /// Every object.
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.objects.iter().map(|o| &**o)
    }

    /// The next handle to be given, persisted so handles are not reused across restarts.
    pub fn next_handle(&self) -> u32 {
        self.next_handle
    }

    /// Never hands out a handle below `next` (restoring persisted state).
    pub fn restore_next_handle(&mut self, next: u32) {
        self.next_handle = self.next_handle.max(next);
    }

    /// Wipes every object (a tamper response).
    pub fn clear(&mut self) {
        self.objects.clear();
    }
}
