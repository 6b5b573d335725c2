//! OpenSC's pkcs11-tool, a third-party PKCS#11 consumer, against the firmware-sim module and a
//! running `fwsim`: slots, mechanisms, key generation, signatures checked by pkcs11-tool and by
//! OpenSSL, persistence across a device restart, and a tamper event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::Path;
use std::process::Command;

use devstack::HsmChoice;
use devstack::testing::{BlockingTestToken, fwsim};

/// The simulator as devstack starts it, and its token, driven by pkcs11-tool.
struct Device {
    token: BlockingTestToken,
}

impl Device {
    /// Starts the simulator on its state under `dir`: a new token the first time, the same
    /// token again after a restart.
    fn start(dir: &Path) -> Device {
        e2e::ensure_binaries();
        Device { token: BlockingTestToken::start(dir, &HsmChoice::default()) }
    }

    fn endpoint(&self) -> &str {
        self.token.simulator_endpoint().expect("the simulator is the HSM")
    }

    /// Runs pkcs11-tool; returns (success, stdout + stderr).
    fn tool(&self, args: &[&str]) -> (bool, String) {
        let (name, value) = self.token.module_env().expect("the simulator's module is configured");
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(self.token.module())
            .args(args)
            .env(name, value)
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
        let pin = self.token.pin();
        let mut all = vec!["--login", "--pin", pin.as_str()];
        all.extend_from_slice(args);
        self.ok(&all)
    }
}

#[test]
fn pkcs11_tool_drives_the_simulator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let device = Device::start(dir);

    let slots = device.ok(&["--list-slots"]);
    let label = format!("token label        : {}", device.token.label());
    assert!(slots.contains(&label), "{slots}");
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
    let pin = device.token.pin();
    let verify = |mechanism: &str, id: &str, signature: &str| {
        let args = ["--verify", "--mechanism", mechanism, "--id", id, "-i", data_s];
        let mut all = vec!["--login", "--pin", pin.as_str()];
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
    fwsim(&["tamper", "--device", device.endpoint()]);
    let objects = device.logged_in(&["--list-objects"]);
    assert!(!objects.contains("tool-"), "{objects}");
}
