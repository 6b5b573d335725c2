//! `/v1/transport_keys`: Barbican's legacy transport keys, which only a Dogtag backend has.
//! With the HSM backend there are none: lists are empty, lookups find nothing, and creation
//! and deletion are system-scope operations that project credentials are refused.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::secrets::paging;
use super::{ApiError, Call, Outcome, is_uuid4, project_target};

/// `/v1/transport_keys[/{id}]`.
pub(crate) async fn route(call: &Call<'_>, id: Option<&str>) -> Outcome {
    let target = project_target(call);
    match (id, call.method.clone()) {
        (None, Method::GET) => {
            call.authorize("transport_keys:get", &target, "Transport Key(s) retrieval")?;
            let _ = paging(call);
            super::json(StatusCode::OK, json!({"transport_keys": [], "total": 0}))
        }
        (None, Method::POST) => {
            call.authorize("transport_keys:post", &target, "Transport Key Creation")?;
            Err(ApiError::bad_request(
                "Transport Key Creation issue seen - no backend provides transport keys.",
            ))
        }
        (None, _) => Err(ApiError::method_not_allowed("GET, POST")),
        (Some(id), method) => {
            if !is_uuid4(id) {
                return Err(ApiError::not_found(
                    "Not Found. Provided transport key id is invalid.",
                ));
            }
            match method {
                Method::GET => {
                    call.authorize("transport_key:get", &target, "Transport Key retrieval")?;
                    Err(ApiError::not_found("Not Found. Transport Key not found."))
                }
                Method::DELETE => {
                    call.authorize("transport_key:delete", &target, "Transport Key deletion")?;
                    Err(ApiError::not_found("Not Found. Transport Key not found."))
                }
                _ => Err(ApiError::method_not_allowed("GET, DELETE")),
            }
        }
    }
}
