//! Interop with the real python-barbicanclient: its `barbican` CLI in no-auth mode and its
//! Python API, against `appliance dev`: secrets (payloads byte for byte), orders, containers,
//! ACLs and consumers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::Path;
use std::process::Command;

use e2e::{DevStack, barbican_venv};

fn cli(venv: &Path, api: &str, project: &str, args: &[&str]) -> String {
    let out = Command::new(venv.join("bin/barbican"))
        .args(["--no-auth", "--endpoint", api, "--os-project-id", project])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "barbican {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const PYTHON: &str = r#"
import sys
from barbicanclient import client

api, project = sys.argv[1], sys.argv[2]
bc = client.Client(endpoint=api, project_id=project)

# Text: stored as text/plain, read back as str.
text = "Grüße, 鍵 — a passphrase\nwith two lines"
s = bc.secrets.create(name="py-text", payload=text, secret_type="passphrase")
ref = s.store()
got = bc.secrets.get(ref)
assert got.payload == text, repr(got.payload)
assert got.name == "py-text" and got.secret_type == "passphrase", (got.name, got.secret_type)
assert got.content_types == {"default": "text/plain"}, got.content_types

# Binary: every byte value, stored base64 as application/octet-stream.
blob = bytes(range(256)) * 3
b = bc.secrets.create(name="py-bytes", payload=blob, algorithm="aes", bit_length=256, mode="cbc", secret_type="symmetric")
bref = b.store()
got = bc.secrets.get(bref)
assert got.payload == blob, "binary payload differs"
assert got.bit_length == 256 and got.algorithm == "aes"

# Listing with a filter, metadata, and deletion.
names = sorted(x.name for x in bc.secrets.list(name="py-%"))
assert names == ["py-bytes", "py-text"], names
bc.secrets.set_secret_metadata(ref, {"Owner": "interop"})
assert bc.secrets.get_secret_metadata(ref) == {"metadata": {"owner": "interop"}}
bc.secrets.delete(bref)
bc.secrets.delete(ref)
assert [x for x in bc.secrets.list(name="py-%")] == []

# Errors surface as the client's exceptions with the server's status.
from barbicanclient import exceptions
try:
    bc.secrets.get(ref).payload
    raise SystemExit("a deleted secret was readable")
except exceptions.HTTPClientError as e:
    assert e.status_code == 404, e.status_code
print("python api ok")
"#;

/// Orders, containers, ACLs and consumers through the Python API; prints the order latencies.
const PYTHON_RESOURCES: &str = r#"
import sys, time
from barbicanclient import client, exceptions
api, project = sys.argv[1], sys.argv[2]
bc = client.Client(endpoint=api, project_id=project)

def wait(ref):
    order = bc.orders.get(ref)
    while order.status == "PENDING":
        time.sleep(0.01)
        order = bc.orders.get(ref)
    return order

# Key orders, as Castellan makes them; latency from submit to the first ACTIVE answer.
latencies = []
for i in range(20):
    t0 = time.perf_counter()
    ref = bc.orders.create_key(name="vol-%d" % i, algorithm="aes", bit_length=256, mode="cbc").submit()
    order = wait(ref)
    latencies.append(time.perf_counter() - t0)
    assert order.status == "ACTIVE", (order.status, order.error_reason)
key = bc.secrets.get(order.secret_ref)
assert len(key.payload) == 32 and key.secret_type == "symmetric"
latencies.sort()
print("key order latency median %.1f ms, max %.1f ms" % (latencies[len(latencies) // 2] * 1000, latencies[-1] * 1000))

# An asymmetric order: an RSA container with PEM keys.
order = wait(bc.orders.create_asymmetric(name="kp", algorithm="rsa", bit_length=2048).submit())
assert order.status == "ACTIVE", order.error_reason
pair = bc.containers.get(order.container_ref)
assert type(pair).__name__ == "RSAContainer", type(pair).__name__
assert pair.private_key.payload.startswith(b"-----BEGIN PRIVATE KEY-----")
assert pair.public_key.payload.startswith(b"-----BEGIN PUBLIC KEY-----")

# Containers of each type.
one = bc.secrets.create(name="one", payload="1").store()
two = bc.secrets.create(name="two", payload="2").store()
gen = bc.containers.create(name="gen", secrets={"a": bc.secrets.get(one), "b": bc.secrets.get(two)}).store()
assert sorted(bc.containers.get(gen).secrets) == ["a", "b"]
rsa = bc.containers.create_rsa(name="rsa", public_key=bc.secrets.get(one), private_key=bc.secrets.get(two)).store()
assert type(bc.containers.get(rsa)).__name__ == "RSAContainer"
cert = bc.containers.create_certificate(name="c", certificate=bc.secrets.get(one), private_key=bc.secrets.get(two)).store()
assert type(bc.containers.get(cert)).__name__ == "CertificateContainer"

# ACLs: submit, get, remove.
bc.acls.create(entity_ref=one, users=["friend"], project_access=False).submit()
acl = bc.acls.get(one)
assert acl.read.project_access is False and acl.read.users == ["friend"], (acl.read.project_access, acl.read.users)
acl.remove()
assert bc.acls.get(one).read.project_access is True

# Consumers on secrets and containers, and the delete guard they raise.
bc.secrets.register_consumer(one, service="image", resource_type="image", resource_id="img-1")
assert [(c.service, c.resource_id) for c in bc.secrets.list_consumers(one)] == [("image", "img-1")]
try:
    bc.secrets.delete(one)
    raise SystemExit("a secret with consumers was deleted")
except exceptions.SecretHasConsumers:
    pass
bc.secrets.remove_consumer(one, service="image", resource_type="image", resource_id="img-1")
bc.containers.register_consumer(gen, name="lbaas", url="http://lb/1")
assert bc.containers.get(gen).consumers == [{"name": "lbaas", "URL": "http://lb/1"}]
bc.containers.remove_consumer(gen, name="lbaas", url="http://lb/1")
bc.secrets.delete(one)
print("python resources ok")
"#;

/// The `barbican` CLI: store, get, get --payload, list, delete; other projects see nothing.
#[test]
fn the_cli_stores_gets_lists_and_deletes_a_secret() {
    let Some(venv) = barbican_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();

    // The CLI: store, get, get --payload, list, delete.
    let out = cli(
        &venv,
        &api,
        "cli-project",
        &[
            "secret",
            "store",
            "--name",
            "cli-secret",
            "--payload",
            "payload from the CLI",
            "-f",
            "value",
            "-c",
            "Secret href",
        ],
    );
    let secret_ref = out.trim().to_owned();
    assert!(secret_ref.starts_with(&format!("{api}/v1/secrets/")), "{out}");
    let out = cli(
        &venv,
        &api,
        "cli-project",
        &["secret", "get", &secret_ref, "-f", "value", "-c", "Name", "-c", "Status"],
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["cli-secret", "ACTIVE"], "{out}");
    let out = cli(
        &venv,
        &api,
        "cli-project",
        &["secret", "get", "--payload", &secret_ref, "-f", "value"],
    );
    assert_eq!(out.trim_end_matches('\n'), "payload from the CLI");
    let out =
        cli(&venv, &api, "cli-project", &["secret", "list", "-f", "value", "-c", "Secret href"]);
    assert_eq!(out.trim(), secret_ref);
    // Another project sees nothing.
    // (cliff knows no columns of an empty listing, so these list without -c.)
    let out = cli(&venv, &api, "someone-else", &["secret", "list", "-f", "value"]);
    assert_eq!(out.trim(), "");
    cli(&venv, &api, "cli-project", &["secret", "delete", &secret_ref]);
    let out = cli(&venv, &api, "cli-project", &["secret", "list", "-f", "value"]);
    assert_eq!(out.trim(), "");

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// The Python API, text and binary payloads, byte for byte.
#[test]
fn the_python_api_round_trips_text_and_binary_payloads() {
    let Some(venv) = barbican_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();

    let out = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(PYTHON)
        .arg(&api)
        .arg("py-project")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("python api ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// The Python API on orders, containers, ACLs and consumers.
#[test]
fn the_python_api_handles_orders_containers_acls_and_consumers() {
    let Some(venv) = barbican_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();

    let out = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(PYTHON_RESOURCES)
        .arg(&api)
        .arg("py-resources")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("python resources ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.lines().next().unwrap_or_default());

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// The CLI: an order, a container holding its key, and an ACL on it.
#[test]
fn the_cli_orders_a_key_puts_it_in_a_container_and_sets_its_acl() {
    let Some(venv) = barbican_venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();

    let order = cli(
        &venv,
        &api,
        "cli-project",
        &[
            "secret",
            "order",
            "create",
            "--name",
            "cli-order",
            "--algorithm",
            "aes",
            "--bit-length",
            "256",
            "--mode",
            "cbc",
            "key",
            "-f",
            "value",
            "-c",
            "Order href",
        ],
    );
    let order = order.trim().to_owned();
    let mut status = String::new();
    for _ in 0..200 {
        status = cli(
            &venv,
            &api,
            "cli-project",
            &["secret", "order", "get", &order, "-f", "value", "-c", "Status"],
        )
        .trim()
        .to_owned();
        if status != "PENDING" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status, "ACTIVE");
    let secret = cli(
        &venv,
        &api,
        "cli-project",
        &["secret", "order", "get", &order, "-f", "value", "-c", "Secret href"],
    );
    let secret = secret.trim().to_owned();
    let container = cli(
        &venv,
        &api,
        "cli-project",
        &[
            "secret",
            "container",
            "create",
            "--name",
            "cli-box",
            "--type",
            "generic",
            "--secret",
            &format!("key={secret}"),
            "-f",
            "value",
            "-c",
            "Container href",
        ],
    );
    let out = cli(
        &venv,
        &api,
        "cli-project",
        &["secret", "container", "get", container.trim(), "-f", "value", "-c", "Secrets"],
    );
    assert!(out.contains(&secret), "{out}");
    cli(
        &venv,
        &api,
        "cli-project",
        &["acl", "submit", "--user", "someone", "--no-project-access", &secret],
    );
    let acl = cli(
        &venv,
        &api,
        "cli-project",
        &["acl", "get", &secret, "-f", "value", "-c", "Users", "-c", "Project Access"],
    );
    assert!(acl.contains("someone") && acl.contains("False"), "{acl}");
    cli(&venv, &api, "cli-project", &["acl", "delete", &secret]);
    let acl = cli(
        &venv,
        &api,
        "cli-project",
        &["acl", "get", &secret, "-f", "value", "-c", "Project Access"],
    );
    assert!(acl.contains("True"), "{acl}");

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}
