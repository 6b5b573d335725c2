//! Version discovery: `GET /` (multiple choices) and `GET /v1`.

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, Call, Outcome, Reply};

fn links(call: &Call<'_>) -> Value {
    json!([
        {"rel": "self", "href": format!("{}/v1/", call.base())},
        {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"}
    ])
}

/// The v1 entry as microversion 1.0 or 1.1+ shows it.
fn entry(call: &Call<'_>) -> Value {
    if call.minor == 0 {
        json!({
            "id": "v1",
            "status": "stable",
            "links": links(call),
            "media-types": [{
                "base": "application/json",
                "type": "application/vnd.openstack.key-manager-v1+json"
            }]
        })
    } else {
        json!({
            "id": "v1",
            "status": "CURRENT",
            "min_version": "1.0",
            "max_version": format!("1.{}", super::MAX_MINOR),
            "links": links(call),
        })
    }
}

/// Accept must allow JSON (or JSON-home); anything else is 406.
fn accepts_json(call: &Call<'_>) -> Result<bool, ApiError> {
    let Some(accept) = call.header("accept") else { return Ok(false) };
    let accept = accept.to_ascii_lowercase();
    let json = accept.contains("application/json") && !only_json_home(&accept);
    let home = accept.contains("application/json-home");
    let any =
        accept.contains("*/*") || accept.contains("application/*") || accept.trim().is_empty();
    if !(json || home || any) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "The server could not generate a response acceptable to the client.",
        ));
    }
    Ok(home && !json)
}

fn only_json_home(accept: &str) -> bool {
    accept.split(',').all(|part| {
        let media = super::media_type(part);
        media != "application/json"
    })
}

/// `GET /`.
pub(crate) fn root(call: &Call<'_>) -> Outcome {
    if *call.method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    if accepts_json(call)? {
        let location = format!("{}/v1/", call.base());
        return Ok((Reply::Empty(StatusCode::FOUND), vec![(LOCATION, location)]));
    }
    if call.query.iter().any(|(k, _)| k == "build") {
        return super::json(StatusCode::OK, json!({"build": env!("CARGO_PKG_VERSION")}));
    }
    let body = if call.minor == 0 {
        json!({"versions": {"values": [entry(call)]}})
    } else {
        json!({"versions": [entry(call)]})
    };
    super::json(StatusCode::MULTIPLE_CHOICES, body)
}

/// `GET /v1`.
pub(crate) fn v1(call: &Call<'_>) -> Outcome {
    if *call.method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    accepts_json(call)?;
    super::json(StatusCode::OK, json!({"version": entry(call)}))
}
