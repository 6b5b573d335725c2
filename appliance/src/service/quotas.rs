//! Quotas: how much a project may create, from its own quotas or the operator's defaults, and
//! the check every creation makes first.

use super::App;
use appliance_store::{Counted, QuotaResource, StoreError};

pub(crate) use appliance_store::PerResource as Quotas;

/// Why a creation may not go ahead.
#[derive(Debug)]
pub(crate) enum QuotaError {
    /// The project is at its quota.
    Reached,
    /// The quota or the count could not be read.
    Store(StoreError),
}

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
    ) -> Result<(), QuotaError> {
        let quota = self.quota(project_id, counted.resource()).await.map_err(QuotaError::Store)?;
        if quota < 0 {
            return Ok(());
        }
        let count = self.store.count(counted, project_id).await.map_err(QuotaError::Store)?;
        if quota == 0 || count >= quota { Err(QuotaError::Reached) } else { Ok(()) }
    }
}
