//! The server's TLS: 1.3 only, client certificates required, issued by the configured CA and
//! naming an allowed client. Anything else fails the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// Builds the server configuration from the `[tls]` section.
pub(crate) fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&config.client_ca)? {
        roots.add(cert).map_err(|e| tls_err(&config.client_ca, &e))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Tls(format!("client CA {}: {e}", config.client_ca.display())))?;
    let mut allowed = Vec::with_capacity(config.allowed_clients.len());
    for name in &config.allowed_clients {
        let name = ServerName::try_from(name.clone())
            .map_err(|e| Error::Tls(format!("allowed client {name:?}: {e}")))?;
        allowed.push(name);
    }
    let verifier = Arc::new(AllowListVerifier { inner, allowed });
    let chain = read_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| tls_err(&config.key, &e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("server certificate and key: {e}")))?;
    Ok(Arc::new(server))
}

/// The metrics listener's TLS: TLS 1.2 and 1.3 (scrapers and load balancers speak either), the
/// given certificate chain and key, no client certificate.
pub(crate) fn metrics_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, &e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("metrics certificate and key: {e}")))?;
    Ok(Arc::new(server))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, &e))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

fn tls_err(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {e}", path.display()))
}

/// The web-PKI client verifier, plus a check that the certificate names an allowed client.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allowed.iter().any(|name| cert.verify_is_valid_for_subject_name(name).is_ok()) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}
