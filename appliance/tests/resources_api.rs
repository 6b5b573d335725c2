//! Orders, containers, consumers, ACLs, quotas, secret stores and transport keys through the
//! in-process router with a real HSM proxy, on SQLite and on PostgreSQL; and the authorisation
//! matrix of the contract (owner, colleague, ACL user, other project; admin, member, reader).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[macro_use]
mod common;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use common::{BASE, Caller, Env, MEMBER, Resp, call, create, post_json};

const OTHER: Caller<'static> =
    Caller { project: "p2", user: Some("u2"), roles: Some("member,reader") };
const ADMIN: Caller<'static> =
    Caller { project: "p1", user: Some("a1"), roles: Some("admin,member,reader") };
const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

async fn send(env: &Env, method: Method, path: &str, caller: Caller<'_>, body: Value) -> Resp {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let headers: &[(&str, &str)] = if body.is_null() { &[] } else { &JSON };
    call(&env.app, method, path, Some(caller), headers, &bytes).await
}

fn id_of(reference: &Value) -> String {
    reference.as_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

/// Polls an order until it leaves PENDING (bounded).
async fn settle(env: &Env, order_ref: &str, caller: Caller<'_>) -> Value {
    let path = order_ref.strip_prefix(BASE).unwrap().to_owned();
    for _ in 0..500 {
        let o = send(env, Method::GET, &path, caller, Value::Null).await.json();
        if o["status"] != "PENDING" {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("order {order_ref} stayed PENDING");
}

async fn orders(env: &Env) {
    let schema = |reason: &str, prop: &str| {
        format!(
            "Provided object does not match schema 'Secret' within 'Order': {reason}. Invalid property: '{prop}'"
        )
    };
    // A key order: 202 at once, ACTIVE almost as fast, a symmetric secret of the right size.
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "key", "meta": {"name": "vk", "algorithm": "aes", "bit_length": 256, "mode": "cbc", "expiration": "2099-01-01T00:00:00Z"}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    let order_ref = r.json()["order_ref"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(order_ref.as_str()));
    let o = settle(env, &order_ref, MEMBER).await;
    assert_eq!(o["status"], "ACTIVE", "{o}");
    assert_eq!(o["type"], "key");
    assert_eq!(o["sub_status"], "Unknown");
    assert_eq!(o["creator_id"], "u1");
    assert_eq!(
        o["meta"],
        json!({"name": "vk", "algorithm": "aes", "bit_length": 256, "mode": "cbc", "expiration": "2099-01-01T00:00:00.000000"})
    );
    let secret = id_of(&o["secret_ref"]);
    let s =
        send(env, Method::GET, &format!("/v1/secrets/{secret}"), MEMBER, Value::Null).await.json();
    assert_eq!(
        (s["secret_type"].as_str(), s["bit_length"].as_i64(), s["name"].as_str()),
        (Some("symmetric"), Some(256), Some("vk"))
    );
    assert_eq!(s["expiration"], "2099-01-01T00:00:00");
    let key = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{secret}/payload"),
        Some(MEMBER),
        &[],
        b"",
    )
    .await;
    assert_eq!(key.body.len(), 32);
    // HMAC keys: any multiple of 8 bits.
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "key", "meta": {"algorithm": "hmacsha512", "bit_length": 512}}),
    )
    .await;
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(o["status"], "ACTIVE");
    assert_eq!(o["meta"]["name"], Value::Null);

    // Asymmetric: a container holding PEM private and public keys.
    for (alg, bits) in [("rsa", 2048), ("ec", 256)] {
        let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": {"name": "pair", "algorithm": alg, "bit_length": bits}})).await;
        let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
        assert_eq!(o["status"], "ACTIVE", "{o}");
        let c = send(
            env,
            Method::GET,
            &format!("/v1/containers/{}", id_of(&o["container_ref"])),
            MEMBER,
            Value::Null,
        )
        .await
        .json();
        assert_eq!(c["type"], alg);
        let refs: Vec<(String, String)> = c["secret_refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_owned(), id_of(&r["secret_ref"])))
            .collect();
        let get = |name: &str| refs.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let private = call(
            &env.app,
            Method::GET,
            &format!("/v1/secrets/{}/payload", get("private_key")),
            Some(MEMBER),
            &[],
            b"",
        )
        .await;
        assert!(private.body.starts_with(b"-----BEGIN PRIVATE KEY-----\n"), "{alg}");
        let public = call(
            &env.app,
            Method::GET,
            &format!("/v1/secrets/{}/payload", get("public_key")),
            Some(MEMBER),
            &[],
            b"",
        )
        .await;
        assert!(public.body.starts_with(b"-----BEGIN PUBLIC KEY-----\n"), "{alg}");
        let p = send(
            env,
            Method::GET,
            &format!("/v1/secrets/{}", get("private_key")),
            MEMBER,
            Value::Null,
        )
        .await
        .json();
        assert_eq!(p["secret_type"], "private");
    }
    // An unknown algorithm fails after the 202: ERROR with Barbican's code and text.
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "key", "meta": {"algorithm": "blowfish", "bit_length": 128}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(o["status"], "ERROR");
    assert_eq!(o["error_status_code"], "400");
    assert_eq!(
        o["error_reason"],
        "Process TypeOrder issue seen - Secret generate supported plugin not found.."
    );
    assert!(o.get("sub_status").is_none() && o.get("secret_ref").is_none());
    // DES keys of 64 bits are generated like any other length, except in FIPS mode.
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "key", "meta": {"algorithm": "DES", "bit_length": 64}}),
    )
    .await;
    assert_eq!(
        settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await["status"],
        if common::fips() { "ERROR" } else { "ACTIVE" }
    );
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "asymmetric", "meta": {"algorithm": "dsa", "bit_length": 2048}}),
    )
    .await;
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(
        (o["status"].as_str(), o["error_status_code"].as_str()),
        (Some("ERROR"), Some("400"))
    );
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": {"algorithm": "rsa", "bit_length": 2048, "passphrase": 7}})).await;
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(
        (o["status"].as_str(), o["error_status_code"].as_str(), o["error_reason"].as_str()),
        (
            Some("ERROR"),
            Some("400"),
            Some("Process TypeOrder issue seen - The passphrase must be a string.")
        )
    );

    // Validation before the 202.
    let cases = vec![
        (json!({"meta": {}}), "Provided object does not match schema 'Order': 'type' is a required property. Invalid property: 'None'".to_owned()),
        (json!({"type": "certificate", "meta": {}}), "Provided object does not match schema 'Order': 'certificate' is not one of ['key', 'asymmetric']. Invalid property: 'type'".to_owned()),
        (json!({"type": "key"}), "Provided object does not match schema 'Order': 'meta' is a required property. Invalid property: 'None'".to_owned()),
        (json!({"type": "key", "meta": {"bit_length": 256}}), schema("'algorithm' is required field for key type order", "meta")),
        (json!({"type": "asymmetric", "meta": {"algorithm": "rsa"}}), schema("'bit_length' is required field for asymmetric key type order", "meta")),
        (json!({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256, "payload": "x"}}), schema("'payload' not allowed for key type order", "meta")),
        (json!({"type": "key", "meta": {"algorithm": "aes", "bit_length": "256"}}), schema("'256' is not of type 'integer'", "bit_length")),
        (json!({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256, "expiration": "2000-01-01"}}), schema("'expiration' is before current time", "expiration")),
        (json!({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256, "payload_content_type": "text/html"}}),
         schema("payload_content_type is not one of ['text/plain', 'text/plain;charset=utf-8', 'text/plain; charset=utf-8', 'application/octet-stream', 'application/pkcs8']", "payload_content_type")),
        (json!({"type": "key", "meta": {"algorithm": "aes", "bit_length": 250}}), "Provided field value is not supported".to_owned()),
        (json!({"type": "asymmetric", "meta": {"algorithm": "ec", "bit_length": 512}}), "Provided field value is not supported".to_owned()),
    ];
    for (body, description) in cases {
        post_json(&env.app, "/v1/orders", MEMBER, body).await.assert_error(400, &description);
    }
    // List, filter, project isolation (404 for others), delete keeps the secret.
    let list = send(env, Method::GET, "/v1/orders?limit=2", MEMBER, Value::Null).await.json();
    assert_eq!(list["orders"].as_array().unwrap().len(), 2);
    assert_eq!(list["total"], 8);
    assert!(
        list["next"].as_str().unwrap().starts_with(&format!("{BASE}/v1/orders?limit=2&offset=2"))
    );
    let filtered =
        send(env, Method::GET, "/v1/orders?meta=hmacsha512", MEMBER, Value::Null).await.json();
    assert_eq!(filtered["total"], 1);
    let path = order_ref.strip_prefix(BASE).unwrap();
    send(env, Method::GET, path, OTHER, Value::Null).await.assert_error(404, "Order not found.");
    send(env, Method::GET, "/v1/orders/not-even-a-uuid", MEMBER, Value::Null)
        .await
        .assert_error(404, "Order not found.");
    send(env, Method::PUT, "/v1/orders", MEMBER, json!({}))
        .await
        .assert_error(405, "Order update is not supported.");
    assert_eq!(
        send(env, Method::DELETE, path, MEMBER, Value::Null).await.status,
        StatusCode::NO_CONTENT
    );
    send(env, Method::GET, path, MEMBER, Value::Null).await.assert_error(404, "Order not found.");
    assert_eq!(
        send(env, Method::GET, &format!("/v1/secrets/{secret}"), MEMBER, Value::Null).await.status,
        StatusCode::OK
    );
}

async fn containers(env: &Env) {
    // An asymmetric order's container: with the rsa container made below, the two listed.
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "asymmetric", "meta": {"name": "pair", "algorithm": "rsa", "bit_length": 2048}}),
    )
    .await;
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(o["status"], "ACTIVE", "{o}");
    let s1 = create(&env.app, MEMBER, json!({"name": "s1"})).await;
    let s2 = create(&env.app, MEMBER, json!({"name": "s2"})).await;
    let foreign = create(&env.app, OTHER, json!({"name": "theirs"})).await;
    let r = |id: &str| format!("{BASE}/v1/secrets/{id}");
    let post = |body: Value| post_json(&env.app, "/v1/containers", MEMBER, body);

    let res = post(json!({"name": "bundle", "type": "generic", "secret_refs": [{"name": "a", "secret_ref": r(&s1)}, {"secret_ref": r(&s2)}]})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&res.body));
    let cref = res.json()["container_ref"].as_str().unwrap().to_owned();
    let cid = cref.rsplit('/').next().unwrap().to_owned();
    let c =
        send(env, Method::GET, &format!("/v1/containers/{cid}"), MEMBER, Value::Null).await.json();
    assert_eq!(c["type"], "generic");
    assert_eq!(c["name"], "bundle");
    assert_eq!(
        c["secret_refs"],
        json!([{"name": "a", "secret_ref": r(&s1)}, {"name": null, "secret_ref": r(&s2)}])
    );
    assert_eq!(c["consumers"], json!([]));

    let cases = vec![
        (json!({"name": "x"}), 400, "Provided object does not match schema 'Container': 'type' is a required property. Invalid property: 'None'".to_owned()),
        (json!({"type": "box"}), 400, "Provided object does not match schema 'Container': 'box' is not one of ['generic', 'rsa', 'certificate']. Invalid property: 'type'".to_owned()),
        (json!({"type": "generic", "secret_refs": [{"secret_ref": r(&s1)}, {"secret_ref": r(&s2)}, {"name": "", "secret_ref": r(&s1)}]}), 400, "Duplicate reference names are not allowed".to_owned()),
        (json!({"type": "generic", "secret_refs": [{"name": "a", "secret_ref": r(&s1)}, {"name": "b", "secret_ref": r(&s1)}]}), 400, "Duplicate secret ids are not allowed".to_owned()),
        (json!({"type": "generic", "secret_refs": [{"name": "a", "secret_ref": s1.clone()}]}), 400, "Provided field value is not supported".to_owned()),
        (json!({"type": "rsa", "secret_refs": [{"name": "public_key", "secret_ref": r(&s1)}]}), 400, "The minimum required reference names are 'public_key' and'private_key' for RSA type".to_owned()),
        (json!({"type": "rsa", "secret_refs": [{"name": "cert", "secret_ref": r(&s1)}]}), 400, "only 'private_key', 'public_key' and 'private_key_passphrase' reference names are allowed for RSA type".to_owned()),
        (json!({"type": "certificate", "secret_refs": [{"name": "private_key", "secret_ref": r(&s1)}]}), 400, "The minimum required reference name is 'certificate' for Certificate type".to_owned()),
        (json!({"type": "generic", "secret_refs": [{"name": "t", "secret_ref": r(&foreign)}]}), 404, "Secret provided for 't' doesn't exist.".to_owned()),
    ];
    for (body, status, description) in cases {
        post(body).await.assert_error(status, &description);
    }
    let rsa = post(json!({"type": "rsa", "secret_refs": [{"name": "public_key", "secret_ref": r(&s1)}, {"name": "private_key", "secret_ref": r(&s2)}]})).await;
    assert_eq!(rsa.status, StatusCode::CREATED);
    let cert = post(json!({"type": "certificate", "secret_refs": [{"name": "certificate", "secret_ref": r(&s1)}]})).await;
    assert_eq!(cert.status, StatusCode::CREATED);
    let rsa_id = id_of(&rsa.json()["container_ref"]);

    // Container secrets: generic only; duplicates 409; removal.
    let cs = format!("/v1/containers/{cid}/secrets");
    let s3 = create(&env.app, MEMBER, json!({})).await;
    let r3 = send(env, Method::POST, &cs, MEMBER, json!({"name": "c", "secret_ref": r(&s3)})).await;
    assert_eq!(r3.status, StatusCode::CREATED);
    send(env, Method::POST, &cs, MEMBER, json!({"name": "c", "secret_ref": r(&s3)}))
        .await
        .assert_error(
            409,
            "Conflict. A secret with that name and ID is already stored in this container...",
        );
    send(
        env,
        Method::POST,
        &format!("/v1/containers/{rsa_id}/secrets"),
        MEMBER,
        json!({"secret_ref": r(&s3)}),
    )
    .await
    .assert_error(400, "Only 'generic' containers can be modified.");
    send(env, Method::POST, &cs, MEMBER, json!({"secret_ref": r(&foreign)}))
        .await
        .assert_error(404, "Secret provided doesn't exist.");
    assert_eq!(
        send(env, Method::DELETE, &cs, MEMBER, json!({"name": "c", "secret_ref": r(&s3)}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    send(env, Method::DELETE, &cs, MEMBER, json!({"name": "c", "secret_ref": r(&s3)}))
        .await
        .assert_error(404, "Secret provided is not in the container");

    // Container consumers.
    let cc = format!("/v1/containers/{cid}/consumers");
    let res =
        send(env, Method::POST, &cc, MEMBER, json!({"name": "lbaas", "URL": "http://lb/1"})).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["consumers"], json!([{"name": "lbaas", "URL": "http://lb/1"}]));
    send(env, Method::POST, &cc, MEMBER, json!({"name": "lbaas", "URL": "http://lb/1"})).await;
    let list = send(env, Method::GET, &cc, MEMBER, Value::Null).await.json();
    assert_eq!(list["total"], 1, "POST is idempotent");
    send(env, Method::POST, &cc, MEMBER, json!({"name": "x".repeat(37), "URL": "u"})).await.assert_error(
        400,
        &format!("Provided object does not match schema 'Consumer': '{}' is too long. Invalid property: 'name'", "x".repeat(37)),
    );
    send(env, Method::DELETE, &cc, MEMBER, json!({"name": "nope", "URL": "u"}))
        .await
        .assert_error(404, "Consumer not found.");
    assert_eq!(
        send(env, Method::DELETE, &cc, MEMBER, json!({"name": "lbaas", "URL": "http://lb/1"}))
            .await
            .status,
        StatusCode::OK
    );

    // List and filters, ids, isolation, 405s.
    // The rsa container above, and the one the asymmetric order made first.
    let list = send(env, Method::GET, "/v1/containers?type=rsa", MEMBER, Value::Null).await.json();
    assert_eq!(list["total"], 2);
    send(env, Method::GET, "/v1/containers/nope", MEMBER, Value::Null)
        .await
        .assert_error(404, "Not Found. Provided container id is invalid.");
    send(
        env,
        Method::GET,
        &format!("/v1/containers/{}", uuid::Uuid::new_v4()),
        MEMBER,
        Value::Null,
    )
    .await
    .assert_error(404, "Secrets container not found.");
    send(env, Method::GET, &format!("/v1/containers/{cid}"), OTHER, Value::Null)
        .await
        .assert_error(
            403,
            "Container retrieval attempt not allowed - please review your user/project privileges",
        );
    assert_eq!(
        send(env, Method::PUT, &format!("/v1/containers/{cid}"), MEMBER, json!({})).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Deleting a secret removes it from containers; deleting a container keeps its secrets.
    assert_eq!(
        send(env, Method::DELETE, &format!("/v1/secrets/{s2}"), MEMBER, Value::Null).await.status,
        StatusCode::NO_CONTENT
    );
    let c =
        send(env, Method::GET, &format!("/v1/containers/{cid}"), MEMBER, Value::Null).await.json();
    assert_eq!(c["secret_refs"].as_array().unwrap().len(), 1);
    assert_eq!(
        send(env, Method::DELETE, &format!("/v1/containers/{cid}"), MEMBER, Value::Null)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(env, Method::GET, &format!("/v1/secrets/{s1}"), MEMBER, Value::Null).await.status,
        StatusCode::OK
    );
}

async fn secret_consumers(env: &Env) {
    let id =
        create(&env.app, MEMBER, json!({"payload": "v", "payload_content_type": "text/plain"}))
            .await;
    let path = format!("/v1/secrets/{id}/consumers");
    let triple = json!({"service": "image", "resource_type": "image", "resource_id": "i-1"});
    let r = send(env, Method::POST, &path, MEMBER, triple.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    assert_eq!(
        body["consumers"],
        json!([{"service": "image", "resource_type": "image", "resource_id": "i-1"}])
    );
    assert_eq!(body["secret_ref"], format!("{BASE}/v1/secrets/{id}"));
    assert_eq!(r.header("location"), Some(format!("{BASE}/v1/consumers/{id}/consumers").as_str()));
    send(env, Method::POST, &path, MEMBER, triple.clone()).await;
    let list = send(env, Method::GET, &path, MEMBER, Value::Null).await.json();
    assert_eq!(list["total"], 1);
    assert_eq!(list["consumers"][0]["status"], "ACTIVE");
    send(env, Method::POST, &path, MEMBER, json!({"service": "image", "resource_type": "image"})).await.assert_error(
        400,
        "Provided object does not match schema 'Secret Consumer': 'resource_id' is a required property. Invalid property: 'None'",
    );
    // Deleting at 1.2 is refused while consumers exist (barbicanclient's SecretHasConsumers).
    let v12 = [("openstack-api-version", "key-manager 1.2")];
    call(&env.app, Method::DELETE, &format!("/v1/secrets/{id}"), Some(MEMBER), &v12, b"")
        .await
        .assert_error(
            400,
            "Secret deletion issue seen - Secret cannot be deleted as it has consumers..",
        );
    // Metadata shows them from 1.1.
    let m = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{id}"),
        Some(MEMBER),
        &[("openstack-api-version", "key-manager 1.1")],
        b"",
    )
    .await
    .json();
    assert_eq!(m["consumers"].as_array().unwrap().len(), 1);
    send(
        env,
        Method::DELETE,
        &path,
        MEMBER,
        json!({"service": "image", "resource_type": "image", "resource_id": "other"}),
    )
    .await
    .assert_error(404, "Consumer not found.");
    send(env, Method::GET, &format!("{path}/{}", uuid::Uuid::new_v4()), MEMBER, Value::Null).await
        .assert_error(403, "SecretConsumer retrieval attempt not allowed - please review your user/project privileges");
    send(env, Method::GET, &format!("{path}/nope"), MEMBER, Value::Null)
        .await
        .assert_error(404, "Not Found. Provided consumer id is invalid.");
    let r = send(env, Method::DELETE, &path, MEMBER, triple).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["consumers"], json!([]));
    // With force, consumers do not stop a delete.
    send(
        env,
        Method::POST,
        &path,
        MEMBER,
        json!({"service": "s", "resource_type": "t", "resource_id": "r"}),
    )
    .await;
    let r = call(
        &env.app,
        Method::DELETE,
        &format!("/v1/secrets/{id}?force=true"),
        Some(MEMBER),
        &v12,
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

async fn acls(env: &Env) {
    let owner = MEMBER;
    let colleague = Caller { project: "p1", user: Some("u9"), roles: Some("member,reader") };
    let listed = Caller { project: "p7", user: Some("friend"), roles: Some("member") };
    let id =
        create(&env.app, owner, json!({"payload": "shared", "payload_content_type": "text/plain"}))
            .await;
    let acl = format!("/v1/secrets/{id}/acl");
    let payload = format!("/v1/secrets/{id}/payload");
    assert_eq!(
        send(env, Method::GET, &acl, owner, Value::Null).await.json(),
        json!({"read": {"project-access": true}})
    );
    // Private, shared with one user of another project.
    let r = send(
        env,
        Method::PUT,
        &acl,
        owner,
        json!({"read": {"users": ["friend", "friend"], "project-access": false}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"acl_ref": format!("{BASE}/v1/secrets/{id}/acl")}));
    let got = send(env, Method::GET, &acl, owner, Value::Null).await.json();
    assert_eq!(got["read"]["users"], json!(["friend"]));
    assert_eq!(got["read"]["project-access"], false);
    assert!(got["read"]["created"].is_string());
    assert_eq!(send(env, Method::GET, &payload, owner, Value::Null).await.status, StatusCode::OK);
    assert_eq!(send(env, Method::GET, &payload, listed, Value::Null).await.body, b"shared");
    assert_eq!(
        send(env, Method::GET, &payload, colleague, Value::Null).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(env, Method::GET, &payload, ADMIN, Value::Null).await.status, StatusCode::OK);
    assert_eq!(
        send(env, Method::DELETE, &format!("/v1/secrets/{id}"), listed, Value::Null).await.status,
        StatusCode::FORBIDDEN
    );
    // acl_only lists what is shared with the caller, across projects.
    let shared =
        send(env, Method::GET, "/v1/secrets?acl_only=true", listed, Value::Null).await.json();
    assert_eq!(shared["total"], 1);
    assert_eq!(shared["secrets"][0]["secret_ref"], format!("{BASE}/v1/secrets/{id}"));
    // PATCH merges; PUT with a falsy entry deletes; DELETE answers 200 with `null`.
    let r = send(env, Method::PATCH, &acl, owner, json!({"read": {"project-access": true}})).await;
    assert_eq!(r.status, StatusCode::OK);
    let got = send(env, Method::GET, &acl, owner, Value::Null).await.json();
    assert_eq!(
        (got["read"]["project-access"].as_bool(), got["read"]["users"].clone()),
        (Some(true), json!(["friend"]))
    );
    assert_eq!(
        send(env, Method::GET, &payload, colleague, Value::Null).await.status,
        StatusCode::OK
    );
    send(env, Method::PUT, &acl, owner, json!({"write": {}})).await.assert_error(
        400,
        "Provided object does not match schema 'ACL': Additional properties are not allowed ('write' was unexpected). Invalid property: 'None'",
    );
    send(env, Method::PUT, &acl, owner, json!({"read": {}})).await;
    assert_eq!(
        send(env, Method::GET, &acl, owner, Value::Null).await.json(),
        json!({"read": {"project-access": true}})
    );
    send(env, Method::PUT, &acl, owner, json!({"read": {"users": ["friend"]}})).await;
    let r = send(env, Method::DELETE, &acl, owner, Value::Null).await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, b"null".as_slice()));
    assert_eq!(
        send(env, Method::GET, &payload, listed, Value::Null).await.status,
        StatusCode::FORBIDDEN
    );
    // ACL management is not for listed users or other projects.
    send(env, Method::PUT, &acl, OTHER, json!({"read": {}})).await.assert_error(
        403,
        "SecretACL(s) Update attempt not allowed - please review your user/project privileges",
    );
    // Containers have ACLs too.
    let c = post_json(&env.app, "/v1/containers", owner, json!({"type": "generic"})).await;
    let cid = id_of(&c.json()["container_ref"]);
    let r = send(
        env,
        Method::PUT,
        &format!("/v1/containers/{cid}/acl"),
        owner,
        json!({"read": {"users": ["friend"], "project-access": false}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        send(env, Method::GET, &format!("/v1/containers/{cid}"), listed, Value::Null).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(env, Method::GET, &format!("/v1/containers/{cid}"), colleague, Value::Null)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

async fn quotas(env: &Env) {
    let q = Caller { project: "quota-p", user: Some("q"), roles: Some("admin,member,reader") };
    let r = send(env, Method::GET, "/v1/quotas", q, Value::Null).await;
    assert_eq!(
        r.json(),
        json!({"quotas": {"secrets": -1, "orders": -1, "containers": -1, "consumers": -1, "cas": -1}})
    );
    send(env, Method::GET, "/v1/project-quotas/quota-p", q, Value::Null)
        .await
        .assert_error(404, "Project quotas not found.");
    let r = send(
        env,
        Method::PUT,
        "/v1/project-quotas/quota-p",
        q,
        json!({"project_quotas": {"secrets": 1, "containers": 0}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    send(
        env,
        Method::PUT,
        "/v1/project-quotas/quota-p",
        q,
        json!({"project_quotas": {"orders": 5}}),
    )
    .await;
    let r = send(env, Method::GET, "/v1/project-quotas/quota-p", q, Value::Null).await.json();
    assert_eq!(
        r,
        json!({"project_quotas": {"secrets": 1, "orders": 5, "containers": 0, "consumers": null, "cas": null}}),
        "PUT merges"
    );
    let r = send(env, Method::GET, "/v1/quotas", q, Value::Null).await.json();
    assert_eq!(r["quotas"]["secrets"], 1);
    assert_eq!(r["quotas"]["consumers"], -1);
    create(&env.app, q, json!({})).await;
    post_json(&env.app, "/v1/secrets", q, json!({})).await.assert_error(
        403,
        "Secret creation issue seen - Creation not allowed because a quota has been reached.",
    );
    post_json(&env.app, "/v1/containers", q, json!({"type": "generic"})).await.assert_error(
        403,
        "Container creation issue seen - Creation not allowed because a quota has been reached.",
    );
    // Bad bodies still get 400 first.
    post_json(&env.app, "/v1/secrets", q, json!({"bit_length": "x"}))
        .await
        .status
        .as_u16()
        .eq(&400)
        .then_some(())
        .unwrap();
    send(env, Method::PUT, "/v1/project-quotas/quota-p", q, json!({"project_quotas": {"widgets": 1}})).await.assert_error(
        400,
        "Provided object does not match schema 'Project Quota': Additional properties are not allowed ('widgets' was unexpected). Invalid property: 'project_quotas'",
    );
    let r = call(&env.app, Method::PUT, "/v1/project-quotas/quota-p", Some(q), &JSON, b"").await;
    r.assert_error(400, "Project Quotas issue seen - No data supplied to process..");
    let list = send(env, Method::GET, "/v1/project-quotas", q, Value::Null).await.json();
    assert!(
        list["project_quotas"].as_array().unwrap().iter().any(|p| p["project_id"] == "quota-p")
    );
    // Only admins manage quotas; readers may read their own.
    send(env, Method::GET, "/v1/project-quotas", MEMBER, Value::Null).await.assert_error(
        403,
        "Project Quotas attempt not allowed - please review your user/project privileges",
    );
    assert_eq!(
        send(env, Method::DELETE, "/v1/project-quotas/quota-p", q, Value::Null).await.status,
        StatusCode::NO_CONTENT
    );
    send(env, Method::DELETE, "/v1/project-quotas/quota-p", q, Value::Null)
        .await
        .assert_error(404, "Project quotas not found.");
    assert_eq!(post_json(&env.app, "/v1/secrets", q, json!({})).await.status, StatusCode::CREATED);
}

async fn stores_and_transport_keys(env: &Env) {
    let list = send(env, Method::GET, "/v1/secret-stores", MEMBER, Value::Null).await.json();
    let stores = list["secret_stores"].as_array().unwrap();
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0]["global_default"], true);
    let store_ref = stores[0]["secret_store_ref"].as_str().unwrap().to_owned();
    let store_id = store_ref.rsplit('/').next().unwrap().to_owned();
    let default = send(env, Method::GET, "/v1/secret-stores/global-default", MEMBER, Value::Null)
        .await
        .json();
    assert_eq!(default["secret_store_ref"], store_ref);
    send(env, Method::GET, "/v1/secret-stores/preferred", MEMBER, Value::Null)
        .await
        .assert_error(404, "Not Found. No preferred secret store defined for this project.");
    assert_eq!(
        send(
            env,
            Method::POST,
            &format!("/v1/secret-stores/{store_id}/preferred"),
            ADMIN,
            Value::Null
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    send(env, Method::POST, &format!("/v1/secret-stores/{store_id}/preferred"), MEMBER, Value::Null).await
        .assert_error(403, "Setting preferred secret store attempt not allowed - please review your user/project privileges");
    let preferred =
        send(env, Method::GET, "/v1/secret-stores/preferred", MEMBER, Value::Null).await.json();
    assert_eq!(preferred["secret_store_ref"], store_ref);
    assert_eq!(
        send(
            env,
            Method::DELETE,
            &format!("/v1/secret-stores/{store_id}/preferred"),
            ADMIN,
            Value::Null
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    send(env, Method::GET, "/v1/secret-stores/unknown", MEMBER, Value::Null)
        .await
        .assert_error(404, "Not Found. Secret store not found.");
    let reader_only = Caller { project: "p1", user: None, roles: Some("reader") };
    assert_eq!(
        send(env, Method::GET, "/v1/secret-stores", reader_only, Value::Null).await.status,
        StatusCode::OK
    );

    let tk = send(env, Method::GET, "/v1/transport_keys", MEMBER, Value::Null).await.json();
    assert_eq!(tk, json!({"transport_keys": [], "total": 0}));
    send(env, Method::GET, "/v1/transport_keys/abc", MEMBER, Value::Null)
        .await
        .assert_error(404, "Not Found. Provided transport key id is invalid.");
    send(
        env,
        Method::POST,
        "/v1/transport_keys",
        MEMBER,
        json!({"plugin_name": "p", "transport_key": "k"}),
    )
    .await
    .assert_error(
        403,
        "Transport Key Creation attempt not allowed - please review your user/project privileges",
    );
    send(
        env,
        Method::POST,
        "/v1/transport_keys",
        ADMIN,
        json!({"plugin_name": "p", "transport_key": "k"}),
    )
    .await
    .assert_error(400, "Transport Key Creation issue seen - no backend provides transport keys.");
}

/// The contract's table: who may do what to a secret, with and without a private ACL.
async fn authorization_matrix(env: &Env) {
    let owner = Caller { project: "pm", user: Some("owner"), roles: Some("member,reader") };
    let colleague = Caller { project: "pm", user: Some("colleague"), roles: Some("member,reader") };
    let project_admin =
        Caller { project: "pm", user: Some("padmin"), roles: Some("admin,member,reader") };
    let reader = Caller { project: "pm", user: Some("reader"), roles: Some("reader") };
    let listed = Caller { project: "px", user: Some("listed"), roles: Some("member,reader") };
    let outsider = Caller { project: "px", user: Some("outsider"), roles: Some("member,reader") };
    let foreign_admin =
        Caller { project: "px", user: Some("fadmin"), roles: Some("admin,member,reader") };
    // (caller, [metadata GET, payload GET, PUT-able (two-step), user metadata GET, ACL GET,
    //  consumers GET]) for an entity without ACL and for a private one with `listed` on it.
    let expectations: Vec<(Caller<'_>, [bool; 6], [bool; 6])> = vec![
        (owner, [true; 6], [true; 6]),
        (colleague, [true; 6], [false; 6]),
        (project_admin, [true; 6], [true; 6]),
        (reader, [false; 6], [false; 6]),
        (listed, [false; 6], [true, true, false, true, false, true]),
        (outsider, [false; 6], [false; 6]),
        (
            foreign_admin,
            [true, false, false, false, false, false],
            [true, false, false, false, false, false],
        ),
    ];
    for private in [false, true] {
        for (caller, open, closed) in &expectations {
            let expect = if private { closed } else { open };
            let id = create(&env.app, owner, json!({})).await;
            if private {
                let r = send(
                    env,
                    Method::PUT,
                    &format!("/v1/secrets/{id}/acl"),
                    owner,
                    json!({"read": {"users": ["listed"], "project-access": false}}),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK);
            }
            let probes = [
                (Method::GET, format!("/v1/secrets/{id}"), Value::Null),
                (Method::GET, format!("/v1/secrets/{id}/payload"), Value::Null),
                (Method::PUT, format!("/v1/secrets/{id}"), Value::Null),
                (Method::GET, format!("/v1/secrets/{id}/metadata"), Value::Null),
                (Method::GET, format!("/v1/secrets/{id}/acl"), Value::Null),
                (Method::GET, format!("/v1/secrets/{id}/consumers"), Value::Null),
            ];
            for (i, (method, path, body)) in probes.into_iter().enumerate() {
                let r = if method == Method::PUT {
                    call(
                        &env.app,
                        method.clone(),
                        &path,
                        Some(*caller),
                        &[("content-type", "text/plain")],
                        b"x",
                    )
                    .await
                } else {
                    send(env, method.clone(), &path, *caller, body).await
                };
                let allowed = r.status != StatusCode::FORBIDDEN;
                assert_eq!(
                    allowed,
                    expect[i],
                    "{} {method} {path} private={private}: {}",
                    caller.user.unwrap(),
                    r.status
                );
            }
        }
    }
}

on_each_database!(
    orders,
    containers,
    secret_consumers,
    acls,
    quotas,
    stores_and_transport_keys,
    authorization_matrix,
);

/// An order's empty `payload_content_type` is no type at all, as in Barbican: the order is
/// accepted (202) and its secret takes the default, application/octet-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_with_empty_payload_content_type_is_accepted() {
    let env = Env::sqlite().await;
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "key", "meta": {"name": "e", "algorithm": "aes", "bit_length": 256,
                                       "mode": "cbc", "payload_content_type": ""}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    let order_ref = r.json()["order_ref"].as_str().unwrap().to_owned();
    let o = settle(&env, &order_ref, MEMBER).await;
    assert_eq!(o["status"], "ACTIVE", "{o}");
    let secret = format!("/v1/secrets/{}", id_of(&o["secret_ref"]));
    let s = send(&env, Method::GET, &secret, MEMBER, Value::Null).await.json();
    assert_eq!(s["content_types"]["default"], "application/octet-stream", "{s}");
    // A type that is there must still be one of Barbican's.
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "key", "meta": {"name": "e", "algorithm": "aes", "bit_length": 256,
                                       "mode": "cbc", "payload_content_type": "text/html"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    env.finish().await;
}

/// ACL writes that run at once all succeed on SQLite: each writing transaction takes the
/// write lock before it reads, so it waits its turn instead of failing (500) with
/// "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acl_writes_all_succeed_on_sqlite() {
    let env = Env::sqlite().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            create(&env.app, MEMBER, json!({"payload": "s", "payload_content_type": "text/plain"}))
                .await,
        );
    }
    let mut tasks = Vec::new();
    for round in 0..8 {
        for id in &ids {
            let app = env.app.clone();
            let acl = format!("/v1/secrets/{id}/acl");
            tasks.push(tokio::spawn(async move {
                let (method, body) = match round % 3 {
                    0 => (
                        Method::PUT,
                        json!({"read": {"users": ["a", "b"], "project-access": false}}),
                    ),
                    1 => (Method::PATCH, json!({"read": {"users": ["c"]}})),
                    _ => (Method::DELETE, Value::Null),
                };
                let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
                let headers: &[(&str, &str)] = if body.is_null() { &[] } else { &JSON };
                let r = call(&app, method.clone(), &acl, Some(MEMBER), headers, &bytes).await;
                (method, r.status, String::from_utf8_lossy(&r.body).into_owned())
            }));
        }
    }
    for task in tasks {
        let (method, status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method} {body}");
    }
    env.finish().await;
}

/// With `[secretstore] enable_multiple_secret_stores = false` every secret-store route answers
/// as in Barbican's default single-store configuration: 404 with its message, after the policy
/// check for the list, the global default and the preferred store, before any for a store by
/// id. Secrets are still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_store_routes_answer_404_with_multiple_stores_disabled() {
    const NOT_ENABLED: &str =
        "Not Found. Multiple backends support is not enabled in service configuration.";
    let env = Env::sqlite_configured(|c| c.secretstore.enable_multiple_secret_stores = false).await;
    let no_reader = Caller { project: "p1", user: Some("o1"), roles: Some("observer") };
    let store = "/v1/secret-stores/4f1c7d5e-8a2b-4c3d-9e6f-0a1b2c3d4e5f";
    let authorised = [
        ("/v1/secret-stores", "List available secret stores"),
        ("/v1/secret-stores/global-default", "Retrieve global default secret store"),
        ("/v1/secret-stores/preferred", "Retrieve project preferred store"),
    ];
    for (path, operation) in authorised {
        send(&env, Method::GET, path, MEMBER, Value::Null).await.assert_error(404, NOT_ENABLED);
        send(&env, Method::GET, path, no_reader, Value::Null).await.assert_error(
            403,
            &format!(
                "{operation} attempt not allowed - please review your user/project privileges"
            ),
        );
    }
    let by_id = [
        (Method::GET, store.to_owned()),
        (Method::POST, format!("{store}/preferred")),
        (Method::DELETE, format!("{store}/preferred")),
        (Method::GET, "/v1/secret-stores/unknown".to_owned()),
    ];
    for (method, path) in by_id {
        for caller in [ADMIN, no_reader] {
            send(&env, method.clone(), &path, caller, Value::Null)
                .await
                .assert_error(404, NOT_ENABLED);
        }
    }
    assert_eq!(
        send(&env, Method::POST, "/v1/secret-stores", ADMIN, Value::Null).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let id =
        create(&env.app, MEMBER, json!({"payload": "s", "payload_content_type": "text/plain"}))
            .await;
    let payload =
        send(&env, Method::GET, &format!("/v1/secrets/{id}/payload"), MEMBER, Value::Null).await;
    assert_eq!(payload.body, b"s");
    env.finish().await;
}

/// With `[hsm] fips = true` orders ask the HSM for approved algorithms and sizes only: DES,
/// 3DES, short AES and short HMAC keys fail as Barbican fails an algorithm its backend lacks;
/// approved ones, key pairs included, are generated as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fips_mode_refuses_orders_for_non_approved_algorithms() {
    let env = Env::sqlite_configured(|c| c.hsm.fips = true).await;
    let order = |meta: Value| {
        let env = &env;
        async move {
            let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "key", "meta": meta}))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
            settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await
        }
    };
    for meta in [
        json!({"algorithm": "des", "bit_length": 64}),
        json!({"algorithm": "3des", "bit_length": 192}),
        json!({"algorithm": "aes", "bit_length": 64}),
        json!({"algorithm": "aes", "bit_length": 128, "mode": "xts"}),
        json!({"algorithm": "hmacsha1", "bit_length": 64}),
    ] {
        let o = order(meta.clone()).await;
        assert_eq!(o["status"], "ERROR", "{meta}: {o}");
        assert_eq!(o["error_status_code"], "400", "{meta}: {o}");
        assert_eq!(
            o["error_reason"],
            "Process TypeOrder issue seen - Secret generate supported plugin not found..",
            "{meta}: {o}"
        );
    }
    for meta in [
        json!({"algorithm": "aes", "bit_length": 256}),
        json!({"algorithm": "aes", "bit_length": 512, "mode": "xts"}),
        json!({"algorithm": "hmacsha256", "bit_length": 256}),
    ] {
        let o = order(meta.clone()).await;
        assert_eq!(o["status"], "ACTIVE", "{meta}: {o}");
    }
    let r = post_json(
        &env.app,
        "/v1/orders",
        MEMBER,
        json!({"type": "asymmetric", "meta": {"algorithm": "ec", "bit_length": 256}}),
    )
    .await;
    let o = settle(&env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(o["status"], "ACTIVE", "{o}");
    env.finish().await;
}

/// The named secrets of the container an asymmetric order made, by name: (id, payload).
async fn ordered_pair(env: &Env, meta: Value) -> Vec<(String, String, Vec<u8>)> {
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": meta}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    let o = settle(env, r.json()["order_ref"].as_str().unwrap(), MEMBER).await;
    assert_eq!(o["status"], "ACTIVE", "{o}");
    let container = format!("/v1/containers/{}", id_of(&o["container_ref"]));
    let c = send(env, Method::GET, &container, MEMBER, Value::Null).await.json();
    let mut secrets = Vec::new();
    for r in c["secret_refs"].as_array().unwrap() {
        let id = id_of(&r["secret_ref"]);
        let payload = format!("/v1/secrets/{id}/payload");
        let body = call(&env.app, Method::GET, &payload, Some(MEMBER), &[], b"").await.body;
        secrets.push((r["name"].as_str().unwrap().to_owned(), id, body));
    }
    secrets
}

/// An asymmetric order with a passphrase, as in Barbican: the private key is PEM `ENCRYPTED
/// PRIVATE KEY` (PKCS#8, PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC) that opens with that
/// passphrase only and matches the public key, and the container holds the passphrase too, as
/// `private_key_passphrase`. An empty passphrase protects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_order_with_passphrase_encrypts_the_private_key() {
    use pkcs8::der::pem::PemLabel;
    use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::traits::PublicKeyParts;

    /// The private key in `pem` opened with `passphrase`, as DER PKCS#8.
    fn open(pem: &[u8], passphrase: &str) -> Option<Vec<u8>> {
        let (label, doc) =
            pkcs8::der::Document::from_pem(std::str::from_utf8(pem).unwrap()).ok()?;
        assert_eq!(label, EncryptedPrivateKeyInfo::PEM_LABEL);
        let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
        let pbes2 = info.encryption_algorithm.pbes2().unwrap();
        assert_eq!(pbes2.encryption.oid(), pkcs8::pkcs5::pbes2::AES_256_CBC_OID);
        let pbkdf2 = pbes2.kdf.pbkdf2().unwrap();
        assert_eq!(pbkdf2.prf, pkcs8::pkcs5::pbes2::Pbkdf2Prf::HmacWithSha256);
        assert!(pbkdf2.iteration_count >= 600_000, "{}", pbkdf2.iteration_count);
        let der = info.decrypt(passphrase).ok()?;
        PrivateKeyInfo::try_from(der.as_bytes()).ok()?;
        Some(der.as_bytes().to_vec())
    }

    let env = Env::sqlite().await;
    let phrase = "correct horse battery staple";
    let secrets = ordered_pair(
        &env,
        json!({"name": "pair", "algorithm": "rsa", "bit_length": 2048, "passphrase": phrase}),
    )
    .await;
    let names: Vec<&str> = secrets.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3);
    for name in ["private_key", "public_key", "private_key_passphrase"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let get = |name: &str| secrets.iter().find(|(n, _, _)| n == name).unwrap();
    let (_, private_id, private_pem) = get("private_key");
    assert!(private_pem.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
    let der = open(private_pem, phrase).expect("the passphrase opens the private key");
    assert!(open(private_pem, "correct horse battery stapler").is_none());
    assert!(open(private_pem, "").is_none());
    let private = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap();
    assert_eq!(private.size() * 8, 2048);
    let public_pem = std::str::from_utf8(&get("public_key").2).unwrap().to_owned();
    let public = rsa::RsaPublicKey::from_public_key_pem(&public_pem).unwrap();
    assert_eq!(private.to_public_key(), public);
    let (_, phrase_id, stored_phrase) = get("private_key_passphrase");
    assert_eq!(stored_phrase, phrase.as_bytes());
    for (id, kind) in [(private_id, "private"), (phrase_id, "passphrase")] {
        let s = send(&env, Method::GET, &format!("/v1/secrets/{id}"), MEMBER, Value::Null).await;
        assert_eq!(s.json()["secret_type"], kind);
        assert_eq!(s.json()["name"], "pair");
    }

    // EC keys are protected the same way.
    let secrets =
        ordered_pair(&env, json!({"algorithm": "ec", "bit_length": 256, "passphrase": phrase}))
            .await;
    let private_pem = &secrets.iter().find(|(n, _, _)| n == "private_key").unwrap().2;
    let der = open(private_pem, phrase).expect("the passphrase opens the EC private key");
    let info = PrivateKeyInfo::try_from(der.as_slice()).unwrap();
    assert_eq!(info.algorithm.oid, pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"));
    assert!(open(private_pem, "another").is_none());

    // An empty passphrase: a plain private key and no passphrase in the container.
    let secrets =
        ordered_pair(&env, json!({"algorithm": "rsa", "bit_length": 2048, "passphrase": ""})).await;
    assert_eq!(secrets.len(), 2);
    let private_pem = &secrets.iter().find(|(n, _, _)| n == "private_key").unwrap().2;
    assert!(private_pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
    env.finish().await;
}
