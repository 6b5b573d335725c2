//! The order queue shared by two appliances on one PostgreSQL: hundreds of orders, one
//! appliance killed (SIGKILL) while it still holds orders, and every order completed exactly
//! once by the survivor taking over expired leases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::{Duration, Instant};

use e2e::{DevStack, ServeConfig, Serving, TestDatabase, http, psql};

fn appliance(dir: &std::path::Path, name: &str, db: &str, stack: &DevStack) -> (Serving, String) {
    let mut settings = ServeConfig::on(stack, db);
    settings.database_extra = "max_connections = 4".into();
    settings.hsm = "request_timeout_ms = 60000".into();
    settings.sections = "[orders]\nlease_ms = 2000\npoll_ms = 200\ninline_wait_ms = 0".into();
    let (child, api, _) = settings.spawn(dir, name);
    (child, api)
}

const MEMBER: &[(&str, &str)] = &[
    ("X-Project-Id", "queue"),
    ("X-Roles", "member,reader"),
    ("Content-Type", "application/json"),
];

fn order(api: &str, body: &str) {
    let r = http("POST", &format!("{api}/v1/orders"), MEMBER, body.as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn two_appliances_share_the_queue_and_survive_one_dying() {
    let Some(database) = TestDatabase::create("e2e") else { return };
    let db = database.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let (mut a, api_a) = appliance(dir.path(), "a", &db, &stack);
    let (b, api_b) = appliance(dir.path(), "b", &db, &stack);

    // A receives slow orders (RSA-3072 key pairs) and key orders; B key orders only.
    let key = r#"{"type": "key", "meta": {"algorithm": "aes", "bit_length": 256}}"#;
    let pair = r#"{"type": "asymmetric", "meta": {"algorithm": "rsa", "bit_length": 3072}}"#;
    let feeder_b = {
        let api = api_b.clone();
        std::thread::spawn(move || (0..150).for_each(|_| order(&api, key)))
    };
    for i in 0..150 {
        order(&api_a, if i % 3 == 0 { pair } else { key });
    }
    // A dies with RSA orders still leased to it and unfinished.
    let pending_at_kill: i64 =
        psql(&db, "SELECT COUNT(*) FROM orders WHERE status = 'PENDING'").parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(a.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.0.wait().unwrap();
    feeder_b.join().unwrap();

    // B takes over A's orders as their leases expire and generates A's RSA-3072 pairs one
    // after another, which takes a minute or more on a slow machine: the wait ends when no
    // order has completed for a minute (the queue is stuck), or after ten minutes in all.
    let overall = Instant::now() + Duration::from_secs(600);
    let (mut last_pending, mut progress_at) = (i64::MAX, Instant::now());
    loop {
        let pending: i64 =
            psql(&db, "SELECT COUNT(*) FROM orders WHERE status <> 'ACTIVE'").parse().unwrap();
        if pending == 0 {
            break;
        }
        if pending < last_pending {
            (last_pending, progress_at) = (pending, Instant::now());
        }
        if progress_at.elapsed() > Duration::from_secs(60) || Instant::now() > overall {
            let rows = psql(
                &db,
                "SELECT status, error_reason, lease_owner, lease_until, attempts FROM orders WHERE status <> 'ACTIVE' LIMIT 3",
            );
            let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            // Why an order failed is logged as a warning by whichever appliance ran it.
            let mut warnings = String::new();
            let dev = dir.path().join("dev");
            let logs = std::fs::read_dir(&dev).into_iter().flatten().flatten().map(|e| e.path());
            let logs = [dir.path().join("a.log"), dir.path().join("b.log")]
                .into_iter()
                .chain(logs.filter(|p| p.extension().is_some_and(|e| e == "log")));
            for path in logs {
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
                    warnings.push_str(&format!("{name}: {line}\n"));
                }
            }
            panic!(
                "{pending} orders never completed:\n{rows}\n{}\nwarnings:\n{warnings}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(psql(&db, "SELECT COUNT(*) FROM orders"), "300");
    // Exactly once: one secret per key order, one container (two secrets) per key pair, and
    // nothing else.
    assert_eq!(psql(&db, "SELECT COUNT(*) FROM orders WHERE type = 'key'"), "250");
    assert_eq!(psql(&db, "SELECT COUNT(DISTINCT secret_id) FROM orders WHERE type = 'key'"), "250");
    assert_eq!(
        psql(&db, "SELECT COUNT(DISTINCT container_id) FROM orders WHERE type = 'asymmetric'"),
        "50"
    );
    assert_eq!(psql(&db, "SELECT COUNT(*) FROM containers"), "50");
    assert_eq!(psql(&db, "SELECT COUNT(*) FROM secrets"), "350");
    assert_eq!(
        psql(
            &db,
            "SELECT COUNT(*) FROM secrets s WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.secret_id = s.id) AND NOT EXISTS (SELECT 1 FROM container_secrets c WHERE c.secret_id = s.id)"
        ),
        "0"
    );
    let log_b = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    let taken_over = log_b.matches("took over an order").count();
    assert!(
        pending_at_kill > 0 && taken_over > 0,
        "A held {pending_at_kill} pending orders at its death; B took over {taken_over}"
    );
    eprintln!("orders pending when A was killed: {pending_at_kill}; taken over by B: {taken_over}");
    // A generated key is readable through the survivor.
    let secret = psql(&db, "SELECT secret_id FROM orders WHERE type = 'key' LIMIT 1");
    let r = http(
        "GET",
        &format!("{api_b}/v1/secrets/{secret}/payload"),
        &[("X-Project-Id", "queue"), ("X-Roles", "member")],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (200, 32));

    drop(b);
    drop(stack);
    database.drop_database();
}
