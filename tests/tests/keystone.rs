//! Keystone identity with a real Keystone: tokens validated and cached, service tokens, 401 and
//! 503 answers, the real Castellan (as Cinder and Nova use it) and the real openstack CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{DevStack, http, keystone_venv};

fn harness(venv: &Path, args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/keystone/harness.py");
    let out = Command::new(venv.join("bin/python")).arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "harness {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A project-scoped token for one of the harness's users.
fn token(venv: &Path, ks: &serde_json::Value, user: &str) -> String {
    let u = &ks["users"][user];
    let script = "import sys\nfrom keystoneauth1 import session, identity\n\
        a = identity.v3.Password(auth_url=sys.argv[1], username=sys.argv[2], password=sys.argv[3], \
        project_name=sys.argv[4], user_domain_id='default', project_domain_id='default')\n\
        print(session.Session(auth=a).get_token())";
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script, ks["auth_url"].as_str().unwrap(), user])
        .arg(u["password"].as_str().unwrap())
        .arg(u["project"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stops Keystone however the test ends.
struct Keystone {
    venv: PathBuf,
    dir: PathBuf,
}

impl Keystone {
    fn stop(&self) {
        harness(&self.venv, &["stop", "--dir", self.dir.to_str().unwrap()]);
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/keystone/harness.py");
        let _ = Command::new(self.venv.join("bin/python"))
            .arg(script)
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .status();
    }
}

const SHORT_LIVED: &str = r#"
import datetime, json, sys
from keystoneauth1 import identity, session
from keystoneclient.v3 import client
ks = json.load(open(sys.argv[1])); u = ks["users"]["alice"]
auth = identity.v3.Password(auth_url=ks["auth_url"], username="alice", password=u["password"],
                            project_name=u["project"], user_domain_id="default", project_domain_id="default")
sess = session.Session(auth=auth)
ksc = client.Client(session=sess)
# A token expires no later than the application credential it came from.
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=8)
ac = ksc.application_credentials.create(name="short-lived", user=u["id"], expires_at=expires.replace(tzinfo=None))
short = session.Session(auth=identity.v3.ApplicationCredential(
    auth_url=ks["auth_url"], application_credential_id=ac.id, application_credential_secret=ac.secret))
token = short.get_token()
# A second token of alice's, revoked before anyone uses it.
revoked = session.Session(auth=identity.v3.Password(
    auth_url=ks["auth_url"], username="alice", password=u["password"], project_name=u["project"],
    user_domain_id="default", project_domain_id="default")).get_token()
ksc.tokens.revoke_token(revoked)
print(token, short.auth.get_access(short).expires.timestamp(), revoked)
"#;

fn validations(ks_dir: &Path) -> usize {
    std::fs::read_to_string(ks_dir.join("access.log"))
        .unwrap_or_default()
        .matches("GET /v3/auth/tokens")
        .count()
}

/// [`validations`] once Keystone's access log has caught up: gunicorn writes a line after it
/// has sent the response, so a request the appliance just made may not be counted yet.
fn settled_validations(ks_dir: &Path) -> usize {
    let mut last = validations(ks_dir);
    for _ in 0..25 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = validations(ks_dir);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

const CASTELLAN: &str = r#"
import datetime, json, statistics, sys, time
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from castellan import key_manager, options
from castellan.common import exception
from castellan.common.objects import passphrase, private_key, symmetric_key, x_509
from keystoneauth1 import identity, session
from oslo_config import cfg
from oslo_context import context

api, ks = sys.argv[1], json.load(open(sys.argv[2]))

def ctx(name):
    u = ks["users"][name]
    auth = identity.v3.Password(auth_url=ks["auth_url"], username=name, password=u["password"],
                                project_name=u["project"], user_domain_id="default", project_domain_id="default")
    # What Cinder and Nova pass: the user's token and project in a request context.
    return context.RequestContext(auth_token=session.Session(auth=auth).get_token(), project_id=u["project_id"])

conf = cfg.ConfigOpts()
options.set_defaults(conf, backend="barbican", barbican_endpoint=api, auth_endpoint=ks["auth_url"])
km = key_manager.API(conf)
alice, bob, rita = ctx("alice"), ctx("bob"), ctx("rita")

creates, gets, key_ids = [], [], set()
for _ in range(10):
    t0 = time.perf_counter(); key_id = km.create_key(alice, algorithm="AES", length=256); creates.append(time.perf_counter() - t0)
    key_ids.add(key_id)
    t0 = time.perf_counter(); key = km.get(alice, key_id); gets.append(time.perf_counter() - t0)
assert key.algorithm == "AES" and key.bit_length == 256 and len(key.get_encoded()) == 32

# Castellan hands over private keys and certificates as DER; Barbican keeps them as PEM.
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
der_key = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "castellan")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256()))
der_cert = cert.public_bytes(serialization.Encoding.DER)
stored = {
    "symmetric": km.store(alice, symmetric_key.SymmetricKey("AES", 128, b"\x01" * 16)),
    "passphrase": km.store(alice, passphrase.Passphrase(b"correct horse")),
    # A str payload travels as text/plain and comes back as str, as with Barbican.
    "text": km.store(alice, passphrase.Passphrase("battery staple")),
    "private": km.store(alice, private_key.PrivateKey("RSA", 2048, der_key)),
    "certificate": km.store(alice, x_509.X509(der_cert)),
}
assert km.get(alice, stored["symmetric"]).get_encoded() == b"\x01" * 16
assert km.get(alice, stored["passphrase"]).get_encoded() == b"correct horse"
assert km.get(alice, stored["text"]).get_encoded() == "battery staple"
assert km.get(alice, stored["private"]).get_encoded() == der_key
assert km.get(alice, stored["certificate"]).get_encoded() == der_cert
# One page of Barbican's default size (10), oldest first: the project's first secret (stored
# over plain HTTP before this script ran), then the first nine keys.
listed = [o.id for o in km.list(alice)]
assert len(listed) == 10 and len(set(listed[1:]) & key_ids) == 9, listed

# Another project's user cannot read the key; a reader has what Barbican's policy gives: nothing.
for who in (bob, rita):
    try:
        km.get(who, key_id)
        raise SystemExit("a key was readable from the wrong user")
    except exception.KeyManagerError:
        pass
try:
    km.create_key(rita, algorithm="AES", length=256)
    raise SystemExit("a reader created a key")
except exception.KeyManagerError:
    pass

km.delete(alice, key_id)
try:
    km.get(alice, key_id)
    raise SystemExit("a deleted key was readable")
except exception.ManagedObjectNotFoundError:
    pass
print("castellan create_key median %.1f ms, get median %.1f ms"
      % (statistics.median(creates) * 1000, statistics.median(gets) * 1000))
"#;

/// A real Keystone with the harness's users, and `appliance dev` validating its tokens; each
/// test has its own, so that one scenario's failure leaves the others to run.
struct Fixture {
    venv: PathBuf,
    ks_dir: PathBuf,
    ks: serde_json::Value,
    auth_url: String,
    api: String,
    // Dropped in this order: the appliance, then Keystone, then the directory.
    stack: Option<DevStack>,
    keystone: Keystone,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// `None` when no Keystone can be installed here (the test then checks nothing).
    fn start() -> Option<Fixture> {
        let venv = keystone_venv()?;
        let dir = tempfile::tempdir().unwrap();
        let ks_dir: PathBuf = dir.path().join("keystone");
        harness(&venv, &["start", "--dir", ks_dir.to_str().unwrap()]);
        let keystone = Keystone { venv: venv.clone(), dir: ks_dir.clone() };
        let ks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ks_dir.join("keystone.json")).unwrap())
                .unwrap();
        let auth_url = ks["auth_url"].as_str().unwrap().to_owned();
        let password_file = dir.path().join("barbican-password");
        std::fs::write(&password_file, "barbican-password\n").unwrap();
        let stack = DevStack::start_with(
            &dir.path().join("data"),
            &[
                "--keystone-url",
                &auth_url,
                "--keystone-user",
                "barbican",
                "--keystone-password-file",
                password_file.to_str().unwrap(),
            ],
        );
        let api = stack.api_url();
        harness(&venv, &["catalog", "--dir", ks_dir.to_str().unwrap(), "--url", &api]);
        Some(Fixture { venv, ks_dir, ks, auth_url, api, stack: Some(stack), keystone, _dir: dir })
    }

    fn token(&self, user: &str) -> String {
        token(&self.venv, &self.ks, user)
    }

    /// Stores a text secret as `token`'s user; its href.
    fn store(&self, token: &str, payload: &str) -> String {
        let body = serde_json::json!({"payload": payload, "payload_content_type": "text/plain"});
        let r = http(
            "POST",
            &format!("{}/v1/secrets", self.api),
            &[("X-Auth-Token", token), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["secret_ref"].as_str().unwrap().to_owned()
    }

    /// Stops the appliance; its exit status was a success, and its log.
    fn stop_appliance(&mut self) -> String {
        let (status, log) = self.stack.take().unwrap().stop();
        assert!(status.success(), "{log}");
        log
    }
}

#[test]
fn requests_without_a_valid_token_get_401_and_where_to_authenticate() {
    let Some(f) = Fixture::start() else { return };
    let api = &f.api;
    // Discovery needs no token; everything under /v1 does.
    assert_eq!(http("GET", &format!("{api}/"), &[], b"").status, 300);
    for headers in [vec![], vec![("X-Auth-Token", "not-a-token")]] {
        let r = http("GET", &format!("{api}/v1/secrets"), &headers, b"");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some(format!("Keystone uri=\"{}\"", f.auth_url.trim_end_matches("/v3")).as_str())
        );
        assert_eq!(r.json()["title"], "Unauthorized");
    }
    // The no-auth headers mean nothing here.
    let r = http(
        "GET",
        &format!("{api}/v1/secrets"),
        &[("X-Project-Id", "anything"), ("X-Roles", "admin")],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn a_user_token_acts_in_its_own_project_only() {
    let Some(f) = Fixture::start() else { return };
    let (alice, bob) = (f.token("alice"), f.token("bob"));
    let secret = f.store(&alice, "alpha's");
    let r = http(
        "GET",
        &format!("{secret}/payload"),
        &[("X-Auth-Token", alice.as_str()), ("Accept", "text/plain")],
        b"",
    );
    assert_eq!(r.body, b"alpha's");
    let meta = http("GET", &secret, &[("X-Auth-Token", alice.as_str())], b"").json();
    assert_eq!(meta["creator_id"], f.ks["users"]["alice"]["id"]);
    assert_eq!(http("GET", &secret, &[("X-Auth-Token", bob.as_str())], b"").status, 403);
}

#[test]
fn a_service_token_is_accepted_only_with_the_service_role() {
    let Some(f) = Fixture::start() else { return };
    let (alice, bob, nova) = (f.token("alice"), f.token("bob"), f.token("nova"));
    let secret = f.store(&alice, "alpha's");
    let r = http(
        "GET",
        &secret,
        &[("X-Auth-Token", alice.as_str()), ("X-Service-Token", nova.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = http(
        "GET",
        &secret,
        &[("X-Auth-Token", alice.as_str()), ("X-Service-Token", bob.as_str())],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn validated_tokens_are_served_from_the_cache() {
    let Some(mut f) = Fixture::start() else { return };
    let alice = f.token("alice");
    let secret = f.store(&alice, "alpha's");
    // A hot path costs no Keystone round trip: 100 metadata reads, no new validation.
    let before = settled_validations(&f.ks_dir);
    for _ in 0..100 {
        assert_eq!(http("GET", &secret, &[("X-Auth-Token", alice.as_str())], b"").status, 200);
    }
    assert_eq!(settled_validations(&f.ks_dir), before, "cached tokens must not be validated again");
    // Its metrics count the hits, and the validations Keystone answered.
    let metrics_url =
        f.stack.as_ref().unwrap().info["metrics_urls"]["appliance"].as_str().unwrap().to_owned();
    let metrics = String::from_utf8(http("GET", &metrics_url, &[], b"").body).unwrap();
    let series = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(series("appliance_keystone_cache_hits_total") >= 100.0, "{metrics}");
    assert!(series("appliance_keystone_validations_total{result=\"valid\"}") >= 1.0, "{metrics}");
    assert!(series("appliance_keystone_request_duration_seconds_count") >= 1.0, "{metrics}");
    // The appliance says as much when it stops: one validation, then hits.
    let log = f.stop_appliance();
    let line = log
        .lines()
        .find(|l| l.contains("Keystone token cache"))
        .expect("the cache figures are logged at shutdown");
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let (hits, misses) = (field("hits"), field("misses"));
    assert!(hits >= 100 && hits >= 4 * misses, "{line}");
    eprintln!(
        "token cache: {hits} hits, {misses} misses ({:.1}% hits)",
        100.0 * hits as f64 / (hits + misses) as f64
    );
}

#[test]
fn castellan_stores_and_fetches_every_kind_of_key() {
    let Some(f) = Fixture::start() else { return };
    // The script expects the project's first secret to be there already.
    f.store(&f.token("alice"), "alpha's");
    let out = Command::new(f.venv.join("bin/python"))
        .args(["-c", CASTELLAN, &f.api])
        .arg(f.ks_dir.join("keystone.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("castellan"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
}

#[test]
fn the_openstack_cli_finds_the_appliance_in_the_catalog() {
    let Some(f) = Fixture::start() else { return };
    let u = &f.ks["users"]["alice"];
    let osc = |args: &[&str]| {
        let out = Command::new(f.venv.join("bin/openstack"))
            .args([
                "--os-auth-url",
                &f.auth_url,
                "--os-identity-api-version",
                "3",
                "--os-username",
                "alice",
            ])
            .args(["--os-password", u["password"].as_str().unwrap(), "--os-project-name", "alpha"])
            .args(["--os-user-domain-id", "default", "--os-project-domain-id", "default"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openstack {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let href = osc(&[
        "secret",
        "store",
        "--name",
        "osc-secret",
        "--payload",
        "from osc",
        "-f",
        "value",
        "-c",
        "Secret href",
    ]);
    let href = href.trim();
    assert!(href.starts_with(&f.api), "{href}");
    assert_eq!(osc(&["secret", "get", "--payload", href, "-f", "value"]).trim(), "from osc");
    assert_eq!(
        osc(&["secret", "list", "--name", "osc-secret", "-f", "value", "-c", "Secret href"]).trim(),
        href
    );
    osc(&["secret", "delete", href]);
}

#[test]
fn revoked_and_expired_tokens_are_refused() {
    let Some(f) = Fixture::start() else { return };
    let secret = f.store(&f.token("alice"), "alpha's");
    let out = Command::new(f.venv.join("bin/python"))
        .args(["-c", SHORT_LIVED])
        .arg(f.ks_dir.join("keystone.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = line.split_whitespace();
    let (short, expires, revoked) =
        (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
    let expires: f64 = expires.parse().unwrap();
    assert_eq!(http("GET", &secret, &[("X-Auth-Token", revoked)], b"").status, 401);
    assert_eq!(http("GET", &secret, &[("X-Auth-Token", short)], b"").status, 200);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs_f64((expires - now).max(0.0) + 1.0));
    let r = http("GET", &secret, &[("X-Auth-Token", short)], b"");
    assert_eq!(r.status, 401, "an expired token, cached while valid, must be refused");
    assert_eq!(r.json()["title"], "Unauthorized");
}

#[test]
fn without_keystone_validated_tokens_work_and_new_ones_get_503() {
    let Some(mut f) = Fixture::start() else { return };
    let alice = f.token("alice");
    let secret = f.store(&alice, "alpha's");
    f.keystone.stop();
    assert_eq!(http("GET", &secret, &[("X-Auth-Token", alice.as_str())], b"").status, 200);
    let fresh = token_unvalidated();
    let r = http("GET", &secret, &[("X-Auth-Token", fresh.as_str())], b"");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["title"], "Service Unavailable");
    f.stop_appliance();
}

/// A token no appliance has seen (its validity cannot be checked without Keystone).
fn token_unvalidated() -> String {
    format!("gAAAAAB{}", "x".repeat(170))
}

/// `appliance doctor` authenticates the service user: Keystone's acceptance, and a wrong
/// password refused by name, without the password in the report.
#[test]
fn the_doctor_checks_the_service_user() {
    let Some(venv) = keystone_venv() else { return };
    e2e::ensure_binaries();
    let dir = tempfile::tempdir().unwrap();
    let ks_dir = dir.path().join("keystone");
    harness(&venv, &["start", "--dir", ks_dir.to_str().unwrap()]);
    let _keystone = Keystone { venv: venv.clone(), dir: ks_dir.clone() };
    let ks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ks_dir.join("keystone.json")).unwrap())
            .unwrap();
    let auth_url = ks["auth_url"].as_str().unwrap();
    let doctor = |password: &str| {
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let config = dir.path().join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
[hsm]
endpoints = ["127.0.0.1:9"]
ca = "ca.pem"
cert = "appliance.pem"
key = "appliance-key.pem"
[identity]
source = "keystone"
[keystone]
auth_url = "{auth_url}"
username = "barbican"
password_file = "password"
"#,
                db = dir.path().join("none.db").display()
            ),
        )
        .unwrap();
        let out = Command::new(e2e::bin_dir().join("appliance"))
            .args(["doctor", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        // Nothing else is set up here: the doctor fails either way.
        assert_eq!(out.status.code(), Some(1));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!report.contains(password), "{report}");
        let keystone =
            report.lines().find(|l| l.get(6..).is_some_and(|l| l.starts_with("keystone ")));
        keystone.unwrap_or_else(|| panic!("no keystone line:\n{report}")).to_owned()
    };
    let line = doctor(ks["users"]["barbican"]["password"].as_str().unwrap());
    assert!(
        line.starts_with("ok") && line.contains("accepted the service user \"barbican\""),
        "{line}"
    );
    let line = doctor("not-the-password");
    assert!(line.starts_with("FAIL") && line.contains("service user login failed: 401"), "{line}");
}
