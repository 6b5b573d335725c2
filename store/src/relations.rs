//! Secret consumers, containers (their secrets and consumers), and ACLs.

use sqlx::Row;

use super::{Result, Statement, Store};
use crate::now_micros;

/// A consumer registered on a secret.
#[derive(Clone, Debug)]
pub struct SecretConsumerRow {
    /// The project that registered it.
    pub project_id: String,
    /// `service` of the triple.
    pub service: String,
    /// `resource_type` of the triple.
    pub resource_type: String,
    /// `resource_id` of the triple.
    pub resource_id: String,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
}

/// A container and its secret references.
#[derive(Clone, Debug)]
pub struct ContainerRow {
    /// UUID4.
    pub id: String,
    /// The owning project.
    pub project_id: String,
    /// Free-form name.
    pub name: Option<String>,
    /// `generic`, `rsa` or `certificate` (or an order's algorithm).
    pub kind: String,
    /// The user that created it.
    pub creator_id: Option<String>,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
    /// Its secrets, in insertion order.
    pub secrets: Vec<ContainerSecret>,
}

/// One secret reference of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSecret {
    /// The reference's name.
    pub name: Option<String>,
    /// The secret.
    pub secret_id: String,
}

/// A consumer registered on a container.
#[derive(Clone, Debug)]
pub struct ContainerConsumerRow {
    /// The project that registered it.
    pub project_id: String,
    /// Consumer name.
    pub name: String,
    /// Consumer URL.
    pub url: String,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
}

/// The read ACL of a secret or container.
#[derive(Clone, Debug, Default)]
pub struct AclRow {
    /// False makes the entity private to its owner, project admins and listed users.
    pub project_access: bool,
    /// Users granted read access, from any project.
    pub users: Vec<String>,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
}

fn secret_consumer(r: &sqlx::any::AnyRow) -> Result<SecretConsumerRow> {
    Ok(SecretConsumerRow {
        project_id: r.try_get("project_id")?,
        service: r.try_get("service")?,
        resource_type: r.try_get("resource_type")?,
        resource_id: r.try_get("resource_id")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// What an ACL belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    /// A secret.
    Secret,
    /// A container.
    Container,
}

impl EntityKind {
    /// The name in policy rules and in the `acls` table.
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Secret => "secret",
            EntityKind::Container => "container",
        }
    }
}

impl Store {
    /// A page of a secret's consumers (by creation) and their total.
    pub async fn secret_consumers(
        &self,
        secret_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<SecretConsumerRow>, i64)> {
        let _timed = self.time(Statement::SecretConsumers);
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM secret_consumers WHERE secret_id = $1")
            .bind(secret_id)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM secret_consumers WHERE secret_id = $1 ORDER BY created, service, resource_type, resource_id \
             LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        ))
        .bind(secret_id)
        .fetch_all(self.pool())
        .await?;
        Ok((rows.iter().map(secret_consumer).collect::<Result<_>>()?, total))
    }

    /// Registers a consumer (idempotent).
    pub async fn add_secret_consumer(&self, secret_id: &str, c: &SecretConsumerRow) -> Result<()> {
        let _timed = self.time(Statement::AddSecretConsumer);
        let now = now_micros();
        sqlx::query(
            "INSERT INTO secret_consumers (secret_id, project_id, service, resource_type, resource_id, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (secret_id, service, resource_type, resource_id) DO UPDATE SET updated = $7",
        )
        .bind(secret_id)
        .bind(&c.project_id)
        .bind(&c.service)
        .bind(&c.resource_type)
        .bind(&c.resource_id)
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The consumer with this triple, if registered.
    pub async fn secret_consumer(
        &self,
        secret_id: &str,
        service: &str,
        rtype: &str,
        rid: &str,
    ) -> Result<Option<SecretConsumerRow>> {
        let _timed = self.time(Statement::SecretConsumer);
        let row = sqlx::query(
            "SELECT * FROM secret_consumers WHERE secret_id = $1 AND service = $2 AND resource_type = $3 AND resource_id = $4",
        )
        .bind(secret_id)
        .bind(service)
        .bind(rtype)
        .bind(rid)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(secret_consumer).transpose()
    }

    /// Removes a consumer.
    pub async fn remove_secret_consumer(
        &self,
        secret_id: &str,
        service: &str,
        rtype: &str,
        rid: &str,
    ) -> Result<()> {
        let _timed = self.time(Statement::RemoveSecretConsumer);
        sqlx::query(
            "DELETE FROM secret_consumers WHERE secret_id = $1 AND service = $2 AND resource_type = $3 AND resource_id = $4",
        )
        .bind(secret_id)
        .bind(service)
        .bind(rtype)
        .bind(rid)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Inserts a container with its secret references.
    pub async fn insert_container(&self, c: &ContainerRow) -> Result<()> {
        let _timed = self.time(Statement::InsertContainer);
        let mut tx = self.begin_write().await?;
        insert_container_on(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A container with its references.
    pub async fn container(&self, id: &str) -> Result<Option<ContainerRow>> {
        let _timed = self.time(Statement::Container);
        let Some(r) = sqlx::query("SELECT * FROM containers WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        let mut c = container_from_row(&r)?;
        c.secrets = self.container_secrets(id).await?;
        Ok(Some(c))
    }

    async fn container_secrets(&self, id: &str) -> Result<Vec<ContainerSecret>> {
        let rows = sqlx::query("SELECT name, secret_id FROM container_secrets WHERE container_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(ContainerSecret { name: r.try_get(0)?, secret_id: r.try_get(1)? }))
            .collect()
    }

    /// A page of a project's containers (by creation) and their total.
    pub async fn list_containers(
        &self,
        project_id: &str,
        name: Option<&str>,
        kind: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ContainerRow>, i64)> {
        let _timed = self.time(Statement::ListContainers);
        let like = if self.backend() == super::Backend::Postgres { "ILIKE" } else { "LIKE" };
        let mut filter = String::from(" FROM containers WHERE project_id = $1");
        let mut n = 1;
        if name.is_some() {
            n += 1;
            filter.push_str(&format!(" AND name {like} ${n}"));
        }
        if kind.is_some() {
            n += 1;
            filter.push_str(&format!(" AND type = ${n}"));
        }
        let count_sql = format!("SELECT COUNT(*){filter}");
        let page_sql = format!(
            "SELECT *{filter} ORDER BY created, id LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        );
        let mut count = sqlx::query(&count_sql).bind(project_id);
        let mut page = sqlx::query(&page_sql).bind(project_id);
        for v in [name, kind].into_iter().flatten() {
            count = count.bind(v);
            page = page.bind(v);
        }
        let total: i64 = count.fetch_one(self.pool()).await?.try_get(0)?;
        let mut out = Vec::new();
        for r in page.fetch_all(self.pool()).await? {
            let mut c = container_from_row(&r)?;
            c.secrets = self.container_secrets(&c.id).await?;
            out.push(c);
        }
        Ok((out, total))
    }

    /// Deletes a container, its references, consumers and ACL (never its secrets).
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let _timed = self.time(Statement::DeleteContainer);
        let mut tx = self.begin_write().await?;
        for table in ["container_secrets", "container_consumers"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE container_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for table in ["acls", "acl_users"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE entity_type = 'container' AND entity_id = $1"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM containers WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a reference; `false` if the same (name, secret) pair is already there.
    pub async fn add_container_secret(&self, id: &str, s: &ContainerSecret) -> Result<bool> {
        let _timed = self.time(Statement::AddContainerSecret);
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT name, secret_id, position FROM container_secrets WHERE container_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let mut next = 0i64;
        for r in &rows {
            let name: Option<String> = r.try_get(0)?;
            let secret: String = r.try_get(1)?;
            let position: i64 = r.try_get(2)?;
            next = next.max(position + 1);
            if name == s.name && secret == s.secret_id {
                return Ok(false);
            }
        }
        sqlx::query("INSERT INTO container_secrets (container_id, position, name, secret_id) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(next)
            .bind(&s.name)
            .bind(&s.secret_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE containers SET updated = $1 WHERE id = $2")
            .bind(now_micros())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a reference; `false` if it was not there.
    pub async fn remove_container_secret(&self, id: &str, s: &ContainerSecret) -> Result<bool> {
        let _timed = self.time(Statement::RemoveContainerSecret);
        let result = match &s.name {
            Some(name) => sqlx::query("DELETE FROM container_secrets WHERE container_id = $1 AND secret_id = $2 AND name = $3")
                .bind(id)
                .bind(&s.secret_id)
                .bind(name)
                .execute(self.pool())
                .await?,
            None => sqlx::query("DELETE FROM container_secrets WHERE container_id = $1 AND secret_id = $2 AND name IS NULL")
                .bind(id)
                .bind(&s.secret_id)
                .execute(self.pool())
                .await?,
        };
        Ok(result.rows_affected() > 0)
    }

    /// A page of a container's consumers (by name) and their total.
    pub async fn container_consumers(
        &self,
        id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ContainerConsumerRow>, i64)> {
        let _timed = self.time(Statement::ContainerConsumers);
        let total: i64 =
            sqlx::query("SELECT COUNT(*) FROM container_consumers WHERE container_id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?
                .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM container_consumers WHERE container_id = $1 ORDER BY name, url LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let consumers = rows
            .iter()
            .map(|r| {
                Ok(ContainerConsumerRow {
                    project_id: r.try_get("project_id")?,
                    name: r.try_get("name")?,
                    url: r.try_get("url")?,
                    created: r.try_get("created")?,
                    updated: r.try_get("updated")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok((consumers, total))
    }

    /// Registers a container consumer (idempotent).
    pub async fn add_container_consumer(
        &self,
        id: &str,
        project_id: &str,
        name: &str,
        url: &str,
    ) -> Result<()> {
        let _timed = self.time(Statement::AddContainerConsumer);
        let now = now_micros();
        sqlx::query(
            "INSERT INTO container_consumers (container_id, project_id, name, url, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (container_id, name, url) DO UPDATE SET updated = $6",
        )
        .bind(id)
        .bind(project_id)
        .bind(name)
        .bind(url)
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The project that registered this container consumer, if registered.
    pub async fn container_consumer_project(
        &self,
        id: &str,
        name: &str,
        url: &str,
    ) -> Result<Option<String>> {
        let _timed = self.time(Statement::ContainerConsumerProject);
        let row = sqlx::query("SELECT project_id FROM container_consumers WHERE container_id = $1 AND name = $2 AND url = $3")
            .bind(id)
            .bind(name)
            .bind(url)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get(0).map_err(Into::into)).transpose()
    }

    /// Removes a container consumer.
    pub async fn remove_container_consumer(&self, id: &str, name: &str, url: &str) -> Result<()> {
        let _timed = self.time(Statement::RemoveContainerConsumer);
        sqlx::query(
            "DELETE FROM container_consumers WHERE container_id = $1 AND name = $2 AND url = $3",
        )
        .bind(id)
        .bind(name)
        .bind(url)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The read ACL of an entity (`secret` or `container`), if one is stored.
    pub async fn acl(&self, entity: EntityKind, id: &str) -> Result<Option<AclRow>> {
        let _timed = self.time(Statement::Acl);
        let entity_type = entity.name();
        let Some(r) = sqlx::query(
            "SELECT project_access, created, updated FROM acls WHERE entity_type = $1 AND entity_id = $2 AND operation = 'read'",
        )
        .bind(entity_type)
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        else {
            return Ok(None);
        };
        let users = sqlx::query(
            "SELECT user_id FROM acl_users WHERE entity_type = $1 AND entity_id = $2 AND operation = 'read' ORDER BY user_id",
        )
        .bind(entity_type)
        .bind(id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|u| u.try_get(0))
        .collect::<std::result::Result<Vec<String>, _>>()?;
        let access: i64 = r.try_get(0)?;
        Ok(Some(AclRow {
            project_access: access != 0,
            users,
            created: r.try_get(1)?,
            updated: r.try_get(2)?,
        }))
    }

    /// Stores (or, with `None`, removes) an entity's read ACL.
    pub async fn set_acl(
        &self,
        entity: EntityKind,
        id: &str,
        acl: Option<(bool, &[String])>,
    ) -> Result<()> {
        let _timed = self.time(Statement::SetAcl);
        let entity_type = entity.name();
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let created: Option<i64> = sqlx::query("SELECT created FROM acls WHERE entity_type = $1 AND entity_id = $2 AND operation = 'read'")
            .bind(entity_type)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        for table in ["acls", "acl_users"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE entity_type = $1 AND entity_id = $2"))
                .bind(entity_type)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((project_access, users)) = acl {
            sqlx::query(
                "INSERT INTO acls (entity_type, entity_id, operation, project_access, created, updated) \
                 VALUES ($1, $2, 'read', $3, $4, $5)",
            )
            .bind(entity_type)
            .bind(id)
            .bind(i64::from(project_access))
            .bind(created.unwrap_or(now))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let mut seen = std::collections::BTreeSet::new();
            for user in users {
                if seen.insert(user) {
                    sqlx::query("INSERT INTO acl_users (entity_type, entity_id, operation, user_id) VALUES ($1, $2, 'read', $3)")
                        .bind(entity_type)
                        .bind(id)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ids of live secrets whose read ACL lists `user_id`.
    pub async fn secrets_shared_with(&self, user_id: &str) -> Result<Vec<String>> {
        let _timed = self.time(Statement::SecretsSharedWith);
        let rows = sqlx::query(
            "SELECT s.id FROM secrets s JOIN acl_users u ON u.entity_type = 'secret' AND u.entity_id = s.id \
             AND u.operation = 'read' WHERE u.user_id = $1 AND (s.expiration IS NULL OR s.expiration > $2) \
             ORDER BY s.created, s.id",
        )
        .bind(user_id)
        .bind(now_micros())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
    }
}

fn container_from_row(r: &sqlx::any::AnyRow) -> Result<ContainerRow> {
    Ok(ContainerRow {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        kind: r.try_get("type")?,
        creator_id: r.try_get("creator_id")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        secrets: Vec::new(),
    })
}

/// Inserts a container and its references on a connection or inside a transaction.
pub(crate) async fn insert_container_on(
    conn: &mut sqlx::AnyConnection,
    c: &ContainerRow,
) -> Result<()> {
    sqlx::query("INSERT INTO containers (id, project_id, name, type, creator_id, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&c.id)
        .bind(&c.project_id)
        .bind(&c.name)
        .bind(&c.kind)
        .bind(&c.creator_id)
        .bind(c.created)
        .bind(c.updated)
        .execute(&mut *conn)
        .await?;
    for (position, s) in c.secrets.iter().enumerate() {
        sqlx::query("INSERT INTO container_secrets (container_id, position, name, secret_id) VALUES ($1, $2, $3, $4)")
            .bind(&c.id)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(&s.name)
            .bind(&s.secret_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
