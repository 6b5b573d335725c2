//! Library, slot and token functions.

use firmware_sim_core::command::{LABEL_BYTES, TokenInfo};
use firmware_sim_core::mechanism::{self, Info};
use firmware_sim_core::{Command, Error, Response};

use super::{secret, unexpected};
use crate::backend::library;

/// Checks `slot` names the module's one slot.
pub(crate) fn check_slot(slot: u64) -> Result<(), Error> {
    if slot == library()?.slot { Ok(()) } else { Err(Error::SlotIdInvalid) }
}

/// The slots: one, always with its token present.
pub(crate) fn slot_list() -> Result<Vec<u64>, Error> {
    Ok(vec![library()?.slot])
}

/// The token's state.
pub(crate) fn token_info(slot: u64) -> Result<TokenInfo, Error> {
    check_slot(slot)?;
    match library()?.execute(Command::TokenInfo)? {
        Response::TokenInfo(info) => Ok(info),
        other => Err(unexpected(other)),
    }
}

/// The mechanisms implemented.
pub(crate) fn mechanism_list(slot: u64) -> Result<Vec<u64>, Error> {
    check_slot(slot)?;
    Ok(mechanism::SUPPORTED.iter().map(|m| m.kind).collect())
}

/// One mechanism's sizes and flags.
pub(crate) fn mechanism_info(slot: u64, kind: u64) -> Result<Info, Error> {
    check_slot(slot)?;
    mechanism::info(kind).ok_or(Error::MechanismInvalid)
}

/// C_InitToken.
pub(crate) fn init_token(slot: u64, so_pin: &[u8], label: [u8; LABEL_BYTES]) -> Result<(), Error> {
    check_slot(slot)?;
    library()?.execute(Command::InitToken { so_pin: secret(so_pin.to_vec()), label })?;
    Ok(())
}

/// C_InitPIN.
pub(crate) fn init_pin(session: u32, pin: &[u8]) -> Result<(), Error> {
    library()?.execute(Command::InitPin { session, pin: secret(pin.to_vec()) })?;
    Ok(())
}

/// C_SetPIN.
pub(crate) fn set_pin(session: u32, old: &[u8], new: &[u8]) -> Result<(), Error> {
    library()?.execute(Command::SetPin {
        session,
        old: secret(old.to_vec()),
        new: secret(new.to_vec()),
    })?;
    Ok(())
}
