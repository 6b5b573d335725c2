//! Encryption and decryption (AES-GCM), single- and multi-part.

use firmware_sim_core::mechanism::Mechanism;
use firmware_sim_core::{Command, Error};

use super::{Out, Produced, Slot, begin, finish, secret, update};
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
