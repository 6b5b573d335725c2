//! Project KEK rotation through the operator's commands: `appliance kek status` and `kek
//! rotate` on the configuration `appliance dev` writes, and a rewrap job that survives the
//! appliance running it being killed (SIGKILL), finished by another appliance sharing the
//! PostgreSQL job queue; and `appliance project purge`, which destroys a project's KEKs with
//! its data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{DevStack, ServeConfig, Serving, TestDatabase, bin_dir, http, psql};

fn appliance(args: &[&str], config: &Path) -> Output {
    let mut command = Command::new(bin_dir().join("appliance"));
    command.args(args).arg("--config").arg(config);
    command.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

fn headers(project: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Project-Id", project.to_owned()),
        ("X-Roles", "member,reader".to_owned()),
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "text/plain".to_owned()),
    ]
}

fn store(api: &str, project: &str, text: &str) -> String {
    let h = headers(project);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = format!(r#"{{"payload": "{text}", "payload_content_type": "text/plain"}}"#);
    let r = http("POST", &format!("{api}/v1/secrets"), &h, body.as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let reference = r.json()["secret_ref"].as_str().unwrap().to_owned();
    reference.rsplit('/').next().unwrap().to_owned()
}

fn read(api: &str, project: &str, id: &str) -> (u16, String) {
    let h = headers(project);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http("GET", &format!("{api}/v1/secrets/{id}/payload"), &h, b"");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The status table's rows for `project`: (KEK, state, sealed).
fn rows(table: &str, project: &str) -> Vec<(String, String, i64)> {
    table
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(project))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[1].to_owned(), cols[2].to_owned(), cols[5].parse().unwrap())
        })
        .collect()
}

#[test]
fn kek_commands_on_the_dev_stacks_own_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let api = stack.api_url();
    let config = stack.info["config"].as_str().unwrap().to_owned();
    let config = Path::new(&config);
    assert!(config.starts_with(dir.path().join("dev")), "{}", config.display());
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(stack.info["database"].as_str().unwrap()), "{text}");

    let ids: Vec<String> = (0..12).map(|i| store(&api, "ops", &format!("v{i}"))).collect();
    let out = appliance(&["kek", "status"], config);
    assert!(out.status.success(), "{}", both(&out));
    let before = rows(&stdout(&out), "ops");
    assert_eq!(before.len(), 1, "{}", stdout(&out));
    let (old, state, sealed) = &before[0];
    assert_eq!((state.as_str(), *sealed), ("active", 12), "{}", stdout(&out));

    // Neither or both: a project, or --all.
    let out = Command::new(bin_dir().join("appliance"))
        .args(["kek", "rotate", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(both(&out).contains("--project"), "{}", both(&out));

    let out = appliance(&["kek", "rotate", "--project", "ops"], config);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains(&format!("ops: KEK {old} retired; new KEK ")), "{}", both(&out));

    // The dev appliance's job moves the payloads over (it destroys the KEK after the grace
    // period, a minute by default).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = appliance(&["kek", "status", "--project", "ops"], config);
        assert!(out.status.success(), "{}", both(&out));
        let now = rows(&stdout(&out), "ops");
        let retired = now.iter().find(|(id, _, _)| id == old);
        let active = now.iter().find(|(_, state, _)| state == "active").unwrap();
        if retired.is_none_or(|(_, _, sealed)| *sealed == 0) && active.2 == 12 {
            assert_ne!(&active.0, old);
            break;
        }
        assert!(Instant::now() < deadline, "the payloads were never moved: {}", stdout(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(read(&api, "ops", id), (200, format!("v{i}")));
    }
}

/// A purge without --yes says what it would delete and deletes nothing; with it, the project's
/// secrets, containers and orders are gone with its KEKs, another project is untouched, and the
/// purged project starts again on a new KEK.
#[test]
fn a_purged_project_loses_its_data_and_its_keks() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let api = stack.api_url();
    let config = stack.info["config"].as_str().unwrap().to_owned();
    let config = Path::new(&config);

    let doomed: Vec<String> = (0..3).map(|i| store(&api, "doomed", &format!("d{i}"))).collect();
    let kept = store(&api, "kept", "k");
    let h = headers("doomed");
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let container = format!(
        r#"{{"type": "generic", "secret_refs": [{{"name": "a", "secret_ref": "{api}/v1/secrets/{}"}}]}}"#,
        doomed[0]
    );
    let r = http("POST", &format!("{api}/v1/containers"), &h, container.as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let container = r.json()["container_ref"].as_str().unwrap().to_owned();
    let order = r#"{"type": "key", "meta": {"algorithm": "aes", "bit_length": 256}}"#;
    let r = http("POST", &format!("{api}/v1/orders"), &h, order.as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let order = r.json()["order_ref"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http("GET", &order, &h, b"").json()["status"] != "ACTIVE" {
        assert!(Instant::now() < deadline, "the order never completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = stdout(&appliance(&["kek", "status", "--project", "doomed"], config));
    let keks = rows(&status, "doomed");
    assert_eq!(keks.len(), 1, "{status}");
    let destroyed = keks[0].0.clone();

    let out = appliance(&["project", "purge", "--project", "doomed"], config);
    assert!(out.status.success(), "{}", both(&out));
    let text = stdout(&out);
    assert!(
        text.contains("would delete 4 secret(s), 1 container(s), 1 order(s) and 1 KEK(s)"),
        "{text}"
    );
    assert!(text.contains(&format!("KEK {destroyed} to destroy")), "{text}");
    assert!(text.contains("nothing was deleted"), "{text}");
    assert_eq!(read(&api, "doomed", &doomed[0]), (200, "d0".into()));

    let out = appliance(&["project", "purge", "--project", "doomed", "--yes"], config);
    assert!(out.status.success(), "{}", both(&out));
    let text = stdout(&out);
    assert!(
        text.contains("deleted 4 secret(s), 1 container(s), 1 order(s) and 1 KEK(s)"),
        "{text}"
    );
    assert!(text.contains(&format!("KEK {destroyed} destroyed")), "{text}");

    for id in &doomed {
        assert_eq!(read(&api, "doomed", id).0, 404);
    }
    assert_eq!(http("GET", &container, &h, b"").status, 404);
    assert_eq!(http("GET", &order, &h, b"").status, 404);
    let r = http("GET", &format!("{api}/v1/secrets"), &h, b"");
    assert_eq!(r.json()["total"], 0, "{}", String::from_utf8_lossy(&r.body));
    let status = stdout(&appliance(&["kek", "status", "--project", "doomed"], config));
    assert!(rows(&status, "doomed").is_empty(), "{status}");
    assert_eq!(read(&api, "kept", &kept), (200, "k".into()));

    // The project is usable again, under a KEK of its own that is not the destroyed one (the
    // appliance re-reads the active KEK within a second).
    std::thread::sleep(Duration::from_millis(1200));
    let again = store(&api, "doomed", "anew");
    assert_eq!(read(&api, "doomed", &again), (200, "anew".into()));
    let status = stdout(&appliance(&["kek", "status", "--project", "doomed"], config));
    let keks = rows(&status, "doomed");
    assert_eq!(keks.len(), 1, "{status}");
    assert_ne!(keks[0].0, destroyed);
}

fn serve(
    dir: &Path,
    name: &str,
    db: &str,
    stack: &DevStack,
) -> (Serving, String, std::path::PathBuf) {
    let mut settings = ServeConfig::on(stack, db);
    settings.database_extra = "max_connections = 4".into();
    settings.sections = "[keys]\nrewrap_per_second = 20\nrewrap_batch = 4\npoll_ms = 200\n\
                         lease_ms = 1500\nrefresh_ms = 100\nretired_grace_ms = 500"
        .into();
    settings.spawn(dir, name)
}

#[test]
fn a_rewrap_job_outlives_the_appliance_that_ran_it() {
    let Some(database) = TestDatabase::create("kek_e2e") else { return };
    let db = database.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let (mut a, api_a, config_a) = serve(dir.path(), "a", &db, &stack);
    let ids: Vec<String> = (0..80).map(|i| store(&api_a, "moved", &format!("m{i}"))).collect();
    let old = psql(&db, "SELECT id FROM project_keks WHERE project_id = 'moved' AND active = 1");

    let out = appliance(&["kek", "rotate", "--project", "moved"], &config_a);
    assert!(out.status.success(), "{}", both(&out));
    // A leases the job and moves payloads at 20 a second; it dies partway.
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved_by_a = loop {
        let moved: i64 =
            psql(&db, &format!("SELECT rewrapped FROM project_keks WHERE id = '{old}'"))
                .parse()
                .unwrap();
        if moved >= 12 {
            break moved;
        }
        assert!(Instant::now() < deadline, "A never started the job");
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(a.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.0.wait().unwrap();
    let left: i64 =
        psql(&db, &format!("SELECT COUNT(*) FROM secrets WHERE kek_id = '{old}'")).parse().unwrap();
    assert!(left > 0, "A finished before it was killed ({moved_by_a} moved)");

    // B takes the job over once A's lease expires, finishes it and destroys the KEK.
    let (_b, api_b, _) = serve(dir.path(), "b", &db, &stack);
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&db, &format!("SELECT COUNT(*) FROM project_keks WHERE id = '{old}'")) != "0" {
        let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "B never finished the job:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_b = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(log_b.contains("retired KEK destroyed"), "{log_b}");
    let new = psql(&db, "SELECT id FROM project_keks WHERE project_id = 'moved' AND active = 1");
    assert_eq!(psql(&db, &format!("SELECT COUNT(*) FROM secrets WHERE kek_id = '{new}'")), "80");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(read(&api_b, "moved", id), (200, format!("m{i}")));
    }
    drop(stack);
    database.drop_database();
}

/// `hsm-proxy mkek ARGS --config` on the dev stack's token and proxy configuration.
fn mkek(stack: &DevStack, args: &[&str]) -> Output {
    let mut command = Command::new(bin_dir().join("hsm-proxy"));
    command
        .arg("mkek")
        .args(args)
        .arg("--config")
        .arg(stack.info["proxy"]["config"].as_str().unwrap());
    for (name, value) in stack.info["hsm"]["env"].as_object().unwrap() {
        command.env(name, value.as_str().unwrap());
    }
    command.output().unwrap()
}

/// Crypto-shredding reaches backups: a purged project's data is still readable from a backup
/// taken before (`pg_dump`) until the master key is rotated, every stored KEK rewrapped under
/// the new one while the appliance serves on, and the old master key destroyed; then the
/// backup opens nothing, and the live data of other projects reads on.
#[test]
fn a_purge_reaches_backups_once_the_master_key_is_rotated_away() {
    let Some(live) = TestDatabase::create("shred_e2e") else { return };
    let Some(restored) = TestDatabase::create("shred_e2e") else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("dev"));
    let (_a, api, config) = serve(dir.path(), "a", &live.url, &stack);
    let doomed: Vec<String> = (0..3).map(|i| store(&api, "doomed", &format!("d{i}"))).collect();
    let kept: Vec<String> = (0..3).map(|i| store(&api, "kept", &format!("k{i}"))).collect();

    let dump = dir.path().join("backup.sql");
    let out = Command::new("pg_dump").arg(&live.url).arg("-f").arg(&dump).output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", both(&out));
    let out = appliance(&["project", "purge", "--project", "doomed", "--yes"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(read(&api, "doomed", &doomed[0]).0, 404);

    // The backup, restored, still holds the project and its KEK wrapped under the master key.
    let out = Command::new("psql")
        .arg(&restored.url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", both(&out));
    let (_r, api_restored, _) = serve(dir.path(), "restored", &restored.url, &stack);
    assert_eq!(read(&api_restored, "doomed", &doomed[1]), (200, "d1".into()));

    let out = mkek(&stack, &["rotate"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains("created master key generation 2"), "{}", both(&out));
    // At once: the proxy reads the token again before calling a blob current.
    let out = appliance(&["kek", "rewrap-master"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).starts_with("1 KEK(s) rewrapped"), "{}", both(&out));
    let blob = psql(&live.url, "SELECT encode(wrapped, 'hex') FROM project_keks");
    assert!(blob.starts_with("4b02010000000000000002"), "{blob}");
    // The appliance serves on throughout, reading the KEK under either master key.
    assert_eq!(read(&api, "kept", &kept[0]), (200, "k0".into()));

    let out = mkek(&stack, &["destroy", "--generation", "1"]);
    assert!(out.status.success(), "{}", both(&out));
    // A second pass finds nothing left to move, and has the proxy read its master keys again
    // (it drops what it had unwrapped under the destroyed one).
    std::thread::sleep(Duration::from_millis(1100));
    let out = appliance(&["kek", "rewrap-master"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).starts_with("0 KEK(s) rewrapped"), "{}", both(&out));
    // The live appliance still holds the old blob: refused, it reads the row again.
    for (i, id) in kept.iter().enumerate() {
        assert_eq!(read(&api, "kept", id), (200, format!("k{i}")));
    }
    // New writes take the active KEK's new blob once the appliance reads it again.
    std::thread::sleep(Duration::from_millis(200));
    let after = store(&api, "kept", "after");
    assert_eq!(read(&api, "kept", &after), (200, "after".into()));
    // The backup opens nothing: neither the purged project nor any other.
    let (status, body) = read(&api_restored, "doomed", &doomed[2]);
    assert_eq!(status, 500, "{body}");
    assert_eq!(read(&api_restored, "kept", &kept[1]).0, 500);
    drop(stack);
    live.drop_database();
    restored.drop_database();
}
