//! `/v1/secrets/{id}/consumers`: services that declare they use a secret.

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::body::{Kind, check_field, string};
use super::secrets::{paged, paging, representation_of, store_error};
use super::{ApiError, Call, Outcome, Reply, parse_json, secret_target};
use crate::timefmt::format_micros;
use appliance_store::{Counted, SecretConsumerRow, SecretRow};

const SCHEMA: &str = "Secret Consumer";

/// The `{service, resource_type, resource_id}` body, checked.
fn triple(call: &Call<'_>, operation: &str) -> Result<(String, String, String), ApiError> {
    call.require_json()?;
    if call.body_too_large {
        return Err(ApiError::too_large(operation));
    }
    let body = parse_json(call.body, SCHEMA)?;
    for field in ["service", "resource_type", "resource_id"] {
        if !body.contains_key(field) {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("'{field}' is a required property"),
                None,
            ));
        }
    }
    check_field(SCHEMA, &body, "service", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "resource_type", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "resource_id", Kind::String, None, None, None)?;
    let get = |f: &str| string(&body, f).unwrap_or_default();
    for field in ["service", "resource_type", "resource_id"] {
        if get(field).is_empty() {
            return Err(ApiError::schema(SCHEMA, "'' is too short", Some(field)));
        }
    }
    Ok((get("service"), get("resource_type"), get("resource_id")))
}

/// `GET|POST|DELETE /v1/secrets/{id}/consumers`.
pub(crate) async fn collection(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    let target = secret_target(call, secret).await?;
    let store = &call.app.store;
    match *call.method {
        Method::GET => {
            const OP: &str = "SecretConsumers(s) retrieval";
            call.authorize("secret_consumers:get", &target, OP)?;
            let (offset, limit) = paging(call);
            let (rows, total) = store
                .secret_consumers(&secret.id, offset, limit)
                .await
                .map_err(|e| store_error(OP, &e))?;
            let items: Vec<Value> = rows.iter().map(consumer_json).collect();
            paged(
                call,
                "consumers",
                &format!("secrets/{}/consumers", secret.id),
                items,
                (offset, limit),
                total,
            )
        }
        Method::POST => {
            const OP: &str = "SecretConsumer creation";
            call.authorize("secret_consumers:post", &target, OP)?;
            let (service, resource_type, resource_id) = triple(call, OP)?;
            let exists = store
                .secret_consumer(&secret.id, &service, &resource_type, &resource_id)
                .await
                .map_err(|e| store_error(OP, &e))?;
            if exists.is_none() {
                super::quotas::enforce(call, Counted::SecretConsumers, OP).await?;
            }
            let row = SecretConsumerRow {
                project_id: call.identity().project_id.clone(),
                service,
                resource_type,
                resource_id,
                created: 0,
                updated: 0,
            };
            store.add_secret_consumer(&secret.id, &row).await.map_err(|e| store_error(OP, &e))?;
            let body = representation_of(call, secret, true).await?;
            // Barbican answers with this (non-existent) location; clients ignore it.
            let location = format!("{}/v1/consumers/{}/consumers", call.base(), secret.id);
            Ok((Reply::Json(StatusCode::OK, body), vec![(LOCATION, location)]))
        }
        Method::DELETE => {
            const OP: &str = "SecretConsumer deletion";
            call.authorize("secret_consumers:delete", &target, OP)?;
            let (service, resource_type, resource_id) = triple(call, OP)?;
            let found = store
                .secret_consumer(&secret.id, &service, &resource_type, &resource_id)
                .await
                .map_err(|e| store_error(OP, &e))?
                .ok_or_else(|| ApiError::not_found("Consumer not found."))?;
            let caller = &call.identity().project_id;
            if *caller != found.project_id && *caller != secret.project_id {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Not Allowed. Sorry, only the creator of a consumer can delete it.",
                ));
            }
            store
                .remove_secret_consumer(&secret.id, &service, &resource_type, &resource_id)
                .await
                .map_err(|e| store_error(OP, &e))?;
            super::json(StatusCode::OK, representation_of(call, secret, true).await?)
        }
        _ => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
    }
}

fn consumer_json(c: &SecretConsumerRow) -> Value {
    json!({
        "service": c.service,
        "resource_type": c.resource_type,
        "resource_id": c.resource_id,
        "created": format_micros(c.created),
        "updated": format_micros(c.updated),
        "status": "ACTIVE",
    })
}

/// `GET /v1/{secrets|containers}/{id}/consumers/{consumer_id}`: consumer ids are never shown,
/// so this can only find nothing (after the same checks as Barbican).
pub(crate) async fn single(call: &Call<'_>, consumer_id: &str, operation: &str) -> Outcome {
    if *call.method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    if !super::is_uuid4(consumer_id) {
        return Err(ApiError::not_found("Not Found. Provided consumer id is invalid."));
    }
    call.authorize("consumer:get", &policy::Target::new(), operation)?;
    Err(ApiError::not_found("Consumer not found."))
}
