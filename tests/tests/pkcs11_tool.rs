//! OpenSC's pkcs11-tool, a third-party PKCS#11 consumer, against the firmware-sim module and a
//! running `fwsim`: slots, mechanisms, key generation, signatures checked by pkcs11-tool and by
//! OpenSSL, persistence across a device restart, and a tamper event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use e2e::bin_dir;

const PIN: &str = "pkcs11-tool-pin";

struct Device {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Device {
    fn start(dir: &Path) -> Device {
        e2e::ensure_binaries();
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(bin_dir().join("fwsim"))
            .args(["serve", "--listen", "tcp:127.0.0.1:0", "--profile", "ideal", "--state"])
            .arg(dir.join("state"))
            .arg("--ready-file")
            .arg(&ready)
            .stderr(std::fs::File::create(dir.join("fwsim.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let info: serde_json::Value = serde_json::from_str(&text).unwrap();
                break info["listen"][0].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "fwsim did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        std::fs::write(dir.join("pkcs11.toml"), format!("device = \"{endpoint}\"\n")).unwrap();
        Device { child, dir: dir.to_owned(), endpoint }
    }

    fn fwsim(&self, args: &[&str]) -> String {
        let out = Command::new(bin_dir().join("fwsim")).args(args).output().unwrap();
        assert!(out.status.success(), "fwsim {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs pkcs11-tool; returns (success, stdout + stderr).
    fn tool(&self, args: &[&str]) -> (bool, String) {
        let module = bin_dir().join("libfirmware_sim_pkcs11.so");
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&module)
            .args(args)
            .env("FWSIM_PKCS11_CONF", self.dir.join("pkcs11.toml"))
            .output()
            .expect("pkcs11-tool must be installed (apt-get install opensc)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.tool(args);
        assert!(ok, "pkcs11-tool {args:?}:\n{text}");
        text
    }

    fn logged_in(&self, args: &[&str]) -> String {
        let mut all = vec!["--login", "--pin", PIN];
        all.extend_from_slice(args);
        self.ok(&all)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pkcs11_tool_drives_the_simulator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("so-pin"), "so-pin-for-tool").unwrap();
    std::fs::write(dir.join("pin"), PIN).unwrap();
    let device = Device::start(dir);
    let (so, pin) = (dir.join("so-pin"), dir.join("pin"));
    device.fwsim(&[
        "init-token",
        "--device",
        &device.endpoint,
        "--label",
        "tool-test",
        "--so-pin-file",
        so.to_str().unwrap(),
        "--pin-file",
        pin.to_str().unwrap(),
    ]);

    let slots = device.ok(&["--list-slots"]);
    assert!(slots.contains("token label        : tool-test"), "{slots}");
    assert!(slots.contains("firmware-sim"), "{slots}");
    let mechanisms = device.ok(&["--list-mechanisms"]);
    for m in
        ["AES-GCM", "ECDSA-SHA256", "SHA256-RSA-PKCS-PSS", "RSA-PKCS-KEY-PAIR-GEN", "AES-KEY-GEN"]
    {
        assert!(mechanisms.contains(m), "{m} missing:\n{mechanisms}");
    }

    // Key generation.
    let ec = device.logged_in(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "tool-ec",
        "--id",
        "01",
    ]);
    assert!(ec.contains("EC_POINT 256 bits"), "{ec}");
    device.logged_in(&[
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "tool-rsa",
        "--id",
        "02",
    ]);
    let aes = device.logged_in(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "tool-aes",
        "--id",
        "03",
    ]);
    assert!(aes.contains("AES length 32"), "{aes}");
    let objects = device.logged_in(&["--list-objects"]);
    for label in ["tool-ec", "tool-rsa", "tool-aes"] {
        assert!(objects.contains(label), "{label} missing:\n{objects}");
    }
    assert!(objects.contains("never extractable"), "{objects}");

    // Sign with the token; verify with the token and with OpenSSL.
    let data = dir.join("data");
    std::fs::write(&data, b"signed by firmware-sim\n").unwrap();
    let (data_s, ec_sig, rsa_sig) = (
        data.to_str().unwrap(),
        dir.join("ec.sig").to_str().unwrap().to_owned(),
        dir.join("rsa.sig").to_str().unwrap().to_owned(),
    );
    let sign = |mechanism: &str, id: &str, out: &str| {
        device.logged_in(&["--sign", "--mechanism", mechanism, "--id", id, "-i", data_s, "-o", out])
    };
    let verify = |mechanism: &str, id: &str, signature: &str| {
        let args = ["--verify", "--mechanism", mechanism, "--id", id, "-i", data_s];
        let mut all = vec!["--login", "--pin", PIN];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--signature-file", signature]);
        device.tool(&all)
    };
    sign("ECDSA-SHA256", "01", &ec_sig);
    let (ok, verified) = verify("ECDSA-SHA256", "01", &ec_sig);
    assert!(ok && verified.contains("Signature is valid"), "{verified}");
    sign("SHA256-RSA-PKCS", "02", &rsa_sig);
    let public = dir.join("rsa.der");
    device.ok(&["--read-object", "--type", "pubkey", "--id", "02", "-o", public.to_str().unwrap()]);
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-keyform", "DER", "-verify"])
        .arg(&public)
        .arg("-signature")
        .arg(&rsa_sig)
        .arg(&data)
        .output()
        .expect("openssl must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Verified OK"),
        "openssl: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A tampered message fails verification on the token.
    std::fs::write(&data, b"signed by someone else\n").unwrap();
    let (ok, text) = verify("ECDSA-SHA256", "01", &ec_sig);
    assert!(!ok || text.contains("Invalid signature"), "{text}");

    // Randomness, and a wrong PIN.
    let random = dir.join("random");
    device.ok(&["--generate-random", "32", "-o", random.to_str().unwrap()]);
    assert_eq!(std::fs::read(&random).unwrap().len(), 32);
    let (ok, text) = device.tool(&["--login", "--pin", "not-the-pin", "--list-objects"]);
    assert!(!ok && text.contains("CKR_PIN_INCORRECT"), "{text}");

    // The device restarts: its token objects are still there.
    drop(device);
    let device = Device::start(dir);
    let objects = device.logged_in(&["--list-objects"]);
    assert!(objects.contains("tool-rsa") && objects.contains("tool-aes"), "{objects}");

    // A tamper event zeroizes every key.
    device.fwsim(&["tamper", "--device", &device.endpoint]);
    let objects = device.logged_in(&["--list-objects"]);
    assert!(!objects.contains("tool-"), "{objects}");
}
