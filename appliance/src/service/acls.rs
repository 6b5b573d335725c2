//! Read ACLs of secrets and containers: whether the whole project may read one, and which
//! users (of any project) may, with the policy decisions about reading and changing them.

use appliance_store::AclRow;

use super::error::Result;
use super::{App, Entity};
use crate::identity::Identity;

/// A `read` entry as a request gives it: each field only when given.
#[derive(Debug, Default)]
pub(crate) struct AclEntry {
    /// Whether the entity's project may read it.
    pub(crate) project_access: Option<bool>,
    /// Users who may read it.
    pub(crate) users: Option<Vec<String>>,
}

/// How an update treats the stored ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AclUpdate {
    /// Merge into it: omitted fields keep their values; no entry changes nothing (PATCH).
    Merge,
    /// Replace it: omitted fields take their defaults; no entry removes it (PUT).
    Replace,
}

impl App {
    /// Refuses the caller the ACL `action` (`get`, `put_patch`, `delete`) on `entity` unless
    /// the policy allows it.
    async fn authorize_on_acl(
        &self,
        action: &str,
        entity: &Entity<'_>,
        caller: &Identity,
    ) -> Result<()> {
        let target = self.target(entity, caller).await?;
        self.authorize(&format!("{}_acls:{action}", entity.kind.name()), &target, caller)
    }

    /// `entity`'s read ACL; `None` when it has none (its project reads it, nobody else).
    pub(crate) async fn acl(
        &self,
        entity: &Entity<'_>,
        caller: &Identity,
    ) -> Result<Option<AclRow>> {
        self.authorize_on_acl("get", entity, caller).await?;
        Ok(self.store.acl(entity.kind, entity.id).await?)
    }

    /// Refuses the caller changing `entity`'s ACL unless the policy allows it.
    pub(crate) async fn authorize_acl_update(
        &self,
        entity: &Entity<'_>,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_acl("put_patch", entity, caller).await
    }

    /// Changes `entity`'s read ACL to `entry`, replacing or merging into the stored one, once
    /// `authorize_acl_update` allowed it. `None` is an absent or empty entry.
    pub(crate) async fn update_acl(
        &self,
        entity: &Entity<'_>,
        update: AclUpdate,
        entry: Option<AclEntry>,
    ) -> Result<()> {
        let defaults =
            |e: AclEntry| (e.project_access.unwrap_or(true), e.users.unwrap_or_default());
        let new = match update {
            AclUpdate::Replace => entry.map(defaults),
            AclUpdate::Merge => match (entry, self.store.acl(entity.kind, entity.id).await?) {
                (None, stored) => stored.map(|a| (a.project_access, a.users)),
                (Some(e), Some(a)) => {
                    Some((e.project_access.unwrap_or(a.project_access), e.users.unwrap_or(a.users)))
                }
                (Some(e), None) => Some(defaults(e)),
            },
        };
        let new = new.as_ref().map(|(access, users)| (*access, users.as_slice()));
        Ok(self.store.set_acl(entity.kind, entity.id, new).await?)
    }

    /// Removes `entity`'s read ACL: its project reads it again, nobody else.
    pub(crate) async fn delete_acl(&self, entity: &Entity<'_>, caller: &Identity) -> Result<()> {
        self.authorize_on_acl("delete", entity, caller).await?;
        Ok(self.store.set_acl(entity.kind, entity.id, None).await?)
    }
}
