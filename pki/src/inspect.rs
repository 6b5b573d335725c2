//! Reading certificate files back: who each certificate names and when it is valid, so that
//! `appliance doctor` and `hsm-proxy check-config` can say a file is unreadable, expired or
//! about to expire before a handshake fails on it.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::Certificate;
use x509_cert::der::{DateTime, Decode};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// One certificate of a PEM file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its subject, as `CN=appliance`.
    pub subject: String,
    /// Start of its validity, in seconds since the epoch.
    pub not_before: i64,
    /// End of its validity, in seconds since the epoch.
    pub not_after: i64,
    /// End of its validity, as `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after_text: String,
}

/// How a certificate file stands at a given time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Every certificate in it is valid for longer than the margin asked for.
    Valid(String),
    /// Every certificate in it is valid, one for less than the margin.
    ExpiresSoon(String),
    /// It cannot be read, holds no certificate, or one of them is expired or not yet valid.
    Invalid(String),
}

/// Every certificate in the PEM file at `path`, in order (text and other sections around them,
/// as some tools write, are passed over); a file that cannot be read, holds no certificate or
/// one that does not parse is an error, said in words.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateInfo>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .map(|der| {
            let der = der.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
            Certificate::from_der(&der)
                .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(certificates
        .iter()
        .map(|c| {
            let validity = &c.tbs_certificate.validity;
            let seconds = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            CertificateInfo {
                subject: c.tbs_certificate.subject.to_string(),
                not_before: seconds(validity.not_before.to_unix_duration()),
                not_after: seconds(validity.not_after.to_unix_duration()),
                not_after_text: date_time(&validity.not_after.to_date_time()),
            }
        })
        .collect())
}

/// How the certificates of the file at `path` stand at `now` (seconds since the epoch): the
/// first to expire is the one named, and one expiring within `margin_days` is said to.
pub fn standing(path: &Path, now: i64, margin_days: i64) -> Standing {
    let certificates = match read_certificates(path) {
        Ok(c) => c,
        Err(why) => return Standing::Invalid(why),
    };
    judge(&certificates, now, margin_days)
}

/// [`standing`] of certificates already read.
pub fn judge(certificates: &[CertificateInfo], now: i64, margin_days: i64) -> Standing {
    if let Some(early) = certificates.iter().find(|c| c.not_before > now) {
        let days = (early.not_before - now + DAY - 1) / DAY;
        return Standing::Invalid(format!(
            "{} is not valid yet (for {days} more day{}): is this machine's clock behind?",
            early.subject,
            plural(days)
        ));
    }
    let Some(first) = certificates.iter().min_by_key(|c| c.not_after) else {
        return Standing::Invalid("no certificate".into());
    };
    let left = first.not_after - now;
    if left <= 0 {
        return Standing::Invalid(format!("{} expired on {}", first.subject, first.not_after_text));
    }
    let days = left / DAY;
    let text = format!(
        "{} valid until {} ({days} day{} left)",
        first.subject,
        first.not_after_text,
        plural(days)
    );
    if days < margin_days { Standing::ExpiresSoon(text) } else { Standing::Valid(text) }
}

fn plural(n: i64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn date_time(t: &DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minutes(),
        t.seconds()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;
    use crate::CertificateAuthority;

    fn now() -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        i64::try_from(since.as_secs()).unwrap()
    }

    #[test]
    fn issued_certificates_read_back_with_their_names_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new("test CA").unwrap();
        let client = ca.issue_client("appliance").unwrap();
        let path = dir.path().join("chain.pem");
        // With the text some tools write around each certificate.
        let text =
            format!("subject=CN=appliance\n{}Bag Attributes\n{}", client.cert_pem, ca.cert_pem());
        std::fs::write(&path, text).unwrap();
        let certs = read_certificates(&path).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs[0].subject.contains("CN=appliance"), "{}", certs[0].subject);
        assert!(certs[1].subject.contains("CN=test CA"), "{}", certs[1].subject);
        let now = now();
        // Back-dated an hour; leaves for 825 days, the CA for 3650.
        assert!((certs[0].not_before - (now - 3600)).abs() < 60);
        assert!((certs[0].not_after - (now + 825 * DAY)).abs() < 60);
        assert!((certs[1].not_after - (now + 3650 * DAY)).abs() < 60);
        assert!(certs[0].not_after_text.ends_with(" UTC"), "{}", certs[0].not_after_text);
        // The leaf expires first: it is the one named, with its whole days left.
        let left = format!("({} days left)", (certs[0].not_after - now) / DAY);
        match standing(&path, now, 30) {
            Standing::Valid(text) => {
                assert!(text.contains("CN=appliance valid until") && text.contains(&left), "{text}")
            }
            other => panic!("{other:?}"),
        }
        match standing(&path, now, 900) {
            Standing::ExpiresSoon(text) => assert!(text.contains("CN=appliance"), "{text}"),
            other => panic!("{other:?}"),
        }
        match standing(&path, now + 826 * DAY, 30) {
            Standing::Invalid(text) => assert!(text.contains("CN=appliance expired on"), "{text}"),
            other => panic!("{other:?}"),
        }
        match standing(&path, now - 2 * DAY, 30) {
            Standing::Invalid(text) => {
                assert!(text.contains("not valid yet (for 2 more days)"), "{text}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_files_and_keys_are_said_to_be_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(
            matches!(standing(&missing, now(), 30), Standing::Invalid(t) if t.contains("missing.pem"))
        );
        let ca = CertificateAuthority::new("test CA").unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, ca.key_pem().as_bytes()).unwrap();
        let e = read_certificates(&key).unwrap_err();
        assert!(e.contains("key.pem") && e.contains("no PEM certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY-----\n"), "the key is not shown: {e}");
        for (name, text) in [("empty.pem", ""), ("newline.pem", "\n"), ("text.pem", "x")] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let e = read_certificates(&path).unwrap_err();
            assert!(e.contains("no PEM certificate"), "{name}: {e}");
        }
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let e = read_certificates(&broken).unwrap_err();
        assert!(e.contains("not an X.509 certificate"), "{e}");
    }
}
