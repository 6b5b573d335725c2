//! Object functions: create, destroy, attributes, search.

use std::collections::VecDeque;

use firmware_sim_core::attribute::{Attribute, Value};
use firmware_sim_core::{Command, Error, Response};

use super::unexpected;
use crate::backend::library;

/// C_CreateObject.
pub(crate) fn create(session: u32, template: Vec<Attribute>) -> Result<u32, Error> {
    match library()?.execute(Command::CreateObject { session, template })? {
        Response::Object(handle) => Ok(handle),
        other => Err(unexpected(other)),
    }
}

/// C_DestroyObject.
pub(crate) fn destroy(session: u32, object: u32) -> Result<(), Error> {
    let lib = library()?;
    lib.session(session, |s| s.attributes = None);
    lib.execute(Command::DestroyObject { session, object })?;
    Ok(())
}

/// C_GetAttributeValue: the values of `kinds`, answered from the previous call's read when
/// it covers them (callers ask for lengths, then values).
pub(crate) fn get(session: u32, object: u32, kinds: &[u64]) -> Result<Vec<Value>, Error> {
    let lib = library()?;
    let cached = lib.session(session, |s| s.attributes.take());
    if let Some((cached_object, values)) = cached
        && cached_object == object
    {
        let found: Option<Vec<Value>> = kinds
            .iter()
            .map(|k| values.iter().find(|(kind, _)| kind == k).map(|(_, v)| v.clone()))
            .collect();
        if let Some(found) = found {
            return Ok(found);
        }
    }
    let values =
        match lib.execute(Command::GetAttributes { session, object, kinds: kinds.to_vec() })? {
            Response::Attributes(values) if values.len() == kinds.len() => values,
            other => return Err(unexpected(other)),
        };
    let wanted_again = values.iter().any(|v| matches!(v, Value::Present(_)));
    if wanted_again {
        let keep = kinds.iter().copied().zip(values.iter().cloned()).collect();
        lib.session(session, |s| s.attributes = Some((object, keep)));
    }
    Ok(values)
}

/// C_SetAttributeValue.
pub(crate) fn set(session: u32, object: u32, template: Vec<Attribute>) -> Result<(), Error> {
    let lib = library()?;
    lib.session(session, |s| s.attributes = None);
    lib.execute(Command::SetAttributes { session, object, template })?;
    Ok(())
}

/// C_FindObjectsInit: the search runs now; C_FindObjects hands out the results.
pub(crate) fn find_init(session: u32, template: Vec<Attribute>) -> Result<(), Error> {
    let lib = library()?;
    if lib.session(session, |s| s.find.is_some()) {
        return Err(Error::OperationActive);
    }
    let found = match lib.execute(Command::FindObjects { session, template })? {
        Response::Objects(found) => found,
        other => return Err(unexpected(other)),
    };
    lib.session(session, |s| s.find = Some(VecDeque::from(found)));
    Ok(())
}

/// C_FindObjects: up to `max` more handles.
pub(crate) fn find(session: u32, max: usize) -> Result<Vec<u32>, Error> {
    library()?.session(session, |s| {
        let pending = s.find.as_mut().ok_or(Error::OperationNotInitialized)?;
        let n = max.min(pending.len());
        Ok(pending.drain(..n).collect())
    })
}

/// C_FindObjectsFinal.
pub(crate) fn find_final(session: u32) -> Result<(), Error> {
    library()?.session(session, |s| s.find.take()).map(drop).ok_or(Error::OperationNotInitialized)
}
