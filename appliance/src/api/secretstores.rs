//! `/v1/secret-stores`: the secret-store backends. There is one, the HSM behind the proxies;
//! the routes answer as Barbican's multiple-backend API does with one store configured, or as
//! its single-store default does (404) when `[secretstore]` says so.

use hyper::{Method, StatusCode};
use policy::Target;
use serde_json::{Value, json};

use super::secrets::store_error;
use super::{ApiError, Call, Outcome, Reply, project_target};
use crate::timefmt::format_micros;

/// A backend the appliance can keep secrets in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SecretStore {
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) store_plugin: &'static str,
    pub(crate) crypto_plugin: &'static str,
    pub(crate) global_default: bool,
}

/// The stores, the global default first. New backends are added here.
pub(crate) const STORES: &[SecretStore] = &[SecretStore {
    id: "4f1c7d5e-8a2b-4c3d-9e6f-0a1b2c3d4e5f",
    name: "HSM (PKCS#11 through hsm-proxy)",
    store_plugin: "store_crypto",
    crypto_plugin: "hsm_proxy",
    global_default: true,
}];

fn representation(call: &Call<'_>, s: &SecretStore) -> Value {
    let started = format_micros(call.app.settings.started);
    json!({
        "secret_store_ref": format!("{}/v1/secret-stores/{}", call.base(), s.id),
        "name": s.name,
        "secret_store_plugin": s.store_plugin,
        "crypto_plugin": s.crypto_plugin,
        "global_default": s.global_default,
        "status": "ACTIVE",
        "created": started,
        "updated": started,
    })
}

/// Barbican's answer to every secret-store route when multiple stores are disabled.
const NOT_ENABLED: &str =
    "Not Found. Multiple backends support is not enabled in service configuration.";

/// The routes with multiple stores disabled, in Barbican's order: the list, the global default
/// and the preferred store are authorised before their 404 (the last two whatever the method);
/// a store by id is 404 before any policy check.
fn single_store(call: &Call<'_>, rest: &[&str], target: &Target) -> Outcome {
    let (action, operation) = match rest {
        [] if *call.method != Method::GET => return Err(ApiError::method_not_allowed("GET")),
        [] => ("secretstores:get", "List available secret stores"),
        ["global-default"] => {
            ("secretstores:get_global_default", "Retrieve global default secret store")
        }
        ["preferred"] => ("secretstores:get_preferred", "Retrieve project preferred store"),
        _ => return Err(ApiError::not_found(NOT_ENABLED)),
    };
    call.authorize(action, target, operation)?;
    Err(ApiError::not_found(NOT_ENABLED))
}

/// `/v1/secret-stores[/...]`.
pub(crate) async fn route(call: &Call<'_>, rest: &[&str]) -> Outcome {
    let target = project_target(call);
    if !call.app.settings.secret_stores {
        return single_store(call, rest, &target);
    }
    let store = &call.app.store;
    let get = |call: &Call<'_>| -> Result<(), ApiError> {
        if *call.method != Method::GET { Err(ApiError::method_not_allowed("GET")) } else { Ok(()) }
    };
    match rest {
        [] => {
            get(call)?;
            call.authorize("secretstores:get", &target, "List available secret stores")?;
            let stores: Vec<Value> = STORES.iter().map(|s| representation(call, s)).collect();
            super::json(StatusCode::OK, json!({"secret_stores": stores}))
        }
        ["global-default"] => {
            get(call)?;
            call.authorize(
                "secretstores:get_global_default",
                &target,
                "Retrieve global default secret store",
            )?;
            let default = STORES.iter().find(|s| s.global_default).unwrap_or(&STORES[0]);
            super::json(StatusCode::OK, representation(call, default))
        }
        ["preferred"] => {
            const OP: &str = "Retrieve project preferred store";
            get(call)?;
            call.authorize("secretstores:get_preferred", &target, OP)?;
            let preferred = store
                .preferred_store(&call.identity().project_id)
                .await
                .map_err(|e| store_error(OP, &e))?;
            let found = preferred.and_then(|id| STORES.iter().find(|s| s.id == id));
            match found {
                Some(s) => super::json(StatusCode::OK, representation(call, s)),
                None => Err(ApiError::not_found(
                    "Not Found. No preferred secret store defined for this project.",
                )),
            }
        }
        [id] => {
            get(call)?;
            call.authorize("secretstore:get", &target, "Secret store retrieval")?;
            match STORES.iter().find(|s| s.id == *id) {
                Some(s) => super::json(StatusCode::OK, representation(call, s)),
                None => Err(ApiError::not_found("Not Found. Secret store not found.")),
            }
        }
        [id, "preferred"] => match *call.method {
            Method::POST => {
                const OP: &str = "Setting preferred secret store";
                call.authorize("secretstore_preferred:post", &target, OP)?;
                let Some(s) = STORES.iter().find(|s| s.id == *id) else {
                    return Err(ApiError::not_found("Not Found. Secret store not found."));
                };
                store
                    .set_preferred_store(&call.identity().project_id, s.id)
                    .await
                    .map_err(|e| store_error(OP, &e))?;
                Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
            }
            Method::DELETE => {
                const OP: &str = "Removing preferred secret store";
                call.authorize("secretstore_preferred:delete", &target, OP)?;
                if !store
                    .delete_preferred_store(&call.identity().project_id)
                    .await
                    .map_err(|e| store_error(OP, &e))?
                {
                    return Err(ApiError::not_found(
                        "Not Found. No preferred secret store defined for this project.",
                    ));
                }
                Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
            }
            _ => Err(ApiError::method_not_allowed("POST, DELETE")),
        },
        _ => Err(ApiError::method_not_allowed("GET")),
    }
}
