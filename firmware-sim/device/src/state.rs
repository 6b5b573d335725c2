//! The state file: token objects, PINs and label, encrypted under a device key.
//!
//! Threat model: this is a simulator. The device key sits in a file beside the state (mode
//! 0600), so anyone who can read both can read every key; the encryption only keeps key
//! material out of plain sight (backups, greps, accidental commits) and detects corruption.
//! A real HSM keeps its storage key in tamper-responsive hardware.
//!
//! Writes are atomic: a temporary file is written, synced and renamed over the old one, so a
//! crash leaves either the old state or the new, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use firmware_sim_core::TokenImage;
use zeroize::Zeroizing;

use crate::error::{Error, Result, file_error};

const MAGIC: &[u8; 8] = b"FWSIMST1";
const AAD: &[u8] = b"firmware-sim state v1";

/// A state file and its device key.
pub struct StateFile {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Fills `out` from the OS generator.
pub fn fill_random(out: &mut [u8]) -> Result<()> {
    getrandom::fill(out).map_err(|e| Error::Config(format!("no OS randomness: {e}")))
}

/// The device key's file for a state file: `<state>.key`.
pub fn key_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_owned();
    name.push(".key");
    state.with_file_name(name)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_error(&tmp))?;
    file.write_all(bytes).map_err(file_error(&tmp))?;
    file.sync_all().map_err(file_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_error(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable only once the directory is synced.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(file_error(dir))?;
    }
    Ok(())
}

impl StateFile {
    /// Opens `path`, creating its device key on first use.
    pub fn open(path: &Path) -> Result<StateFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        }
        let key_file = key_path(path);
        let key = match std::fs::read(&key_file) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Config(format!("{} must hold exactly 32 bytes", key_file.display()))
                })?;
                Zeroizing::new(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path.exists() {
                    return Err(Error::Config(format!(
                        "{} exists but its device key {} does not",
                        path.display(),
                        key_file.display()
                    )));
                }
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(key.as_mut_slice())
                    .map_err(|e| Error::Config(format!("no OS randomness: {e}")))?;
                write_private(&key_file, key.as_slice())?;
                key
            }
            Err(e) => return Err(file_error(&key_file)(e)),
        };
        Ok(StateFile { path: path.to_owned(), key })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved image, or `None` for a new device.
    pub fn load(&self) -> Result<Option<TokenImage>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(&self.path)(e)),
        };
        let bad = || Error::State(self.path.clone());
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        if rest.len() < 12 {
            return Err(bad());
        }
        let (nonce, ciphertext) = rest.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(self.key.as_slice()).map_err(|_| bad())?;
        #[allow(deprecated)] // aes-gcm 0.10 takes generic-array 0.14 nonces
        let nonce = Nonce::from_slice(nonce);
        let plain = Zeroizing::new(
            cipher.decrypt(nonce, Payload { msg: ciphertext, aad: AAD }).map_err(|_| bad())?,
        );
        firmware_sim_core::decode(&plain).map(Some).map_err(|_| bad())
    }

    /// Saves `image` atomically.
    pub fn save(&self, image: &TokenImage) -> Result<()> {
        let plain = Zeroizing::new(firmware_sim_core::encode(image)?);
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| Error::Config(format!("no OS randomness: {e}")))?;
        let cipher = Aes256Gcm::new_from_slice(self.key.as_slice())
            .map_err(|_| Error::State(self.path.clone()))?;
        #[allow(deprecated)] // aes-gcm 0.10 takes generic-array 0.14 nonces
        let n = Nonce::from_slice(&nonce);
        let ciphertext = cipher
            .encrypt(n, Payload { msg: &plain, aad: AAD })
            .map_err(|_| Error::State(self.path.clone()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 12 + ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        write_private(&self.path, &out)
    }
}
