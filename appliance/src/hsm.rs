//! The appliance's side of the key hierarchy: project KEKs (created on first use, stored only
//! wrapped) and sealing payloads through the HSM proxies.

use std::sync::Mutex;
use std::time::Duration;

use hsm_proxy_proto::client::{Client, Error as ClientError};
use hsm_proxy_proto::op::{Decrypt, Encrypt, Health, HealthReport, Kek, KekId, Sealed};
use hsm_proxy_proto::{SecretBytes, Status};

use crate::config::HsmConfig;
use appliance_store::{KekRow, Store, StoreError, StoredPayload};

mod coalesce;
mod keks;

pub(crate) use keks::{KekPolicy, Keks};

/// A payload the HSM sealed under KEK `kek_id`, as it is stored.
pub(crate) fn stored(
    content_type: String,
    format: Option<String>,
    kek_id: String,
    sealed: Sealed,
) -> StoredPayload {
    StoredPayload::new(content_type, format, kek_id, sealed.ciphertext, &sealed.iv, &sealed.tag)
}

use coalesce::Coalescer;

/// Why an HSM-backed step failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HsmError {
    /// No proxy answered, too many operations already wait for one, or the HSM behind it is
    /// down or saturated: retry later.
    #[error("HSM proxy unavailable: {0}")]
    Unavailable(String),
    /// The stored data does not authenticate under its KEK (corruption or tampering).
    #[error("stored data failed authentication: {0}")]
    Corrupt(Status),
    /// Anything else the proxy refused.
    #[error("HSM operation failed: {0}")]
    Failed(String),
    /// Reading or writing a KEK failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ClientError> for HsmError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Operation(status) | ClientError::Refused(status)
                if matches!(status, Status::AuthenticationFailed | Status::KekInvalid) =>
            {
                HsmError::Corrupt(status)
            }
            ClientError::Operation(status) | ClientError::Refused(status)
                if !status.is_transient() =>
            {
                HsmError::Failed(status.to_string())
            }
            other => HsmError::Unavailable(other.to_string()),
        }
    }
}

/// Access to the HSM through the proxies.
#[derive(Debug)]
pub(crate) struct Hsm {
    coalescer: Coalescer,
    /// The client the coalescer sends through (it knows which proxy is in use).
    client: Client,
    /// One client per proxy, for the readiness check: each proxy is asked on its own, whichever
    /// the traffic goes to.
    probes: Vec<(String, Client)>,
    /// Project KEKs: the active one of each project, and any by id.
    keks: Keks,
}

/// The additional authenticated data binding a payload to its secret and project: a
/// ciphertext moved to another row or project does not decrypt.
pub(crate) fn payload_aad(project_id: &str, secret_id: &str) -> Vec<u8> {
    format!("hsm-appliance/secret/v1\0{project_id}\0{secret_id}").into_bytes()
}

/// The additional authenticated data binding an order's sealed passphrase to the order and its
/// project, under a label of its own: it opens neither as a payload nor for another order.
pub(crate) fn order_passphrase_aad(project_id: &str, order_id: &str) -> Vec<u8> {
    format!("hsm-appliance/order-passphrase/v1\0{project_id}\0{order_id}").into_bytes()
}

impl Hsm {
    /// Wraps a connected (or lazily connecting) proxy client. Starts the coalescing
    /// dispatcher, so it must be called inside the tokio runtime.
    /// `probes` holds a client of its own for each proxy, for [`Hsm::probe`].
    pub(crate) fn new(
        client: Client,
        probes: Vec<(String, Client)>,
        config: &HsmConfig,
        keks: Keks,
    ) -> Hsm {
        let limits = coalesce::Limits {
            frames_in_flight: config.frames_in_flight,
            max_queued: config.max_queued_operations,
            timeout: Duration::from_millis(config.request_timeout_ms),
        };
        Hsm { coalescer: Coalescer::start(client.clone(), limits), client, probes, keks }
    }

    /// Encrypts `plaintext` under `kek` in the HSM.
    pub(crate) async fn seal(
        &self,
        kek: &Kek,
        plaintext: &[u8],
        aad: Vec<u8>,
    ) -> Result<Sealed, HsmError> {
        let op = Encrypt { kek: kek.clone(), plaintext: SecretBytes::copy_from(plaintext), aad };
        self.call(op).await
    }

    /// Runs any operation through the proxies, in a frame shared with the operations other
    /// requests submit at the same moment.
    pub(crate) async fn call<O: hsm_proxy_proto::Op>(&self, op: O) -> Result<O::Reply, HsmError> {
        let reply = self.coalescer.call(op.into()).await?;
        O::Reply::try_from(reply).map_err(|status| HsmError::from(ClientError::Protocol(status)))
    }

    /// Asks every proxy at once for its `Health` report (which the proxy caches briefly),
    /// each within `timeout`: per proxy, its endpoint, the time it took and its answer.
    pub(crate) async fn probe(&self, timeout: Duration) -> Vec<Probe> {
        let asks: Vec<_> = self
            .probes
            .iter()
            .map(|(endpoint, client)| {
                let (endpoint, client) = (endpoint.clone(), client.clone());
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let answer = match tokio::time::timeout(timeout, client.call(Health)).await {
                        Ok(Ok(report)) => Ok(report),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                    };
                    Probe { endpoint, took: started.elapsed(), answer }
                })
            })
            .collect();
        let mut probes = Vec::with_capacity(asks.len());
        for (ask, (endpoint, _)) in asks.into_iter().zip(&self.probes) {
            probes.push(ask.await.unwrap_or_else(|e| Probe {
                endpoint: endpoint.clone(),
                took: Duration::ZERO,
                answer: Err(format!("the check failed: {e}")),
            }));
        }
        probes
    }

    /// The proxy traffic goes to: an index into `[hsm] endpoints`.
    pub(crate) fn active_endpoint(&self) -> usize {
        self.client.active_endpoint()
    }

    /// Operations waiting for a frame.
    pub(crate) fn queued(&self) -> usize {
        self.coalescer.queued()
    }

    /// A stored KEK's blob wrapped again under the token's newest master key, inside the HSM
    /// (the same blob when it already is).
    pub(crate) async fn rewrap_under_newest_mkek(&self, row: &KekRow) -> Result<Vec<u8>, HsmError> {
        let kek = to_kek(row)?;
        Ok(self.call(hsm_proxy_proto::op::RewrapKek { kek }).await?.wrapped)
    }

    /// Decrypts, in the HSM, data sealed under the stored KEK `kek_id`. A KEK blob read
    /// before its master key was rotated away is refused by the proxy (`KekInvalid`): the
    /// stored row is read again, and if it now holds another blob, the data is opened once
    /// more under that one.
    pub(crate) async fn open_stored(
        &self,
        store: &Store,
        kek_id: &str,
        sealed: Sealed,
        aad: Vec<u8>,
    ) -> Result<SecretBytes, HsmError> {
        let kek = self.kek(store, kek_id).await?;
        match self.open(&kek, sealed.clone(), aad.clone()).await {
            Err(HsmError::Corrupt(Status::KekInvalid)) => {
                tracing::info!(
                    kek = kek_id,
                    "KEK blob refused; reading it again from the database"
                );
                self.forget_kek(kek_id);
                let again = self.kek(store, kek_id).await?;
                if again.wrapped == kek.wrapped {
                    return Err(HsmError::Corrupt(Status::KekInvalid));
                }
                self.open(&again, sealed, aad).await
            }
            other => other,
        }
    }

    /// Decrypts in the HSM.
    pub(crate) async fn open(
        &self,
        kek: &Kek,
        sealed: Sealed,
        aad: Vec<u8>,
    ) -> Result<SecretBytes, HsmError> {
        self.call(Decrypt { kek: kek.clone(), sealed, aad }).await
    }
}

/// What one proxy answered the readiness check.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The proxy's `host:port`.
    pub(crate) endpoint: String,
    /// How long it took to answer (or to fail).
    pub(crate) took: Duration,
    /// Its report, or why there is none.
    pub(crate) answer: Result<HealthReport, String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(id: &KekId) -> String {
    id.to_string()
}

fn to_kek(row: &KekRow) -> Result<Kek, HsmError> {
    let bytes: Vec<u8> = (0..row.id.len())
        .step_by(2)
        .filter_map(|i| row.id.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect();
    let id: [u8; 16] =
        bytes.try_into().map_err(|_| HsmError::Failed(format!("malformed KEK id {:?}", row.id)))?;
    Ok(Kek { id: KekId(id), wrapped: row.wrapped.clone() })
}
