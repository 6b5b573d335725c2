//! `/v1/containers`: named groups of secret references (generic, rsa, certificate), their
//! secrets and consumers.

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::body::{Kind, check_field, repr, string};
use super::secrets::{paged, paging};
use super::{ApiError, Call, Outcome, Reply, Template, is_uuid4, parse_json};
use crate::service::consumers::Change;
use crate::service::containers::{NewContainer, container_entity};
use crate::service::error::ServiceError;
use crate::timefmt::format_micros;
use appliance_store::{ContainerRow, ContainerSecret};

const TYPES: &[&str] = &["generic", "rsa", "certificate"];

fn container_ref(call: &Call<'_>, id: &str) -> String {
    format!("{}/v1/containers/{id}", call.base())
}

/// The container of `/v1/containers/{id}...`: 404 for a malformed id or a missing container.
pub(crate) async fn lookup(call: &Call<'_>, id: &str) -> Result<ContainerRow, ApiError> {
    if !is_uuid4(id) {
        return Err(ApiError::not_found("Not Found. Provided container id is invalid."));
    }
    call.app.container(id).await.map_err(|e| ApiError::service("Container retrieval", e))
}

/// A container as the API shows it.
pub(crate) async fn representation(call: &Call<'_>, c: &ContainerRow) -> Result<Value, ApiError> {
    let consumers = call
        .app
        .all_container_consumers(c)
        .await
        .map_err(|e| ApiError::service("Container retrieval", e))?;
    Ok(json!({
        "container_ref": container_ref(call, &c.id),
        "name": c.name,
        "type": c.kind,
        "status": "ACTIVE",
        "creator_id": c.creator_id,
        "created": format_micros(c.created),
        "updated": format_micros(c.updated),
        "secret_refs": c.secrets.iter().map(|s| json!({
            "name": s.name,
            "secret_ref": format!("{}/v1/secrets/{}", call.base(), s.secret_id),
        })).collect::<Vec<_>>(),
        "consumers": consumers.iter().map(|k| json!({"name": k.name, "URL": k.url})).collect::<Vec<_>>(),
    }))
}

/// The secret id at the end of a reference (a trailing `/` tolerated).
fn last_segment(reference: &str) -> &str {
    reference.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// `GET|POST /v1/containers`.
pub(crate) async fn collection(call: &Call<'_>) -> Outcome {
    match *call.method {
        Method::GET => list(call).await,
        Method::POST => create(call).await,
        _ => Err(ApiError::method_not_allowed("GET, POST")),
    }
}

async fn create(call: &Call<'_>) -> Outcome {
    const OP: &str = "Container creation";
    const SCHEMA: &str = "Container";
    call.app.authorize_container_create(call.identity()).map_err(|e| ApiError::service(OP, e))?;
    call.require_json()?;
    if call.body_too_large {
        return Err(ApiError::too_large(OP));
    }
    let body = parse_json(call.body, SCHEMA)?;
    if !body.contains_key("type") {
        return Err(ApiError::schema(SCHEMA, "'type' is a required property", None));
    }
    check_field(SCHEMA, &body, "name", Kind::StringOrNull, Some(255), None, None)?;
    check_field(SCHEMA, &body, "type", Kind::String, None, None, Some(TYPES))?;
    let refs = match body.get("secret_refs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'array'", repr(other)),
                Some("secret_refs"),
            ));
        }
    };
    let mut entries: Vec<(Option<String>, String)> = Vec::with_capacity(refs.len());
    for item in &refs {
        let Value::Object(entry) = item else {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'object'", repr(item)),
                Some("secret_refs"),
            ));
        };
        if !entry.contains_key("secret_ref") {
            return Err(ApiError::schema(
                SCHEMA,
                "'secret_ref' is a required property",
                Some("secret_refs"),
            ));
        }
        check_field(SCHEMA, entry, "secret_ref", Kind::String, None, None, None)?;
        check_field(SCHEMA, entry, "name", Kind::StringOrNull, Some(255), None, None)?;
        let reference = string(entry, "secret_ref").unwrap_or_default();
        if reference.is_empty() {
            return Err(ApiError::schema(SCHEMA, "'' is too short", Some("secret_refs")));
        }
        entries.push((string(entry, "name"), reference));
    }
    let kind = string(&body, "type").unwrap_or_default();
    let names: Vec<String> = entries.iter().map(|(n, _)| n.clone().unwrap_or_default()).collect();
    let mut seen = std::collections::BTreeSet::new();
    if names.iter().any(|n| !seen.insert(n.clone())) {
        return Err(ApiError::bad_request("Duplicate reference names are not allowed"));
    }
    let mut ids = std::collections::BTreeSet::new();
    if entries.iter().any(|(_, r)| !ids.insert(last_segment(r).to_owned())) {
        return Err(ApiError::bad_request("Duplicate secret ids are not allowed"));
    }
    if entries.iter().any(|(_, r)| !r.starts_with(&format!("{}/", call.base()))) {
        return Err(ApiError::bad_request("Provided field value is not supported"));
    }
    let has = |n: &str| names.iter().any(|x| x == n);
    match kind.as_str() {
        "rsa" => {
            if names.iter().any(|n| {
                !["public_key", "private_key", "private_key_passphrase"].contains(&n.as_str())
            }) {
                return Err(ApiError::bad_request(
                    "only 'private_key', 'public_key' and 'private_key_passphrase' reference names are allowed for RSA type",
                ));
            }
            if !has("public_key") || !has("private_key") {
                return Err(ApiError::bad_request(
                    "The minimum required reference names are 'public_key' and'private_key' for RSA type",
                ));
            }
        }
        "certificate" => {
            let allowed = ["certificate", "private_key", "private_key_passphrase", "intermediates"];
            if names.iter().any(|n| !allowed.contains(&n.as_str())) {
                return Err(ApiError::bad_request(
                    "only 'private_key', 'certificate' , 'private_key_passphrase', or 'intermediates' reference names are allowed for Certificate type",
                ));
            }
            if !has("certificate") {
                return Err(ApiError::bad_request(
                    "The minimum required reference name is 'certificate' for Certificate type",
                ));
            }
        }
        _ => {}
    }
    let secrets = entries
        .into_iter()
        .map(|(name, reference)| ContainerSecret {
            name,
            secret_id: last_segment(&reference).to_owned(),
        })
        .collect();
    let new = NewContainer { name: string(&body, "name"), kind, secrets };
    let row = call
        .app
        .create_container(call.identity(), new)
        .await
        .map_err(|e| ApiError::service(OP, e))?;
    let reference = container_ref(call, &row.id);
    Ok((
        Reply::Json(StatusCode::CREATED, json!({"container_ref": reference})),
        vec![(LOCATION, reference)],
    ))
}

async fn list(call: &Call<'_>) -> Outcome {
    const OP: &str = "Containers(s) retrieval";
    let page = paging(call);
    let (rows, total) = call
        .app
        .list_containers(call.identity(), call.param("name"), call.param("type"), page)
        .await
        .map_err(|e| ApiError::service(OP, e))?;
    let mut items = Vec::with_capacity(rows.len());
    for c in &rows {
        items.push(representation(call, c).await?);
    }
    paged(call, "containers", "containers", items, page, total)
}

/// `/v1/containers/{id}` and its sub-resources, once the container is found: `template` is one
/// of the `Container*` templates or `UnderContainer`.
pub(crate) async fn item(
    call: &Call<'_>,
    c: &ContainerRow,
    template: Template,
    consumer_id: &str,
) -> Outcome {
    let caller = call.identity();
    match template {
        Template::Container => match *call.method {
            Method::GET => {
                const OP: &str = "Container retrieval";
                call.app
                    .authorize_container_read(c, caller)
                    .await
                    .map_err(|e| ApiError::service(OP, e))?;
                super::json(StatusCode::OK, representation(call, c).await?)
            }
            Method::DELETE => {
                const OP: &str = "Container deletion";
                call.app.delete_container(c, caller).await.map_err(|e| ApiError::service(OP, e))?;
                Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
            }
            _ => Err(ApiError::method_not_allowed("GET, DELETE")),
        },
        Template::ContainerSecrets => container_secrets(call, c).await,
        Template::ContainerConsumers => consumers(call, c).await,
        Template::ContainerConsumer => {
            super::consumers::single(call, consumer_id, "ContainerConsumer retrieval").await
        }
        Template::ContainerAcl => {
            let entity = super::acls::Entity {
                of: container_entity(c),
                reference: container_ref(call, &c.id),
            };
            super::acls::acl(call, entity).await
        }
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

async fn container_secrets(call: &Call<'_>, c: &ContainerRow) -> Outcome {
    const SCHEMA: &str = "ContainerSecret";
    let parse = |call: &Call<'_>| -> Result<(Option<String>, String), ApiError> {
        let body = parse_json(call.body, SCHEMA)?;
        if !body.contains_key("secret_ref") {
            return Err(ApiError::schema(SCHEMA, "'secret_ref' is a required property", None));
        }
        check_field(SCHEMA, &body, "secret_ref", Kind::String, None, None, None)?;
        check_field(SCHEMA, &body, "name", Kind::StringOrNull, Some(255), None, None)?;
        Ok((string(&body, "name"), string(&body, "secret_ref").unwrap_or_default()))
    };
    let app = call.app;
    let caller = call.identity();
    match *call.method {
        Method::POST => {
            const OP: &str = "Container Secret creation";
            let refused = |e| ApiError::service(OP, e);
            app.authorize_container_secret_add(c, caller).await.map_err(refused)?;
            call.require_json()?;
            let (name, reference) = parse(call)?;
            let entry = ContainerSecret { name, secret_id: last_segment(&reference).to_owned() };
            app.add_container_secret(c, caller, entry).await.map_err(refused)?;
            let reference = container_ref(call, &c.id);
            Ok((
                Reply::Json(StatusCode::CREATED, json!({"container_ref": reference})),
                vec![(LOCATION, reference)],
            ))
        }
        Method::DELETE => {
            const OP: &str = "Container Secret deletion";
            let refused = |e| ApiError::service(OP, e);
            app.authorize_container_secret_remove(c, caller).await.map_err(refused)?;
            let (name, reference) = parse(call)?;
            let entry = ContainerSecret { name, secret_id: last_segment(&reference).to_owned() };
            app.remove_container_secret(c, entry).await.map_err(|e| match e {
                ServiceError::UnknownSecret { name } => ApiError::not_found(&format!(
                    "Secret '{}' with reference '{reference}' doesn't exist.",
                    name.as_deref().unwrap_or("None")
                )),
                e => refused(e),
            })?;
            Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
        }
        _ => Err(ApiError::method_not_allowed("POST, DELETE")),
    }
}

async fn consumers(call: &Call<'_>, c: &ContainerRow) -> Outcome {
    const SCHEMA: &str = "Consumer";
    let parse = |call: &Call<'_>, op: &str| -> Result<(String, String), ApiError> {
        call.require_json()?;
        if call.body_too_large {
            return Err(ApiError::too_large(op));
        }
        let body = parse_json(call.body, SCHEMA)?;
        for field in ["name", "URL"] {
            if !body.contains_key(field) {
                return Err(ApiError::schema(
                    SCHEMA,
                    &format!("'{field}' is a required property"),
                    None,
                ));
            }
        }
        check_field(SCHEMA, &body, "name", Kind::String, Some(36), None, None)?;
        check_field(SCHEMA, &body, "URL", Kind::String, Some(255), None, None)?;
        let (name, url) =
            (string(&body, "name").unwrap_or_default(), string(&body, "URL").unwrap_or_default());
        for (field, value) in [("name", &name), ("URL", &url)] {
            if value.is_empty() {
                return Err(ApiError::schema(SCHEMA, "'' is too short", Some(field)));
            }
        }
        Ok((name, url))
    };
    let app = call.app;
    let caller = call.identity();
    match *call.method {
        Method::GET => {
            const OP: &str = "ContainerConsumers(s) retrieval";
            let page = paging(call);
            let (rows, total) = app
                .list_container_consumers(c, caller, page)
                .await
                .map_err(|e| ApiError::service(OP, e))?;
            let items: Vec<Value> = rows
                .iter()
                .map(|k| json!({"name": k.name, "URL": k.url, "created": format_micros(k.created), "updated": format_micros(k.updated), "status": "ACTIVE"}))
                .collect();
            paged(call, "consumers", &format!("containers/{}/consumers", c.id), items, page, total)
        }
        Method::POST => {
            const OP: &str = "ContainerConsumer creation";
            let refused = |e| ApiError::service(OP, e);
            app.authorize_container_consumers(c, caller, Change::Add).await.map_err(refused)?;
            let (name, url) = parse(call, OP)?;
            app.add_container_consumer(c, caller, &name, &url).await.map_err(refused)?;
            let location = format!("{}/v1/consumers/{}/consumers", call.base(), c.id);
            Ok((
                Reply::Json(StatusCode::OK, representation(call, c).await?),
                vec![(LOCATION, location)],
            ))
        }
        Method::DELETE => {
            const OP: &str = "ContainerConsumer deletion";
            app.authorize_container_consumers(c, caller, Change::Remove)
                .await
                .map_err(|e| ApiError::service(OP, e))?;
            let (name, url) = parse(call, OP)?;
            app.remove_container_consumer(c, caller, &name, &url).await.map_err(|e| match e {
                // Past the policy check, only a project that neither registered the consumer
                // nor owns the container is refused.
                ServiceError::Forbidden => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Not Allowed. Sorry, only the creator of a consumer can delete it.",
                ),
                e => ApiError::service(OP, e),
            })?;
            super::json(StatusCode::OK, representation(call, c).await?)
        }
        _ => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
    }
}
