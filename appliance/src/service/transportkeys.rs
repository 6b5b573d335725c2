//! Transport keys: Barbican's legacy keys for wrapping payloads in transit, which only a
//! Dogtag backend provides. The HSM backend has none, so once the policy allows an action
//! there is nothing to list, find or delete, and nothing can be created.

use std::convert::Infallible;

use super::error::{Result, ServiceError};
use super::{App, project_target};
use crate::identity::Identity;

const NOT_FOUND: &str = "Not Found. Transport Key not found.";

impl App {
    /// Refuses the caller `action` unless the policy allows it in the caller's project.
    fn authorize_on_transport_keys(&self, action: &str, caller: &Identity) -> Result<()> {
        self.authorize(action, &project_target(caller), caller)
    }

    /// Listing the transport keys: there are none, so this only checks the policy.
    pub(crate) fn list_transport_keys(&self, caller: &Identity) -> Result<()> {
        self.authorize_on_transport_keys("transport_keys:get", caller)
    }

    /// Creating a transport key: refused, as no backend provides them (`Invalid` says why,
    /// without the operation's name).
    pub(crate) fn create_transport_key(&self, caller: &Identity) -> Result<Infallible> {
        self.authorize_on_transport_keys("transport_keys:post", caller)?;
        Err(ServiceError::Invalid("no backend provides transport keys".into()))
    }

    /// The transport key `id`: never found.
    pub(crate) fn transport_key(&self, caller: &Identity, _id: &str) -> Result<Infallible> {
        self.authorize_on_transport_keys("transport_key:get", caller)?;
        Err(ServiceError::NotFound(NOT_FOUND))
    }

    /// Deleting the transport key `id`: never found.
    pub(crate) fn delete_transport_key(&self, caller: &Identity, _id: &str) -> Result<Infallible> {
        self.authorize_on_transport_keys("transport_key:delete", caller)?;
        Err(ServiceError::NotFound(NOT_FOUND))
    }
}
