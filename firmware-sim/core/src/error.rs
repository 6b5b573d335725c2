//! The firmware's one error type, whose values are the PKCS#11 `CKR_*` codes.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A failed command. Each value is the `CK_RV` a PKCS#11 front returns unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u32)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is the CKR_ value of the same name
pub enum Error {
    HostMemory = 0x02,
    SlotIdInvalid = 0x03,
    GeneralError = 0x05,
    FunctionFailed = 0x06,
    ArgumentsBad = 0x07,
    ActionProhibited = 0x1B,
    AttributeReadOnly = 0x10,
    AttributeSensitive = 0x11,
    AttributeTypeInvalid = 0x12,
    AttributeValueInvalid = 0x13,
    DataInvalid = 0x20,
    DataLenRange = 0x21,
    DeviceError = 0x30,
    DeviceMemory = 0x31,
    DeviceRemoved = 0x32,
    EncryptedDataInvalid = 0x40,
    EncryptedDataLenRange = 0x41,
    FunctionNotParallel = 0x51,
    FunctionNotSupported = 0x54,
    KeyHandleInvalid = 0x60,
    KeySizeRange = 0x62,
    KeyTypeInconsistent = 0x63,
    KeyFunctionNotPermitted = 0x68,
    KeyNotWrappable = 0x69,
    KeyUnextractable = 0x6A,
    MechanismInvalid = 0x70,
    MechanismParamInvalid = 0x71,
    ObjectHandleInvalid = 0x82,
    OperationActive = 0x90,
    OperationNotInitialized = 0x91,
    PinIncorrect = 0xA0,
    PinInvalid = 0xA1,
    PinLenRange = 0xA2,
    PinLocked = 0xA4,
    SessionClosed = 0xB0,
    SessionCount = 0xB1,
    SessionHandleInvalid = 0xB3,
    SessionParallelNotSupported = 0xB4,
    SessionReadOnly = 0xB5,
    SessionExists = 0xB6,
    SessionReadOnlyExists = 0xB7,
    SessionReadWriteSoExists = 0xB8,
    SignatureInvalid = 0xC0,
    SignatureLenRange = 0xC1,
    TemplateIncomplete = 0xD0,
    TemplateInconsistent = 0xD1,
    TokenNotPresent = 0xE0,
    TokenNotRecognized = 0xE1,
    UnwrappingKeyHandleInvalid = 0xF0,
    UnwrappingKeyTypeInconsistent = 0xF2,
    UserAlreadyLoggedIn = 0x100,
    UserNotLoggedIn = 0x101,
    UserPinNotInitialized = 0x102,
    UserTypeInvalid = 0x103,
    UserAnotherAlreadyLoggedIn = 0x104,
    WrappedKeyInvalid = 0x110,
    WrappedKeyLenRange = 0x112,
    WrappingKeyHandleInvalid = 0x113,
    WrappingKeyTypeInconsistent = 0x115,
    RandomSeedNotSupported = 0x120,
    CurveNotSupported = 0x140,
    BufferTooSmall = 0x150,
    CryptokiNotInitialized = 0x190,
    CryptokiAlreadyInitialized = 0x191,
}

impl Error {
    /// Every variant, so that a front can check its mapping against its own constants.
    pub const ALL: &'static [Error] = &[
        Error::HostMemory,
        Error::SlotIdInvalid,
        Error::GeneralError,
        Error::FunctionFailed,
        Error::ArgumentsBad,
        Error::ActionProhibited,
        Error::AttributeReadOnly,
        Error::AttributeSensitive,
        Error::AttributeTypeInvalid,
        Error::AttributeValueInvalid,
        Error::DataInvalid,
        Error::DataLenRange,
        Error::DeviceError,
        Error::DeviceMemory,
        Error::DeviceRemoved,
        Error::EncryptedDataInvalid,
        Error::EncryptedDataLenRange,
        Error::FunctionNotParallel,
        Error::FunctionNotSupported,
        Error::KeyHandleInvalid,
        Error::KeySizeRange,
        Error::KeyTypeInconsistent,
        Error::KeyFunctionNotPermitted,
        Error::KeyNotWrappable,
        Error::KeyUnextractable,
        Error::MechanismInvalid,
        Error::MechanismParamInvalid,
        Error::ObjectHandleInvalid,
        Error::OperationActive,
        Error::OperationNotInitialized,
        Error::PinIncorrect,
        Error::PinInvalid,
        Error::PinLenRange,
        Error::PinLocked,
        Error::SessionClosed,
        Error::SessionCount,
        Error::SessionHandleInvalid,
        Error::SessionParallelNotSupported,
        Error::SessionReadOnly,
        Error::SessionExists,
        Error::SessionReadOnlyExists,
        Error::SessionReadWriteSoExists,
        Error::SignatureInvalid,
        Error::SignatureLenRange,
        Error::TemplateIncomplete,
        Error::TemplateInconsistent,
        Error::TokenNotPresent,
        Error::TokenNotRecognized,
        Error::UnwrappingKeyHandleInvalid,
        Error::UnwrappingKeyTypeInconsistent,
        Error::UserAlreadyLoggedIn,
        Error::UserNotLoggedIn,
        Error::UserPinNotInitialized,
        Error::UserTypeInvalid,
        Error::UserAnotherAlreadyLoggedIn,
        Error::WrappedKeyInvalid,
        Error::WrappedKeyLenRange,
        Error::WrappingKeyHandleInvalid,
        Error::WrappingKeyTypeInconsistent,
        Error::RandomSeedNotSupported,
        Error::CurveNotSupported,
        Error::BufferTooSmall,
        Error::CryptokiNotInitialized,
        Error::CryptokiAlreadyInitialized,
    ];

    /// The `CK_RV` value.
    pub const fn code(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} (CKR 0x{:X})", self.code())
    }
}

impl core::error::Error for Error {}

/// The firmware's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
