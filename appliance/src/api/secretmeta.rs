//! `/v1/secrets/{id}/metadata[/{key}]`: a secret's user metadata.

use std::collections::BTreeMap;

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::body::{Kind, check_field, repr, string};
use super::{ApiError, Call, Outcome, Reply, parse_json};
use appliance_store::SecretRow;

fn key_is_url_safe(key: &str) -> bool {
    key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn metadata_ref(call: &Call<'_>, secret: &SecretRow) -> String {
    format!("{}/v1/secrets/{}/metadata", call.base(), secret.id)
}

/// `/metadata`: GET (all), PUT (replace all), POST (add one).
pub(crate) async fn collection(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    let (app, caller) = (call.app, call.identity());
    match *call.method {
        Method::GET => {
            const OP: &str = "Secret metadata retrieval";
            let entries =
                app.secret_metadata(secret, caller).await.map_err(|e| ApiError::service(OP, e))?;
            super::json(StatusCode::OK, json!({"metadata": entries}))
        }
        Method::PUT => {
            const OP: &str = "Secret metadata creation";
            let failed = |e| ApiError::service(OP, e);
            app.authorize_metadata_replacement(secret, caller).await.map_err(failed)?;
            call.require_json()?;
            if call.body_too_large {
                return Err(ApiError::too_large(OP));
            }
            let body = parse_json(call.body, "SecretMetadata")?;
            let Some(metadata) = body.get("metadata") else {
                return Err(ApiError::schema(
                    "SecretMetadata",
                    "'metadata' is a required property",
                    None,
                ));
            };
            let Value::Object(map) = metadata else {
                return Err(ApiError::schema(
                    "SecretMetadata",
                    &format!("{} is not of type 'object'", repr(metadata)),
                    Some("metadata"),
                ));
            };
            let mut entries = BTreeMap::new();
            for (key, value) in map {
                let Value::String(value) = value else {
                    return Err(ApiError::bad_request(
                        "Invalid Metadata. Keys and Values must be Strings.",
                    ));
                };
                if !key_is_url_safe(key) {
                    return Err(ApiError::bad_request("Invalid Key. Key must be URL safe."));
                }
                entries.insert(key.to_lowercase(), value.clone());
            }
            app.replace_metadata(secret, &entries).await.map_err(failed)?;
            super::json(StatusCode::CREATED, json!({"metadata_ref": metadata_ref(call, secret)}))
        }
        Method::POST => {
            const OP: &str = "Secret metadatum creation";
            let failed = |e| ApiError::service(OP, e);
            app.authorize_metadatum_addition(secret, caller).await.map_err(failed)?;
            call.require_json()?;
            let (key, value) = metadatum_body(call)?;
            app.add_metadatum(secret, &key, &value).await.map_err(failed)?;
            let location = format!("{}/{key}", metadata_ref(call, secret));
            Ok((
                Reply::Json(StatusCode::CREATED, json!({"key": key, "value": value})),
                vec![(LOCATION, location)],
            ))
        }
        _ => Err(ApiError::method_not_allowed("GET, PUT, POST")),
    }
}

/// The `{"key", "value"}` body of a metadatum, key lower-cased.
fn metadatum_body(call: &Call<'_>) -> Result<(String, String), ApiError> {
    const SCHEMA: &str = "SecretMetadatum";
    if call.body_too_large {
        return Err(ApiError::too_large("Secret metadatum creation"));
    }
    let body = parse_json(call.body, SCHEMA)?;
    for required in ["key", "value"] {
        if !body.contains_key(required) {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("'{required}' is a required property"),
                None,
            ));
        }
    }
    check_field(SCHEMA, &body, "key", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "value", Kind::String, Some(255), None, None)?;
    let extra: Vec<String> =
        body.keys().filter(|k| *k != "key" && *k != "value").map(|k| format!("'{k}'")).collect();
    if !extra.is_empty() {
        let verb = if extra.len() == 1 { "was" } else { "were" };
        return Err(ApiError::schema(
            SCHEMA,
            &format!(
                "Additional properties are not allowed ({} {verb} unexpected)",
                extra.join(", ")
            ),
            None,
        ));
    }
    let key = string(&body, "key").unwrap_or_default();
    if !key_is_url_safe(&key) {
        return Err(ApiError::bad_request("Invalid Key. Key must be URL safe."));
    }
    Ok((key.to_lowercase(), string(&body, "value").unwrap_or_default()))
}

/// `/metadata/{key}`: GET, PUT (update), DELETE.
pub(crate) async fn item(call: &Call<'_>, secret: &SecretRow, key: &str) -> Outcome {
    let (app, caller) = (call.app, call.identity());
    match *call.method {
        Method::GET => {
            const OP: &str = "Secret metadatum retrieval";
            let value =
                app.metadatum(secret, key, caller).await.map_err(|e| ApiError::service(OP, e))?;
            super::json(StatusCode::OK, json!({"key": key, "value": value}))
        }
        Method::PUT => {
            const OP: &str = "Secret metadatum update";
            let failed = |e| ApiError::service(OP, e);
            app.authorize_metadatum_update(secret, caller).await.map_err(failed)?;
            call.require_json()?;
            let (body_key, value) = metadatum_body(call)?;
            app.update_metadatum(secret, key, &body_key, &value).await.map_err(failed)?;
            super::json(StatusCode::OK, json!({"key": key, "value": value}))
        }
        Method::DELETE => {
            const OP: &str = "Secret metadatum removal";
            app.delete_metadatum(secret, key, caller)
                .await
                .map_err(|e| ApiError::service(OP, e))?;
            Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
        }
        _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
    }
}
