//! `/v1/secret-stores`: the secret-store backends. There is one, the HSM behind the proxies;
//! the routes answer as Barbican's multiple-backend API does with one store configured, or as
//! its single-store default does (404) when `[secretstore]` says so.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, Call, Outcome, Reply, Template};
use crate::service::secretstores::{NOT_ENABLED, SecretStore};
use crate::timefmt::format_micros;

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

/// `/v1/secret-stores[/...]`.
///
/// `template` is one of the secret-store templates; `id` the store's, where it has one.
pub(crate) async fn route(call: &Call<'_>, template: Template, id: &str) -> Outcome {
    let app = call.app;
    let caller = call.identity();
    // With multiple stores not enabled Barbican answers 404 whatever the method, except on
    // the list; the services give that 404, after the policy check where Barbican makes one.
    let enabled = app.settings.secret_stores;
    let get = || {
        if *call.method != Method::GET { Err(ApiError::method_not_allowed("GET")) } else { Ok(()) }
    };
    let show = |s: &SecretStore| super::json(StatusCode::OK, representation(call, s));
    match template {
        Template::SecretStores => {
            const OP: &str = "List available secret stores";
            get()?;
            let stores = app.secret_stores(caller).map_err(|e| ApiError::service(OP, e))?;
            let stores: Vec<Value> = stores.iter().map(|s| representation(call, s)).collect();
            super::json(StatusCode::OK, json!({"secret_stores": stores}))
        }
        Template::GlobalDefaultStore => {
            const OP: &str = "Retrieve global default secret store";
            if enabled {
                get()?;
            }
            show(app.global_default_store(caller).map_err(|e| ApiError::service(OP, e))?)
        }
        Template::PreferredStore => {
            const OP: &str = "Retrieve project preferred store";
            if enabled {
                get()?;
            }
            show(app.preferred_store(caller).await.map_err(|e| ApiError::service(OP, e))?)
        }
        Template::SecretStore => {
            const OP: &str = "Secret store retrieval";
            if enabled {
                get()?;
            }
            show(app.secret_store(caller, id).map_err(|e| ApiError::service(OP, e))?)
        }
        Template::SecretStorePreferred => match *call.method {
            Method::POST => {
                const OP: &str = "Setting preferred secret store";
                app.set_preferred_store(caller, id).await.map_err(|e| ApiError::service(OP, e))?;
                Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
            }
            Method::DELETE => {
                const OP: &str = "Removing preferred secret store";
                app.remove_preferred_store(caller).await.map_err(|e| ApiError::service(OP, e))?;
                Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
            }
            _ if !enabled => Err(ApiError::not_found(NOT_ENABLED)),
            _ => Err(ApiError::method_not_allowed("POST, DELETE")),
        },
        _ if !enabled => Err(ApiError::not_found(NOT_ENABLED)),
        _ => Err(ApiError::method_not_allowed("GET")),
    }
}
