//! Encryption and decryption (AES-GCM): single- and multi-part (v2.40), and message-based
//! (v3.0), where one init serves many messages.

use firmware_sim_core::mechanism::{Mechanism, Param, ckm};
use firmware_sim_core::{Command, Error, Response};

use super::{Out, Produced, Slot, begin, deliver, finish, secret, unexpected, update};
use crate::backend::{Operation, SessionState, library};

fn encrypting(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.encrypt
}

fn decrypting(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.decrypt
}

const ENCRYPT: Slot = encrypting;
const DECRYPT: Slot = decrypting;

/// C_EncryptInit.
pub(crate) fn encrypt_init(session: u32, mechanism: Mechanism, key: u32) -> Result<(), Error> {
    begin(&*library()?, session, ENCRYPT, Operation::new(mechanism, key))
}

/// C_Encrypt, or C_EncryptFinal when `data` is empty after updates.
pub(crate) fn encrypt(session: u32, data: &[u8], out: Out<'_>) -> Result<Produced, Error> {
    finish(&*library()?, session, ENCRYPT, data, out, |op, input| Command::Encrypt {
        session,
        mechanism: op.mechanism.clone(),
        key: op.key,
        data: secret(input),
    })
}

/// C_EncryptUpdate: GCM output is produced at the end, so updates only gather input.
pub(crate) fn encrypt_update(session: u32, data: &[u8]) -> Result<(), Error> {
    update(&*library()?, session, ENCRYPT, data)
}

/// C_DecryptInit.
pub(crate) fn decrypt_init(session: u32, mechanism: Mechanism, key: u32) -> Result<(), Error> {
    begin(&*library()?, session, DECRYPT, Operation::new(mechanism, key))
}

/// C_Decrypt, or C_DecryptFinal after updates. No plaintext is released before the tag is
/// checked, which is why updates only gather input.
pub(crate) fn decrypt(session: u32, data: &[u8], out: Out<'_>) -> Result<Produced, Error> {
    finish(&*library()?, session, DECRYPT, data, out, |op, input| Command::Decrypt {
        session,
        mechanism: op.mechanism.clone(),
        key: op.key,
        data: input,
    })
}

/// C_DecryptUpdate.
pub(crate) fn decrypt_update(session: u32, data: &[u8]) -> Result<(), Error> {
    update(&*library()?, session, DECRYPT, data)
}

fn message_encrypting(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.message_encrypt
}

fn message_decrypting(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.message_decrypt
}

const MESSAGE_ENCRYPT: Slot = message_encrypting;
const MESSAGE_DECRYPT: Slot = message_decrypting;

/// One message's AES-GCM parameters (`CK_GCM_MESSAGE_PARAMS`): its IV, and the tag's length.
#[derive(Debug)]
pub(crate) struct GcmMessage<'a> {
    pub(crate) iv: Iv<'a>,
    pub(crate) tag_bits: u64,
}

/// Where a message's IV comes from.
#[derive(Debug)]
pub(crate) enum Iv<'a> {
    /// The caller's (`CKG_NO_GENERATE`).
    Given(&'a [u8]),
    /// The device's (`CKG_GENERATE_RANDOM`), after the caller's `fixed` leading bytes, written
    /// back into the caller's IV buffer `into`.
    Drawn { fixed: usize, into: &'a mut [u8] },
}

impl GcmMessage<'_> {
    fn tag_len(&self) -> Result<usize, Error> {
        if !self.tag_bits.is_multiple_of(8) || !(96..=128).contains(&self.tag_bits) {
            return Err(Error::MechanismParamInvalid);
        }
        usize::try_from(self.tag_bits / 8).map_err(|_| Error::MechanismParamInvalid)
    }

    fn mechanism(&self, aad: &[u8]) -> Result<Mechanism, Error> {
        let (aad, tag_bits) = (aad.to_vec(), self.tag_bits);
        let param = match &self.iv {
            Iv::Given(iv) => Param::Gcm { iv: iv.to_vec(), aad, tag_bits },
            Iv::Drawn { fixed, into } => {
                let fixed = into.get(..*fixed).ok_or(Error::MechanismParamInvalid)?.to_vec();
                Param::GcmGenerated { fixed, aad, tag_bits }
            }
        };
        Ok(Mechanism { kind: ckm::AES_GCM, param })
    }
}

/// The key a message-based operation was started with.
fn message_key(session: u32, slot: Slot) -> Result<u32, Error> {
    library()?
        .session(session, |s| slot(s).as_ref().map(|op| op.key))
        .ok_or(Error::OperationNotInitialized)
}

/// Starts a message-based operation: AES-GCM under `key` for the messages that follow.
fn message_begin(session: u32, slot: Slot, kind: u64, key: u32) -> Result<(), Error> {
    if kind != ckm::AES_GCM {
        return Err(Error::MechanismInvalid);
    }
    let op = Operation::new(Mechanism { kind, param: Param::None }, key);
    begin(&*library()?, session, slot, op)
}

/// Ends a message-based operation.
fn message_end(session: u32, slot: Slot) -> Result<(), Error> {
    library()?
        .session(session, |s| slot(s).take())
        .map(|_| ())
        .ok_or(Error::OperationNotInitialized)
}

/// What a GCM message of `len` bytes needs from the output before the device is asked: its
/// length for a query, or more room. GCM's output is as long as its input, so a length
/// query costs no device round trip.
fn before_device(out: &Out<'_>, len: usize) -> Option<Produced> {
    match out {
        Out::Query => Some(Produced::Length(len)),
        Out::Buffer(buf) if buf.len() < len => Some(Produced::TooSmall(len)),
        Out::Buffer(_) => None,
    }
}

/// C_MessageEncryptInit.
pub(crate) fn message_encrypt_init(session: u32, kind: u64, key: u32) -> Result<(), Error> {
    message_begin(session, MESSAGE_ENCRYPT, kind, key)
}

/// C_EncryptMessage: the ciphertext into `out`, the tag into `tag`, and a drawn IV into the
/// caller's IV buffer.
pub(crate) fn encrypt_message(
    session: u32,
    params: &mut GcmMessage<'_>,
    tag: &mut [u8],
    aad: &[u8],
    plaintext: &[u8],
    out: Out<'_>,
) -> Result<Produced, Error> {
    let key = message_key(session, MESSAGE_ENCRYPT)?;
    let tag_len = params.tag_len()?;
    if tag.len() != tag_len {
        return Err(Error::MechanismParamInvalid);
    }
    if let Some(produced) = before_device(&out, plaintext.len()) {
        return Ok(produced);
    }
    let command = Command::Encrypt {
        session,
        mechanism: params.mechanism(aad)?,
        key,
        data: secret(plaintext.to_vec()),
    };
    let sealed = match library()?.execute(command)? {
        Response::Data(bytes) => bytes,
        other => return Err(unexpected(other)),
    };
    let mut sealed = sealed.expose();
    if let Iv::Drawn { into, .. } = &mut params.iv {
        // The device put the IV it drew first.
        let (iv, rest) = sealed.split_at_checked(into.len()).ok_or(Error::DeviceError)?;
        into.copy_from_slice(iv);
        sealed = rest;
    }
    let (ciphertext, computed) = sealed
        .split_at_checked(plaintext.len())
        .filter(|(_, t)| t.len() == tag_len)
        .ok_or(Error::DeviceError)?;
    tag.copy_from_slice(computed);
    Ok(deliver(out, ciphertext))
}

/// C_MessageEncryptFinal.
pub(crate) fn message_encrypt_final(session: u32) -> Result<(), Error> {
    message_end(session, MESSAGE_ENCRYPT)
}

/// C_MessageDecryptInit.
pub(crate) fn message_decrypt_init(session: u32, kind: u64, key: u32) -> Result<(), Error> {
    message_begin(session, MESSAGE_DECRYPT, kind, key)
}

/// C_DecryptMessage: the tag comes in the parameters.
pub(crate) fn decrypt_message(
    session: u32,
    params: &GcmMessage<'_>,
    tag: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    out: Out<'_>,
) -> Result<Produced, Error> {
    let key = message_key(session, MESSAGE_DECRYPT)?;
    if tag.len() != params.tag_len()? {
        return Err(Error::MechanismParamInvalid);
    }
    if let Some(produced) = before_device(&out, ciphertext.len()) {
        return Ok(produced);
    }
    let mut input = Vec::with_capacity(ciphertext.len() + tag.len());
    input.extend_from_slice(ciphertext);
    input.extend_from_slice(tag);
    if matches!(params.iv, Iv::Drawn { .. }) {
        // Only encryption draws an IV.
        return Err(Error::MechanismParamInvalid);
    }
    let command = Command::Decrypt { session, mechanism: params.mechanism(aad)?, key, data: input };
    match library()?.execute(command)? {
        Response::Data(plaintext) => Ok(deliver(out, plaintext.expose())),
        other => Err(unexpected(other)),
    }
}

/// C_MessageDecryptFinal.
pub(crate) fn message_decrypt_final(session: u32) -> Result<(), Error> {
    message_end(session, MESSAGE_DECRYPT)
}
