//! Commands and responses, as postcard frames between a PKCS#11 front and the device.
//!
//! Every command names the session it runs in, except token-level ones. Key material and
//! plaintext travel in [`SecretBytes`], wiped when dropped.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::attribute::{Attribute, Value};
use crate::mechanism::Mechanism;
use crate::object::SecretBytes;

/// The length of a token label (PKCS#11 pads it with spaces).
pub const LABEL_BYTES: usize = 32;

/// Who logs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserType {
    /// The security officer (`CKU_SO`).
    So,
    /// The normal user (`CKU_USER`).
    User,
}

/// A request to the firmware.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)] // fields are named as the PKCS#11 arguments they carry
pub enum Command {
    TokenInfo,
    InitToken {
        so_pin: SecretBytes,
        label: [u8; LABEL_BYTES],
    },
    OpenSession {
        read_write: bool,
    },
    CloseSession {
        session: u32,
    },
    CloseAllSessions,
    SessionInfo {
        session: u32,
    },
    Login {
        session: u32,
        user: UserType,
        pin: SecretBytes,
    },
    Logout {
        session: u32,
    },
    InitPin {
        session: u32,
        pin: SecretBytes,
    },
    SetPin {
        session: u32,
        old: SecretBytes,
        new: SecretBytes,
    },
    CreateObject {
        session: u32,
        template: Vec<Attribute>,
    },
    DestroyObject {
        session: u32,
        object: u32,
    },
    GetAttributes {
        session: u32,
        object: u32,
        kinds: Vec<u64>,
    },
    SetAttributes {
        session: u32,
        object: u32,
        template: Vec<Attribute>,
    },
    FindObjects {
        session: u32,
        template: Vec<Attribute>,
    },
    GenerateKey {
        session: u32,
        mechanism: Mechanism,
        template: Vec<Attribute>,
    },
    GenerateKeyPair {
        session: u32,
        mechanism: Mechanism,
        public: Vec<Attribute>,
        private: Vec<Attribute>,
    },
    Encrypt {
        session: u32,
        mechanism: Mechanism,
        key: u32,
        data: SecretBytes,
    },
    Decrypt {
        session: u32,
        mechanism: Mechanism,
        key: u32,
        data: Vec<u8>,
    },
    Sign {
        session: u32,
        mechanism: Mechanism,
        key: u32,
        data: Vec<u8>,
    },
    Verify {
        session: u32,
        mechanism: Mechanism,
        key: u32,
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    WrapKey {
        session: u32,
        mechanism: Mechanism,
        wrapping_key: u32,
        key: u32,
    },
    UnwrapKey {
        session: u32,
        mechanism: Mechanism,
        unwrapping_key: u32,
        wrapped: Vec<u8>,
        template: Vec<Attribute>,
    },
    DeriveKey {
        session: u32,
        mechanism: Mechanism,
        base: u32,
        template: Vec<Attribute>,
    },
    Random {
        session: u32,
        len: u32,
    },
}

impl Command {
    /// The mechanism a command runs, for the device's latency model.
    pub fn mechanism(&self) -> Option<u64> {
        match self {
            Command::GenerateKey { mechanism, .. }
            | Command::GenerateKeyPair { mechanism, .. }
            | Command::Encrypt { mechanism, .. }
            | Command::Decrypt { mechanism, .. }
            | Command::Sign { mechanism, .. }
            | Command::Verify { mechanism, .. }
            | Command::WrapKey { mechanism, .. }
            | Command::UnwrapKey { mechanism, .. }
            | Command::DeriveKey { mechanism, .. } => Some(mechanism.kind),
            _ => None,
        }
    }

    /// The session a command runs in, if any.
    pub fn session(&self) -> Option<u32> {
        match self {
            Command::TokenInfo
            | Command::InitToken { .. }
            | Command::OpenSession { .. }
            | Command::CloseAllSessions => None,
            Command::CloseSession { session }
            | Command::SessionInfo { session }
            | Command::Login { session, .. }
            | Command::Logout { session }
            | Command::InitPin { session, .. }
            | Command::SetPin { session, .. }
            | Command::CreateObject { session, .. }
            | Command::DestroyObject { session, .. }
            | Command::GetAttributes { session, .. }
            | Command::SetAttributes { session, .. }
            | Command::FindObjects { session, .. }
            | Command::GenerateKey { session, .. }
            | Command::GenerateKeyPair { session, .. }
            | Command::Encrypt { session, .. }
            | Command::Decrypt { session, .. }
            | Command::Sign { session, .. }
            | Command::Verify { session, .. }
            | Command::WrapKey { session, .. }
            | Command::UnwrapKey { session, .. }
            | Command::DeriveKey { session, .. }
            | Command::Random { session, .. } => Some(*session),
        }
    }
}

/// What the token reports about itself (`CK_TOKEN_INFO`'s variable part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The label, space-padded.
    pub label: [u8; LABEL_BYTES],
    /// `CKF_*` token flags.
    pub flags: u64,
    /// Sessions open, and the most allowed.
    pub sessions: u32,
    /// The session limit.
    pub max_sessions: u32,
    /// Read-write sessions open.
    pub rw_sessions: u32,
    /// Objects held.
    pub objects: u32,
    /// Objects the table can hold.
    pub object_capacity: u32,
}

#[allow(missing_docs)] // the CKF_ token flags
pub mod token_flags {
    pub const RNG: u64 = 0x1;
    pub const LOGIN_REQUIRED: u64 = 0x4;
    pub const USER_PIN_INITIALIZED: u64 = 0x8;
    pub const TOKEN_INITIALIZED: u64 = 0x400;
    pub const USER_PIN_COUNT_LOW: u64 = 0x10000;
    pub const USER_PIN_FINAL_TRY: u64 = 0x20000;
    pub const USER_PIN_LOCKED: u64 = 0x40000;
    pub const SO_PIN_COUNT_LOW: u64 = 0x100000;
    pub const SO_PIN_FINAL_TRY: u64 = 0x200000;
    pub const SO_PIN_LOCKED: u64 = 0x400000;
}

/// A session's state (`CKS_*`) and whether it is read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// `CKS_RO_PUBLIC_SESSION` (0) .. `CKS_RW_SO_FUNCTIONS` (4).
    pub state: u64,
    /// `CKF_RW_SESSION` set.
    pub read_write: bool,
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)] // each carries what its command produces
pub enum Response {
    Done,
    TokenInfo(TokenInfo),
    Session(u32),
    SessionInfo(SessionInfo),
    Object(u32),
    Pair { public: u32, private: u32 },
    Attributes(Vec<Value>),
    Objects(Vec<u32>),
    Data(SecretBytes),
}
