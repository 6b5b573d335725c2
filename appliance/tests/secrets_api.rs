//! The Barbican v1 secrets API, route by route and validation branch by branch, through the
//! in-process router with a real HSM proxy, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[macro_use]
mod common;

use hyper::{Method, StatusCode};
use serde_json::json;

use common::{BASE, Caller, Env, MEMBER, call, create, path_of, post_json};

const OTHER_PROJECT: Caller<'static> =
    Caller { project: "p2", user: Some("u2"), roles: Some("member,reader") };
const FOREIGN_ADMIN: Caller<'static> =
    Caller { project: "p2", user: Some("a2"), roles: Some("admin,member,reader") };
const READER: Caller<'static> = Caller { project: "p1", user: Some("r1"), roles: Some("reader") };
const BARE: Caller<'static> = Caller { project: "p1", user: None, roles: None };

async fn versions(env: &Env) {
    let app = &env.app;
    let r = call(app, Method::GET, "/", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    let v = r.json();
    assert_eq!(v["versions"]["values"][0]["status"], "stable");
    assert_eq!(v["versions"]["values"][0]["links"][0]["href"], format!("{BASE}/v1/"));
    assert_eq!(r.header("openstack-api-version"), Some("key-manager 1.0"));
    assert_eq!(r.header("vary"), Some("OpenStack-API-Version"));
    assert!(r.header("x-openstack-request-id").unwrap().starts_with("req-"));

    let r = call(app, Method::GET, "/", None, &[("openstack-api-version", "key-manager 1.1")], b"")
        .await;
    let v = r.json();
    assert_eq!(v["versions"][0]["status"], "CURRENT");
    assert_eq!(v["versions"][0]["min_version"], "1.0");
    assert_eq!(v["versions"][0]["max_version"], "1.2");
    assert_eq!(r.header("openstack-api-version"), Some("key-manager 1.1"));
    let r =
        call(app, Method::GET, "/", None, &[("openstack-api-version", "key-manager latest")], b"")
            .await;
    assert_eq!(r.header("openstack-api-version"), Some("key-manager 1.2"));
    let r = call(app, Method::GET, "/", None, &[("openstack-api-version", "key-manager 9.9")], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    let r = call(app, Method::GET, "/", None, &[("openstack-api-version", "key-manager abc")], b"")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(app, Method::GET, "/?build", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["build"].is_string());
    let r = call(app, Method::GET, "/", None, &[("accept", "text/html")], b"").await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    let r = call(app, Method::GET, "/", None, &[("accept", "application/json-home")], b"").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some(format!("{BASE}/v1/").as_str()));
    // An incoming request id of the right form is kept.
    let id = "req-6d3cc2e4-8c1c-4a4b-9b6e-3c2b8d8f0a11";
    let r = call(app, Method::GET, "/", None, &[("x-openstack-request-id", id)], b"").await;
    assert_eq!(r.header("x-openstack-request-id"), Some(id));

    let r = call(app, Method::GET, "/v1", Some(MEMBER), &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"]["id"], "v1");
    // No X-Project-Id: webob's plain-text 400.
    let r = call(app, Method::GET, "/v1/secrets", None, &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("Missing X-Project-Id"));
}

async fn create_and_read(env: &Env) {
    let app = &env.app;
    // A text secret, whitespace stripped, every attribute echoed.
    let id = create(
        app,
        MEMBER,
        json!({"name": "  volume key ", "secret_type": "passphrase", "algorithm": "AES", "bit_length": 256,
               "mode": "cbc", "expiration": "2099-01-01T02:00:00+02:00",
               "payload": "  héllo wörld  ", "payload_content_type": "text/plain; charset=utf-8"}),
    )
    .await;
    let r = call(app, Method::GET, &path_of(&id), Some(MEMBER), &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = r.json();
    assert_eq!(s["secret_ref"], format!("{BASE}/v1/secrets/{id}"));
    assert_eq!(s["name"], "volume key");
    assert_eq!(s["secret_type"], "passphrase");
    assert_eq!(s["algorithm"], "AES");
    assert_eq!(s["bit_length"], 256);
    assert_eq!(s["mode"], "cbc");
    assert_eq!(s["expiration"], "2099-01-01T00:00:00");
    assert_eq!(s["creator_id"], "u1");
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["content_types"], json!({"default": "text/plain"}));
    assert!(s.get("consumers").is_none(), "no consumers key at 1.0");
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 12, "no extra keys: clients build objects from them: {keys:?}");
    let r = call(
        app,
        Method::GET,
        &path_of(&id),
        Some(MEMBER),
        &[("openstack-api-version", "key-manager 1.1")],
        b"",
    )
    .await;
    assert_eq!(r.json()["consumers"], json!([]));

    // Payload negotiation.
    let payload = |accept: Option<&'static str>| {
        let id = id.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                accept.map(|a| vec![("accept", a)]).unwrap_or_default();
            call(
                app,
                Method::GET,
                &format!("/v1/secrets/{id}/payload"),
                Some(MEMBER),
                &headers,
                b"",
            )
            .await
        }
    };
    let r = payload(Some("text/plain")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "héllo wörld".as_bytes());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    let r = payload(Some("application/octet-stream")).await;
    assert_eq!(r.body, "héllo wörld".as_bytes());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = payload(None).await;
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = payload(Some("*/*")).await;
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    payload(Some("application/json"))
        .await
        .assert_error(406, "Secret payload retrieval issue seen - Wrong payload content-type.");
    payload(Some("text/plain, */*"))
        .await
        .assert_error(406, "Secret payload retrieval issue seen - Wrong payload content-type.");
    // The legacy path: any Accept but JSON on the secret itself returns the payload.
    let r =
        call(app, Method::GET, &path_of(&id), Some(MEMBER), &[("accept", "text/plain")], b"").await;
    assert_eq!(r.body, "héllo wörld".as_bytes());

    // Binary, base64 on the way in, raw bytes on the way out; not text.
    let bin = create(
        app,
        MEMBER,
        json!({"payload": "AAEC/w==", "payload_content_type": "application/octet-stream",
               "payload_content_encoding": "base64", "secret_type": "symmetric"}),
    )
    .await;
    let r = call(
        app,
        Method::GET,
        &format!("/v1/secrets/{bin}/payload"),
        Some(MEMBER),
        &[("accept", "application/octet-stream")],
        b"",
    )
    .await;
    assert_eq!(r.body, [0u8, 1, 2, 0xff]);
    let r = call(
        app,
        Method::GET,
        &format!("/v1/secrets/{bin}/payload"),
        Some(MEMBER),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    r.assert_error(406, "Secret payload retrieval issue seen - Wrong payload content-type.");
    let r = call(app, Method::GET, &path_of(&bin), Some(MEMBER), &[], b"").await;
    assert_eq!(r.json()["secret_type"], "symmetric");
    assert_eq!(r.json()["content_types"]["default"], "application/octet-stream");
    // PKCS#8 keeps its type.
    let p8 = create(
        app,
        MEMBER,
        json!({"payload": "MC4CAQA=", "payload_content_type": "application/pkcs8",
        "payload_content_encoding": "base64", "secret_type": "private"}),
    )
    .await;
    let r = call(
        app,
        Method::GET,
        &format!("/v1/secrets/{p8}/payload"),
        Some(MEMBER),
        &[("accept", "application/pkcs8")],
        b"",
    )
    .await;
    assert_eq!(r.header("content-type"), Some("application/pkcs8"));
    assert_eq!(r.body, [0x30, 0x2e, 0x02, 0x01, 0x00]);

    // Default type, no payload, and the two-step upload.
    let meta_only = create(app, MEMBER, json!({"name": "two-step"})).await;
    let r = call(app, Method::GET, &path_of(&meta_only), Some(MEMBER), &[], b"").await;
    assert_eq!(r.json()["secret_type"], "opaque");
    assert!(r.json().get("content_types").is_none());
    let payload_path = format!("/v1/secrets/{meta_only}/payload");
    call(app, Method::GET, &payload_path, Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Not Found. Sorry but your secret has no payload.");
    let put = |ct: &'static str, enc: Option<&'static str>, body: &'static [u8]| {
        let id = meta_only.clone();
        async move {
            let mut headers = vec![("content-type", ct)];
            if let Some(e) = enc {
                headers.push(("content-encoding", e));
            }
            call(app, Method::PUT, &path_of(&id), Some(MEMBER), &headers, body).await
        }
    };
    put("application/json", None, b"x").await.assert_error(
        415,
        "Unexpected content type. Expected content types are: ['application/octet-stream', 'text/plain']",
    );
    put("application/octet-stream", Some("gzip"), b"x").await.assert_error(
        400,
        "Secret update issue seen - Text-based binary secret payloads must specify a content-encoding of 'base64'.",
    );
    put("application/octet-stream", None, b"")
        .await
        .assert_error(400, "Secret update issue seen - No data supplied to process..");
    let r = put("application/octet-stream", None, &[9, 8, 7, 0, 255]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&r.body));
    put("application/octet-stream", None, b"again")
        .await
        .assert_error(409, "Secret already has data, cannot modify it.");
    let r = call(
        app,
        Method::GET,
        &payload_path,
        Some(MEMBER),
        &[("accept", "application/octet-stream")],
        b"",
    )
    .await;
    assert_eq!(r.body, [9, 8, 7, 0, 255]);
    let r = call(app, Method::GET, &path_of(&meta_only), Some(MEMBER), &[], b"").await;
    assert_eq!(r.json()["content_types"]["default"], "application/octet-stream");
    // text/plain and base64 two-step uploads.
    let t = create(app, MEMBER, json!({})).await;
    let r = call(
        app,
        Method::PUT,
        &path_of(&t),
        Some(MEMBER),
        &[("content-type", "text/plain")],
        "päss".as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(
        app,
        Method::GET,
        &format!("/v1/secrets/{t}/payload"),
        Some(MEMBER),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    assert_eq!(r.body, "päss".as_bytes());
    let b = create(app, MEMBER, json!({})).await;
    let r = call(
        app,
        Method::PUT,
        &path_of(&b),
        Some(MEMBER),
        &[("content-type", "application/octet-stream"), ("content-encoding", "base64")],
        b"AAEC/w==",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r =
        call(app, Method::GET, &format!("/v1/secrets/{b}/payload"), Some(MEMBER), &[], b"").await;
    assert_eq!(r.body, [0u8, 1, 2, 0xff]);
    let too_big = vec![b'x'; 20_001];
    let c = create(app, MEMBER, json!({})).await;
    let r = call(
        app,
        Method::PUT,
        &path_of(&c),
        Some(MEMBER),
        &[("content-type", "application/octet-stream")],
        &too_big,
    )
    .await;
    r.assert_error(413, "Secret update issue seen - Provided information too large to process.");
}

async fn validation(env: &Env) {
    let app = &env.app;
    let schema = |reason: &str, prop: &str| {
        format!(
            "Provided object does not match schema 'Secret': {reason}. Invalid property: '{prop}'"
        )
    };
    let cases: Vec<(serde_json::Value, u16, String)> = vec![
        (json!({"secret_type": "foo"}), 400,
         schema("'foo' is not one of ['symmetric', 'passphrase', 'private', 'public', 'certificate', 'opaque']", "secret_type")),
        (json!({"bit_length": "256"}), 400, schema("'256' is not of type 'integer'", "bit_length")),
        (json!({"bit_length": 0}), 400, schema("0 is less than the minimum of 1", "bit_length")),
        (json!({"bit_length": 32768}), 400, schema("32768 is greater than the maximum of 32767", "bit_length")),
        (json!({"name": 12}), 400, schema("12 is not of type 'string', 'null'", "name")),
        (json!({"name": "n".repeat(256)}), 400, schema(&format!("'{}' is too long", "n".repeat(256)), "name")),
        (json!({"algorithm": null}), 400, schema("None is not of type 'string'", "algorithm")),
        (json!({"expiration": "soon"}), 400, schema("Invalid date for 'expiration'", "expiration")),
        (json!({"expiration": "2001-01-01T00:00:00"}), 400, schema("'expiration' is before current time", "expiration")),
        (json!({"payload": "x"}), 400,
         schema("If 'payload' is supplied, 'payload_content_type' must also be supplied.", "payload_content_type")),
        (json!({"payload": "x", "payload_content_type": "text/html"}), 400,
         schema("payload_content_type is not one of ['text/plain', 'text/plain;charset=utf-8', 'text/plain; charset=utf-8', 'application/octet-stream', 'application/pkcs8']", "payload_content_type")),
        (json!({"payload": "x", "payload_content_type": "text/plain", "payload_content_encoding": "base64"}), 400,
         schema("payload_content_encoding is not one of None", "payload_content_encoding")),
        (json!({"payload": "AA==", "payload_content_type": "application/octet-stream"}), 400,
         schema("payload_content_encoding is not one of ['base64', 'binary']", "payload_content_encoding")),
        (json!({"payload": "AA==", "payload_content_type": "application/octet-stream", "payload_content_encoding": "binary"}), 400,
         schema("'binary' is not one of ['base64']", "payload_content_encoding")),
        (json!({"payload": "   ", "payload_content_type": "text/plain"}), 400,
         schema("If 'payload' specified, must be non empty", "payload")),
        (json!({"payload": "abc", "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"}), 400,
         schema("Invalid payload for payload_content_encoding", "payload")),
        (json!({"payload_content_type": "text/plain"}), 400,
         schema("payload must be provided when payload_content_type is specified", "payload")),
        (json!({"payload": "x".repeat(20_001), "payload_content_type": "text/plain"}), 413,
         "Secret creation issue seen - Provided information too large to process.".into()),
        (json!({"transport_key_needed": "true"}), 400,
         "Secret creation issue seen - Transport key wrapping is not supported by this key manager.".into()),
        (json!({"transport_key_needed": "maybe"}), 400, schema("'maybe' is not one of ['true', 'false']", "transport_key_needed")),
    ];
    for (body, status, description) in cases {
        let r = post_json(app, "/v1/secrets", MEMBER, body.clone()).await;
        r.assert_error(status, &description);
    }
    // Malformed JSON, wrong content type, oversized body.
    let r = call(
        app,
        Method::POST,
        "/v1/secrets",
        Some(MEMBER),
        &[("content-type", "application/json")],
        b"{\"name\": ",
    )
    .await;
    r.assert_error(400, "Malformed JSON");
    let r = call(
        app,
        Method::POST,
        "/v1/secrets",
        Some(MEMBER),
        &[("content-type", "text/plain")],
        b"{}",
    )
    .await;
    r.assert_error(
        415,
        "Unexpected content type. Expected content types are: ['application/json']",
    );
    let r = call(app, Method::POST, "/v1/secrets", Some(MEMBER), &[], b"{}").await;
    assert_eq!(r.status.as_u16(), 415);
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(30_000));
    let r = call(
        app,
        Method::POST,
        "/v1/secrets",
        Some(MEMBER),
        &[("content-type", "application/json")],
        huge.as_bytes(),
    )
    .await;
    r.assert_error(413, "Secret creation issue seen - Provided information too large to process.");
    // Non-strict base64 (Python's): characters outside the alphabet are skipped.
    let id = create(app, MEMBER, json!({"payload": "AA\nEC/w==", "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"})).await;
    let r =
        call(app, Method::GET, &format!("/v1/secrets/{id}/payload"), Some(MEMBER), &[], b"").await;
    assert_eq!(r.body, [0u8, 1, 2, 0xff]);
    // Unknown fields are ignored; the body's creator_id is not the creator.
    let id = create(app, MEMBER, json!({"colour": "blue", "creator_id": "mallory"})).await;
    let r = call(app, Method::GET, &path_of(&id), Some(MEMBER), &[], b"").await;
    assert_eq!(r.json()["creator_id"], "u1");
}

async fn ids_methods_and_isolation(env: &Env) {
    let app = &env.app;
    let id =
        create(app, MEMBER, json!({"payload": "mine", "payload_content_type": "text/plain"})).await;
    let path = path_of(&id);
    call(app, Method::GET, "/v1/secrets/not-a-uuid", Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Not Found. Provided secret id is invalid.");
    call(app, Method::GET, &path_of(&id.to_uppercase()), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Not Found. Provided secret id is invalid.");
    call(app, Method::GET, &path_of(&uuid::Uuid::new_v4().to_string()), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret not found.");
    call(app, Method::PATCH, &path, Some(MEMBER), &[], b"").await.assert_error(405, "");
    call(app, Method::POST, &path, Some(MEMBER), &[], b"").await.assert_error(405, "");
    call(app, Method::DELETE, "/v1/secrets", Some(MEMBER), &[], b"").await.assert_error(405, "");
    call(app, Method::POST, &format!("{path}/payload"), Some(MEMBER), &[], b"")
        .await
        .assert_error(405, "");
    assert_eq!(
        call(app, Method::GET, &format!("{path}/nothing"), Some(MEMBER), &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(app, Method::GET, "/v2/secrets", Some(MEMBER), &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    // Trailing slashes on collections, as barbicanclient sends them.
    let r = call(
        app,
        Method::POST,
        "/v1/secrets/",
        Some(MEMBER),
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Another project's member: 403 on everything; its admin may read metadata and delete.
    call(app, Method::GET, &path, Some(OTHER_PROJECT), &[], b"").await.assert_error(
        403,
        "Secret retrieval attempt not allowed - please review your user/project privileges",
    );
    call(app, Method::GET, &format!("{path}/payload"), Some(OTHER_PROJECT), &[], b"").await
        .assert_error(403, "Secret payload retrieval attempt not allowed - please review your user/project privileges");
    call(app, Method::DELETE, &path, Some(OTHER_PROJECT), &[], b"").await.assert_error(
        403,
        "Secret deletion attempt not allowed - please review your user/project privileges",
    );
    assert_eq!(
        call(app, Method::GET, &path, Some(FOREIGN_ADMIN), &[], b"").await.status,
        StatusCode::OK
    );
    call(app, Method::GET, &format!("{path}/payload"), Some(FOREIGN_ADMIN), &[], b"").await
        .assert_error(403, "Secret payload retrieval attempt not allowed - please review your user/project privileges");
    // Readers cannot list, read or create.
    call(app, Method::GET, "/v1/secrets", Some(READER), &[], b"").await.assert_error(
        403,
        "Secret(s) retrieval attempt not allowed - please review your user/project privileges",
    );
    call(app, Method::GET, &path, Some(READER), &[], b"").await.assert_error(
        403,
        "Secret retrieval attempt not allowed - please review your user/project privileges",
    );
    post_json(app, "/v1/secrets", READER, json!({})).await.assert_error(
        403,
        "Secret creation attempt not allowed - please review your user/project privileges",
    );
    // A no-auth caller without X-Roles is an admin with Keystone's implied roles (what the
    // official clients send in no-auth mode), so it may create.
    assert_eq!(post_json(app, "/v1/secrets", BARE, json!({})).await.status, StatusCode::CREATED);
    // Domain-scoped credentials are refused everywhere.
    let r = call(app, Method::GET, &path, Some(MEMBER), &[("x-domain-id", "default")], b"").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another member of the same project has full access (no ACL makes it private).
    let colleague = Caller { project: "p1", user: Some("u9"), roles: Some("member") };
    let r = call(
        app,
        Method::GET,
        &format!("{path}/payload"),
        Some(colleague),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    assert_eq!(r.body, b"mine");

    // Delete: 204, then gone; the foreign admin may delete too.
    let r = call(
        app,
        Method::DELETE,
        &path,
        Some(MEMBER),
        &[("openstack-api-version", "key-manager 1.2")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    call(app, Method::GET, &path, Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret not found.");
    let other = create(app, MEMBER, json!({})).await;
    let r = call(
        app,
        Method::DELETE,
        &format!("{}?force=maybe", path_of(&other)),
        Some(MEMBER),
        &[("openstack-api-version", "key-manager 1.2")],
        b"",
    )
    .await;
    r.assert_error(400, "URI provided invalid query string parameters.");
    assert_eq!(
        call(app, Method::DELETE, &path_of(&other), Some(FOREIGN_ADMIN), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
}

async fn expiration(env: &Env) {
    let app = &env.app;
    let id = create(
        app,
        MEMBER,
        json!({"expiration": "2099-06-01", "payload": "e", "payload_content_type": "text/plain"}),
    )
    .await;
    assert_eq!(
        call(app, Method::GET, &path_of(&id), Some(MEMBER), &[], b"").await.status,
        StatusCode::OK
    );
    // Age it: an expired secret looks deleted everywhere.
    env.sql(&format!("UPDATE secrets SET expiration = 1 WHERE id = '{id}'"));
    call(app, Method::GET, &path_of(&id), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret not found.");
    call(app, Method::GET, &format!("/v1/secrets/{id}/payload"), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret not found.");
    call(app, Method::DELETE, &path_of(&id), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret not found.");
    let list = call(app, Method::GET, "/v1/secrets?limit=100", Some(MEMBER), &[], b"").await.json();
    assert!(
        !list["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["secret_ref"].as_str().unwrap().ends_with(&id))
    );
}

async fn listing(env: &Env) {
    let app = &env.app;
    let p3 = Caller { project: "p3", user: Some("u3"), roles: Some("member") };
    for (name, alg, bits, kind) in [
        ("alpha-1", "aes", 128, "symmetric"),
        ("alpha-2", "AES", 256, "symmetric"),
        ("beta", "rsa", 2048, "private"),
        ("gamma", "aes", 256, "opaque"),
        ("delta", "des", 192, "opaque"),
    ] {
        create(app, p3, json!({"name": name, "algorithm": alg, "bit_length": bits, "secret_type": kind, "mode": "cbc"})).await;
    }
    let list = |query: &str| {
        let path = format!("/v1/secrets{query}");
        async move { call(app, Method::GET, &path, Some(p3), &[], b"").await }
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list("").await.json();
    assert_eq!(all["total"], 5);
    assert_eq!(names(&all), vec!["alpha-1", "alpha-2", "beta", "gamma", "delta"], "creation order");
    assert!(all.get("next").is_none() && all.get("previous").is_none());

    let page = list("?limit=2&offset=2&alg=aes").await.json();
    assert_eq!(page["total"], 3);
    assert_eq!(names(&page), vec!["gamma"]);
    assert_eq!(page["previous"], format!("{BASE}/v1/secrets?limit=2&offset=0&alg=aes"));
    assert!(page.get("next").is_none());
    let first = list("?limit=2&alg=aes").await.json();
    assert_eq!(first["next"], format!("{BASE}/v1/secrets?limit=2&offset=2&alg=aes"));
    // Past the end: no links at all (Barbican's behaviour).
    let past = list("?offset=10").await.json();
    assert_eq!(past, json!({"secrets": [], "total": 5}));
    // limit=0 → pages of one; huge limits are capped at 100; junk falls back to defaults.
    assert_eq!(list("?limit=0").await.json()["secrets"].as_array().unwrap().len(), 1);
    assert_eq!(list("?limit=1000&offset=-3").await.json()["secrets"].as_array().unwrap().len(), 5);
    assert_eq!(list("?limit=x").await.json()["secrets"].as_array().unwrap().len(), 5);

    assert_eq!(names(&list("?name=alpha%25").await.json()), vec!["alpha-1", "alpha-2"]);
    assert_eq!(names(&list("?name=BETA").await.json()), vec!["beta"]);
    assert_eq!(names(&list("?bits=256").await.json()), vec!["alpha-2", "gamma"]);
    assert_eq!(list("?bits=-1").await.json()["total"], 5);
    assert_eq!(names(&list("?secret_type=private").await.json()), vec!["beta"]);
    assert_eq!(list("?mode=CBC").await.json()["total"], 5);
    assert_eq!(names(&list("?sort=name:desc&limit=2").await.json()), vec!["gamma", "delta"]);
    assert_eq!(
        names(&list("?sort=bit_length,name:desc").await.json()),
        vec!["alpha-1", "delta", "gamma", "alpha-2", "beta"]
    );
    assert_eq!(list("?created=gt:2000-01-01T00:00:00").await.json()["total"], 5);
    assert_eq!(list("?created=lt:2000-01-01").await.json()["total"], 0);
    assert_eq!(list("?acl_only=true").await.json()["total"], 0);
    for bad in [
        "?sort=colour",
        "?sort=name,name",
        "?sort=name:sideways",
        "?created=gt:x",
        "?updated=gt:2000-01-01,gte:2000-01-02",
    ] {
        list(bad).await.assert_error(400, "URI provided invalid query string parameters.");
    }
    // Other projects see none of them.
    let r = call(app, Method::GET, "/v1/secrets", Some(OTHER_PROJECT), &[], b"").await.json();
    assert!(!names(&r).iter().any(|n| n.starts_with("alpha")));
    // Items carry consumers from 1.1 on.
    let r = call(
        app,
        Method::GET,
        "/v1/secrets?limit=1",
        Some(p3),
        &[("openstack-api-version", "key-manager 1.1")],
        b"",
    )
    .await
    .json();
    assert_eq!(r["secrets"][0]["consumers"], json!([]));
}

async fn metadata(env: &Env) {
    let app = &env.app;
    let id = create(app, MEMBER, json!({})).await;
    let base = format!("/v1/secrets/{id}/metadata");
    let json_ct = [("content-type", "application/json")];
    let put_all = |body: serde_json::Value| {
        let base = base.clone();
        async move {
            call(app, Method::PUT, &base, Some(MEMBER), &json_ct, body.to_string().as_bytes()).await
        }
    };
    let r = call(app, Method::GET, &base, Some(MEMBER), &[], b"").await;
    assert_eq!(r.json(), json!({"metadata": {}}));
    let r = put_all(json!({"metadata": {"Colour": "blue", "x-1_y": "z"}})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), json!({"metadata_ref": format!("{BASE}/v1/secrets/{id}/metadata")}));
    let r = call(app, Method::GET, &base, Some(MEMBER), &[], b"").await;
    assert_eq!(r.json(), json!({"metadata": {"colour": "blue", "x-1_y": "z"}}));
    put_all(json!({"metadata": {"a": 1}}))
        .await
        .assert_error(400, "Invalid Metadata. Keys and Values must be Strings.");
    put_all(json!({"metadata": {"a b": "c"}}))
        .await
        .assert_error(400, "Invalid Key. Key must be URL safe.");
    put_all(json!({"other": {}})).await.assert_error(
        400,
        "Provided object does not match schema 'SecretMetadata': 'metadata' is a required property. Invalid property: 'None'",
    );
    let r =
        call(app, Method::PUT, &base, Some(MEMBER), &[("content-type", "text/plain")], b"{}").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let post = |body: serde_json::Value| {
        let base = base.clone();
        async move {
            call(app, Method::POST, &base, Some(MEMBER), &json_ct, body.to_string().as_bytes())
                .await
        }
    };
    let r = post(json!({"key": "Size", "value": "10"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), json!({"key": "size", "value": "10"}));
    assert_eq!(
        r.header("location"),
        Some(format!("{BASE}/v1/secrets/{id}/metadata/size").as_str())
    );
    post(json!({"key": "size", "value": "11"}))
        .await
        .assert_error(409, "Conflict. Key in request is already in the secret metadata");
    post(json!({"key": "k", "value": "v", "extra": 1})).await.assert_error(
        400,
        "Provided object does not match schema 'SecretMetadatum': Additional properties are not allowed ('extra' was unexpected). Invalid property: 'None'",
    );
    post(json!({"key": "k"})).await.assert_error(
        400,
        "Provided object does not match schema 'SecretMetadatum': 'value' is a required property. Invalid property: 'None'",
    );
    post(json!({"key": "bad key", "value": "v"}))
        .await
        .assert_error(400, "Invalid Key. Key must be URL safe.");

    let item = |key: &str| format!("{base}/{key}");
    let r = call(app, Method::GET, &item("size"), Some(MEMBER), &[], b"").await;
    assert_eq!(r.json(), json!({"key": "size", "value": "10"}));
    // Compared as written in the URL.
    call(app, Method::GET, &item("Size"), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret metadata not found.");
    let r = call(
        app,
        Method::PUT,
        &item("size"),
        Some(MEMBER),
        &json_ct,
        json!({"key": "size", "value": "12"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"key": "size", "value": "12"}));
    call(
        app,
        Method::PUT,
        &item("size"),
        Some(MEMBER),
        &json_ct,
        json!({"key": "other", "value": "1"}).to_string().as_bytes(),
    )
    .await
    .assert_error(409, "Key in request data does not match key in the ");
    call(
        app,
        Method::PUT,
        &item("nope"),
        Some(MEMBER),
        &json_ct,
        json!({"key": "nope", "value": "1"}).to_string().as_bytes(),
    )
    .await
    .assert_error(404, "Secret metadata not found.");
    assert_eq!(
        call(app, Method::DELETE, &item("size"), Some(MEMBER), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(app, Method::DELETE, &item("size"), Some(MEMBER), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    call(app, Method::GET, &item("size"), Some(MEMBER), &[], b"")
        .await
        .assert_error(404, "Secret metadata not found.");
    call(app, Method::POST, &item("size"), Some(MEMBER), &json_ct, b"{}")
        .await
        .assert_error(405, "");
    call(app, Method::PATCH, &base, Some(MEMBER), &json_ct, b"{}").await.assert_error(405, "");
    // Other projects: 403.
    call(app, Method::GET, &base, Some(OTHER_PROJECT), &[], b"").await
        .assert_error(403, "Secret metadata retrieval attempt not allowed - please review your user/project privileges");
    // Deleting the secret removes its metadata.
    assert_eq!(
        call(app, Method::DELETE, &path_of(&id), Some(MEMBER), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    let left = env.sql(&format!("SELECT COUNT(*) FROM secret_metadata WHERE secret_id = '{id}'"));
    assert!(left.trim() == "0" || left.trim() == "[(0,)]", "{left}");
}

on_each_database!(
    versions,
    create_and_read,
    validation,
    ids_methods_and_isolation,
    expiration,
    listing,
    metadata,
);

/// A base64 payload is decoded from the JSON string as Barbican's Python does: a string with
/// non-ASCII characters in it is refused (400), while ASCII characters outside the alphabet
/// are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_payload_with_non_ascii_characters_is_refused() {
    let env = Env::sqlite().await;
    for payload in ["\u{80}", "\u{1111}\u{ffff}", "AAEC\u{e9}"] {
        let r = post_json(
            &env.app,
            "/v1/secrets",
            MEMBER,
            json!({"payload": payload, "payload_content_type": "application/octet-stream",
                   "payload_content_encoding": "base64"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{payload:?}");
        assert_eq!(
            r.json()["description"],
            "Provided object does not match schema 'Secret': Invalid payload for \
             payload_content_encoding. Invalid property: 'payload'"
        );
    }
    let id = create(
        &env.app,
        MEMBER,
        json!({"payload": "AA!EC", "payload_content_type": "application/octet-stream",
               "payload_content_encoding": "base64"}),
    )
    .await;
    let r = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{id}/payload"),
        Some(MEMBER),
        &[("accept", "application/octet-stream")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, [0u8, 1, 2]);
    env.finish().await;
}
