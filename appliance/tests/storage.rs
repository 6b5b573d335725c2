//! What the database holds (ciphertext only, order passphrases included), what a lost proxy
//! does (clear 503s, no rows left behind, recovery without a restart), and concurrent first
//! secrets of a project.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[macro_use]
mod common;

use hyper::{Method, StatusCode};
use serde_json::json;

use common::{Db, Env, MEMBER, call, create, post_json};

const MARKER: &str = "PLAINTEXT-MARKER-7f3c9a1e52d84b06";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn store_markers(env: &Env) -> Vec<String> {
    let app = &env.app;
    let text =
        create(app, MEMBER, json!({"payload": MARKER, "payload_content_type": "text/plain"})).await;
    let b64 = base64_of(MARKER.as_bytes());
    let binary = create(app, MEMBER, json!({"payload": b64, "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"})).await;
    let two_step = create(app, MEMBER, json!({})).await;
    let r = call(
        app,
        Method::PUT,
        &format!("/v1/secrets/{two_step}"),
        Some(MEMBER),
        &[("content-type", "text/plain")],
        MARKER.as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The API still returns the plaintext: it is in the HSM-sealed rows, just not readable there.
    for id in [&text, &binary, &two_step] {
        let r = call(
            app,
            Method::GET,
            &format!("/v1/secrets/{id}/payload"),
            Some(MEMBER),
            &[("accept", "application/octet-stream")],
            b"",
        )
        .await;
        assert_eq!(r.body, MARKER.as_bytes());
    }
    vec![text, binary, two_step]
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn assert_absent(haystack: &[u8], what: &str) {
    assert_absent_of(haystack, MARKER, what);
}

/// Asserts that `haystack` holds `plaintext` neither as is nor in hex or base64.
fn assert_absent_of(haystack: &[u8], plaintext: &str, what: &str) {
    let marker = plaintext.as_bytes();
    let hex_marker = hex(marker);
    let b64 = base64_of(marker);
    for needle in [marker, hex_marker.as_bytes(), b64.as_bytes()] {
        assert!(
            !haystack.windows(needle.len()).any(|w| w == needle),
            "{what} holds the plaintext ({})",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_at_rest_on_sqlite() {
    let env = Env::sqlite().await;
    let ids = store_markers(&env).await;
    let Db::Sqlite(path) = &env.db else { unreachable!() };
    // Everything SQLite wrote: the database, its write-ahead log and shared memory.
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        bytes.extend(common::file_bytes(&std::path::PathBuf::from(format!(
            "{}{suffix}",
            path.display()
        ))));
    }
    assert!(bytes.len() > 4096, "the database files were read");
    assert!(bytes.windows(ids[0].len()).any(|w| w == ids[0].as_bytes()), "the scan sees the rows");
    assert_absent(&bytes, "the SQLite files");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_at_rest_on_postgres() {
    let Some(env) = Env::postgres().await else { return };
    let ids = store_markers(&env).await;
    let Db::Postgres(db) = &env.db else { unreachable!() };
    let dump =
        std::process::Command::new("pg_dump").arg(&db.url).arg("--data-only").output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(String::from_utf8_lossy(&dump.stdout).contains(&ids[0]), "the dump holds the rows");
    assert_absent(&dump.stdout, "the PostgreSQL dump");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_proxy_gives_503s_leaves_no_rows_and_recovers() {
    let mut env = Env::sqlite().await;
    let before = create(
        &env.app,
        MEMBER,
        json!({"payload": "before", "payload_content_type": "text/plain"}),
    )
    .await;
    let count = |env: &Env| env.sql("SELECT COUNT(*) FROM secrets");
    let rows_before = count(&env);

    env.stack.stop_proxy().await;
    let r = post_json(
        &env.app,
        "/v1/secrets",
        MEMBER,
        json!({"payload": "during", "payload_content_type": "text/plain"}),
    )
    .await;
    r.assert_error(503, "Secret creation issue seen - the HSM is unavailable, please retry later.");
    let r = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{before}/payload"),
        Some(MEMBER),
        &[],
        b"",
    )
    .await;
    r.assert_error(
        503,
        "Secret payload retrieval issue seen - the HSM is unavailable, please retry later.",
    );
    let empty = create(&env.app, MEMBER, json!({})).await;
    let r = call(
        &env.app,
        Method::PUT,
        &format!("/v1/secrets/{empty}"),
        Some(MEMBER),
        &[("content-type", "text/plain")],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Nothing half-written: the failed create left no row, the failed PUT no payload.
    assert_eq!(
        count(&env).replace(|c: char| !c.is_ascii_digit(), "").parse::<i64>().unwrap(),
        rows_before.replace(|c: char| !c.is_ascii_digit(), "").parse::<i64>().unwrap() + 1
    );
    let r =
        call(&env.app, Method::GET, &format!("/v1/secrets/{empty}"), Some(MEMBER), &[], b"").await;
    assert!(r.json().get("content_types").is_none());
    // Metadata does not need the HSM and keeps working.
    assert_eq!(
        call(&env.app, Method::GET, "/v1/secrets", Some(MEMBER), &[], b"").await.status,
        StatusCode::OK
    );

    // The proxy comes back (same address): the same appliance serves again, no restart.
    env.stack.restart_proxy().await.unwrap();
    let r = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{before}/payload"),
        Some(MEMBER),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    assert_eq!(r.body, b"before");
    let after =
        create(&env.app, MEMBER, json!({"payload": "after", "payload_content_type": "text/plain"}))
            .await;
    let r = call(
        &env.app,
        Method::GET,
        &format!("/v1/secrets/{after}/payload"),
        Some(MEMBER),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    assert_eq!(r.body, b"after");
    let r = call(
        &env.app,
        Method::PUT,
        &format!("/v1/secrets/{empty}"),
        Some(MEMBER),
        &[("content-type", "text/plain")],
        b"x",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_secrets_share_one_project_kek() {
    let env = Env::sqlite().await;
    let app = env.app.clone();
    let caller = common::Caller { project: "fresh", user: Some("u"), roles: Some("member") };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let id = create(
                &app,
                caller,
                json!({"payload": format!("secret {i}"), "payload_content_type": "text/plain"}),
            )
            .await;
            (i, id)
        }));
    }
    for t in tasks {
        let (i, id) = t.await.unwrap();
        let r = call(
            &app,
            Method::GET,
            &format!("/v1/secrets/{id}/payload"),
            Some(caller),
            &[("accept", "text/plain")],
            b"",
        )
        .await;
        assert_eq!(r.body, format!("secret {i}").as_bytes());
    }
    let keks =
        env.sql("SELECT COUNT(*) FROM project_keks WHERE project_id = 'fresh' AND active = 1");
    assert!(keks.contains('1') && !keks.contains('2'), "one active KEK: {keks}");
    let used = env.sql("SELECT COUNT(DISTINCT kek_id) FROM secrets WHERE project_id = 'fresh'");
    assert!(used.contains('1') && !used.contains('2'), "all secrets under it: {used}");
    env.finish().await;
}

/// A passphrase given to an asymmetric order (a marker that no ciphertext holds by chance).
const PASSPHRASE: &str = "PASSPHRASE-MARKER-5e0b7d2a91c3f468";

/// Every byte the database holds: SQLite's files (database, write-ahead log, shared memory), or
/// a data dump of PostgreSQL.
fn database_bytes(env: &Env) -> Vec<u8> {
    match &env.db {
        Db::Sqlite(path) => ["", "-wal", "-shm"]
            .iter()
            .flat_map(|suffix| {
                common::file_bytes(&std::path::PathBuf::from(format!("{}{suffix}", path.display())))
            })
            .collect(),
        Db::Postgres(db) => {
            let dump = std::process::Command::new("pg_dump")
                .arg(&db.url)
                .arg("--data-only")
                .output()
                .unwrap();
            assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
            dump.stdout
        }
    }
}

/// Copies every order row, as it is first written, into `captured_orders`: the state of an
/// order before its worker is done with it, which the worker reaches too fast to be read.
fn capture_new_orders(env: &Env) {
    match &env.db {
        Db::Sqlite(_) => {
            env.sql("CREATE TABLE captured_orders AS SELECT * FROM orders WHERE 0");
            env.sql(
                "CREATE TRIGGER capture_orders AFTER INSERT ON orders \
                 BEGIN INSERT INTO captured_orders SELECT * FROM orders WHERE id = NEW.id; END",
            );
        }
        Db::Postgres(_) => {
            env.sql(
                "CREATE TABLE captured_orders AS SELECT * FROM orders WITH NO DATA; \
                 CREATE FUNCTION capture_order() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO captured_orders SELECT NEW.*; RETURN NEW; END $$; \
                 CREATE TRIGGER capture_orders AFTER INSERT ON orders FOR EACH ROW \
                 EXECUTE FUNCTION capture_order()",
            );
        }
    }
}

/// The number `env.sql` printed (a Python list of tuples on SQLite, bare on PostgreSQL).
fn count(output: &str) -> i64 {
    output.replace(|c: char| !c.is_ascii_digit(), "").parse().unwrap()
}

/// An asymmetric order's passphrase is write-only and never at rest in plaintext: the order is
/// written with it sealed (in a column of its own, not in the meta), forgets it once done, and
/// no table holds it in clear; the order's meta, as shown or listed, has neither the passphrase
/// nor its sealed form; and the private key still opens with it.
async fn order_passphrases_are_sealed_at_rest(env: &Env) {
    use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};

    capture_new_orders(env);
    let meta =
        json!({"name": "pair", "algorithm": "rsa", "bit_length": 2048, "passphrase": PASSPHRASE});
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": meta}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    let order_ref = r.json()["order_ref"].as_str().unwrap().to_owned();
    let id = order_ref.rsplit('/').next().unwrap().to_owned();
    let path = format!("/v1/orders/{id}");
    let mut shown = None;
    for _ in 0..500 {
        let r = call(&env.app, Method::GET, &path, Some(MEMBER), &[], b"").await;
        if r.json()["status"] != "PENDING" {
            shown = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shown = shown.expect("the order left PENDING");
    let order = shown.json();
    assert_eq!(order["status"], "ACTIVE", "{order}");

    // Shown and listed: the meta as given, less the passphrase, and nothing in its place.
    let mut keys: Vec<&str> =
        order["meta"].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["algorithm", "bit_length", "expiration", "name"], "{order}");
    assert_absent_of(&shown.body, PASSPHRASE, "the order as shown");
    let list = call(&env.app, Method::GET, "/v1/orders", Some(MEMBER), &[], b"").await;
    assert_eq!(list.json()["total"], 1);
    assert_eq!(list.json()["orders"][0]["meta"], order["meta"]);
    assert_absent_of(&list.body, PASSPHRASE, "the order list");
    let filtered = format!("/v1/orders?meta={PASSPHRASE}");
    let filtered = call(&env.app, Method::GET, &filtered, Some(MEMBER), &[], b"").await;
    assert_eq!(filtered.json()["total"], 0, "the meta filter matches the passphrase");

    // As first written: sealed, in its own column; once done, the order holds it no more.
    let sql = |query: &str| env.sql(&query.replace("{id}", &id));
    let written = sql("SELECT sealed_passphrase FROM captured_orders WHERE id = '{id}'");
    assert!(written.contains("ciphertext") && written.contains("kek_id"), "{written}");
    assert_absent_of(written.as_bytes(), PASSPHRASE, "the order's sealed passphrase");
    let written = sql("SELECT * FROM captured_orders WHERE id = '{id}'");
    assert!(!written.contains("\"passphrase\""), "the written meta has a passphrase: {written}");
    assert_absent_of(written.as_bytes(), PASSPHRASE, "the order row as written");
    let now = sql("SELECT * FROM orders WHERE id = '{id}'");
    assert!(now.contains(&id), "{now}");
    assert_absent_of(now.as_bytes(), PASSPHRASE, "the order row");
    let kept = sql("SELECT COUNT(*) FROM orders WHERE id = '{id}' AND sealed_passphrase IS NULL");
    assert_eq!(count(&kept), 1, "the done order still holds its sealed passphrase");
    let bytes = database_bytes(env);
    assert!(bytes.windows(id.len()).any(|w| w == id.as_bytes()), "the scan sees the order");
    assert_absent_of(&bytes, PASSPHRASE, "the database");

    // The container's private key opens with the passphrase, which it holds too.
    let container = order["container_ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let c =
        call(&env.app, Method::GET, &format!("/v1/containers/{container}"), Some(MEMBER), &[], b"")
            .await
            .json();
    let payload = |name: &str| {
        let secret = c["secret_refs"].as_array().unwrap().iter().find(|r| r["name"] == name);
        let id = secret.unwrap()["secret_ref"].as_str().unwrap().rsplit('/').next().unwrap();
        let path = format!("/v1/secrets/{id}/payload");
        async move { call(&env.app, Method::GET, &path, Some(MEMBER), &[], b"").await.body }
    };
    assert_eq!(payload("private_key_passphrase").await, PASSPHRASE.as_bytes());
    let pem = String::from_utf8(payload("private_key").await).unwrap();
    let (label, der) = pkcs8::der::Document::from_pem(&pem).unwrap();
    assert_eq!(label, "ENCRYPTED PRIVATE KEY");
    let encrypted = EncryptedPrivateKeyInfo::try_from(der.as_bytes()).unwrap();
    assert!(encrypted.decrypt("another passphrase").is_err());
    let key = encrypted.decrypt(PASSPHRASE).expect("the passphrase opens the private key");
    PrivateKeyInfo::try_from(key.as_bytes()).expect("a PKCS#8 private key");
}

on_each_database!(order_passphrases_are_sealed_at_rest);

/// A passphrase is sealed before its order is written: without the HSM the order is refused as
/// a secret is, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_order_is_refused_while_the_hsm_is_unavailable() {
    let mut env = Env::sqlite().await;
    env.stack.stop_proxy().await;
    let meta = json!({"algorithm": "ec", "bit_length": 256, "passphrase": PASSPHRASE});
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": meta}))
        .await;
    r.assert_error(503, "Order creation issue seen - the HSM is unavailable, please retry later.");
    assert_eq!(count(&env.sql("SELECT COUNT(*) FROM orders")), 0);
    assert_absent_of(&database_bytes(&env), PASSPHRASE, "the SQLite files");
    env.stack.restart_proxy().await.unwrap();
    let r = post_json(&env.app, "/v1/orders", MEMBER, json!({"type": "asymmetric", "meta": meta}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    env.finish().await;
}
