//! Secret consumers: the services that declare they use a secret, each a `(service,
//! resource_type, resource_id)` triple registered by a project.

use std::convert::Infallible;

use policy::Target;

use super::App;
use super::error::{Result, ServiceError};
use crate::identity::Identity;
use appliance_store::{Counted, SecretConsumerRow, SecretRow};

/// A change to the consumers of a secret or a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Registering one.
    Add,
    /// Removing one.
    Remove,
}

/// A consumer as the request names it.
#[derive(Debug)]
pub(crate) struct Triple {
    pub(crate) service: String,
    pub(crate) resource_type: String,
    pub(crate) resource_id: String,
}

impl App {
    /// Every consumer of the secret `secret_id`, for showing the secret (the caller has been
    /// authorized for that).
    pub(crate) async fn consumers_of(&self, secret_id: &str) -> Result<Vec<SecretConsumerRow>> {
        let (rows, _) = self.store.secret_consumers(secret_id, 0, i64::MAX).await?;
        Ok(rows)
    }

    /// One page of `secret`'s consumers, and how many it has.
    pub(crate) async fn secret_consumers(
        &self,
        secret: &SecretRow,
        (offset, limit): (i64, i64),
        caller: &Identity,
    ) -> Result<(Vec<SecretConsumerRow>, i64)> {
        self.authorize_on_secret("secret_consumers:get", secret, caller).await?;
        Ok(self.store.secret_consumers(&secret.id, offset, limit).await?)
    }

    /// Refuses the caller registering (`Change::Add`) or removing (`Change::Remove`) a
    /// consumer of `secret` unless the policy allows it; asked before the body is read.
    pub(crate) async fn authorize_secret_consumers(
        &self,
        secret: &SecretRow,
        caller: &Identity,
        change: Change,
    ) -> Result<()> {
        let action = match change {
            Change::Add => "secret_consumers:post",
            Change::Remove => "secret_consumers:delete",
        };
        self.authorize_on_secret(action, secret, caller).await
    }

    /// Registers `consumer` of `secret` for `caller`'s project. Registering it again changes
    /// nothing and counts against no quota; a new one is refused when the project is at its
    /// quota of consumers.
    pub(crate) async fn register_consumer(
        &self,
        secret: &SecretRow,
        consumer: Triple,
        caller: &Identity,
    ) -> Result<()> {
        let Triple { service, resource_type, resource_id } = consumer;
        let exists =
            self.store.secret_consumer(&secret.id, &service, &resource_type, &resource_id).await?;
        if exists.is_none() {
            self.check_quota(&caller.project_id, Counted::SecretConsumers).await?;
        }
        let row = SecretConsumerRow {
            project_id: caller.project_id.clone(),
            service,
            resource_type,
            resource_id,
            created: 0,
            updated: 0,
        };
        Ok(self.store.add_secret_consumer(&secret.id, &row).await?)
    }

    /// Removes `consumer` of `secret`: 404 when it is not registered, and `Forbidden` unless
    /// the caller's project registered it or owns the secret (the policy has already allowed
    /// the removal: this refusal is the consumer's own rule).
    pub(crate) async fn remove_consumer(
        &self,
        secret: &SecretRow,
        consumer: &Triple,
        caller: &Identity,
    ) -> Result<()> {
        let Triple { service, resource_type, resource_id } = consumer;
        let found = self
            .store
            .secret_consumer(&secret.id, service, resource_type, resource_id)
            .await?
            .ok_or(ServiceError::NotFound("Consumer not found."))?;
        if caller.project_id != found.project_id && caller.project_id != secret.project_id {
            return Err(ServiceError::Forbidden);
        }
        Ok(self
            .store
            .remove_secret_consumer(&secret.id, service, resource_type, resource_id)
            .await?)
    }

    /// A consumer of a secret or container looked up by its id. Consumer ids are never shown,
    /// so once the policy allows the look-up there is none to find, whatever the id.
    pub(crate) fn consumer_by_id(&self, caller: &Identity) -> Result<Infallible> {
        self.authorize("consumer:get", &Target::new(), caller)?;
        Err(ServiceError::NotFound("Consumer not found."))
    }
}
