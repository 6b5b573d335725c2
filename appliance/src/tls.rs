//! The API's HTTPS: rustls with TLS 1.2 and 1.3 and ALPN `http/1.1`, its certificate, key and
//! client CAs read from `[server]`'s files, and read again on SIGHUP.
//!
//! The whole rustls configuration is swapped when the files are read again: a handshake takes
//! the configuration of its moment, so connections already open keep theirs, and files that do
//! not load leave the one in use in place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use zeroize::{Zeroize, Zeroizing};

use crate::config::{ClientAuth, ServerConfig};
use crate::error::{Error, Result};

/// The protocol the API speaks inside TLS, offered in ALPN.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The API's TLS configuration, and the files it is read from.
pub struct Tls {
    files: Files,
    current: RwLock<Loaded>,
}

/// A configuration read from the files.
#[derive(Clone)]
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate (the chain's first), as `openssl x509 -fingerprint -sha256`
    /// shows it, for the log.
    fingerprint: String,
}

/// Where the configuration comes from.
#[derive(Clone, Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// The TLS configuration of `[server]`, its files read; `None` when the API speaks plain
    /// HTTP (no `tls_cert`).
    pub fn from_config(config: &ServerConfig) -> Result<Option<Arc<Tls>>> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            if config.tls_cert.is_some() || config.tls_key.is_some() {
                return Err(Error::Config(
                    "[server] tls_cert and tls_key go together: set both for HTTPS, or neither"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.tls_client_ca.clone(),
            client_auth: config.tls_client_auth.unwrap_or_default(),
        };
        let loaded = files.load()?;
        tracing::info!(
            cert = %files.cert.display(),
            sha256 = %loaded.fingerprint,
            client_certificates = files.client_ca.as_ref().map_or("not asked for", |_| {
                match files.client_auth {
                    ClientAuth::Required => "required",
                    ClientAuth::Optional => "optional",
                }
            }),
            "HTTPS: TLS 1.2 and 1.3"
        );
        Ok(Some(Arc::new(Tls { files, current: RwLock::new(loaded) })))
    }

    /// An acceptor with the configuration of the moment.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(current.config.clone())
    }

    /// Reads the files again: new handshakes use them once they have loaded; when they do not,
    /// the configuration in use stays and the error says why. Gives the new certificate's
    /// SHA-256 fingerprint.
    pub fn reload(&self) -> Result<String> {
        let loaded = self.files.load()?;
        let fingerprint = loaded.fingerprint.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(fingerprint)
    }

    /// Reads the files again at every signal from `hangups`, until it ends.
    pub(crate) async fn reload_on(&self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(sha256) => tracing::info!(
                    cert = %self.files.cert.display(),
                    %sha256,
                    "SIGHUP: TLS certificate and key reloaded; new connections use them"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the TLS files could not be loaded; the certificate in use stays"
                ),
            }
        }
    }
}

impl Files {
    fn load(&self) -> Result<Loaded> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("tls_cert", &self.cert)?;
        let fingerprint = chain.first().map(|c| fingerprint(c)).unwrap_or_default();
        let key = read_key(&self.key)?;
        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            // A key whose public half cannot be compared is left to the first handshake, as
            // rustls itself does.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(Error::Config(format!(
                    "[server] tls_key {} is not the key of tls_cert {}",
                    self.key.display(),
                    self.cert.display()
                )));
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "[server] tls_cert {}: {e}",
                    self.cert.display()
                )));
            }
        }
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Config(format!("[server] TLS: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("tls_client_ca", path)? {
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!("[server] tls_client_ca {}: {e}", path.display()))
                    })?;
                }
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if self.client_auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier.build().map_err(|e| {
                    Error::Config(format!("[server] tls_client_ca {}: {e}", path.display()))
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Loaded { config: Arc::new(config), fingerprint })
    }
}

/// The certificates of a PEM file, in order; at least one.
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: pem::Error| Error::Config(format!("[server] {key} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "[server] {key} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The signing key of a PEM file; the key's bytes are wiped once it is loaded.
fn read_key(path: &Path) -> Result<Arc<dyn rustls::sign::SigningKey>> {
    let text = Zeroizing::new(
        std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?,
    );
    let mut der = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no PEM private key in the file".to_owned(),
            other => other.to_string(),
        };
        Error::Config(format!("[server] tls_key {}: {why}", path.display()))
    })?;
    let key = rustls::crypto::ring::sign::any_supported_type(&der);
    der.zeroize();
    key.map_err(|e| Error::Config(format!("[server] tls_key {}: {e}", path.display())))
}

/// `AB:CD:...`: the SHA-256 of a certificate, in capitals and colons.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    /// A CA, and a server certificate and key from it, written into `dir`.
    fn files(dir: &Path, name: &str) -> (pki::CertificateAuthority, PathBuf, PathBuf) {
        let ca = pki::CertificateAuthority::new("test CA").unwrap();
        let issued = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key_pem.as_bytes()).unwrap();
        (ca, cert, key)
    }

    fn server(cert: &Path, key: &Path) -> ServerConfig {
        ServerConfig {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = files(dir.path(), "a");
        let (_, other_cert, other_key) = files(dir.path(), "b");
        let error = |config: &ServerConfig| Tls::from_config(config).unwrap_err().to_string();

        let e = error(&server(&cert, &other_key));
        assert!(e.contains("is not the key of tls_cert"), "{e}");
        let e = error(&server(&key, &key));
        assert!(e.contains("tls_cert") && e.contains("no PEM certificate"), "{e}");
        let e = error(&server(&cert, &cert));
        assert!(e.contains("tls_key") && e.contains("no PEM private key"), "{e}");
        let e = error(&server(&dir.path().join("missing.pem"), &key));
        assert!(e.contains("missing.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let e = error(&server(&garbage, &key));
        assert!(e.contains("tls_cert"), "{e}");
        let mut config = server(&cert, &key);
        config.tls_client_ca = Some(other_key.clone());
        let e = error(&config);
        assert!(e.contains("tls_client_ca") && e.contains("no PEM certificate"), "{e}");

        let mut config = server(&cert, &key);
        config.tls_key = None;
        assert!(error(&config).contains("go together"));
        config.tls_cert = None;
        assert!(Tls::from_config(&config).unwrap().is_none());
        assert!(Tls::from_config(&server(&other_cert, &other_key)).unwrap().is_some());
    }

    #[test]
    fn a_reload_that_fails_keeps_the_certificate_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = files(dir.path(), "api");
        let tls = Tls::from_config(&server(&cert, &key)).unwrap().unwrap();
        let first = tls.current.read().unwrap().fingerprint.clone();
        assert_eq!(first.len(), 32 * 3 - 1);
        assert!(!format!("{tls:?}").contains("PRIVATE"));

        // A new certificate whose key has not been written yet: refused, the old one stays.
        let (_, new_cert, new_key) = files(dir.path(), "new");
        std::fs::copy(&new_cert, &cert).unwrap();
        assert!(tls.reload().unwrap_err().to_string().contains("is not the key"));
        assert_eq!(tls.current.read().unwrap().fingerprint, first);
        // Both written: taken.
        std::fs::copy(&new_key, &key).unwrap();
        let second = tls.reload().unwrap();
        assert_ne!(second, first);
        assert_eq!(tls.current.read().unwrap().fingerprint, second);
        let config = tls.acceptor().config().clone();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
