//! Secrets as the services handle them: who may do what with one, creating, listing and
//! deleting them, and their payloads, sealed under the project's KEK in the HSM (with their
//! media types, and PEM for the keys the HSM generates).

use base64::Engine;
use hsm_proxy_proto::op::Sealed;
use policy::Target;
use zeroize::Zeroizing;

use super::error::{Result, ServiceError};
use super::{App, Entity, project_target};
use crate::hsm::{HsmError, payload_aad};
use crate::identity::Identity;
use crate::timefmt::now_micros;
use appliance_store::{Counted, EntityKind, SecretQuery, SecretRow, StoredPayload};

/// A secret to create, its fields checked against Barbican's schema. Not `Debug`: it holds
/// the payload.
pub(crate) struct NewSecret {
    pub(crate) name: Option<String>,
    /// `None`: Barbican's default, `opaque`.
    pub(crate) secret_type: Option<String>,
    pub(crate) algorithm: Option<String>,
    pub(crate) bit_length: Option<i64>,
    pub(crate) mode: Option<String>,
    /// Microseconds since the epoch.
    pub(crate) expiration: Option<i64>,
    /// The payload's stored media type and its bytes, for a one-step creation.
    pub(crate) payload: Option<(&'static str, Zeroizing<Vec<u8>>)>,
}

impl App {
    /// The secret `id`, unless it is missing or expired (looked up before any policy check,
    /// as Barbican does).
    pub(crate) async fn find_secret(&self, id: &str) -> Result<SecretRow> {
        self.store.secret(id).await?.ok_or(ServiceError::NotFound("Secret not found."))
    }

    /// The policy `Target` of rules about `secret`.
    async fn secret_target(&self, secret: &SecretRow, caller: &Identity) -> Result<Target> {
        let entity = Entity {
            kind: EntityKind::Secret,
            id: &secret.id,
            project_id: &secret.project_id,
            creator_id: secret.creator_id.as_deref(),
            has_read_acl: secret.has_read_acl,
        };
        Ok(self.target(&entity, caller).await?)
    }

    /// Refuses `caller` the policy `action` on `secret` (or on its metadata, consumers...)
    /// unless the policy allows it.
    pub(crate) async fn authorize_on_secret(
        &self,
        action: &str,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        let target = self.secret_target(secret, caller).await?;
        self.authorize(action, &target, caller)
    }

    /// May `caller` create secrets? Asked before the request body is read.
    pub(crate) fn authorize_secret_creation(&self, caller: &Identity) -> Result<()> {
        self.authorize("secrets:post", &project_target(caller), caller)
    }

    /// Creates a secret in `caller`'s project, its payload (if any) sealed in the HSM, and
    /// answers its id. Refused when the project is at its quota of secrets.
    pub(crate) async fn create_secret(&self, caller: &Identity, new: NewSecret) -> Result<String> {
        self.check_quota(&caller.project_id, Counted::Secrets).await?;
        let now = now_micros();
        let id = appliance_store::new_id();
        let mut row = SecretRow {
            id: id.clone(),
            project_id: caller.project_id.clone(),
            name: new.name,
            secret_type: new.secret_type.unwrap_or_else(|| "opaque".into()),
            algorithm: new.algorithm,
            bit_length: new.bit_length,
            mode: new.mode,
            expiration: new.expiration,
            creator_id: caller.user_id.clone(),
            created: now,
            updated: now,
            payload: None,
            has_read_acl: Some(false),
        };
        if let Some((content_type, bytes)) = &new.payload {
            row.payload = Some(self.seal(&row, content_type, bytes).await?);
        }
        // The row is written only once the payload is sealed: a failure before leaves nothing.
        self.store.insert_secret(row).await?;
        Ok(id)
    }

    /// May `caller` list secrets? Asked before the query is read.
    pub(crate) fn authorize_secret_listing(&self, caller: &Identity) -> Result<()> {
        self.authorize("secrets:get", &project_target(caller), caller)
    }

    /// One page of `caller`'s secrets matching `query` (its project is the caller's), and how
    /// many match in all. `shared_only`: instead, the secrets of any project that a read ACL
    /// shares with the caller.
    pub(crate) async fn list_secrets(
        &self,
        caller: &Identity,
        query: SecretQuery,
        shared_only: bool,
    ) -> Result<(Vec<SecretRow>, i64)> {
        if !shared_only {
            let query = SecretQuery { project_id: caller.project_id.clone(), ..query };
            return Ok(self.store.list_secrets(&query).await?);
        }
        let ids = match &caller.user_id {
            Some(user) => self.store.secrets_shared_with(user).await?,
            None => Vec::new(),
        };
        let total = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        let mut page = Vec::new();
        for id in ids
            .iter()
            .skip(usize::try_from(query.offset).unwrap_or(0))
            .take(usize::try_from(query.limit).unwrap_or(0))
        {
            if let Some(s) = self.store.secret(id).await? {
                page.push(s);
            }
        }
        Ok((page, total))
    }

    /// May `caller` read `secret`'s metadata?
    pub(crate) async fn authorize_secret_read(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret:get", secret, caller).await
    }

    /// May `caller` read `secret`'s payload? Asked before the request is looked at further.
    pub(crate) async fn authorize_decryption(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret:decrypt", secret, caller).await
    }

    /// `secret`'s plaintext, as its owner submitted it, decrypted in the HSM; the caller has
    /// been authorized (`authorize_decryption`).
    pub(crate) async fn decrypt_secret(&self, secret: &SecretRow) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.open(secret, stored_payload(secret)?).await?)
    }

    /// May `caller` give `secret` its payload? Asked before the request body is read.
    pub(crate) async fn authorize_payload_upload(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret:put", secret, caller).await
    }

    /// Gives a metadata-only secret its payload, sealed in the HSM; a secret that has one
    /// already keeps it (409).
    pub(crate) async fn upload_payload(
        &self,
        secret: &SecretRow,
        content_type: &'static str,
        bytes: &[u8],
    ) -> Result<()> {
        check_no_payload(secret)?;
        let payload = self.seal(secret, content_type, bytes).await?;
        // Another request may have given it one since it was read.
        if self.store.set_payload(&secret.id, &payload).await? { Ok(()) } else { Err(has_data()) }
    }

    /// May `caller` delete `secret`? Asked before the query is read.
    pub(crate) async fn authorize_secret_deletion(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret:delete", secret, caller).await
    }

    /// Deletes `secret`. `unless_consumed`: refuses (400) while consumers are registered on it.
    pub(crate) async fn delete_secret(
        &self,
        secret: &SecretRow,
        unless_consumed: bool,
    ) -> Result<()> {
        if unless_consumed {
            let (_, consumers) = self.store.secret_consumers(&secret.id, 0, 0).await?;
            if consumers > 0 {
                return Err(ServiceError::Invalid(
                    "Secret cannot be deleted as it has consumers.".into(),
                ));
            }
        }
        Ok(self.store.delete_secret(&secret.id).await?)
    }

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
        let malformed = |what: &str| HsmError::Failed(format!("stored {what} has a wrong length"));
        let sealed = Sealed {
            ciphertext: stored.ciphertext.clone(),
            iv: stored.iv.as_slice().try_into().map_err(|_| malformed("IV"))?,
            tag: stored.tag.as_slice().try_into().map_err(|_| malformed("tag"))?,
        };
        let plaintext = self
            .hsm
            .open_stored(
                &self.store,
                &stored.kek_id,
                sealed,
                payload_aad(&secret.project_id, &secret.id),
            )
            .await?
            .into_zeroizing();
        Ok(match stored.format.as_deref().and_then(|f| f.strip_prefix("pem:")) {
            Some(label) => pem(label, &plaintext),
            None => plaintext,
        })
    }
}

/// A secret's stored payload; a secret created without one and never given one has none
/// (404).
pub(crate) fn stored_payload(secret: &SecretRow) -> Result<&StoredPayload> {
    secret
        .payload
        .as_ref()
        .ok_or(ServiceError::NotFound("Not Found. Sorry but your secret has no payload."))
}

/// Refuses a payload for a secret that has one: payloads never change.
pub(crate) fn check_no_payload(secret: &SecretRow) -> Result<()> {
    if secret.payload.is_some() { Err(has_data()) } else { Ok(()) }
}

fn has_data() -> ServiceError {
    ServiceError::Conflict("Secret already has data, cannot modify it.".into())
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
