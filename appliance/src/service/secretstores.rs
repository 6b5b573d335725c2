//! Secret stores: the backends secrets can be kept in, and each project's preferred one. There
//! is one, the HSM behind the proxies. When the operator does not enable multiple stores the
//! resource is not found, as Barbican's is with a single store.

use super::error::{Result, ServiceError};
use super::{App, project_target};
use crate::identity::Identity;

/// A backend the appliance can keep secrets in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SecretStore {
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) store_plugin: &'static str,
    pub(crate) crypto_plugin: &'static str,
    pub(crate) global_default: bool,
}

/// The stores, the global default first. New backends are added here.
pub(crate) const STORES: &[SecretStore] = &[SecretStore {
    id: "4f1c7d5e-8a2b-4c3d-9e6f-0a1b2c3d4e5f",
    name: "HSM (PKCS#11 through hsm-proxy)",
    store_plugin: "store_crypto",
    crypto_plugin: "hsm_proxy",
    global_default: true,
}];

/// Barbican's answer about every store when multiple stores are not enabled.
pub(crate) const NOT_ENABLED: &str =
    "Not Found. Multiple backends support is not enabled in service configuration.";

const NO_PREFERRED: &str = "Not Found. No preferred secret store defined for this project.";
const UNKNOWN_STORE: &str = "Not Found. Secret store not found.";

impl App {
    /// Refuses the caller `action` unless the policy allows it in the caller's project.
    fn authorize_on_stores(&self, action: &str, caller: &Identity) -> Result<()> {
        self.authorize(action, &project_target(caller), caller)
    }

    /// Not found unless the operator enabled multiple stores.
    fn require_secret_stores(&self) -> Result<()> {
        if self.settings.secret_stores { Ok(()) } else { Err(ServiceError::NotFound(NOT_ENABLED)) }
    }

    /// Every store.
    pub(crate) fn secret_stores(&self, caller: &Identity) -> Result<&'static [SecretStore]> {
        self.authorize_on_stores("secretstores:get", caller)?;
        self.require_secret_stores()?;
        Ok(STORES)
    }

    /// The store secrets go to when their project has no preference.
    pub(crate) fn global_default_store(&self, caller: &Identity) -> Result<&'static SecretStore> {
        self.authorize_on_stores("secretstores:get_global_default", caller)?;
        self.require_secret_stores()?;
        Ok(STORES.iter().find(|s| s.global_default).unwrap_or(&STORES[0]))
    }

    /// The caller's project's preferred store.
    pub(crate) async fn preferred_store(&self, caller: &Identity) -> Result<&'static SecretStore> {
        self.authorize_on_stores("secretstores:get_preferred", caller)?;
        self.require_secret_stores()?;
        let preferred = self.store.preferred_store(&caller.project_id).await?;
        preferred
            .and_then(|id| STORES.iter().find(|s| s.id == id))
            .ok_or(ServiceError::NotFound(NO_PREFERRED))
    }

    /// The store `id`. With multiple stores not enabled this is not found before any policy
    /// check, as in Barbican.
    pub(crate) fn secret_store(&self, caller: &Identity, id: &str) -> Result<&'static SecretStore> {
        self.require_secret_stores()?;
        self.authorize_on_stores("secretstore:get", caller)?;
        STORES.iter().find(|s| s.id == id).ok_or(ServiceError::NotFound(UNKNOWN_STORE))
    }

    /// Makes the store `id` the caller's project's preferred one.
    pub(crate) async fn set_preferred_store(&self, caller: &Identity, id: &str) -> Result<()> {
        self.require_secret_stores()?;
        self.authorize_on_stores("secretstore_preferred:post", caller)?;
        let store =
            STORES.iter().find(|s| s.id == id).ok_or(ServiceError::NotFound(UNKNOWN_STORE))?;
        Ok(self.store.set_preferred_store(&caller.project_id, store.id).await?)
    }

    /// Forgets the caller's project's preferred store.
    pub(crate) async fn remove_preferred_store(&self, caller: &Identity) -> Result<()> {
        self.require_secret_stores()?;
        self.authorize_on_stores("secretstore_preferred:delete", caller)?;
        if !self.store.delete_preferred_store(&caller.project_id).await? {
            return Err(ServiceError::NotFound(NO_PREFERRED));
        }
        Ok(())
    }
}
