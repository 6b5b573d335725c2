//! How a failed PKCS#11 call is handled: which session or token state it condemns, and what the
//! client is told.

use cryptoki::context::Function;
use cryptoki::error::{Error as CryptokiError, RvError};
use hsm_proxy_proto::Status;

/// Where in an operation a PKCS#11 call failed; the same return value means different things
/// at different steps (SoftHSM2 answers both a bad GCM tag and a corrupt wrapped key with
/// `CKR_GENERAL_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Unwrapping a project KEK under the MKEK.
    KekUnwrap,
    /// Wrapping a new project KEK under the MKEK.
    MkekWrap,
    /// Unwrapping a wrapped key under a project KEK.
    KeyUnwrap,
    /// Authenticated decryption.
    Decrypt,
    /// Anything else.
    Other,
}

/// An operation that did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The answer is decided: send this status.
    Status(Status),
    /// A PKCS#11 call failed; [`Failure::class`] says what to do about it.
    Pkcs11 { rv: RvError, function: Function, step: Step },
    /// The pool's session budget is taken up by sessions it could not close: only
    /// re-initialising the library frees them.
    Reclaim,
}

/// What a failure means for the proxy's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The session is gone on the token's side: forget it (closing it could close a new session
    /// that reused its handle), open another, retry.
    SessionLost,
    /// The key-holder session is gone on the token's side; the KEK cache has replaced it and
    /// forgotten its KEKs: retry.
    KeyholderLost,
    /// The session is stuck in a bad state: close it, open another, retry.
    SessionBroken,
    /// The device reported an error (`CKR_DEVICE_ERROR`). Network HSMs report transient
    /// faults this way, and a device that is really gone shows it in other ways (removed, not
    /// initialised, a session not found), so the session is kept and the operation retried:
    /// closing it could fail the same way and leave it open on the token, out of reach.
    DeviceError,
    /// The token or library is gone, or the login was lost: re-initialise, retry.
    Device,
    /// A cached KEK handle is no longer valid: evict it, retry.
    StaleKek,
    /// The device is out of room for the moment (`CKR_DEVICE_MEMORY`: its queue or working
    /// memory is full): wait a little, retry.
    Busy,
    /// The operation itself failed; answer with [`Failure::status`].
    Operation,
}

impl Failure {
    pub(crate) fn class(&self) -> Class {
        use RvError::*;
        let (rv, step) = match self {
            Failure::Pkcs11 { rv, step, .. } => (rv, step),
            Failure::Reclaim => return Class::Device,
            Failure::Status(_) => return Class::Operation,
        };
        match rv {
            // KEKs are unwrapped in the key-holder session, which the cache replaces when the
            // token drops it.
            SessionHandleInvalid | SessionClosed if *step == Step::KekUnwrap => {
                Class::KeyholderLost
            }
            SessionHandleInvalid | SessionClosed => Class::SessionLost,
            OperationActive | OperationNotInitialized => Class::SessionBroken,
            DeviceError => Class::DeviceError,
            DeviceMemory => Class::Busy,
            DeviceRemoved
            | TokenNotPresent
            | TokenNotRecognized
            | CryptokiNotInitialized
            | UserNotLoggedIn
            | SlotIdInvalid => Class::Device,
            // A master key handle that fails although the token still lists its generation (a
            // destroyed one is told apart first, see `KekCache::mkek_failed`): the library
            // lost its state, and only initialising it again helps.
            UnwrappingKeyHandleInvalid
            | WrappingKeyHandleInvalid
            | KeyHandleInvalid
            | ObjectHandleInvalid
                if matches!(step, Step::KekUnwrap | Step::MkekWrap) =>
            {
                Class::Device
            }
            UnwrappingKeyHandleInvalid
            | WrappingKeyHandleInvalid
            | KeyHandleInvalid
            | ObjectHandleInvalid => Class::StaleKek,
            _ => Class::Operation,
        }
    }

    /// What the client is told.
    pub(crate) fn status(&self) -> Status {
        use RvError::*;
        let (rv, step) = match self {
            Failure::Status(status) => return *status,
            Failure::Reclaim => return Status::HsmUnavailable,
            Failure::Pkcs11 { rv, step, .. } => (*rv, *step),
        };
        match self.class() {
            Class::SessionLost
            | Class::KeyholderLost
            | Class::SessionBroken
            | Class::DeviceError
            | Class::Device => {
                return Status::HsmUnavailable;
            }
            Class::Busy => return Status::HsmResourceExhausted,
            Class::StaleKek | Class::Operation => {}
        }
        match (step, rv) {
            (
                Step::KekUnwrap,
                WrappedKeyInvalid | WrappedKeyLenRange | GeneralError | EncryptedDataInvalid
                | DataInvalid | TemplateInconsistent,
            ) => Status::KekInvalid,
            (
                Step::KeyUnwrap,
                WrappedKeyInvalid | WrappedKeyLenRange | GeneralError | EncryptedDataInvalid
                | DataInvalid | KeyTypeInconsistent | TemplateInconsistent,
            ) => Status::WrappedKeyInvalid,
            (
                Step::Decrypt,
                GeneralError
                | EncryptedDataInvalid
                | EncryptedDataLenRange
                | DataInvalid
                | DataLenRange,
            ) => Status::AuthenticationFailed,
            (_, MechanismInvalid | MechanismParamInvalid | CurveNotSupported) => {
                Status::MechanismUnsupported
            }
            (_, FunctionNotSupported) => Status::MechanismUnsupported,
            (_, DeviceMemory | HostMemory | SessionCount) => Status::HsmResourceExhausted,
            (
                _,
                DataLenRange
                | DataInvalid
                | ArgumentsBad
                | KeySizeRange
                | KeyTypeInconsistent
                | KeyFunctionNotPermitted,
            ) => Status::InvalidArgument,
            _ => Status::HsmFailure,
        }
    }

    /// Whether a key handle the call used was not valid: for a master key's, perhaps because it
    /// was destroyed since (`hsm-proxy mkek destroy` in another process).
    pub(crate) fn handle_invalid(&self) -> bool {
        matches!(
            self,
            Failure::Pkcs11 {
                rv: RvError::UnwrappingKeyHandleInvalid
                    | RvError::WrappingKeyHandleInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::ObjectHandleInvalid,
                ..
            }
        )
    }

    /// Whether the token no longer knows the key-holder session.
    pub(crate) fn keyholder_lost(&self) -> bool {
        self.class() == Class::KeyholderLost
    }

    /// Whether the token had no room for another object: `CKR_DEVICE_MEMORY` from a call that
    /// makes one.
    pub(crate) fn out_of_room(&self) -> bool {
        matches!(
            self,
            Failure::Pkcs11 {
                rv: RvError::DeviceMemory,
                function: Function::GenerateKey
                    | Function::GenerateKeyPair
                    | Function::UnwrapKey
                    | Function::DeriveKey
                    | Function::CreateObject,
                ..
            }
        )
    }

    /// The PKCS#11 function and return value, for logs and metrics.
    pub(crate) fn pkcs11(&self) -> Option<(Function, RvError)> {
        match self {
            Failure::Pkcs11 { rv, function, .. } => Some((*function, *rv)),
            Failure::Status(_) | Failure::Reclaim => None,
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

/// Attaches the step to a cryptoki result.
pub(crate) trait At<T> {
    fn at(self, step: Step) -> Result<T, Failure>;
}

impl<T> At<T> for Result<T, CryptokiError> {
    fn at(self, step: Step) -> Result<T, Failure> {
        self.map_err(|e| match e {
            CryptokiError::Pkcs11(rv, function) => Failure::Pkcs11 { rv, function, step },
            // Conversions inside cryptoki (lengths that do not fit a CK_ULONG): our bug or an
            // absurd argument; never the token's state.
            _ => Failure::Status(Status::InvalidArgument),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(rv: RvError, step: Step) -> Failure {
        Failure::Pkcs11 { rv, function: Function::Decrypt, step }
    }

    #[test]
    fn classes() {
        assert_eq!(fail(RvError::SessionHandleInvalid, Step::Other).class(), Class::SessionLost);
        assert_eq!(
            fail(RvError::SessionHandleInvalid, Step::KekUnwrap).class(),
            Class::KeyholderLost
        );
        assert_eq!(
            fail(RvError::SessionHandleInvalid, Step::KekUnwrap).status(),
            Status::HsmUnavailable
        );
        assert_eq!(fail(RvError::OperationActive, Step::Other).class(), Class::SessionBroken);
        assert_eq!(fail(RvError::DeviceRemoved, Step::Other).class(), Class::Device);
        assert_eq!(fail(RvError::DeviceError, Step::Other).class(), Class::DeviceError);
        assert_eq!(fail(RvError::DeviceError, Step::Other).status(), Status::HsmUnavailable);
        assert_eq!(fail(RvError::CryptokiNotInitialized, Step::Decrypt).class(), Class::Device);
        assert_eq!(fail(RvError::UserNotLoggedIn, Step::Other).class(), Class::Device);
        assert_eq!(fail(RvError::KeyHandleInvalid, Step::Decrypt).class(), Class::StaleKek);
        assert_eq!(
            fail(RvError::UnwrappingKeyHandleInvalid, Step::KekUnwrap).class(),
            Class::Device
        );
        assert_eq!(fail(RvError::GeneralError, Step::Decrypt).class(), Class::Operation);
        // A full token is the token's answer, not the pool's leak: no re-initialising for it.
        assert_eq!(fail(RvError::SessionCount, Step::Other).class(), Class::Operation);
        assert_eq!(Failure::Reclaim.class(), Class::Device);
        assert_eq!(fail(RvError::DeviceMemory, Step::Decrypt).class(), Class::Busy);
        assert_eq!(fail(RvError::HostMemory, Step::Decrypt).class(), Class::Operation);
        assert_eq!(Failure::Reclaim.status(), Status::HsmUnavailable);
    }

    #[test]
    fn statuses_depend_on_step() {
        assert_eq!(
            fail(RvError::GeneralError, Step::Decrypt).status(),
            Status::AuthenticationFailed
        );
        assert_eq!(fail(RvError::GeneralError, Step::KekUnwrap).status(), Status::KekInvalid);
        assert_eq!(
            fail(RvError::GeneralError, Step::KeyUnwrap).status(),
            Status::WrappedKeyInvalid
        );
        assert_eq!(fail(RvError::GeneralError, Step::Other).status(), Status::HsmFailure);
        assert_eq!(fail(RvError::DeviceRemoved, Step::Other).status(), Status::HsmUnavailable);
        assert_eq!(
            fail(RvError::MechanismInvalid, Step::Other).status(),
            Status::MechanismUnsupported
        );
        assert_eq!(fail(RvError::DeviceMemory, Step::Other).status(), Status::HsmResourceExhausted);
        assert_eq!(Failure::Status(Status::Busy).status(), Status::Busy);
    }
}
