//! The master keys (MKEKs): every AES key in the token labelled `[pkcs11] mkek_label`, told
//! apart by generation. The newest wraps new KEKs; older ones still unwrap the blobs made under
//! them until `hsm-proxy mkek destroy` removes them, after which those blobs (and every backup
//! holding them) open nowhere.
//!
//! A master key's generation is in its `CKA_ID`: the 8 bytes `mkek-gen`, then the generation
//! as a big-endian integer. A master key with any other id (made before generations were
//! named, with a 16-byte random id) is generation 0; `init-token` makes generation 1 and `mkek
//! rotate` the next. Blobs name the generation they are wrapped under
//! ([`crate::keys::KekBlob`]).

use std::collections::BTreeMap;
use std::time::Instant;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::error::{Error, Result};

/// The token's master keys as last read.
#[derive(Debug)]
pub(crate) struct Mkeks {
    handles: BTreeMap<u64, ObjectHandle>,
    /// The newest generation and its handle.
    active: (u64, ObjectHandle),
    /// When the token was last searched.
    pub(crate) scanned: Instant,
}

impl Mkeks {
    /// The newest: its generation and handle.
    pub(crate) fn active(&self) -> (u64, ObjectHandle) {
        self.active
    }

    /// The master key of `generation`, if the token holds it.
    pub(crate) fn get(&self, generation: u64) -> Option<ObjectHandle> {
        self.handles.get(&generation).copied()
    }

    /// Every generation present, oldest first.
    pub(crate) fn generations(&self) -> Vec<u64> {
        self.handles.keys().copied().collect()
    }
}

/// What starts the `CKA_ID` of a master key that names its generation.
const ID_MARKER: &[u8; 8] = b"mkek-gen";

/// The generation a master key's `CKA_ID` names.
fn generation(id: &[u8]) -> u64 {
    match id.split_at_checked(ID_MARKER.len()) {
        Some((marker, number)) if marker == ID_MARKER => {
            <[u8; 8]>::try_from(number).map_or(0, u64::from_be_bytes)
        }
        _ => 0,
    }
}

/// The `CKA_ID` of master key `generation`.
fn id(generation: u64) -> Vec<u8> {
    let mut id = ID_MARKER.to_vec();
    id.extend_from_slice(&generation.to_be_bytes());
    id
}

/// Finds every master key under `label`, checking that each is a sensitive, non-extractable
/// AES key that wraps and unwraps; `None` when there is none.
pub(crate) fn scan(session: &Session, label: &str) -> Result<Option<Mkeks>> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    let mut handles = BTreeMap::new();
    for handle in found {
        let attributes = session.get_attributes(
            handle,
            &[
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Wrap,
                AttributeType::Unwrap,
            ],
        )?;
        let mut id = Vec::new();
        for attribute in attributes {
            let ok = match attribute {
                Attribute::Id(ref v) => {
                    id.clone_from(v);
                    true
                }
                Attribute::KeyType(t) => t == KeyType::AES,
                Attribute::Sensitive(v) | Attribute::Wrap(v) | Attribute::Unwrap(v) => v,
                Attribute::Extractable(v) => !v,
                _ => true,
            };
            if !ok {
                return Err(Error::Token(format!(
                    "a key labelled {label:?} is not a sensitive, non-extractable AES wrapping \
                     key ({attribute:?}); refusing to use it as a master key"
                )));
            }
        }
        let generation = generation(&id);
        if handles.insert(generation, handle).is_some() {
            return Err(Error::Token(format!(
                "two keys labelled {label:?} are master key generation {generation}"
            )));
        }
    }
    let Some(active) = handles.last_key_value().map(|(g, h)| (*g, *h)) else { return Ok(None) };
    Ok(Some(Mkeks { handles, active, scanned: Instant::now() }))
}

/// Generates master key `generation` in the token: a persistent AES-256 key that wraps and
/// unwraps keys only, and never leaves.
pub(crate) fn create(session: &Session, label: &str, generation: u64) -> Result<ObjectHandle> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id(generation)),
    ];
    Ok(session.generate_key(&Mechanism::AesKeyGen, &template)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_come_from_marked_ids() {
        assert_eq!(generation(&id(1)), 1);
        assert_eq!(generation(&id(256)), 256);
        assert_eq!(generation(&id(u64::MAX)), u64::MAX);
        // The random 16-byte id of a master key from before generations, or any other id.
        assert_eq!(generation(&[0x5a; 16]), 0);
        assert_eq!(generation(&1u64.to_be_bytes()), 0);
        assert_eq!(generation(&id(3)[..15]), 0);
        assert_eq!(generation(&[]), 0);
    }
}
