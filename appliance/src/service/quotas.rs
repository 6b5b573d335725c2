//! Quotas: how much a project may create, from its own quotas or the operator's defaults, and
//! the check every creation makes first.

use super::App;
use super::error::ServiceError;
use appliance_store::{Counted, QuotaResource, StoreError};

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
}
