//! `/v1/secrets/{id}/acl` and `/v1/containers/{id}/acl`: the read ACL (users, project access).

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::body::repr;
use super::{ApiError, Call, Outcome, Reply, parse_json};
use crate::service::acls::{AclEntry, AclUpdate};
use crate::timefmt::format_micros;
use appliance_store::EntityKind;

/// Which entity an ACL belongs to.
pub(crate) struct Entity<'a> {
    /// The entity as policy rules see it.
    pub(crate) of: crate::service::Entity<'a>,
    /// The entity's href.
    pub(crate) reference: String,
}

const SCHEMA: &str = "ACL";

/// The `read` entry of a body: `None` when absent or falsy (`null`, `{}`).
fn read_entry(body: &Map<String, Value>) -> Result<Option<AclEntry>, ApiError> {
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
    Ok(Some(AclEntry { project_access, users }))
}

/// Handles the ACL resource of `entity`.
pub(crate) async fn acl(call: &Call<'_>, entity: Entity<'_>) -> Outcome {
    let prefix = match entity.of.kind {
        EntityKind::Secret => "Secret",
        EntityKind::Container => "Container",
    };
    let app = call.app;
    let caller = call.identity();
    match *call.method {
        Method::GET => {
            let op = format!("{prefix}ACL(s) retrieval");
            let body =
                match app.acl(&entity.of, caller).await.map_err(|e| ApiError::service(&op, e))? {
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
            let refused = |e| ApiError::service(&op, e);
            app.authorize_acl_update(&entity.of, caller).await.map_err(refused)?;
            call.require_json()?;
            if call.body_too_large {
                return Err(ApiError::too_large(&op));
            }
            let body = parse_json(call.body, SCHEMA)?;
            let entry = read_entry(&body)?;
            let update =
                if *call.method == Method::PUT { AclUpdate::Replace } else { AclUpdate::Merge };
            app.update_acl(&entity.of, update, entry).await.map_err(refused)?;
            super::json(StatusCode::OK, json!({"acl_ref": format!("{}/acl", entity.reference)}))
        }
        Method::DELETE => {
            let op = format!("{prefix}ACL(s) deletion");
            app.delete_acl(&entity.of, caller).await.map_err(|e| ApiError::service(&op, e))?;
            // Barbican renders `None`: a 200 whose body is `null`.
            Ok((Reply::Json(StatusCode::OK, Value::Null), Vec::new()))
        }
        _ => Err(ApiError::method_not_allowed("GET, PUT, PATCH, DELETE")),
    }
}
