//! Sessions, login state and PINs.
//!
//! Login state belongs to an application (one process's library instance, named by the
//! transport), as PKCS#11 defines it: all of an application's sessions share it, and one
//! application logging out does not log out another.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle_eq::ct_eq;

use crate::command::UserType;
use crate::error::{Error, Result};

/// Most sessions the firmware tracks; a profile sets a lower limit.
pub const MAX_SESSIONS: usize = 1024;
/// Most applications logged in at once.
pub const MAX_APPLICATIONS: usize = 64;
/// Consecutive wrong PINs after which the PIN is locked.
pub const MAX_PIN_FAILURES: u8 = 5;
/// Shortest and longest PIN accepted.
pub const PIN_LEN: core::ops::RangeInclusive<usize> = 4..=64;

/// One open session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Its handle.
    pub handle: u32,
    /// The application that opened it.
    pub app: u64,
    /// Whether it is read-write.
    pub read_write: bool,
}

/// A salted PIN digest. The simulator stores PINs this way so that its state file does not
/// hold them in clear; a real device would use a slow KDF and a hardware counter.
#[derive(Clone, Serialize, Deserialize)]
pub struct Pin {
    salt: [u8; 16],
    digest: [u8; 32],
    failures: u8,
}

impl core::fmt::Debug for Pin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Pin(failures: {})", self.failures)
    }
}

fn digest(salt: &[u8; 16], pin: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(pin);
    h.finalize().into()
}

impl Pin {
    /// A new PIN with `salt`.
    pub fn new(salt: [u8; 16], pin: &[u8]) -> Result<Pin> {
        if !PIN_LEN.contains(&pin.len()) {
            return Err(Error::PinLenRange);
        }
        Ok(Pin { salt, digest: digest(&salt, pin), failures: 0 })
    }

    /// Whether the PIN is locked.
    pub fn locked(&self) -> bool {
        self.failures >= MAX_PIN_FAILURES
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u8 {
        self.failures
    }

    /// Checks `pin`, counting a failure; a locked PIN fails even when right.
    pub fn check(&mut self, pin: &[u8]) -> Result<()> {
        if self.locked() {
            return Err(Error::PinLocked);
        }
        if ct_eq(&digest(&self.salt, pin), &self.digest) {
            self.failures = 0;
            Ok(())
        } else {
            self.failures = self.failures.saturating_add(1);
            Err(if self.locked() { Error::PinLocked } else { Error::PinIncorrect })
        }
    }
}

/// An application's login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login {
    /// The application.
    pub app: u64,
    /// As whom it logged in.
    pub user: UserType,
}

/// Constant-time comparison, so that PIN checks do not leak how much of a digest matched.
mod subtle_eq {
    pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
        let mut diff = 0u8;
        for (x, y) in a.iter().zip(b) {
            diff |= x ^ y;
        }
        diff == 0
    }
}
