//! Containers: named groups of a project's secrets, the references that make them up and the
//! consumers registered on them, with the policy decisions and quota checks about each.

use appliance_store::{ContainerConsumerRow, ContainerRow, ContainerSecret, Counted, EntityKind};

use super::consumers::Change;
use super::error::{Result, ServiceError};
use super::{App, Entity, project_target};
use crate::identity::Identity;
use crate::timefmt::now_micros;

/// A container to create, as the request describes it.
#[derive(Debug)]
pub(crate) struct NewContainer {
    /// Free-form name.
    pub(crate) name: Option<String>,
    /// `generic`, `rsa` or `certificate`.
    pub(crate) kind: String,
    /// Its references: each a name and the id its secret reference ends with.
    pub(crate) secrets: Vec<ContainerSecret>,
}

/// Container `c` as policy rules about it see it.
pub(crate) fn container_entity(c: &ContainerRow) -> Entity<'_> {
    Entity {
        kind: EntityKind::Container,
        id: &c.id,
        project_id: &c.project_id,
        creator_id: c.creator_id.as_deref(),
        has_read_acl: None,
    }
}

/// True when `id` can name a secret: secret ids are canonical UUID4s.
fn is_secret_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id)
        .is_ok_and(|u| u.get_version_num() == 4 && u.hyphenated().to_string() == id)
}

impl App {
    /// The container `id`, whoever asks: each action on it checks the policy.
    pub(crate) async fn container(&self, id: &str) -> Result<ContainerRow> {
        self.store
            .container(id)
            .await?
            .ok_or(ServiceError::NotFound("Secrets container not found."))
    }

    /// Refuses the caller the container `action` on `c` unless the policy allows it.
    async fn authorize_on_container(
        &self,
        action: &str,
        c: &ContainerRow,
        caller: &Identity,
    ) -> Result<()> {
        let target = self.target(&container_entity(c), caller).await?;
        self.authorize(action, &target, caller)
    }

    /// Whether `id` names a secret, of `project` when one is given.
    async fn secret_exists(&self, id: &str, project: Option<&str>) -> Result<bool> {
        if !is_secret_id(id) {
            return Ok(false);
        }
        let secret = self.store.secret(id).await?;
        Ok(secret.is_some_and(|s| project.is_none_or(|p| s.project_id == p)))
    }

    /// Refuses the caller container creation unless the policy allows it.
    pub(crate) fn authorize_container_create(&self, caller: &Identity) -> Result<()> {
        self.authorize("containers:post", &project_target(caller), caller)
    }

    /// Creates a container in the caller's project, within its quota; every reference must
    /// name a secret of that project (`UnknownSecret` names the first that does not). The policy check (`authorize_container_create`) comes
    /// first.
    pub(crate) async fn create_container(
        &self,
        caller: &Identity,
        new: NewContainer,
    ) -> Result<ContainerRow> {
        self.check_quota(&caller.project_id, Counted::Containers).await?;
        for entry in &new.secrets {
            if !self.secret_exists(&entry.secret_id, Some(&caller.project_id)).await? {
                return Err(ServiceError::UnknownSecret { name: entry.name.clone() });
            }
        }
        let now = now_micros();
        let row = ContainerRow {
            id: appliance_store::new_id(),
            project_id: caller.project_id.clone(),
            name: new.name,
            kind: new.kind,
            creator_id: caller.user_id.clone(),
            created: now,
            updated: now,
            secrets: new.secrets,
        };
        self.store.insert_container(&row).await?;
        Ok(row)
    }

    /// A page of the caller's project's containers, filtered by name and type, and their
    /// total.
    pub(crate) async fn list_containers(
        &self,
        caller: &Identity,
        name: Option<&str>,
        kind: Option<&str>,
        (offset, limit): (i64, i64),
    ) -> Result<(Vec<ContainerRow>, i64)> {
        self.authorize("containers:get", &project_target(caller), caller)?;
        Ok(self.store.list_containers(&caller.project_id, name, kind, offset, limit).await?)
    }

    /// Every consumer of `c`, to show it with them (once the caller may see it).
    pub(crate) async fn all_container_consumers(
        &self,
        c: &ContainerRow,
    ) -> Result<Vec<ContainerConsumerRow>> {
        Ok(self.store.container_consumers(&c.id, 0, i64::MAX).await?.0)
    }

    /// Refuses the caller a look at `c` unless the policy allows it.
    pub(crate) async fn authorize_container_read(
        &self,
        c: &ContainerRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_container("container:get", c, caller).await
    }

    /// Deletes `c` with its references, consumers and ACL (never its secrets).
    pub(crate) async fn delete_container(&self, c: &ContainerRow, caller: &Identity) -> Result<()> {
        self.authorize_on_container("container:delete", c, caller).await?;
        Ok(self.store.delete_container(&c.id).await?)
    }

    /// Refuses the caller adding a reference to `c` unless the policy allows it and `c` is a
    /// generic container, the only kind whose references change.
    pub(crate) async fn authorize_container_secret_add(
        &self,
        c: &ContainerRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_container("container_secret:post", c, caller).await?;
        if c.kind != "generic" {
            return Err(ServiceError::Invalid("Only 'generic' containers can be modified.".into()));
        }
        Ok(())
    }

    /// Adds a reference to a secret of the caller's project to `c`, once
    /// `authorize_container_secret_add` allowed it.
    pub(crate) async fn add_container_secret(
        &self,
        c: &ContainerRow,
        caller: &Identity,
        entry: ContainerSecret,
    ) -> Result<()> {
        if !self.secret_exists(&entry.secret_id, Some(&caller.project_id)).await? {
            return Err(ServiceError::NotFound("Secret provided doesn't exist."));
        }
        if !self.store.add_container_secret(&c.id, &entry).await? {
            return Err(ServiceError::Conflict(
                "Conflict. A secret with that name and ID is already stored in this container..."
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses the caller removing a reference from `c` unless the policy allows it.
    pub(crate) async fn authorize_container_secret_remove(
        &self,
        c: &ContainerRow,
        caller: &Identity,
    ) -> Result<()> {
        self.authorize_on_container("container_secret:delete", c, caller).await
    }

    /// Removes a reference from `c`, once `authorize_container_secret_remove` allowed it. The
    /// secret may be any project's: only the reference goes.
    pub(crate) async fn remove_container_secret(
        &self,
        c: &ContainerRow,
        entry: ContainerSecret,
    ) -> Result<()> {
        if !self.secret_exists(&entry.secret_id, None).await? {
            return Err(ServiceError::UnknownSecret { name: entry.name });
        }
        if !self.store.remove_container_secret(&c.id, &entry).await? {
            return Err(ServiceError::NotFound("Secret provided is not in the container"));
        }
        Ok(())
    }

    /// A page of `c`'s consumers and their total.
    pub(crate) async fn list_container_consumers(
        &self,
        c: &ContainerRow,
        caller: &Identity,
        (offset, limit): (i64, i64),
    ) -> Result<(Vec<ContainerConsumerRow>, i64)> {
        self.authorize_on_container("container_consumers:get", c, caller).await?;
        Ok(self.store.container_consumers(&c.id, offset, limit).await?)
    }

    /// Refuses the caller registering (`Change::Add`) or removing (`Change::Remove`) a
    /// consumer of `c` unless the policy allows it.
    pub(crate) async fn authorize_container_consumers(
        &self,
        c: &ContainerRow,
        caller: &Identity,
        change: Change,
    ) -> Result<()> {
        let action = match change {
            Change::Add => "container_consumers:post",
            Change::Remove => "container_consumers:delete",
        };
        self.authorize_on_container(action, c, caller).await
    }

    /// Registers the caller's project as consumer `name` at `url` of `c`, once
    /// `authorize_container_consumers` allowed it. A new registration counts against the
    /// project's quota; registering again only refreshes it.
    pub(crate) async fn add_container_consumer(
        &self,
        c: &ContainerRow,
        caller: &Identity,
        name: &str,
        url: &str,
    ) -> Result<()> {
        if self.store.container_consumer_project(&c.id, name, url).await?.is_none() {
            self.check_quota(&caller.project_id, Counted::ContainerConsumers).await?;
        }
        Ok(self.store.add_container_consumer(&c.id, &caller.project_id, name, url).await?)
    }

    /// Removes consumer `name` at `url` from `c`, once `authorize_container_consumers` allowed
    /// it. Only the project that registered it or the container's own may: `Forbidden` here
    /// means the caller's project is neither.
    pub(crate) async fn remove_container_consumer(
        &self,
        c: &ContainerRow,
        caller: &Identity,
        name: &str,
        url: &str,
    ) -> Result<()> {
        let owner = self
            .store
            .container_consumer_project(&c.id, name, url)
            .await?
            .ok_or(ServiceError::NotFound("Consumer not found."))?;
        if caller.project_id != owner && caller.project_id != c.project_id {
            return Err(ServiceError::Forbidden);
        }
        Ok(self.store.remove_container_consumer(&c.id, name, url).await?)
    }
}
