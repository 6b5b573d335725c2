//! `/v1/secrets/{id}/consumers`: services that declare they use a secret.

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::body::{Kind, check_field, string};
use super::secrets::{paged, paging, representation_of};
use super::{ApiError, Call, Outcome, Reply, parse_json};
use crate::service::consumers::{Change, Triple};
use crate::service::error::ServiceError;
use crate::timefmt::format_micros;
use appliance_store::{SecretConsumerRow, SecretRow};

const SCHEMA: &str = "Secret Consumer";

/// The `{service, resource_type, resource_id}` body, checked.
fn triple(call: &Call<'_>, operation: &str) -> Result<Triple, ApiError> {
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
    Ok(Triple {
        service: get("service"),
        resource_type: get("resource_type"),
        resource_id: get("resource_id"),
    })
}

/// `GET|POST|DELETE /v1/secrets/{id}/consumers`.
pub(crate) async fn collection(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    let (app, caller) = (call.app, call.identity());
    match *call.method {
        Method::GET => {
            const OP: &str = "SecretConsumers(s) retrieval";
            let (offset, limit) = paging(call);
            let (rows, total) = app
                .secret_consumers(secret, (offset, limit), caller)
                .await
                .map_err(|e| ApiError::service(OP, e))?;
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
            let failed = |e| ApiError::service(OP, e);
            app.authorize_secret_consumers(secret, caller, Change::Add).await.map_err(failed)?;
            let consumer = triple(call, OP)?;
            app.register_consumer(secret, consumer, caller).await.map_err(failed)?;
            let body = representation_of(call, secret, true).await?;
            // Barbican answers with this (non-existent) location; clients ignore it.
            let location = format!("{}/v1/consumers/{}/consumers", call.base(), secret.id);
            Ok((Reply::Json(StatusCode::OK, body), vec![(LOCATION, location)]))
        }
        Method::DELETE => {
            const OP: &str = "SecretConsumer deletion";
            app.authorize_secret_consumers(secret, caller, Change::Remove)
                .await
                .map_err(|e| ApiError::service(OP, e))?;
            let consumer = triple(call, OP)?;
            app.remove_consumer(secret, &consumer, caller).await.map_err(|e| match e {
                // The policy allowed the removal: this is the consumer's own rule.
                ServiceError::Forbidden => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Not Allowed. Sorry, only the creator of a consumer can delete it.",
                ),
                e => ApiError::service(OP, e),
            })?;
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
    match call.app.consumer_by_id(call.identity()) {
        Ok(none) => match none {},
        Err(e) => Err(ApiError::service(operation, e)),
    }
}
