//! Interop with the real python-barbicanclient: its `barbican` CLI in no-auth mode and its
//! Python API, against `appliance dev`. Payloads round-trip byte for byte.

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

#[test]
fn barbicanclient_cli_and_python_api_round_trip_payloads() {
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

    // The Python API, text and binary, byte for byte.
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
