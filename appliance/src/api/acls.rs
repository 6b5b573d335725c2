//! `/v1/secrets/{id}/acl` and `/v1/containers/{id}/acl`: the read ACL (users, project access).

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::body::repr;
use super::secrets::store_error;
use super::{ApiError, Call, Outcome, Reply, parse_json};
use crate::timefmt::format_micros;
use appliance_store::EntityKind;

/// Which entity an ACL belongs to.
pub(crate) struct Entity<'a> {
    pub(crate) kind: EntityKind,
    pub(crate) id: &'a str,
    /// The entity's href.
    pub(crate) reference: String,
    pub(crate) target: policy::Target,
}

const SCHEMA: &str = "ACL";

/// A `read` entry as sent: project access and users, each only if given.
struct ReadEntry {
    project_access: Option<bool>,
    users: Option<Vec<String>>,
}

/// The `read` entry of a body: `None` when absent or falsy (`null`, `{}`).
fn read_entry(body: &Map<String, Value>) -> Result<Option<ReadEntry>, ApiError> {
    if let Some(extra) = body.keys().find(|k| *k != "read") {
        return Err(ApiError::schema(
            SCHEMA,
            &format!("Additional properties are not allowed ('{extra}' was unexpected)"),
            None,
        ));
    }
    let read = match body.get("read") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'object'", repr(other)),
                Some("read"),
            ));
        }
    };
    if let Some(extra) = read.keys().find(|k| *k != "users" && *k != "project-access") {
        return Err(ApiError::schema(
            SCHEMA,
            &format!("Additional properties are not allowed ('{extra}' was unexpected)"),
            Some("read"),
        ));
    }
    let project_access = match read.get("project-access") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'boolean'", repr(other)),
                Some("read"),
            ));
        }
    };
    let users = match read.get("users") {
        None => None,
        Some(Value::Array(items)) => {
            let mut users = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(u) if u.chars().count() <= 255 => users.push(u.clone()),
                    other => {
                        return Err(ApiError::schema(
                            SCHEMA,
                            &format!("{} is not of type 'string'", repr(other)),
                            Some("read"),
                        ));
                    }
                }
            }
            Some(users)
        }
        Some(other) => {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'array'", repr(other)),
                Some("read"),
            ));
        }
    };
    Ok(Some(ReadEntry { project_access, users }))
}

/// Handles the ACL resource of `entity`.
pub(crate) async fn acl(call: &Call<'_>, entity: Entity<'_>) -> Outcome {
    let prefix = match entity.kind {
        EntityKind::Secret => "Secret",
        EntityKind::Container => "Container",
    };
    let rule = |action: &str| format!("{}_acls:{action}", entity.kind.name());
    let store = &call.app.store;
    let acl_ref = json!({"acl_ref": format!("{}/acl", entity.reference)});
    match *call.method {
        Method::GET => {
            let op = format!("{prefix}ACL(s) retrieval");
            call.authorize(&rule("get"), &entity.target, &op)?;
            let body =
                match store.acl(entity.kind, entity.id).await.map_err(|e| store_error(&op, &e))? {
                    None => json!({"read": {"project-access": true}}),
                    Some(a) => json!({"read": {
                        "project-access": a.project_access,
                        "users": a.users,
                        "created": format_micros(a.created),
                        "updated": format_micros(a.updated),
                    }}),
                };
            super::json(StatusCode::OK, body)
        }
        Method::PUT | Method::PATCH => {
            let op = format!("{prefix}ACL(s) Update");
            call.authorize(&rule("put_patch"), &entity.target, &op)?;
            call.require_json()?;
            if call.body_too_large {
                return Err(ApiError::too_large(&op));
            }
            let body = parse_json(call.body, SCHEMA)?;
            let entry = read_entry(&body)?;
            let existing =
                store.acl(entity.kind, entity.id).await.map_err(|e| store_error(&op, &e))?;
            let new = if *call.method == Method::PUT {
                // Replace: omitted fields take their defaults; no (or a falsy) entry deletes.
                entry.map(|e| (e.project_access.unwrap_or(true), e.users.unwrap_or_default()))
            } else {
                // Merge into what is stored; a falsy entry changes nothing.
                match (entry, existing) {
                    (None, existing) => existing.map(|a| (a.project_access, a.users)),
                    (Some(e), Some(a)) => Some((
                        e.project_access.unwrap_or(a.project_access),
                        e.users.unwrap_or(a.users),
                    )),
                    (Some(e), None) => {
                        Some((e.project_access.unwrap_or(true), e.users.unwrap_or_default()))
                    }
                }
            };
            store
                .set_acl(entity.kind, entity.id, new.as_ref().map(|(a, u)| (*a, u.as_slice())))
                .await
                .map_err(|e| store_error(&op, &e))?;
            super::json(StatusCode::OK, acl_ref)
        }
        Method::DELETE => {
            let op = format!("{prefix}ACL(s) deletion");
            call.authorize(&rule("delete"), &entity.target, &op)?;
            store.set_acl(entity.kind, entity.id, None).await.map_err(|e| store_error(&op, &e))?;
            // Barbican renders `None`: a 200 whose body is `null`.
            Ok((Reply::Json(StatusCode::OK, Value::Null), Vec::new()))
        }
        _ => Err(ApiError::method_not_allowed("GET, PUT, PATCH, DELETE")),
    }
}
