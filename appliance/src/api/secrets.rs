//! `/v1/secrets`: create, list, metadata, payload (with Accept negotiation), two-step upload,
//! delete.

use base64::Engine;
use hyper::StatusCode;
use hyper::header::LOCATION;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::body::{Kind, check_field, string};
use super::{ApiError, Call, Outcome, Reply, is_uuid4, parse_json};
use crate::service::error::ServiceError;
use crate::service::secrets::normalize_content_type as normalize;
use crate::service::secrets::{NewSecret, check_no_payload, stored_payload};
use crate::timefmt::{format_micros, now_micros, parse_iso8601};
use appliance_store::{Compare, SecretQuery, SecretRow};

const SECRET_TYPES: &[&str] =
    &["symmetric", "passphrase", "private", "public", "certificate", "opaque"];
pub(crate) const CONTENT_TYPES: &str = "['text/plain', 'text/plain;charset=utf-8', 'text/plain; charset=utf-8', \
                             'application/octet-stream', 'application/pkcs8']";
/// Barbican's MAX_FIELD_SIZE for `bit_length`.
const MAX_BIT_LENGTH: i64 = 32767;
const SORT_KEYS: &[&str] = &[
    "algorithm",
    "bit_length",
    "created",
    "expiration",
    "mode",
    "name",
    "secret_type",
    "status",
    "updated",
];
const BAD_QUERY: &str = "URI provided invalid query string parameters.";

/// Finds the secret of `/v1/secrets/{id}...`: 404 for a malformed id, or a missing or expired
/// secret (before any policy check, as Barbican).
pub(crate) async fn lookup(call: &Call<'_>, id: &str) -> Result<SecretRow, ApiError> {
    if !is_uuid4(id) {
        return Err(ApiError::not_found("Not Found. Provided secret id is invalid."));
    }
    call.app.find_secret(id).await.map_err(|e| ApiError::service("Secret retrieval", e))
}

fn secret_ref(call: &Call<'_>, id: &str) -> String {
    format!("{}/v1/secrets/{id}", call.base())
}

/// A secret as the API shows it, with its consumers from microversion 1.1 on (or when
/// `always_consumers`): no extra keys, clients build objects from it.
pub(crate) async fn representation_of(
    call: &Call<'_>,
    s: &SecretRow,
    always_consumers: bool,
) -> Result<Value, ApiError> {
    let consumers = if always_consumers || call.minor >= 1 {
        let rows = call
            .app
            .consumers_of(&s.id)
            .await
            .map_err(|e| ApiError::service("Secret retrieval", e))?;
        Some(
            rows.iter()
                .map(|c| json!({"service": c.service, "resource_type": c.resource_type, "resource_id": c.resource_id}))
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    Ok(representation(call, s, consumers))
}

/// A secret as the API shows it (no extra keys: clients build objects from it).
pub(crate) fn representation(
    call: &Call<'_>,
    s: &SecretRow,
    consumers: Option<Vec<Value>>,
) -> Value {
    let mut v = json!({
        "secret_ref": secret_ref(call, &s.id),
        "name": s.name,
        "secret_type": s.secret_type,
        "algorithm": s.algorithm,
        "bit_length": s.bit_length,
        "mode": s.mode,
        "expiration": s.expiration.map(format_micros),
        "creator_id": s.creator_id,
        "status": "ACTIVE",
        "created": format_micros(s.created),
        "updated": format_micros(s.updated),
    });
    if let (Some(p), Some(map)) = (&s.payload, v.as_object_mut()) {
        map.insert("content_types".into(), json!({"default": p.content_type}));
    }
    if let (Some(consumers), Some(map)) = (consumers, v.as_object_mut()) {
        map.insert("consumers".into(), Value::Array(consumers));
    }
    v
}

/// Python's non-strict `b64decode`: characters outside the alphabet are skipped, padding must
/// still be right.
pub(crate) fn decode_base64(text: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut data: Zeroizing<Vec<u8>> = Zeroizing::new(
        text.iter()
            .copied()
            .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
            .collect(),
    );
    let padding = text.iter().filter(|c| **c == b'=').count();
    match data.len() % 4 {
        0 => {}
        1 => return None,
        r if padding >= 4 - r => data.extend(std::iter::repeat_n(b'=', 4 - r)),
        _ => return None,
    }
    base64::engine::general_purpose::STANDARD.decode(&*data).ok().map(Zeroizing::new)
}

/// `POST /v1/secrets`.
pub(crate) async fn create(call: &Call<'_>) -> Outcome {
    const OP: &str = "Secret creation";
    const SCHEMA: &str = "Secret";
    let failed = |e| ApiError::service(OP, e);
    call.app.authorize_secret_creation(call.identity()).map_err(failed)?;
    call.require_json()?;
    if call.body_too_large {
        return Err(ApiError::too_large(OP));
    }
    let mut body = parse_json(call.body, SCHEMA)?;
    // The payload leaves the parsed document at once, into a buffer that is wiped.
    let payload: Option<Zeroizing<String>> = match body.remove("payload") {
        None => None,
        Some(Value::String(s)) => Some(Zeroizing::new(s)),
        Some(other) => {
            return Err(ApiError::schema(
                SCHEMA,
                &format!("{} is not of type 'string'", super::body::repr(&other)),
                Some("payload"),
            ));
        }
    };
    check_field(SCHEMA, &body, "name", Kind::StringOrNull, Some(255), None, None)?;
    check_field(SCHEMA, &body, "secret_type", Kind::String, Some(80), None, Some(SECRET_TYPES))?;
    check_field(SCHEMA, &body, "algorithm", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "mode", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "bit_length", Kind::Integer, None, Some((1, MAX_BIT_LENGTH)), None)?;
    check_field(SCHEMA, &body, "expiration", Kind::String, Some(255), None, None)?;
    check_field(SCHEMA, &body, "payload_content_type", Kind::StringOrNull, Some(255), None, None)?;
    check_field(
        SCHEMA,
        &body,
        "payload_content_encoding",
        Kind::String,
        Some(255),
        None,
        Some(&["base64"]),
    )?;
    check_field(
        SCHEMA,
        &body,
        "transport_key_needed",
        Kind::String,
        None,
        None,
        Some(&["true", "false"]),
    )?;
    check_field(SCHEMA, &body, "transport_key_id", Kind::String, None, None, None)?;

    let now = now_micros();
    let expiration = match string(&body, "expiration").filter(|e| !e.is_empty()) {
        None => None,
        Some(text) => match parse_iso8601(&text) {
            None => {
                return Err(ApiError::schema(
                    SCHEMA,
                    "Invalid date for 'expiration'",
                    Some("expiration"),
                ));
            }
            Some(t) if t <= now => {
                return Err(ApiError::schema(
                    SCHEMA,
                    "'expiration' is before current time",
                    Some("expiration"),
                ));
            }
            Some(t) => Some(t),
        },
    };
    let content_type = string(&body, "payload_content_type");
    let encoding = string(&body, "payload_content_encoding");
    let plaintext: Option<(&'static str, Zeroizing<Vec<u8>>)> = match &payload {
        Some(payload) => Some(validate_payload(
            call,
            SCHEMA,
            payload,
            content_type.as_deref(),
            encoding.as_deref(),
        )?),
        None if content_type.is_some() => {
            return Err(ApiError::schema(
                SCHEMA,
                "payload must be provided when payload_content_type is specified",
                Some("payload"),
            ));
        }
        None => None,
    };
    if string(&body, "transport_key_needed").as_deref() == Some("true") {
        return Err(ApiError::issue(
            StatusCode::BAD_REQUEST,
            OP,
            "Transport key wrapping is not supported by this key manager",
        ));
    }
    let new = NewSecret {
        name: string(&body, "name"),
        secret_type: string(&body, "secret_type"),
        algorithm: string(&body, "algorithm"),
        bit_length: body.get("bit_length").and_then(Value::as_i64),
        mode: string(&body, "mode"),
        expiration,
        payload: plaintext,
    };
    let id = call.app.create_secret(call.identity(), new).await.map_err(failed)?;
    let location = secret_ref(call, &id);
    Ok((
        Reply::Json(StatusCode::CREATED, json!({"secret_ref": location})),
        vec![(LOCATION, location)],
    ))
}

/// Checks a one-step payload and returns its stored type and bytes.
fn validate_payload(
    call: &Call<'_>,
    schema: &str,
    payload: &str,
    content_type: Option<&str>,
    encoding: Option<&str>,
) -> Result<(&'static str, Zeroizing<Vec<u8>>), ApiError> {
    let Some(content_type) = content_type else {
        return Err(ApiError::schema(
            schema,
            "If 'payload' is supplied, 'payload_content_type' must also be supplied.",
            Some("payload_content_type"),
        ));
    };
    let Some(stored) = normalize(content_type) else {
        return Err(ApiError::schema(
            schema,
            &format!("payload_content_type is not one of {CONTENT_TYPES}"),
            Some("payload_content_type"),
        ));
    };
    let text = stored == "text/plain";
    match (text, encoding) {
        (true, None) | (false, Some("base64")) => {}
        (true, Some(_)) => {
            return Err(ApiError::schema(
                schema,
                "payload_content_encoding is not one of None",
                Some("payload_content_encoding"),
            ));
        }
        (false, _) => {
            return Err(ApiError::schema(
                schema,
                "payload_content_encoding is not one of ['base64', 'binary']",
                Some("payload_content_encoding"),
            ));
        }
    }
    if payload.len() > call.app.settings.max_secret_bytes {
        return Err(ApiError::too_large("Secret creation"));
    }
    if payload.is_empty() {
        return Err(ApiError::schema(
            schema,
            "If 'payload' specified, must be non empty",
            Some("payload"),
        ));
    }
    let bytes = if text {
        Zeroizing::new(payload.as_bytes().to_vec())
    } else {
        // Barbican decodes the JSON string itself, and Python refuses a string with non-ASCII
        // characters in it (where it skips ASCII ones outside the alphabet).
        Some(payload)
            .filter(|p| p.is_ascii())
            .and_then(|p| decode_base64(p.as_bytes()))
            .ok_or_else(|| {
                ApiError::schema(
                    schema,
                    "Invalid payload for payload_content_encoding",
                    Some("payload"),
                )
            })?
    };
    Ok((stored, bytes))
}

/// `GET /v1/secrets/{id}`: metadata, or (any Accept but JSON) the legacy payload path.
pub(crate) async fn get(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    match call.header("accept").map(str::trim) {
        None | Some("") | Some("application/json") | Some("*/*") => {
            call.app
                .authorize_secret_read(secret, call.identity())
                .await
                .map_err(|e| ApiError::service("Secret retrieval", e))?;
            super::json(StatusCode::OK, representation_of(call, secret, false).await?)
        }
        Some(accept) => payload(call, secret, Some(accept)).await,
    }
}

/// `GET /v1/secrets/{id}/payload`.
pub(crate) async fn payload(call: &Call<'_>, secret: &SecretRow, accept: Option<&str>) -> Outcome {
    const OP: &str = "Secret payload retrieval";
    let failed = |e| ApiError::service(OP, e);
    call.app.authorize_decryption(secret, call.identity()).await.map_err(failed)?;
    if call.param("trans_wrapped_session_key").is_some() && call.param("transport_key_id").is_none()
    {
        return Err(ApiError::bad_request(
            "Transport key wrapped session key has been provided to wrap secrets for retrieval, \
             but the transport key id has not been provided.",
        ));
    }
    let stored = stored_payload(secret).map_err(failed)?;
    let wrong_type =
        || ApiError::issue(StatusCode::NOT_ACCEPTABLE, OP, "Wrong payload content-type");
    // Barbican compares the raw header: no q-values, no lists.
    let (text, content_type): (bool, &str) = match accept.map(str::trim).filter(|a| !a.is_empty()) {
        None => (false, "application/octet-stream"),
        Some("*/*") => {
            (stored.content_type == "text/plain", stored_response_type(&stored.content_type))
        }
        Some(a) if normalize(a) == Some("text/plain") => (true, "text/plain; charset=UTF-8"),
        Some("application/octet-stream") => (false, "application/octet-stream"),
        Some("application/pkcs8") => (false, "application/pkcs8"),
        Some(_) => return Err(wrong_type()),
    };
    let plaintext = call.app.decrypt_secret(secret).await.map_err(failed)?;
    if text && std::str::from_utf8(&plaintext).is_err() {
        return Err(wrong_type());
    }
    Ok((Reply::Payload(StatusCode::OK, content_type, plaintext), Vec::new()))
}

fn stored_response_type(stored: &str) -> &'static str {
    match stored {
        "text/plain" => "text/plain; charset=UTF-8",
        "application/pkcs8" => "application/pkcs8",
        _ => "application/octet-stream",
    }
}

/// `PUT /v1/secrets/{id}`: the payload of a metadata-only secret.
pub(crate) async fn put(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    const OP: &str = "Secret update";
    let failed = |e| ApiError::service(OP, e);
    call.app.authorize_payload_upload(secret, call.identity()).await.map_err(failed)?;
    let stored_type = match call.content_type().as_deref() {
        Some("text/plain") => "text/plain",
        Some("application/octet-stream") => "application/octet-stream",
        _ => return Err(ApiError::unsupported_media(&["application/octet-stream", "text/plain"])),
    };
    let encoding = call.header("content-encoding").map(|e| e.trim().to_ascii_lowercase());
    if stored_type == "application/octet-stream"
        && encoding.as_deref().is_some_and(|e| e != "base64")
    {
        return Err(ApiError::issue(
            StatusCode::BAD_REQUEST,
            OP,
            "Text-based binary secret payloads must specify a content-encoding of 'base64'",
        ));
    }
    if call.body_too_large || call.body.len() > call.app.settings.max_secret_bytes {
        return Err(ApiError::too_large(OP));
    }
    if call.body.is_empty() {
        return Err(ApiError::issue(StatusCode::BAD_REQUEST, OP, "No data supplied to process."));
    }
    check_no_payload(secret).map_err(failed)?;
    let bytes = match (stored_type, encoding.as_deref()) {
        ("application/octet-stream", Some("base64")) => {
            decode_base64(call.body).ok_or_else(|| {
                ApiError::issue(
                    StatusCode::BAD_REQUEST,
                    OP,
                    "Invalid payload for payload_content_encoding",
                )
            })?
        }
        _ => Zeroizing::new(call.body.to_vec()),
    };
    call.app.upload_payload(secret, stored_type, &bytes).await.map_err(failed)?;
    Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
}

/// `DELETE /v1/secrets/{id}`.
pub(crate) async fn delete(call: &Call<'_>, secret: &SecretRow) -> Outcome {
    const OP: &str = "Secret deletion";
    call.app
        .authorize_secret_deletion(secret, call.identity())
        .await
        .map_err(|e| ApiError::service(OP, e))?;
    // Consumers hold a deletion back from microversion 1.2 on, unless it is forced.
    let unless_consumed = if call.minor >= 2 {
        match call.param("force") {
            Some(f) => !parse_bool(f).ok_or_else(|| ApiError::bad_request(BAD_QUERY))?,
            None => true,
        }
    } else {
        false
    };
    call.app.delete_secret(secret, unless_consumed).await.map_err(|e| match e {
        // barbicanclient recognises this sentence (SecretHasConsumers).
        ServiceError::Invalid(reason) => ApiError::issue(StatusCode::BAD_REQUEST, OP, &reason),
        e => ApiError::service(OP, e),
    })?;
    Ok((Reply::Empty(StatusCode::NO_CONTENT), Vec::new()))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" | "y" | "t" => Some(true),
        "false" | "no" | "0" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// `limit` and `offset` as Barbican cleans them.
pub(crate) fn paging(call: &Call<'_>) -> (i64, i64) {
    let offset =
        call.param("offset").and_then(|o| o.trim().parse::<i64>().ok()).unwrap_or(0).max(0);
    let limit = match call.param("limit").filter(|l| !l.is_empty()) {
        None => 10,
        Some(l) => l.trim().parse::<i64>().unwrap_or(10).clamp(1, 100),
    };
    (offset, limit)
}

/// One page of a collection, as every Barbican list answers: `{key: items, "total": N}`, plus
/// `next`/`previous` links to `/v1/{collection}` unless the page is empty.
pub(crate) fn paged(
    call: &Call<'_>,
    key: &str,
    collection: &str,
    items: Vec<Value>,
    (offset, limit): (i64, i64),
    total: i64,
) -> Outcome {
    let mut out = serde_json::Map::new();
    let empty = items.is_empty();
    out.insert(key.into(), Value::Array(items));
    out.insert("total".into(), json!(total));
    if !empty {
        page_links(call, collection, offset, limit, total, &mut out);
    }
    super::json(StatusCode::OK, Value::Object(out))
}

/// `next`/`previous` links: `?limit=L&offset=O` then the other parameters as sent.
fn page_links(
    call: &Call<'_>,
    collection: &str,
    offset: i64,
    limit: i64,
    total: i64,
    out: &mut serde_json::Map<String, Value>,
) {
    let link = |offset: i64| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        q.append_pair("offset", &offset.to_string());
        for (k, v) in &call.query {
            if k != "limit" && k != "offset" {
                q.append_pair(k, v);
            }
        }
        format!("{}/v1/{collection}?{}", call.base(), q.finish())
    };
    if offset > 0 {
        out.insert("previous".into(), Value::String(link((offset - limit).max(0))));
    }
    if total > offset + limit {
        out.insert("next".into(), Value::String(link(offset + limit)));
    }
}

/// `GET /v1/secrets`.
pub(crate) async fn list(call: &Call<'_>) -> Outcome {
    const OP: &str = "Secret(s) retrieval";
    let failed = |e| ApiError::service(OP, e);
    call.app.authorize_secret_listing(call.identity()).map_err(failed)?;
    let (offset, limit) = paging(call);
    let bad = || ApiError::bad_request(BAD_QUERY);
    let mut q = SecretQuery {
        name: call.param("name").map(str::to_owned),
        algorithm: call.param("alg").map(str::to_owned),
        mode: call.param("mode").map(str::to_owned),
        bits: call.param("bits").and_then(|b| b.trim().parse::<i64>().ok()).filter(|b| *b > 0),
        secret_type: call.param("secret_type").map(str::to_owned),
        offset,
        limit,
        ..Default::default()
    };
    q.created = date_filter(call.param("created")).ok_or_else(bad)?;
    q.updated = date_filter(call.param("updated")).ok_or_else(bad)?;
    q.expiration = date_filter(call.param("expiration")).ok_or_else(bad)?;
    q.sort = sort(call.param("sort")).ok_or_else(bad)?;
    let shared_only = call.param("acl_only").is_some_and(|a| a.eq_ignore_ascii_case("true"));
    let (secrets, total) =
        call.app.list_secrets(call.identity(), q, shared_only).await.map_err(failed)?;
    let mut items: Vec<Value> = Vec::with_capacity(secrets.len());
    for s in &secrets {
        items.push(representation_of(call, s, false).await?);
    }
    paged(call, "secrets", "secrets", items, (offset, limit), total)
}

/// `gt:T,lte:T`-style filters; `None` for a combination Barbican refuses.
fn date_filter(value: Option<&str>) -> Option<Vec<(Compare, i64)>> {
    let Some(value) = value else { return Some(Vec::new()) };
    let mut out = Vec::new();
    let (mut lower, mut upper, mut equal) = (false, false, false);
    for item in value.split(',') {
        let item = item.trim();
        let (cmp, time) = match item.split_once(':') {
            Some(("gt", t)) => (Compare::Gt, t),
            Some(("gte", t)) => (Compare::Gte, t),
            Some(("lt", t)) => (Compare::Lt, t),
            Some(("lte", t)) => (Compare::Lte, t),
            _ => (Compare::Eq, item),
        };
        let flag = match cmp {
            Compare::Gt | Compare::Gte => &mut lower,
            Compare::Lt | Compare::Lte => &mut upper,
            Compare::Eq => &mut equal,
        };
        if *flag {
            return None;
        }
        *flag = true;
        out.push((cmp, parse_iso8601(time)?));
    }
    if equal && (lower || upper) {
        return None;
    }
    Some(out)
}

fn sort(value: Option<&str>) -> Option<Vec<(&'static str, bool)>> {
    let Some(value) = value else { return Some(Vec::new()) };
    let mut out: Vec<(&'static str, bool)> = Vec::new();
    for item in value.split(',') {
        let (key, dir) = match item.trim().split_once(':') {
            Some((k, d)) => (k, d),
            None => (item.trim(), "asc"),
        };
        let key = SORT_KEYS.iter().copied().find(|k| *k == key)?;
        let desc = match dir {
            "asc" => false,
            "desc" => true,
            _ => return None,
        };
        if out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        // `status` is always ACTIVE here: sorting by it changes nothing.
        if key != "status" {
            out.push((key, desc));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_non_strict_like_python() {
        assert_eq!(decode_base64(b"AAEC/w==").unwrap().as_slice(), &[0, 1, 2, 0xff]);
        assert_eq!(decode_base64(b"AA EC\n/w==").unwrap().as_slice(), &[0, 1, 2, 0xff]);
        assert!(decode_base64(b"abc").is_none());
        assert!(decode_base64(b"abcde").is_none());
        assert_eq!(decode_base64(b"!!!!").unwrap().as_slice(), b"");
        assert_eq!(decode_base64(b"YWI=").unwrap().as_slice(), b"ab");
    }

    #[test]
    fn content_types_normalise() {
        for ok in
            ["text/plain", "TEXT/PLAIN", "text/plain;charset=utf-8", "text/plain; charset=UTF-8"]
        {
            assert_eq!(normalize(ok), Some("text/plain"), "{ok}");
        }
        assert_eq!(normalize("application/octet-stream"), Some("application/octet-stream"));
        for bad in ["text/plain; charset=latin1", "application/json", "text/html", ""] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn date_filters_and_sorts() {
        assert_eq!(date_filter(Some("gt:2030-01-01T00:00:00,lt:2031-01-01")).unwrap().len(), 2);
        assert!(date_filter(Some("gt:2030-01-01,gte:2030-01-02")).is_none());
        assert!(date_filter(Some("2030-01-01,lt:2031-01-01")).is_none());
        assert!(date_filter(Some("gt:yesterday")).is_none());
        assert_eq!(
            sort(Some("name:desc,created")).unwrap(),
            vec![("name", true), ("created", false)]
        );
        assert!(sort(Some("name,name")).is_none());
        assert!(sort(Some("colour")).is_none());
        assert!(sort(Some("name:up")).is_none());
    }
}
