//! Orders: accepting them, and the worker that turns PENDING orders into secrets (and
//! containers) generated in the HSM.
//!
//! Orders are a job queue in the database. The appliance that accepts an order leases it and
//! processes it at once; every appliance also polls for orders whose lease expired (their
//! appliance died), leasing them one at a time (`FOR UPDATE SKIP LOCKED` on PostgreSQL). An
//! order completes only under its lease, in the transaction that writes its secrets, so each
//! order is fulfilled exactly once however many appliances share the queue. A lease is renewed
//! while its order is processed (generating an RSA-4096 key can outlast it), and an appliance
//! processes a bounded number of orders at once, taking over only what it has room for.

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hsm_proxy_proto::op::{GenerateKeyPairSealed, GenerateSymmetric, KeyPairSpec, Sealed};
use pkcs8::der::pem::{LineEnding, PemLabel};
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use policy::Target;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::error::{Result, ServiceError};
use super::secrets::{normalize_content_type, pem};
use super::{App, project_target};
use crate::hsm::{HsmError, order_passphrase_aad, payload_aad};
use crate::identity::Identity;
use crate::metrics::OrderOutcome;
use crate::timefmt::now_micros;
use appliance_store::{ContainerRow, ContainerSecret, Counted, OrderRow, OrderStatus, SecretRow};

/// Delay before retrying an order whose HSM step failed transiently.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Orders one appliance processes at once; the HSM serialises key-pair generation anyway.
const MAX_IN_FLIGHT: usize = 16;
/// Symmetric algorithms key orders accept (any multiple of 8 bits, as Barbican's PKCS#11 backend).
const SYMMETRIC: &[&str] =
    &["aes", "des", "3des", "hmacsha1", "hmacsha256", "hmacsha384", "hmacsha512"];
/// PBKDF2 iterations for passphrase-protected private keys: OWASP's figure for
/// PBKDF2-HMAC-SHA256 (Barbican's keys have OpenSSL's 2048). The count travels in the key.
const PBKDF2_ITERATIONS: u32 = 600_000;

/// This appliance's handle on the queue.
#[derive(Debug)]
pub(crate) struct OrderQueue {
    /// Identifies this appliance's leases.
    owner: String,
    lease: Duration,
    poll: Duration,
    /// How long accepting an order waits for it to be processed.
    inline_wait: Duration,
    submit: mpsc::UnboundedSender<(String, tokio::sync::oneshot::Sender<()>)>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl OrderQueue {
    /// A queue handle and the receiving end for [`run`].
    pub(crate) fn new(
        lease: Duration,
        poll: Duration,
        inline_wait: Duration,
    ) -> (OrderQueue, Submitted) {
        let (submit, rx) = mpsc::unbounded_channel();
        let owner = format!("appliance-{}", uuid::Uuid::new_v4());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        (OrderQueue { owner, lease, poll, inline_wait, submit, slots }, rx)
    }

    fn lease_micros(&self) -> i64 {
        i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// Hands a freshly leased order to the worker; the receiver fires once it is processed.
    fn submit(&self, id: String) -> tokio::sync::oneshot::Receiver<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let _ = self.submit.send((id, done));
        rx
    }
}

/// Orders handed to the worker, each with the signal that it was processed.
pub(crate) type Submitted = mpsc::UnboundedReceiver<(String, tokio::sync::oneshot::Sender<()>)>;

impl App {
    /// Refuses the caller order creation unless the policy allows it.
    pub(crate) fn authorize_order_create(&self, caller: &Identity) -> Result<()> {
        self.authorize("orders:post", &project_target(caller), caller)
    }

    /// Queues an order of `kind` (`key` or `asymmetric`) with its checked `meta` in the
    /// caller's project, within its quota, once `authorize_order_create` allowed it. The
    /// order is leased to this appliance and processed at once; the answer waits for it a
    /// little: Castellan reads the order right after it is accepted and sleeps a whole second
    /// more if that first read is PENDING, as Barbican's synchronous orders never are.
    /// `meta.passphrase` is write-only: it is kept apart from the meta, sealed in the HSM.
    pub(crate) async fn create_order(
        &self,
        caller: &Identity,
        kind: String,
        mut meta: Map<String, Value>,
    ) -> Result<OrderRow> {
        self.check_quota(&caller.project_id, Counted::Orders).await?;
        let id = appliance_store::new_id();
        // Sealed before the order is written: a failure of the HSM leaves no order behind. A
        // key order has no use for a passphrase and keeps none.
        let sealed_passphrase = match meta.remove("passphrase") {
            Some(passphrase) if kind == "asymmetric" => {
                self.hold_passphrase(&caller.project_id, &id, passphrase).await?
            }
            _ => None,
        };
        let now = now_micros();
        let order = OrderRow {
            id,
            project_id: caller.project_id.clone(),
            kind,
            meta: Value::Object(meta).to_string(),
            status: OrderStatus::Pending.as_str().into(),
            secret_id: None,
            container_id: None,
            error_status_code: None,
            error_reason: None,
            creator_id: caller.user_id.clone(),
            created: now,
            updated: now,
            sealed_passphrase,
        };
        let queue = &self.orders;
        self.store.insert_order(&order, &queue.owner, now + queue.lease_micros()).await?;
        // Should this appliance die, another takes the order over when the lease expires.
        let done = queue.submit(order.id.clone());
        let _ = tokio::time::timeout(queue.inline_wait, done).await;
        Ok(order)
    }

    /// An asymmetric order's `passphrase` as the order `order_id` keeps it until it is
    /// processed: a string sealed under the project's KEK and bound to the order; nothing for
    /// none or an empty one, which protect nothing (as in Barbican).
    async fn hold_passphrase(
        &self,
        project_id: &str,
        order_id: &str,
        passphrase: Value,
    ) -> Result<Option<String>, HsmError> {
        let held = match passphrase {
            Value::Null => return Ok(None),
            Value::String(text) => {
                let text = Zeroizing::new(text);
                if text.is_empty() {
                    return Ok(None);
                }
                let (kek_id, kek) = self.hsm.project_kek(&self.store, project_id).await?;
                let aad = order_passphrase_aad(project_id, order_id);
                HeldPassphrase::Sealed {
                    kek_id,
                    sealed: self.hsm.seal(&kek, text.as_bytes(), aad).await?,
                }
            }
            // Not a passphrase: the order fails when it is processed. The value is not kept.
            _ => HeldPassphrase::NotAString,
        };
        Ok(Some(held.to_text()))
    }

    /// A page of the caller's project's orders, those whose meta contains `meta` when given,
    /// and their total.
    pub(crate) async fn list_orders(
        &self,
        caller: &Identity,
        meta: Option<&str>,
        (offset, limit): (i64, i64),
    ) -> Result<(Vec<OrderRow>, i64)> {
        self.authorize("orders:get", &project_target(caller), caller)?;
        Ok(self.store.list_orders(&caller.project_id, meta, offset, limit).await?)
    }

    /// Refuses the caller order updates unless the policy allows them (Barbican then says it
    /// has none).
    pub(crate) fn authorize_order_update(&self, caller: &Identity) -> Result<()> {
        self.authorize("orders:put", &project_target(caller), caller)
    }

    /// The order `id` of the caller's project; other projects' orders are not found.
    pub(crate) async fn order(&self, caller: &Identity, id: &str) -> Result<OrderRow> {
        self.store
            .order(id)
            .await?
            .filter(|o| o.project_id == caller.project_id)
            .ok_or(ServiceError::NotFound("Order not found."))
    }

    /// Refuses the caller a look at `order` unless the policy allows it.
    pub(crate) fn authorize_order_read(&self, order: &OrderRow, caller: &Identity) -> Result<()> {
        self.authorize("order:get", &order_target(order), caller)
    }

    /// Deletes `order`; the secret or container it made stays.
    pub(crate) async fn delete_order(&self, order: &OrderRow, caller: &Identity) -> Result<()> {
        self.authorize("order:delete", &order_target(order), caller)?;
        Ok(self.store.delete_order(&order.id).await?)
    }
}

/// An asymmetric order's passphrase while the order waits, as its `sealed_passphrase` column
/// holds it (JSON text): never the plaintext.
enum HeldPassphrase {
    /// Sealed in the HSM under the project KEK `kek_id`, with `order_passphrase_aad`.
    Sealed { kek_id: String, sealed: Sealed },
    /// The passphrase given was not a string: the order fails when it is processed.
    NotAString,
}

impl HeldPassphrase {
    fn to_text(&self) -> String {
        let json = match self {
            HeldPassphrase::Sealed { kek_id, sealed } => serde_json::json!({
                "kek_id": kek_id,
                "iv": STANDARD.encode(sealed.iv),
                "tag": STANDARD.encode(sealed.tag),
                "ciphertext": STANDARD.encode(&sealed.ciphertext),
            }),
            HeldPassphrase::NotAString => serde_json::json!({"not_a_string": true}),
        };
        json.to_string()
    }

    /// `None` if `text` is not what `to_text` writes.
    fn from_text(text: &str) -> Option<HeldPassphrase> {
        let json: Value = serde_json::from_str(text).ok()?;
        if json.get("not_a_string") == Some(&Value::Bool(true)) {
            return Some(HeldPassphrase::NotAString);
        }
        let field = |name: &str| json.get(name).and_then(Value::as_str);
        let bytes = |name: &str| field(name).and_then(|b64| STANDARD.decode(b64).ok());
        let sealed = Sealed {
            ciphertext: bytes("ciphertext")?,
            iv: bytes("iv")?.try_into().ok()?,
            tag: bytes("tag")?.try_into().ok()?,
        };
        Some(HeldPassphrase::Sealed { kek_id: field("kek_id")?.to_owned(), sealed })
    }
}

/// The `Target` of rules about an order.
fn order_target(order: &OrderRow) -> Target {
    Target::new().set("target.order.project_id", order.project_id.clone())
}

/// Processes submitted orders at once and polls for abandoned ones, until the app is dropped.
pub(crate) async fn run(app: Weak<App>, mut submitted: Submitted) {
    let poll = match app.upgrade() {
        Some(app) => app.orders.poll,
        None => return,
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = submitted.recv() => {
                let (Some((id, done)), Some(app)) = (next, app.upgrade()) else { return };
                tokio::spawn(async move {
                    // Orders accepted here wait for a slot; their lease is renewed meanwhile
                    // only once processing starts, so a long wait hands them to a peer.
                    let Ok(_slot) = app.orders.slots.clone().acquire_owned().await else { return };
                    match app.store.order(&id).await {
                        Ok(Some(order)) => process(&app, order).await,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(order = %id, error = %e, "cannot read a new order; it will be retried"),
                    }
                    let _ = done.send(());
                });
            }
            _ = ticker.tick() => {
                let Some(app) = app.upgrade() else { return };
                loop {
                    // Only as many as there is room for: the rest stay for peers or later.
                    let Ok(slot) = app.orders.slots.clone().try_acquire_owned() else { break };
                    let lease_until = now_micros() + app.orders.lease_micros();
                    match app.store.claim_order(&app.orders.owner, lease_until).await {
                        Ok(Some(order)) => {
                            tracing::info!(order = %order.id, "took over an order whose lease had expired");
                            let app = app.clone();
                            tokio::spawn(async move {
                                process(&app, order).await;
                                drop(slot);
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot poll the order queue");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Why an order could not be fulfilled.
enum Failure {
    /// For good: the order becomes ERROR with this code and reason.
    Permanent(&'static str, String),
    /// The HSM or database is unavailable: try again later.
    Transient(String),
}

fn issue(reason: &str) -> Failure {
    Failure::Permanent("400", format!("Process TypeOrder issue seen - {reason}."))
}

/// A fault of this appliance or its HSM: logged, and the order fails as Barbican's do.
fn failure(what: &str, error: &dyn std::fmt::Display) -> Failure {
    tracing::error!(error = %error, "order failed: {what}");
    Failure::Permanent(
        "500",
        "Process TypeOrder failure seen - please contact site administrator.".into(),
    )
}

impl From<HsmError> for Failure {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::Unavailable(m) => Failure::Transient(m),
            HsmError::Store(s) if s.is_unavailable() => Failure::Transient(s.to_string()),
            other => failure("an HSM step", &other),
        }
    }
}

async fn process(app: &Arc<App>, order: OrderRow) {
    let owner = &app.orders.owner;
    let started = std::time::Instant::now();
    let renewal = tokio::spawn(renew(app.clone(), order.id.clone()));
    let result = match order.kind.as_str() {
        "key" => key_order(app, &order).await.map(|s| (vec![s], None)),
        _ => asymmetric_order(app, &order).await.map(|(s, c)| (s, Some(c))),
    };
    renewal.abort();
    let store = &app.store;
    let mut counted = OrderOutcome::Postponed;
    let outcome = match result {
        Ok((secrets, container)) => {
            match store.complete_order(&order.id, owner, &secrets, container.as_ref()).await {
                Ok(true) => {
                    tracing::info!(order = %order.id, ms = started.elapsed().as_millis(), "order ACTIVE");
                    counted = OrderOutcome::Active;
                    Ok(())
                }
                Ok(false) => {
                    tracing::warn!(order = %order.id, "order lease lost to another appliance; its result is discarded");
                    counted = OrderOutcome::Lost;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Err(Failure::Permanent(code, reason)) => {
            tracing::info!(order = %order.id, code, reason = %reason, "order ERROR");
            match store.fail_order(&order.id, owner, code, &reason).await {
                Ok(held) => {
                    counted = if held { OrderOutcome::Error } else { OrderOutcome::Lost };
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Err(Failure::Transient(why)) => Err(why),
    };
    if let Err(why) = outcome {
        let retry = now_micros() + i64::try_from(RETRY_AFTER.as_micros()).unwrap_or(0);
        tracing::warn!(order = %order.id, reason = %why, "order postponed; will be retried");
        let _ = store.release_order(&order.id, owner, retry).await;
    }
    if let Some(metrics) = app.metrics() {
        metrics.orders.processed(counted);
    }
}

/// Keeps an order's lease alive while it is processed (a third of the lease at a time).
async fn renew(app: Arc<App>, id: String) {
    let every = app.orders.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = now_micros() + app.orders.lease_micros();
        match app.store.renew_lease(&id, &app.orders.owner, until).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(order = %id, error = %e, "cannot renew an order lease"),
        }
    }
}

fn meta_str(meta: &Value, key: &str) -> Option<String> {
    meta.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn base_secret(order: &OrderRow, meta: &Value, secret_type: &str) -> SecretRow {
    let now = now_micros();
    SecretRow {
        id: appliance_store::new_id(),
        project_id: order.project_id.clone(),
        name: meta_str(meta, "name"),
        secret_type: secret_type.into(),
        algorithm: meta_str(meta, "algorithm"),
        bit_length: meta.get("bit_length").and_then(Value::as_i64),
        mode: meta_str(meta, "mode"),
        expiration: meta_str(meta, "expiration").and_then(|e| crate::timefmt::parse_iso8601(&e)),
        creator_id: order.creator_id.clone(),
        created: now,
        updated: now,
        payload: None,
        has_read_acl: Some(false),
    }
}

fn content_type(meta: &Value) -> String {
    meta_str(meta, "payload_content_type")
        .and_then(|ct| normalize_content_type(&ct))
        .unwrap_or("application/octet-stream")
        .to_owned()
}

async fn key_order(app: &App, order: &OrderRow) -> Result<SecretRow, Failure> {
    let meta: Value = serde_json::from_str(&order.meta).unwrap_or(Value::Null);
    let algorithm = meta_str(&meta, "algorithm").unwrap_or_default().to_ascii_lowercase();
    let bits = meta.get("bit_length").and_then(Value::as_u64).unwrap_or(0);
    let mode = meta_str(&meta, "mode").unwrap_or_default().to_ascii_lowercase();
    let Some(bits) = u16::try_from(bits).ok().filter(|b| {
        SYMMETRIC.contains(&algorithm.as_str())
            && *b > 0
            && (!app.settings.fips || fips_approved(&algorithm, &mode, *b))
    }) else {
        return Err(issue("Secret generate supported plugin not found."));
    };
    let mut secret = base_secret(order, &meta, "symmetric");
    let (kek_id, kek) = app.hsm.project_kek(&app.store, &order.project_id).await?;
    let aad = payload_aad(&order.project_id, &secret.id);
    let sealed = app.hsm.call(GenerateSymmetric { kek, bits, aad }).await?;
    secret.payload = Some(crate::hsm::stored(content_type(&meta), None, kek_id, sealed));
    Ok(secret)
}

/// Whether a FIPS-mode HSM may generate a symmetric key of `algorithm` and `bits` (the
/// asymmetric kinds served are all approved): AES of 128, 192 or 256 bits, or the double
/// lengths of XTS (SP 800-38E); HMAC keys of at least 112 bits (SP 800-131A); no DES or 3DES.
fn fips_approved(algorithm: &str, mode: &str, bits: u16) -> bool {
    match algorithm {
        "aes" if mode == "xts" => matches!(bits, 256 | 512),
        "aes" => matches!(bits, 128 | 192 | 256),
        "hmacsha1" | "hmacsha256" | "hmacsha384" | "hmacsha512" => bits >= 112,
        _ => false,
    }
}

async fn asymmetric_order(
    app: &App,
    order: &OrderRow,
) -> Result<(Vec<SecretRow>, ContainerRow), Failure> {
    let meta: Value = serde_json::from_str(&order.meta).unwrap_or(Value::Null);
    let algorithm = meta_str(&meta, "algorithm").unwrap_or_default().to_ascii_lowercase();
    let bits = meta.get("bit_length").and_then(Value::as_u64).unwrap_or(0);
    let spec = match (algorithm.as_str(), bits) {
        ("rsa", 2048) => KeyPairSpec::Rsa2048,
        ("rsa", 3072) => KeyPairSpec::Rsa3072,
        ("rsa", 4096) => KeyPairSpec::Rsa4096,
        ("ec", 256) => KeyPairSpec::EcP256,
        ("ec", 384) => KeyPairSpec::EcP384,
        _ => return Err(issue("Secret generate supported plugin not found.")),
    };
    // As in Barbican, an empty passphrase protects nothing and adds no passphrase secret: the
    // order kept none.
    let passphrase = match order.sealed_passphrase.as_deref().map(HeldPassphrase::from_text) {
        None => None,
        Some(None) => {
            return Err(failure("reading its sealed passphrase", &"the stored form is malformed"));
        }
        Some(Some(HeldPassphrase::NotAString)) => {
            return Err(issue("The passphrase must be a string"));
        }
        Some(Some(HeldPassphrase::Sealed { kek_id, sealed })) => {
            let aad = order_passphrase_aad(&order.project_id, &order.id);
            Some(app.hsm.open_stored(&app.store, &kek_id, sealed, aad).await?.into_zeroizing())
        }
    };
    let (kek_id, kek) = app.hsm.project_kek(&app.store, &order.project_id).await?;
    let stored = |format: Option<&str>, sealed: Sealed| {
        crate::hsm::stored(content_type(&meta), format.map(Into::into), kek_id.clone(), sealed)
    };
    let mut private = base_secret(order, &meta, "private");
    let mut public = base_secret(order, &meta, "public");
    let private_aad = payload_aad(&order.project_id, &private.id);
    let pair = app
        .hsm
        .call(GenerateKeyPairSealed { kek: kek.clone(), spec, aad: private_aad.clone() })
        .await?;
    let mut passphrase_secret = None;
    private.payload = Some(match passphrase {
        None => stored(Some("pem:PRIVATE KEY"), pair.private_key_pkcs8),
        Some(passphrase) => {
            // The HSM has no passphrase encryption of PKCS#8: the key is opened here once, as
            // every fetch of it opens it, encrypted under the passphrase and sealed again.
            let pkcs8 = app.hsm.open(&kek, pair.private_key_pkcs8, private_aad.clone()).await?;
            let mut secret = base_secret(order, &meta, "passphrase");
            let phrase_aad = payload_aad(&order.project_id, &secret.id);
            secret.payload = Some(stored(None, app.hsm.seal(&kek, &passphrase, phrase_aad).await?));
            passphrase_secret = Some(secret);
            // Key derivation is deliberately slow: off the async workers.
            let pem = tokio::task::spawn_blocking(move || {
                encrypted_pem(&pkcs8.into_zeroizing(), &passphrase)
            })
            .await
            .map_err(|e| failure("the key encryption task failed", &e))??;
            stored(None, app.hsm.seal(&kek, pem.as_bytes(), private_aad).await?)
        }
    });
    let public_pem = pem("PUBLIC KEY", &pair.public_key_der);
    let sealed =
        app.hsm.seal(&kek, &public_pem, payload_aad(&order.project_id, &public.id)).await?;
    public.payload = Some(stored(None, sealed));
    let now = now_micros();
    let mut secrets = vec![
        ContainerSecret { name: Some("private_key".into()), secret_id: private.id.clone() },
        ContainerSecret { name: Some("public_key".into()), secret_id: public.id.clone() },
    ];
    let mut rows = vec![private, public];
    if let Some(secret) = passphrase_secret {
        secrets.push(ContainerSecret {
            name: Some("private_key_passphrase".into()),
            secret_id: secret.id.clone(),
        });
        rows.push(secret);
    }
    let container = ContainerRow {
        id: appliance_store::new_id(),
        project_id: order.project_id.clone(),
        name: meta_str(&meta, "name"),
        kind: algorithm,
        creator_id: order.creator_id.clone(),
        created: now,
        updated: now,
        secrets,
    };
    Ok((rows, container))
}

/// DER PKCS#8 `pkcs8` as PEM `ENCRYPTED PRIVATE KEY` under `passphrase`: PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC, the scheme of Barbican's passphrase-protected keys.
fn encrypted_pem(pkcs8: &[u8], passphrase: &[u8]) -> Result<Zeroizing<String>, Failure> {
    let key = PrivateKeyInfo::try_from(pkcs8)
        .map_err(|e| failure("the HSM returned a malformed private key", &e))?;
    let (mut salt, mut iv) = ([0u8; 16], [0u8; 16]);
    getrandom::fill(&mut salt)
        .and_then(|()| getrandom::fill(&mut iv))
        .map_err(|e| failure("no randomness for the key encryption", &e))?;
    let cannot = |e: &dyn std::fmt::Display| failure("cannot encrypt the private key", e);
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| cannot(&e))?;
    let encrypted = key.encrypt_with_params(params, passphrase).map_err(|e| cannot(&e))?;
    encrypted.to_pem(EncryptedPrivateKeyInfo::PEM_LABEL, LineEnding::LF).map_err(|e| cannot(&e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[test]
    fn fips_mode_approves_aes_hmac_and_nothing_weaker() {
        for (algorithm, mode, bits) in
            [("aes", "", 128), ("aes", "cbc", 256), ("aes", "xts", 512), ("hmacsha256", "", 112)]
        {
            assert!(fips_approved(algorithm, mode, bits), "{algorithm} {mode} {bits}");
        }
        for (algorithm, mode, bits) in [
            ("aes", "", 64),
            ("aes", "xts", 128),
            ("des", "", 64),
            ("3des", "", 192),
            ("hmacsha1", "", 64),
        ] {
            assert!(!fips_approved(algorithm, mode, bits), "{algorithm} {mode} {bits}");
        }
    }

    #[test]
    fn a_held_passphrase_reads_back_as_written_and_nothing_else_reads() {
        let sealed = Sealed { ciphertext: vec![7; 29], iv: [1; 12], tag: [2; 16] };
        let text = HeldPassphrase::Sealed { kek_id: "k1".into(), sealed: sealed.clone() }.to_text();
        let Some(HeldPassphrase::Sealed { kek_id, sealed: read }) =
            HeldPassphrase::from_text(&text)
        else {
            panic!("{text} does not read back");
        };
        assert_eq!((kek_id.as_str(), read), ("k1", sealed));
        let text = HeldPassphrase::NotAString.to_text();
        assert!(matches!(HeldPassphrase::from_text(&text), Some(HeldPassphrase::NotAString)));
        for bad in [
            "",
            "correct horse",
            r#"{"not_a_string": false}"#,
            r#"{"kek_id": "k1", "iv": "AQEBAQEBAQEBAQEB", "tag": "AgICAgICAgICAgICAgICAg==", "ciphertext": "!"}"#,
            r#"{"kek_id": "k1", "iv": "AQE=", "tag": "AgICAgICAgICAgICAgICAg==", "ciphertext": ""}"#,
        ] {
            assert!(HeldPassphrase::from_text(bad).is_none(), "{bad}");
        }
    }
}
