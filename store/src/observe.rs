//! What the store tells of itself for metrics, without exporting any: how long each of its
//! statements took (to an [`Observer`] the appliance gives it), and how its pool is used.

use std::time::{Duration, Instant};

use crate::Store;

/// Told how long each statement took. Called on the caller's task, so it must be quick.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `statement` ended (answered or failed) after `took`.
    fn statement(&self, statement: Statement, took: Duration);
}

macro_rules! statements {
    ($($variant:ident = $name:literal,)*) => {
        /// The store's statements, one per method that reaches the database.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Statement {
            $(
                #[doc = concat!("`Store::", $name, "`.")]
                $variant,
            )*
        }

        impl Statement {
            /// Every statement, in [`Statement::index`] order.
            pub const ALL: &[Statement] = &[$(Statement::$variant,)*];

            /// The method's name, for metric labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Statement::$variant => $name,)*
                }
            }
        }
    };
}

statements! {
    Ping = "ping",
    PendingOrders = "pending_orders",
    ActiveKek = "active_kek",
    Kek = "kek",
    InsertKek = "insert_kek",
    ReserveEncryptions = "reserve_encryptions",
    RotateKek = "rotate_kek",
    AgedKeks = "aged_keks",
    ClaimRetiredKek = "claim_retired_kek",
    RenewKekLease = "renew_kek_lease",
    ReleaseKek = "release_kek",
    SealedUnder = "sealed_under",
    Rewrap = "rewrap",
    DestroyKek = "destroy_kek",
    KekStatus = "kek_status",
    PurgeProject = "purge_project",
    KeksAfter = "keks_after",
    ReplaceKekBlob = "replace_kek_blob",
    InsertSecret = "insert_secret",
    Secret = "secret",
    SetPayload = "set_payload",
    DeleteSecret = "delete_secret",
    ListSecrets = "list_secrets",
    Metadata = "metadata",
    ReplaceMetadata = "replace_metadata",
    AddMetadatum = "add_metadatum",
    UpdateMetadatum = "update_metadatum",
    DeleteMetadatum = "delete_metadatum",
    InsertOrder = "insert_order",
    Order = "order",
    ListOrders = "list_orders",
    DeleteOrder = "delete_order",
    ClaimOrder = "claim_order",
    CompleteOrder = "complete_order",
    FailOrder = "fail_order",
    RenewLease = "renew_lease",
    ReleaseOrder = "release_order",
    ProjectQuota = "project_quota",
    ListProjectQuotas = "list_project_quotas",
    PutProjectQuota = "put_project_quota",
    DeleteProjectQuota = "delete_project_quota",
    Count = "count",
    PreferredStore = "preferred_store",
    SetPreferredStore = "set_preferred_store",
    DeletePreferredStore = "delete_preferred_store",
    SecretConsumers = "secret_consumers",
    AddSecretConsumer = "add_secret_consumer",
    SecretConsumer = "secret_consumer",
    RemoveSecretConsumer = "remove_secret_consumer",
    InsertContainer = "insert_container",
    Container = "container",
    ListContainers = "list_containers",
    DeleteContainer = "delete_container",
    AddContainerSecret = "add_container_secret",
    RemoveContainerSecret = "remove_container_secret",
    ContainerConsumers = "container_consumers",
    AddContainerConsumer = "add_container_consumer",
    ContainerConsumerProject = "container_consumer_project",
    RemoveContainerConsumer = "remove_container_consumer",
    Acl = "acl",
    SetAcl = "set_acl",
    SecretsSharedWith = "secrets_shared_with",
}

impl Statement {
    /// The statement's place in [`Statement::ALL`].
    pub const fn index(self) -> usize {
        // A fieldless enum's discriminants count from 0 in declaration order, as ALL lists it.
        #[allow(clippy::as_conversions)]
        let index = self as usize;
        index
    }
}

/// The pool's connections at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open, in use or idle.
    pub open: u32,
    /// Connections open and waiting for a statement (in the pool, or kept by the store).
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

/// Reports a statement's time to the observer when dropped, however the statement ended.
pub(crate) struct Timed<'a> {
    observer: Option<(&'a dyn Observer, Instant)>,
    statement: Statement,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if let Some((observer, started)) = self.observer {
            observer.statement(self.statement, started.elapsed());
        }
    }
}

impl Store {
    /// Times `statement` until the returned guard is dropped.
    pub(crate) fn time(&self, statement: Statement) -> Timed<'_> {
        let observer = self.observer.as_deref().map(|o| (o, Instant::now()));
        Timed { observer, statement }
    }

    /// How the pool's connections are used now.
    pub fn pool_stats(&self) -> PoolStats {
        let kept = u32::try_from(self.kept.len()).unwrap_or(u32::MAX);
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStats {
            open: self.pool.size(),
            idle: idle.saturating_add(kept),
            max: self.pool.options().get_max_connections(),
        }
    }

    /// A statement that touches no table, through the pool: whether the database answers.
    pub async fn ping(&self) -> crate::Result<()> {
        let _timed = self.time(Statement::Ping);
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
