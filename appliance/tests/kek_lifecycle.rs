//! The project KEK lifecycle on each database: a rotation seals new writes under the new KEK
//! at once, the rewrap job moves every payload over while secrets are read, written and
//! deleted, and the retired KEK is destroyed; KEKs rotate by themselves by use and by age.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::json;

use appliance::admin::keks::{Target, rotate};
use appliance::config::Config;
use common::{Caller, Env, call, create};

fn caller(project: &str) -> Caller<'_> {
    Caller { project, user: Some("u1"), roles: Some("member,reader") }
}

async fn store_secret(env: &Env, project: &str, text: &str) -> String {
    create(
        &env.app,
        caller(project),
        json!({"payload": text, "payload_content_type": "text/plain"}),
    )
    .await
}

async fn payload(env: &Env, project: &str, id: &str) -> (StatusCode, String) {
    let path = format!("/v1/secrets/{id}/payload");
    let r =
        call(&env.app, Method::GET, &path, Some(caller(project)), &[("accept", "text/plain")], b"")
            .await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The project's KEKs: the active one's id, and how many there are.
async fn keks(env: &Env, project: &str) -> (String, usize) {
    let keks = env.app.store().kek_status(Some(project)).await.unwrap();
    let active = keks.iter().find(|k| k.active).map(|k| k.id.clone()).unwrap_or_default();
    (active, keks.len())
}

async fn kek_of(env: &Env, id: &str) -> String {
    env.app.store().secret(id).await.unwrap().unwrap().payload.unwrap().kek_id
}

/// A metric's value in the appliance's scrape.
async fn metric(env: &Env, series: &str) -> f64 {
    let text = env.app.metrics_text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

fn quick_jobs(c: &mut Config) {
    c.keys.refresh_ms = 50;
    c.keys.retired_grace_ms = 300;
    c.keys.poll_ms = 100;
    c.keys.lease_ms = 5_000;
    c.keys.rewrap_batch = 5;
    // Slow enough that reads, writes and deletes meet the job halfway.
    c.keys.rewrap_per_second = 40;
}

async fn rotation_moves_everything_and_destroys_the_old_kek(env: &Env) {
    let mut secrets = Vec::new();
    for i in 0..30 {
        let text = format!("payload-{i}");
        secrets.push((store_secret(env, "rot", &text).await, text));
    }
    let bystander = store_secret(env, "bystander", "untouched").await;
    let (old, n) = keks(env, "rot").await;
    assert_eq!(n, 1);
    let (bystander_kek, _) = keks(env, "bystander").await;

    let lines =
        rotate(&env.config, Target::Projects(vec!["rot".into(), "nobody".into()])).await.unwrap();
    assert!(lines[0].contains(&format!("KEK {old} retired")), "{lines:?}");
    assert!(lines[1].contains("no KEK yet"), "{lines:?}");
    let (new, _) = keks(env, "rot").await;
    assert_ne!(new, old);

    // New writes go under the new KEK once the appliance has re-read the project's KEK
    // (`refresh_ms`, 50 ms here: the rotation came from another process); the old data stays
    // readable meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = store_secret(env, "rot", "written after the rotation").await;
    assert_eq!(kek_of(env, &fresh).await, new);
    let mut deleted = Vec::new();
    for (i, (id, text)) in secrets.iter().enumerate() {
        if i % 6 == 5 {
            let r = call(
                &env.app,
                Method::DELETE,
                &format!("/v1/secrets/{id}"),
                Some(caller("rot")),
                &[],
                b"",
            )
            .await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
            deleted.push(id.clone());
        } else {
            assert_eq!(payload(env, "rot", id).await, (StatusCode::OK, text.clone()));
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while keks(env, "rot").await.1 > 1 {
        assert!(Instant::now() < deadline, "the retired KEK was never destroyed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keks(env, "rot").await.0, new);
    for (id, text) in &secrets {
        let (status, body) = payload(env, "rot", id).await;
        if deleted.contains(id) {
            assert_eq!(status, StatusCode::NOT_FOUND, "a deleted secret came back");
        } else {
            assert_eq!((status, body), (StatusCode::OK, text.clone()));
            assert_eq!(kek_of(env, id).await, new);
        }
    }
    assert_eq!(payload(env, "rot", &fresh).await.1, "written after the rotation");
    // Another project is left alone.
    assert_eq!(keks(env, "bystander").await, (bystander_kek.clone(), 1));
    assert_eq!(kek_of(env, &bystander).await, bystander_kek);

    let moved = metric(env, "appliance_kek_rewrapped_total").await;
    assert!((1.0..=25.0).contains(&moved), "{moved} payloads rewrapped");
    assert_eq!(metric(env, "appliance_kek_destroyed_total").await, 1.0);
    assert_eq!(metric(env, "appliance_kek_retired").await, 0.0);
    assert_eq!(metric(env, "appliance_kek_retired_payloads").await, 0.0);
}

async fn keks_rotate_by_use_and_by_age(env: &Env) {
    let mut secrets = Vec::new();
    for i in 0..20 {
        let text = format!("used-{i}");
        secrets.push((store_secret(env, "busy", &text).await, text));
    }
    // 8 encryptions a KEK, reserved 2 at a time: 20 writes need at least three KEKs.
    let rotations = metric(env, "appliance_kek_rotations_total{reason=\"encryptions\"}").await;
    assert!(rotations >= 2.0, "{rotations} rotations by use");
    let kek_ids: std::collections::BTreeSet<String> = {
        let mut ids = std::collections::BTreeSet::new();
        for (id, _) in &secrets {
            ids.insert(kek_of(env, id).await);
        }
        ids
    };
    let statuses = env.app.store().kek_status(Some("busy")).await.unwrap();
    // A reservation that crosses the limit is not spent: the count overstates by one block.
    assert!(statuses.iter().all(|k| k.encryptions <= 8 + 2), "a KEK exceeded its limit");
    assert!(kek_ids.len() >= 2 || statuses.len() >= 3, "{kek_ids:?}");
    for (id, text) in &secrets {
        assert_eq!(payload(env, "busy", id).await, (StatusCode::OK, text.clone()));
    }

    // An idle project's KEK is replaced once it is past its age, by the background job.
    let idle = store_secret(env, "idle", "kept").await;
    let (first, _) = keks(env, "idle").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while keks(env, "idle").await.0 == first {
        assert!(Instant::now() < deadline, "the idle project's KEK never aged out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(env, "appliance_kek_rotations_total{reason=\"age\"}").await >= 1.0);
    assert_eq!(payload(env, "idle", &idle).await, (StatusCode::OK, "kept".into()));
}

fn limited(c: &mut Config) {
    quick_jobs(c);
    // A KEK that seals 8 payloads at most cannot take in the 20 of a retired one: the job
    // would rotate again and again. (The real limit is billions.)
    c.keys.rewrap_per_second = 0;
    c.keys.max_encryptions = 8;
    c.keys.reserve_block = 2;
    // Two seconds.
    c.keys.max_age_days = 2.0 / 86_400.0;
}

macro_rules! on_each_database_with {
    ($($scenario:ident: $configure:path),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let env = crate::common::Env::sqlite_configured($configure).await;
                    super::$scenario(&env).await;
                    env.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(env) = crate::common::Env::postgres_configured($configure).await
                    else { return };
                    super::$scenario(&env).await;
                    env.finish().await;
                }
            )*
        }
    };
}

on_each_database_with! {
    rotation_moves_everything_and_destroys_the_old_kek: super::quick_jobs,
    keks_rotate_by_use_and_by_age: super::limited,
}
