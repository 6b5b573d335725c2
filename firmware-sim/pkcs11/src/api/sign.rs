//! Signatures and verification, single- and multi-part.

use firmware_sim_core::mechanism::Mechanism;
use firmware_sim_core::{Command, Error};

use super::{Out, Produced, Slot, begin, finish, update};
use crate::backend::{Operation, SessionState, library};

fn signing(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.sign
}

fn verifying(s: &mut SessionState) -> &mut Option<Operation> {
    &mut s.verify
}

const SIGN: Slot = signing;
const VERIFY: Slot = verifying;

/// C_SignInit.
pub(crate) fn sign_init(session: u32, mechanism: Mechanism, key: u32) -> Result<(), Error> {
    begin(&*library()?, session, SIGN, Operation::new(mechanism, key))
}

/// C_Sign, or C_SignFinal after updates.
pub(crate) fn sign(session: u32, data: &[u8], out: Out<'_>) -> Result<Produced, Error> {
    finish(&*library()?, session, SIGN, data, out, |op, input| Command::Sign {
        session,
        mechanism: op.mechanism.clone(),
        key: op.key,
        data: input,
    })
}

/// C_SignUpdate.
pub(crate) fn sign_update(session: u32, data: &[u8]) -> Result<(), Error> {
    update(&*library()?, session, SIGN, data)
}

/// C_VerifyInit.
pub(crate) fn verify_init(session: u32, mechanism: Mechanism, key: u32) -> Result<(), Error> {
    begin(&*library()?, session, VERIFY, Operation::new(mechanism, key))
}

/// C_Verify, or C_VerifyFinal after updates (`data` empty). The operation ends either way.
pub(crate) fn verify(session: u32, data: &[u8], signature: &[u8]) -> Result<(), Error> {
    let lib = library()?;
    let op = lib.session(session, |s| s.verify.take()).ok_or(Error::OperationNotInitialized)?;
    let mut input = op.input.to_vec();
    input.extend_from_slice(data);
    lib.execute(Command::Verify {
        session,
        mechanism: op.mechanism,
        key: op.key,
        data: input,
        signature: signature.to_vec(),
    })?;
    Ok(())
}

/// C_VerifyUpdate.
pub(crate) fn verify_update(session: u32, data: &[u8]) -> Result<(), Error> {
    update(&*library()?, session, VERIFY, data)
}
