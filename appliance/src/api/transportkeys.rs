//! `/v1/transport_keys`: Barbican's legacy transport keys, which only a Dogtag backend has.
//! With the HSM backend there are none: lists are empty, lookups find nothing, and creation
//! and deletion are system-scope operations that project credentials are refused.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::secrets::paging;
use super::{ApiError, Call, Outcome, is_uuid4};
use crate::service::error::ServiceError;

/// `/v1/transport_keys[/{id}]`.
pub(crate) async fn route(call: &Call<'_>, id: Option<&str>) -> Outcome {
    let app = call.app;
    let caller = call.identity();
    match (id, call.method.clone()) {
        (None, Method::GET) => {
            const OP: &str = "Transport Key(s) retrieval";
            app.list_transport_keys(caller).map_err(|e| ApiError::service(OP, e))?;
            let _ = paging(call);
            super::json(StatusCode::OK, json!({"transport_keys": [], "total": 0}))
        }
        (None, Method::POST) => {
            const OP: &str = "Transport Key Creation";
            let Err(e) = app.create_transport_key(caller);
            Err(match e {
                ServiceError::Invalid(why) => ApiError::issue(StatusCode::BAD_REQUEST, OP, &why),
                e => ApiError::service(OP, e),
            })
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
                    const OP: &str = "Transport Key retrieval";
                    let Err(e) = app.transport_key(caller, id);
                    Err(ApiError::service(OP, e))
                }
                Method::DELETE => {
                    const OP: &str = "Transport Key deletion";
                    let Err(e) = app.delete_transport_key(caller, id);
                    Err(ApiError::service(OP, e))
                }
                _ => Err(ApiError::method_not_allowed("GET, DELETE")),
            }
        }
    }
}
