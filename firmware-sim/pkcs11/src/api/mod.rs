//! The PKCS#11 functions in safe Rust, grouped as the standard groups them. The `ffi` module
//! turns C arguments into these functions' arguments and their results back into C; what
//! lives here is argument checking and conversion to device commands.

#![forbid(unsafe_code)]

pub(crate) mod encrypt;
pub(crate) mod keys;
pub(crate) mod object;
pub(crate) mod session;
pub(crate) mod sign;
pub(crate) mod token;

use firmware_sim_core::object::SecretBytes;
use firmware_sim_core::{Command, Error, Response};

use crate::backend::{Library, Operation, SessionState};

/// Where a function's variable-length output goes.
#[derive(Debug)]
pub(crate) enum Out<'a> {
    /// The caller passed a NULL buffer: it asks for the length.
    Query,
    /// The caller's buffer.
    Buffer(&'a mut [u8]),
}

/// What was done with an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Produced {
    /// Copied; this many bytes.
    Written(usize),
    /// Only the length was asked for.
    Length(usize),
    /// The buffer is too small; this many bytes are needed (CKR_BUFFER_TOO_SMALL).
    TooSmall(usize),
}

/// Copies `data` into `out` if it fits.
pub(crate) fn deliver(out: Out<'_>, data: &[u8]) -> Produced {
    match out {
        Out::Query => Produced::Length(data.len()),
        Out::Buffer(buf) if buf.len() < data.len() => Produced::TooSmall(data.len()),
        Out::Buffer(buf) => {
            buf[..data.len()].copy_from_slice(data);
            Produced::Written(data.len())
        }
    }
}

/// The device answered with something the command does not produce.
pub(crate) fn unexpected(_: Response) -> Error {
    Error::DeviceError
}

/// Which of a session's operations a call continues.
pub(crate) type Slot = fn(&mut SessionState) -> &mut Option<Operation>;

/// Starts an operation; one already in progress is CKR_OPERATION_ACTIVE.
pub(crate) fn begin(
    lib: &Library,
    session: u32,
    slot: Slot,
    operation: Operation,
) -> Result<(), Error> {
    lib.session(session, |s| {
        let current = slot(s);
        if current.is_some() {
            return Err(Error::OperationActive);
        }
        *current = Some(operation);
        Ok(())
    })
}

/// Adds input to an operation (the `*Update` functions: the device works on whole messages).
pub(crate) fn update(lib: &Library, session: u32, slot: Slot, data: &[u8]) -> Result<(), Error> {
    lib.session(session, |s| {
        let op = slot(s).as_mut().ok_or(Error::OperationNotInitialized)?;
        if op.input.len() + data.len() > firmware_sim::transport::MAX_FRAME / 2 {
            *slot(s) = None;
            return Err(Error::DataLenRange);
        }
        op.input.extend_from_slice(data);
        Ok(())
    })
}

/// Finishes a single-part call (`data` given) or a final call (`data` empty, input gathered):
/// runs the command once, keeps the result across a length query, and ends the operation
/// when the result is delivered or the command fails.
pub(crate) fn finish(
    lib: &Library,
    session: u32,
    slot: Slot,
    data: &[u8],
    out: Out<'_>,
    command: impl FnOnce(&Operation, Vec<u8>) -> Command,
) -> Result<Produced, Error> {
    let mut op = lib.session(session, |s| slot(s).take()).ok_or(Error::OperationNotInitialized)?;
    let output = match op.output.take() {
        Some(output) => output,
        None => {
            let mut input = std::mem::take(&mut *op.input);
            input.extend_from_slice(data);
            match lib.execute(command(&op, input))? {
                Response::Data(bytes) => bytes,
                other => return Err(unexpected(other)),
            }
        }
    };
    let produced = deliver(out, output.expose());
    if !matches!(produced, Produced::Written(_)) {
        // PKCS#11: a length query or a short buffer leaves the operation active.
        op.output = Some(output);
        lib.session(session, |s| *slot(s) = Some(op));
    }
    Ok(produced)
}

/// A session handle from C.
pub(crate) fn session_handle(handle: u64) -> Result<u32, Error> {
    u32::try_from(handle).map_err(|_| Error::SessionHandleInvalid)
}

/// An object handle from C.
pub(crate) fn object_handle(handle: u64, err: Error) -> Result<u32, Error> {
    u32::try_from(handle).map_err(|_| err)
}

/// Wraps bytes in a zeroizing buffer for the wire.
pub(crate) fn secret(data: Vec<u8>) -> SecretBytes {
    SecretBytes::new(data)
}
