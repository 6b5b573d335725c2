//! `/v1/quotas` and `/v1/project-quotas`: per-project limits on what may be created, and their
//! enforcement.

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::body::repr;
use super::secrets::{paged, paging};
use super::{ApiError, Call, Outcome, Reply, parse_json};
use crate::service::quotas::Quotas;
use appliance_store::{QuotaResource, QuotaRow};

fn values_json(values: &Quotas) -> Value {
    let mut map = Map::new();
    for (resource, value) in values.iter() {
        map.insert(resource.name().into(), value.map_or(Value::Null, |v| json!(v)));
    }
    Value::Object(map)
}

/// `GET /v1/quotas`: the caller's effective quotas.
pub(crate) async fn effective(call: &Call<'_>) -> Outcome {
    const OP: &str = "Quotas";
    if *call.method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    let values =
        call.app.caller_quotas(call.identity()).await.map_err(|e| ApiError::service(OP, e))?;
    super::json(StatusCode::OK, json!({"quotas": values_json(&values)}))
}

/// `/v1/project-quotas[/{project_id}]`.
pub(crate) async fn project(call: &Call<'_>, project_id: Option<&str>) -> Outcome {
    const OP: &str = "Project Quotas";
    let app = call.app;
    let caller = call.identity();
    let refused = |e| ApiError::service(OP, e);
    match (project_id, call.method.clone()) {
        (None, Method::GET) => {
            let page = paging(call);
            let (rows, total) = app.list_project_quotas(caller, page).await.map_err(refused)?;
            let items: Vec<Value> = rows
                .iter()
                .map(|q: &QuotaRow| json!({"project_id": q.project_id, "project_quotas": values_json(&q.values)}))
                .collect();
            // Barbican's links name the collection `project_quotas` (the route has a dash).
            paged(call, "project_quotas", "project_quotas", items, page, total)
        }
        (None, _) => Err(ApiError::method_not_allowed("GET")),
        (Some(pid), Method::GET) => {
            let q = app.project_quotas(caller, pid).await.map_err(refused)?;
            super::json(StatusCode::OK, json!({"project_quotas": values_json(&q.values)}))
        }
        (Some(pid), Method::PUT) => {
            const SCHEMA: &str = "Project Quota";
            app.authorize_project_quotas_update(caller).map_err(refused)?;
            call.require_json()?;
            if call.body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::issue(
                    StatusCode::BAD_REQUEST,
                    OP,
                    "No data supplied to process.",
                ));
            }
            let body = parse_json(call.body, SCHEMA)?;
            if let Some(extra) = body.keys().find(|k| *k != "project_quotas") {
                return Err(ApiError::schema(
                    SCHEMA,
                    &format!("Additional properties are not allowed ('{extra}' was unexpected)"),
                    None,
                ));
            }
            let Some(inner) = body.get("project_quotas") else {
                return Err(ApiError::schema(
                    SCHEMA,
                    "'project_quotas' is a required property",
                    None,
                ));
            };
            let Value::Object(inner) = inner else {
                return Err(ApiError::schema(
                    SCHEMA,
                    &format!("{} is not of type 'object'", repr(inner)),
                    Some("project_quotas"),
                ));
            };
            let mut updates = Vec::new();
            for (key, value) in inner {
                let Some(resource) = QuotaResource::parse(key) else {
                    return Err(ApiError::schema(
                        SCHEMA,
                        &format!("Additional properties are not allowed ('{key}' was unexpected)"),
                        Some("project_quotas"),
                    ));
                };
                let Some(n) = value.as_i64() else {
                    return Err(ApiError::schema(
                        SCHEMA,
                        &format!("{} is not of type 'integer'", repr(value)),
                        Some("project_quotas"),
                    ));
                };
                updates.push((resource, n));
            }
            app.set_project_quotas(pid, &updates).await.map_err(refused)?;
            Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
        }
        (Some(pid), Method::DELETE) => {
            app.delete_project_quotas(caller, pid).await.map_err(refused)?;
            Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
        }
        (Some(_), _) => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
    }
}
