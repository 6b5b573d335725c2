//! Secret payloads as the services handle them: sealed under the project's KEK in the HSM,
//! their media types, and PEM for the keys the HSM generates.

use base64::Engine;
use hsm_proxy_proto::op::Sealed;
use zeroize::Zeroizing;

use super::App;
use crate::hsm::{HsmError, payload_aad};
use appliance_store::{SecretRow, StoredPayload};

impl App {
    /// Encrypts `bytes` under the KEK of `row`'s project, in the HSM, bound to the secret's id.
    pub(crate) async fn seal(
        &self,
        row: &SecretRow,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<StoredPayload, HsmError> {
        let (kek_id, kek) = self.hsm.project_kek(&self.store, &row.project_id).await?;
        let sealed = self.hsm.seal(&kek, bytes, payload_aad(&row.project_id, &row.id)).await?;
        Ok(crate::hsm::stored(content_type.to_owned(), None, kek_id, sealed))
    }

    /// Decrypts a secret's stored payload in the HSM, as its owner submitted it (keys the HSM
    /// generated come back as PEM).
    pub(crate) async fn open(
        &self,
        secret: &SecretRow,
        stored: &StoredPayload,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let kek = self.hsm.kek(&self.store, &stored.kek_id).await?;
        let malformed = |what: &str| HsmError::Failed(format!("stored {what} has a wrong length"));
        let sealed = Sealed {
            ciphertext: stored.ciphertext.clone(),
            iv: stored.iv.as_slice().try_into().map_err(|_| malformed("IV"))?,
            tag: stored.tag.as_slice().try_into().map_err(|_| malformed("tag"))?,
        };
        let plaintext = self
            .hsm
            .open(&kek, sealed, payload_aad(&secret.project_id, &secret.id))
            .await?
            .into_zeroizing();
        Ok(match stored.format.as_deref().and_then(|f| f.strip_prefix("pem:")) {
            Some(label) => pem(label, &plaintext),
            None => plaintext,
        })
    }
}

/// The stored media type for a submitted `payload_content_type`, or `None` when Barbican
/// does not accept it.
pub(crate) fn normalize_content_type(value: &str) -> Option<&'static str> {
    let lower = value.to_ascii_lowercase();
    let mut parts = lower.split(';');
    let media = parts.next().unwrap_or("").trim();
    let params: Vec<String> = parts.map(|p| p.split_whitespace().collect::<String>()).collect();
    match media {
        "text/plain" => match params.as_slice() {
            [] => Some("text/plain"),
            [p] if p == "charset=utf-8" => Some("text/plain"),
            _ => None,
        },
        "application/octet-stream" if params.is_empty() => Some("application/octet-stream"),
        "application/pkcs8" if params.is_empty() => Some("application/pkcs8"),
        _ => None,
    }
}

/// DER as PEM under `label`, in a buffer that is wiped when dropped (it may be a private key).
pub(crate) fn pem(label: &str, der: &[u8]) -> Zeroizing<Vec<u8>> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(Vec::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}
