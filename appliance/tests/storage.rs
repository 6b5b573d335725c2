//! What the database holds (ciphertext only), what a lost proxy does (clear 503s, no rows
//! left behind, recovery without a restart), and concurrent first secrets of a project.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

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
    let marker = MARKER.as_bytes();
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
