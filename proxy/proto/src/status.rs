//! `Status`: the stable numeric codes the proxy answers with, per frame and per operation.

use core::fmt;

/// Why a frame or an operation did not succeed (or `Ok`).
///
/// The numbers are the wire format: they never change and are only ever added to. A code this
/// build does not know decodes as [`Status::Unrecognized`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u16)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok = 0,

    // Frame-level codes: the whole frame was refused.
    /// The header or body structure is malformed (wrong magic, truncated, trailing bytes).
    MalformedFrame = 1,
    /// The peer speaks a major protocol version this build does not.
    UnsupportedVersion = 2,
    /// The body is larger than the receiver accepts.
    FrameTooLarge = 3,
    /// More operations in one frame than the receiver accepts.
    TooManyOperations = 4,

    // Operation-level codes: the operation was refused or failed; others in the batch may not.
    /// The operation code is not one this build knows.
    UnknownOperation = 16,
    /// The operation's parameters could not be decoded.
    MalformedOperation = 17,
    /// The parameters decoded but are not acceptable (sizes, lengths, combinations).
    InvalidArgument = 18,
    /// The queue is full; try again later.
    Busy = 19,
    /// The operation's deadline passed before it could run.
    DeadlineExceeded = 20,
    /// The proxy is shutting down and takes no new work.
    ShuttingDown = 21,

    /// Authenticated decryption failed: wrong key, tag, IV, AAD or a tampered ciphertext.
    AuthenticationFailed = 32,
    /// The KEK blob cannot be unwrapped under the master key (corrupt or from another HSM).
    KekInvalid = 33,
    /// A wrapped key cannot be unwrapped under the given KEK.
    WrappedKeyInvalid = 34,
    /// The token does not support a mechanism the operation needs.
    MechanismUnsupported = 35,

    /// The HSM failed the operation for a reason not listed above.
    HsmFailure = 48,
    /// The HSM is unreachable or being re-initialised.
    HsmUnavailable = 49,
    /// The HSM is out of memory, sessions or object slots.
    HsmResourceExhausted = 50,

    /// A bug or unexpected state in the proxy; details are in its log.
    Internal = 64,

    /// A code sent by a newer peer that this build does not know.
    Unrecognized = 0xFFFF,
}

impl Status {
    /// Every known status, in code order (used by tests and metrics).
    pub const ALL: [Status; 20] = [
        Status::Ok,
        Status::MalformedFrame,
        Status::UnsupportedVersion,
        Status::FrameTooLarge,
        Status::TooManyOperations,
        Status::UnknownOperation,
        Status::MalformedOperation,
        Status::InvalidArgument,
        Status::Busy,
        Status::DeadlineExceeded,
        Status::ShuttingDown,
        Status::AuthenticationFailed,
        Status::KekInvalid,
        Status::WrappedKeyInvalid,
        Status::MechanismUnsupported,
        Status::HsmFailure,
        Status::HsmUnavailable,
        Status::HsmResourceExhausted,
        Status::Internal,
        Status::Unrecognized,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        // A fieldless #[repr(u16)] enum converts losslessly.
        #[allow(clippy::as_conversions)]
        let code = self as u16;
        code
    }

    /// The status for a wire code; unknown codes become [`Status::Unrecognized`].
    pub fn from_code(code: u16) -> Status {
        Status::ALL.iter().copied().find(|s| s.code() == code).unwrap_or(Status::Unrecognized)
    }

    /// A short stable name, for logs and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::MalformedFrame => "malformed_frame",
            Status::UnsupportedVersion => "unsupported_version",
            Status::FrameTooLarge => "frame_too_large",
            Status::TooManyOperations => "too_many_operations",
            Status::UnknownOperation => "unknown_operation",
            Status::MalformedOperation => "malformed_operation",
            Status::InvalidArgument => "invalid_argument",
            Status::Busy => "busy",
            Status::DeadlineExceeded => "deadline_exceeded",
            Status::ShuttingDown => "shutting_down",
            Status::AuthenticationFailed => "authentication_failed",
            Status::KekInvalid => "kek_invalid",
            Status::WrappedKeyInvalid => "wrapped_key_invalid",
            Status::MechanismUnsupported => "mechanism_unsupported",
            Status::HsmFailure => "hsm_failure",
            Status::HsmUnavailable => "hsm_unavailable",
            Status::HsmResourceExhausted => "hsm_resource_exhausted",
            Status::Internal => "internal",
            Status::Unrecognized => "unrecognized",
        }
    }

    /// Whether sending the same operation again later may succeed.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Status::Busy
                | Status::DeadlineExceeded
                | Status::ShuttingDown
                | Status::HsmUnavailable
                | Status::HsmResourceExhausted
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl core::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_pinned() {
        // These numbers are the wire format; this table changes only by appending.
        let pinned: [(Status, u16); 20] = [
            (Status::Ok, 0),
            (Status::MalformedFrame, 1),
            (Status::UnsupportedVersion, 2),
            (Status::FrameTooLarge, 3),
            (Status::TooManyOperations, 4),
            (Status::UnknownOperation, 16),
            (Status::MalformedOperation, 17),
            (Status::InvalidArgument, 18),
            (Status::Busy, 19),
            (Status::DeadlineExceeded, 20),
            (Status::ShuttingDown, 21),
            (Status::AuthenticationFailed, 32),
            (Status::KekInvalid, 33),
            (Status::WrappedKeyInvalid, 34),
            (Status::MechanismUnsupported, 35),
            (Status::HsmFailure, 48),
            (Status::HsmUnavailable, 49),
            (Status::HsmResourceExhausted, 50),
            (Status::Internal, 64),
            (Status::Unrecognized, 0xFFFF),
        ];
        for (status, code) in pinned {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(Status::from_code(code), status);
        }
        assert_eq!(Status::from_code(999), Status::Unrecognized);
    }
}
