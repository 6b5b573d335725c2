//! PKCS#11 attribute, class and key-type values, and templates as they cross the wire.
//!
//! A value travels as bytes in one canonical form: a `CK_BBOOL` as one byte, a `CK_ULONG` as
//! eight little-endian bytes, anything else as given. The front converts from and to the
//! platform's `CK_ULONG` with [`kind`].

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[allow(missing_docs)] // the CKA_ names
pub mod cka {
    pub const CLASS: u64 = 0x000;
    pub const TOKEN: u64 = 0x001;
    pub const PRIVATE: u64 = 0x002;
    pub const LABEL: u64 = 0x003;
    pub const VALUE: u64 = 0x011;
    pub const KEY_TYPE: u64 = 0x100;
    pub const ID: u64 = 0x102;
    pub const SENSITIVE: u64 = 0x103;
    pub const ENCRYPT: u64 = 0x104;
    pub const DECRYPT: u64 = 0x105;
    pub const WRAP: u64 = 0x106;
    pub const UNWRAP: u64 = 0x107;
    pub const SIGN: u64 = 0x108;
    pub const SIGN_RECOVER: u64 = 0x109;
    pub const VERIFY: u64 = 0x10A;
    pub const VERIFY_RECOVER: u64 = 0x10B;
    pub const DERIVE: u64 = 0x10C;
    pub const MODULUS: u64 = 0x120;
    pub const MODULUS_BITS: u64 = 0x121;
    pub const PUBLIC_EXPONENT: u64 = 0x122;
    pub const PRIVATE_EXPONENT: u64 = 0x123;
    pub const PRIME_1: u64 = 0x124;
    pub const PRIME_2: u64 = 0x125;
    pub const EXPONENT_1: u64 = 0x126;
    pub const EXPONENT_2: u64 = 0x127;
    pub const COEFFICIENT: u64 = 0x128;
    pub const VALUE_LEN: u64 = 0x161;
    pub const EXTRACTABLE: u64 = 0x162;
    pub const LOCAL: u64 = 0x163;
    pub const NEVER_EXTRACTABLE: u64 = 0x164;
    pub const ALWAYS_SENSITIVE: u64 = 0x165;
    pub const KEY_GEN_MECHANISM: u64 = 0x166;
    pub const MODIFIABLE: u64 = 0x170;
    pub const COPYABLE: u64 = 0x171;
    pub const DESTROYABLE: u64 = 0x172;
    pub const EC_PARAMS: u64 = 0x180;
    pub const EC_POINT: u64 = 0x181;
    pub const ALWAYS_AUTHENTICATE: u64 = 0x202;
    pub const WRAP_WITH_TRUSTED: u64 = 0x210;
}

#[allow(missing_docs)] // the CKO_ names
pub mod cko {
    pub const DATA: u64 = 0;
    pub const PUBLIC_KEY: u64 = 2;
    pub const PRIVATE_KEY: u64 = 3;
    pub const SECRET_KEY: u64 = 4;
}

#[allow(missing_docs)] // the CKK_ names
pub mod ckk {
    pub const RSA: u64 = 0x00;
    pub const EC: u64 = 0x03;
    pub const GENERIC_SECRET: u64 = 0x10;
    pub const AES: u64 = 0x1F;
}

/// How a value is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `CK_BBOOL`: one byte.
    Bool,
    /// `CK_ULONG`: eight little-endian bytes on the wire.
    Ulong,
    /// A byte string.
    Bytes,
}

/// The encoding of attribute `kind`; unknown attributes are byte strings.
pub const fn kind(attribute: u64) -> Kind {
    use cka::*;
    match attribute {
        TOKEN | PRIVATE | SENSITIVE | ENCRYPT | DECRYPT | WRAP | UNWRAP | SIGN | SIGN_RECOVER
        | VERIFY | VERIFY_RECOVER | DERIVE | EXTRACTABLE | LOCAL | NEVER_EXTRACTABLE
        | ALWAYS_SENSITIVE | MODIFIABLE | COPYABLE | DESTROYABLE | ALWAYS_AUTHENTICATE
        | WRAP_WITH_TRUSTED => Kind::Bool,
        CLASS | KEY_TYPE | MODULUS_BITS | VALUE_LEN | KEY_GEN_MECHANISM => Kind::Ulong,
        _ => Kind::Bytes,
    }
}

/// One attribute of a template.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// The `CKA_*` type.
    pub kind: u64,
    /// The canonical encoding of the value.
    pub value: Vec<u8>,
}

impl core::fmt::Debug for Attribute {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // A template may carry key material (CKA_VALUE in C_CreateObject): print sizes only.
        write!(f, "Attribute(0x{:X}, {} bytes)", self.kind, self.value.len())
    }
}

impl Drop for Attribute {
    fn drop(&mut self) {
        // A template may carry a key's value (C_CreateObject, C_GetAttributeValue answers).
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl Attribute {
    /// A boolean attribute.
    pub fn bool(kind: u64, value: bool) -> Attribute {
        Attribute { kind, value: alloc::vec![u8::from(value)] }
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(kind: u64, value: u64) -> Attribute {
        Attribute { kind, value: value.to_le_bytes().to_vec() }
    }

    /// A byte-string attribute.
    pub fn bytes(kind: u64, value: &[u8]) -> Attribute {
        Attribute { kind, value: value.to_vec() }
    }
}

/// Read access to a template, checking each value's encoding.
#[derive(Clone, Copy, Debug)]
pub struct Template<'a>(pub &'a [Attribute]);

impl<'a> Template<'a> {
    /// A template, refused if it names an attribute twice (`CKR_TEMPLATE_INCONSISTENT`).
    pub fn checked(attributes: &'a [Attribute]) -> Result<Template<'a>> {
        for (i, a) in attributes.iter().enumerate() {
            if attributes[..i].iter().any(|b| b.kind == a.kind) {
                return Err(Error::TemplateInconsistent);
            }
        }
        Ok(Template(attributes))
    }

    fn find(&self, kind: u64) -> Option<&'a Attribute> {
        self.0.iter().find(|a| a.kind == kind)
    }

    /// A boolean, if present.
    pub fn bool(&self, kind: u64) -> Result<Option<bool>> {
        match self.find(kind) {
            None => Ok(None),
            Some(a) => match a.value.as_slice() {
                [0] => Ok(Some(false)),
                [_] => Ok(Some(true)),
                _ => Err(Error::AttributeValueInvalid),
            },
        }
    }

    /// A `CK_ULONG`, if present.
    pub fn ulong(&self, kind: u64) -> Result<Option<u64>> {
        match self.find(kind) {
            None => Ok(None),
            Some(a) => {
                let bytes: [u8; 8] =
                    a.value.as_slice().try_into().map_err(|_| Error::AttributeValueInvalid)?;
                Ok(Some(u64::from_le_bytes(bytes)))
            }
        }
    }

    /// A byte string, if present.
    pub fn bytes(&self, kind: u64) -> Option<&'a [u8]> {
        self.find(kind).map(|a| a.value.as_slice())
    }

    /// The attribute types present.
    pub fn kinds(&self) -> impl Iterator<Item = u64> + 'a {
        self.0.iter().map(|a| a.kind)
    }
}

/// One answer of `GetAttributes`: the value, or why it is withheld.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// The canonical encoding.
    Present(Vec<u8>),
    /// The object is sensitive or unextractable for this attribute (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

impl Drop for Value {
    fn drop(&mut self) {
        // A non-sensitive key's value may be read out; wipe every copy.
        if let Value::Present(v) = self {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

impl Value {
    /// Takes the bytes of a present value, leaving it empty; `None` for a withheld one.
    pub fn take(&mut self) -> Option<alloc::vec::Vec<u8>> {
        match self {
            Value::Present(v) => Some(core::mem::take(v)),
            Value::Sensitive | Value::Invalid => None,
        }
    }
}

impl core::fmt::Debug for Value {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Value::Present(v) => write!(f, "Present({} bytes)", v.len()),
            Value::Sensitive => f.write_str("Sensitive"),
            Value::Invalid => f.write_str("Invalid"),
        }
    }
}
