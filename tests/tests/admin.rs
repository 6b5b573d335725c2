//! The operator's commands, run as the binary: `appliance db check` and `db upgrade` on SQLite
//! and PostgreSQL, `serve` refusing a database that is not current under
//! `[database] migrate = "never"`, and `appliance doctor` on a dev stack, whole and with its
//! proxy gone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{DevStack, ServeConfig, TestDatabase, bin_dir, free_port};

/// `appliance ARGS...`, run to completion with no log filter from the environment.
fn appliance(args: &[&str], config: &Path) -> Output {
    Command::new(bin_dir().join("appliance"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output and error, for failure messages.
fn both(out: &Output) -> String {
    format!("{}\n--- stderr ---\n{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// The report line of check `name` (`ok    name  detail`), panicking when there is none.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{report}"))
}

/// An appliance configuration on `database`, with proxies and PKI files given, and `extra`
/// lines in its `[database]` section.
fn write_config(
    dir: &Path,
    database: &str,
    endpoints: &[String],
    pki: &Pki,
    extra: &str,
) -> PathBuf {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let files = [path(&pki.ca), path(&pki.cert), path(&pki.key)];
    let mut settings = ServeConfig::with_pki(database, endpoints.to_vec(), files);
    settings.database_extra = extra.to_owned();
    settings.hsm = "connect_timeout_ms = 1000\nrequest_timeout_ms = 5000".into();
    settings.write(&dir.join(format!("appliance-{}.toml", free_port())))
}

/// The appliance's side of a PKI.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    /// Paths where no PKI is: the database commands never read them.
    fn none(dir: &Path) -> Pki {
        Pki { ca: dir.join("no-ca.pem"), cert: dir.join("no.pem"), key: dir.join("no-key.pem") }
    }

    /// The dev stack's, as `dev.json` lists it.
    fn of(stack: &DevStack) -> Pki {
        let path = |key: &str| PathBuf::from(stack.info["pki"][key].as_str().unwrap());
        Pki { ca: path("ca"), cert: path("client_cert"), key: path("client_key") }
    }
}

/// `db check` on an empty database fails naming every migration pending, `db upgrade` applies
/// them and says which, `db check` then passes; a migration whose recorded checksum is not the
/// build's fails `db check` by name; `serve` with `migrate = "never"` refuses a fresh database
/// and names `appliance db upgrade`. `tamper` changes migration 2's recorded checksum.
fn db_commands(dir: &Path, url: &str, fresh_url: &str, tamper: impl Fn(&str)) {
    e2e::ensure_binaries();
    let config = write_config(dir, url, &["127.0.0.1:9".into()], &Pki::none(dir), "");

    let out = appliance(&["db", "check"], &config);
    assert!(!out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    let schema = line(&report, "schema");
    assert!(
        schema.starts_with("FAIL")
            && schema.contains(
                "pending: 1 secrets, 2 orders_containers_acls, 3 sealed_order_passphrase, 4 kek_lifecycle"
            )
            && schema.contains("appliance db upgrade --config"),
        "{report}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not current"), "{}", both(&out));

    let out = appliance(&["db", "upgrade"], &config);
    assert!(out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    assert!(
        line(&report, "upgrade")
            .contains("applied 1 secrets, 2 orders_containers_acls, 3 sealed_order_passphrase, 4 kek_lifecycle"),
        "{report}"
    );
    assert!(line(&report, "schema").starts_with("ok"), "{report}");

    let out = appliance(&["db", "check"], &config);
    assert!(out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    assert!(line(&report, "database").starts_with("ok"), "{report}");
    assert!(line(&report, "schema").contains("version 4 of 4, nothing pending"), "{report}");
    assert!(line(&report, "checksum").starts_with("ok"), "{report}");
    assert!(report.contains("0 failures"), "{report}");

    // Nothing left to apply.
    let out = appliance(&["db", "upgrade"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert!(line(&stdout(&out), "upgrade").contains("no migration was pending"), "{}", both(&out));

    tamper("0123456789abcdef");
    let out = appliance(&["db", "check"], &config);
    assert!(!out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    let checksum = line(&report, "checksum");
    assert!(
        checksum.starts_with("FAIL")
            && checksum.contains(
                "migration 2 orders_containers_acls was applied with checksum 0123456789ab"
            ),
        "{report}"
    );

    // Migrations explicit: serve leaves a fresh database alone and refuses it.
    let never = write_config(
        dir,
        fresh_url,
        &["127.0.0.1:9".into()],
        &Pki::none(dir),
        "migrate = \"never\"",
    );
    let out = Command::new(bin_dir().join("appliance"))
        .args(["serve", "--config"])
        .arg(&never)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not current")
            && stderr.contains("pending migrations 1 secrets")
            && stderr.contains("appliance db upgrade"),
        "{stderr}"
    );
    let out = appliance(&["db", "check"], &never);
    assert!(!out.status.success(), "serve migrated the database: {}", both(&out));
}

#[test]
fn db_check_and_upgrade_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("appliance.db");
    let url = format!("sqlite://{}", file.display());
    let fresh = format!("sqlite://{}", dir.path().join("fresh.db").display());
    // A check creates nothing.
    let config =
        write_config(dir.path(), &url, &["127.0.0.1:9".into()], &Pki::none(dir.path()), "");
    e2e::ensure_binaries();
    let out = appliance(&["db", "check"], &config);
    assert!(!out.status.success(), "{}", both(&out));
    assert!(line(&stdout(&out), "database").contains("no SQLite file at"), "{}", both(&out));
    assert!(!file.exists());
    // An empty file is an empty database.
    std::fs::File::create(&file).unwrap();

    db_commands(dir.path(), &url, &fresh, |checksum| {
        let db = rusqlite::Connection::open(&file).unwrap();
        let n = db
            .execute("UPDATE appliance_schema SET checksum = ?1 WHERE version = 2", [checksum])
            .unwrap();
        assert_eq!(n, 1);
    });
}

#[test]
fn db_check_and_upgrade_on_postgres() {
    let Some(db) = TestDatabase::create("admin_db") else { return };
    let Some(fresh) = TestDatabase::create("admin_fresh") else { return };
    let dir = tempfile::tempdir().unwrap();
    db_commands(dir.path(), &db.url, &fresh.url, |checksum| {
        db.sql(&format!("UPDATE appliance_schema SET checksum = '{checksum}' WHERE version = 2"));
    });
    // The doctor compares the database server's clock with this machine's.
    db.sql("UPDATE appliance_schema SET checksum = NULL");
    let config =
        write_config(dir.path(), &db.url, &["127.0.0.1:9".into()], &Pki::none(dir.path()), "");
    let out = appliance(&["doctor"], &config);
    let report = stdout(&out);
    assert!(!out.status.success(), "the PKI files are missing: {}", both(&out));
    let clock = line(&report, "database clock");
    assert!(clock.starts_with("ok") && clock.contains("this machine's (±"), "{report}");
    assert!(
        line(&report, "checksum").starts_with("warn")
            && line(&report, "checksum").contains("before checksums were kept"),
        "{report}"
    );
    // `db upgrade` records this build's checksums for them.
    let out = appliance(&["db", "upgrade"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert!(line(&stdout(&out), "checksums recorded").contains("1, 2, 3, 4"), "{}", both(&out));
    assert!(line(&stdout(&out), "checksum").starts_with("ok"), "{}", both(&out));
    db.drop_database();
    fresh.drop_database();
}

#[test]
fn doctor_passes_on_a_dev_stack_and_names_a_proxy_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("dev"), &["--tls"]);
    let pki = Pki::of(&stack);
    let database = stack.info["database"].as_str().unwrap().to_owned();
    let proxy = stack.info["proxy"]["address"].as_str().unwrap().to_owned();

    let config = write_config(dir.path(), &database, std::slice::from_ref(&proxy), &pki, "");
    let out = appliance(&["doctor"], &config);
    let report = stdout(&out);
    assert!(out.status.success(), "{}", both(&out));
    assert!(!report.contains("FAIL"), "{report}");
    for name in ["config", "policy", "certificate [hsm] ca", "certificate [hsm] cert", "database"] {
        assert!(line(&report, name).starts_with("ok"), "{name}: {report}");
    }
    assert!(line(&report, "schema").contains("nothing pending"), "{report}");
    assert!(line(&report, "database clock").contains("SQLite"), "{report}");
    let health = line(&report, &format!("proxy {proxy}"));
    assert!(health.starts_with("ok") && health.contains("token \"appliance-dev\""), "{report}");
    assert!(line(&report, &format!("master key {proxy}")).starts_with("ok"), "{report}");
    // No-auth is allowed, and said to be for development only.
    assert!(line(&report, "identity").starts_with("warn"), "{report}");
    // Nothing secret: neither key's PEM body.
    let key = std::fs::read_to_string(&pki.key).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!report.contains(body) && !both(&out).contains(body));

    // With HTTPS on, the API's certificate and key are checked too; a key others can read is
    // a warning.
    let tls_cert = stack.info["api_cert"].as_str().unwrap();
    let tls_key = stack.info["api_key"].as_str().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\ntls_cert = {tls_cert:?}\ntls_key = {tls_key:?}\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let out = appliance(&["doctor"], &config);
    let report = stdout(&out);
    assert!(out.status.success(), "{}", both(&out));
    assert!(line(&report, "certificate [server] tls_cert").starts_with("ok"), "{report}");
    assert!(line(&report, "[server] tls_key").starts_with("ok"), "{report}");
    std::fs::set_permissions(tls_key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = appliance(&["doctor"], &config);
    let report = stdout(&out);
    assert!(line(&report, "[server] tls_key").starts_with("warn"), "{report}");
    assert!(line(&report, "[server] tls_key").contains("chmod 0600"), "{report}");

    // A proxy that is down fails the doctor, by name, beside the one that answers.
    let dead = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &database, &[proxy.clone(), dead.clone()], &pki, "");
    let out = appliance(&["doctor"], &config);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let down = line(&report, &format!("proxy {dead}"));
    assert!(down.starts_with("FAIL") && down.contains("cannot connect"), "{report}");
    assert!(line(&report, &format!("proxy {proxy}")).starts_with("ok"), "{report}");
    assert!(report.contains("1 failure"), "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("some checks failed"), "{}", both(&out));

    // A file that does not load is the first and only check.
    std::fs::write(&config, "[server]\nlisten = 7\n").unwrap();
    let out = appliance(&["doctor"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let report = stdout(&out);
    assert!(line(&report, "config").starts_with("FAIL"), "{report}");
    assert!(report.contains("1 check: 1 failure"), "{report}");
    drop(stack);
}
