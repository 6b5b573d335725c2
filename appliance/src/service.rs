//! The services below the HTTP layer: what the appliance holds (storage, the HSM client, the
//! policy, the order queue), the policy decisions on it, and the rules shared by the API and
//! the order worker (sealing payloads, quotas, PEM). Nothing here speaks HTTP.

pub(crate) mod acls;
pub(crate) mod consumers;
pub(crate) mod containers;
pub(crate) mod error;
pub(crate) mod health;
pub(crate) mod keks;
pub(crate) mod metadata;
pub(crate) mod orders;
pub(crate) mod quotas;
pub(crate) mod secrets;
pub(crate) mod secretstores;
pub(crate) mod transportkeys;

use std::sync::Arc;

use appliance_store::{EntityKind, Store, StoreError};
use policy::{Credentials, Decision, Policy, Scope, Target};

use crate::hsm::Hsm;
use crate::identity::{Identity, IdentitySource};
use crate::metrics::Metrics;
use crate::service::error::ServiceError;
use crate::service::health::{HealthSettings, ReadinessCache};
use crate::service::orders::OrderQueue;
use crate::service::quotas::Quotas;

/// Everything a request or the order worker needs, shared by all of them.
#[derive(Debug)]
pub struct App {
    pub(crate) store: Store,
    pub(crate) hsm: Hsm,
    pub(crate) policy: Policy,
    pub(crate) settings: Settings,
    pub(crate) orders: OrderQueue,
    /// `None` with metrics off.
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The last readiness check.
    pub(crate) readiness: ReadinessCache,
}

/// Behaviour the operator sets.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Base of every href (`https://kms.example.com`); derived from the request when unset.
    /// A trailing `/` is dropped.
    pub host_href: Option<String>,
    /// Largest request body read.
    pub max_request_bytes: usize,
    /// Largest secret payload (as submitted).
    pub max_secret_bytes: usize,
    /// Where identities come from.
    pub identity: IdentitySource,
    /// Default quota per resource; negative is unlimited.
    pub quota_defaults: Quotas,
    /// The secret-store API is served (`[secretstore] enable_multiple_secret_stores`); false:
    /// its routes answer 404 as Barbican's do with a single store.
    pub secret_stores: bool,
    /// When this appliance started (microseconds since the epoch).
    pub started: i64,
    /// The per-request access log.
    pub access_log: crate::logging::AccessLog,
    /// `/healthcheck`.
    pub health: HealthSettings,
    /// `[hsm] fips`: orders only of approved algorithms and sizes.
    pub fips: bool,
}

/// A secret or container, as far as policy rules about it are concerned.
#[derive(Debug)]
pub(crate) struct Entity<'a> {
    pub(crate) kind: EntityKind,
    pub(crate) id: &'a str,
    pub(crate) project_id: &'a str,
    pub(crate) creator_id: Option<&'a str>,
    /// Whether it has a read ACL, when the caller already knows (`None`: look it up).
    pub(crate) has_read_acl: Option<bool>,
}

impl App {
    /// Assembles the appliance from its parts.
    pub(crate) fn new(
        store: Store,
        hsm: Hsm,
        policy: Policy,
        settings: Settings,
        orders: OrderQueue,
        metrics: Option<Arc<Metrics>>,
    ) -> App {
        let mut settings = settings;
        if let Some(href) = settings.host_href.as_mut() {
            href.truncate(href.trim_end_matches('/').len());
        }
        App { store, hsm, policy, settings, orders, metrics, readiness: ReadinessCache::default() }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Refuses `caller` the `action` on `target` unless the policy allows it.
    pub(crate) fn authorize(
        &self,
        action: &str,
        target: &Target,
        caller: &Identity,
    ) -> Result<(), ServiceError> {
        match self.decide(action, target, caller) {
            Decision::Allow => Ok(()),
            Decision::Deny => {
                tracing::info!(action, project = %caller.project_id, "policy denied the request");
                Err(ServiceError::Forbidden)
            }
        }
    }

    /// Whether `caller` may do `action` on `target`.
    pub(crate) fn decide(&self, action: &str, target: &Target, caller: &Identity) -> Decision {
        let creds = Credentials {
            roles: caller.roles.clone(),
            user_id: caller.user_id.clone(),
            project_id: Some(caller.project_id.clone()),
            domain_id: caller.domain_id.clone(),
            scope: if caller.domain_id.is_some() { Scope::Domain } else { Scope::Project },
            attributes: Default::default(),
        };
        self.policy.enforce(action, target, &creds)
    }

    /// The `Target` of rules about a secret or container: its project, creator and read ACL as
    /// it applies to `caller`.
    pub(crate) async fn target(
        &self,
        entity: &Entity<'_>,
        caller: &Identity,
    ) -> Result<Target, StoreError> {
        let kind = entity.kind.name();
        let acl = match entity.has_read_acl {
            Some(false) => None,
            _ => self.store.acl(entity.kind, entity.id).await?,
        };
        // No ACL: readable project-wide, nobody listed.
        let project_access = acl.as_ref().is_none_or(|a| a.project_access);
        let listed = match (&acl, caller.user_id.as_deref()) {
            (Some(acl), Some(user)) => acl.users.iter().any(|u| u == user),
            _ => false,
        };
        Ok(Target::new()
            .set(&format!("target.{kind}.project_id"), entity.project_id)
            .set_opt(&format!("target.{kind}.creator_id"), entity.creator_id.map(str::to_owned))
            .set(
                &format!("target.{kind}.read_project_access"),
                if project_access { "True" } else { "False" },
            )
            .set_opt(&format!("target.{kind}.read"), listed.then(|| "read".to_owned())))
    }
}

/// The `Target` of collection rules: the caller's own project.
pub(crate) fn project_target(caller: &Identity) -> Target {
    Target::new().set("project_id", caller.project_id.clone())
}
