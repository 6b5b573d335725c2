//! Quotas: how much a project may create, from its own quotas or the operator's defaults, the
//! check every creation makes first, and the projects' own quotas as administrators set them.

use super::error::{Result, ServiceError};
use super::{App, project_target};
use crate::identity::Identity;
use appliance_store::{Counted, QuotaResource, QuotaRow, StoreError};

pub(crate) use appliance_store::PerResource as Quotas;

impl App {
    /// A project's quota for `resource`: its own, else the default; negative is unlimited.
    pub(crate) async fn quota(
        &self,
        project_id: &str,
        resource: QuotaResource,
    ) -> Result<i64, StoreError> {
        Ok(self.effective_quotas(project_id).await?.get(resource).unwrap_or(-1))
    }

    /// Every quota of a project, each its own or the default.
    pub(crate) async fn effective_quotas(&self, project_id: &str) -> Result<Quotas, StoreError> {
        let configured = self.store.project_quota(project_id).await?;
        let mut quotas = Quotas::default();
        for resource in QuotaResource::ALL {
            let own = configured.as_ref().and_then(|q| q.values.get(resource));
            let value = own.or(self.settings.quota_defaults.get(resource)).unwrap_or(-1);
            quotas.set(resource, Some(value));
        }
        Ok(quotas)
    }

    /// Refuses a creation of `counted` when the project is at its quota.
    pub(crate) async fn check_quota(
        &self,
        project_id: &str,
        counted: Counted,
    ) -> Result<(), ServiceError> {
        let quota = self.quota(project_id, counted.resource()).await?;
        if quota < 0 {
            return Ok(());
        }
        let count = self.store.count(counted, project_id).await?;
        if quota == 0 || count >= quota { Err(ServiceError::QuotaReached) } else { Ok(()) }
    }

    /// The caller's project's quotas, each its own or the default.
    pub(crate) async fn caller_quotas(&self, caller: &Identity) -> Result<Quotas> {
        self.authorize("quotas:get", &project_target(caller), caller)?;
        Ok(self.effective_quotas(&caller.project_id).await?)
    }

    /// A page of the projects that have quotas of their own, and their total.
    pub(crate) async fn list_project_quotas(
        &self,
        caller: &Identity,
        (offset, limit): (i64, i64),
    ) -> Result<(Vec<QuotaRow>, i64)> {
        self.authorize("project_quotas:get", &project_target(caller), caller)?;
        Ok(self.store.list_project_quotas(offset, limit).await?)
    }

    /// The quotas `project_id` has of its own.
    pub(crate) async fn project_quotas(
        &self,
        caller: &Identity,
        project_id: &str,
    ) -> Result<QuotaRow> {
        self.authorize("project_quotas:get", &project_target(caller), caller)?;
        self.store.project_quota(project_id).await?.ok_or(ServiceError::NotFound(NO_QUOTAS))
    }

    /// Refuses the caller setting a project's quotas unless the policy allows it.
    pub(crate) fn authorize_project_quotas_update(&self, caller: &Identity) -> Result<()> {
        self.authorize("project_quotas:put", &project_target(caller), caller)
    }

    /// Sets some of `project_id`'s quotas, keeping the others, once
    /// `authorize_project_quotas_update` allowed it.
    pub(crate) async fn set_project_quotas(
        &self,
        project_id: &str,
        updates: &[(QuotaResource, i64)],
    ) -> Result<()> {
        Ok(self.store.put_project_quota(project_id, updates).await?)
    }

    /// Removes `project_id`'s own quotas: the defaults apply again.
    pub(crate) async fn delete_project_quotas(
        &self,
        caller: &Identity,
        project_id: &str,
    ) -> Result<()> {
        self.authorize("project_quotas:delete", &project_target(caller), caller)?;
        if !self.store.delete_project_quota(project_id).await? {
            return Err(ServiceError::NotFound(NO_QUOTAS));
        }
        Ok(())
    }
}

/// Barbican's answer for a project without quotas of its own.
const NO_QUOTAS: &str = "Project quotas not found.";
