//! `/v1/orders`: key and asymmetric key-pair orders. Creating one queues it (see
//! the order worker) and answers 202 at once; the order is normally ACTIVE within milliseconds.

use hyper::header::LOCATION;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::body::{Kind, check_field, repr, string};
use super::secrets::{paged, paging};
use super::{ApiError, Call, Outcome, Reply, parse_json};
use crate::timefmt::{format_micros, now_micros, parse_iso8601};
use appliance_store::{OrderRow, OrderStatus};

const META_SCHEMA: &str = "Secret' within 'Order";

fn order_ref(call: &Call<'_>, id: &str) -> String {
    format!("{}/v1/orders/{id}", call.base())
}

/// An order as the API shows it.
pub(crate) fn representation(call: &Call<'_>, o: &OrderRow) -> Value {
    let meta: Value = serde_json::from_str(&o.meta).unwrap_or_else(|_| json!({}));
    let mut v = Map::new();
    v.insert("order_ref".into(), json!(order_ref(call, &o.id)));
    v.insert("type".into(), json!(o.kind));
    v.insert("status".into(), json!(o.status));
    v.insert("meta".into(), meta);
    v.insert("created".into(), json!(format_micros(o.created)));
    v.insert("updated".into(), json!(format_micros(o.updated)));
    if let Some(creator) = &o.creator_id {
        v.insert("creator_id".into(), json!(creator));
    }
    if o.status == OrderStatus::Active.as_str() {
        if let Some(id) = &o.secret_id {
            v.insert("secret_ref".into(), json!(format!("{}/v1/secrets/{id}", call.base())));
        }
        if let Some(id) = &o.container_id {
            v.insert("container_ref".into(), json!(format!("{}/v1/containers/{id}", call.base())));
        }
        v.insert("sub_status".into(), json!("Unknown"));
        v.insert("sub_status_message".into(), json!("Unknown"));
    }
    if o.status == OrderStatus::Error.as_str() {
        v.insert("error_status_code".into(), json!(o.error_status_code));
        v.insert("error_reason".into(), json!(o.error_reason));
    }
    Value::Object(v)
}

/// `GET|POST|PUT /v1/orders`.
pub(crate) async fn collection(call: &Call<'_>) -> Outcome {
    match *call.method {
        Method::GET => list(call).await,
        Method::POST => create(call).await,
        Method::PUT => {
            call.app
                .authorize_order_update(call.identity())
                .map_err(|e| ApiError::service("Order update", e))?;
            Err(ApiError {
                allow: Some("GET, POST"),
                ..ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Order update is not supported.")
            })
        }
        _ => Err(ApiError::method_not_allowed("GET, POST")),
    }
}

async fn list(call: &Call<'_>) -> Outcome {
    const OP: &str = "Order(s) retrieval";
    let page = paging(call);
    let (rows, total) = call
        .app
        .list_orders(call.identity(), call.param("meta"), page)
        .await
        .map_err(|e| ApiError::service(OP, e))?;
    let items: Vec<Value> = rows.iter().map(|o| representation(call, o)).collect();
    paged(call, "orders", "orders", items, page, total)
}

async fn create(call: &Call<'_>) -> Outcome {
    const OP: &str = "Order creation";
    call.app.authorize_order_create(call.identity()).map_err(|e| ApiError::service(OP, e))?;
    call.require_json()?;
    if call.body_too_large {
        return Err(ApiError::too_large(OP));
    }
    let body = parse_json(call.body, "Order")?;
    let Some(kind) = body.get("type") else {
        return Err(ApiError::schema("Order", "'type' is a required property", None));
    };
    let kind = match kind.as_str() {
        Some(k @ ("key" | "asymmetric")) => k.to_owned(),
        _ => {
            return Err(ApiError::schema(
                "Order",
                &format!("{} is not one of ['key', 'asymmetric']", repr(kind)),
                Some("type"),
            ));
        }
    };
    let Some(meta) = body.get("meta") else {
        return Err(ApiError::schema("Order", "'meta' is a required property", None));
    };
    let Value::Object(meta) = meta else {
        return Err(ApiError::schema(
            "Order",
            &format!("{} is not of type 'object'", repr(meta)),
            Some("meta"),
        ));
    };
    let stored = validate_meta(&kind, meta)?;
    let order = call
        .app
        .create_order(call.identity(), kind, stored)
        .await
        .map_err(|e| ApiError::service(OP, e))?;
    let reference = order_ref(call, &order.id);
    Ok((
        Reply::Json(StatusCode::ACCEPTED, json!({"order_ref": reference})),
        vec![(LOCATION, reference)],
    ))
}

/// Checks an order's `meta` as Barbican does and returns it as stored (with `name` and a
/// normalised `expiration` always present).
fn validate_meta(kind: &str, meta: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    const SECRET_TYPES: &[&str] =
        &["symmetric", "passphrase", "private", "public", "certificate", "opaque"];
    let s = META_SCHEMA;
    check_field(s, meta, "name", Kind::StringOrNull, Some(255), None, None)?;
    check_field(s, meta, "algorithm", Kind::String, Some(255), None, None)?;
    check_field(s, meta, "mode", Kind::String, Some(255), None, None)?;
    check_field(s, meta, "bit_length", Kind::Integer, None, Some((1, 32767)), None)?;
    check_field(s, meta, "expiration", Kind::String, Some(255), None, None)?;
    check_field(s, meta, "payload", Kind::String, None, None, None)?;
    check_field(s, meta, "payload_content_type", Kind::StringOrNull, Some(255), None, None)?;
    check_field(
        s,
        meta,
        "payload_content_encoding",
        Kind::String,
        Some(255),
        None,
        Some(&["base64"]),
    )?;
    check_field(s, meta, "secret_type", Kind::String, Some(80), None, Some(SECRET_TYPES))?;
    let kind_name = if kind == "key" { "key type order" } else { "asymmetric key type order" };
    let order_kind = if kind == "key" { "key type order" } else { "asymmetric type order" };
    if let Some(payload) = string(meta, "payload") {
        if payload.is_empty() {
            return Err(ApiError::schema(
                s,
                "If 'payload' specified, must be non empty",
                Some("payload"),
            ));
        }
        return Err(ApiError::schema(
            s,
            &format!("'payload' not allowed for {order_kind}"),
            Some("meta"),
        ));
    }
    // An empty type is no type (Barbican checks only a non-empty one): the default applies.
    if let Some(ct) = string(meta, "payload_content_type")
        && !ct.is_empty()
        && crate::service::secrets::normalize_content_type(&ct).is_none()
    {
        return Err(ApiError::schema(
            s,
            &format!("payload_content_type is not one of {}", super::secrets::CONTENT_TYPES),
            Some("payload_content_type"),
        ));
    }
    let algorithm = string(meta, "algorithm").unwrap_or_default();
    if algorithm.is_empty() {
        return Err(ApiError::schema(
            s,
            &format!("'algorithm' is required field for {kind_name}"),
            Some("meta"),
        ));
    }
    let bits = meta.get("bit_length").and_then(Value::as_i64).unwrap_or(0);
    if bits == 0 {
        return Err(ApiError::schema(
            s,
            &format!("'bit_length' is required field for {kind_name}"),
            Some("meta"),
        ));
    }
    let unsupported = || ApiError::bad_request("Provided field value is not supported");
    if algorithm.eq_ignore_ascii_case("ec") {
        if ![256, 384, 521].contains(&bits) {
            return Err(unsupported());
        }
    } else if bits % 8 != 0 {
        return Err(unsupported());
    }
    let mut stored = meta.clone();
    stored.entry("name").or_insert(Value::Null);
    let expiration = match string(meta, "expiration").filter(|e| !e.is_empty()) {
        None => Value::Null,
        Some(text) => match parse_iso8601(&text) {
            None => {
                return Err(ApiError::schema(
                    s,
                    "Invalid date for 'expiration'",
                    Some("expiration"),
                ));
            }
            Some(t) if t <= now_micros() => {
                return Err(ApiError::schema(
                    s,
                    "'expiration' is before current time",
                    Some("expiration"),
                ));
            }
            // Barbican stores the normalised value with all six fractional digits.
            Some(t) => {
                let text = format_micros(t);
                Value::String(if text.contains('.') { text } else { format!("{text}.000000") })
            }
        },
    };
    stored.insert("expiration".into(), expiration);
    Ok(stored)
}

/// `/v1/orders/{id}`: looked up in the caller's project only (others' orders are 404).
/// `/v1/orders/{id}`, or (`below`) a path under it, refused once the order is found.
pub(crate) async fn item(call: &Call<'_>, id: &str, below: bool) -> Outcome {
    let caller = call.identity();
    let order =
        call.app.order(caller, id).await.map_err(|e| ApiError::service("Order retrieval", e))?;
    if below {
        return Err(ApiError::not_found("The resource could not be found."));
    }
    match *call.method {
        Method::GET => {
            call.app
                .authorize_order_read(&order, caller)
                .map_err(|e| ApiError::service("Order retrieval", e))?;
            super::json(StatusCode::OK, representation(call, &order))
        }
        Method::DELETE => {
            const OP: &str = "Order deletion";
            call.app.delete_order(&order, caller).await.map_err(|e| ApiError::service(OP, e))?;
            Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
        }
        _ => Err(ApiError::method_not_allowed("GET, DELETE")),
    }
}
