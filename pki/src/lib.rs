//! The appliance's own PKI: a CA, and the certificates for mutual TLS between the appliance
//! (client) and its proxies (servers); and reading certificate files back ([`inspect`]).
//!
//! Keys are ECDSA P-256. Private keys are handed out as zeroizing PEM strings and written to
//! disk with mode 0600.

#![forbid(unsafe_code)]

pub mod inspect;

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Validity of the CA certificate.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of leaf certificates.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Back-dating of `notBefore`, for clocks that are slightly behind.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// Why a certificate could not be issued or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8), wiped on drop.
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Common name of the CA that [`write_bundle`] creates.
pub const BUNDLE_CA_NAME: &str = "hsm appliance CA";

/// A certificate authority whose key is held in memory.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateAuthority(..)")
    }
}

impl CertificateAuthority {
    /// A new CA with a fresh key.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self { issuer: Issuer::new(params, key), cert_pem })
    }

    /// A CA created earlier (by [`CertificateAuthority::new`] with `common_name`), from its
    /// certificate and key. Certificates it issues chain to that certificate: the issuer name is
    /// rebuilt from `common_name` and the key identifier from the key.
    pub fn load(cert_pem: &str, key_pem: &str, common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self { issuer: Issuer::new(params, key), cert_pem: cert_pem.to_owned() })
    }

    /// The CA certificate.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, Error> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate naming `name` (a DNS-form name, as proxies' allow-lists expect).
    pub fn issue_client(&self, name: &str) -> Result<Issued, Error> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<Issued, Error> {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(names.first().copied().unwrap_or("leaf"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()) })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

/// Where [`write_bundle`] put each file.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The proxy's certificate.
    pub proxy_cert: PathBuf,
    /// The proxy's key.
    pub proxy_key: PathBuf,
    /// The appliance's client certificate.
    pub client_cert: PathBuf,
    /// The appliance's client key.
    pub client_key: PathBuf,
}

impl Bundle {
    /// Where the files of a bundle written into `dir` are.
    pub fn in_dir(dir: &Path) -> Bundle {
        Bundle {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            proxy_cert: dir.join("proxy.pem"),
            proxy_key: dir.join("proxy-key.pem"),
            client_cert: dir.join("appliance.pem"),
            client_key: dir.join("appliance-key.pem"),
        }
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses) from this bundle's
    /// CA, and writes it to `cert` and its key to `key` (mode 0600).
    pub fn issue_server_files(&self, names: &[&str], cert: &Path, key: &Path) -> Result<(), Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(Zeroizing::new)
                .map_err(|source| Error::Io { path: path.to_owned(), source })
        };
        let ca = CertificateAuthority::load(
            &read(&self.ca_cert)?,
            &read(&self.ca_key)?,
            BUNDLE_CA_NAME,
        )?;
        let issued = ca.issue_server(names)?;
        write_file(key, issued.key_pem.as_bytes(), 0o600)?;
        write_file(cert, issued.cert_pem.as_bytes(), 0o644)
    }
}

/// Issues a CA, a proxy server certificate for `proxy_names` and a client certificate for
/// `client_name`, and writes them into `dir` (keys with mode 0600).
pub fn write_bundle(dir: &Path, proxy_names: &[&str], client_name: &str) -> Result<Bundle, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
    let ca = CertificateAuthority::new(BUNDLE_CA_NAME)?;
    let proxy = ca.issue_server(proxy_names)?;
    let client = ca.issue_client(client_name)?;
    let bundle = Bundle::in_dir(dir);
    write_file(&bundle.ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
    write_file(&bundle.ca_key, ca.key_pem().as_bytes(), 0o600)?;
    write_file(&bundle.proxy_cert, proxy.cert_pem.as_bytes(), 0o644)?;
    write_file(&bundle.proxy_key, proxy.key_pem.as_bytes(), 0o600)?;
    write_file(&bundle.client_cert, client.cert_pem.as_bytes(), 0o644)?;
    write_file(&bundle.client_key, client.key_pem.as_bytes(), 0o600)?;
    Ok(bundle)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_with_the_right_names() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let server = ca.issue_server(&["hsm-proxy", "127.0.0.1"]).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        for name in ["hsm-proxy", "127.0.0.1"] {
            verifier
                .verify_server_cert(
                    &der(&server.cert_pem),
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        let wrong = verifier.verify_server_cert(
            &der(&server.cert_pem),
            &[],
            &ServerName::try_from("elsewhere").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(wrong.is_err());

        let client = ca.issue_client("appliance").unwrap();
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .unwrap();
        client_verifier.verify_client_cert(&der(&client.cert_pem), &[], UnixTime::now()).unwrap();
        // A server certificate lacks the clientAuth usage.
        assert!(
            client_verifier
                .verify_client_cert(&der(&server.cert_pem), &[], UnixTime::now())
                .is_err()
        );
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_the_original() {
        let ca = CertificateAuthority::new(BUNDLE_CA_NAME).unwrap();
        let loaded =
            CertificateAuthority::load(&ca.cert_pem(), &ca.key_pem(), BUNDLE_CA_NAME).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let client = loaded.issue_client("appliance").unwrap();
        verifier.verify_client_cert(&der(&client.cert_pem), &[], UnixTime::now()).unwrap();
    }

    #[test]
    fn a_bundle_issues_server_certificates_that_chain_to_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = write_bundle(dir.path(), &["hsm-proxy"], "appliance").unwrap();
        let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api-key.pem"));
        bundle.issue_server_files(&["localhost", "::1", "192.0.2.7"], &cert, &key).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&std::fs::read_to_string(&bundle.ca_cert).unwrap())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = der(&std::fs::read_to_string(&cert).unwrap());
        for name in ["localhost", "::1", "192.0.2.7"] {
            let name = ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).unwrap();
        }
        let elsewhere = ServerName::try_from("192.0.2.8").unwrap();
        assert!(verifier.verify_server_cert(&leaf, &[], &elsewhere, &[], UnixTime::now()).is_err());
        assert!(std::fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
    }

    #[test]
    fn bundle_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = write_bundle(dir.path(), &["hsm-proxy"], "appliance").unwrap();
        for key in [&bundle.ca_key, &bundle.proxy_key, &bundle.client_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
            assert!(std::fs::read_to_string(key).unwrap().contains("PRIVATE KEY"));
        }
    }
}
