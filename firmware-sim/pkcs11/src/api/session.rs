//! Session and login functions.

use firmware_sim_core::command::{SessionInfo, UserType};
use firmware_sim_core::{Command, Error, Response};

use super::token::check_slot;
use super::{secret, unexpected};
use crate::backend::{library, lock};

/// `CKF_RW_SESSION`.
pub(crate) const RW_SESSION: u64 = 0x2;
/// `CKF_SERIAL_SESSION`, which every session must have.
pub(crate) const SERIAL_SESSION: u64 = 0x4;

/// C_OpenSession.
pub(crate) fn open(slot: u64, flags: u64) -> Result<u32, Error> {
    check_slot(slot)?;
    if flags & SERIAL_SESSION == 0 {
        return Err(Error::SessionParallelNotSupported);
    }
    let lib = library()?;
    match lib.execute(Command::OpenSession { read_write: flags & RW_SESSION != 0 })? {
        Response::Session(handle) => {
            lib.session(handle, |s| *s = Default::default());
            Ok(handle)
        }
        other => Err(unexpected(other)),
    }
}

/// C_CloseSession.
pub(crate) fn close(session: u32) -> Result<(), Error> {
    let lib = library()?;
    let result = lib.execute(Command::CloseSession { session });
    lock(&lib.sessions).remove(&session);
    result.map(drop)
}

/// C_CloseAllSessions.
pub(crate) fn close_all(slot: u64) -> Result<(), Error> {
    check_slot(slot)?;
    let lib = library()?;
    lib.execute(Command::CloseAllSessions)?;
    lock(&lib.sessions).clear();
    Ok(())
}

/// C_GetSessionInfo.
pub(crate) fn info(session: u32) -> Result<(u64, SessionInfo), Error> {
    let lib = library()?;
    match lib.execute(Command::SessionInfo { session })? {
        Response::SessionInfo(info) => Ok((lib.slot, info)),
        other => Err(unexpected(other)),
    }
}

/// C_Login.
pub(crate) fn login(session: u32, user: u64, pin: &[u8]) -> Result<(), Error> {
    let user = match user {
        0 => UserType::So,
        1 => UserType::User,
        _ => return Err(Error::UserTypeInvalid),
    };
    library()?.execute(Command::Login { session, user, pin: secret(pin.to_vec()) })?;
    Ok(())
}

/// C_Logout.
pub(crate) fn logout(session: u32) -> Result<(), Error> {
    library()?.execute(Command::Logout { session })?;
    Ok(())
}
