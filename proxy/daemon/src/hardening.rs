//! Process hardening: memory locked against swap, no core dumps, no ptrace by other users.

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};

use crate::config::{HardeningConfig, LockMemory};
use crate::error::{Error, Result};

/// Applies `[hardening]`. Runs before the PIN is read, so that it is never swapped or dumped.
pub fn apply(config: &HardeningConfig) -> Result<()> {
    if config.disable_core_dumps {
        setrlimit(Resource::RLIMIT_CORE, 0, 0)
            .map_err(|e| Error::Hardening(format!("cannot disable core dumps: {e}")))?;
        prctl::set_dumpable(false)
            .map_err(|e| Error::Hardening(format!("cannot clear the dumpable flag: {e}")))?;
    }
    match config.lock_memory {
        LockMemory::Off => {
            tracing::warn!("memory locking is off: key material may be swapped to disk");
        }
        mode => match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => tracing::info!("memory locked against swapping"),
            Err(e) if mode == LockMemory::Preferred => {
                tracing::warn!(error = %e, "cannot lock memory; continuing ([hardening] lock_memory = \"preferred\")");
            }
            Err(e) => {
                return Err(Error::Hardening(format!(
                    "cannot lock memory ({e}): grant CAP_IPC_LOCK or raise RLIMIT_MEMLOCK \
                     (LimitMEMLOCK=infinity under systemd), or set [hardening] lock_memory = \
                     \"preferred\""
                )));
            }
        },
    }
    Ok(())
}
