//! A secret's user metadata: string keys (lower-cased when written) to string values, read and
//! written under the secret's policy rules.

use std::collections::BTreeMap;

use super::App;
use super::error::{Result, ServiceError};
use crate::identity::Identity;
use appliance_store::SecretRow;

const NO_SUCH_KEY: ServiceError = ServiceError::NotFound("Secret metadata not found.");

impl App {
    /// All of `secret`'s metadata.
    pub(crate) async fn secret_metadata(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<BTreeMap<String, String>> {
        self.authorize_on_secret("secret_meta:get", secret, caller).await?;
        Ok(self.store.metadata(&secret.id).await?)
    }

    /// May `caller` replace `secret`'s metadata? Asked before the request body is read.
    pub(crate) async fn authorize_metadata_replacement(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret_meta:put", secret, caller).await
    }

    /// Replaces all of `secret`'s metadata by `entries`.
    pub(crate) async fn replace_metadata(
        &self,
        secret: &SecretRow,
        entries: &BTreeMap<String, String>,
    ) -> Result<()> {
        Ok(self.store.replace_metadata(&secret.id, entries).await?)
    }

    /// May `caller` add a metadatum to `secret`? Asked before the request body is read.
    pub(crate) async fn authorize_metadatum_addition(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret_meta:post", secret, caller).await
    }

    /// Adds the metadatum `key` to `secret`; a key it has already is refused (409).
    pub(crate) async fn add_metadatum(
        &self,
        secret: &SecretRow,
        key: &str,
        value: &str,
    ) -> Result<()> {
        if self.store.add_metadatum(&secret.id, key, value).await? {
            Ok(())
        } else {
            Err(ServiceError::Conflict(
                "Conflict. Key in request is already in the secret metadata".into(),
            ))
        }
    }

    /// The value of `secret`'s metadatum `key`, the key compared as written (as Barbican, it is
    /// not lower-cased).
    pub(crate) async fn metadatum(
        &self,
        secret: &SecretRow,
        key: &str,
        caller: &Identity,
    ) -> Result<String> {
        self.authorize_on_secret("secret_meta:get", secret, caller).await?;
        let mut entries = self.store.metadata(&secret.id).await?;
        entries.remove(key).ok_or(NO_SUCH_KEY)
    }

    /// May `caller` change a metadatum of `secret`? Asked before the request body is read.
    pub(crate) async fn authorize_metadatum_update(
        &self,
        secret: &SecretRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret_meta:put", secret, caller).await
    }

    /// Sets the value of `secret`'s existing metadatum `key`; `body_key` is the key the request
    /// body names, which must be the same (409).
    pub(crate) async fn update_metadatum(
        &self,
        secret: &SecretRow,
        key: &str,
        body_key: &str,
        value: &str,
    ) -> Result<()> {
        if !self.store.metadata(&secret.id).await?.contains_key(key) {
            return Err(NO_SUCH_KEY);
        }
        if body_key != key {
            // Barbican's sentence ends there.
            return Err(ServiceError::Conflict(
                "Key in request data does not match key in the ".into(),
            ));
        }
        if self.store.update_metadatum(&secret.id, key, value).await? {
            Ok(())
        } else {
            Err(NO_SUCH_KEY)
        }
    }

    /// Removes `secret`'s metadatum `key`, if it has one.
    pub(crate) async fn delete_metadatum(
        &self,
        secret: &SecretRow,
        key: &str,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_secret("secret_meta:delete", secret, caller).await?;
        Ok(self.store.delete_metadatum(&secret.id, key).await?)
    }
}
