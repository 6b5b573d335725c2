//! Key generation, derivation, wrapping and random numbers.

use firmware_sim_core::attribute::Attribute;
use firmware_sim_core::mechanism::Mechanism;
use firmware_sim_core::{Command, Error, Response};

use super::{Out, Produced, deliver, unexpected};
use crate::backend::library;

/// C_GenerateKey.
pub(crate) fn generate_key(
    session: u32,
    mechanism: Mechanism,
    template: Vec<Attribute>,
) -> Result<u32, Error> {
    match library()?.execute(Command::GenerateKey { session, mechanism, template })? {
        Response::Object(handle) => Ok(handle),
        other => Err(unexpected(other)),
    }
}

/// C_GenerateKeyPair: (public, private).
pub(crate) fn generate_key_pair(
    session: u32,
    mechanism: Mechanism,
    public: Vec<Attribute>,
    private: Vec<Attribute>,
) -> Result<(u32, u32), Error> {
    match library()?.execute(Command::GenerateKeyPair { session, mechanism, public, private })? {
        Response::Pair { public, private } => Ok((public, private)),
        other => Err(unexpected(other)),
    }
}

/// C_WrapKey. A length query and the call that follows it cost one device round trip.
pub(crate) fn wrap(
    session: u32,
    mechanism: Mechanism,
    wrapping_key: u32,
    key: u32,
    out: Out<'_>,
) -> Result<Produced, Error> {
    let lib = library()?;
    let cached = lib.session(session, |s| s.wrapped.take());
    let wrapped = match cached {
        Some((w, k, m, bytes)) if w == wrapping_key && k == key && m == mechanism => bytes,
        _ => match lib.execute(Command::WrapKey {
            session,
            mechanism: mechanism.clone(),
            wrapping_key,
            key,
        })? {
            Response::Data(bytes) => bytes,
            other => return Err(unexpected(other)),
        },
    };
    let produced = deliver(out, wrapped.expose());
    if !matches!(produced, Produced::Written(_)) {
        lib.session(session, |s| s.wrapped = Some((wrapping_key, key, mechanism, wrapped)));
    }
    Ok(produced)
}

/// C_UnwrapKey.
pub(crate) fn unwrap(
    session: u32,
    mechanism: Mechanism,
    unwrapping_key: u32,
    wrapped: &[u8],
    template: Vec<Attribute>,
) -> Result<u32, Error> {
    let command = Command::UnwrapKey {
        session,
        mechanism,
        unwrapping_key,
        wrapped: wrapped.to_vec(),
        template,
    };
    match library()?.execute(command)? {
        Response::Object(handle) => Ok(handle),
        other => Err(unexpected(other)),
    }
}

/// C_DeriveKey.
pub(crate) fn derive(
    session: u32,
    mechanism: Mechanism,
    base: u32,
    template: Vec<Attribute>,
) -> Result<u32, Error> {
    match library()?.execute(Command::DeriveKey { session, mechanism, base, template })? {
        Response::Object(handle) => Ok(handle),
        other => Err(unexpected(other)),
    }
}

/// C_GenerateRandom: fills `out`.
pub(crate) fn random(session: u32, out: &mut [u8]) -> Result<(), Error> {
    let len = u32::try_from(out.len()).map_err(|_| Error::DataLenRange)?;
    match library()?.execute(Command::Random { session, len })? {
        Response::Data(bytes) if bytes.expose().len() == out.len() => {
            out.copy_from_slice(bytes.expose());
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
